#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suites (the CA's PostgreSQL store, replicas).
#
#   eval "$(.ci/postgres.sh start)"      # prints the export lines below, nothing else on stdout
#   .ci/postgres.sh stop "$TETHER_TEST_PG_DIR"
#
# `start` makes a fresh cluster in a new temporary directory, on a free port of 127.0.0.1 only,
# and prints:
#   TETHER_TEST_PG_URL           postgres://postgres@127.0.0.1:PORT/postgres (superuser, trust)
#   TETHER_TEST_PG_PASSWORD_URL  postgres://tether_pw@127.0.0.1:PORT/postgres (scram-sha-256)
#   TETHER_TEST_PG_PASSWORD      tether_pw's password (random per cluster)
#   TETHER_TEST_PG_SSLROOTCERT   the CA of the server's TLS certificate (IP 127.0.0.1, DNS
#                                localhost): the server takes TLS and plain connections alike
#   TETHER_TEST_PG_DIR           the directory `stop` removes
# As root the cluster runs as the `postgres` system user (created if missing; Debian's package
# creates it); as anyone else it runs as that user. The server binaries are the newest under
# /usr/lib/postgresql/*/bin (Debian's layout), not whatever `postgres` PATH finds.
set -euo pipefail

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}

# The newest installed server's bin dir, by version number (so 15 sorts after 9.6).
bin_dir() {
  local dirs
  dirs=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V) || true
  local newest=${dirs##*$'\n'}
  [ -n "$newest" ] && [ -x "$newest/initdb" ] ||
    die "no PostgreSQL server under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
  echo "$newest"
}

# Runs a command as the cluster's owner: the `postgres` user under root (initdb refuses to run
# as root), the caller otherwise.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A port nobody listens on right now. Another process may take it before the server binds, so
# `start` retries with a fresh one when the server cannot listen.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A throwaway CA and the server's certificate signed by it, for the TLS tests: ca.pem in $1,
# server.crt and server.key (0600, the owner's) in $1/data.
make_tls() {
  local dir=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=tether test PostgreSQL CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    >/dev/null 2>&1 || die "openssl could not make the test CA"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$dir/data/server.key" -out "$dir/server.csr" >/dev/null 2>&1 ||
    die "openssl could not make the server key"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/data/server.crt" \
    >/dev/null 2>&1 || die "openssl could not sign the server certificate"
  chmod 600 "$dir/data/server.key"
  chmod 644 "$dir/ca.pem"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir/data/server.key" "$dir/data/server.crt"; fi
}

start() {
  local bin dir password port started=
  bin=$(bin_dir)
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/tether-pg.XXXXXX")
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync \
    --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed (cluster left in $dir)"; }
  # fsync off and no full-page writes: the cluster dies with its directory, so durability across
  # a machine crash is worth nothing here and costs the tests time on every commit.
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
full_page_writes = off
synchronous_commit = off
password_encryption = 'scram-sha-256'
max_connections = 200
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
  make_tls "$dir"
  # First match wins. The local socket (inside $dir, so only this script reaches it) and the
  # superuser over TCP are trusted: a test cluster with no secret to keep. The password role
  # must prove its password with SCRAM, so a test can check the PGPASSWORD / passfile path.
  # Anything else has no matching line and is refused.
  cat >"$dir/data/pg_hba.conf" <<EOF
local all postgres trust
host all tether_pw 127.0.0.1/32 scram-sha-256
host all postgres 127.0.0.1/32 trust
EOF

  for _ in 1 2 3 4 5; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port" start >/dev/null; then
      started=1
      break
    fi
  done
  [ -n "$started" ] || { cat "$dir/server.log" >&2 || true; die "the server did not start (cluster left in $dir)"; }

  # $password is hex, so it needs no quoting inside the SQL literal.
  "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE tether_pw LOGIN PASSWORD '$password'" >/dev/null ||
    die "could not create the password role (cluster left in $dir)"

  printf 'export TETHER_TEST_PG_URL=%q\n' "postgres://postgres@127.0.0.1:$port/postgres"
  printf 'export TETHER_TEST_PG_PASSWORD_URL=%q\n' "postgres://tether_pw@127.0.0.1:$port/postgres"
  printf 'export TETHER_TEST_PG_PASSWORD=%q\n' "$password"
  printf 'export TETHER_TEST_PG_SSLROOTCERT=%q\n' "$dir/ca.pem"
  printf 'export TETHER_TEST_PG_DIR=%q\n' "$dir"
}

stop() {
  local dir=${1:-}
  [ -n "$dir" ] || die "usage: postgres.sh stop DIR"
  # Only ever remove a directory `start` made: a mistyped argument must not become `rm -rf /`.
  case "$(basename "$dir")" in
    tether-pg.*) ;;
    *) die "$dir is not a directory postgres.sh start made" ;;
  esac
  [ -f "$dir/data/PG_VERSION" ] || die "$dir holds no cluster"
  # Immediate: nothing in a throwaway cluster is worth a clean shutdown's checkpoint.
  as_owner "$(bin_dir)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 ||
    echo "postgres.sh: the server in $dir was not running" >&2
  rm -rf -- "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) die "usage: postgres.sh start | postgres.sh stop DIR" ;;
esac

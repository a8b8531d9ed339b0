#!/usr/bin/env bash
# `make bench`: Tether's sidecar pair against nginx and haproxy configured as mTLS sidecar pairs,
# side by side on this machine, interleaved over several rounds so machine drift hits everyone
# equally. Prints a markdown table (medians, min–max, ratios) and writes it to
# target/bench/report.md, with every raw tool output beside it in target/bench/raw/.
#
#   make bench                          # ROUNDS=3 DURATION=10 (about 12 minutes after the build)
#   ROUNDS=5 DURATION=20 make bench     # longer, steadier
#   SMOKE=1 make bench                  # 1 round of 2 s runs: checks that every path works
#
# Settings (environment): ROUNDS (3), DURATION seconds per run (10), CONNS (32), WRK_THREADS (1),
# HOLD_CONNS (1000, the "RSS holding N connections" check), BURST_CONNS (4000, the "busy
# connections through the pair, then closed" check), CA_COUNT (4000 enrollments per CA
# run), BENCH_PORT_BASE (28000: every port used is BASE + a fixed offset, on 127.0.0.1 only;
# the reference configs used 18000),
# SKIP_BUILD=1 (use the binaries already built in target/release: Tether's and the
# bench clients), WORKLOADS (all of: ka32 ka32_log ka1 newconn_pair newconn_inbound
# handshake_inbound hold burst ca; a subset is for quick iteration),
# BASELINE=PATH (optional: another tether-proxy binary, e.g. the previous commit's build, run as
# one more pair, "baseline", in the keep-alive workloads, so a change is judged by its ratio to
# the build before it in the same run).
#
# What runs (all on 127.0.0.1, every process started here is stopped by PID on every exit path):
#   upstream   nginx `return 200 "ok"` (proxy/bench/peers/nginx-upstream.conf), or, without
#              nginx, target/release/upstream-ok
#   direct     wrk → upstream (the ceiling)
#   tether     wrk → tether-proxy outbound → mTLS → tether-proxy inbound → upstream, with the
#              default `peer_protocol = "auto"`: an HTTP/1.1 connection held per client
#              connection while at most 16 are open, one shared HTTP/2 connection beyond
#   tether-http1, tether-h2   the same outbound with `peer_protocol` forced to one of the two
#   tether-log the default pair with `[access_log]` on at both sidecars (workload ka32_log only,
#              against `tether` in the same round: what the access log costs)
#   tether-tcp the same two sidecars in TCP mode (a `mode = "tcp"` service and inbound): mTLS
#              and byte copying, no HTTP at all, one mTLS connection per client connection
#              (workloads ka32 and ka1 only). Not a mesh setting for HTTP services: it is the
#              floor any HTTP path on the same stack (tokio, rustls, the kernel) stands on.
#   nginx      wrk → nginx outbound → mTLS (HTTP/1.1 keep-alive pool) → nginx inbound → upstream
#   haproxy    wrk → haproxy outbound → mTLS (pooled) → haproxy inbound → upstream
# Each proxy runs one worker/thread (Tether: `workers = 1`).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_DIR="$ROOT/proxy/bench"
OUT="$ROOT/target/bench"
RAW="$OUT/raw"
WORK="$OUT/work"
RES="$OUT/results.tsv"
NOTES="$OUT/notes.txt"

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-2}
    CA_COUNT=${CA_COUNT:-500}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
WRK_THREADS=${WRK_THREADS:-1}
HOLD_CONNS=${HOLD_CONNS:-1000}
BURST_CONNS=${BURST_CONNS:-4000}
CA_COUNT=${CA_COUNT:-4000}
BASE=${BENCH_PORT_BASE:-28000}
SKIP_BUILD=${SKIP_BUILD:-0}
WORKLOADS=" ${WORKLOADS:-ka32 ka32_log ka1 newconn_pair newconn_inbound handshake_inbound hold burst ca} "
want() { [[ "$WORKLOADS" == *" $1 "* ]]; }

# Ports: the reference configs' numbers (18001, 18443, …) when BASE=18000.
P_UPSTREAM=$((BASE + 80))
P_NGINX_OUT=$((BASE + 1)) P_NGINX_FULLHS=$((BASE + 11)) P_NGINX_RESUME=$((BASE + 21)) P_NGINX_IN=$((BASE + 443))
P_HAPROXY_OUT=$((BASE + 2)) P_HAPROXY_FULLHS=$((BASE + 12)) P_HAPROXY_RESUME=$((BASE + 22)) P_HAPROXY_IN=$((BASE + 444))
P_TETHER_OUT=$((BASE + 3)) P_TETHER_H2_OUT=$((BASE + 4)) P_TETHER_H1_OUT=$((BASE + 5)) P_TETHER_IN=$((BASE + 445))
P_TETHER_LOG_OUT=$((BASE + 6)) P_TETHER_LOG_IN=$((BASE + 446))
P_BASELINE_OUT=$((BASE + 7)) P_BASELINE_IN=$((BASE + 447))
# The TCP-mode pair: its TCP service's listener, its (unused) HTTP listener, its inbound.
P_TETHER_TCP_OUT=$((BASE + 8)) P_TETHER_TCP_HTTP=$((BASE + 9)) P_TETHER_TCP_IN=$((BASE + 448))
BASELINE=${BASELINE:-}

ID_A="spiffe://demo.local/ns/default/sa/service-a"
ID_B="spiffe://demo.local/ns/default/sa/service-b"

log() { printf 'bench: %s\n' "$*" >&2; }
note() {
    printf -- '- %s\n' "$*" >>"$NOTES"
    log "$*"
}

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: every PID we start goes into PIDS; cleanup stops them all, by PID.
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid alive i
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for i in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, logs to $WORK/logs/NAME.log, sets PID_OF[NAME].
declare -A PID_OF
start() {
    local name=$1
    shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    PID_OF[$name]=$pid
}

# A process we waited for is gone: drop its PID so cleanup never signals a recycled PID.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# run_fg CMD...: runs CMD in the background (so a signal reaches our trap at once), waits.
run_fg() {
    "$@" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"
    local rc=$?
    forget "$pid"
    return "$rc"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # PORT NAME: up to 15 s
    local i
    for i in $(seq 150); do
        port_open "$1" && return 0
        if [ -n "${PID_OF[$2]:-}" ] && ! kill -0 "${PID_OF[$2]}" 2>/dev/null; then
            log "$2 exited early; its log ($WORK/logs/$2.log):"
            tail -20 "$WORK/logs/$2.log" >&2
            return 1
        fi
        sleep 0.1
    done
    log "$2 is not listening on port $1 after 15 s"
    return 1
}

# The PIDs of a server: the process and its direct children (nginx master + worker).
tree_pids() {
    local pid=$1
    echo "$pid"
    pgrep -P "$pid" 2>/dev/null || true
}

cpu_ticks() { # PIDS...: "utime+stime stime", each summed (clock ticks)
    local sum=0 sys=0 pid u s
    for pid in "$@"; do
        read -r u s < <(awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0 0)
        sum=$((sum + ${u:-0} + ${s:-0}))
        sys=$((sys + ${s:-0}))
    done
    echo "$sum $sys"
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
per_request() { # BEFORE AFTER FIELD REQUESTS: µs per request between two cpu_ticks readings
    # (FIELD 1: all CPU, 2: system time)
    awk -v a="$1" -v b="$2" -v f="$3" -v n="$4" -v hz="$CLK_TCK" 'BEGIN {
        split(a, x, " "); split(b, y, " "); printf "%.1f", (y[f] - x[f]) / hz * 1e6 / n }'
}

rss_kib() { # PIDS...: VmRSS summed, KiB
    local sum=0 pid r
    for pid in "$@"; do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        sum=$((sum + ${r:-0}))
    done
    echo "$sum"
}

record() { # ROUND WORKLOAD TARGET METRIC VALUE
    [ -n "${5:-}" ] || return 0
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RES"
}

# One plain HTTP/1.1 request over bash's /dev/tcp (no client needed): prints the status line.
http_status() { # PORT
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET / HTTP/1.1\r\nHost: service-b\r\nConnection: close\r\n\r\n' >&3
    IFS= read -r -t 5 line <&3
    exec 3<&-
    printf '%s' "${line%$'\r'}"
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$OUT"
rm -rf "$RAW" "$WORK"
mkdir -p "$RAW" "$WORK/logs"
: >"$RES"
: >"$NOTES"

# Tools. Missing ones are named with the line that installs them; the rest is benched.
MISSING=()
have() { command -v "$1" >/dev/null 2>&1; }
have wrk || MISSING+=(wrk)
have nginx || MISSING+=(nginx)
have haproxy || MISSING+=(haproxy)
have openssl || MISSING+=(openssl)
have python3 || MISSING+=(python3)
if [ ${#MISSING[@]} -gt 0 ]; then
    log "missing tools: ${MISSING[*]}. Install them with:"
    log "    apt-get update && apt-get install -y ${MISSING[*]}"
fi
have python3 || {
    log "python3 writes the report; cannot continue without it"
    exit 1
}
HAVE_WRK=0 HAVE_NGINX=0 HAVE_HAPROXY=0 HAVE_OPENSSL=0
have wrk && HAVE_WRK=1
have nginx && HAVE_NGINX=1
have haproxy && HAVE_HAPROXY=1
have openssl && HAVE_OPENSSL=1
[ "$HAVE_WRK" = 1 ] || note "NOT MEASURED: every wrk workload (keep-alive 32/1 connections, new connection through a pair, RSS after load): wrk is missing (apt-get install -y wrk)."
[ "$HAVE_NGINX" = 1 ] || note "NOT MEASURED: the nginx pair (apt-get install -y nginx); the upstream is upstream-ok instead of nginx."
[ "$HAVE_HAPROXY" = 1 ] || note "NOT MEASURED: the haproxy pair (apt-get install -y haproxy)."
if [ "$HAVE_OPENSSL" = 0 ] && { [ "$HAVE_NGINX" = 1 ] || [ "$HAVE_HAPROXY" = 1 ]; }; then
    note "NOT MEASURED: the nginx and haproxy pairs: their certificates are made with openssl, which is missing (apt-get install -y openssl)."
    HAVE_NGINX_PAIR=0 HAVE_HAPROXY_PAIR=0
else
    HAVE_NGINX_PAIR=$HAVE_NGINX HAVE_HAPROXY_PAIR=$HAVE_HAPROXY
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((HOLD_CONNS * 3 + 100)) ]; then
    note "open-file limit $(ulimit -n) is too low to hold $HOLD_CONNS connections; HOLD_CONNS lowered."
    HOLD_CONNS=$((($(ulimit -n) - 100) / 3))
fi
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((BURST_CONNS * 3 + 100)) ]; then
    note "open-file limit $(ulimit -n) is too low for $BURST_CONNS connections; BURST_CONNS lowered."
    BURST_CONNS=$((($(ulimit -n) - 100) / 3))
fi

for p in $P_UPSTREAM $P_NGINX_OUT $P_NGINX_FULLHS $P_NGINX_RESUME $P_NGINX_IN $P_HAPROXY_OUT \
    $P_HAPROXY_FULLHS $P_HAPROXY_RESUME $P_HAPROXY_IN $P_TETHER_OUT $P_TETHER_H2_OUT $P_TETHER_H1_OUT $P_TETHER_IN \
    $P_TETHER_LOG_OUT $P_TETHER_LOG_IN $P_BASELINE_OUT $P_BASELINE_IN; do
    if port_open "$p"; then
        log "port $p on 127.0.0.1 is already in use; stop what uses it or set BENCH_PORT_BASE"
        exit 1
    fi
done

# Build. Incremental; never cleans.
if [ "$SKIP_BUILD" != 1 ]; then
    # What is measured is what users run: the release build (`cargo build --release`, the one
    # `make build` and `make demo` make; fat LTO, see Cargo.toml), bench clients included.
    log "building tether-proxy, tether-ca and the bench clients (release)"
    (cd "$ROOT" && cargo build --release -p tether-proxy -p tether-ca --bins &&
        cargo build --release -p demo-services --bin upstream-ok &&
        cargo build --release -p tether-proxy -p tether-ca --examples) || exit 1
fi
BIN="$ROOT/target/release"
for b in "$BIN/tether-ca" "$BIN/tether-proxy" "$BIN/upstream-ok" "$BIN/examples/handshake_load" \
    "$BIN/examples/enroll_load"; do
    [ -x "$b" ] || {
        log "$b is missing: run without SKIP_BUILD=1"
        exit 1
    }
done

# ---------------------------------------------------------------------------------------------
# A throwaway PKI: tether-ca makes the CA and both sidecars' SVIDs; the peers' certificates
# need a DNS SAN and a CN (neither nginx nor haproxy can check a URI SAN), which `tether-ca
# issue` never puts in a leaf, so openssl signs those two with the CA's intermediate key.
PKI="$WORK/pki"
mkdir -p "$PKI"
log "making a throwaway PKI in $PKI"
{
    "$BIN/tether-ca" --state-dir "$PKI/ca" init --trust-domain demo.local &&
        "$BIN/tether-ca" --state-dir "$PKI/ca" issue "$ID_A" --out "$PKI/service-a" --ttl 24h &&
        "$BIN/tether-ca" --state-dir "$PKI/ca" issue "$ID_B" --out "$PKI/service-b" --ttl 24h
} >"$WORK/logs/pki.log" 2>&1 || {
    log "tether-ca failed:"
    cat "$WORK/logs/pki.log" >&2
    exit 1
}
cp "$PKI/ca/bundle.pem" "$PKI/ca.crt"
peer_cert() { # NAME CN URI [DNS]
    local name=$1 cn=$2 uri=$3 dns=${4:-} san
    san="URI:$uri${dns:+,DNS:$dns}"
    cat >"$PKI/$name.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" &&
        openssl req -new -key "$PKI/$name.key" -subj "/CN=$cn" -out "$PKI/$name.csr" &&
        openssl x509 -req -in "$PKI/$name.csr" -sha256 -days 1 \
            -CA "$PKI/ca/intermediate/cert.pem" -CAkey "$PKI/ca/intermediate/key.pem" \
            -set_serial "0x$(openssl rand -hex 15)" -extfile "$PKI/$name.ext" -out "$PKI/$name.leaf.crt" &&
        cat "$PKI/$name.leaf.crt" "$PKI/ca/intermediate/cert.pem" >"$PKI/$name.crt" &&
        cat "$PKI/$name.crt" "$PKI/$name.key" >"$PKI/$name.pem"
}
if [ "$HAVE_NGINX_PAIR" = 1 ] || [ "$HAVE_HAPROXY_PAIR" = 1 ]; then
    {
        peer_cert server service-b "$ID_B" service-b.default.svc &&
            peer_cert client service-a "$ID_A"
    } >"$WORK/logs/pki-peers.log" 2>&1 || {
        log "openssl failed to make the peer certificates:"
        cat "$WORK/logs/pki-peers.log" >&2
        exit 1
    }
fi

fill() { # TEMPLATE OUTPUT: substitutes @PKI@ and the @…@ ports
    sed -e "s#@PKI@#$PKI#g" -e "s/@UPSTREAM@/$P_UPSTREAM/g" \
        -e "s/@NGINX_OUT@/$P_NGINX_OUT/g" -e "s/@NGINX_FULLHS@/$P_NGINX_FULLHS/g" \
        -e "s/@NGINX_RESUME@/$P_NGINX_RESUME/g" -e "s/@NGINX_IN@/$P_NGINX_IN/g" \
        -e "s/@HAPROXY_OUT@/$P_HAPROXY_OUT/g" -e "s/@HAPROXY_FULLHS@/$P_HAPROXY_FULLHS/g" \
        -e "s/@HAPROXY_RESUME@/$P_HAPROXY_RESUME/g" -e "s/@HAPROXY_IN@/$P_HAPROXY_IN/g" \
        -e "s/@TETHER_OUT@/$P_TETHER_OUT/g" -e "s/@TETHER_H2_OUT@/$P_TETHER_H2_OUT/g" -e "s/@TETHER_H1_OUT@/$P_TETHER_H1_OUT/g" \
        -e "s/@TETHER_IN@/$P_TETHER_IN/g" "$1" >"$2"
}

start_nginx() { # NAME CONF
    local dir="$WORK/$1"
    mkdir -p "$dir/logs"
    fill "$2" "$dir/nginx.conf"
    start "$1" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log"
}

# ---------------------------------------------------------------------------------------------
# Start everything.
if [ "$HAVE_NGINX" = 1 ]; then
    start_nginx upstream "$BENCH_DIR/peers/nginx-upstream.conf"
    # shellcheck disable=SC2016 # backticks are literal markdown here
    UPSTREAM_KIND='nginx `return 200 "ok"` (1 worker)'
else
    start upstream "$BIN/upstream-ok" --listen "127.0.0.1:$P_UPSTREAM"
    UPSTREAM_KIND='target/release/upstream-ok (nginx missing)'
fi
wait_port "$P_UPSTREAM" upstream || exit 1

mkdir -p "$WORK/tether"
fill "$BENCH_DIR/tether-inbound.toml" "$WORK/tether/inbound.toml"
fill "$BENCH_DIR/tether-outbound.toml" "$WORK/tether/outbound.toml"
fill "$BENCH_DIR/tether-outbound-h2.toml" "$WORK/tether/outbound-h2.toml"
fill "$BENCH_DIR/tether-outbound-http1.toml" "$WORK/tether/outbound-http1.toml"
cp "$BENCH_DIR/policy.toml" "$WORK/tether/policy.toml"
# pair_configs NAME IN_PORT OUT_PORT: the default pair's two configs on ports of their own, as
# $WORK/tether/inbound-NAME.toml and outbound-NAME.toml.
pair_configs() {
    local side
    for side in inbound outbound; do
        sed -e "s/@TETHER_IN@/$2/g" -e "s/@TETHER_OUT@/$3/g" "$BENCH_DIR/tether-$side.toml" \
            >"$WORK/tether/$side-$1.tmpl"
        fill "$WORK/tether/$side-$1.tmpl" "$WORK/tether/$side-$1.toml"
    done
}
# The access-log pair: each sidecar logging every request to a file, as an operator who turns
# the access log on would run it.
pair_configs log "$P_TETHER_LOG_IN" "$P_TETHER_LOG_OUT"
for side in inbound outbound; do
    printf '\n[access_log]\npath = "%s"\n' "$WORK/tether/access-$side.log" >>"$WORK/tether/$side-log.toml"
done
# The TCP-mode pair: the default pair's configs with the inbound and the service in TCP mode
# (both are the last section of their file), the service on a listener of its own.
pair_configs tcp "$P_TETHER_TCP_IN" "$P_TETHER_TCP_HTTP"
printf 'mode = "tcp"\n' >>"$WORK/tether/inbound-tcp.toml"
printf 'mode = "tcp"\nlisten = "127.0.0.1:%s"\n' "$P_TETHER_TCP_OUT" >>"$WORK/tether/outbound-tcp.toml"
start tether-tcp-in "$BIN/tether-proxy" run --config "$WORK/tether/inbound-tcp.toml"
start tether-tcp-out "$BIN/tether-proxy" run --config "$WORK/tether/outbound-tcp.toml"
start tether-in "$BIN/tether-proxy" run --config "$WORK/tether/inbound.toml"
start tether-out "$BIN/tether-proxy" run --config "$WORK/tether/outbound.toml"
start tether-h2-out "$BIN/tether-proxy" run --config "$WORK/tether/outbound-h2.toml"
start tether-http1-out "$BIN/tether-proxy" run --config "$WORK/tether/outbound-http1.toml"
# The baseline pair: the default pair's configs on ports of their own, run by $BASELINE.
if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE" ] || {
        log "BASELINE=$BASELINE is not an executable"
        exit 1
    }
    pair_configs baseline "$P_BASELINE_IN" "$P_BASELINE_OUT"
    start baseline-in "$BASELINE" run --config "$WORK/tether/inbound-baseline.toml"
    start baseline-out "$BASELINE" run --config "$WORK/tether/outbound-baseline.toml"
    wait_port "$P_BASELINE_IN" baseline-in && wait_port "$P_BASELINE_OUT" baseline-out || exit 1
fi
start tether-log-in "$BIN/tether-proxy" run --config "$WORK/tether/inbound-log.toml"
start tether-log-out "$BIN/tether-proxy" run --config "$WORK/tether/outbound-log.toml"
wait_port "$P_TETHER_IN" tether-in || exit 1
wait_port "$P_TETHER_OUT" tether-out || exit 1
wait_port "$P_TETHER_H2_OUT" tether-h2-out || exit 1
wait_port "$P_TETHER_H1_OUT" tether-http1-out || exit 1
wait_port "$P_TETHER_LOG_IN" tether-log-in || exit 1
wait_port "$P_TETHER_LOG_OUT" tether-log-out || exit 1
wait_port "$P_TETHER_TCP_IN" tether-tcp-in || exit 1
wait_port "$P_TETHER_TCP_OUT" tether-tcp-out || exit 1

if [ "$HAVE_NGINX_PAIR" = 1 ]; then
    start_nginx nginx-in "$BENCH_DIR/peers/nginx-inbound.conf"
    start_nginx nginx-out "$BENCH_DIR/peers/nginx-outbound.conf"
    wait_port "$P_NGINX_IN" nginx-in && wait_port "$P_NGINX_OUT" nginx-out || exit 1
fi
if [ "$HAVE_HAPROXY_PAIR" = 1 ]; then
    mkdir -p "$WORK/haproxy"
    fill "$BENCH_DIR/peers/haproxy-inbound.cfg" "$WORK/haproxy/inbound.cfg"
    fill "$BENCH_DIR/peers/haproxy-outbound.cfg" "$WORK/haproxy/outbound.cfg"
    start haproxy-in haproxy -db -f "$WORK/haproxy/inbound.cfg"
    start haproxy-out haproxy -db -f "$WORK/haproxy/outbound.cfg"
    wait_port "$P_HAPROXY_IN" haproxy-in && wait_port "$P_HAPROXY_OUT" haproxy-out || exit 1
fi

# nginx masters fork their workers: those PIDs are ours to stop too.
sleep 0.5
for name in upstream nginx-in nginx-out; do
    [ -n "${PID_OF[$name]:-}" ] || continue
    for child in $(pgrep -P "${PID_OF[$name]}" 2>/dev/null); do PIDS+=("$child"); done
done

# Targets and how to reach them.
TARGETS=(direct tether tether-http1 tether-h2)
[ -n "$BASELINE" ] && TARGETS+=(baseline)
TARGETS+=(tether-tcp)
PEERS=()
[ "$HAVE_NGINX_PAIR" = 1 ] && TARGETS+=(nginx) && PEERS+=(nginx)
[ "$HAVE_HAPROXY_PAIR" = 1 ] && TARGETS+=(haproxy) && PEERS+=(haproxy)
declare -A OUT_PORT IN_PORT FULLHS_PORT
OUT_PORT=([direct]=$P_UPSTREAM [tether]=$P_TETHER_OUT [tether-h2]=$P_TETHER_H2_OUT [tether-http1]=$P_TETHER_H1_OUT [tether-log]=$P_TETHER_LOG_OUT [tether-tcp]=$P_TETHER_TCP_OUT [baseline]=$P_BASELINE_OUT [nginx]=$P_NGINX_OUT [haproxy]=$P_HAPROXY_OUT)
IN_PORT=([tether]=$P_TETHER_IN [nginx]=$P_NGINX_IN [haproxy]=$P_HAPROXY_IN)
FULLHS_PORT=([nginx]=$P_NGINX_FULLHS [haproxy]=$P_HAPROXY_FULLHS)
out_pids() { case $1 in tether) echo "${PID_OF[tether-out]}" ;; tether-log) echo "${PID_OF[tether-log-out]}" ;; tether-tcp) echo "${PID_OF[tether-tcp-out]}" ;; baseline) echo "${PID_OF[baseline-out]}" ;; tether-h2) echo "${PID_OF[tether-h2-out]}" ;; tether-http1) echo "${PID_OF[tether-http1-out]}" ;; nginx) tree_pids "${PID_OF[nginx-out]}" ;; haproxy) echo "${PID_OF[haproxy-out]}" ;; esac; }
# The Tether variants share the default pair's inbound: its handshakes are measured once.
own_inbound() { case $1 in direct | tether-h2 | tether-http1 | tether-tcp | baseline) return 1 ;; *) return 0 ;; esac; }
in_pids() { case $1 in tether | tether-h2 | tether-http1) echo "${PID_OF[tether-in]}" ;; tether-log) echo "${PID_OF[tether-log-in]}" ;; tether-tcp) echo "${PID_OF[tether-tcp-in]}" ;; baseline) echo "${PID_OF[baseline-in]}" ;; nginx) tree_pids "${PID_OF[nginx-in]}" ;; haproxy) echo "${PID_OF[haproxy-in]}" ;; esac; }
# The certificate each target's own outbound presents, for the handshake client.
client_cert() { case $1 in tether) echo "$PKI/service-a/chain.pem $PKI/service-a/key.pem" ;; *) echo "$PKI/client.crt $PKI/client.key" ;; esac; }

# Every path must answer 200 before anything is measured.
for t in "${TARGETS[@]}" tether-log; do
    s=$(http_status "${OUT_PORT[$t]}")
    if [ "${s#HTTP/1.1 200}" = "$s" ]; then
        log "$t does not answer 200 through its path (got: ${s:-nothing}); logs in $WORK/logs"
        exit 1
    fi
    if [ -n "${FULLHS_PORT[$t]:-}" ]; then
        s=$(http_status "${FULLHS_PORT[$t]}")
        [ "${s#HTTP/1.1 200}" != "$s" ] || {
            log "$t's new-connection-per-request listener does not answer 200 (got: ${s:-nothing})"
            exit 1
        }
    fi
done
log "every path answers 200: ${TARGETS[*]}"

sleep 1
for t in "${PEERS[@]}" tether; do
    # shellcheck disable=SC2046
    record 0 idle "$t" rss_out_kib "$(rss_kib $(out_pids "$t"))"
    # shellcheck disable=SC2046
    record 0 idle "$t" rss_in_kib "$(rss_kib $(in_pids "$t"))"
done

# ---------------------------------------------------------------------------------------------
# Workloads.
to_ms() { # wrk latency like 86.00us / 1.20ms / 2.00s → ms
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# wrk_run ROUND WORKLOAD TARGET PORT CONNS [EXTRA wrk ARGS...]
wrk_run() {
    local round=$1 workload=$2 target=$3 port=$4 conns=$5
    shift 5
    local raw="$RAW/r$round-$workload-$target.txt"
    local opids="" ipids="" c0o c0i sampler=""
    if [ "$target" != direct ]; then
        opids=$(out_pids "$target")
        ipids=$(in_pids "$target")
    fi
    # shellcheck disable=SC2086
    c0o=$(cpu_ticks $opids)
    # shellcheck disable=SC2086
    c0i=$(cpu_ticks $ipids)
    if [ "$workload" = ka32 ] && [ "$target" != direct ]; then
        # RSS near the end of the run, with the connections still open.
        # shellcheck disable=SC2086
        (sleep "$(awk -v d="$DURATION" 'BEGIN { print (d > 1 ? d - 0.5 : d * 0.8) }')"
            echo "$(rss_kib $opids) $(rss_kib $ipids)") >"$raw.rss" &
        sampler=$!
        PIDS+=("$sampler")
    fi
    run_fg wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" -H "Host: service-b" "$@" \
        "http://127.0.0.1:$port/" >"$raw" 2>&1
    if [ -n "$sampler" ]; then
        wait "$sampler"
        forget "$sampler"
    fi
    local c1o c1i
    # shellcheck disable=SC2086
    c1o=$(cpu_ticks $opids)
    # shellcheck disable=SC2086
    c1i=$(cpu_ticks $ipids)
    local rps total errs
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$raw")
    total=$(awk '/ requests in / { print $1 }' "$raw")
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
        /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$raw")
    if [ -z "$rps" ]; then
        note "round $round $workload $target: wrk reported nothing (see $raw)"
        return
    fi
    record "$round" "$workload" "$target" rps "$rps"
    record "$round" "$workload" "$target" errors "$errs"
    if [ "$errs" != 0 ]; then
        note "round $round $workload $target: $errs errors or non-2xx responses (see $raw)"
    fi
    if grep -q 'Latency Distribution' "$raw"; then
        record "$round" "$workload" "$target" p50_ms "$(to_ms "$(awk '$1 == "50%" { print $2 }' "$raw")")"
        record "$round" "$workload" "$target" p99_ms "$(to_ms "$(awk '$1 == "99%" { print $2 }' "$raw")")"
    fi
    if [ -n "$opids" ] && [ "${total:-0}" -gt 0 ]; then
        # CPU per request, and the kernel's (system time) part of it.
        record "$round" "$workload" "$target" cpu_out_us "$(per_request "$c0o" "$c1o" 1 "$total")"
        record "$round" "$workload" "$target" cpu_in_us "$(per_request "$c0i" "$c1i" 1 "$total")"
        record "$round" "$workload" "$target" sys_out_us "$(per_request "$c0o" "$c1o" 2 "$total")"
        record "$round" "$workload" "$target" sys_in_us "$(per_request "$c0i" "$c1i" 2 "$total")"
    fi
    if [ -s "$raw.rss" ]; then
        record "$round" "$workload" "$target" rss_out_kib "$(awk '{ print $1 }' "$raw.rss")"
        record "$round" "$workload" "$target" rss_in_kib "$(awk '{ print $2 }' "$raw.rss")"
    fi
}

# hs_run ROUND WORKLOAD TARGET MODE: handshake_load straight at TARGET's inbound.
hs_run() {
    local round=$1 workload=$2 target=$3 mode=$4
    local raw="$RAW/r$round-$workload-$target.txt" cert key pidargs=() p
    read -r cert key <<<"$(client_cert "$target")"
    for p in $(in_pids "$target"); do pidargs+=(--pid "$p"); done
    run_fg "$BIN/examples/handshake_load" --addr "127.0.0.1:${IN_PORT[$target]}" --cert "$cert" \
        --key "$key" --bundle "$PKI/ca.crt" --expect "$ID_B" --mode "$mode" \
        --duration "$DURATION" --concurrency 16 "${pidargs[@]}" >"$raw" 2>&1
    local line
    line=$(grep '^handshake_load ' "$raw" | tail -1)
    if [ -z "$line" ]; then
        note "round $round $workload $target: handshake_load reported nothing (see $raw)"
        return
    fi
    kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    record "$round" "$workload" "$target" rps "$(kv rate)"
    record "$round" "$workload" "$target" errors "$(kv failed)"
    record "$round" "$workload" "$target" cpu_in_us "$(kv server_cpu_us_per_op)"
    [ "$(kv failed)" = 0 ] || note "round $round $workload $target: $(kv failed) failed handshakes ($(grep 'first failure' "$raw" | head -1))"
}

# Rotates the list by N so each target leads in turn.
rotate() {
    local n=$1
    shift
    local a=("$@") i len=$#
    for ((i = 0; i < len; i++)); do echo "${a[$(((i + n) % len))]}"; done
}

log "rounds: $ROUNDS × ${DURATION}s runs; targets: ${TARGETS[*]}; upstream: $UPSTREAM_KIND"
echo "$(date -u +%FT%TZ) start load=$(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/loadavg.txt"
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS (load average $(cut -d' ' -f1 /proc/loadavg))"
    echo "round $round start load=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
    if [ "$HAVE_WRK" = 1 ]; then
        want ka32 && for t in $(rotate "$round" "${TARGETS[@]}"); do
            wrk_run "$round" ka32 "$t" "${OUT_PORT[$t]}" "$CONNS"
        done
        # The access log's cost: the same pair with and without it, alternating who goes first.
        want ka32_log && for t in $(rotate "$round" tether tether-log); do
            wrk_run "$round" ka32_log "$t" "${OUT_PORT[$t]}" "$CONNS"
            # Hundreds of MB a run: keep the disk out of it (the sidecars append, so truncating
            # under them is safe).
            : >"$WORK/tether/access-inbound.log"
            : >"$WORK/tether/access-outbound.log"
        done
        want ka1 && for t in $(rotate "$round" "${TARGETS[@]}"); do
            wrk_run "$round" ka1 "$t" "${OUT_PORT[$t]}" 1 --latency
        done
        want newconn_pair && for t in $(rotate "$round" "${TARGETS[@]}"); do
            case $t in
            direct) wrk_run "$round" newconn_pair direct "$P_UPSTREAM" "$CONNS" -H "Connection: close" ;;
            tether | tether-h2 | tether-http1 | tether-tcp | baseline) ;; # the outbound always reuses: see newconn_inbound
            *) wrk_run "$round" newconn_pair "$t" "${FULLHS_PORT[$t]}" "$CONNS" ;;
            esac
        done
    fi
    want newconn_inbound && for t in $(rotate "$round" "${TARGETS[@]}"); do
        own_inbound "$t" && hs_run "$round" newconn_inbound "$t" request
    done
    want handshake_inbound && for t in $(rotate "$round" "${TARGETS[@]}"); do
        own_inbound "$t" && hs_run "$round" handshake_inbound "$t" handshake
    done
done

# RSS while holding HOLD_CONNS connections: HTTP keep-alive clients on each outbound (wrk), and
# mTLS connections with one request each on each inbound (handshake_load --mode hold).
want hold && log "RSS holding $HOLD_CONNS connections"
want hold && for t in "${PEERS[@]}" tether; do
    if [ "$HAVE_WRK" = 1 ]; then
        raw="$RAW/hold-out-$t.txt"
        # shellcheck disable=SC2046
        (sleep 4.5 && rss_kib $(out_pids "$t")) >"$raw.rss" &
        sampler=$!
        PIDS+=("$sampler")
        run_fg wrk -t1 -c"$HOLD_CONNS" -d5s -H "Host: service-b" "http://127.0.0.1:${OUT_PORT[$t]}/" >"$raw" 2>&1
        wait "$sampler"
        forget "$sampler"
        record 0 hold "$t" rss_out_kib "$(cat "$raw.rss")"
        errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
            /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$raw")
        [ "$errs" = 0 ] || note "hold $t outbound: $errs wrk timeouts (2 s) or errors with $HOLD_CONNS busy connections: it could not keep up (RSS still recorded; see $raw)"
    fi
    raw="$RAW/hold-in-$t.txt"
    read -r cert key <<<"$(client_cert "$t")"
    "$BIN/examples/handshake_load" --addr "127.0.0.1:${IN_PORT[$t]}" --cert "$cert" --key "$key" \
        --bundle "$PKI/ca.crt" --expect "$ID_B" --mode hold --concurrency "$HOLD_CONNS" \
        --duration 3 >"$raw" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 600); do
        grep -q 'mode=hold connected=' "$raw" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 0.5
    # shellcheck disable=SC2046
    rss=$(rss_kib $(in_pids "$t"))
    wait "$pid"
    forget "$pid"
    held=$(sed -n 's/.*connected=\([0-9]*\).*/\1/p' "$raw")
    if [ "${held:-0}" = "$HOLD_CONNS" ]; then
        record 0 hold "$t" rss_in_kib "$rss"
    else
        note "hold $t inbound: only ${held:-0} of $HOLD_CONNS mTLS connections opened; RSS not recorded (see $raw)"
    fi
done

# A burst of BURST_CONNS busy keep-alive connections through each pair (wrk → outbound → mTLS
# → inbound → upstream), then closed: the pair's RSS (outbound + inbound) just before, near the
# end of the 5 s burst, and 1 s and 5 s after the last connection closed. Memory a sidecar keeps
# after a burst is memory the node never gets back.
want burst && [ "$HAVE_WRK" = 1 ] && log "RSS through a burst of $BURST_CONNS busy connections"
pair_rss() { # TARGET: "outbound-KiB inbound-KiB"
    # shellcheck disable=SC2046
    echo "$(rss_kib $(out_pids "$1")) $(rss_kib $(in_pids "$1"))"
}
want burst && [ "$HAVE_WRK" = 1 ] && for t in tether "${PEERS[@]}"; do
    raw="$RAW/burst-$t.txt"
    read -r o i <<<"$(pair_rss "$t")"
    record 0 burst_before "$t" rss_out_kib "$o"
    record 0 burst_before "$t" rss_in_kib "$i"
    (sleep 4.5 && pair_rss "$t") >"$raw.rss" &
    sampler=$!
    PIDS+=("$sampler")
    run_fg wrk -t1 -c"$BURST_CONNS" -d5s -H "Host: service-b" "http://127.0.0.1:${OUT_PORT[$t]}/" >"$raw" 2>&1
    wait "$sampler"
    forget "$sampler"
    read -r o i <"$raw.rss"
    record 0 burst "$t" rss_out_kib "$o"
    record 0 burst "$t" rss_in_kib "$i"
    record 0 burst "$t" rps "$(awk '/^Requests\/sec:/ { print $2 }' "$raw")"
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
        /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$raw")
    [ "$errs" = 0 ] || note "burst $t: $errs wrk timeouts (2 s) or errors with $BURST_CONNS busy connections (RSS still recorded; see $raw)"
    sleep 1
    read -r o i <<<"$(pair_rss "$t")"
    record 0 burst_after1 "$t" rss_out_kib "$o"
    record 0 burst_after1 "$t" rss_in_kib "$i"
    sleep 4
    read -r o i <<<"$(pair_rss "$t")"
    record 0 burst_after5 "$t" rss_out_kib "$o"
    record 0 burst_after5 "$t" rss_in_kib "$i"
done

# The CA's issuance throughput over its HTTPS API (its own process, all cores).
want ca && log "CA issuance over HTTPS ($CA_COUNT enrollments per run)"
want ca && for ((round = 1; round <= ROUNDS; round++)); do
    for mode in keepalive newconn; do
        raw="$RAW/r$round-ca-$mode.txt"
        extra=()
        [ "$mode" = newconn ] && extra=(--new-connections)
        run_fg "$BIN/examples/enroll_load" --ca-bin "$BIN/tether-ca" --count "$CA_COUNT" --concurrency 32 "${extra[@]}" >"$raw" 2>&1 ||
            note "round $round CA $mode: enroll_load failed (see $raw)"
        line=$(grep '^enroll_load: .* certs/s' "$raw" | tail -1)
        rate=$(sed -n 's/.* = \([0-9]*\) certs\/s.*/\1/p' <<<"$line")
        cpu=$(sed -n 's/.* = \([0-9]*\) µs\/cert.*/\1/p' <<<"$line")
        record "$round" "ca_$mode" tether-ca rps "$rate"
        record "$round" "ca_$mode" tether-ca cpu_us "$cpu"
    done
done
echo "$(date -u +%FT%TZ) end load=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"

# ---------------------------------------------------------------------------------------------
{
    echo "rounds=$ROUNDS"
    echo "duration=$DURATION"
    echo "conns=$CONNS"
    echo "hold_conns=$HOLD_CONNS"
    echo "burst_conns=$BURST_CONNS"
    echo "ca_count=$CA_COUNT"
    echo "upstream=$UPSTREAM_KIND"
    echo "cores=$(nproc)"
    echo "wrk_threads=$WRK_THREADS"
    echo "versions=tether-proxy $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown); $(nginx -v 2>&1 | head -1 || true); $(haproxy -v 2>/dev/null | head -1 || true); $(openssl version 2>/dev/null || true)"
} >"$OUT/meta.txt"
python3 "$BENCH_DIR/report.py" "$OUT" | tee "$OUT/report.md"
log "report: $OUT/report.md; raw outputs: $RAW; logs: $WORK/logs"

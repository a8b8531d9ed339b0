//! The `tether-ca` flags: [`Cli`], its [`Command`]s and their parsers. Every flag also reads
//! an environment variable where that makes sense (`TETHER_CA_*`), and every duration is a
//! humantime duration (`90s`, `10m`, `30d`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use time::OffsetDateTime;

use tether_certs::crl::Reason;
use tether_certs::{Serial, SpiffeId, TrustDomain};

use super::k8s_args::K8sArgs;
use crate::settings::{InitOptions, Settings};
use crate::store::DatabaseUrl;
use crate::timefmt::parse_rfc3339;

/// Tether's certificate authority: issues short-lived SPIFFE X509-SVIDs, records them in SQLite,
/// revokes them and publishes signed CRLs.
#[derive(Debug, Parser)]
#[command(name = "tether-ca", version, propagate_version = true)]
pub struct Cli {
    /// The CA's state directory (keys, certificates, SQLite database).
    #[arg(
        long,
        global = true,
        env = "TETHER_CA_STATE_DIR",
        default_value = ".tether/ca"
    )]
    pub state_dir: PathBuf,
    /// How `serve` writes its log: "text" (the default) or "json", one object per line.
    #[arg(long, global = true, env = "TETHER_LOG_FORMAT", default_value_t = tether_net::LogFormat::Text)]
    pub log_format: tether_net::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new CA: root, issuing intermediate, database, API server certificate and an admin
    /// client credential. Refuses to touch an existing, non-empty state dir.
    Init(InitArgs),
    /// Run the HTTPS API (HTTP/1.1 and h2).
    Serve {
        /// Address for the API.
        #[arg(long, env = "TETHER_CA_LISTEN", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Optional plain-HTTP listener for `GET /metrics` (the API serves /metrics too).
        #[arg(long, env = "TETHER_CA_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Enrollment with Kubernetes service-account tokens.
        #[command(flatten)]
        k8s: K8sArgs,
    },
    /// Print a one-time enrollment token for SPIFFE_ID (only its hash is stored).
    Enroll {
        /// The identity the token will enroll, e.g. spiffe://demo.tether/ns/default/sa/service-a.
        #[arg(value_parser = parse_id)]
        spiffe_id: SpiffeId,
        /// How long the token stays usable.
        #[arg(long, env = "TETHER_CA_TOKEN_TTL", default_value = "10m", value_parser = parse_duration)]
        token_ttl: Duration,
    },
    /// Issue a certificate with a key generated here and write key.pem (0600), cert.pem,
    /// chain.pem and bundle.pem to --out.
    Issue {
        /// The identity to issue.
        #[arg(value_parser = parse_id)]
        spiffe_id: SpiffeId,
        /// Output directory (created 0700 if missing).
        #[arg(long, env = "TETHER_CA_OUT")]
        out: PathBuf,
        /// Requested lifetime (capped at the CA's max TTL and the intermediate's expiry).
        #[arg(long, env = "TETHER_CA_TTL", default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Revoke one certificate by serial (hex, colons allowed), or with --id every certificate of an
    /// identity, and publish a new CRL listing them.
    Revoke {
        /// The serial, as `list` prints it. Give this or --id.
        #[arg(value_parser = parse_serial, required_unless_present = "id", conflicts_with = "id")]
        serial: Option<Serial>,
        /// Revoke every unrevoked, unexpired certificate of this identity (issued before
        /// --before), in one transaction with one new CRL.
        #[arg(long, value_parser = parse_id)]
        id: Option<SpiffeId>,
        /// With --id: only certificates issued before this time (RFC 3339, e.g.
        /// 2025-01-31T12:00:00Z). Default: every certificate issued so far.
        #[arg(long, requires = "id", conflicts_with = "serial", value_parser = parse_rfc3339)]
        before: Option<OffsetDateTime>,
        /// unspecified, key-compromise, ca-compromise, affiliation-changed, superseded,
        /// cessation-of-operation or privilege-withdrawn.
        #[arg(long, env = "TETHER_CA_REASON", value_parser = parse_reason)]
        reason: Option<Reason>,
        /// Then wait until every sidecar that polled the CA in the last minute has acknowledged
        /// the new CRL; exit 1 listing those that did not.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (no environment fallback: it only means something with --wait).
        #[arg(long, requires = "wait", default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Write the current CRL (PEM) to --out or stdout; re-signs it first if it is past half its
    /// validity.
    Crl {
        /// Output file (default: stdout).
        #[arg(long, env = "TETHER_CA_OUT")]
        out: Option<PathBuf>,
    },
    /// List issued certificates: serial, identity, not-after, revoked.
    List {
        /// Only unrevoked certificates that expire within this window.
        #[arg(long, env = "TETHER_CA_EXPIRING_WITHIN", value_parser = parse_duration)]
        expiring_within: Option<Duration>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The sidecars that polled for CRLs with a client certificate: instance, identity, serial,
    /// certificate not-after, CRL number held, bundle version held, last seen.
    Fleet {
        /// Only sidecars seen within this window.
        #[arg(long, env = "TETHER_CA_WITHIN", default_value = "60s", value_parser = parse_duration)]
        within: Duration,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Root rotation: rotate, list, retire.
    Root {
        /// What to do with the roots.
        #[command(subcommand)]
        command: RootCommand,
    },
    /// CA replicas sharing this CA's database: add, remove, list.
    Replica {
        /// What to do with the replicas.
        #[command(subcommand)]
        command: ReplicaCommand,
    },
    /// Exit 1 with one line per problem (root or intermediate expiring within the window, stale
    /// CRL, a leaf outliving its issuer, a sidecar whose certificate is expiring unrenewed);
    /// else print "ok".
    Check {
        /// How far ahead to look.
        #[arg(long, env = "TETHER_CA_WARN_WITHIN", default_value = "7d", value_parser = parse_duration)]
        warn_within: Duration,
    },
}

/// `tether-ca init`'s flags.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Trust domain, e.g. `demo.tether`.
    #[arg(long, env = "TETHER_CA_TRUST_DOMAIN", value_parser = parse_td)]
    pub trust_domain: TrustDomain,
    /// Root CA lifetime.
    #[arg(long, env = "TETHER_CA_ROOT_TTL", default_value = "365d", value_parser = parse_duration)]
    pub root_ttl: Duration,
    /// Issuing intermediate lifetime (capped at the root's).
    #[arg(long, env = "TETHER_CA_INTERMEDIATE_TTL", default_value = "30d", value_parser = parse_duration)]
    pub intermediate_ttl: Duration,
    /// Extra DNS name or IP for the API's certificate (repeatable); localhost, 127.0.0.1 and
    /// ::1 are always included.
    #[arg(long = "san", env = "TETHER_CA_SAN", value_delimiter = ',')]
    pub sans: Vec<String>,
    /// Leaf lifetime when none is asked for.
    #[arg(long, env = "TETHER_CA_DEFAULT_TTL", default_value = "1h", value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// Longest leaf lifetime the CA grants.
    #[arg(long, env = "TETHER_CA_MAX_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// CRL validity (nextUpdate − thisUpdate); the server re-signs at half of it.
    #[arg(long, env = "TETHER_CA_CRL_VALIDITY", default_value = "24h", value_parser = parse_duration)]
    pub crl_validity: Duration,
    /// A PostgreSQL database shared by replicas across hosts,
    /// `postgres://USER@HOST[:PORT]/DB` (no password: PGPASSWORD or ~/.pgpass supply it; add
    /// `?sslmode=verify-full&sslrootcert=/PATH/ca.pem` for TLS). Without it the CA keeps an
    /// embedded SQLite file, ca.db, in the state dir.
    // Checked in `options`, not by clap: clap's errors repeat the value, which may hold a
    // password by mistake.
    #[arg(long, env = "TETHER_CA_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
}

impl InitArgs {
    /// What `init` creates from these flags: the intermediate's lifetime capped at the root's;
    /// refused when the default leaf lifetime exceeds the longest one.
    pub fn options(&self) -> Result<InitOptions, String> {
        if self.default_ttl > self.max_ttl {
            return Err("--default-ttl must not be longer than --max-ttl".into());
        }
        Ok(InitOptions {
            trust_domain: self.trust_domain.clone(),
            root_ttl: self.root_ttl,
            intermediate_ttl: self.intermediate_ttl.min(self.root_ttl),
            extra_sans: self.sans.clone(),
            database: self
                .database
                .as_deref()
                .map(DatabaseUrl::parse)
                .transpose()
                .map_err(|e| format!("--database: {e}"))?,
            settings: Settings {
                default_ttl: self.default_ttl,
                max_ttl: self.max_ttl,
                crl_validity: self.crl_validity,
            },
        })
    }
}

/// `tether-ca root …`.
#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Make a new root + intermediate; the bundle holds old + new, new certificates are signed by
    /// the new intermediate, and the API certificate and admin credential are re-issued. A
    /// running server picks it up without restart.
    Rotate {
        /// Lifetime of the new root.
        #[arg(long, env = "TETHER_CA_ROOT_TTL", default_value = "365d", value_parser = parse_duration)]
        ttl: Duration,
        /// Lifetime of the new intermediate (capped at the root's).
        #[arg(long, env = "TETHER_CA_INTERMEDIATE_TTL", default_value = "30d", value_parser = parse_duration)]
        intermediate_ttl: Duration,
    },
    /// Remove a root from the bundle. Refused while unexpired, unrevoked certificates chain to it
    /// or sidecars seen in the last minute hold a bundle without the current root (unless
    /// --force); always refused for the current root and the last one.
    Retire {
        /// The root's SHA-256 fingerprint (or at least its first 8 hex digits), as `root list`
        /// prints it.
        fingerprint: String,
        /// Retire even though certificates or sidecars still depend on it (they will fail).
        #[arg(long)]
        force: bool,
    },
    /// Every root: generation, fingerprint, trust domain, not-after, status (current, trusted,
    /// retired).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `tether-ca replica …`.
#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Write a new replica's state dir to --out: the shared database's location, the seal key,
    /// its identity, the bundle, the current signing material and its own API certificate and
    /// admin credential. Copy it to its host and run `tether-ca --state-dir DIR serve`.
    Add {
        /// The new replica's state dir (created 0700; must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS name or IP for its API certificate (repeatable); localhost, 127.0.0.1 and
        /// ::1 are always included.
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
        /// Its id (a-z, 0-9, '-', '_'; default: 8 random hex digits).
        #[arg(long)]
        id: Option<String>,
    },
    /// Mark a replica removed: it refuses to serve and to sign from then on, and its API
    /// server and admin certificates are revoked in a new CRL.
    Remove {
        /// The replica's id, as `replica list` prints it.
        id: String,
    },
    /// Every replica: id, API names, when added, when removed.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; use a duration like 90s, 10m, 1h, 30d"))?;
    if d.is_zero() {
        return Err("duration must be greater than zero".into());
    }
    Ok(d)
}

fn parse_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| e.to_string())
}

fn parse_td(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| e.to_string())
}

fn parse_serial(s: &str) -> Result<Serial, String> {
    s.parse::<Serial>().map_err(|e| e.to_string())
}

fn parse_reason(s: &str) -> Result<Reason, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `init` with only a trust domain must create what [`InitOptions::with_defaults`] says,
    /// which benches, examples and tests build their CAs from.
    #[test]
    fn init_flag_defaults_match_init_options_with_defaults() {
        let cli = Cli::try_parse_from(["tether-ca", "init", "--trust-domain", "demo.local"])
            .expect("parses");
        let Command::Init(args) = cli.command else {
            panic!("not init: {:?}", cli.command);
        };
        let want = InitOptions::with_defaults(args.trust_domain.clone());
        assert_eq!(args.root_ttl, want.root_ttl);
        assert_eq!(args.intermediate_ttl, want.intermediate_ttl);
        assert_eq!(args.options(), Ok(want));
    }

    #[test]
    fn init_caps_the_intermediate_and_refuses_a_default_longer_than_the_max() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["tether-ca", "init", "--trust-domain", "demo.local"];
            argv.extend_from_slice(extra);
            let Command::Init(args) = Cli::try_parse_from(argv).expect("parses").command else {
                panic!("not init");
            };
            args.options()
        };
        let capped = parse(&["--root-ttl", "10d", "--intermediate-ttl", "30d"]).unwrap();
        assert_eq!(capped.intermediate_ttl, Duration::from_secs(10 * 86_400));
        let err = parse(&["--default-ttl", "2d", "--max-ttl", "1d"]).unwrap_err();
        assert!(err.contains("--default-ttl"), "{err}");
    }

    #[test]
    fn times_and_durations_are_checked_at_parse_time() {
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        let revoke = |before: &str| {
            Cli::try_parse_from([
                "tether-ca",
                "revoke",
                "--id",
                "spiffe://td/a",
                "--before",
                before,
            ])
        };
        assert!(revoke("2025-01-31T12:00:00Z").is_ok());
        assert!(revoke("yesterday").is_err());
    }
}

//! The `tether-ca` command line.
//!
//! Which commands talk to what: `serve` runs the HTTPS API; every other command works directly on
//! the state directory (SQLite serializes them with a running server), so they work whether or
//! not the server runs, and a revocation or root rotation made here reaches a running server
//! (and through it the long-polling sidecars) within the server's poll interval (100 ms).
//!
//! Exit status: 0 on success; 1 when the command failed or found a problem (`check` found
//! something, `revoke --wait` timed out, `root retire` was refused); 2 on a usage error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use tether_certs::crl::Reason;
use tether_certs::{Serial, SpiffeId, TrustDomain};

use crate::authority::unix_rfc3339 as rfc3339;
use crate::authority::{Authority, CaError, InitOptions, Settings};
use crate::rotation::RotateOptions;

mod report;

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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new CA: root, issuing intermediate, database, API server certificate and an admin
    /// client credential. Refuses to touch an existing, non-empty state dir.
    Init {
        /// Trust domain, e.g. `demo.tether`.
        #[arg(long, env = "TETHER_CA_TRUST_DOMAIN", value_parser = parse_td)]
        trust_domain: TrustDomain,
        /// Root CA lifetime.
        #[arg(long, env = "TETHER_CA_ROOT_TTL", default_value = "365d", value_parser = parse_duration)]
        root_ttl: Duration,
        /// Issuing intermediate lifetime (capped at the root's).
        #[arg(long, env = "TETHER_CA_INTERMEDIATE_TTL", default_value = "30d", value_parser = parse_duration)]
        intermediate_ttl: Duration,
        /// Extra DNS name or IP for the API's certificate (repeatable); localhost, 127.0.0.1 and
        /// ::1 are always included.
        #[arg(long = "san", env = "TETHER_CA_SAN", value_delimiter = ',')]
        sans: Vec<String>,
        /// Leaf lifetime when none is asked for.
        #[arg(long, env = "TETHER_CA_DEFAULT_TTL", default_value = "1h", value_parser = parse_duration)]
        default_ttl: Duration,
        /// Longest leaf lifetime the CA grants.
        #[arg(long, env = "TETHER_CA_MAX_TTL", default_value = "24h", value_parser = parse_duration)]
        max_ttl: Duration,
        /// CRL validity (nextUpdate − thisUpdate); the server re-signs at half of it.
        #[arg(long, env = "TETHER_CA_CRL_VALIDITY", default_value = "24h", value_parser = parse_duration)]
        crl_validity: Duration,
    },
    /// Run the HTTPS API (HTTP/1.1 and h2).
    Serve {
        /// Address for the API.
        #[arg(long, env = "TETHER_CA_LISTEN", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Optional plain-HTTP listener for `GET /metrics` (the API serves /metrics too).
        #[arg(long, env = "TETHER_CA_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
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
        #[arg(long, requires = "id", conflicts_with = "serial", value_parser = parse_time)]
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
    /// Exit 1 with one line per problem (root or intermediate expiring within the window, stale
    /// CRL, a leaf outliving its issuer, a sidecar whose certificate is expiring unrenewed);
    /// else print "ok".
    Check {
        /// How far ahead to look.
        #[arg(long, env = "TETHER_CA_WARN_WITHIN", default_value = "7d", value_parser = parse_duration)]
        warn_within: Duration,
    },
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

/// A command failure: printed as `tether-ca: <message>` with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the authority.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Other(String),
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

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{e}; use an RFC 3339 time like 2025-01-31T12:00:00Z"))
}

/// Runs every command except `serve` (which needs a runtime; see `main.rs`).
pub fn run(cli: &Cli) -> Result<(), CliError> {
    let dir = &cli.state_dir;
    match &cli.command {
        Command::Init {
            trust_domain,
            root_ttl,
            intermediate_ttl,
            sans,
            default_ttl,
            max_ttl,
            crl_validity,
        } => {
            if default_ttl > max_ttl {
                return Err(CliError::Other(
                    "--default-ttl must not be longer than --max-ttl".into(),
                ));
            }
            let opts = InitOptions {
                trust_domain: trust_domain.clone(),
                root_ttl: *root_ttl,
                intermediate_ttl: (*intermediate_ttl).min(*root_ttl),
                extra_sans: sans.clone(),
                settings: Settings {
                    default_ttl: *default_ttl,
                    max_ttl: *max_ttl,
                    crl_validity: *crl_validity,
                },
            };
            Authority::init(dir, &opts)?;
            println!(
                "initialized CA for trust domain {trust_domain} in {}",
                dir.display()
            );
            println!("  trust bundle:     {}", dir.join("bundle.pem").display());
            println!("  admin credential: {}", dir.join("admin").display());
            println!(
                "next: tether-ca --state-dir {} serve --listen 127.0.0.1:8443",
                dir.display()
            );
        }
        Command::Serve { .. } => {
            return Err(CliError::Other(
                "serve is run by main with a runtime".into(),
            ))
        }
        Command::Enroll {
            spiffe_id,
            token_ttl,
        } => {
            let ca = Authority::open(dir)?;
            let token = ca.create_token(spiffe_id, *token_ttl)?;
            let until =
                crate::authority::add_secs(OffsetDateTime::now_utc().unix_timestamp(), *token_ttl);
            eprintln!(
                "one-time enrollment token for {spiffe_id}, usable once until {}",
                rfc3339(until)
            );
            println!("{token}");
        }
        Command::Issue {
            spiffe_id,
            out,
            ttl,
        } => {
            let ca = Authority::open(dir)?;
            let issued = ca.issue_to_dir(spiffe_id, *ttl, out)?;
            println!(
                "issued {} serial {} not after {}",
                issued.spiffe_id, issued.serial, issued.not_after
            );
            if let Some(note) = &issued.note {
                println!("note: {note}");
            }
            for f in ["key.pem", "cert.pem", "chain.pem", "bundle.pem"] {
                println!("  {}", out.join(f).display());
            }
        }
        Command::Revoke {
            serial,
            id,
            before,
            reason,
            wait,
            timeout,
        } => {
            let ca = Authority::open(dir)?;
            let published = match (serial, id) {
                (Some(serial), _) => report::revoke_serial(&ca, serial, *reason)?,
                (None, Some(id)) => report::revoke_identity(&ca, id, *before, *reason)?,
                (None, None) => {
                    return Err(CliError::Other("give a SERIAL or --id SPIFFE_ID".into()))
                }
            };
            if *wait {
                // Nothing new published (already revoked, nothing matched): the newest CRL lists
                // everything revoked, so that is the one to wait for.
                let number = match published {
                    Some(n) => n,
                    None => ca.latest_crl_number()?,
                };
                report::wait(&ca, number, *timeout)?;
            }
        }
        Command::Crl { out } => {
            let ca = Authority::open(dir)?;
            let crl = ca.current_crl(ca.settings().crl_validity / 2)?;
            let pem = tether_certs::pem::encode("X509 CRL", &crl.der);
            match out {
                Some(path) => {
                    crate::authority::write_file(path, pem.as_bytes(), 0o644)?;
                    eprintln!("wrote CRL number {} to {}", crl.number, path.display());
                }
                None => print!("{pem}"),
            }
        }
        Command::List {
            expiring_within,
            json,
        } => {
            let ca = Authority::open(dir)?;
            let records = ca.list(*expiring_within)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&records).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<32}  {:<21}  {:<8}  {:<9}  IDENTITY",
                    "SERIAL", "NOT AFTER", "METHOD", "REVOKED"
                );
                for r in &records {
                    let revoked = if r.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "-"
                    };
                    println!(
                        "{:<32}  {:<21}  {:<8}  {:<9}  {}",
                        r.serial,
                        rfc3339(r.not_after),
                        r.method,
                        revoked,
                        r.spiffe_id
                    );
                }
            }
        }
        Command::Fleet { within, json } => report::fleet(&Authority::open(dir)?, *within, *json)?,
        Command::Root { command } => {
            let ca = Authority::open(dir)?;
            match command {
                RootCommand::Rotate {
                    ttl,
                    intermediate_ttl,
                } => report::rotate(
                    &ca,
                    &RotateOptions {
                        root_ttl: *ttl,
                        intermediate_ttl: *intermediate_ttl,
                    },
                )?,
                RootCommand::Retire { fingerprint, force } => {
                    report::retire(&ca, fingerprint, *force)?
                }
                RootCommand::List { json } => report::roots(&ca, *json)?,
            }
        }
        Command::Check { warn_within } => report::check(&Authority::open(dir)?, *warn_within)?,
    }
    Ok(())
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
        let Command::Init {
            trust_domain,
            root_ttl,
            intermediate_ttl,
            sans,
            default_ttl,
            max_ttl,
            crl_validity,
        } = cli.command
        else {
            panic!("not init: {:?}", cli.command);
        };
        let want = InitOptions::with_defaults(trust_domain.clone());
        assert_eq!(trust_domain, want.trust_domain);
        assert_eq!(root_ttl, want.root_ttl);
        assert_eq!(intermediate_ttl, want.intermediate_ttl);
        assert_eq!(sans, want.extra_sans);
        assert_eq!(default_ttl, want.settings.default_ttl);
        assert_eq!(max_ttl, want.settings.max_ttl);
        assert_eq!(crl_validity, want.settings.crl_validity);
    }
}

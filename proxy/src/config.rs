//! The sidecar's configuration: a TOML file, validated once into typed values.
//!
//! Relative paths in the file are resolved against the file's own directory, so a config and its
//! certificates can move together. A bad file is reported once, with the file, the key and the
//! problem, and the process exits 64 (EX_USAGE); nothing starts half-configured.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use tether_certs::SpiffeId;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file (or `<flags>` for a command-line override).
    pub file: String,
    /// The dotted key, e.g. `services.service-b.identity`.
    pub key: String,
    /// What is wrong, phrased for the operator.
    pub problem: String,
}

/// What a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1, HTTP/2, gRPC and upgrades, with per-request policy.
    #[default]
    Http,
    /// Opaque bytes; the policy matches the caller's identity only.
    Tcp,
}

/// Which protocol the inbound side speaks to the local app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1, except gRPC (`content-type: application/grpc*`), which goes as h2c.
    #[default]
    Auto,
    /// Always HTTP/1.1.
    Http1,
    /// Always HTTP/2 with prior knowledge (h2c).
    H2c,
}

/// How HTTP/1.x requests from the app travel to a peer sidecar. HTTP/2 requests from the app
/// (h2c, gRPC) always share one HTTP/2 connection per peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerProtocol {
    /// [`PeerProtocol::Http1`] while the outbound has at most
    /// [`crate::pool::DEDICATED_UP_TO`] app connections open, [`PeerProtocol::H2`] beyond:
    /// dedicated connections are the lowest latency, one multiplexed connection the least CPU
    /// and memory per request under load (both measured by `make bench`).
    #[default]
    Auto,
    /// Each HTTP/1.x connection from the app gets its own keep-alive HTTP/1.1 mTLS connection
    /// to the peer, taken from (and given back to) an idle pool.
    Http1,
    /// Every request shares one HTTP/2 mTLS connection per peer address.
    H2,
}

/// Certificates from files (as written by `tether-ca issue`).
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// Leaf + intermediate, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// Trust bundle (roots), PEM.
    pub bundle: PathBuf,
    /// Optional CRL, PEM or DER, signed by the intermediate in `cert`.
    pub crl: Option<PathBuf>,
}

/// Certificates from the CA: enroll once with a token, then renew over mTLS.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// CA API base URLs, tried in order (failover).
    pub urls: Vec<http::Uri>,
    /// Initial trust anchors: verify the CA and peers until the CA publishes a newer bundle.
    pub bundle: PathBuf,
    /// File holding the one-time enrollment token (read at each enrollment attempt).
    pub token_file: Option<PathBuf>,
    /// The token itself, from `TETHER_PROXY_TOKEN`.
    pub token: Option<String>,
    /// Cached key (0600), certificate, bundle and CRL: the sidecar restarts from here.
    pub state_dir: PathBuf,
}

/// Where the sidecar's certificate comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// `[identity]`: files, watched and reloaded when they change.
    Files(IdentityFiles),
    /// `[ca]`: enrollment and renewal against `tether-ca`.
    Ca(CaSettings),
}

/// What to do when the CRL is stale, and when it counts as stale.
#[derive(Debug, Clone)]
pub struct CrlPolicy {
    /// `deny` (fail closed, default) or `allow` (fail open with an alarm).
    pub on_stale: crate::revocation::OnStale,
    /// How long past nextUpdate a CRL is still fresh enough.
    pub grace: Duration,
}

/// Peers → mTLS → policy → local app.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Where peer sidecars connect.
    pub listen: SocketAddr,
    /// The local app.
    pub app: SocketAddr,
    /// Policy file (hot-reloaded).
    pub policy: PathBuf,
    /// HTTP or TCP.
    pub mode: Mode,
    /// Protocol towards the app.
    pub app_protocol: AppProtocol,
}

/// A peer service the local app may call.
#[derive(Debug, Clone)]
pub struct Service {
    /// The name the app uses as Host.
    pub name: String,
    /// Peer sidecar addresses; several are load-balanced, failed ones skipped for a while.
    pub addresses: Vec<SocketAddr>,
    /// The exact SPIFFE ID the peer must present.
    pub identity: SpiffeId,
    /// HTTP (routed by Host on the outbound listener) or TCP (own listener).
    pub mode: Mode,
    /// For TCP services: the local listener the app connects to.
    pub listen: Option<SocketAddr>,
    /// How HTTP/1.x requests travel to the peer (`peer_protocol`).
    pub peer_protocol: PeerProtocol,
}

/// Timeouts and limits, each with a default that a real deployment can live with.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A TLS handshake slower than this is dropped.
    pub handshake_timeout: Duration,
    /// Time to receive a request's headers (also the HTTP/1.1 keep-alive idle limit).
    pub header_read_timeout: Duration,
    /// Largest request header block; larger gets 431.
    pub max_header_bytes: usize,
    /// Concurrent connections per listener; more are refused.
    pub max_connections: usize,
    /// Idle connection lifetime between sidecars (HTTP/2 keep-alive).
    pub idle_timeout: Duration,
    /// Time for the app (inbound) or the peer (outbound) to answer; then 504.
    pub request_timeout: Duration,
    /// On SIGTERM, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            // 64 KiB matches common proxies; far above any legitimate header block.
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// How long past nextUpdate a CRL still counts as fresh, by default: one hour covers a CA restart
/// or a short outage without failing closed, and is far below the CA's 24 h CRL validity.
pub const DEFAULT_CRL_GRACE: Duration = Duration::from_secs(3600);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Runtime worker threads (`workers`; default: all cores).
    pub workers: usize,
    /// Where the certificates come from.
    pub identity: IdentitySource,
    /// Stale-CRL behaviour.
    pub crl: CrlPolicy,
    /// Inbound listener, if any.
    pub inbound: Option<Inbound>,
    /// Outbound listener, if any.
    pub outbound: Option<SocketAddr>,
    /// Known peer services, by name.
    pub services: Vec<Service>,
    /// Admin listener, if any.
    pub admin: Option<SocketAddr>,
    /// Timeouts and limits.
    pub limits: Limits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    workers: Option<usize>,
    identity: Option<RawIdentity>,
    ca: Option<RawCa>,
    inbound: Option<RawInbound>,
    outbound: Option<RawOutbound>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    cert: String,
    key: String,
    bundle: String,
    crl: Option<String>,
    on_stale_crl: Option<crate::revocation::OnStale>,
    crl_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    urls: Vec<String>,
    bundle: String,
    token_file: Option<String>,
    state_dir: String,
    on_stale_crl: Option<crate::revocation::OnStale>,
    crl_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: String,
    app: String,
    policy: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    app_protocol: AppProtocol,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    address: Vec<String>,
    identity: String,
    #[serde(default)]
    mode: Mode,
    listen: Option<String>,
    peer_protocol: Option<PeerProtocol>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<String>,
    header_read_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    request_timeout: Option<String>,
    drain_timeout: Option<String>,
}

/// Command-line / environment overrides of single settings (`TETHER_PROXY_*`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `workers`.
    pub workers: Option<usize>,
    /// `inbound.listen`.
    pub inbound_listen: Option<String>,
    /// `inbound.app`.
    pub inbound_app: Option<String>,
    /// `inbound.policy`.
    pub inbound_policy: Option<String>,
    /// `outbound.listen`.
    pub outbound_listen: Option<String>,
    /// `admin.listen`.
    pub admin_listen: Option<String>,
    /// `identity.cert`.
    pub identity_cert: Option<String>,
    /// `identity.key`.
    pub identity_key: Option<String>,
    /// `identity.bundle`.
    pub identity_bundle: Option<String>,
    /// `identity.crl`.
    pub identity_crl: Option<String>,
    /// The enrollment token (`TETHER_PROXY_TOKEN`), instead of `ca.token_file`.
    pub token: Option<String>,
}

impl Config {
    /// Reads and validates the file at `path`, then applies `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &file, base, overrides)
    }

    /// Validates TOML `text` (named `file` in errors); relative paths are joined to `base`.
    pub fn parse(
        text: &str,
        file: &str,
        base: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, problem: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            problem,
        };
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let line = e
                .span()
                .map(|s| {
                    format!(
                        " (line {})",
                        text[..s.start.min(text.len())].lines().count().max(1)
                    )
                })
                .unwrap_or_default();
            err("(syntax)", format!("{msg}{line}"))
        })?;
        apply(&mut raw, overrides);
        let path = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let addr = |key: &str, s: &str| -> Result<SocketAddr, ConfigError> {
            s.parse()
                .map_err(|_| err(key, format!("{s:?} is not an IP:port address")))
        };
        let dur =
            |key: &str, s: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match s {
                    None => Ok(default),
                    Some(s) => humantime::parse_duration(s)
                        .map_err(|e| err(key, format!("{s:?}: {e} (e.g. \"10s\", \"5m\")"))),
                }
            };
        let workers = match raw.workers {
            Some(0) => return Err(err("workers", "must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let (identity, on_stale, grace) = match (&raw.identity, &raw.ca) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "[identity] / [ca]",
                    "configure one identity source, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "[identity] / [ca]",
                    "missing: certificates from files ([identity]) or from the CA ([ca])".into(),
                ))
            }
            (Some(i), None) => (
                IdentitySource::Files(IdentityFiles {
                    cert: path(&i.cert),
                    key: path(&i.key),
                    bundle: path(&i.bundle),
                    crl: i.crl.as_deref().map(path),
                }),
                i.on_stale_crl,
                dur("identity.crl_grace", &i.crl_grace, DEFAULT_CRL_GRACE)?,
            ),
            (None, Some(c)) => {
                if c.urls.is_empty() {
                    return Err(err("ca.urls", "needs at least one https:// URL".into()));
                }
                let urls = c
                    .urls
                    .iter()
                    .enumerate()
                    .map(|(i, u)| {
                        let key = format!("ca.urls[{i}]");
                        let uri: http::Uri = u
                            .parse()
                            .map_err(|_| err(&key, format!("{u:?} is not a URL")))?;
                        if uri.scheme_str() != Some("https") || uri.host().is_none() {
                            return Err(err(
                                &key,
                                format!("{u:?} must be an https://host:port URL"),
                            ));
                        }
                        Ok(uri)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let token = overrides.token.clone().filter(|t| !t.trim().is_empty());
                if token.is_none() && c.token_file.is_none() {
                    // Not fatal: a cached certificate in state_dir is enough to start.
                    tracing::debug!(
                        "no enrollment token configured; relying on the cached certificate"
                    );
                }
                (
                    IdentitySource::Ca(CaSettings {
                        urls,
                        bundle: path(&c.bundle),
                        token_file: c.token_file.as_deref().map(path),
                        token,
                        state_dir: path(&c.state_dir),
                    }),
                    c.on_stale_crl,
                    dur("ca.crl_grace", &c.crl_grace, DEFAULT_CRL_GRACE)?,
                )
            }
        };
        let crl = CrlPolicy {
            on_stale: on_stale.unwrap_or_default(),
            grace,
        };
        let inbound = match &raw.inbound {
            None => None,
            Some(i) => Some(Inbound {
                listen: addr("inbound.listen", &i.listen)?,
                app: addr("inbound.app", &i.app)?,
                policy: path(&i.policy),
                mode: i.mode,
                app_protocol: i.app_protocol,
            }),
        };
        let outbound = match &raw.outbound {
            None => None,
            Some(o) => Some(addr("outbound.listen", &o.listen)?),
        };
        let mut services = Vec::new();
        for (name, s) in &raw.services {
            let key = |k: &str| format!("services.{name}.{k}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(err(
                    &format!("services.{name}"),
                    "a service name is a host name: letters, digits, '-', '_', '.'".into(),
                ));
            }
            if s.address.is_empty() {
                return Err(err(&key("address"), "needs at least one address".into()));
            }
            let addresses = s
                .address
                .iter()
                .enumerate()
                .map(|(i, a)| addr(&format!("services.{name}.address[{i}]"), a))
                .collect::<Result<Vec<_>, _>>()?;
            let identity = SpiffeId::parse(&s.identity).map_err(|e| {
                err(
                    &key("identity"),
                    format!("{:?} is not a valid SPIFFE ID: {e}", s.identity),
                )
            })?;
            let listen = match (&s.mode, &s.listen) {
                (Mode::Tcp, Some(l)) => Some(addr(&key("listen"), l)?),
                (Mode::Tcp, None) => {
                    return Err(err(&key("listen"), "a TCP service needs its own local listener".into()))
                }
                (Mode::Http, Some(_)) => {
                    return Err(err(&key("listen"), "only TCP services have a listener; HTTP services are routed by Host on the outbound listener".into()))
                }
                (Mode::Http, None) => None,
            };
            if s.mode == Mode::Tcp && s.peer_protocol.is_some() {
                return Err(err(
                    &key("peer_protocol"),
                    "only HTTP services have a peer protocol; a TCP service carries bytes".into(),
                ));
            }
            services.push(Service {
                name: name.to_ascii_lowercase(),
                addresses,
                identity,
                mode: s.mode,
                listen,
                peer_protocol: s.peer_protocol.unwrap_or_default(),
            });
        }
        let admin = match &raw.admin {
            None => None,
            Some(a) => Some(addr("admin.listen", &a.listen)?),
        };
        let d = Limits::default();
        let l = &raw.limits;
        let limits = Limits {
            handshake_timeout: dur(
                "limits.handshake_timeout",
                &l.handshake_timeout,
                d.handshake_timeout,
            )?,
            header_read_timeout: dur(
                "limits.header_read_timeout",
                &l.header_read_timeout,
                d.header_read_timeout,
            )?,
            max_header_bytes: l.max_header_bytes.unwrap_or(d.max_header_bytes).max(8192),
            max_connections: match l.max_connections {
                Some(0) => return Err(err("limits.max_connections", "must be at least 1".into())),
                Some(n) => n,
                None => d.max_connections,
            },
            idle_timeout: dur("limits.idle_timeout", &l.idle_timeout, d.idle_timeout)?,
            request_timeout: dur(
                "limits.request_timeout",
                &l.request_timeout,
                d.request_timeout,
            )?,
            drain_timeout: dur("limits.drain_timeout", &l.drain_timeout, d.drain_timeout)?,
        };
        if inbound.is_none() && outbound.is_none() && !services.iter().any(|s| s.mode == Mode::Tcp)
        {
            return Err(err(
                "(file)",
                "nothing to do: configure [inbound], [outbound] or a TCP service".into(),
            ));
        }
        Ok(Config {
            workers,
            identity,
            crl,
            inbound,
            outbound,
            services,
            admin,
            limits,
        })
    }
}

fn apply(raw: &mut RawConfig, o: &Overrides) {
    if let Some(w) = o.workers {
        raw.workers = Some(w);
    }
    let set = |field: &mut String, v: &Option<String>| {
        if let Some(v) = v {
            *field = v.clone();
        }
    };
    if let Some(id) = raw.identity.as_mut() {
        set(&mut id.cert, &o.identity_cert);
        set(&mut id.key, &o.identity_key);
        set(&mut id.bundle, &o.identity_bundle);
        if o.identity_crl.is_some() {
            id.crl = o.identity_crl.clone();
        }
    }
    if let Some(i) = raw.inbound.as_mut() {
        set(&mut i.listen, &o.inbound_listen);
        set(&mut i.app, &o.inbound_app);
        set(&mut i.policy, &o.inbound_policy);
    }
    if let Some(l) = &o.outbound_listen {
        raw.outbound = Some(RawOutbound { listen: l.clone() });
    }
    if let Some(l) = &o.admin_listen {
        raw.admin = Some(RawAdmin { listen: l.clone() });
    }
}

//! The sidecar's configuration: a TOML file plus single-setting overrides from the command line
//! or the environment, validated once into the typed values defined here.
//!
//! Relative paths in the file are resolved against the file's own directory, so a config and its
//! certificates can move together. A bad file, or an override with nothing to override, is
//! reported once, with the file (`<flags>` for an override), the key and the problem, and the
//! process exits 64 (EX_USAGE); nothing starts half-configured. Parsing has no side effects and
//! logs nothing: it runs before logging is set up.
//!
//! - `raw`: the file as serde reads it, before validation.
//! - [`Overrides`] (`overrides`): the `TETHER_PROXY_*` flags, written once for clap and for
//!   [`Config::load`].
//! - `sections`: one validating function per section of the file.

mod overrides;
mod raw;
mod sections;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use tether_certs::SpiffeId;

use crate::policy::PathParams;
pub use overrides::Overrides;

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
    /// What the sidecar enrolls with when it has no usable certificate; `None` when only a
    /// cached certificate can start it.
    pub enrollment: Option<Enrollment>,
    /// Cached key (0600), certificate, bundle and CRL: the sidecar restarts from here.
    pub state_dir: PathBuf,
}

/// The one credential a `[ca]` sidecar enrolls with. A file is read again at every enrollment
/// attempt, so a token replaced in place (an operator's new one, the kubelet's rotation of a
/// projected service-account token) counts from the next attempt without a restart.
#[derive(Clone)]
pub enum Enrollment {
    /// `ca.k8s_token_file`: a Kubernetes service-account token, sent as `k8s_token`.
    K8sTokenFile(PathBuf),
    /// `TETHER_PROXY_TOKEN` (or `--token`): a one-time token given directly.
    Token(String),
    /// `ca.token_file`: a file holding a one-time token from `tether-ca enroll`.
    TokenFile(PathBuf),
}

/// By hand, so that printing a config never prints the token.
impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Enrollment::K8sTokenFile(p) => f.debug_tuple("K8sTokenFile").field(p).finish(),
            Enrollment::Token(_) => f.write_str("Token(<redacted>)"),
            Enrollment::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
        }
    }
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
    /// How `;` path parameters are read before matching (`path_params`; HTTP mode only).
    pub path_params: PathParams,
}

/// Where a peer sidecar listens (`[services.NAME] address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// `IP:port`.
    Ip(SocketAddr),
    /// `host:port`, looked up with the system resolver each time a connection is opened, so a
    /// Kubernetes Service name (or any DNS name) follows the records as they change.
    Name {
        /// The DNS name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Ip(a) => a.fmt(f),
            PeerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A peer service the local app may call.
#[derive(Debug, Clone)]
pub struct Service {
    /// The name the app uses as Host.
    pub name: String,
    /// Peer sidecar addresses; several are load-balanced, failed ones skipped for a while.
    pub addresses: Vec<PeerAddr>,
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

/// Where the access log goes (`[access_log] path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// `"-"`: the process's standard output.
    Stdout,
    /// A file, created if missing, appended to, reopened on rotation.
    File(PathBuf),
}

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
    /// The access log, if any (`[access_log]`; off when the section is absent).
    pub access_log: Option<AccessLogTarget>,
}

impl Service {
    /// Whether this service carries opaque bytes on its own listener (rather than HTTP routed
    /// by Host on the outbound listener).
    pub fn is_tcp(&self) -> bool {
        self.mode == Mode::Tcp
    }
}

impl CaSettings {
    /// Whether an enrollment token is configured (`ca.token_file`, `ca.k8s_token_file` or
    /// `TETHER_PROXY_TOKEN`). Without one the sidecar can still start from a certificate cached
    /// in `state_dir`.
    pub fn has_enrollment_token(&self) -> bool {
        self.enrollment.is_some()
    }
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

    /// Validates TOML `text` (named `file` in errors) with `overrides` applied; relative paths
    /// are joined to `base`. An override whose section the file lacks is an error naming the
    /// flag, except `--outbound-listen` and `--admin-listen`, which create their one-key section.
    pub fn parse(
        text: &str,
        file: &str,
        base: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let ctx = sections::Context { file, base };
        let mut raw = raw::RawConfig::from_toml(text, file)?;
        overrides.apply(&mut raw, file)?;
        // A fixed order (workers, identity, inbound, outbound, services, admin, limits,
        // access_log), so a file with several problems always reports the same one first.
        let workers = sections::workers(&ctx, raw.workers)?;
        let (identity, crl) = sections::identity(&ctx, raw.identity, raw.ca)?;
        let config = Config {
            workers,
            identity,
            crl,
            inbound: raw
                .inbound
                .map(|i| sections::inbound(&ctx, i))
                .transpose()?,
            outbound: raw
                .outbound
                .map(|o| ctx.addr("outbound.listen", &o.listen))
                .transpose()?,
            services: sections::services(&ctx, &raw.services)?,
            admin: raw
                .admin
                .map(|a| ctx.addr("admin.listen", &a.listen))
                .transpose()?,
            limits: sections::limits(&ctx, &raw.limits)?,
            access_log: raw
                .access_log
                .map(|a| sections::access_log(&ctx, a))
                .transpose()?,
        };
        if config.inbound.is_none()
            && config.outbound.is_none()
            && !config.services.iter().any(Service::is_tcp)
        {
            return Err(ctx.err(
                "(file)",
                "nothing to do: configure [inbound], [outbound] or a TCP service",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests;

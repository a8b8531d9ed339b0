//! Tether's sidecar: it terminates mTLS for the local app (inbound), originates mTLS for the
//! app's calls to other services (outbound), authorizes every request by the caller's SPIFFE ID
//! against a default-deny policy, and exports Prometheus metrics.
//!
//! # Layout
//! - [`config`]: the TOML config file and command-line overrides, validated once into typed
//!   values.
//! - [`policy`]: the authorization policy (default deny, hot reload) and path normalization.
//! - `identity`: our certificate, key and bundle as ready rustls configs, published to every
//!   new handshake.
//! - `lifecycle`: where certificates come from — enrollment, renewal, the CRL poller, bundle
//!   updates (CA mode) or watched files (file mode).
//! - `ca_client`: the client for the CA's HTTPS API, with URL failover.
//! - `revocation`: the revocation cache: the CRL in force, staleness, cutting revoked
//!   connections.
//! - `tls`: handshakes under a timeout, their classification, the verified peer's facts.
//! - `inbound`: peers → mTLS → policy → the local app.
//! - `outbound`: the local app → mTLS → peer sidecars (route table, affinity, connections,
//!   HTTP/1.1, HTTP/2, upgrades, TCP services).
//! - `pool`: HTTP/1.1 upstream connections held by one downstream connection, and idle pools.
//! - `forward`: what both directions share: serving one HTTP connection and then its upgraded
//!   stream, settling the request's one authority, hop-by-hop and identity fields, the
//!   upstream exchange under the request timeout.
//! - `error`: the request path's one error type and its one conversion to a response.
//! - `admin`: `/metrics`, `/live`, `/ready`, `/identity`, `POST /rotate`.
//! - `metrics`: the Prometheus metrics on an injected registry, with typed labels.
//! - `observe`: what is recorded of each request: its `x-request-id`, its metrics (count,
//!   latency by status class, body bytes) and its access-log entry, written when its response
//!   body has gone.
//! - `access_log`: the access log's entry and its writer thread (bounded queue, batching,
//!   reopening after logrotate).
//!
//! Every listener runs the accept loop of `tether-net` (connection limit, drain, a tracing span
//! per connection).

mod access_log;
mod admin;
mod ca_client;
pub mod config;
mod error;
mod forward;
/// Entry points for fuzz/, not an API.
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod inbound;
mod lifecycle;
mod metrics;
mod observe;
mod outbound;
pub mod policy;
mod pool;
mod revocation;
mod tls;

pub use identity::IdentityError;
pub use pool::DEDICATED_UP_TO;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (exit 64).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Unusable certificate, key, bundle or CRL (exit 64).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Unusable policy file (exit 64).
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The access log's file cannot be opened (exit 64); the error names the path.
    #[error("cannot open the {0}")]
    AccessLog(std::io::Error),
}

/// Bound listeners, so tests (and `main`) can bind `127.0.0.1:0` first and learn the ports.
#[derive(Default)]
pub struct Listeners {
    /// `[inbound] listen`.
    pub inbound: Option<TcpListener>,
    /// `[outbound] listen`.
    pub outbound: Option<TcpListener>,
    /// `[admin] listen`.
    pub admin: Option<TcpListener>,
    /// TCP services' listeners, by service name.
    pub tcp: Vec<(String, TcpListener)>,
}

impl Listeners {
    /// Binds every listener the config names.
    pub async fn bind(cfg: &config::Config) -> Result<Self, StartError> {
        let bind = |a| async move {
            TcpListener::bind(a)
                .await
                .map_err(|e| StartError::Bind(a, e))
        };
        let mut l = Listeners::default();
        if let Some(i) = &cfg.inbound {
            l.inbound = Some(bind(i.listen).await?);
        }
        if let Some(o) = cfg.outbound {
            l.outbound = Some(bind(o).await?);
        }
        if let Some(a) = cfg.admin {
            l.admin = Some(bind(a).await?);
        }
        for s in cfg.services.iter().filter(|s| s.is_tcp()) {
            if let Some(addr) = s.listen {
                l.tcp.push((s.name.clone(), bind(addr).await?));
            }
        }
        Ok(l)
    }
}

/// How often the policy file is checked for changes.
pub const POLICY_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// What every listener shares: our credentials, the revocation cache, the metrics and the
/// access log.
struct Core {
    store: identity::IdentityStore,
    cache: Arc<revocation::RevocationCache>,
    metrics: metrics::Metrics,
    log: observe::Log,
    /// Forces a renewal now (`POST /rotate`); `None` in file mode.
    rotate: Option<Arc<tokio::sync::Notify>>,
    /// The CA client (`/identity` shows the URL in use); `None` in file mode.
    ca: Option<Arc<ca_client::CaClient>>,
}

/// Runs the sidecar on already-bound `listeners` until `shutdown` resolves, then drains
/// in-flight requests (up to `limits.drain_timeout`) and returns.
pub async fn run(
    cfg: config::Config,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let metrics = metrics::Metrics::register(&registry)?;
    let mut background = tokio::task::JoinSet::new();
    let log = open_access_log(&cfg, &metrics, &mut background)?;
    let core = start_identity(&cfg, metrics, log, &mut background)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(cfg_in), Some(listener)) = (&cfg.inbound, listeners.inbound) {
        tasks.spawn(start_inbound(
            cfg_in,
            &cfg.limits,
            &core,
            listener,
            stopped(),
        )?);
    }
    let out = outbound::Outbound::new(
        &cfg.services,
        core.store.clone(),
        core.metrics.clone(),
        cfg.limits.clone(),
        core.cache.clone(),
        core.log.clone(),
    );
    if let Some(listener) = listeners.outbound {
        tasks.spawn(outbound::run(listener, out.clone(), stopped()));
    }
    for (name, listener) in listeners.tcp {
        if let Some(route) = out.route(&name) {
            tasks.spawn(outbound::run_tcp(listener, out.clone(), route, stopped()));
        }
    }
    if let Some(listener) = listeners.admin {
        let admin = Arc::new(admin::Admin {
            identity: core.store.clone(),
            registry: registry.clone(),
            revocation: core.cache.clone(),
            rotate: core.rotate.clone(),
            ca: core.ca.clone(),
        });
        tasks.spawn(admin::run(listener, admin, stopped()));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    background.abort_all();
    if let Some(log) = &core.log {
        // Every request has ended: what they logged is written before we return.
        log.close().await;
    }
    Ok(())
}

/// Opens `[access_log]`, if set, and reopens it on SIGHUP (logrotate's `postrotate`) in
/// `background`; SIGHUP is handled, and otherwise ignored, even with no access log.
fn open_access_log(
    cfg: &config::Config,
    metrics: &metrics::Metrics,
    background: &mut tokio::task::JoinSet<()>,
) -> Result<observe::Log, StartError> {
    let log = match &cfg.access_log {
        None => None,
        Some(target) => {
            let dropped = metrics.access_log_dropped.clone();
            Some(access_log::AccessLog::open(target, dropped).map_err(StartError::AccessLog)?)
        }
    };
    background.spawn(access_log::reopen_on_sighup(log.clone()));
    Ok(log)
}

/// Loads or starts getting our credentials (files, watched; or the CA, enrolling and renewing)
/// and the revocation cache, with their background tasks in `background`.
fn start_identity(
    cfg: &config::Config,
    metrics: metrics::Metrics,
    log: observe::Log,
    background: &mut tokio::task::JoinSet<()>,
) -> Result<Core, StartError> {
    let cache = revocation::RevocationCache::new(cfg.crl.on_stale, cfg.crl.grace, &metrics);
    let (store, rotate, ca) = match &cfg.identity {
        config::IdentitySource::Files(files) => {
            let (creds, crl) = identity::Credentials::load_files(files, cache.revocation())?;
            lifecycle::install_first_crl(files, &cache, crl)?;
            let store = identity::IdentityStore::new(creds);
            background.spawn(lifecycle::watch_files(
                files.clone(),
                store.clone(),
                cache.clone(),
                metrics.clone(),
            ));
            (store, None, None)
        }
        config::IdentitySource::Ca(settings) => {
            let store = identity::IdentityStore::default();
            let mode = lifecycle::CaMode::start(
                settings.clone(),
                store.clone(),
                cache.clone(),
                metrics.clone(),
            )?;
            let rotate = Arc::new(tokio::sync::Notify::new());
            let ca = mode.client();
            background.spawn(mode.run(rotate.clone()));
            (store, Some(rotate), Some(ca))
        }
    };
    lifecycle::bind_gauges(&store, &cache, &metrics);
    Ok(Core {
        store,
        cache,
        metrics,
        log,
        rotate,
        ca,
    })
}

/// The inbound listener's task, with the policy loaded and its reloader running until the
/// listener has drained. A policy that does not load stops the start.
fn start_inbound(
    cfg_in: &config::Inbound,
    limits: &config::Limits,
    core: &Core,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = ()> + Send + 'static, StartError> {
    let handle = policy::PolicyHandle::new(policy::Policy::load(&cfg_in.policy)?);
    let m = core.metrics.clone();
    let reloader = policy::spawn_reloader(
        cfg_in.policy.clone(),
        handle.clone(),
        POLICY_POLL,
        move |r| m.count_policy_reload(metrics::Outcome::of(&r)),
    );
    let inbound = inbound::Inbound::new(
        cfg_in,
        core.store.clone(),
        handle,
        core.metrics.clone(),
        limits.clone(),
        core.cache.clone(),
        core.log.clone(),
    );
    Ok(async move {
        inbound::run(listener, inbound, stop).await;
        reloader.abort();
    })
}

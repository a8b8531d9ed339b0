//! Tether's sidecar: it terminates mTLS for the local app (inbound), originates mTLS for the
//! app's calls to other services (outbound), authorizes every request by the caller's SPIFFE ID
//! against a default-deny policy, and exports Prometheus metrics.
//!
//! # Layout
//! - [`config`]: the TOML config file, validated once into typed values.
//! - [`identity`]: our certificate, key and bundle as ready rustls configs, published on a watch
//!   channel.
//! - [`lifecycle`]: where certificates come from — enrollment, renewal, the CRL poller, bundle
//!   updates (CA mode) or watched files (file mode).
//! - [`ca_client`]: the client for the CA's HTTPS API, with URL failover.
//! - [`revocation`]: the revocation cache: the CRL in force, staleness, cutting revoked
//!   connections.
//! - [`policy`]: the authorization policy (default deny, hot reload) and path normalization.
//! - [`inbound`]: peers → mTLS → policy → the local app.
//! - [`outbound`]: the local app → mTLS → peer sidecars, over HTTP/1.1 connections held per app
//!   connection (or one shared HTTP/2 connection per peer).
//! - [`pool`]: HTTP/1.1 upstream connections held by one downstream connection, and idle pools.
//! - [`forward`]: what both directions share: limits, hop-by-hop headers, upgrades, drain.
//! - [`admin`]: `/metrics`, `/live`, `/ready`, `/identity`.
//! - [`metrics`]: the Prometheus metrics on an injected registry.
//! - [`fsutil`]: private directories and atomic file writes for the state directory.

pub mod admin;
pub mod ca_client;
pub mod config;
pub mod forward;
pub mod fsutil;
pub mod identity;
pub mod inbound;
pub mod lifecycle;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod pool;
pub mod revocation;

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
    Identity(#[from] identity::IdentityError),
    /// Unusable policy file (exit 64).
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
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
        for s in cfg.services.iter().filter(|s| outbound::is_tcp(s)) {
            if let Some(addr) = s.listen {
                l.tcp.push((s.name.clone(), bind(addr).await?));
            }
        }
        Ok(l)
    }
}

/// How often the policy file is checked for changes.
pub const POLICY_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs the sidecar on already-bound `listeners` until `shutdown` resolves, then drains
/// in-flight requests (up to `limits.drain_timeout`) and returns.
pub async fn run(
    cfg: config::Config,
    listeners: Listeners,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let metrics = metrics::Metrics::register(&registry)?;
    let cache = revocation::RevocationCache::new(
        cfg.crl.on_stale,
        cfg.crl.grace,
        metrics.revoked_closed.clone(),
    );
    let mut background = tokio::task::JoinSet::new();
    let (store, rotate) = match &cfg.identity {
        config::IdentitySource::Files(files) => {
            let (creds, crl) = identity::Credentials::load_files(files, cache.revocation())?;
            if let Some(crl) = crl {
                // Nothing is held yet, so a rollback is impossible here.
                let _ = cache.install(crl);
            }
            let store = identity::IdentityStore::new(creds);
            background.spawn(lifecycle::watch_files(
                files.clone(),
                store.clone(),
                cache.clone(),
                metrics.clone(),
            ));
            (store, None)
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
            background.spawn(mode.run(rotate.clone()));
            (store, Some(rotate))
        }
    };
    background.spawn(lifecycle::update_gauges(
        store.clone(),
        cache.clone(),
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(cfg_in), Some(listener)) = (&cfg.inbound, listeners.inbound) {
        let policy = policy::Policy::load(&cfg_in.policy)?;
        let handle = policy::PolicyHandle::new(policy);
        let m = metrics.clone();
        let reloader = policy::spawn_reloader(
            cfg_in.policy.clone(),
            handle.clone(),
            POLICY_POLL,
            move |r| {
                m.policy_reloads
                    .with_label_values(&[if r.is_ok() { "ok" } else { "error" }])
                    .inc();
            },
        );
        let inbound = inbound::Inbound::new(
            cfg_in,
            store.clone(),
            handle,
            metrics.clone(),
            cfg.limits.clone(),
            cache.clone(),
        );
        let stop = stopped();
        tasks.spawn(async move {
            inbound::run(listener, inbound, stop).await;
            reloader.abort();
        });
    }
    let out = outbound::Outbound::new(
        &cfg.services,
        store.clone(),
        metrics.clone(),
        cfg.limits.clone(),
        cache.clone(),
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
            identity: store.clone(),
            registry: registry.clone(),
            revocation: cache.clone(),
            rotate: rotate.clone(),
        });
        tasks.spawn(admin::run(listener, admin, stopped()));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    background.abort_all();
    Ok(())
}

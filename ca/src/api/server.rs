//! The two listeners: the HTTPS API ([`run`], or [`run_with`] and its [`ServeOptions`] for
//! Kubernetes enrollment) and the plain-HTTP metrics listener
//! ([`run_metrics`]), both on the shared accept loop [`tether_net::serve`]; and [`blocking`],
//! which runs an authority operation off the async runtime.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::Registry;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use tether_net::ListenerLimits;

use super::routes::{self, Endpoint};
use super::tls::{certified_key, tls_config, ServerCert};
use super::{watcher, ApiError, HANDSHAKE_TIMEOUT};
use crate::authority::Authority;
use crate::error::CaError;
use crate::k8s::K8sVerifier;
use crate::metrics::Metrics;
use crate::store::ServedCrl;

/// Connections the API serves at once. Every sidecar holds one (its CRL long-poll) and opens a
/// second only for a renewal, so this covers a fleet of a few thousand sidecars; beyond it new
/// connections are closed at once (the sidecar retries) instead of exhausting file descriptors.
pub const MAX_API_CONNECTIONS: usize = 4096;

/// Connections the metrics listener serves at once: a few scrapers, each with one connection.
pub const MAX_METRICS_CONNECTIONS: usize = 64;

/// The API's limits. No drain: the CA has never waited for in-flight requests at shutdown
/// (long-polls would hold it for up to a minute, and a sidecar simply polls again), so each
/// connection drops its drain watcher and [`tether_net::serve`] returns as soon as accepting
/// stops, leaving open connections to end with the process.
const API_LIMITS: ListenerLimits = ListenerLimits {
    max_connections: MAX_API_CONNECTIONS,
    // Shed past the limit, no readable refusal: its clients are sidecars, which retry anyway.
    overflow: 0,
    drain: Duration::ZERO,
};

/// The metrics listener's limits; no drain, as for the API.
const METRICS_LIMITS: ListenerLimits = ListenerLimits {
    max_connections: MAX_METRICS_CONNECTIONS,
    overflow: 0,
    drain: Duration::ZERO,
};

/// What every connection of the API shares.
pub(super) struct State {
    /// The CA.
    pub(super) authority: Arc<Authority>,
    /// Its metrics.
    pub(super) metrics: Metrics,
    /// The registry `/metrics` renders.
    pub(super) registry: Registry,
    /// The CRL number this server announces (long-polls wait on it).
    pub(super) crl_number: watch::Receiver<u64>,
    /// Announces a newer CRL number (see `watcher::publish`).
    pub(super) crl_tx: watch::Sender<u64>,
    /// The API's TLS certificate, swapped after a rotation.
    pub(super) server_cert: Arc<ServerCert>,
    /// The newest CRL this server has read from the database, served while it is unreachable.
    pub(super) last_crl: RwLock<Option<Arc<ServedCrl>>>,
    /// Why this replica must not sign any more (`replica remove`), as the watcher last saw it.
    pub(super) removed: RwLock<Option<String>>,
    /// The Kubernetes token verifier, if `serve` was given `--k8s-issuer`.
    pub(super) k8s: Option<Arc<K8sVerifier>>,
}

impl State {
    /// Why this replica was removed, if it was.
    pub(super) fn removed(&self) -> Option<String> {
        self.removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `served` as the CRL to fall back on if it is the newest read so far.
    pub(super) fn remember_crl(&self, served: ServedCrl) -> Arc<ServedCrl> {
        let served = Arc::new(served);
        let mut last = self.last_crl.write().unwrap_or_else(|p| p.into_inner());
        if last
            .as_ref()
            .is_none_or(|l| l.crl.number <= served.crl.number)
        {
            *last = Some(served.clone());
        }
        served
    }

    /// The remembered CRL, if it is newer than `after` (what the poller holds).
    pub(super) fn cached_crl(&self, after: u64) -> Option<Arc<ServedCrl>> {
        let last = self.last_crl.read().unwrap_or_else(|p| p.into_inner());
        last.as_ref().filter(|l| l.crl.number > after).cloned()
    }
}

/// What [`run_with`] serves beyond the API itself.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Enrollment with Kubernetes service-account tokens; `None` refuses them (401).
    pub k8s: Option<Arc<K8sVerifier>>,
}

/// Serves the API on `listener` until `shutdown` resolves, with the default [`ServeOptions`]
/// (no Kubernetes enrollment). Also keeps the CRL fresh: re-signs it at half its validity, and
/// notices CRLs published by the CLI.
pub async fn run(
    listener: TcpListener,
    authority: Arc<Authority>,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    run_with(
        listener,
        authority,
        registry,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

/// [`run`] with `options`; a Kubernetes verifier's key set is refreshed beside the API while it
/// serves.
pub async fn run_with(
    listener: TcpListener,
    authority: Arc<Authority>,
    registry: Registry,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    let metrics = Metrics::register(&registry, authority.clone())?;
    let server_cert = Arc::new(ServerCert {
        current: RwLock::new(Arc::new(certified_key(&authority)?)),
        version: authority.bundle_version().into(),
    });
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&authority, server_cert.clone())?));
    let refresh = authority.settings().crl_validity / 2;
    let first = blocking(&authority, move |a| a.current_crl(refresh)).await?;
    metrics.crl_number.set(first.number as i64);
    metrics
        .bundle_version
        .set(authority.bundle_version() as i64);
    let (crl_tx, crl_number) = watch::channel(first.number);
    let state = Arc::new(State {
        authority,
        metrics,
        registry,
        crl_number,
        crl_tx,
        server_cert,
        last_crl: RwLock::new(None),
        removed: RwLock::new(None),
        k8s: options.k8s.clone(),
    });
    let publisher = tokio::spawn(watcher::watch_database(state.clone(), refresh));
    let keys = options.k8s.map(|k8s| tokio::spawn(k8s.keep_fresh()));
    tether_net::serve(
        "ca-api",
        listener,
        API_LIMITS,
        shutdown,
        |tcp, _, drain, _| {
            // See API_LIMITS: shutdown does not wait for this connection.
            drop(drain);
            serve_tls(acceptor.clone(), state.clone(), tcp)
        },
    )
    .await;
    publisher.abort();
    if let Some(keys) = keys {
        keys.abort();
    }
    Ok(())
}

/// One API connection: the TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]), then HTTP/1.1 or
/// h2 until the client closes.
async fn serve_tls(acceptor: TlsAcceptor, state: Arc<State>, tcp: TcpStream) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let peer: Arc<Vec<CertificateDer<'static>>> = Arc::new(
        tls.get_ref()
            .1
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default(),
    );
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(routes::handle(&state, &peer, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
        tracing::debug!("connection ended: {e}");
    }
}

/// Serves `GET /metrics` over plain HTTP/1.1 on `listener` (for `--metrics-listen`) until
/// `shutdown` resolves; every other path is a 404.
pub async fn run_metrics(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) {
    tether_net::serve(
        "ca-metrics",
        listener,
        METRICS_LIMITS,
        shutdown,
        |tcp, _, drain, _| {
            // See METRICS_LIMITS: shutdown does not wait for this connection.
            drop(drain);
            let registry = registry.clone();
            async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let registry = registry.clone();
                    async move {
                        Ok::<_, Infallible>(match Endpoint::from_path(req.uri().path()) {
                            Some(Endpoint::Metrics) => routes::metrics_text(&registry).await,
                            _ => routes::error(
                                http::StatusCode::NOT_FOUND,
                                "not found; try /metrics",
                            ),
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            }
        },
    )
    .await;
}

/// Runs `f` on the blocking pool (signing and SQLite block). A worker that panics is reported
/// as [`CaError::Internal`], not as a failure of the operation itself.
pub(super) async fn blocking<T: Send + 'static>(
    authority: &Arc<Authority>,
    f: impl FnOnce(&Authority) -> Result<T, CaError> + Send + 'static,
) -> Result<T, CaError> {
    let a = authority.clone();
    tokio::task::spawn_blocking(move || f(&a))
        .await
        .unwrap_or_else(|e| {
            Err(CaError::Internal(format!(
                "the worker running a CA operation died: {e}"
            )))
        })
}

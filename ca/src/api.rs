//! The CA's HTTPS API (HTTP/1.1 and h2 over TLS 1.3).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /v1/enroll` | one-time token in the body | `{token, csr}` → leaf + chain + bundle |
//! | `POST /v1/renew` | client certificate (mTLS) | `{csr}` → leaf for the *same* identity |
//! | `GET /v1/bundle` | none | trust bundle, PEM; `x-tether-bundle-version` |
//! | `GET /v1/crl` | none (a client certificate is recorded in the fleet) | current CRL + the intermediate that signed it (+ its cross-certificate during a rotation), PEM; `ETag`, `If-None-Match`, long-poll `?after=N&wait=30s`; `x-tether-crl-number`, `x-tether-bundle-version` |
//! | `POST /v1/revoke` | admin client certificate | `{serial, reason?}` or `{id, before?, reason?}` |
//! | `GET /metrics` | none | Prometheus text |
//!
//! The TLS layer asks every client for a certificate but does not judge it: rustls still checks
//! the handshake signature (proof that the client holds the key), and the handlers that need an
//! identity verify the chain themselves through [`Authority::authenticate`]. That is what lets a
//! renewal with an expired or revoked certificate get a clear 403 instead of a bare TLS alert,
//! and lets enrollment (no certificate yet) share the listener.
//!
//! **The fleet.** A sidecar polls `GET /v1/crl` with its current certificate and the headers
//! `x-tether-instance` (an opaque per-process id) and `x-tether-bundle-version`; a poll with
//! `after=N` acknowledges CRL N. Every such poll whose certificate authenticates upserts the
//! sidecar's row in the `fleet` table (see [`crate::fleet`]); one that does not is still answered.
//!
//! **Rotation without restart.** The server re-reads `meta.bundle_version` with its CRL check
//! (every [`CRL_POLL_INTERVAL`]); when the CLI rotated or retired a root it reloads the signer,
//! the bundle and its own TLS certificate (new handshakes get the new one; open connections are
//! undisturbed) *before* it announces any newer CRL, so a long-poller woken by the rotation's CRL
//! already gets the new bundle version with it. If the reload fails, the old state keeps serving,
//! every poll tries again, and the failure is logged every ten seconds until it succeeds.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::Registry;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::authority::{Authority, CaError};
use crate::metrics::Metrics;

mod revocation;
mod tls;

use revocation::RevokeBody;
use tls::{certified_key, tls_config, ServerCert};

/// Largest request body accepted: a P-256 CSR in PEM is under 1 KiB; anything near this limit
/// is not a CSR.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest a CRL long-poll may wait, whatever `wait=` asks (proxies and load balancers commonly
/// cut idle requests after 60 s).
pub const MAX_LONG_POLL: Duration = Duration::from_secs(55);
/// How often the server looks for CRLs published by other processes (the CLI's `revoke` writes
/// straight to the database): a revocation made with the CLI reaches long-polling sidecars
/// within this interval.
pub const CRL_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A TLS handshake that takes longer than this is dropped, so idle sockets cannot pin tasks.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `tether_ca_fleet_size` is recounted: a gauge over a one-minute window needs no
/// finer resolution.
pub const FLEET_COUNT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the CRL's age is checked for re-signing and old fleet rows are pruned.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Request header: the polling sidecar's per-process id.
pub const INSTANCE_HEADER: &str = "x-tether-instance";
/// Request header (the sidecar's) and response header (the CA's): a trust bundle version.
pub const BUNDLE_VERSION_HEADER: &str = "x-tether-bundle-version";
/// Response header: the CRL number of the answer (or of the current CRL, on a 304).
pub const CRL_NUMBER_HEADER: &str = "x-tether-crl-number";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API's own certificate or key is unusable.
    #[error("CA API TLS setup: {0}")]
    Tls(String),
    /// Reading the state failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Metrics could not be registered (a name registered twice on the same registry).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

struct State {
    authority: Arc<Authority>,
    metrics: Metrics,
    registry: Registry,
    crl_number: watch::Receiver<u64>,
    crl_tx: watch::Sender<u64>,
    server_cert: Arc<ServerCert>,
}

/// Serves the API on `listener` until `shutdown` resolves. Also keeps the CRL fresh: re-signs it
/// at half its validity, and notices CRLs published by the CLI.
pub async fn run(
    listener: TcpListener,
    authority: Arc<Authority>,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    let metrics = Metrics::register(&registry)?;
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
    });
    let publisher = tokio::spawn(watch_database(state.clone(), refresh));
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
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
                async move { Ok::<_, Infallible>(handle(&state, &peer, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    publisher.abort();
    Ok(())
}

/// Serves `GET /metrics` over plain HTTP on `listener` (for `--metrics-listen`).
pub async fn run_metrics(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            a = listener.accept() => a?,
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = if req.uri().path() == "/metrics" {
                    text(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        crate::metrics::render(&registry),
                    )
                } else {
                    error(StatusCode::NOT_FOUND, "not found; try /metrics")
                };
                async move { Ok::<_, Infallible>(body) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// How often a failure that repeats every poll is logged again: often enough to be seen, not
/// ten times a second.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Logs a warning at most once per [`REPEAT_WARNING_EVERY`].
#[derive(Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if self.0.is_none_or(|t| t.elapsed() >= REPEAT_WARNING_EVERY) {
            tracing::warn!("{message}");
            self.0 = Some(Instant::now());
        }
    }
}

/// Watches the database for what other processes change, every [`CRL_POLL_INTERVAL`]: a
/// rotation or retirement (reload, then swap the TLS certificate), new CRLs (wake long-polls);
/// and does the housekeeping: re-sign the CRL at half its validity, count and prune the fleet.
async fn watch_database(state: Arc<State>, refresh: Duration) {
    let mut last_housekeeping = Instant::now();
    let mut last_fleet_count: Option<Instant> = None;
    let (mut reload_warning, mut crl_warning) = (Throttle::default(), Throttle::default());
    loop {
        tokio::time::sleep(CRL_POLL_INTERVAL).await;
        // Reload first: a CRL signed by a new intermediate is announced only once this server
        // serves the bundle that trusts it.
        let reloaded = match blocking(&state.authority, |a| a.reload()).await {
            Ok(_) => reload_server_cert(&state).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = reloaded {
            reload_warning.warn(format_args!(
                "reloading the CA after a root rotation failed (the old signer, bundle and TLS \
                 certificate stay in use; retrying every poll): {e}"
            ));
        }
        let housekeeping = last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL;
        let count_fleet = last_fleet_count.is_none_or(|t| t.elapsed() >= FLEET_COUNT_INTERVAL);
        let result = blocking(&state.authority, move |a| {
            if housekeeping {
                a.current_crl(refresh)?;
                if let Err(e) = a.prune_fleet() {
                    tracing::warn!("pruning old fleet rows failed: {e}");
                }
            }
            let fleet = if count_fleet {
                Some(a.fleet_size()?)
            } else {
                None
            };
            let newest = a.latest_crl_number()?;
            // Read after the CRL number: a rotation that committed after this iteration's reload
            // shows here, and its CRL waits for the next iteration, which reloads first. Without
            // this, a long-poller could get the rotation's CRL with the old bundle version and
            // learn of the new bundle only at its next poll.
            let stale = a.stored_bundle_version()? != a.bundle_version();
            Ok((newest, fleet, stale))
        })
        .await;
        if housekeeping {
            last_housekeeping = Instant::now();
        }
        match result {
            Ok((n, fleet, stale)) => {
                if let Some(size) = fleet {
                    state.metrics.fleet_size.set(size as i64);
                    last_fleet_count = Some(Instant::now());
                }
                if !stale {
                    publish(&state, n);
                }
            }
            Err(e) => crl_warning.warn(format_args!(
                "CRL refresh failed (the last CRL stays published): {e}"
            )),
        }
    }
}

/// Swaps in the current generation's TLS certificate if the authority was reloaded since it was
/// loaded. On failure the old certificate keeps serving (and the next poll tries again).
async fn reload_server_cert(state: &Arc<State>) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let version = state.authority.bundle_version();
    if state.server_cert.version.load(Ordering::Acquire) == version {
        return Ok(());
    }
    let a = state.authority.clone();
    let key = tokio::task::spawn_blocking(move || certified_key(&a))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    *state
        .server_cert
        .current
        .write()
        .unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    state.server_cert.version.store(version, Ordering::Release);
    state.metrics.bundle_version.set(version as i64);
    tracing::info!(
        "trust bundle version {version}: signing with generation {} and serving its TLS \
         certificate",
        state.authority.generation()
    );
    Ok(())
}

fn publish(state: &State, number: u64) {
    let changed = state.crl_tx.send_if_modified(|current| {
        if number > *current {
            *current = number;
            true
        } else {
            false
        }
    });
    if changed {
        state.metrics.crl_number.set(number as i64);
        state.metrics.crl_publishes.inc();
    }
}

async fn blocking<T: Send + 'static>(
    authority: &Arc<Authority>,
    f: impl FnOnce(&Authority) -> Result<T, CaError> + Send + 'static,
) -> Result<T, CaError> {
    let a = authority.clone();
    tokio::task::spawn_blocking(move || f(&a))
        .await
        .unwrap_or_else(|e| Err(CaError::Sign(format!("worker failed: {e}"))))
}

type Resp = Response<Full<Bytes>>;

async fn handle(state: &State, peer: &[CertificateDer<'static>], req: Request<Incoming>) -> Resp {
    let endpoint = match req.uri().path() {
        "/v1/enroll" => "enroll",
        "/v1/renew" => "renew",
        "/v1/bundle" => "bundle",
        "/v1/crl" => "crl",
        "/v1/revoke" => "revoke",
        "/metrics" => "metrics",
        _ => "other",
    };
    let resp = route(state, peer, endpoint, req)
        .await
        .unwrap_or_else(|(status, msg)| {
            let reason = match status {
                StatusCode::BAD_REQUEST => "bad_request",
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                _ => "internal",
            };
            state
                .metrics
                .failures
                .with_label_values(&[endpoint, reason])
                .inc();
            let mut resp = error(status, &msg);
            if status == StatusCode::METHOD_NOT_ALLOWED {
                // RFC 9110 15.5.6: a 405 must say which methods the resource supports.
                resp.headers_mut().insert(
                    header::ALLOW,
                    header_value(allowed_method(endpoint).as_str()),
                );
            }
            resp
        });
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, resp.status().as_str()])
        .inc();
    resp
}

type Fail = (StatusCode, String);

/// The one method each known endpoint takes.
fn allowed_method(endpoint: &str) -> Method {
    match endpoint {
        "enroll" | "renew" | "revoke" => Method::POST,
        _ => Method::GET,
    }
}

async fn route(
    state: &State,
    peer: &[CertificateDer<'static>],
    endpoint: &str,
    req: Request<Incoming>,
) -> Result<Resp, Fail> {
    if endpoint == "other" {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no route {}", req.uri().path()),
        ));
    }
    let want = allowed_method(endpoint);
    if req.method() != want {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{endpoint} takes {want}"),
        ));
    }
    match endpoint {
        "enroll" => {
            let body: EnrollBody = json_body(req).await?;
            let started = Instant::now();
            let issued = blocking(&state.authority, move |a| {
                a.enroll(&body.token, body.csr.as_bytes())
            })
            .await
            .map_err(fail)?;
            state
                .metrics
                .issuance_seconds
                .observe(started.elapsed().as_secs_f64());
            state.metrics.issued.with_label_values(&["enroll"]).inc();
            Ok(json(StatusCode::OK, &issued))
        }
        "renew" => {
            let peer = peer.to_vec();
            if peer.is_empty() {
                return Err(fail(CaError::Unauthorized(
                    "renewal needs the current certificate as the TLS client certificate".into(),
                )));
            }
            let body: RenewBody = json_body(req).await?;
            let started = Instant::now();
            let issued = blocking(&state.authority, move |a| {
                a.renew(&peer, body.csr.as_bytes())
            })
            .await
            .map_err(fail)?;
            state
                .metrics
                .issuance_seconds
                .observe(started.elapsed().as_secs_f64());
            state.metrics.issued.with_label_values(&["renew"]).inc();
            Ok(json(StatusCode::OK, &issued))
        }
        "revoke" => {
            let peer = peer.to_vec();
            let body: RevokeBody = json_body(req).await?;
            revocation::revoke(state, peer, body).await
        }
        "bundle" => {
            let keys_version = state.authority.bundle_version();
            let mut resp = text(
                StatusCode::OK,
                "application/x-pem-file",
                state.authority.bundle_pem(),
            );
            resp.headers_mut().insert(
                BUNDLE_VERSION_HEADER,
                header_value(&keys_version.to_string()),
            );
            Ok(resp)
        }
        "crl" => revocation::crl(state, peer, req).await,
        _ => Ok(text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&state.registry),
        )),
    }
}

fn header_value(s: &str) -> http::HeaderValue {
    // Callers pass digits, quotes and method names, which are always valid header bytes.
    http::HeaderValue::from_str(s).unwrap_or(http::HeaderValue::from_static(""))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    token: String,
    csr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    csr: String,
}

async fn json_body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Fail> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
    {
        if len.parse::<usize>().map(|n| n > MAX_BODY).unwrap_or(true) {
            return Err(too_large());
        }
    }
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                (StatusCode::BAD_REQUEST, format!("could not read body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn fail(e: CaError) -> Fail {
    let status = match &e {
        CaError::BadRequest(_) => StatusCode::BAD_REQUEST,
        CaError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        CaError::Forbidden(_) => StatusCode::FORBIDDEN,
        CaError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("internal error: {e}");
        return (status, "internal error; see the CA's log".into());
    }
    (status, e.to_string())
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json(status, &serde_json::json!({ "error": msg }))
}

//! The CA's HTTPS API (HTTP/1.1 and h2 over TLS 1.3).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /v1/enroll` | one-time token in the body | `{token, csr}` → leaf + chain + bundle |
//! | `POST /v1/renew` | client certificate (mTLS) | `{csr}` → leaf for the *same* identity |
//! | `GET /v1/bundle` | none | trust bundle, PEM |
//! | `GET /v1/crl` | none | current CRL, PEM; `ETag`, `If-None-Match`, long-poll `?after=N&wait=30s` |
//! | `POST /v1/revoke` | admin client certificate | `{serial, reason?}` |
//! | `GET /metrics` | none | Prometheus text |
//!
//! The TLS layer asks every client for a certificate but does not judge it: rustls still checks
//! the handshake signature (proof that the client holds the key), and the handlers that need an
//! identity verify the chain themselves through [`Authority::authenticate`]. That is what lets a
//! renewal with an expired or revoked certificate get a clear 403 instead of a bare TLS alert,
//! and lets enrollment (no certificate yet) share the listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::Registry;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::authority::{Authority, CaError};
use crate::metrics::Metrics;
use crate::store::RevokeOutcome;

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
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&authority)?));
    let refresh = authority.settings().crl_validity / 2;
    let first = blocking(&authority, move |a| a.current_crl(refresh)).await?;
    metrics.crl_number.set(first.number as i64);
    let (crl_tx, crl_number) = watch::channel(first.number);
    let state = Arc::new(State {
        authority,
        metrics,
        registry,
        crl_number,
        crl_tx,
    });
    let publisher = tokio::spawn(keep_crl_fresh(state.clone(), refresh));
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

fn tls_config(authority: &Authority) -> Result<rustls::ServerConfig, ApiError> {
    let (chain_pem, key_pem) = authority.server_credential()?;
    let chain = tether_certs::pem::certificates(chain_pem.as_bytes())
        .map_err(|e| ApiError::Tls(format!("server/chain.pem: {e}")))?;
    let key = tether_certs::pem::private_key(key_pem.as_bytes())
        .map_err(|e| ApiError::Tls(format!("server/key.pem: {e}")))?;
    tether_certs::verify::server_config(chain, key, Arc::new(DeferredClientAuth::new()))
        .map_err(|e| ApiError::Tls(e.to_string()))
}

async fn keep_crl_fresh(state: Arc<State>, refresh: Duration) {
    let mut last_refresh_check = Instant::now();
    loop {
        tokio::time::sleep(CRL_POLL_INTERVAL).await;
        let check_refresh = last_refresh_check.elapsed() >= Duration::from_secs(10);
        let result = blocking(&state.authority, move |a| {
            if check_refresh {
                a.current_crl(refresh)?;
            }
            a.latest_crl_number()
        })
        .await;
        if check_refresh {
            last_refresh_check = Instant::now();
        }
        match result {
            Ok(n) => publish(&state, n),
            Err(e) => tracing::warn!("CRL refresh failed (the last CRL stays published): {e}"),
        }
    }
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
            let serial: tether_certs::Serial =
                body.serial
                    .parse()
                    .map_err(|e: tether_certs::serial::SerialError| {
                        (StatusCode::BAD_REQUEST, e.to_string())
                    })?;
            let reason = match body.reason.as_deref() {
                Some(r) => Some(
                    r.parse()
                        .map_err(|e: String| (StatusCode::BAD_REQUEST, e))?,
                ),
                None => None,
            };
            let wanted = serial.clone();
            let outcome = blocking(&state.authority, move |a| {
                let caller = a.authenticate(&peer)?;
                if !a.is_admin(&caller.id) {
                    return Err(CaError::Forbidden(format!(
                        "{} may not revoke; only the admin identity may",
                        caller.id
                    )));
                }
                a.revoke(&wanted, reason)
            })
            .await
            .map_err(fail)?;
            let body = match outcome {
                RevokeOutcome::Revoked { crl_number } => {
                    state.metrics.revocations.inc();
                    publish(state, crl_number);
                    serde_json::json!({"serial": body.serial, "status": "revoked", "crl_number": crl_number})
                }
                RevokeOutcome::AlreadyRevoked(at) => {
                    serde_json::json!({"serial": body.serial, "status": "already_revoked", "revoked_at": at})
                }
                RevokeOutcome::Unknown => {
                    return Err((
                        StatusCode::NOT_FOUND,
                        format!("no certificate with serial {serial} was issued by this CA"),
                    ))
                }
            };
            Ok(json(StatusCode::OK, &body))
        }
        "bundle" => Ok(text(
            StatusCode::OK,
            "application/x-pem-file",
            state.authority.bundle_pem().to_string(),
        )),
        "crl" => crl(state, req).await,
        _ => Ok(text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&state.registry),
        )),
    }
}

/// `GET /v1/crl[?after=N&wait=DUR]`.
async fn crl(state: &State, req: Request<Incoming>) -> Result<Resp, Fail> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let after = match query.get("after") {
        Some(a) => Some(
            a.parse::<u64>()
                .map_err(|_| bad(format!("after={a:?} is not a CRL number")))?,
        ),
        None => None,
    };
    let wait = match query.get("wait") {
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| bad(format!("wait={w:?}: {e} (e.g. wait=30s)")))?
            .min(MAX_LONG_POLL),
        None => Duration::ZERO,
    };
    let mut rx = state.crl_number.clone();
    let current = *rx.borrow();
    if let Some(after) = after {
        if current <= after {
            let waiting = Waiting::start(&state.metrics.crl_waiters);
            let woke = tokio::time::timeout(wait, rx.wait_for(|n| *n > after)).await;
            drop(waiting);
            if !matches!(woke, Ok(Ok(_))) {
                return Ok(not_modified(current));
            }
        }
    }
    let crl = blocking(&state.authority, |a| a.latest_crl())
        .await
        .map_err(fail)?
        .ok_or_else(|| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no CRL published yet".to_string(),
            )
        })?;
    let etag = format!("\"{}\"", crl.number);
    if after.is_none()
        && req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            == Some(etag.as_str())
    {
        return Ok(not_modified(crl.number));
    }
    let mut resp = text(
        StatusCode::OK,
        "application/pkix-crl",
        tether_certs::pem::encode("X509 CRL", &crl.der),
    );
    let h = resp.headers_mut();
    h.insert(header::ETAG, header_value(&etag));
    h.insert("x-tether-crl-number", header_value(&crl.number.to_string()));
    Ok(resp)
}

/// Counts one long-poll in `tether_ca_crl_waiters` for as long as it lives. A guard rather than
/// inc/dec around the wait: hyper drops the request future when the client disconnects mid-poll,
/// and the count must go down then too.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn not_modified(number: u64) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    resp.headers_mut()
        .insert(header::ETAG, header_value(&format!("\"{number}\"")));
    resp.headers_mut()
        .insert("x-tether-crl-number", header_value(&number.to_string()));
    resp
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    serial: String,
    reason: Option<String>,
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

/// Asks for a client certificate and checks the handshake signature, but leaves judging the
/// certificate to the handler (see the module docs).
#[derive(Debug)]
struct DeferredClientAuth {
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl DeferredClientAuth {
    fn new() -> Self {
        DeferredClientAuth {
            algs: tether_certs::provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for DeferredClientAuth {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

//! Which request goes where: the typed [`Endpoint`] of each path with its allowed method and
//! metrics label, the dispatch to the handlers, and the one
//! place an error becomes a response (status, JSON `{"error": …}`, the failure counted — under
//! the reason the status implies, or one a refusal names with [`refused`] — `Allow` on a 405,
//! and the unread rest of the body discarded so the answer arrives — see [`super::body`]).

use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;

use tether_certs::wire::{self, EnrollRequest, ErrorBody, RenewRequest, RevokeRequest};

use super::body::RequestBody;
use super::server::{blocking, State};
use super::{enroll, revocation};
use crate::error::CaError;
use crate::metrics::{FailureReason, IssueMethod};
use crate::store::StoreError;

/// An answer.
pub(super) type Resp = Response<Full<Bytes>>;
/// A refusal: the status and the message for the caller.
pub(super) type Fail = (StatusCode, String);

/// The metrics label of a request to a path the API does not serve.
pub(super) const UNKNOWN_LABEL: &str = "other";

/// One route of the API (see the table in [`crate::api`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `GET /v1/bundle`.
    Bundle,
    /// `GET /v1/crl`.
    Crl,
    /// `POST /v1/enroll`.
    Enroll,
    /// `GET /metrics`.
    Metrics,
    /// `POST /v1/renew`.
    Renew,
    /// `POST /v1/revoke`.
    Revoke,
}

impl Endpoint {
    /// Every endpoint.
    pub(super) const ALL: [Endpoint; 6] = [
        Endpoint::Bundle,
        Endpoint::Crl,
        Endpoint::Enroll,
        Endpoint::Metrics,
        Endpoint::Renew,
        Endpoint::Revoke,
    ];

    /// The endpoint served at `path`, if any (the query is not part of it).
    pub(super) fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// Its path, as the wire contract names it.
    pub(super) fn path(self) -> &'static str {
        match self {
            Endpoint::Bundle => wire::BUNDLE_PATH,
            Endpoint::Crl => wire::CRL_PATH,
            Endpoint::Enroll => wire::ENROLL_PATH,
            Endpoint::Metrics => wire::METRICS_PATH,
            Endpoint::Renew => wire::RENEW_PATH,
            Endpoint::Revoke => wire::REVOKE_PATH,
        }
    }

    /// The `endpoint` label of its request and failure metrics.
    pub(super) fn label(self) -> &'static str {
        match self {
            Endpoint::Bundle => "bundle",
            Endpoint::Crl => "crl",
            Endpoint::Enroll => "enroll",
            Endpoint::Metrics => "metrics",
            Endpoint::Renew => "renew",
            Endpoint::Revoke => "revoke",
        }
    }

    /// The one method it takes.
    pub(super) fn method(self) -> Method {
        match self {
            Endpoint::Enroll | Endpoint::Renew | Endpoint::Revoke => Method::POST,
            Endpoint::Bundle | Endpoint::Crl | Endpoint::Metrics => Method::GET,
        }
    }

    /// The endpoint `method path` asks for: 404 for an unknown path, 405 for a known one asked
    /// with another method.
    pub(super) fn route(method: &Method, path: &str) -> Result<Self, Fail> {
        let endpoint = Self::from_path(path)
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no route {path}")))?;
        let want = endpoint.method();
        if *method != want {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} takes {want}", endpoint.label()),
            ));
        }
        Ok(endpoint)
    }
}

/// Answers one request, counting it (and its failure, if it failed) under its endpoint's label.
pub(super) async fn handle(
    state: &State,
    peer: &[CertificateDer<'static>],
    req: Request<Incoming>,
) -> Resp {
    let (parts, body) = req.into_parts();
    let mut body = RequestBody::new(body);
    let endpoint = Endpoint::from_path(parts.uri.path());
    let label = endpoint.map_or(UNKNOWN_LABEL, Endpoint::label);
    let answer = match Endpoint::route(&parts.method, parts.uri.path()) {
        Ok(endpoint) => serve(state, peer, endpoint, &parts, &mut body).await,
        Err(fail) => Err(fail),
    };
    let mut resp = answer.unwrap_or_else(|(status, msg)| {
        let mut resp = error(status, &msg);
        if let (StatusCode::METHOD_NOT_ALLOWED, Some(e)) = (status, endpoint) {
            // RFC 9110 15.5.6: a 405 must say which methods the resource supports.
            resp.headers_mut()
                .insert(header::ALLOW, header_value(e.method().as_str()));
        }
        resp
    });
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        // A refusal that names its own reason carries it (see `refused`).
        let reason = resp.extensions().get::<FailureReason>().copied();
        let reason = reason.unwrap_or_else(|| FailureReason::from_status(status));
        state.metrics.count_failure(label, reason);
    }
    // h2 has no Connection header (and needs none: only the stream ends).
    if body.discard() && parts.version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    state.metrics.count_request(label, resp.status());
    resp
}

/// Runs the handler of `endpoint` (method already checked) for the request `parts`; the
/// handlers that take a body read it from `body`.
async fn serve(
    state: &State,
    peer: &[CertificateDer<'static>],
    endpoint: Endpoint,
    parts: &Parts,
    body: &mut RequestBody,
) -> Result<Resp, Fail> {
    if endpoint.method() == Method::POST {
        if let Some(why) = state.removed() {
            // A removed replica may still run (its operator has not stopped it yet): it signs
            // nothing more. 503, so sidecars move on to a replica that does.
            return Err((StatusCode::SERVICE_UNAVAILABLE, why));
        }
    }
    match endpoint {
        Endpoint::Enroll => {
            let body: EnrollRequest = body.json(&parts.headers).await?;
            enroll::enroll(state, body).await
        }
        Endpoint::Renew => {
            if peer.is_empty() {
                return Err(fail(CaError::Unauthorized(
                    "renewal needs the current certificate as the TLS client certificate".into(),
                )));
            }
            let peer = peer.to_vec();
            let body: RenewRequest = body.json(&parts.headers).await?;
            issue(state, IssueMethod::Renew, move |a| {
                a.renew(&peer, body.csr.as_bytes())
            })
            .await
        }
        Endpoint::Revoke => {
            let body: RevokeRequest = body.json(&parts.headers).await?;
            revocation::revoke(state, peer.to_vec(), body).await
        }
        Endpoint::Bundle => {
            let mut resp = text(
                StatusCode::OK,
                wire::PEM_CONTENT_TYPE,
                state.authority.bundle_pem(),
            );
            resp.headers_mut().insert(
                wire::BUNDLE_VERSION_HEADER,
                header_value(&state.authority.bundle_version().to_string()),
            );
            Ok(resp)
        }
        Endpoint::Crl => revocation::crl(state, peer, parts).await,
        Endpoint::Metrics => Ok(metrics_text(&state.registry).await),
    }
}

/// Runs an issuance (`enroll` or `renew`) off the runtime and counts it under `method`.
pub(super) async fn issue(
    state: &State,
    method: IssueMethod,
    op: impl FnOnce(&crate::Authority) -> Result<wire::Issued, CaError> + Send + 'static,
) -> Result<Resp, Fail> {
    let started = Instant::now();
    let issued = blocking(&state.authority, op).await.map_err(fail)?;
    state.metrics.count_issued(method, started.elapsed());
    Ok(json(StatusCode::OK, &issued))
}

/// `GET /metrics`: the registry in the Prometheus text format.
pub(super) async fn metrics_text(registry: &prometheus::Registry) -> Resp {
    // Gathering reads `ca.db` (see `crate::metrics`), so it runs off the async workers.
    let registry = registry.clone();
    match tokio::task::spawn_blocking(move || crate::metrics::render(&registry)).await {
        Ok(body) => text(StatusCode::OK, "text/plain; version=0.0.4", body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("rendering the metrics failed: {e}"),
        ),
    }
}

/// A header value from text the API made itself (digits, quotes, method names).
pub(super) fn header_value(s: &str) -> HeaderValue {
    // Callers pass digits, quotes and method names, which are always valid header bytes.
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

/// The status a [`CaError`] is answered with; the message of a 500 stays in the CA's log.
pub(super) fn fail(e: CaError) -> Fail {
    let status = match &e {
        CaError::BadRequest(_) => StatusCode::BAD_REQUEST,
        CaError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        CaError::Forbidden(_) => StatusCode::FORBIDDEN,
        CaError::NotFound(_) => StatusCode::NOT_FOUND,
        // Retryable: the sidecar tries the next replica, then again after its backoff.
        CaError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!("answering 503: {e}");
        return (status, "the CA's database is unavailable; retry".into());
    }
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("internal error: {e}");
        return (status, "internal error; see the CA's log".into());
    }
    (status, e.to_string())
}

/// A JSON answer.
pub(super) fn json(status: StatusCode, body: &impl serde::Serialize) -> Resp {
    // Serializing our own plain structs cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    with_body(status, wire::JSON_CONTENT_TYPE, Bytes::from(bytes))
}

/// A text answer.
pub(super) fn text(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    with_body(status, content_type, Bytes::from(body))
}

/// An error answer: `{"error": msg}`.
pub(super) fn error(status: StatusCode, msg: &str) -> Resp {
    json(
        status,
        &ErrorBody {
            error: msg.to_string(),
        },
    )
}

/// An error answer counted under `reason` instead of the one its status implies.
pub(super) fn refused(reason: FailureReason, status: StatusCode, msg: &str) -> Resp {
    let mut resp = error(status, msg);
    resp.extensions_mut().insert(reason);
    resp
}

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_routes_to_its_endpoint_with_its_method() {
        let cases = [
            (Method::GET, "/v1/bundle", Endpoint::Bundle, "bundle"),
            (Method::GET, "/v1/crl", Endpoint::Crl, "crl"),
            (Method::POST, "/v1/enroll", Endpoint::Enroll, "enroll"),
            (Method::GET, "/metrics", Endpoint::Metrics, "metrics"),
            (Method::POST, "/v1/renew", Endpoint::Renew, "renew"),
            (Method::POST, "/v1/revoke", Endpoint::Revoke, "revoke"),
        ];
        assert_eq!(cases.len(), Endpoint::ALL.len());
        for (method, path, endpoint, label) in cases {
            assert_eq!(
                Endpoint::route(&method, path),
                Ok(endpoint),
                "{method} {path}"
            );
            assert_eq!(endpoint.path(), path);
            assert_eq!(endpoint.label(), label);
            assert_eq!(endpoint.method(), method);
        }
    }

    #[test]
    fn an_unknown_path_is_404_never_metrics() {
        for path in [
            "/",
            "/nowhere",
            "/v1/nothing-here",
            "/metrics/",
            "/v1/crl/x",
            "/V1/CRL",
        ] {
            assert_eq!(Endpoint::from_path(path), None, "{path}");
            let (status, msg) = Endpoint::route(&Method::GET, path).unwrap_err();
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(msg.contains(path), "{msg}");
        }
    }

    #[test]
    fn a_wrong_method_is_405_naming_the_allowed_one() {
        for (method, path, allowed) in [
            (Method::GET, "/v1/enroll", "POST"),
            (Method::GET, "/v1/renew", "POST"),
            (Method::PUT, "/v1/revoke", "POST"),
            (Method::POST, "/v1/crl", "GET"),
            (Method::PUT, "/v1/bundle", "GET"),
            (Method::DELETE, "/metrics", "GET"),
        ] {
            let (status, msg) = Endpoint::route(&method, path).unwrap_err();
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(msg.ends_with(&format!("takes {allowed}")), "{msg}");
        }
    }

    #[test]
    fn internal_errors_hide_their_message_and_others_keep_it() {
        let (status, msg) = fail(CaError::Internal("worker panicked".into()));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!msg.contains("panicked"), "{msg}");
        let (status, msg) = fail(CaError::Forbidden("revoked".into()));
        assert_eq!((status, msg.as_str()), (StatusCode::FORBIDDEN, "revoked"));
    }
}

//! The one error type of the request path, in both directions, and the one place it becomes an
//! HTTP response ([`Error::into_response`]).
//!
//! Deep code returns an [`Error`] that says what went wrong; the status code and the body the
//! client reads are attached here, at the edge, so every refusal of the same kind reads the same
//! wherever it happened, and nothing below the edge builds a response. Bodies never name policy
//! rules, keys or internal addresses beyond what the client already named.
//!
//! A gRPC client reads a refusal from `grpc-status`, not from the HTTP status: each error also
//! has its gRPC status ([`Error::grpc_status`]), and [`Dialect`] spells the refusal the way the
//! request's protocol reads it ([`grpc`]).

mod grpc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::tls::{HandshakeResult, Refusal};

pub use grpc::{grpc_content_type, grpc_status_of, Dialect, GrpcStatus};

/// Body of every response the sidecar returns: streamed from upstream, or one of ours.
pub type RespBody = Either<UpstreamBody, Full<Bytes>>;

/// A response body streamed from upstream: from hyper's clients (the app, a peer over
/// HTTP/1.1), or from a peer's shared HTTP/2 connection.
pub type UpstreamBody = Either<Incoming, crate::outbound::H2Body>;

/// A body an upstream's response arrives with, and how [`RespBody`] carries it.
pub trait FromUpstream {
    /// This body as the one response body type.
    fn into_resp_body(self) -> RespBody;
}

impl FromUpstream for Incoming {
    fn into_resp_body(self) -> RespBody {
        Either::Left(Either::Left(self))
    }
}

impl FromUpstream for crate::outbound::H2Body {
    fn into_resp_body(self) -> RespBody {
        Either::Left(Either::Right(self))
    }
}

/// Which upstream a failure happened at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The local app (inbound).
    App,
    /// A peer sidecar (outbound).
    Peer,
}

/// Why a request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is unusable (400); the message says how.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The policy denied it (403).
    #[error("denied by policy")]
    Forbidden,
    /// The outbound knows no service of this name (502).
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// The service has no address configured (502).
    #[error("service has no address")]
    NoAddress,
    /// No usable certificate or CRL yet: we fail closed (503).
    #[error("no usable certificate or revocation list")]
    NoIdentity,
    /// The connection came in past the listener's `max_connections`, in its overflow band, and
    /// is refused without being served (503; gRPC: RESOURCE_EXHAUSTED).
    #[error("connection limit reached")]
    Overloaded,
    /// No mTLS connection to any address of a service (502).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The peer sidecar took the TLS connection but not the HTTP handshake on it (502).
    #[error("peer sidecar refused the connection: {0}")]
    PeerRefused(String),
    /// The upstream refused, dropped or failed the request after it was sent (502).
    #[error("{hop:?} failed: {detail}")]
    Failed {
        /// Where.
        hop: Hop,
        /// What happened, for the log.
        detail: String,
    },
    /// The upstream sent no response head in time (504).
    #[error("{0:?} did not answer in time")]
    Timeout(Hop),
}

/// No mTLS connection could be made to any address of `service`.
#[derive(Debug, thiserror::Error)]
#[error("service {service:?}: {failure}")]
pub struct ConnectError {
    /// The service name.
    pub service: String,
    /// The SPIFFE ID the peer had to present.
    pub identity: String,
    /// The last address's failure.
    pub failure: ConnectFailure,
}

/// How one connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// TCP connect failed or timed out.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The TLS (or HTTP/2) handshake failed.
    #[error("handshake failed ({}): {}", .0.result.as_str(), .0.detail)]
    Handshake(Refusal),
}

impl Error {
    /// A failure of `hop` with `detail` for the log.
    pub fn failed(hop: Hop, detail: impl std::fmt::Display) -> Self {
        Error::Failed {
            hop,
            detail: detail.to_string(),
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Forbidden => StatusCode::FORBIDDEN,
            Error::NoIdentity | Error::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::UnknownService(_)
            | Error::NoAddress
            | Error::Connect(_)
            | Error::PeerRefused(_)
            | Error::Failed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The gRPC status a gRPC or gRPC-Web client reads for this refusal: the one mapping from
    /// errors to gRPC, beside [`Error::status`]. It is gRPC's own HTTP-to-gRPC table
    /// (`doc/http-grpc-status-mapping.md` in grpc/grpc), as Envoy applies it, so a client reads
    /// the same code behind either proxy: 400 → INTERNAL (a malformed request is a protocol
    /// error, not a bad argument of the call), 403 → PERMISSION_DENIED, 502 and 503 →
    /// UNAVAILABLE (nothing could take the call now: clients may retry elsewhere). Two
    /// exceptions say what happened, as a caller's retry budget must see it: the timeout is
    /// DEADLINE_EXCEEDED rather than 504's UNAVAILABLE, and the connection limit is
    /// RESOURCE_EXHAUSTED, the sidecar's own load, which a client must not read as the service
    /// being down.
    pub fn grpc_status(&self) -> GrpcStatus {
        match self {
            Error::BadRequest(_) => GrpcStatus::Internal,
            Error::Forbidden => GrpcStatus::PermissionDenied,
            Error::Timeout(_) => GrpcStatus::DeadlineExceeded,
            Error::Overloaded => GrpcStatus::ResourceExhausted,
            Error::UnknownService(_)
            | Error::NoAddress
            | Error::NoIdentity
            | Error::Connect(_)
            | Error::PeerRefused(_)
            | Error::Failed { .. } => GrpcStatus::Unavailable,
        }
    }

    /// The body the client reads: what went wrong in words the caller can act on.
    fn body(&self) -> String {
        match self {
            Error::BadRequest(what) => format!("{what}\n"),
            Error::Forbidden => "forbidden\n".into(),
            Error::UnknownService(name) => format!("unknown service {name:?}\n"),
            Error::NoAddress => "service has no address\n".into(),
            Error::NoIdentity => {
                "sidecar has no usable certificate or revocation list yet\n".into()
            }
            Error::Overloaded => "connection limit reached\n".into(),
            Error::Connect(c) => match &c.failure {
                ConnectFailure::Handshake(r) if r.result == HandshakeResult::IdentityMismatch => {
                    format!(
                        "peer of service {:?} did not present {}\n",
                        c.service, c.identity
                    )
                }
                ConnectFailure::Handshake(r) => format!(
                    "mTLS handshake with service {:?} failed ({})\n",
                    c.service,
                    r.result.as_str()
                ),
                ConnectFailure::Unreachable(_) => format!("service {:?} unreachable\n", c.service),
            },
            Error::PeerRefused(_) => "peer sidecar refused the connection\n".into(),
            Error::Failed { hop: Hop::Peer, .. } => {
                "peer sidecar refused or dropped the request\n".into()
            }
            Error::Failed { hop: Hop::App, .. } => "local app unavailable\n".into(),
            Error::Timeout(Hop::Peer) => "peer did not answer in time\n".into(),
            Error::Timeout(Hop::App) => "local app did not answer in time\n".into(),
        }
    }

    /// Logs the error of the request with id `request_id`: upstream failures at warn (an
    /// operator acts on them), refusals at debug (the access log and metrics have them).
    pub fn log(&self, request_id: &str) {
        match self {
            Error::Connect(_) | Error::PeerRefused(_) | Error::Failed { .. } => {
                tracing::warn!(request_id, "{self}")
            }
            _ => tracing::debug!(request_id, "{self}"),
        }
    }

    /// The response an HTTP client gets. The response also carries what a gRPC client is to
    /// read instead, which [`Dialect::answer`] uses once the request path has counted the
    /// refusal by its HTTP status. The request path logs the error first
    /// ([`crate::observe::Exchange::fail`]).
    pub fn into_response(self) -> Response<RespBody> {
        let body = Bytes::from(self.body());
        let mut r = Response::new(Either::Right(Full::new(body.clone())));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        grpc::mark_refusal(&mut r, self.grpc_status(), body);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(failure: ConnectFailure) -> Error {
        Error::Connect(ConnectError {
            service: "service-b".into(),
            identity: "spiffe://td/b".into(),
            failure,
        })
    }

    fn refusal(result: HandshakeResult) -> Refusal {
        Refusal {
            result,
            detail: "detail".into(),
        }
    }

    #[test]
    fn each_error_has_its_status_and_body() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (
                Error::BadRequest("bad request path"),
                400,
                "bad request path\n",
            ),
            (Error::Forbidden, 403, "forbidden\n"),
            (
                Error::UnknownService("x".into()),
                502,
                "unknown service \"x\"\n",
            ),
            (Error::NoAddress, 502, "service has no address\n"),
            (Error::Overloaded, 503, "connection limit reached\n"),
            (
                Error::NoIdentity,
                503,
                "sidecar has no usable certificate or revocation list yet\n",
            ),
            (
                connect(ConnectFailure::Handshake(refusal(
                    HandshakeResult::IdentityMismatch,
                ))),
                502,
                "peer of service \"service-b\" did not present spiffe://td/b\n",
            ),
            (
                connect(ConnectFailure::Handshake(refusal(
                    HandshakeResult::UnknownCa,
                ))),
                502,
                "mTLS handshake with service \"service-b\" failed (unknown_ca)\n",
            ),
            (
                connect(ConnectFailure::Unreachable("refused".into())),
                502,
                "service \"service-b\" unreachable\n",
            ),
            (
                Error::PeerRefused("x".into()),
                502,
                "peer sidecar refused the connection\n",
            ),
            (
                Error::failed(Hop::Peer, "reset"),
                502,
                "peer sidecar refused or dropped the request\n",
            ),
            (
                Error::failed(Hop::App, "reset"),
                502,
                "local app unavailable\n",
            ),
            (
                Error::Timeout(Hop::Peer),
                504,
                "peer did not answer in time\n",
            ),
            (
                Error::Timeout(Hop::App),
                504,
                "local app did not answer in time\n",
            ),
        ];
        for (err, status, body) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.body(), body, "{err}");
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
        }
    }

    #[test]
    fn each_error_has_its_grpc_status() {
        use GrpcStatus::*;
        let cases = [
            (Error::BadRequest("bad request path"), Internal),
            (Error::Forbidden, PermissionDenied),
            (Error::UnknownService("x".into()), Unavailable),
            (Error::NoAddress, Unavailable),
            (Error::NoIdentity, Unavailable),
            (Error::Overloaded, ResourceExhausted),
            (
                connect(ConnectFailure::Handshake(refusal(
                    HandshakeResult::IdentityMismatch,
                ))),
                Unavailable,
            ),
            (
                connect(ConnectFailure::Unreachable("refused".into())),
                Unavailable,
            ),
            (Error::PeerRefused("x".into()), Unavailable),
            (Error::failed(Hop::Peer, "reset"), Unavailable),
            (Error::failed(Hop::App, "reset"), Unavailable),
            (Error::Timeout(Hop::Peer), DeadlineExceeded),
            (Error::Timeout(Hop::App), DeadlineExceeded),
        ];
        for (err, code) in cases {
            assert_eq!(err.grpc_status(), code, "{err}");
        }
    }

    #[test]
    fn the_detail_stays_in_the_log_not_the_body() {
        let err = connect(ConnectFailure::Unreachable("10.1.2.3:8443: refused".into()));
        assert!(err.to_string().contains("10.1.2.3"));
        assert!(!err.body().contains("10.1.2.3"));
        let err = Error::failed(Hop::App, "connection reset by 127.0.0.1:9000");
        assert!(!err.body().contains("127.0.0.1"));
    }
}

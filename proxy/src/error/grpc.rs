//! Refusals as gRPC reads them. A gRPC or gRPC-Web client takes its call's outcome from
//! `grpc-status`, and on HTTP 200 only: a plain `403` reaches it as a transport failure with a
//! made-up message. So, as Envoy's RBAC filter does, a refusal of a request whose content type
//! is gRPC's is answered "trailers-only": HTTP 200, the request's content type, `grpc-status`
//! and a percent-encoded `grpc-message`, and no body — on HTTP/2 one HEADERS frame that ends
//! the stream, and on HTTP/1.1 (gRPC-Web) a header-only response, which gRPC-Web clients read
//! the same way.
//!
//! The request's [`Dialect`] is read before the request is forwarded (one header lookup) and
//! looked at again only when the answer is a refusal, so a request that succeeds pays nothing
//! more.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;
use http_body_util::{Either, Full};

use super::RespBody;

/// The gRPC status codes a sidecar refusal maps to (gRPC's `doc/statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcStatus {
    /// 4: the upstream did not answer in time.
    DeadlineExceeded,
    /// 13: the request itself is malformed.
    Internal,
    /// 7: the policy does not let the caller make this call.
    PermissionDenied,
    /// 8: the sidecar is at its connection limit.
    ResourceExhausted,
    /// 14: nothing upstream can take the call now; a client may retry.
    Unavailable,
}

impl GrpcStatus {
    /// The numeric code, as `grpc-status` carries it.
    pub fn code(self) -> u8 {
        match self {
            GrpcStatus::DeadlineExceeded => 4,
            GrpcStatus::Internal => 13,
            GrpcStatus::PermissionDenied => 7,
            GrpcStatus::ResourceExhausted => 8,
            GrpcStatus::Unavailable => 14,
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from(u16::from(self.code()))
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// What a sidecar refusal says to a gRPC client, kept on its HTTP response by
/// [`super::Error::into_response`] (an upstream's response never has it).
#[derive(Debug, Clone)]
struct Refused {
    status: GrpcStatus,
    /// The refusal's text body, already free of internal detail.
    text: Bytes,
}

/// Marks `resp` as the sidecar's refusal with `status` and the text `body`.
pub(super) fn mark_refusal(resp: &mut Response<RespBody>, status: GrpcStatus, body: Bytes) {
    resp.extensions_mut().insert(Refused { status, text: body });
}

/// The request's content type if it is gRPC's: `application/grpc` alone or with a suffix
/// (`+proto`, `;…`, `-web`, `-web+proto`, `-web-text`), in any case.
pub fn grpc_content_type(headers: &HeaderMap) -> Option<&HeaderValue> {
    const GRPC: &[u8] = b"application/grpc";
    let value = headers.get(header::CONTENT_TYPE)?;
    let bytes = value.as_bytes();
    let (prefix, rest) = bytes.split_at_checked(GRPC.len())?;
    let suffix_ok = matches!(rest.first(), None | Some(b'+' | b';' | b'-'));
    (prefix.eq_ignore_ascii_case(GRPC) && suffix_ok).then_some(value)
}

/// The `grpc-status` in `headers` (a trailers-only head, or the trailers), if it is a number.
pub fn grpc_status_of(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// How the client of one request reads a refusal.
#[derive(Debug, Clone, Default)]
pub enum Dialect {
    /// gRPC or gRPC-Web, with the request's content type, which the answer repeats.
    Grpc(HeaderValue),
    /// Anything else: the HTTP status and a text body.
    #[default]
    Http,
}

impl Dialect {
    /// The dialect of a request with `headers`; call it before the request is forwarded.
    pub fn of(headers: &HeaderMap) -> Self {
        grpc_content_type(headers).map_or(Dialect::Http, |ct| Dialect::Grpc(ct.clone()))
    }

    /// `resp` as this dialect's client reads it: a sidecar refusal to a gRPC request becomes
    /// trailers-only; anything else (every upstream response) passes untouched.
    pub fn answer(self, resp: Response<RespBody>) -> Response<RespBody> {
        let Dialect::Grpc(content_type) = self else {
            return resp;
        };
        let Some(refused) = resp.extensions().get::<Refused>() else {
            return resp;
        };
        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = r.headers_mut();
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(GRPC_STATUS, refused.status.header());
        let message = percent_encode(refused.text.trim_ascii_end());
        // Percent-encoding leaves only visible ASCII and spaces, which a header value takes.
        if let Ok(message) = HeaderValue::from_maybe_shared(message) {
            headers.insert(GRPC_MESSAGE, message);
        }
        r
    }
}

/// `text` percent-encoded as `grpc-message` requires: every byte outside space to `~`, and `%`.
fn percent_encode(text: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::error::Error;

    fn with_type(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn grpc_and_grpc_web_content_types_are_recognized() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "application/grpc; charset=utf-8",
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "Application/GRPC",
        ] {
            assert!(grpc_content_type(&with_type(ct)).is_some(), "{ct}");
        }
        for ct in [
            "application/json",
            "application/grpcx",
            "application/grp",
            "text/plain",
            "application/connect+proto",
        ] {
            assert!(grpc_content_type(&with_type(ct)).is_none(), "{ct}");
        }
        assert!(grpc_content_type(&HeaderMap::new()).is_none());
    }

    #[test]
    fn a_refusal_to_grpc_is_trailers_only_with_the_request_type() {
        let dialect = Dialect::of(&with_type("application/grpc-web+proto"));
        let resp = dialect.answer(Error::Forbidden.into_response());
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc-web+proto");
        assert_eq!(h["grpc-status"], "7");
        assert_eq!(h["grpc-message"], "forbidden");
        assert!(hyper::body::Body::is_end_stream(resp.body()), "no body");
    }

    #[test]
    fn the_message_is_percent_encoded() {
        let dialect = Dialect::of(&with_type("application/grpc"));
        let resp = dialect.answer(Error::UnknownService("50%\u{e9}".into()).into_response());
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "unknown service \"50%25%C3%A9\""
        );
        assert_eq!(percent_encode(b"a b\n~%"), "a b%0A~%25");
    }

    #[test]
    fn http_clients_and_upstream_answers_are_left_alone() {
        let resp = Dialect::Http.answer(Error::Forbidden.into_response());
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get("grpc-status").is_none());
        // A 403 from upstream (the app's own) is not ours to rewrite, gRPC or not.
        let upstream = Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Either::Right(Full::new(Bytes::from_static(b"app says no"))))
            .unwrap();
        let resp = Dialect::of(&with_type("application/grpc")).answer(upstream);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get("grpc-status").is_none());
    }
}

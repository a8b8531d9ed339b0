//! One access-log entry: what the sidecar saw of one finished request, filled in by the request
//! path as it learns each fact ([`crate::observe::Exchange`]) and turned into a JSON line on the
//! writer thread, so the request path only moves it.
//!
//! Every line has every key, `null` where a key does not apply to its direction (`service` on
//! the inbound, `decision` and `rule` on the outbound) or was never learnt
//! (`decision` of a request refused before the policy was asked). The query string is never
//! logged: it is where tokens and other secrets travel in URLs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use serde::Serialize;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::metrics::{AuthzLabel, Direction};

/// RFC 3339 in UTC with milliseconds, e.g. `2026-12-01T15:04:05.123Z`.
const TS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The status logged for a request whose client went away before any response: nginx's
/// convention, which log tooling already knows.
pub const CLIENT_CLOSED: u16 = 499;

/// One finished request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When its head arrived.
    pub ts: SystemTime,
    /// Which listener served it.
    pub direction: Direction,
    /// The caller's SPIFFE ID (inbound) or the callee's (outbound), once known; shared with
    /// the connection or route, so logging a request copies no string.
    pub peer: Option<Arc<str>>,
    /// The outbound's service name, once the route is known.
    pub service: Option<Arc<str>>,
    /// The request method.
    pub method: Method,
    /// The path as authorized (inbound: normalized) or as the app sent it (outbound); no query.
    pub path: String,
    /// The response status ([`CLIENT_CLOSED`] if none was sent).
    pub status: u16,
    /// From its head to the end of its response body.
    pub duration: Duration,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// The request's `x-request-id` ([`crate::observe::settle_request_id`]: visible ASCII).
    pub request_id: HeaderValue,
    /// Inbound: what the policy decided.
    pub decision: Option<AuthzLabel>,
    /// Inbound: the rule that matched.
    pub rule: Option<String>,
    /// The address the request was sent to: the app (inbound) or the peer sidecar (outbound).
    pub upstream: Option<SocketAddr>,
    /// For gRPC: the `grpc-status` of the response (trailers, or a trailers-only head).
    pub grpc_status: Option<u32>,
}

impl Record {
    /// A record of a request that has just arrived; the rest is filled in as it is served.
    pub fn new(direction: Direction, method: Method, path: &str, request_id: HeaderValue) -> Self {
        Record {
            ts: SystemTime::now(),
            direction,
            peer: None,
            service: None,
            method,
            path: path.to_owned(),
            status: CLIENT_CLOSED,
            duration: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            request_id,
            decision: None,
            rule: None,
            upstream: None,
            grpc_status: None,
        }
    }
}

/// The JSON shape of a line, borrowed from a [`Record`].
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    direction: &'static str,
    peer: Option<&'a str>,
    service: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    request_id: &'a str,
    decision: Option<&'static str>,
    rule: Option<&'a str>,
    upstream: Option<SocketAddr>,
    grpc_status: Option<u32>,
}

impl super::Entry for Record {
    fn write_json(&self, out: &mut Vec<u8>) {
        let ts = time::OffsetDateTime::from(self.ts)
            .format(TS)
            .unwrap_or_default();
        let line = Line {
            ts,
            direction: self.direction.as_str(),
            peer: self.peer.as_deref(),
            service: self.service.as_deref(),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            duration_ms: self.duration.as_secs_f64() * 1e3,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            request_id: crate::observe::id_str(&self.request_id),
            decision: self.decision.map(AuthzLabel::as_str),
            rule: self.rule.as_deref(),
            // serde writes an address as its text, without an allocation.
            upstream: self.upstream,
            grpc_status: self.grpc_status,
        };
        // Serializing plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &line);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Entry as _;
    use super::*;

    fn line(r: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        r.write_json(&mut out);
        assert!(!out.contains(&b'\n'), "one entry, one line");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_line_has_every_key_with_null_for_what_does_not_apply() {
        let id = HeaderValue::from_static("abc");
        let mut r = Record::new(Direction::Inbound, Method::POST, "/a/b", id);
        r.ts = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_601_445_123);
        r.peer = Some("spiffe://td/caller".into());
        r.status = 200;
        r.duration = Duration::from_micros(1500);
        r.decision = Some(AuthzLabel::Allow);
        r.rule = Some("read".into());
        r.upstream = Some("127.0.0.1:8080".parse().unwrap());
        let v = line(&r);
        assert_eq!(v["ts"], "2025-12-01T15:04:05.123Z");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["peer"], "spiffe://td/caller");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["rule"], "read");
        assert_eq!(v["upstream"], "127.0.0.1:8080");
        for key in ["service", "grpc_status"] {
            assert!(v[key].is_null(), "{key}: {}", v[key]);
        }
        assert_eq!(v.as_object().unwrap().len(), 15, "{v}");
    }

    #[test]
    fn hostile_paths_stay_inside_their_json_string() {
        let id = HeaderValue::from_static("x");
        let path = "/a\"},\"status\":200,\"x\":\"\n\u{1b}[31m\u{7f}";
        let r = Record::new(Direction::Outbound, Method::GET, path, id);
        let v = line(&r);
        assert_eq!(v["path"], path);
        assert_eq!(v["status"], CLIENT_CLOSED);
    }
}

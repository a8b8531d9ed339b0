//! One access-log entry: what the sidecar saw of one finished request, filled in by the request
//! path as it learns each fact ([`crate::observe::Exchange`]) and turned into a JSON line on the
//! writer thread, so the request path only moves it.
//!
//! Every line has every key, `null` where a key does not apply to its direction (`service` on
//! the inbound, `decision` and `rule` on the outbound) or was never learnt
//! (`decision` of a request refused before the policy was asked). The query string is never
//! logged: it is where tokens and other secrets travel in URLs.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
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

/// What the writer thread formatted for the line before: consecutive lines mostly fall in the
/// same second and go to the same upstream, and formatting those two cost the outbound 2.8 k
/// instructions per request (callgrind, 32 connections: 49.8 k against 47.0 k with the memo).
#[derive(Default)]
struct Memo {
    ts: Stamp,
    upstream: Upstream,
}

/// The last timestamp written, and the Unix second its first 19 bytes
/// (`YYYY-MM-DDTHH:MM:SS`) name.
#[derive(Default)]
struct Stamp {
    second: Option<u64>,
    text: String,
}

/// The last upstream written, and its text.
#[derive(Default)]
struct Upstream(Option<(SocketAddr, String)>);

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
}

impl Stamp {
    /// `at` in [`TS`]'s format; the date and the time of day are formatted once per second.
    fn of(&mut self, at: SystemTime) -> &str {
        // Before 1970 (no second to key on) every stamp is formatted in full.
        let second = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| (d.as_secs(), d.subsec_millis()));
        match second {
            Some((s, millis)) if self.second == Some(s) => {
                self.text.truncate(19);
                let _ = write!(self.text, ".{millis:03}Z");
            }
            _ => {
                self.text = time::OffsetDateTime::from(at)
                    .format(TS)
                    .unwrap_or_default();
                // Only a stamp of the usual shape (a four-digit year) is reused.
                self.second = second.filter(|_| self.text.len() == 24).map(|(s, _)| s);
            }
        }
        &self.text
    }
}

impl Upstream {
    /// `addr` as text, formatted only when it differs from the last one.
    fn of(&mut self, addr: SocketAddr) -> &str {
        if self.0.as_ref().is_none_or(|(last, _)| *last != addr) {
            self.0 = Some((addr, addr.to_string()));
        }
        self.0.as_ref().map_or("", |(_, text)| text)
    }
}

/// `,"name":` (every key but the first), made at compile time: one copy per key instead of
/// three.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

impl super::Entry for Record {
    /// The keys in a fixed order, written by hand: serde_json's derive spent about 2.5 k
    /// instructions a line escaping strings a byte at a time, and most of these need no escape
    /// (see [`string`]). Net, 1.4 k fewer per request at the outbound (47.0 k → 45.6 k); then
    /// [`needs_escape`] by words and the keys made at compile time, 1.4 k fewer again
    /// (45.7 k → 44.3 k, against 40.3 k with the log off).
    fn write_json(&self, out: &mut Vec<u8>) {
        MEMO.with_borrow_mut(|Memo { ts, upstream }| {
            out.extend_from_slice(b"{\"ts\":");
            string(out, ts.of(self.ts));
            field(out, key!("direction"), Some(self.direction.as_str()));
            field(out, key!("peer"), self.peer.as_deref());
            field(out, key!("service"), self.service.as_deref());
            field(out, key!("method"), Some(self.method.as_str()));
            field(out, key!("path"), Some(&self.path));
            number(out, key!("status"), Some(self.status.into()));
            out.extend_from_slice(key!("duration_ms"));
            // Serializing a number into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &(self.duration.as_secs_f64() * 1e3));
            number(out, key!("bytes_in"), Some(self.bytes_in));
            number(out, key!("bytes_out"), Some(self.bytes_out));
            let id = crate::observe::id_str(&self.request_id);
            field(out, key!("request_id"), Some(id));
            field(out, key!("decision"), self.decision.map(AuthzLabel::as_str));
            field(out, key!("rule"), self.rule.as_deref());
            field(out, key!("upstream"), self.upstream.map(|a| upstream.of(a)));
            number(out, key!("grpc_status"), self.grpc_status.map(u64::from));
            out.push(b'}');
        });
    }
}

/// A string field after its `key`, `null` when absent.
fn field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    out.extend_from_slice(key);
    match value {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A number field, `null` when absent.
fn number(out: &mut Vec<u8>, key: &[u8], value: Option<u64>) {
    out.extend_from_slice(key);
    match value {
        Some(n) => {
            let _ = serde_json::to_writer(&mut *out, &n);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// `s` as a JSON string. A string with no byte JSON must escape (`"`, `\\`, below 0x20) is
/// copied as it is, which is also what serde_json writes for it; any other goes through
/// serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether `s` holds a byte JSON must escape: `"`, `\\`, or one below 0x20. Eight bytes at a
/// time: a byte at a time, this check was 1.1 k of the outbound's 45.6 k instructions per request
/// with the log on (callgrind, 32 connections), for the 140 or so bytes of strings in a line.
fn needs_escape(s: &[u8]) -> bool {
    let mut words = s.chunks_exact(8);
    let found = words.any(|w| {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // A byte equal to `c` is a zero byte of `x ^ spread(c)`, that is, one below 1.
        has_byte_below(x, 0x20)
            || has_byte_below(x ^ spread(b'"'), 1)
            || has_byte_below(x ^ spread(b'\\'), 1)
    });
    found
        || words
            .remainder()
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `b` in every byte of a word.
const fn spread(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// Whether a byte of `x` is below `n` (at most 0x80), by the classic bit trick: exact as a yes
/// or no. A borrow out of a low byte can mark the byte above it too, but only when a byte is
/// low; a byte of 0x80 or more has its top bit set, so `!x` clears it from the answer.
fn has_byte_below(x: u64, n: u8) -> bool {
    x.wrapping_sub(spread(n)) & !x & spread(0x80) != 0
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

    #[test]
    fn a_stamp_reused_within_its_second_reads_as_a_fresh_one() {
        let mut stamp = Stamp::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_601_445_000);
        // Within one second, across its end, backwards, and far away.
        let steps: [i64; 9] = [0, 1, 999, 1_000, 1_001, 500, 86_400_000, -1, 5];
        for ms in steps {
            let at = if ms >= 0 {
                base + Duration::from_millis(ms as u64)
            } else {
                base - Duration::from_millis(ms.unsigned_abs())
            };
            let want = time::OffsetDateTime::from(at).format(TS).unwrap();
            assert_eq!(stamp.of(at), want, "{ms} ms");
        }
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_millis(1_500);
        assert_eq!(stamp.of(before_1970), "1969-12-31T23:59:58.500Z");
        assert_eq!(stamp.of(base), "2025-12-01T15:04:05.000Z");
    }

    #[test]
    fn the_upstream_text_follows_each_address() {
        let mut upstream = Upstream::default();
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "[::1]:9090".parse().unwrap();
        for addr in [a, a, b, a, b, b] {
            assert_eq!(upstream.of(addr), addr.to_string());
        }
    }

    #[test]
    fn strings_are_written_byte_for_byte_as_serde_json_writes_them() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| format!("a{}z", b as char)).collect();
        cases.extend(
            [
                "",
                "spiffe://td/ns/a/sa/b",
                "/é/日本",
                "\\\"",
                "\u{7f}\u{2028}",
            ]
            .map(String::from),
        );
        for s in cases {
            let mut ours = Vec::new();
            string(&mut ours, &s);
            assert_eq!(ours, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn every_byte_is_judged_in_every_place_of_a_word() {
        // 19 bytes: two whole words and a tail of 3, so each byte value is tried at every
        // offset within a word and in the tail, next to plain bytes and next to 0x80 and up
        // (UTF-8 continuation bytes, whose top bit must not hide a byte below 0x20).
        for fill in [b'a', 0x80, 0xff] {
            for at in 0..19 {
                for b in 0..=255u8 {
                    let mut s = [fill; 19];
                    s[at] = b;
                    let expected = s.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(
                        needs_escape(&s),
                        expected,
                        "byte {b:#04x} at {at} among {fill:#04x}"
                    );
                }
            }
        }
        assert!(!needs_escape(b""));
        // And mixed strings of every length up to five words, from bytes at the edges of the
        // ranges, against the byte-at-a-time rule.
        let edges = [
            0x00, 0x1f, 0x20, 0x21, b'"', b'[', b'\\', b']', 0x7f, 0x80, 0x9f, 0xff, b'a',
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 41) as usize;
            let s: Vec<u8> = (0..len)
                .map(|i| edges[((seed >> (i % 16 * 4)) as usize + i) % edges.len()])
                .collect();
            let expected = s.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
            assert_eq!(needs_escape(&s), expected, "{s:02x?}");
        }
    }
}

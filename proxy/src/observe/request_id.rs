//! The request id every hop of a request shares (`x-request-id`), so the outbound's and the
//! inbound's access-log lines and the app's own logs of one request can be joined.
//!
//! The first sidecar that sees a request without a usable id gives it one: 128 random bits as
//! 32 lower-case hex digits. Every later hop keeps an incoming id that is usable: exactly one
//! `x-request-id` field of 1 to [`MAX_LEN`] visible ASCII characters. Anything else — two
//! conflicting fields, an over-long value, spaces, control or non-ASCII bytes — is replaced, so a
//! caller cannot make the log lines of its request ambiguous, or inject into a log pipeline that
//! reads the id raw.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header's name.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming id kept, in bytes.
pub const MAX_LEN: usize = 128;

/// Keeps `headers`' one usable `x-request-id`, or replaces every `x-request-id` field with a new
/// id; returns the id the request now carries.
pub fn settle(headers: &mut HeaderMap) -> HeaderValue {
    let mut ids = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(id), None) = (ids.next(), ids.next()) {
        if usable(id.as_bytes()) {
            return id.clone();
        }
    }
    let id = fresh();
    // `insert` replaces every field of that name.
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// Whether an incoming id is kept: 1 to [`MAX_LEN`] bytes, each visible ASCII (0x21–0x7e).
fn usable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

/// 128 bits from the thread's CSPRNG as 32 lower-case hex digits.
fn fresh() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    let mut out = [0u8; 32];
    for (i, byte) in bits.to_be_bytes().iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn is_fresh(id: &HeaderValue) -> bool {
        let b = id.as_bytes();
        b.len() == 32
            && b.iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }

    #[test]
    fn a_request_without_an_id_gets_a_new_random_one() {
        let mut h = HeaderMap::new();
        let a = settle(&mut h);
        assert!(is_fresh(&a), "{a:?}");
        assert_eq!(h.get(X_REQUEST_ID), Some(&a));
        let b = settle(&mut HeaderMap::new());
        assert_ne!(a, b, "two requests share an id");
    }

    #[test]
    fn a_usable_incoming_id_is_kept_as_sent() {
        for id in [
            &b"abc-123"[..],
            b"f47ac10b-58cc-4372-a567-0e02b2c3d479",
            &[b'x'; 128],
        ] {
            let mut h = with(&[id]);
            assert_eq!(settle(&mut h).as_bytes(), id);
            assert_eq!(h.get_all(X_REQUEST_ID).iter().count(), 1);
        }
    }

    #[test]
    fn unusable_or_conflicting_ids_are_replaced_by_one_new_id() {
        let cases: [&[&[u8]]; 6] = [
            &[b""],
            &[&[b'x'; 129]],
            &[b"has space"],
            &[b"tab\there"],
            &[b"caf\xc3\xa9"],
            &[b"one", b"two"],
        ];
        for values in cases {
            let mut h = with(values);
            let id = settle(&mut h);
            assert!(is_fresh(&id), "{values:?} kept as {id:?}");
            let all: Vec<_> = h.get_all(X_REQUEST_ID).iter().collect();
            assert_eq!(all, [&id], "{values:?}");
        }
    }
}

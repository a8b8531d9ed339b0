//! What a request's headers become on the way through: its one authority settled
//! ([`settle_authority`]), hop-by-hop fields removed ([`strip_hop_by_hop`]), and every field an
//! app could take for our identity header removed ([`strip_identity_fields`]), so that what the
//! next hop reads is what this hop routed and authorized.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::Request;

use crate::error::Error;

/// The identity header set by the inbound sidecar, in Envoy's format.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Removes every field an app could read as our identity header: `x-forwarded-client-cert` in
/// any case (header names arrive lower-cased) and every spelling with `_` for `-`, which CGI,
/// WSGI, PHP and Rack all fold to the same `HTTP_X_FORWARDED_CLIENT_CERT`. Used on the request's
/// headers and on its trailers.
pub fn strip_identity_fields(fields: &mut HeaderMap) {
    // Cheap on the common path: one length check per name, no allocation.
    let is_identity = |n: &HeaderName| {
        let n = n.as_str().as_bytes();
        n.len() == XFCC.as_str().len()
            && n.iter()
                .zip(XFCC.as_str().as_bytes())
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    let forged: Vec<HeaderName> = fields.keys().filter(|n| is_identity(n)).cloned().collect();
    for name in forged {
        fields.remove(name);
    }
}

/// Whether a request asks for a protocol upgrade (WebSocket and friends, HTTP/1.1 only).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Hop-by-hop headers that are not named in `Connection` but must not be forwarded either.
const HOP_BY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Settles the one authority of a request (RFC 9112 §3.2, RFC 9113 §8.3.1): the target's own
/// authority when it has one (absolute form, or HTTP/2's `:authority`), else the single `Host`
/// header. Several `Host` headers, none on HTTP/1.1, or one that is not a plain `host[:port]`
/// (a path, userinfo, spaces) is a 400. The request leaves with exactly one `Host` header,
/// spelling the authority that was settled, so what the next hop reads as its Host is what this
/// hop routed and authorized.
pub fn settle_authority<B>(req: &mut Request<B>) -> Result<Authority, Error> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (host, more) = (hosts.next(), hosts.next().is_some());
    if more {
        return Err(Error::BadRequest("more than one Host header"));
    }
    let authority = match (req.uri().authority(), host) {
        (Some(target), _) => target.clone(),
        (None, Some(h)) => Authority::try_from(h.as_bytes())
            .map_err(|_| Error::BadRequest("invalid Host header"))?,
        (None, None) => return Err(Error::BadRequest("request has no Host header")),
    };
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(Error::BadRequest("invalid Host header"));
    }
    // The common case, one Host and an origin-form target, already says it: nothing to rewrite.
    if host.is_none_or(|h| h.as_bytes() != authority.as_str().as_bytes()) {
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Error::BadRequest("invalid Host header"))?;
        req.headers_mut().insert(header::HOST, value);
    }
    Ok(authority)
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1) before forwarding. `keep_upgrade` keeps
/// `Connection: upgrade` + `Upgrade` for an upgrade request; `te: trailers` always stays because
/// gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests carry none of these: one pass over the few names present is cheaper than
    // hashed lookups (four calls per request through a pair; 2.6 % of the inbound's CPU at 32
    // connections before this check).
    if !headers.keys().any(is_hop_by_hop_candidate) {
        return;
    }
    // The names to remove, found in one more pass over those present: many responses carry
    // `Connection: keep-alive`, and removing each fixed name by its hash (nine removals) cost
    // the inbound 1.3 k instructions per response (callgrind, 32 connections).
    let mut has_te = false;
    let doomed: Vec<HeaderName> = {
        let listed: Vec<&str> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        headers
            .keys()
            .filter(|name| {
                has_te |= *name == header::TE;
                let kept_upgrade = keep_upgrade && *name == header::UPGRADE;
                let by_connection = listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()));
                (by_connection && !kept_upgrade) || always_hop_by_hop(name, keep_upgrade)
            })
            .cloned()
            .collect()
    };
    for name in doomed {
        headers.remove(name);
    }
    if !has_te {
        return;
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether `name` is hop-by-hop whatever `Connection` lists: the fixed names, `Transfer-Encoding`,
/// and, unless an upgrade keeps them, `Connection` and `Upgrade`.
fn always_hop_by_hop(name: &HeaderName, keep_upgrade: bool) -> bool {
    HOP_BY_HOP.contains(name)
        || name == header::TRANSFER_ENCODING
        || (!keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE))
}

/// Whether `name` is one [`strip_hop_by_hop`] may remove or rewrite. Any header that
/// `Connection` lists is only removed when `Connection` is present, which this also catches.
fn is_hop_by_hop_candidate(name: &HeaderName) -> bool {
    name == header::TE || always_hop_by_hop(name, false)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn end_to_end_headers_pass_untouched() {
        let mut h = headers(&[
            ("host", "service-b"),
            ("authorization", "Bearer t"),
            ("x-request-id", "1"),
        ]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut h = headers(&[
            ("host", "service-b"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "s"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-authenticate", "Basic"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["host", "x-kept"]);
    }

    #[test]
    fn a_listed_header_goes_with_all_its_values_and_connection_may_list_te() {
        let mut h = headers(&[
            ("host", "a"),
            ("connection", "X-Twice"),
            ("connection", " te "),
            ("x-twice", "1"),
            ("x-twice", "2"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["host", "x-kept"]);
    }

    #[test]
    fn a_lone_hop_by_hop_header_is_removed_without_connection() {
        // No `Connection` header: the candidate check must still catch these.
        for name in [
            "proxy-authorization",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = headers(&[("host", "a"), (name, "v")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(names(&h), ["host"], "{name} was forwarded");
        }
    }

    #[test]
    fn te_trailers_stays_for_grpc_and_other_te_values_go() {
        let mut h = headers(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        let mut h = headers(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get(header::TE).is_none());
    }

    #[test]
    fn an_upgrade_keeps_connection_and_upgrade() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "upgrade"]);
    }

    fn settled(uri: &str, version: http::Version, hosts: &[&str]) -> Result<String, Error> {
        let mut b = Request::builder().uri(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        let mut req = b.body(()).unwrap();
        let a = settle_authority(&mut req)?;
        let host: Vec<_> = req.headers().get_all(header::HOST).iter().collect();
        assert_eq!(
            host,
            [a.as_str()],
            "exactly one Host, the settled authority"
        );
        Ok(a.to_string())
    }

    #[test]
    fn the_target_authority_beats_the_host_header_and_becomes_it() {
        use http::Version;
        let h11 = Version::HTTP_11;
        assert_eq!(settled("/x", h11, &["service-b"]).unwrap(), "service-b");
        assert_eq!(
            settled("/x", h11, &["service-b:8080"]).unwrap(),
            "service-b:8080"
        );
        assert_eq!(
            settled("http://service-b/x", h11, &["evil"]).unwrap(),
            "service-b"
        );
        // HTTP/2's :authority is the target's authority, and decides the same way.
        let h2 = Version::HTTP_2;
        assert_eq!(
            settled("http://service-b/x", h2, &["evil"]).unwrap(),
            "service-b"
        );
        assert_eq!(settled("http://service-b/x", h2, &[]).unwrap(), "service-b");
    }

    #[test]
    fn several_missing_or_malformed_hosts_are_refused() {
        use http::Version;
        let h11 = Version::HTTP_11;
        for hosts in [
            &["service-b", "evil"][..],
            &["service-b", "service-b"][..],
            &[][..],
            &["service-b/admin"][..],
            &["user@service-b"][..],
            &[""][..],
            &["a b"][..],
        ] {
            let err = settled("/x", h11, hosts).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{hosts:?}");
        }
        // Duplicates are refused even when the target names the authority.
        assert!(settled("http://service-b/x", h11, &["a", "b"]).is_err());
    }

    #[test]
    fn every_spelling_of_the_identity_header_is_removed() {
        let mut h = headers(&[
            ("x-forwarded-client-cert", "forged"),
            ("x_forwarded_client_cert", "forged"),
            ("x-forwarded_client-cert", "forged"),
            ("x-forwarded-client-certs", "kept"),
            ("x-forwarded-for", "kept"),
        ]);
        strip_identity_fields(&mut h);
        assert_eq!(names(&h), ["x-forwarded-client-certs", "x-forwarded-for"]);
    }
}

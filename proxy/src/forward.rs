//! What the inbound and outbound request paths share: serving one HTTP connection and then its
//! upgraded stream ([`serve_http`], [`Upgrade`]), the listener limits from our config, settling
//! a request's one authority ([`settle_authority`]), hop-by-hop and identity-header stripping,
//! and sending a request upstream under the request timeout ([`exchange`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tether_net::ListenerLimits;

use crate::config::Limits;
use crate::error::{Error, Hop, RespBody};

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
    // Most requests carry none of these: one pass over the few names present is cheaper than the
    // ten hashed removals below (four calls per request through a pair; 2.6 % of the inbound's
    // CPU at 32 connections before this check).
    if !headers.keys().any(is_hop_by_hop_candidate) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    // Static names: converting strings to header names on every request showed up in profiles.
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
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

/// Whether `name` is one [`strip_hop_by_hop`] may remove or rewrite. Any header that
/// `Connection` lists is only removed when `Connection` is present, which this also catches.
fn is_hop_by_hop_candidate(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || HOP_BY_HOP.contains(name)
}

/// The upgraded stream of one downstream connection (a WebSocket, any `101 Switching
/// Protocols`), attached by the request that upgraded it and run by the connection's own task
/// once its HTTP part has ended ([`Upgrade::run`]). So an upgraded stream stays what its
/// connection was: counted against the listener's connection limit and in
/// `tether_connections_open`, cut when the peer is revoked, and closed at the end of the drain,
/// until it really ends.
#[derive(Clone, Default)]
pub struct Upgrade(Arc<Mutex<Option<Bridge>>>);

/// Copies bytes both ways between the two upgraded halves until either side closes.
type Bridge = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Upgrade {
    /// Attaches the splice of `downstream` and `upstream`, which also ends when `until` does
    /// (the outbound's peer revoked). An HTTP/1.1 connection upgrades at most once.
    fn attach(
        &self,
        downstream: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        until: impl Future<Output = ()> + Send + 'static,
    ) {
        let bridge = async move {
            let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
                return tracing::debug!("upgrade did not complete on both sides");
            };
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut down, &mut up) => if let Err(e) = r {
                    tracing::debug!("upgraded connection ended: {e}");
                },
                _ = until => tracing::info!("closed upgraded connection: the peer was revoked"),
            }
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::pin(bridge));
    }

    /// Runs the attached upgraded stream, if any, until it ends; at once if there is none.
    pub async fn run(&self) {
        let bridge = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(bridge) = bridge {
            bridge.await;
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (with upgrades) on `io` under our limits, each request answered
/// by `handle`, until the connection ends or the drain `watcher` closes it; then runs the
/// connection's upgraded stream, if it upgraded. Both listeners' connections end here, so an
/// upgraded stream always stays inside its connection's task.
pub async fn serve_http<I, F, Fut>(
    limits: &Limits,
    io: I,
    watcher: tether_net::Watcher,
    upgrade: &Upgrade,
    handle: F,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let answer = handle(req);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let conn = server_builder(limits)
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("connection ended: {e}");
    }
    upgrade.run().await;
}

/// The HTTP/1.1 + HTTP/2 server builder with our limits applied.
fn server_builder(limits: &Limits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The limits every request-carrying listener runs under (`[limits]`).
pub fn listener_limits(limits: &Limits) -> ListenerLimits {
    ListenerLimits {
        max_connections: limits.max_connections,
        drain: limits.drain_timeout,
    }
}

/// Awaits an upstream's response head within `timeout`, then strips its hop-by-hop headers:
/// the one tail of every forwarding path. A failure or a timeout is `hop`'s.
pub async fn exchange<E: std::fmt::Display>(
    hop: Hop,
    timeout: Duration,
    send: impl Future<Output = Result<Response<Incoming>, E>>,
) -> Result<Response<RespBody>, Error> {
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(resp)) => Ok(finish(resp)),
        Ok(Err(e)) => Err(Error::failed(hop, e)),
        Err(_) => Err(Error::Timeout(hop)),
    }
}

/// An upstream response as it goes back downstream: its hop-by-hop headers stripped.
pub fn finish(mut resp: Response<Incoming>) -> Response<RespBody> {
    strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(Either::Left)
}

/// Like [`exchange`] for an upgrade request: the response keeps its `Connection`/`Upgrade`
/// headers, and on `101 Switching Protocols` the two upgraded streams are spliced together by
/// `upgrade`'s connection (ending early when `until` does).
pub async fn exchange_upgrade<E: std::fmt::Display>(
    hop: Hop,
    timeout: Duration,
    downstream: hyper::upgrade::OnUpgrade,
    upgrade: &Upgrade,
    until: impl Future<Output = ()> + Send + 'static,
    send: impl Future<Output = Result<Response<Incoming>, E>>,
) -> Result<Response<RespBody>, Error> {
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(mut resp)) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                upgrade.attach(downstream, upstream, until);
            }
            Ok(resp.map(Either::Left))
        }
        Ok(Err(e)) => Err(Error::failed(hop, e)),
        Err(_) => Err(Error::Timeout(hop)),
    }
}

#[cfg(test)]
mod tests {
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

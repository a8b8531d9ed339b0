//! Pieces shared by the inbound and outbound request paths: the HTTP server builder with our
//! limits, hop-by-hop header handling, upgrade (WebSocket) bridging, canned responses, and the
//! accept loop with connection limits and graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Limits;

/// Body of every response the sidecar returns: either streamed from upstream, or our own.
pub type RespBody = Either<Incoming, Full<Bytes>>;

/// The identity header set by the inbound sidecar, in Envoy's format.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A response with a short plain-text body.
pub fn reply(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A response whose body is built at run time (e.g. naming an unknown service).
pub fn reply_owned(status: StatusCode, body: String) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
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

/// Joins two upgraded halves and copies bytes both ways until either side closes.
pub fn bridge_upgrades(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
            return tracing::debug!("upgrade did not complete on both sides");
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!("upgraded connection ended: {e}");
        }
    });
}

/// The HTTP/1.1 + HTTP/2 server builder with our limits applied.
pub fn server_builder(limits: &Limits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
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

/// Accepts on `listener` until `shutdown` resolves, handing each connection (with a drain
/// watcher) to `serve`. At most `max_connections` run at once; extra connections are closed at
/// once rather than queued, so an overloaded sidecar sheds load instead of stalling everyone.
/// After shutdown, connections get `drain` to finish their in-flight requests.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
    serve: F,
) where
    F: Fn(TcpStream, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("connection limit ({max_connections}) reached; closing new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let fut = serve(tcp, graceful.watcher());
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout ({drain:?}) reached with requests still in flight");
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
}

//! What the inbound and outbound request paths share: serving one HTTP connection and then its
//! upgraded stream ([`serve_http`], [`Upgrade`]), the listener limits from our config, and
//! sending a request upstream under the request timeout ([`exchange`]).
//!
//! # Layout
//! - this file: serving a connection, upgrades, the listener limits, the upstream exchange.
//! - [`headers`]: a request's one authority, hop-by-hop and identity-header stripping.
//! - [`linger`]: closing a connection that hyper answered early, such as with a 431, so that a
//!   client still sending reads the answer rather than a reset.
//! - [`overflow`]: the readable refusal of a connection over the limit ([`refuse`]).

mod headers;
mod linger;
mod overflow;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tether_net::ListenerLimits;

use crate::config::Limits;
use crate::error::{Error, FromUpstream, Hop, RespBody};

pub use headers::{is_upgrade, settle_authority, strip_hop_by_hop, strip_identity_fields, XFCC};
pub use overflow::refuse;

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
/// by `handle`, until the connection ends or the drain `watcher` closes it; then lingers if the
/// client may still be sending ([`linger`]), or runs the connection's upgraded stream, if it
/// upgraded. Both listeners' connections end here, so an upgraded stream always stays inside
/// its connection's task.
pub async fn serve_http<I, F, Fut, B>(
    server: &HttpServer,
    io: I,
    watcher: tether_net::Watcher,
    upgrade: &Upgrade,
    handle: F,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = hyper::service::service_fn(move |req| {
        // Boxed once here: a request's future is kilobytes (hyper's client and server states),
        // and each layer that wraps it would copy it; with this and the boxing of the rare
        // connect and upgrade paths, `memmove` fell from 21 % to 6 % of the inbound's `perf`
        // samples at 32 connections.
        let answer = Box::pin(handle(req));
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let closing = linger::Closing::default();
    let conn = server
        .0
        .serve_connection_with_upgrades(TokioIo::new(closing.wrap(io)), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("connection ended: {e}");
    }
    closing.linger().await;
    upgrade.run().await;
}

/// The streams one HTTP/2 connection may have open at once (hyper's default, made explicit),
/// and how many it may reset before the server took them up. h2's own limit for the latter is
/// 20, its Rapid Reset guard; but an outbound sidecar's shared connection carries every client's
/// requests, and a burst of clients leaving resets that many streams in one write, which
/// tripped the guard and failed every other request on the connection. As many as may be open
/// still bounds a flood.
const MAX_CONCURRENT_STREAMS: u32 = 200;

/// The HTTP/1.1 + HTTP/2 server settings of one listener, with our limits applied: built once
/// when the listener starts, not per connection.
pub struct HttpServer(hyper_util::server::conn::auto::Builder<TokioExecutor>);

impl HttpServer {
    /// The server settings for `limits` (`[limits]`).
    pub fn new(limits: &Limits) -> Self {
        HttpServer(server_builder(limits))
    }
}

fn server_builder(limits: &Limits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_CONCURRENT_STREAMS as usize)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The limits every HTTP listener runs under (`[limits]`), with an overflow band
/// ([`overflow::band`]) whose connections are refused readably ([`refuse`]).
pub fn listener_limits(limits: &Limits) -> ListenerLimits {
    ListenerLimits {
        overflow: overflow::band(limits.max_connections),
        ..tcp_listener_limits(limits)
    }
}

/// The limits a TCP-mode listener runs under (`[limits]`): no overflow band, since there is no
/// request to answer; every connection past the limit is closed at once.
pub fn tcp_listener_limits(limits: &Limits) -> ListenerLimits {
    ListenerLimits {
        max_connections: limits.max_connections,
        overflow: 0,
        drain: limits.drain_timeout,
    }
}

/// Awaits an upstream's response head within `timeout`, then strips its hop-by-hop headers:
/// the one tail of every forwarding path. A failure or a timeout is `hop`'s.
///
/// Plain functions returning combinators, not `async fn`s: an `async fn` keeps its arguments
/// in its own state, so each layer copied the upstream's send future (kilobytes) once more;
/// as `async fn`s, these two cost the outbound 0.8 k instructions of `memcpy` per request at
/// 32 connections (callgrind).
pub fn exchange<B: FromUpstream, E: std::fmt::Display>(
    hop: Hop,
    timeout: Duration,
    send: impl Future<Output = Result<Response<B>, E>>,
) -> impl Future<Output = Result<Response<RespBody>, Error>> {
    within(hop, timeout, send).map(|r| r.map(finish))
}

/// The upstream's response head within `timeout`; a failure or a timeout is `hop`'s.
fn within<B, E: std::fmt::Display>(
    hop: Hop,
    timeout: Duration,
    send: impl Future<Output = Result<Response<B>, E>>,
) -> impl Future<Output = Result<Response<B>, Error>> {
    tokio::time::timeout(timeout, send).map(move |r| match r {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(Error::failed(hop, e)),
        Err(_) => Err(Error::Timeout(hop)),
    })
}

/// An upstream response as it goes back downstream: its hop-by-hop headers stripped.
pub fn finish<B: FromUpstream>(mut resp: Response<B>) -> Response<RespBody> {
    strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(B::into_resp_body)
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
    let mut resp = within(hop, timeout, send).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        upgrade.attach(downstream, upstream, until);
    }
    Ok(resp.map(Incoming::into_resp_body))
}

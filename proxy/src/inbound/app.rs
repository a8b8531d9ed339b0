//! The connections to the local app. While at most [`crate::pool::DEDICATED_UP_TO`] peer
//! connections are open, an HTTP/1.1 connection from a peer sidecar gets its own keep-alive
//! connection to the app, held between its requests ([`crate::pool::Held`]); beyond that, and
//! for requests that came over HTTP/2, requests share HTTP/1.1 app connections
//! ([`crate::pool::IdlePool`]). Requests that go to the app as h2c (gRPC, or
//! `app_protocol = "h2c"`) share a pooled HTTP/2 client. Upgrades get a connection of their
//! own; TCP mode splices bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::AppProtocol;
use crate::error::{grpc_content_type, Error, Hop, RespBody};
use crate::forward::{self, Upgrade};
use crate::metrics::AuthzLabel;
use crate::observe::Metered;
use crate::pool::{self, Conn};

use super::{request::authorize, AppConn, Inbound, Peer, PeerTls};

/// Forwards an authorized, rewritten request to the app over the connection it calls for.
pub(super) async fn forward(
    inbound: &Inbound,
    app_conn: &AppConn,
    mut req: Request<AppBody>,
) -> Result<Response<RespBody>, Error> {
    // gRPC only exists over HTTP/2, so it goes to the app as h2c whatever the setting's default.
    let is_grpc = grpc_content_type(req.headers()).is_some();
    let use_h2c = match inbound.app_protocol {
        AppProtocol::H2c => true,
        AppProtocol::Http1 => false,
        AppProtocol::Auto => is_grpc,
    };
    if use_h2c {
        return forward_h2c(inbound, req).await;
    }
    let hold = req.version() <= Version::HTTP_11 && app_conn.open.may_hold();
    *req.version_mut() = Version::HTTP_11;
    if !hold {
        // Many peer connections now, or a request that came over HTTP/2: share app connections.
        if let Some(held) = app_conn.held.take() {
            inbound.shared.give_back(held);
        }
    }
    forward_http1(inbound, app_conn, hold, req).await
}

/// Forwards a request as h2c on the pooled HTTP/2 client (absolute-form target, the app's
/// address as authority: the pool is keyed by it).
async fn forward_h2c(
    inbound: &Inbound,
    mut req: Request<AppBody>,
) -> Result<Response<RespBody>, Error> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(inbound.app_authority.clone());
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::BadRequest("bad request target"))?;
    *req.version_mut() = Version::HTTP_2;
    let timeout = inbound.limits.request_timeout;
    forward::exchange(Hop::App, timeout, inbound.h2c.request(req)).await
}

/// Forwards a request over HTTP/1.1: with `hold`, on the app connection this peer connection
/// holds (made on first use); else on a shared one, a ready one from the inbound's pool. Either
/// is replaced by a new one if the app closed it ([`pool::send`]), and kept again as soon as the
/// response head is here; the pool hands a shared one out again once the app has sent the
/// whole response. hyper-util's pooled client, used for the shared ones before, spawned a task
/// per request to wait for that and keyed its pool by URI: the shared path costs 15 % fewer
/// instructions per request at the inbound (callgrind, 32 connections over HTTP/2: 50.4 k
/// against 59.0 k).
async fn forward_http1(
    inbound: &Inbound,
    app_conn: &AppConn,
    hold: bool,
    req: Request<AppBody>,
) -> Result<Response<RespBody>, Error> {
    let kept = if hold {
        app_conn
            .held
            .take()
            .and_then(|mut c| c.is_ready_now().then_some(c))
    } else {
        inbound.shared.pop(|()| true)
    };
    // Boxed: a new connection's state would otherwise be part of (and copied with) every
    // request's future, though most requests reuse a kept one.
    let connect = || Box::pin(connect_app(inbound));
    let timeout = inbound.limits.request_timeout;
    let (resp, conn) = pool::send(Hop::App, kept, connect, req, timeout).await?;
    if hold {
        app_conn.held.put(conn);
    } else {
        inbound.shared.give_back(conn);
    }
    Ok(forward::finish(resp))
}

/// A new HTTP/1.1 connection to the app, its connection task spawned (able to carry an
/// upgrade, for [`forward_upgrade`]).
async fn connect_app(inbound: &Inbound) -> Result<Conn<(), AppBody>, Error> {
    let app = inbound.app;
    let tcp = TcpStream::connect(app)
        .await
        .map_err(|e| Error::failed(Hop::App, format_args!("app {app} unreachable: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Error::failed(Hop::App, format_args!("app {app} handshake failed: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("app connection ended: {e}");
        }
    });
    Ok(Conn { sender, tag: () })
}

/// Forwards an upgrade request to the app on a connection of its own and, on 101, attaches the
/// splice of the two upgraded streams to the peer's connection (`upgrade`).
pub(super) async fn forward_upgrade(
    inbound: &Inbound,
    upgrade: &Upgrade,
    mut req: Request<AppBody>,
) -> Result<Response<RespBody>, Error> {
    let downstream = hyper::upgrade::on(&mut req);
    let mut conn = connect_app(inbound).await?;
    let timeout = inbound.limits.request_timeout;
    // The connection's own revocation watch covers the stream (it runs on the connection).
    let until = std::future::pending();
    let send = conn.sender.send_request(req);
    forward::exchange_upgrade(Hop::App, timeout, downstream, upgrade, until, send).await
}

/// TCP mode: the policy decides on the caller's identity alone, then bytes flow both ways
/// until either side closes.
pub(super) async fn carry_tcp(inbound: &Inbound, peer: &Peer, mut tls: PeerTls) {
    let policy = inbound.policy.current();
    let decision = policy.decide(&peer.cert.id, None, None, time::OffsetDateTime::now_utc());
    if authorize(inbound, &policy, decision, peer, (&"tcp", "-")) == AuthzLabel::Deny {
        return;
    }
    let Ok(mut app) = TcpStream::connect(inbound.app).await else {
        return tracing::warn!("inbound TCP: app {} unreachable", inbound.app);
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut app).await;
}

/// A peer's request body on its way to the app: the same bytes, with any trailer an app could
/// read as our identity header removed (chunked HTTP/1.1 and HTTP/2 both carry trailers, and
/// frameworks merge trailers into the request's fields).
pub(super) struct AppBody(Metered<Incoming>);

impl AppBody {
    /// Wraps the (metered) body of an authorized request.
    pub(super) fn new(body: Metered<Incoming>) -> Self {
        AppBody(body)
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.0).poll_frame(cx));
        Poll::Ready(frame.map(|f| {
            f.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    forward::strip_identity_fields(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(data) => data,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

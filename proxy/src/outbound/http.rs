//! Forwarding one HTTP request from the app to a peer sidecar: on the app connection's own
//! HTTP/1.1 connection ([`forward_h1`]), on the shared HTTP/2 connection ([`forward_h2`]), or,
//! for an upgrade, on a dedicated HTTP/1.1 connection whose upgraded stream is spliced to the
//! app's ([`forward_upgrade`]).

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::error::{Error, Hop, RespBody};
use crate::forward::{self, Upgrade};
use crate::identity::{Alpn, Credentials};
use crate::outbound::affinity::Affinity;
use crate::outbound::connect::peer_serial;
use crate::outbound::peer_h2;
use crate::outbound::route::Route;
use crate::outbound::{Outbound, PeerBody};
use crate::pool;

/// The response to a request forwarded to a peer, and the peer address that answered it.
type Answered = Result<(Response<RespBody>, SocketAddr), Error>;

/// Forwards an HTTP/1.x request on the peer connection this app connection holds, or on one
/// from the idle pool, or on a new one ([`pool::send`]).
pub(super) async fn forward_h1(
    outbound: &Outbound,
    route: &Arc<Route>,
    affinity: &Affinity,
    creds: &Arc<Credentials>,
    mut req: Request<PeerBody>,
) -> Answered {
    // HTTP/1.1 to the peer: origin-form target; `Host` (set by the caller) names the service.
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;

    // Balanced per request, as over HTTP/2: the next healthy address in turn.
    let pick = route.pick();
    let kept = Outbound::checkout_h1(route, affinity, creds, pick);
    // Boxed: a new connection's handshakes are kilobytes of state that every request's future
    // would otherwise carry (and copy), though most requests reuse a connection.
    let open = || Box::pin(outbound.open_h1(route, creds, pick));
    let timeout = outbound.limits.request_timeout;
    let (resp, conn) = pool::send(Hop::Peer, kept, open, req, timeout).await?;
    let peer = conn.tag.peer;
    affinity.keep(conn);
    Ok((forward::finish(resp), peer))
}

/// Forwards a request on the shared HTTP/2 connection to one of `route`'s addresses.
pub(super) async fn forward_h2(
    outbound: &Outbound,
    route: &Route,
    creds: &Arc<Credentials>,
    mut req: Request<PeerBody>,
) -> Answered {
    let (session, addr) = outbound.h2_session(route, creds).await?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(route.authority.clone());
    parts.path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .or_else(|| Some(PathAndQuery::from_static("/")));
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::BadRequest("bad request target"))?;
    // HTTP/2 carries the authority in `:authority` alone (RFC 9113 §8.3.1).
    req.headers_mut().remove(http::header::HOST);
    *req.version_mut() = Version::HTTP_2;
    let timeout = outbound.limits.request_timeout;
    let resp = forward::exchange(Hop::Peer, timeout, peer_h2::send(session, req)).await?;
    Ok((resp, addr))
}

/// Upgrade requests ride a dedicated HTTP/1.1 mTLS connection (HTTP/2 cannot carry them here).
/// The upgraded stream runs on the app's connection (`upgrade`) and is cut the moment a CRL
/// revokes the peer.
pub(super) async fn forward_upgrade(
    outbound: &Outbound,
    route: &Route,
    creds: &Credentials,
    upgrade: &Upgrade,
    mut req: Request<PeerBody>,
) -> Answered {
    let downstream = hyper::upgrade::on(&mut req);
    let (tls, _, peer) = outbound
        .connect_route(route, creds, Alpn::Http1, route.turn())
        .await?;
    let live = outbound.revocation.watch(&peer_serial(&tls));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| Error::PeerRefused(format!("{}: {e}", route.name)))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    if let Some(pq) = req.uri().path_and_query().cloned() {
        if let Ok(uri) = Uri::try_from(pq.as_str()) {
            *req.uri_mut() = uri;
        }
    }
    let timeout = outbound.limits.request_timeout;
    let until = async move { live.revoked().await };
    let send = sender.send_request(req);
    let resp = forward::exchange_upgrade(Hop::Peer, timeout, downstream, upgrade, until, send);
    Ok((resp.await?, peer))
}

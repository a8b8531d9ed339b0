//! Connections to peer sidecars, and the one get/release choke point for the connections
//! requests travel on.
//!
//! [`Outbound::connect_route`] makes an mTLS connection to a service, trying its addresses in
//! the route's order and marking failed ones down; every handshake is counted. Requests get
//! their connection from [`Outbound::checkout_h1`] (the app connection's held one, else a ready
//! one from the address's idle pool, else a new one from [`Outbound::open_h1`]) and give it
//! back with [`Affinity::keep`]; HTTP/2 requests share [`Outbound::h2_session`]. Every peer
//! connection task ends the moment a CRL revokes the peer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::PeerAddr;
use crate::error::{ConnectError, ConnectFailure, Error};
use crate::identity::{Alpn, Credentials};
use crate::metrics::Direction;
use crate::outbound::affinity::{give_back, Affinity, H1Tag, PeerConn};
use crate::outbound::peer_h2::{self, Session};
use crate::outbound::route::Route;
use crate::outbound::Outbound;
use crate::pool::Conn;
use crate::tls::{self, HandshakeResult, PeerCert, Refusal};

/// An mTLS connection to a peer sidecar.
pub type PeerTls = TlsStream<TcpStream>;

impl Outbound {
    /// TCP + mTLS to `addr` (a name: the first of its looked-up addresses that accepts),
    /// requiring `route`'s identity; counts the handshake result. Returns the connection and the
    /// socket address it reached.
    async fn connect_addr(
        &self,
        route: &Route,
        addr: &PeerAddr,
        creds: &Credentials,
        alpn: Alpn,
    ) -> Result<(PeerTls, SocketAddr), ConnectFailure> {
        let config = creds.client_for(&route.identity, alpn).map_err(|e| {
            ConnectFailure::Handshake(Refusal {
                result: HandshakeResult::Protocol,
                detail: e.to_string(),
            })
        })?;
        let timeout = self.limits.handshake_timeout;
        let (tcp, peer) = match tokio::time::timeout(timeout, tcp_connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(ConnectFailure::Unreachable(format!("{addr}: {e}"))),
            Err(_) => {
                return Err(ConnectFailure::Unreachable(format!(
                    "{addr}: connect timed out"
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        match tls::connect(config, &route.name, tcp, timeout).await {
            Ok(tls) => {
                self.metrics
                    .count_handshake(Direction::Outbound, HandshakeResult::Ok);
                Ok((tls, peer))
            }
            Err(mut refusal) => {
                self.metrics
                    .count_handshake(Direction::Outbound, refusal.result);
                refusal.detail = format!("{addr}: {}", refusal.detail);
                Err(ConnectFailure::Handshake(refusal))
            }
        }
    }

    /// An mTLS connection to `route`, trying its addresses in order from `start`; returns the
    /// connection, the index of the address used and the socket address it reached. Each
    /// address that fails is marked down.
    pub(super) async fn connect_route(
        &self,
        route: &Route,
        creds: &Credentials,
        alpn: Alpn,
        start: usize,
    ) -> Result<(PeerTls, usize, SocketAddr), Error> {
        let mut last = None;
        for i in route.order(start) {
            let up = &route.upstreams[i];
            match self.connect_addr(route, &up.addr, creds, alpn).await {
                Ok((tls, peer)) => return Ok((tls, i, peer)),
                Err(e) => {
                    up.mark_down();
                    last = Some(e);
                }
            }
        }
        Err(connect_error(route, last))
    }

    /// The connection this app connection holds to address `upstream` of `route` if it was made
    /// with the current credentials and is ready; else a ready one from that address's idle
    /// pool; else `None` (the caller opens one with [`Outbound::open_h1`]).
    pub(super) fn checkout_h1(
        route: &Arc<Route>,
        affinity: &Affinity,
        creds: &Arc<Credentials>,
        upstream: usize,
    ) -> Option<PeerConn> {
        if let Some(mut held) = affinity.take(route, upstream) {
            if Arc::ptr_eq(&held.tag.creds, creds) && held.is_ready_now() {
                return Some(held);
            }
            // A rotated certificate, or closed by the peer.
            give_back(held);
        }
        route.upstreams[upstream]
            .idle
            .pop(|(c, _)| Arc::ptr_eq(c, creds))
            .map(|c| Conn {
                sender: c.sender,
                tag: H1Tag {
                    route: route.clone(),
                    upstream,
                    creds: creds.clone(),
                    peer: c.tag.1,
                },
            })
    }

    /// A new HTTP/1.1 mTLS connection to address `first` of `route`, or to the next healthy one
    /// if that fails.
    pub(super) async fn open_h1(
        &self,
        route: &Arc<Route>,
        creds: &Arc<Credentials>,
        first: usize,
    ) -> Result<PeerConn, Error> {
        let (tls, upstream, peer) = self.connect_route(route, creds, Alpn::Http1, first).await?;
        let serial = peer_serial(&tls);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Error::PeerRefused(format!("{}: {e}", route.name)))?;
        self.spawn_peer_connection(route, &serial, conn);
        Ok(Conn {
            sender,
            tag: H1Tag {
                route: route.clone(),
                upstream,
                creds: creds.clone(),
                peer,
            },
        })
    }

    /// The shared HTTP/2 connection to one healthy address of `route`, made if needed.
    pub(super) async fn h2_session(
        &self,
        route: &Route,
        creds: &Arc<Credentials>,
    ) -> Result<(Session, SocketAddr), Error> {
        let mut last = None;
        for i in route.order(route.turn()) {
            let up = &route.upstreams[i];
            let mut slot = up.h2.lock().await;
            if let Some((c, s, peer)) = slot.as_mut() {
                if Arc::ptr_eq(c, creds) && !s.is_closed() {
                    return Ok((s.clone(), *peer));
                }
            }
            // Boxed: the handshakes' state is kilobytes, and inline it would be copied with
            // every request's future, though almost every request finds the session open.
            match Box::pin(self.open_h2(route, &up.addr, creds)).await {
                Ok((sender, peer)) => {
                    *slot = Some((creds.clone(), sender.clone(), peer));
                    return Ok((sender, peer));
                }
                Err(e) => last = Some(e),
            }
            up.mark_down();
        }
        Err(connect_error(route, last))
    }

    /// A new HTTP/2 mTLS connection to `addr` of `route`, its connection task spawned; with
    /// the socket address it reached.
    async fn open_h2(
        &self,
        route: &Route,
        addr: &PeerAddr,
        creds: &Credentials,
    ) -> Result<(Session, SocketAddr), ConnectFailure> {
        let (tls, peer) = self.connect_addr(route, addr, creds, Alpn::H2).await?;
        let serial = peer_serial(&tls);
        let ping_every = self.limits.idle_timeout / 2;
        let (session, conn) = peer_h2::handshake(tls, ping_every).await.map_err(|e| {
            ConnectFailure::Handshake(Refusal {
                result: HandshakeResult::Protocol,
                detail: e.to_string(),
            })
        })?;
        self.spawn_peer_connection(route, &serial, conn);
        Ok((session, peer))
    }

    /// Runs a client connection to a peer until it ends, or until a CRL revokes the peer's
    /// certificate (`serial`): then it is closed at once, with whatever it carries.
    fn spawn_peer_connection<E: std::fmt::Display>(
        &self,
        route: &Route,
        serial: &[u8],
        conn: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let live = self.revocation.watch(serial);
        let name = route.name.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("connection to peer of {name} ended: {e}");
                },
                _ = live.revoked() => tracing::info!("closed connection to revoked peer of {name}"),
            }
        });
    }
}

/// The serial of the peer's leaf on an established connection (empty if none, which the
/// verifier makes impossible).
pub fn peer_serial(tls: &PeerTls) -> Vec<u8> {
    PeerCert::of(tls.get_ref().1.peer_certificates())
        .map(|p| p.serial.as_bytes().to_vec())
        .unwrap_or_default()
}

fn connect_error(route: &Route, last: Option<ConnectFailure>) -> Error {
    Error::Connect(ConnectError {
        service: route.name.to_string(),
        identity: route.identity.to_string(),
        // The route has at least one address (checked when it was resolved), so an attempt was
        // made; the fallback only keeps this total.
        failure: last.unwrap_or_else(|| ConnectFailure::Unreachable("no address tried".into())),
    })
}

/// A TCP connection to `addr`: an IP address directly; a name through the system resolver
/// (looked up now, so a changed record is followed at the next connection; tokio tries each of
/// its addresses in turn). Returns the socket address that accepted.
async fn tcp_connect(addr: &PeerAddr) -> std::io::Result<(TcpStream, SocketAddr)> {
    let tcp = match addr {
        PeerAddr::Ip(a) => TcpStream::connect(a).await?,
        PeerAddr::Name { host, port } => TcpStream::connect((host.as_str(), *port)).await?,
    };
    let peer = tcp.peer_addr()?;
    Ok((tcp, peer))
}

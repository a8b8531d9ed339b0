//! Affinity: the peer connections one HTTP/1.x app connection holds, one per peer address it has
//! used, so its requests skip the pool and are still balanced over a service's addresses one by
//! one. When the app connection closes they go to their addresses' idle pools.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::PeerProtocol;
use crate::identity::Credentials;
use crate::outbound::route::Route;
use crate::pool::{Conn, OpenGuard};

/// Peer connections one app connection keeps at most (it may call several services, each with
/// several addresses); the oldest goes to the idle pool to make room.
const HELD_PER_APP_CONNECTION: usize = 8;

/// What an HTTP/1.1 connection to a peer was made for.
pub struct H1Tag {
    /// The service.
    pub route: Arc<Route>,
    /// The index of the address in `route.upstreams`.
    pub upstream: usize,
    /// The credentials the connection was made with (a rotation retires it).
    pub creds: Arc<Credentials>,
    /// The socket address it reached (what the access log names as the upstream).
    pub peer: SocketAddr,
}

/// A peer connection with what it was made for.
pub type PeerConn = Conn<H1Tag, super::PeerBody>;

/// The peer connections of one app connection.
pub struct Affinity {
    held: Mutex<Vec<PeerConn>>,
    /// Counts this app connection among the outbound's open ones.
    open: OpenGuard,
}

impl Affinity {
    /// The affinity of a new app connection, counted in `open`.
    pub fn new(open: &Arc<AtomicUsize>) -> Self {
        Affinity {
            held: Mutex::default(),
            open: OpenGuard::new(open),
        }
    }

    fn held(&self) -> MutexGuard<'_, Vec<PeerConn>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes out the connection held to address `upstream` of `route`, if any.
    pub fn take(&self, route: &Arc<Route>, upstream: usize) -> Option<PeerConn> {
        let mut held = self.held();
        let i = held
            .iter()
            .position(|c| Arc::ptr_eq(&c.tag.route, route) && c.tag.upstream == upstream)?;
        Some(held.swap_remove(i))
    }

    /// Keeps `conn` for this app connection's next request to the same address.
    pub fn keep(&self, conn: PeerConn) {
        let mut held = self.held();
        if held.len() >= HELD_PER_APP_CONNECTION {
            give_back(held.remove(0));
        }
        held.push(conn);
    }

    /// Whether this app connection's HTTP/1.x requests to `route` get a dedicated connection.
    pub fn dedicated(&self, route: &Route) -> bool {
        match route.peer_protocol {
            PeerProtocol::Http1 => true,
            PeerProtocol::H2 => false,
            PeerProtocol::Auto => self.open.may_hold(),
        }
    }

    /// Gives every held connection back to its address's idle pool.
    pub fn release(&self) {
        let held = std::mem::take(&mut *self.held());
        for conn in held {
            give_back(conn);
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        self.release();
    }
}

/// Gives a peer connection to its address's idle pool (which drops it unless it is ready).
pub fn give_back(conn: PeerConn) {
    let H1Tag {
        route,
        upstream,
        creds,
        peer,
    } = conn.tag;
    route.upstreams[upstream].idle.give_back(Conn {
        sender: conn.sender,
        tag: (creds, peer),
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::outbound::route::tests::{route_with, test_credentials};

    /// A real, ready HTTP/1.1 client connection over an in-memory pipe (the server half is
    /// kept open by the returned task).
    async fn conn(route: &Arc<Route>, upstream: usize, creds: &Arc<Credentials>) -> PeerConn {
        let (client, server) = tokio::io::duplex(1024);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _server = server;
            let _ = connection.await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        Conn {
            sender,
            tag: H1Tag {
                route: route.clone(),
                upstream,
                creds: creds.clone(),
                peer: SocketAddr::from(([127, 0, 0, 1], 1000 + upstream as u16)),
            },
        }
    }

    fn idle_count(route: &Route, upstream: usize) -> usize {
        let mut n = 0;
        while route.upstreams[upstream].idle.pop(|_| true).is_some() {
            n += 1;
        }
        n
    }

    #[tokio::test]
    async fn a_kept_connection_comes_back_for_its_own_address_only() {
        let route = route_with(2, PeerProtocol::Http1);
        let creds = test_credentials();
        let affinity = Affinity::new(&Arc::default());
        affinity.keep(conn(&route, 1, &creds).await);
        assert!(affinity.take(&route, 0).is_none());
        let other = route_with(2, PeerProtocol::Http1);
        assert!(
            affinity.take(&other, 1).is_none(),
            "another route's connection"
        );
        let back = affinity.take(&route, 1).expect("held for address 1");
        assert_eq!(back.tag.upstream, 1);
        assert!(affinity.take(&route, 1).is_none(), "taken out, not copied");
    }

    #[tokio::test]
    async fn beyond_the_limit_the_oldest_goes_to_the_idle_pool() {
        let route = route_with(HELD_PER_APP_CONNECTION + 1, PeerProtocol::Http1);
        let creds = test_credentials();
        let affinity = Affinity::new(&Arc::default());
        for i in 0..=HELD_PER_APP_CONNECTION {
            affinity.keep(conn(&route, i, &creds).await);
        }
        assert_eq!(idle_count(&route, 0), 1, "the oldest was given back");
        assert!(affinity.take(&route, 0).is_none());
        assert!(affinity.take(&route, HELD_PER_APP_CONNECTION).is_some());
    }

    #[tokio::test]
    async fn closing_the_app_connection_gives_every_held_one_back() {
        let route = route_with(2, PeerProtocol::Http1);
        let creds = test_credentials();
        let affinity = Affinity::new(&Arc::default());
        affinity.keep(conn(&route, 0, &creds).await);
        affinity.keep(conn(&route, 1, &creds).await);
        drop(affinity);
        assert_eq!(idle_count(&route, 0), 1);
        assert_eq!(idle_count(&route, 1), 1);
    }

    #[test]
    fn dedicated_follows_peer_protocol_and_the_open_count_under_auto() {
        let open = Arc::new(AtomicUsize::new(0));
        let affinity = Affinity::new(&open);
        assert!(affinity.dedicated(&route_with(1, PeerProtocol::Http1)));
        assert!(!affinity.dedicated(&route_with(1, PeerProtocol::H2)));
        let auto = route_with(1, PeerProtocol::Auto);
        assert!(affinity.dedicated(&auto));
        let crowd: Vec<OpenGuard> = (0..crate::pool::DEDICATED_UP_TO)
            .map(|_| OpenGuard::new(&open))
            .collect();
        assert!(!affinity.dedicated(&auto), "more than DEDICATED_UP_TO open");
        drop(crowd);
        assert!(affinity.dedicated(&auto));
    }
}

//! The route table: which peer service a request is for, the identity its sidecar must present,
//! and which of its addresses to try, in turn, skipping those that failed recently.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::HeaderValue;
use http::Request;
use hyper::body::Incoming;

use super::peer_h2::Session;
use super::PeerBody;

use crate::config::{Limits, PeerAddr, PeerProtocol, Service};
use crate::error::Error;
use crate::forward;
use crate::identity::Credentials;
use crate::metrics::{Direction, Metrics, Series};
use crate::pool::IdlePool;

/// How long an address that failed to connect is skipped, so one dead replica does not add a
/// connect timeout to every request while the others are healthy.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// Idle HTTP/1.1 connections kept per peer address: enough for a busy app's connection churn,
/// few enough that an idle sidecar holds little.
const IDLE_PER_ADDRESS: usize = 64;

/// Every peer service, by lower-case name.
pub struct Routes(HashMap<String, Arc<Route>>);

/// One peer service.
pub struct Route {
    /// The service name, as the app writes it in `Host`.
    pub name: Arc<str>,
    /// `name` as the :authority of requests to the peer, parsed once.
    pub authority: Authority,
    /// `name` as the Host header of requests to the peer, built once (cloning shares it).
    pub host: HeaderValue,
    /// Its metric handles, resolved at its first request (a service never called adds no
    /// series).
    series: OnceLock<Series>,
    /// The exact SPIFFE ID the peer must present.
    pub identity: tether_certs::SpiffeId,
    /// `identity` as text, shared by every access-log entry of the route.
    pub identity_text: Arc<str>,
    /// The service's addresses.
    pub upstreams: Vec<Upstream>,
    /// Round-robin position.
    next: AtomicUsize,
    /// How HTTP/1.x requests travel to the peer.
    pub peer_protocol: PeerProtocol,
}

/// A shared HTTP/2 connection: the credentials it was made with, its sender and the socket
/// address it reached.
pub type H2Session = (Arc<Credentials>, Session, SocketAddr);

/// One address of a peer service, with its connections and health.
pub struct Upstream {
    /// Where the peer sidecar listens, as configured (a name is looked up at each connect).
    pub addr: PeerAddr,
    /// The shared HTTP/2 connection, tagged with the credentials it was made with (after a
    /// rotation the next request opens a new connection, and the old one finishes what it has)
    /// and the socket address it reached.
    pub h2: tokio::sync::Mutex<Option<H2Session>>,
    /// HTTP/1.1 connections given back by app connections that closed, tagged with the
    /// credentials they were made with and the socket address they reached.
    pub idle: IdlePool<(Arc<Credentials>, SocketAddr), PeerBody>,
    down_until: Mutex<Option<Instant>>,
}

impl Routes {
    /// The routes for `services`.
    pub fn new(services: &[Service], limits: &Limits) -> Self {
        let routes = services
            .iter()
            .map(|s| (s.name.clone(), Arc::new(Route::new(s, limits))))
            .collect();
        Routes(routes)
    }

    /// The route of service `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.0.get(name)
    }

    /// The route `req` is for, by its one authority ([`forward::settle_authority`]: the
    /// absolute-form target's, else the single Host header), which `req` keeps as its Host.
    pub fn resolve(&self, req: &mut Request<Incoming>) -> Result<&Arc<Route>, Error> {
        let name = service_name(&forward::settle_authority(req)?);
        self.get(&name).ok_or(Error::UnknownService(name))
    }
}

impl Route {
    fn new(s: &Service, limits: &Limits) -> Self {
        Route {
            name: Arc::from(s.name.as_str()),
            // Config validation allows only host-name characters, so this parses.
            authority: Authority::try_from(s.name.as_str())
                .unwrap_or_else(|_| Authority::from_static("invalid.service")),
            host: HeaderValue::from_str(&s.name)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid.service")),
            series: OnceLock::new(),
            identity: s.identity.clone(),
            identity_text: Arc::from(s.identity.as_str()),
            upstreams: s
                .addresses
                .iter()
                .map(|a| Upstream::new(a.clone(), limits))
                .collect(),
            next: AtomicUsize::new(0),
            peer_protocol: s.peer_protocol,
        }
    }

    /// The service's metric handles, under its identity.
    pub fn series(&self, metrics: &Metrics) -> &Series {
        self.series
            .get_or_init(|| metrics.series(Direction::Outbound, self.identity.as_str()))
    }

    /// Takes the next turn of the round robin: where this request's search for an address
    /// starts, so requests spread over the addresses one by one.
    pub fn turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The addresses to try, by index, starting at `start`: every address in turn, skipping
    /// those marked down, except that the last is always tried, so a service whose addresses
    /// are all marked down still gets one attempt rather than none.
    pub fn order(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.upstreams.len();
        (0..n)
            .map(move |k| ((start + k) % n, k + 1 == n))
            .filter(|&(i, last)| last || !self.upstreams[i].is_down())
            .map(|(i, _)| i)
    }

    /// The address for this request: the next healthy one in turn, or the turn's own address
    /// if none is healthy.
    pub fn pick(&self) -> usize {
        let start = self.turn();
        let n = self.upstreams.len();
        self.order(start)
            .find(|&i| !self.upstreams[i].is_down())
            .unwrap_or(start % n.max(1))
    }
}

impl Upstream {
    fn new(addr: PeerAddr, limits: &Limits) -> Self {
        Upstream {
            addr,
            h2: Default::default(),
            // The peer closes idle connections after its header-read timeout; a connection idle
            // for half of that is still likely open.
            idle: IdlePool::new(IDLE_PER_ADDRESS, limits.header_read_timeout / 2),
            down_until: Mutex::new(None),
        }
    }

    /// Whether this address failed within the last [`DOWN_FOR`].
    pub fn is_down(&self) -> bool {
        let guard = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        guard.is_some_and(|t| Instant::now() < t)
    }

    /// Skips this address for [`DOWN_FOR`].
    pub fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
    }
}

/// The service an authority names: its host, port dropped, lower-cased (an IPv6 literal keeps
/// its brackets and names no service).
fn service_name(authority: &Authority) -> String {
    authority.host().to_ascii_lowercase()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A route to a service with `addresses` loopback addresses (nothing listens there).
    pub(crate) fn route_with(addresses: usize, peer_protocol: PeerProtocol) -> Arc<Route> {
        let service = Service {
            name: "svc".into(),
            addresses: (0..addresses)
                .map(|i| PeerAddr::Ip(SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16))))
                .collect(),
            identity: tether_certs::SpiffeId::parse("spiffe://td/svc").unwrap(),
            mode: crate::config::Mode::Http,
            listen: None,
            peer_protocol,
        };
        Arc::new(Route::new(&service, &Limits::default()))
    }

    fn route(addresses: usize) -> Arc<Route> {
        route_with(addresses, PeerProtocol::Auto)
    }

    /// Real credentials for `spiffe://td/svc`: a fresh root signs the leaf directly.
    pub(crate) fn test_credentials() -> Arc<Credentials> {
        let td = tether_certs::TrustDomain::new("td").unwrap();
        let now = time::OffsetDateTime::now_utc();
        let day = Duration::from_secs(86_400);
        let (root, _) = tether_certs::issue::new_root(&td, day, now).unwrap();
        let key = tether_certs::keys::generate_key().unwrap();
        let id = tether_certs::SpiffeId::parse("spiffe://td/svc").unwrap();
        let leaf = root.issue_leaf(&id, &key, day, day, now).unwrap();
        let mut bundle = tether_certs::TrustBundle::default();
        bundle.push(root.cert().clone()).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let creds = Credentials::build(
            vec![leaf.der],
            key,
            bundle,
            tether_certs::verify::Revocation::new(Default::default()),
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        Arc::new(creds)
    }

    #[test]
    fn picks_take_the_addresses_in_turn() {
        let r = route(3);
        let picks: Vec<usize> = (0..6).map(|_| r.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_down_address_is_skipped_until_it_recovers() {
        let r = route(3);
        r.upstreams[1].mark_down();
        let picks: Vec<usize> = (0..6).map(|_| r.pick()).collect();
        assert_eq!(picks, [0, 2, 2, 0, 2, 2]);
        *r.upstreams[1].down_until.lock().unwrap() = Some(Instant::now());
        assert!(!r.upstreams[1].is_down());
    }

    #[test]
    fn with_every_address_down_the_turn_still_gets_one() {
        let r = route(2);
        r.upstreams[0].mark_down();
        r.upstreams[1].mark_down();
        assert_eq!(r.pick(), 0);
        assert_eq!(r.pick(), 1);
        // The try order keeps its last candidate even when it is down.
        assert_eq!(r.order(0).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn the_try_order_starts_at_the_turn_and_skips_down_ones() {
        let r = route(4);
        assert_eq!(r.order(2).collect::<Vec<_>>(), [2, 3, 0, 1]);
        r.upstreams[3].mark_down();
        assert_eq!(r.order(2).collect::<Vec<_>>(), [2, 0, 1]);
        // Down but last in this order: still tried.
        assert_eq!(r.order(0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(r.order(3).collect::<Vec<_>>(), [0, 1, 2]);
    }

    fn named(authority: &str) -> String {
        service_name(&Authority::try_from(authority).unwrap())
    }

    #[test]
    fn the_service_is_named_by_the_authority_host() {
        assert_eq!(named("Service-B"), "service-b");
        assert_eq!(named("service-b:8080"), "service-b");
        assert_eq!(named("[::1]"), "[::1]");
        assert_eq!(named("[::1]:80"), "[::1]");
    }
}

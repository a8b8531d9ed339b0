//! Outbound: the local app → plain HTTP (or h2c) → mTLS → the peer's sidecar.
//!
//! The app names the service in `Host` (or in an absolute-form URI, so `http_proxy` works). The
//! sidecar connects to one of the service's addresses with our certificate and requires the peer
//! to present exactly the configured SPIFFE ID. With `peer_protocol = "http1"` each HTTP/1.x
//! connection from the app keeps its own keep-alive HTTP/1.1 mTLS connection to each peer
//! address it uses, pooled when the app closes it ([`crate::pool`]); HTTP/2 requests from the
//! app, and every request under `peer_protocol = "h2"`, share one HTTP/2 connection per
//! address. `"auto"` (the default) is `http1` while at most [`pool::DEDICATED_UP_TO`] app
//! connections are open and `h2` beyond. Either way requests take the service's addresses in
//! turn. An address that fails to connect is skipped for [`DOWN_FOR`]; an identity mismatch is a
//! 502 and a metric, never a fallback to another identity.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Limits, Mode, PeerProtocol, Service};
use crate::forward::{self, reply, reply_owned, RespBody};
use crate::identity::{Alpn, Credentials, IdentityStore};
use crate::metrics::{Metrics, OpenConnection};
use crate::pool::{self, Conn, IdlePool, OpenGuard, SendError};
use crate::revocation::RevocationCache;

/// How long an address that failed to connect is skipped, so one dead replica does not add a
/// connect timeout to every request while the others are healthy.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// The outbound side, shared by all its connections.
pub struct Outbound {
    identity: IdentityStore,
    routes: HashMap<String, Arc<Route>>,
    metrics: Metrics,
    limits: Limits,
    revocation: Arc<RevocationCache>,
    /// `tether_request_duration_seconds{direction="outbound"}`, resolved once.
    seconds: prometheus::Histogram,
    /// HTTP app connections open on the outbound listener (for `peer_protocol = "auto"`).
    open_app_connections: Arc<AtomicUsize>,
}

/// One peer service.
pub struct Route {
    name: String,
    /// `name` as the :authority of requests to the peer, parsed once.
    authority: Authority,
    /// `tether_requests_total{direction="outbound",peer=<identity>,code="200"}`, resolved once.
    ok: prometheus::IntCounter,
    identity: tether_certs::SpiffeId,
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    peer_protocol: PeerProtocol,
}

struct Upstream {
    addr: SocketAddr,
    /// The shared HTTP/2 connection, tagged with the credentials it was made with: after a
    /// rotation the next request opens a new connection, and the old one finishes what it has.
    h2: tokio::sync::Mutex<Option<(Arc<Credentials>, SendRequest<Incoming>)>>,
    /// HTTP/1.1 connections given back by app connections that closed, tagged with the
    /// credentials they were made with.
    idle: IdlePool<Arc<Credentials>>,
    down_until: Mutex<Option<Instant>>,
}

/// Idle HTTP/1.1 connections kept per peer address: enough for a busy app's connection churn,
/// few enough that an idle sidecar holds little.
const IDLE_PER_ADDRESS: usize = 64;

/// What an HTTP/1.1 connection to a peer was made for.
struct H1Tag {
    route: Arc<Route>,
    upstream: usize,
    creds: Arc<Credentials>,
}

/// The peer connections one HTTP/1.x app connection holds: one per peer address it has used,
/// so its requests are still balanced over a service's addresses one by one. When the app
/// connection closes, they go to their addresses' idle pools.
struct Affinity {
    held: Mutex<Vec<Conn<H1Tag>>>,
    /// Counts this app connection among the outbound's open ones.
    open: OpenGuard,
}

/// Peer connections one app connection keeps at most (it may call several services, each with
/// several addresses); the oldest goes to the idle pool to make room.
const HELD_PER_APP_CONNECTION: usize = 8;

impl Affinity {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        Affinity {
            held: Mutex::default(),
            open: OpenGuard::new(open),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<Conn<H1Tag>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes out the connection held to address `upstream` of `route`, if any.
    fn take(&self, route: &Arc<Route>, upstream: usize) -> Option<Conn<H1Tag>> {
        let mut held = self.held();
        let i = held
            .iter()
            .position(|c| Arc::ptr_eq(&c.tag.route, route) && c.tag.upstream == upstream)?;
        Some(held.swap_remove(i))
    }

    /// Keeps `conn` for this app connection's next request to the same address.
    fn keep(&self, conn: Conn<H1Tag>) {
        let mut held = self.held();
        if held.len() >= HELD_PER_APP_CONNECTION {
            give_back(held.remove(0));
        }
        held.push(conn);
    }

    /// Whether this app connection's HTTP/1.x requests to `route` get a dedicated connection.
    fn dedicated(&self, route: &Route) -> bool {
        match route.peer_protocol {
            PeerProtocol::Http1 => true,
            PeerProtocol::H2 => false,
            PeerProtocol::Auto => self.open.may_hold(),
        }
    }

    /// Gives every held connection back to its address's idle pool.
    fn release(&self) {
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

fn give_back(conn: Conn<H1Tag>) {
    let H1Tag {
        route,
        upstream,
        creds,
    } = conn.tag;
    route.upstreams[upstream].idle.give_back(Conn {
        sender: conn.sender,
        tag: creds,
    });
}

/// Why a connection to a peer could not be made.
#[derive(Debug)]
enum ConnectError {
    /// TCP connect failed or timed out.
    Unreachable(String),
    /// The TLS handshake failed; the label is the metrics reason.
    Handshake(&'static str, String),
}

impl Outbound {
    /// The outbound side for `services`.
    pub fn new(
        services: &[Service],
        identity: IdentityStore,
        metrics: Metrics,
        limits: Limits,
        revocation: Arc<RevocationCache>,
    ) -> Arc<Self> {
        let routes = services
            .iter()
            .map(|s| {
                let route = Route {
                    name: s.name.clone(),
                    // Config validation allows only host-name characters, so this parses.
                    authority: Authority::try_from(s.name.as_str())
                        .unwrap_or_else(|_| Authority::from_static("invalid.service")),
                    ok: metrics.requests.with_label_values(&[
                        "outbound",
                        s.identity.as_str(),
                        "200",
                    ]),
                    identity: s.identity.clone(),
                    upstreams: s
                        .addresses
                        .iter()
                        .map(|a| Upstream {
                            addr: *a,
                            h2: Default::default(),
                            idle: IdlePool::new(IDLE_PER_ADDRESS, limits.header_read_timeout / 2),
                            down_until: Mutex::new(None),
                        })
                        .collect(),
                    next: AtomicUsize::new(0),
                    peer_protocol: s.peer_protocol,
                };
                (s.name.clone(), Arc::new(route))
            })
            .collect();
        Arc::new(Outbound {
            revocation,
            identity,
            routes,
            seconds: metrics.request_seconds.with_label_values(&["outbound"]),
            metrics,
            limits,
            open_app_connections: Arc::default(),
        })
    }

    /// The route for a TCP service.
    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.get(name).cloned()
    }
}

/// Serves the HTTP outbound listener until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = outbound.limits.clone();
    forward::accept_loop(
        listener,
        limits.max_connections,
        limits.drain_timeout,
        shutdown,
        move |tcp, watcher| {
            let outbound = outbound.clone();
            async move {
                let _open = OpenConnection::new(
                    outbound
                        .metrics
                        .connections_open
                        .with_label_values(&["outbound"]),
                );
                let svc_out = outbound.clone();
                let affinity = Arc::new(Affinity::new(&outbound.open_app_connections));
                let svc = hyper::service::service_fn(move |req| {
                    let outbound = svc_out.clone();
                    let affinity = affinity.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(request(&outbound, &affinity, req).await)
                    }
                });
                let builder = forward::server_builder(&outbound.limits);
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!("outbound connection ended: {e}");
                }
            }
        },
    )
    .await;
}

/// Serves a TCP service's local listener: each connection is carried over mTLS to the service.
pub async fn run_tcp(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    route: Arc<Route>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = outbound.limits.clone();
    forward::accept_loop(
        listener,
        limits.max_connections,
        limits.drain_timeout,
        shutdown,
        move |mut tcp, _watcher| {
            let outbound = outbound.clone();
            let route = route.clone();
            async move {
                let _open = OpenConnection::new(
                    outbound
                        .metrics
                        .connections_open
                        .with_label_values(&["outbound"]),
                );
                let Some(creds) = usable_identity(&outbound) else {
                    return;
                };
                match connect_any(&outbound, &route, &creds, Alpn::None).await {
                    Ok((mut tls, _)) => {
                        let live = outbound.revocation.watch(&peer_serial(&tls));
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut tcp, &mut tls) => {}
                            _ = live.revoked() => tracing::info!("closed TCP connection to revoked peer of {}", route.name),
                        }
                    }
                    Err(e) => tracing::warn!("outbound TCP to {}: {e:?}", route.name),
                }
            }
        },
    )
    .await;
}

async fn request(
    outbound: &Outbound,
    affinity: &Affinity,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    let (resp, route) = forward_request(outbound, affinity, req).await;
    // The common case uses handles resolved once per route: no label hashing per request.
    match route {
        Some(r) if resp.status() == StatusCode::OK => r.ok.inc(),
        _ => {
            let peer = route.map(|r| r.identity.as_str()).unwrap_or("");
            outbound
                .metrics
                .requests
                .with_label_values(&["outbound", peer, resp.status().as_str()])
                .inc();
        }
    }
    outbound.seconds.observe(started.elapsed().as_secs_f64());
    resp
}

/// The service name a request is for: the absolute-form URI's host, else the Host header, port
/// and case dropped.
fn service_name(req: &Request<Incoming>) -> Option<String> {
    let host = match req.uri().host() {
        Some(h) => h,
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            // Drop a port without parsing: "name:port" → "name" (IPv6 literals are not names).
            match h.rsplit_once(':') {
                Some((name, port))
                    if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') =>
                {
                    name
                }
                _ => h,
            }
        }
    };
    Some(host.to_ascii_lowercase())
}

async fn forward_request<'a>(
    outbound: &'a Outbound,
    affinity: &Affinity,
    mut req: Request<Incoming>,
) -> (Response<RespBody>, Option<&'a Route>) {
    let Some(name) = service_name(&req) else {
        return (
            reply(
                StatusCode::BAD_REQUEST,
                "request names no service (Host header)\n",
            ),
            None,
        );
    };
    let Some(route) = outbound.routes.get(&name) else {
        return (
            reply_owned(
                StatusCode::BAD_GATEWAY,
                format!("unknown service {name:?}\n"),
            ),
            None,
        );
    };
    let peer = Some(route.as_ref());
    if route.upstreams.is_empty() {
        return (
            reply(StatusCode::BAD_GATEWAY, "service has no address\n"),
            peer,
        );
    }
    let upgrade = req.version() == Version::HTTP_11 && forward::is_upgrade(req.headers());
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&name) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let headers = req.headers_mut();
    forward::strip_hop_by_hop(headers, upgrade);
    let Some(creds) = usable_identity(outbound) else {
        return (
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "sidecar has no usable certificate or revocation list yet\n",
            ),
            peer,
        );
    };
    if upgrade {
        return (forward_upgrade(outbound, route, &creds, req).await, peer);
    }
    if req.version() <= Version::HTTP_11 {
        if affinity.dedicated(route) {
            return (
                forward_h1(outbound, route, affinity, &creds, req).await,
                peer,
            );
        }
        // Many app connections now: a connection this one held goes back to the pool.
        affinity.release();
    }
    let sender = match h2_sender(outbound, route, &creds).await {
        Ok(s) => s,
        Err(resp) => return (resp, peer),
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(route.authority.clone());
    parts.path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
    match Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return (reply(StatusCode::BAD_REQUEST, "bad request target\n"), peer),
    }
    *req.version_mut() = Version::HTTP_2;
    let mut sender = sender;
    match tokio::time::timeout(outbound.limits.request_timeout, sender.send_request(req)).await {
        Ok(Ok(mut resp)) => {
            forward::strip_hop_by_hop(resp.headers_mut(), false);
            (resp.map(Either::Left), peer)
        }
        Ok(Err(e)) => {
            tracing::warn!("outbound to {}: {e}", route.name);
            (
                reply(
                    StatusCode::BAD_GATEWAY,
                    "peer sidecar refused or dropped the request\n",
                ),
                peer,
            )
        }
        Err(_) => (
            reply(StatusCode::GATEWAY_TIMEOUT, "peer did not answer in time\n"),
            peer,
        ),
    }
}

/// Forwards an HTTP/1.x request on the peer connection this app connection holds, or on one
/// from the idle pool, or on a new one ([`pool::send`]).
async fn forward_h1(
    outbound: &Outbound,
    route: &Arc<Route>,
    affinity: &Affinity,
    creds: &Arc<Credentials>,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    // HTTP/1.1 to the peer: origin-form target; `Host` (set above) names the service.
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;

    // Balanced per request, as over HTTP/2: the next healthy address in turn.
    let n = route.upstreams.len();
    let start = route.next.fetch_add(1, Ordering::Relaxed);
    let pick = (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| !route.upstreams[i].is_down())
        .unwrap_or(start % n);
    let kept = reuse_h1(route, affinity, creds, pick);
    let connect = || new_h1(outbound, route, creds, pick);
    match pool::send(kept, connect, req, outbound.limits.request_timeout).await {
        Ok((mut resp, conn)) => {
            affinity.keep(conn);
            forward::strip_hop_by_hop(resp.headers_mut(), false);
            resp.map(Either::Left)
        }
        Err(SendError::Connect(resp)) => resp,
        Err(SendError::Failed(e)) => {
            tracing::warn!("outbound to {}: {e}", route.name);
            reply(
                StatusCode::BAD_GATEWAY,
                "peer sidecar refused or dropped the request\n",
            )
        }
        Err(SendError::Timeout) => {
            reply(StatusCode::GATEWAY_TIMEOUT, "peer did not answer in time\n")
        }
    }
}

/// The connection this app connection holds to address `upstream` of `route` if it was made
/// with the current credentials and is ready; else a ready one from that address's idle pool.
fn reuse_h1(
    route: &Arc<Route>,
    affinity: &Affinity,
    creds: &Arc<Credentials>,
    upstream: usize,
) -> Option<Conn<H1Tag>> {
    if let Some(mut held) = affinity.take(route, upstream) {
        if Arc::ptr_eq(&held.tag.creds, creds) && held.is_ready_now() {
            return Some(held);
        }
        // A rotated certificate, or closed by the peer.
        give_back(held);
    }
    route.upstreams[upstream]
        .idle
        .pop(|c| Arc::ptr_eq(c, creds))
        .map(|c| Conn {
            sender: c.sender,
            tag: H1Tag {
                route: route.clone(),
                upstream,
                creds: creds.clone(),
            },
        })
}

/// A new HTTP/1.1 mTLS connection to address `first` of `route`, or to the next healthy one if
/// that fails; its connection task ends when the peer is revoked.
async fn new_h1(
    outbound: &Outbound,
    route: &Arc<Route>,
    creds: &Arc<Credentials>,
    first: usize,
) -> Result<Conn<H1Tag>, Response<RespBody>> {
    let (tls, upstream) = connect_from(outbound, route, creds, Alpn::Http1, first).await?;
    let serial = peer_serial(&tls);
    let (sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tls))
        .await
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!("outbound to {}: {e}", route.name);
            return Err(reply(
                StatusCode::BAD_GATEWAY,
                "peer sidecar refused the connection\n",
            ));
        }
    };
    spawn_peer_connection(outbound, route, &serial, conn);
    Ok(Conn {
        sender,
        tag: H1Tag {
            route: route.clone(),
            upstream,
            creds: creds.clone(),
        },
    })
}

/// Runs a client connection to a peer until it ends, or until a CRL revokes the peer's
/// certificate (`serial`): then it is closed at once, with whatever it carries.
fn spawn_peer_connection(
    outbound: &Outbound,
    route: &Route,
    serial: &[u8],
    conn: impl Future<Output = hyper::Result<()>> + Send + 'static,
) {
    let live = outbound.revocation.watch(serial);
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

/// The shared HTTP/2 connection to one healthy address of `route`, made if needed.
async fn h2_sender(
    outbound: &Outbound,
    route: &Route,
    creds: &Arc<Credentials>,
) -> Result<SendRequest<Incoming>, Response<RespBody>> {
    let n = route.upstreams.len();
    let start = route.next.fetch_add(1, Ordering::Relaxed);
    let mut last_err = None;
    for i in 0..n {
        let up = &route.upstreams[(start + i) % n];
        // Skip addresses marked down, unless every address is: then try them all anyway.
        if i + 1 < n && up.is_down() {
            continue;
        }
        let mut slot = up.h2.lock().await;
        if let Some((c, s)) = slot.as_ref() {
            if Arc::ptr_eq(c, creds) && !s.is_closed() {
                return Ok(s.clone());
            }
        }
        match connect(outbound, route, up.addr, creds, Alpn::H2).await {
            Ok(tls) => {
                let serial = peer_serial(&tls);
                let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .keep_alive_interval(outbound.limits.idle_timeout / 2)
                    .keep_alive_while_idle(false);
                match builder.handshake(TokioIo::new(tls)).await {
                    Ok((sender, conn)) => {
                        spawn_peer_connection(outbound, route, &serial, conn);
                        *slot = Some((creds.clone(), sender.clone()));
                        return Ok(sender);
                    }
                    Err(e) => last_err = Some(ConnectError::Handshake("protocol", e.to_string())),
                }
            }
            Err(e) => last_err = Some(e),
        }
        up.mark_down();
    }
    Err(connect_failure(route, last_err))
}

fn connect_failure(route: &Route, err: Option<ConnectError>) -> Response<RespBody> {
    match err {
        Some(ConnectError::Handshake("identity_mismatch", detail)) => {
            tracing::warn!("outbound to {}: {detail}", route.name);
            reply_owned(
                StatusCode::BAD_GATEWAY,
                format!(
                    "peer of service {:?} did not present {}\n",
                    route.name, route.identity
                ),
            )
        }
        Some(ConnectError::Handshake(reason, detail)) => {
            tracing::warn!(
                "outbound to {}: handshake failed ({reason}): {detail}",
                route.name
            );
            reply_owned(
                StatusCode::BAD_GATEWAY,
                format!(
                    "mTLS handshake with service {:?} failed ({reason})\n",
                    route.name
                ),
            )
        }
        Some(ConnectError::Unreachable(detail)) => {
            tracing::warn!("outbound to {}: {detail}", route.name);
            reply_owned(
                StatusCode::BAD_GATEWAY,
                format!("service {:?} unreachable\n", route.name),
            )
        }
        None => reply_owned(
            StatusCode::BAD_GATEWAY,
            format!("service {:?} unreachable\n", route.name),
        ),
    }
}

impl Upstream {
    fn is_down(&self) -> bool {
        let guard = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        guard.is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
    }
}

/// TCP + mTLS to `addr`, requiring `route`'s identity; counts the handshake result.
async fn connect(
    outbound: &Outbound,
    route: &Route,
    addr: SocketAddr,
    creds: &Credentials,
    alpn: Alpn,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let hs = &outbound.metrics.handshakes;
    let config = creds
        .client_for(&route.identity, alpn)
        .map_err(|e| ConnectError::Handshake("protocol", e.to_string()))?;
    let timeout = outbound.limits.handshake_timeout;
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(ConnectError::Unreachable(format!("{addr}: {e}"))),
        Err(_) => {
            return Err(ConnectError::Unreachable(format!(
                "{addr}: connect timed out"
            )))
        }
    };
    let _ = tcp.set_nodelay(true);
    // The name only feeds SNI; the peer is identified by its SPIFFE ID, not a DNS name.
    let server_name = ServerName::try_from(route.name.clone())
        .unwrap_or_else(|_| ServerName::try_from("tether.peer").expect("static DNS name is valid"));
    match tokio::time::timeout(
        timeout,
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    {
        Ok(Ok(tls)) => {
            hs.with_label_values(&["outbound", "ok"]).inc();
            Ok(tls)
        }
        Ok(Err(e)) => {
            let reason = crate::inbound::handshake_failure(&e);
            hs.with_label_values(&["outbound", reason]).inc();
            Err(ConnectError::Handshake(reason, format!("{addr}: {e}")))
        }
        Err(_) => {
            hs.with_label_values(&["outbound", "timeout"]).inc();
            Err(ConnectError::Handshake(
                "timeout",
                format!("{addr}: TLS handshake timed out"),
            ))
        }
    }
}

/// Tries each address of `route` once (healthy first) and returns the first mTLS connection.
async fn connect_any(
    outbound: &Outbound,
    route: &Route,
    creds: &Credentials,
    alpn: Alpn,
) -> Result<(TlsStream<TcpStream>, SocketAddr), Response<RespBody>> {
    let start = route.next.fetch_add(1, Ordering::Relaxed);
    let (tls, i) = connect_from(outbound, route, creds, alpn, start).await?;
    Ok((tls, route.upstreams[i].addr))
}

/// Like [`connect_any`], trying address `start` first; returns the index of the address used.
async fn connect_from(
    outbound: &Outbound,
    route: &Route,
    creds: &Credentials,
    alpn: Alpn,
    start: usize,
) -> Result<(TlsStream<TcpStream>, usize), Response<RespBody>> {
    let n = route.upstreams.len();
    let mut last = None;
    for k in 0..n {
        let i = (start + k) % n;
        let up = &route.upstreams[i];
        if k + 1 < n && up.is_down() {
            continue;
        }
        match connect(outbound, route, up.addr, creds, alpn).await {
            Ok(tls) => return Ok((tls, i)),
            Err(e) => {
                up.mark_down();
                last = Some(e);
            }
        }
    }
    Err(connect_failure(route, last))
}

/// Upgrade requests ride a dedicated HTTP/1.1 mTLS connection (HTTP/2 cannot carry them here).
async fn forward_upgrade(
    outbound: &Outbound,
    route: &Route,
    creds: &Credentials,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let downstream = hyper::upgrade::on(&mut req);
    let tls = match connect_any(outbound, route, creds, Alpn::Http1).await {
        Ok((tls, _)) => tls,
        Err(resp) => return resp,
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
    else {
        return reply(
            StatusCode::BAD_GATEWAY,
            "peer sidecar refused the connection\n",
        );
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    if let Some(pq) = req.uri().path_and_query().cloned() {
        if let Ok(uri) = Uri::try_from(pq.as_str()) {
            *req.uri_mut() = uri;
        }
    }
    match tokio::time::timeout(outbound.limits.request_timeout, sender.send_request(req)).await {
        Ok(Ok(mut resp)) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                forward::bridge_upgrades(downstream, upstream);
            }
            resp.map(Either::Left)
        }
        Ok(Err(_)) => reply(
            StatusCode::BAD_GATEWAY,
            "peer sidecar refused or dropped the request\n",
        ),
        Err(_) => reply(StatusCode::GATEWAY_TIMEOUT, "peer did not answer in time\n"),
    }
}

/// The current credentials if new connections may be made: there is a certificate, and the CRL
/// is not stale under `on_stale_crl = "deny"` (fail closed). Counts the refusal otherwise.
fn usable_identity(outbound: &Outbound) -> Option<Arc<Credentials>> {
    let hs = &outbound.metrics.handshakes;
    let Some(creds) = outbound.identity.current() else {
        hs.with_label_values(&["outbound", "no_identity"]).inc();
        return None;
    };
    if !outbound.revocation.admits(time::OffsetDateTime::now_utc()) {
        hs.with_label_values(&["outbound", "stale_crl"]).inc();
        return None;
    }
    Some(creds)
}

/// The serial of the peer's leaf on an established connection (empty if none, which the
/// verifier makes impossible).
fn peer_serial(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| tether_certs::svid::inspect_leaf(leaf, None).ok())
        .map(|info| info.serial.as_bytes().to_vec())
        .unwrap_or_default()
}

/// Whether a service is TCP (served by [`run_tcp`]).
pub fn is_tcp(s: &Service) -> bool {
    s.mode == Mode::Tcp
}

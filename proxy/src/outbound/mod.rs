//! Outbound: the local app → plain HTTP (or h2c) → mTLS → the peer's sidecar.
//!
//! The app names the service in `Host` (or in an absolute-form URI, so `http_proxy` works). The
//! sidecar connects to one of the service's addresses with our certificate and requires the peer
//! to present exactly the configured SPIFFE ID. With `peer_protocol = "http1"` each HTTP/1.x
//! connection from the app keeps its own keep-alive HTTP/1.1 mTLS connection to each peer
//! address it uses, pooled when the app closes it ([`crate::pool`]); HTTP/2 requests from the
//! app, and every request under `peer_protocol = "h2"`, share one HTTP/2 connection per
//! address. `"auto"` (the default) is `http1` while at most [`crate::pool::DEDICATED_UP_TO`] app
//! connections are open and `h2` beyond. Either way requests take the service's addresses in
//! turn. An address that fails to connect is skipped for [`route::DOWN_FOR`]; an identity
//! mismatch is a 502 and a metric, never a fallback to another identity.
//!
//! # Layout
//! - [`route`]: the route table, address order and health.
//! - [`affinity`]: the peer connections one app connection holds.
//! - [`connect`]: mTLS connections to peers and the get/release choke point.
//! - [`http`]: forwarding one request over HTTP/1.1, HTTP/2 or an upgrade.
//! - [`peer_h2`]: the shared HTTP/2 connection, on the `h2` crate.
//! - [`tcp`]: TCP services.

mod affinity;
mod connect;
mod http;
mod peer_h2;
mod route;
mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use ::http::header;
use ::http::{Request, Response, Version};
use hyper::body::Incoming;
use tether_net::Admission;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::config::{Limits, Service};
use crate::error::{Dialect, Error, RespBody};
use crate::forward::{self, Upgrade};
use crate::identity::{Credentials, IdentityStore};
use crate::metrics::{Direction, Metrics};
use crate::observe::{self, Exchange, Log, Metered, Observed};
use crate::revocation::RevocationCache;
use crate::tls::HandshakeResult;

pub use peer_h2::H2Body;
pub use route::Route;
pub use tcp::run_tcp;

use affinity::Affinity;
use route::Routes;

/// Real credentials for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) use route::tests::test_credentials;

/// A request body from the app on its way to a peer, its bytes counted.
pub(crate) type PeerBody = Metered<Incoming>;

/// The outbound side, shared by all its connections.
pub struct Outbound {
    identity: IdentityStore,
    routes: Routes,
    metrics: Metrics,
    limits: Limits,
    /// HTTP server settings, built once from `limits`.
    http: forward::HttpServer,
    revocation: Arc<RevocationCache>,
    /// The access log, if `[access_log]` is set.
    log: Log,
    /// HTTP app connections open on the outbound listener (for `peer_protocol = "auto"`).
    open_app_connections: Arc<AtomicUsize>,
}

impl Outbound {
    /// The outbound side for `services`.
    pub fn new(
        services: &[Service],
        identity: IdentityStore,
        metrics: Metrics,
        limits: Limits,
        revocation: Arc<RevocationCache>,
        log: Log,
    ) -> Arc<Self> {
        Arc::new(Outbound {
            routes: Routes::new(services, &limits),
            revocation,
            log,
            identity,
            metrics,
            http: forward::HttpServer::new(&limits),
            limits,
            open_app_connections: Arc::default(),
        })
    }

    /// The route of service `name` (for TCP services' listeners).
    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.get(name).cloned()
    }

    /// The current credentials if new connections may be made: there is a certificate, and the
    /// CRL is not stale under `on_stale_crl = "deny"` (fail closed). Counts the refusal
    /// otherwise.
    fn usable_identity(&self) -> Option<Arc<Credentials>> {
        let Some(creds) = self.identity.current() else {
            self.metrics
                .count_handshake(Direction::Outbound, HandshakeResult::NoIdentity);
            return None;
        };
        if !self.revocation.admits(time::OffsetDateTime::now_utc()) {
            self.metrics
                .count_handshake(Direction::Outbound, HandshakeResult::StaleCrl);
            return None;
        }
        Some(creds)
    }
}

/// Serves the HTTP outbound listener until `shutdown` resolves, then drains. A connection past
/// the limit, in the overflow band, is refused readably ([`forward::refuse`]).
pub async fn run(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = forward::listener_limits(&outbound.limits);
    tether_net::serve(
        "outbound",
        listener,
        limits,
        shutdown,
        move |tcp, _, watcher, admission| {
            let outbound = outbound.clone();
            async move {
                if admission == Admission::OverLimit {
                    // No route is resolved for a refusal: counted under no peer.
                    let refused = outbound
                        .metrics
                        .requests_for(Direction::Outbound, "", "503");
                    let accept = std::future::ready(Some((tcp, refused)));
                    return forward::refuse(&outbound.http, accept).await;
                }
                let _open = outbound.metrics.open_connection(Direction::Outbound);
                let svc_out = outbound.clone();
                let app = Arc::new(AppConn {
                    affinity: Affinity::new(&outbound.open_app_connections),
                    upgrade: Upgrade::default(),
                });
                let upgrade = app.upgrade.clone();
                let handle = move |mut req| {
                    let (outbound, app) = (svc_out.clone(), app.clone());
                    let (id, span) = observe::request_span(&mut req);
                    async move { request(&outbound, &app, id, req).await }.instrument(span)
                };
                // An upgraded stream runs inside, still counted as this connection.
                forward::serve_http(&outbound.http, tcp, watcher, &upgrade, handle).await;
            }
        },
    )
    .await;
}

/// What one app connection keeps between its requests.
struct AppConn {
    /// The peer connections it holds.
    affinity: Affinity,
    /// Its upgraded stream, if it upgrades.
    upgrade: Upgrade,
}

/// One request from the app: routed, forwarded, counted and logged; errors become responses
/// here, in the request's dialect (counted by their HTTP status, whatever a gRPC client reads).
async fn request(
    outbound: &Outbound,
    app: &AppConn,
    id: ::http::HeaderValue,
    mut req: Request<Incoming>,
) -> Response<Observed<RespBody>> {
    let mut ex = Exchange::start(&outbound.log, Direction::Outbound, &req, id);
    // Read now: forwarding consumes the request, and a timeout comes after that.
    let dialect = Dialect::of(req.headers());
    let route = match outbound.routes.resolve(&mut req) {
        Ok(route) => route,
        Err(e) => {
            // No route, no peer: counted under none, by label lookup.
            let resp = ex.fail(e);
            return ex.finish(&outbound.metrics, (None, ""), dialect, resp);
        }
    };
    tracing::Span::current().record("service", &*route.name);
    if let Some(entry) = ex.entry() {
        entry.peer = Some(route.identity_text.clone());
        entry.service = Some(route.name.clone());
    }
    let series = route.series(&outbound.metrics);
    let req = req.map(|body| Metered::new(body, ex.meter(series.bytes_in.clone())));
    let resp = match forward(outbound, route, app, req).await {
        Ok((resp, upstream)) => {
            if let Some(entry) = ex.entry() {
                entry.upstream = Some(upstream);
            }
            resp
        }
        Err(e) => ex.fail(e),
    };
    ex.finish(
        &outbound.metrics,
        (Some(series), route.identity.as_str()),
        dialect,
        resp,
    )
}

/// Forwards a request to `route`'s peer over the connection its protocol calls for; returns
/// the response and the peer address that answered it.
async fn forward(
    outbound: &Outbound,
    route: &Arc<Route>,
    app: &AppConn,
    mut req: Request<PeerBody>,
) -> Result<(Response<RespBody>, SocketAddr), Error> {
    let affinity = &app.affinity;
    if route.upstreams.is_empty() {
        return Err(Error::NoAddress);
    }
    let upgrade = req.version() == Version::HTTP_11 && forward::is_upgrade(req.headers());
    // One authority from here on: the service's name, whatever port or case the app wrote.
    req.headers_mut().insert(header::HOST, route.host.clone());
    forward::strip_hop_by_hop(req.headers_mut(), upgrade);
    let creds = outbound.usable_identity().ok_or(Error::NoIdentity)?;
    if upgrade {
        // Boxed, as every rare path with a connection to make: its state would otherwise be
        // part of (and copied with) every request's future.
        return Box::pin(http::forward_upgrade(
            outbound,
            route,
            &creds,
            &app.upgrade,
            req,
        ))
        .await;
    }
    if req.version() <= Version::HTTP_11 {
        if affinity.dedicated(route) {
            return http::forward_h1(outbound, route, affinity, &creds, req).await;
        }
        // Many app connections now: a connection this one held goes back to the pool.
        affinity.release();
    }
    http::forward_h2(outbound, route, &creds, req).await
}

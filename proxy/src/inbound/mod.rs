//! Inbound: peer sidecars → mTLS → policy → the local app.
//!
//! Each connection is verified once at the handshake (chain to the bundle, X509-SVID rules,
//! revocation), and the caller's identity and `x-forwarded-client-cert` value are computed once
//! per connection, not per request. Each request's path is normalized, the policy decides on
//! (caller, method, normalized path), and the request forwarded to the app carries exactly the
//! path that was matched plus our XFCC header — any XFCC the caller sent is dropped first.
//!
//! # Layout
//! - this file: the listener, the handshake and the per-connection state.
//! - [`request`]: one request — normalize, authorize, rewrite, count.
//! - [`app`]: the connections to the local app (held, pooled, h2c, upgrades, TCP).

mod app;
mod request;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::HeaderValue;
use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tether_net::Admission;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use crate::config::{AppProtocol, Inbound as InboundConfig, Limits, Mode};
use crate::error::Dialect;
use crate::forward::{self, Upgrade};
use crate::identity::IdentityStore;
use crate::metrics::{Direction, Metrics, Series};
use crate::observe::{self, Log};
use crate::policy::{PathParams, PolicyHandle};
use crate::pool::{Held, IdlePool, OpenGuard};
use crate::revocation::RevocationCache;
use crate::tls::{self, HandshakeResult, PeerCert};

use app::AppBody;

/// At most this many shared HTTP/1.1 connections to the app are kept between requests (the
/// ones carrying a request are not limited). Unbounded, a burst left one idle connection per
/// request it had in flight, each holding its buffers; nginx's reference inbound keeps 64
/// (`keepalive 64`).
const APP_IDLE_MAX: usize = 64;

/// A shared app connection unused for this long is closed when next met rather than reused:
/// the app may have closed it meanwhile (hyper-util's pool, used before, kept them 90 s).
const APP_IDLE_FOR: Duration = Duration::from_secs(90);

/// Everything the inbound side needs, shared by all its connections.
pub struct Inbound {
    identity: IdentityStore,
    policy: Arc<PolicyHandle>,
    metrics: Metrics,
    limits: Limits,
    /// HTTP server settings, built once from `limits`.
    http: forward::HttpServer,
    revocation: Arc<RevocationCache>,
    /// The access log, if `[access_log]` is set.
    log: Log,
    app: SocketAddr,
    app_authority: Authority,
    mode: Mode,
    app_protocol: AppProtocol,
    /// How `;` path parameters are read before the policy sees the path.
    path_params: PathParams,
    /// HTTP/1.1 app connections shared by requests that hold none ([`app`]).
    shared: IdlePool<(), AppBody>,
    h2c: Client<HttpConnector, AppBody>,
    /// HTTP connections from peers open now ([`crate::pool::DEDICATED_UP_TO`]).
    open_http: Arc<AtomicUsize>,
}

impl Inbound {
    /// Builds the inbound side for `config`.
    pub fn new(
        config: &InboundConfig,
        identity: IdentityStore,
        policy: Arc<PolicyHandle>,
        metrics: Metrics,
        limits: Limits,
        revocation: Arc<RevocationCache>,
        log: Log,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let app_authority = Authority::try_from(config.app.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        Arc::new(Inbound {
            identity,
            policy,
            metrics,
            http: forward::HttpServer::new(&limits),
            limits,
            revocation,
            log,
            app: config.app,
            app_authority,
            mode: config.mode,
            app_protocol: config.app_protocol,
            path_params: config.path_params,
            shared: IdlePool::new(APP_IDLE_MAX, APP_IDLE_FOR),
            h2c,
            open_http: Arc::default(),
        })
    }
}

/// The verified caller of one connection.
struct Peer {
    cert: PeerCert,
    /// Its SPIFFE ID, shared by every access-log entry of the connection.
    id: Arc<str>,
    /// Its metric handles, resolved at its first request (a connection that sends none adds
    /// no series).
    series: OnceLock<Series>,
    xfcc: HeaderValue,
}

impl Peer {
    /// The caller's metric handles.
    fn series(&self, metrics: &Metrics) -> &Series {
        self.series
            .get_or_init(|| metrics.series(Direction::Inbound, self.cert.id.as_str()))
    }
}

/// What one HTTP connection from a peer keeps between its requests: the app connection it
/// holds while there are few peer connections, and its upgraded stream, if it upgrades.
struct AppConn {
    held: Held<(), AppBody>,
    open: OpenGuard,
    upgrade: Upgrade,
}

/// Serves the inbound listener until `shutdown` resolves, then drains. An HTTP connection past
/// the limit, in the overflow band, is refused readably ([`refuse`]); in TCP mode there is no
/// band, and such a connection is closed at once.
pub async fn run(listener: TcpListener, inbound: Arc<Inbound>, shutdown: impl Future<Output = ()>) {
    let limits = match inbound.mode {
        Mode::Tcp => forward::tcp_listener_limits(&inbound.limits),
        Mode::Http => forward::listener_limits(&inbound.limits),
    };
    tether_net::serve(
        "inbound",
        listener,
        limits,
        shutdown,
        move |tcp, _, watcher, admission| {
            let inbound = inbound.clone();
            async move {
                match admission {
                    Admission::Admitted => connection(inbound, tcp, watcher).await,
                    Admission::OverLimit => refuse(&inbound, tcp).await,
                }
            }
        },
    )
    .await;
}

/// A connection past the limit: the same mTLS handshake as any (an unauthenticated caller gets
/// nothing more than always), then only refusals, counted as the caller's `503`s and not as an
/// open connection ([`forward::refuse`]).
async fn refuse(inbound: &Inbound, tcp: TcpStream) {
    let accept = async {
        let (tls, peer) = handshake(inbound, tcp).await?;
        let id = peer.cert.id.as_str();
        let refused = inbound.metrics.requests_for(Direction::Inbound, id, "503");
        Some((tls, refused))
    };
    forward::refuse(&inbound.http, accept).await;
}

/// Verifies the peer of one connection, then serves its requests (or its bytes, in TCP mode)
/// until it closes, drains, or a newer CRL revokes the peer.
async fn connection(inbound: Arc<Inbound>, tcp: TcpStream, watcher: tether_net::Watcher) {
    let _open = inbound.metrics.open_connection(Direction::Inbound);
    let Some(peer) = handshake(&inbound, tcp).await else {
        return;
    };
    let (tls, peer) = peer;
    // Every line this connection logs, its requests' too, names the caller.
    tracing::Span::current().record("identity", peer.cert.id.as_str());
    // Closed the moment a newer CRL revokes this peer, not when it next idles out.
    let live = inbound.revocation.watch(peer.cert.serial.as_bytes());
    if inbound.mode == Mode::Tcp {
        tokio::select! {
            _ = app::carry_tcp(&inbound, &peer, tls) => {}
            _ = live.revoked() => tracing::info!("closed TCP connection of revoked peer {}", peer.cert.id),
        }
        return;
    }
    let peer_id = peer.cert.id.clone();
    let peer = Arc::new(peer);
    let svc_inbound = inbound.clone();
    let app_conn = Arc::new(AppConn {
        held: Held::default(),
        open: OpenGuard::new(&inbound.open_http),
        upgrade: Upgrade::default(),
    });
    let upgrade = app_conn.upgrade.clone();
    let handle = move |mut req: http::Request<hyper::body::Incoming>| {
        let (inbound, peer, app_conn) = (svc_inbound.clone(), peer.clone(), app_conn.clone());
        // Read before the request is forwarded; a refusal is counted by its HTTP status, then
        // spelled the way the caller's protocol reads it.
        let dialect = Dialect::of(req.headers());
        let (id, span) = observe::request_span(&mut req);
        let serve =
            async move { request::handle(&inbound, &peer, &app_conn, dialect, id, req).await };
        serve.instrument(span)
    };
    // An upgraded stream runs inside `serve`, under the same revocation watch.
    let serve = forward::serve_http(&inbound.http, tls, watcher, &upgrade, handle);
    tokio::select! {
        _ = serve => {}
        _ = live.revoked() => tracing::info!("closed connection of revoked peer {peer_id}"),
    }
}

/// Server TLS on a connection from a peer.
type PeerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// The mTLS handshake, counted: fails closed without a certificate (enrollment pending) or with
/// a stale CRL under `deny`, and refuses a peer whose verified leaf cannot be read.
async fn handshake(inbound: &Inbound, tcp: TcpStream) -> Option<(PeerTls, Peer)> {
    let count = |r| inbound.metrics.count_handshake(Direction::Inbound, r);
    let Some(creds) = inbound.identity.current() else {
        count(HandshakeResult::NoIdentity);
        return None;
    };
    if !inbound.revocation.admits(time::OffsetDateTime::now_utc()) {
        count(HandshakeResult::StaleCrl);
        return None;
    }
    let tls = match tls::accept(creds.server.clone(), tcp, inbound.limits.handshake_timeout).await {
        Ok(tls) => tls,
        Err(refusal) => {
            count(refusal.result);
            tracing::debug!(
                "inbound handshake refused ({}): {}",
                refusal.result.as_str(),
                refusal.detail
            );
            return None;
        }
    };
    let Some(peer) = PeerCert::of(tls.get_ref().1.peer_certificates()).and_then(|cert| {
        let xfcc = format!("By={};Hash={};URI={}", creds.id, cert.fingerprint, cert.id);
        Some(Peer {
            id: Arc::from(cert.id.as_str()),
            series: OnceLock::new(),
            xfcc: HeaderValue::from_str(&xfcc).ok()?,
            cert,
        })
    }) else {
        count(HandshakeResult::BadSvid);
        return None;
    };
    count(HandshakeResult::Ok);
    Some((tls, peer))
}

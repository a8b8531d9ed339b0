//! Inbound: peer sidecars → mTLS → policy → the local app.
//!
//! Each connection is verified once at the handshake (chain to the bundle, X509-SVID rules,
//! revocation), and the caller's identity and `x-forwarded-client-cert` value are computed once
//! per connection, not per request. Each request's path is normalized, the policy decides on
//! (caller, method, normalized path), and the request forwarded to the app carries exactly the
//! path that was matched plus our XFCC header — any XFCC the caller sent is dropped first.
//!
//! While at most [`crate::pool::DEDICATED_UP_TO`] peer connections are open, an HTTP/1.1
//! connection from a peer sidecar gets its own keep-alive connection to the app, held between
//! its requests ([`crate::pool::Held`]); beyond that, and for requests arriving over HTTP/2,
//! requests share a pool of app connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::{AppProtocol, Inbound as InboundConfig, Limits, Mode};
use crate::forward::{self, reply, RespBody, XFCC};
use crate::identity::IdentityStore;
use crate::metrics::{Metrics, OpenConnection};
use crate::policy::{normalize_path, Decision, Mode as PolicyMode, PolicyHandle};
use crate::pool::{self, Conn, Held, OpenGuard, SendError};
use crate::revocation::RevocationCache;

/// Everything the inbound side needs, shared by all its connections.
pub struct Inbound {
    /// Our credentials (newest used for each handshake).
    pub identity: IdentityStore,
    /// The policy in force (hot-reloaded).
    pub policy: Arc<PolicyHandle>,
    /// Metrics.
    pub metrics: Metrics,
    /// Limits and timeouts.
    pub limits: Limits,
    /// The CRL in force and the live connections it may cut.
    pub revocation: Arc<RevocationCache>,
    /// `tether_request_duration_seconds{direction="inbound"}`, resolved once.
    seconds: prometheus::Histogram,
    app: SocketAddr,
    app_authority: Authority,
    mode: Mode,
    app_protocol: AppProtocol,
    http1: Client<HttpConnector, Incoming>,
    h2c: Client<HttpConnector, Incoming>,
    /// HTTP connections from peers open now ([`crate::pool::DEDICATED_UP_TO`]).
    open_http: Arc<std::sync::atomic::AtomicUsize>,
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
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http1 = Client::builder(TokioExecutor::new()).build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let app_authority = Authority::try_from(config.app.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        let seconds = metrics.request_seconds.with_label_values(&["inbound"]);
        Arc::new(Inbound {
            identity,
            policy,
            metrics,
            seconds,
            limits,
            revocation,
            app: config.app,
            app_authority,
            mode: config.mode,
            app_protocol: config.app_protocol,
            http1,
            h2c,
            open_http: Arc::default(),
        })
    }
}

/// The app connection one HTTP connection from a peer holds, while there are few of those.
struct AppConn {
    held: Held<()>,
    open: OpenGuard,
}

/// The verified caller of one connection.
struct Peer {
    id: tether_certs::SpiffeId,
    serial: tether_certs::Serial,
    /// `tether_requests_total{direction="inbound",peer=<id>,code="200"}`, resolved once.
    ok: prometheus::IntCounter,
    xfcc: HeaderValue,
}

/// Serves the inbound listener until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = inbound.limits.clone();
    forward::accept_loop(
        listener,
        limits.max_connections,
        limits.drain_timeout,
        shutdown,
        move |tcp, watcher| {
            let inbound = inbound.clone();
            async move { connection(inbound, tcp, watcher).await }
        },
    )
    .await;
}

async fn connection(
    inbound: Arc<Inbound>,
    tcp: TcpStream,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _open = OpenConnection::new(
        inbound
            .metrics
            .connections_open
            .with_label_values(&["inbound"]),
    );
    let handshakes = &inbound.metrics.handshakes;
    // Fail closed: no certificate yet (enrollment pending), or a stale CRL under `deny`.
    let Some(creds) = inbound.identity.current() else {
        handshakes
            .with_label_values(&["inbound", "no_identity"])
            .inc();
        return;
    };
    if !inbound.revocation.admits(time::OffsetDateTime::now_utc()) {
        handshakes
            .with_label_values(&["inbound", "stale_crl"])
            .inc();
        return;
    }
    let acceptor = TlsAcceptor::from(creds.server.clone());
    let tls =
        match tokio::time::timeout(inbound.limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = handshake_failure(&e);
                handshakes.with_label_values(&["inbound", reason]).inc();
                return tracing::debug!("inbound handshake refused ({reason}): {e}");
            }
            Err(_) => {
                handshakes.with_label_values(&["inbound", "timeout"]).inc();
                return;
            }
        };
    // The verifier already accepted this chain, so the leaf is present and parses; anything
    // else is treated as a refusal rather than a panic.
    let Some(peer) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| {
            let info = tether_certs::svid::inspect_leaf(leaf, None).ok()?;
            let hash = tether_certs::bundle::fingerprint(leaf);
            let xfcc = format!("By={};Hash={hash};URI={}", creds.id, info.id);
            let ok =
                inbound
                    .metrics
                    .requests
                    .with_label_values(&["inbound", info.id.as_str(), "200"]);
            Some(Peer {
                id: info.id,
                serial: info.serial,
                ok,
                xfcc: HeaderValue::from_str(&xfcc).ok()?,
            })
        })
    else {
        handshakes.with_label_values(&["inbound", "bad_svid"]).inc();
        return;
    };
    handshakes.with_label_values(&["inbound", "ok"]).inc();
    // Closed the moment a newer CRL revokes this peer, not when it next idles out.
    let live = inbound.revocation.watch(peer.serial.as_bytes());
    if inbound.mode == Mode::Tcp {
        tokio::select! {
            _ = tcp_connection(&inbound, &peer, tls) => {}
            _ = live.revoked() => tracing::info!("closed TCP connection of revoked peer {}", peer.id),
        }
        return;
    }
    let peer_id = peer.id.clone();
    let peer = Arc::new(peer);
    let svc_inbound = inbound.clone();
    let app_conn = Arc::new(AppConn {
        held: Held::default(),
        open: OpenGuard::new(&inbound.open_http),
    });
    let svc = hyper::service::service_fn(move |req| {
        let inbound = svc_inbound.clone();
        let peer = peer.clone();
        let app_conn = app_conn.clone();
        async move { Ok::<_, std::convert::Infallible>(request(&inbound, &peer, &app_conn, req).await) }
    });
    let builder = forward::server_builder(&inbound.limits);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
        .into_owned();
    tokio::select! {
        r = watcher.watch(conn) => if let Err(e) = r {
            tracing::debug!("inbound connection ended: {e}");
        },
        _ = live.revoked() => tracing::info!("closed connection of revoked peer {peer_id}"),
    }
}

/// Maps a handshake error to the metric label.
pub fn handshake_failure(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(err) => match tether_certs::verify::failure_reason(err) {
            "tls" => "protocol",
            other => other,
        },
        None => "protocol",
    }
}

async fn tcp_connection(
    inbound: &Inbound,
    peer: &Peer,
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
) {
    let policy = inbound.policy.current();
    let decision = policy.decide(&peer.id, None, None, time::OffsetDateTime::now_utc());
    if !authorize(inbound, &policy, decision, &peer.id, &"tcp") {
        return;
    }
    let Ok(mut app) = TcpStream::connect(inbound.app).await else {
        return tracing::warn!("inbound TCP: app {} unreachable", inbound.app);
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut app).await;
}

/// "METHOD /path" for logs, formatted only when printed.
struct RequestLine<'a>(&'a http::Method, &'a str);

impl std::fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// Counts and logs a decision; returns whether the traffic may pass.
fn authorize(
    inbound: &Inbound,
    policy: &crate::policy::Policy,
    decision: Decision<'_>,
    caller: &tether_certs::SpiffeId,
    what: &dyn std::fmt::Display,
) -> bool {
    match decision {
        Decision::Allow { rule } => {
            inbound
                .metrics
                .authz
                .with_label_values(&["allow", rule])
                .inc();
            true
        }
        Decision::Deny => match policy.mode() {
            PolicyMode::Enforce => {
                inbound.metrics.authz.with_label_values(&["deny", ""]).inc();
                tracing::info!("denied {caller} {what}: no rule matched");
                false
            }
            PolicyMode::Audit => {
                inbound
                    .metrics
                    .authz
                    .with_label_values(&["audit_deny", ""])
                    .inc();
                tracing::warn!("audit: would deny {caller} {what}; allowed because mode = audit");
                true
            }
        },
    }
}

async fn request(
    inbound: &Inbound,
    peer: &Peer,
    app_conn: &AppConn,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    let resp = forward_request(inbound, peer, app_conn, req).await;
    // The common case uses handles resolved once per connection: no label hashing per request.
    if resp.status() == StatusCode::OK {
        peer.ok.inc();
    } else {
        inbound
            .metrics
            .requests
            .with_label_values(&["inbound", peer.id.as_str(), resp.status().as_str()])
            .inc();
    }
    inbound.seconds.observe(started.elapsed().as_secs_f64());
    resp
}

async fn forward_request(
    inbound: &Inbound,
    peer: &Peer,
    app_conn: &AppConn,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let Ok(path) = normalize_path(req.uri().path()) else {
        return reply(StatusCode::BAD_REQUEST, "bad request path\n");
    };
    let policy = inbound.policy.current();
    let decision = policy.decide(
        &peer.id,
        Some(req.method().as_str()),
        Some(&path),
        time::OffsetDateTime::now_utc(),
    );
    // Formatted only if a deny is logged: nothing is allocated for it on the allow path.
    if !authorize(
        inbound,
        &policy,
        decision,
        &peer.id,
        &RequestLine(req.method(), &path),
    ) {
        // Says nothing about which rules exist.
        return reply(StatusCode::FORBIDDEN, "forbidden\n");
    }
    drop(policy);

    // Rebuild the target from the normalized path: what was matched is what the app sees.
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return reply(StatusCode::BAD_REQUEST, "bad request path\n");
    };
    if !req.headers().contains_key(header::HOST) {
        if let Some(a) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    // Origin-form, as an HTTP/1.1 connection to the app sends it; the pooled clients below get
    // the absolute form they route by.
    *req.uri_mut() = Uri::from(pq);

    let upgrade = req.version() == Version::HTTP_11 && forward::is_upgrade(req.headers());
    // gRPC only exists over HTTP/2, so it goes to the app as h2c whatever the setting's default.
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let headers = req.headers_mut();
    forward::strip_hop_by_hop(headers, upgrade);
    headers.remove(XFCC);
    headers.insert(XFCC, peer.xfcc.clone());

    if upgrade {
        return forward_upgrade(inbound, req).await;
    }
    let use_h2c = match inbound.app_protocol {
        AppProtocol::H2c => true,
        AppProtocol::Http1 => false,
        AppProtocol::Auto => is_grpc,
    };
    if !use_h2c && req.version() <= Version::HTTP_11 {
        if app_conn.open.may_hold() {
            return forward_held(inbound, app_conn, req).await;
        }
        // Many peer connections now: share the pooled app connections instead.
        drop(app_conn.held.take());
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(inbound.app_authority.clone());
    let Ok(uri) = Uri::from_parts(parts) else {
        return reply(StatusCode::BAD_REQUEST, "bad request target\n");
    };
    *req.uri_mut() = uri;
    let client = if use_h2c {
        *req.version_mut() = Version::HTTP_2;
        &inbound.h2c
    } else {
        *req.version_mut() = Version::HTTP_11;
        &inbound.http1
    };
    match tokio::time::timeout(inbound.limits.request_timeout, client.request(req)).await {
        Ok(Ok(mut resp)) => {
            forward::strip_hop_by_hop(resp.headers_mut(), false);
            resp.map(Either::Left)
        }
        Ok(Err(e)) => {
            tracing::warn!("inbound: app {} failed: {e}", inbound.app);
            reply(StatusCode::BAD_GATEWAY, "local app unavailable\n")
        }
        Err(_) => reply(
            StatusCode::GATEWAY_TIMEOUT,
            "local app did not answer in time\n",
        ),
    }
}

/// Forwards a request from an HTTP/1.x peer connection on the app connection it holds (made
/// on first use; replaced if the app closed it, [`pool::send`]).
async fn forward_held(
    inbound: &Inbound,
    app_conn: &AppConn,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    *req.version_mut() = Version::HTTP_11;
    let kept = app_conn
        .held
        .take()
        .and_then(|mut c| c.is_ready_now().then_some(c));
    let connect = || connect_app(inbound);
    match pool::send(kept, connect, req, inbound.limits.request_timeout).await {
        Ok((mut resp, conn)) => {
            app_conn.held.put(conn);
            forward::strip_hop_by_hop(resp.headers_mut(), false);
            resp.map(Either::Left)
        }
        Err(SendError::Connect(())) => reply(StatusCode::BAD_GATEWAY, "local app unavailable\n"),
        Err(SendError::Failed(e)) => {
            tracing::warn!("inbound: app {} failed: {e}", inbound.app);
            reply(StatusCode::BAD_GATEWAY, "local app unavailable\n")
        }
        Err(SendError::Timeout) => reply(
            StatusCode::GATEWAY_TIMEOUT,
            "local app did not answer in time\n",
        ),
    }
}

/// A new HTTP/1.1 connection to the app, its connection task spawned (able to carry an
/// upgrade, for [`forward_upgrade`]).
async fn connect_app(inbound: &Inbound) -> Result<Conn<()>, ()> {
    let tcp = TcpStream::connect(inbound.app)
        .await
        .map_err(|e| tracing::warn!("inbound: app {} unreachable: {e}", inbound.app))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| tracing::warn!("inbound: app {} handshake failed: {e}", inbound.app))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("app connection ended: {e}");
        }
    });
    Ok(Conn { sender, tag: () })
}

/// Forwards an upgrade request to the app on a connection of its own and, on 101, splices the
/// two upgraded streams together.
async fn forward_upgrade(inbound: &Inbound, mut req: Request<Incoming>) -> Response<RespBody> {
    let downstream = hyper::upgrade::on(&mut req);
    let Ok(mut conn) = connect_app(inbound).await else {
        return reply(StatusCode::BAD_GATEWAY, "local app unavailable\n");
    };
    match tokio::time::timeout(
        inbound.limits.request_timeout,
        conn.sender.send_request(req),
    )
    .await
    {
        Ok(Ok(mut resp)) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                forward::bridge_upgrades(downstream, upstream);
            }
            resp.map(Either::Left)
        }
        Ok(Err(_)) => reply(StatusCode::BAD_GATEWAY, "local app unavailable\n"),
        Err(_) => reply(
            StatusCode::GATEWAY_TIMEOUT,
            "local app did not answer in time\n",
        ),
    }
}

//! One call to one CA URL: a new TCP + TLS 1.3 connection (our client certificate, if any; the
//! CA's server certificate checked against our bundle), one exchange over HTTP/2 if the CA
//! offers it by ALPN (`tether-ca` does), else HTTP/1.1, the answer read up to
//! [`wire::MAX_RESPONSE_BODY`]. The TLS config is built once per trust bundle and credential
//! ([`TlsConfigs`]), not per call.
//!
//! Every step is bounded so a replica that is gone loses the call within two seconds, whether
//! it died (its kernel resets the connection: at once) or its host was cut off (silence),
//! instead of a CRL long-poll waiting out its whole `wait` + [`super::CALL_TIMEOUT`]:
//! - the connection must be up within [`CONNECT_TIMEOUT`];
//! - over HTTP/2, a PING goes out after [`PING_EVERY`] without a frame from the CA, and a PING
//!   unanswered for [`PING_TIMEOUT`] drops the connection: at most 1.5 s of silence. This also
//!   catches a CA process that hangs with its kernel still acknowledging;
//! - on every connection, TCP keepalive ([`KEEPALIVE`]) and `TCP_USER_TIMEOUT`
//!   ([`USER_TIMEOUT`]) make the kernel drop it once the peer stops acknowledging: 1–2 s after
//!   the last acknowledgement, since keepalive counts in whole seconds. This is what bounds an
//!   HTTP/1.1 connection, and a second line under HTTP/2.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use tether_certs::wire;
use tether_certs::TrustBundle;

use super::failover::{Miss, Target};
use super::{Answer, CaClientError, Call};
use crate::identity::Credentials;

/// How long reaching one URL may take, TCP connect and TLS handshake together: a live CA
/// completes both in milliseconds even when busy, a host that is cut off never does, and one
/// second leaves room to reach the next URL within two seconds of a replica vanishing.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Silence on a CA connection after which TCP keepalive sends its first probe, and the interval
/// between probes (both in whole seconds, the kernel's unit; one is the least). A held
/// long-poll is silent by design, so without probes a vanished peer would go unnoticed until
/// the poll's own deadline. One probe a second per held connection is a few dozen bytes.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(1);

/// How long an HTTP/2 CA connection may go without a frame from the CA before we PING it. A held
/// long-poll carries nothing for up to half a minute, so this is what notices a vanished peer
/// in under a second and a half (with [`PING_TIMEOUT`]). Two tiny frames a second per held
/// poll: a fleet of 4,000 sidecars costs a replica some 8,000 PINGs a second.
pub(super) const PING_EVERY: Duration = Duration::from_millis(500);

/// How long a PING may go unanswered before the connection is dropped. The CA answers PINGs in
/// its connection task, apart from any signing or database work, so a whole second is room for
/// a busy replica on a loaded host, not a false alarm.
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// `TCP_USER_TIMEOUT` on CA connections: how long sent data or a keepalive probe may stay
/// unacknowledged before the kernel drops the connection (Linux: it replaces the probe count).
/// With [`KEEPALIVE`], a peer that stopped answering is dropped about two seconds after the
/// last thing it acknowledged (the first probe goes at one second, the check at the next finds
/// it unanswered past this); a request that is never acknowledged fails after this long.
pub(super) const USER_TIMEOUT: Duration = Duration::from_millis(1500);

/// The rustls client config of CA calls, built once per trust bundle and credential and then
/// shared by every call made with both: the CRL long-poll alone calls every 30 s (every second
/// while the CRL is stale), and each build parses the bundle's roots and loads our key. One
/// slot: a sidecar calls with its current credential (or, before its first, with none), and
/// the rare call that differs (a bundle fetch, an enrollment after a refused renewal) simply
/// rebuilds.
#[derive(Default)]
pub(super) struct TlsConfigs(Mutex<Option<Built>>);

/// A config and what it was built from.
struct Built {
    /// The bundle's roots, in order.
    roots: Vec<CertificateDer<'static>>,
    /// The credential presented, by identity: a `Weak` keeps its allocation (so no later
    /// credential can take its address) without keeping its key alive.
    creds: Option<Weak<Credentials>>,
    config: Arc<rustls::ClientConfig>,
}

impl Built {
    fn is_for(&self, bundle: &TrustBundle, creds: Option<&Arc<Credentials>>) -> bool {
        let same_creds = match (&self.creds, creds) {
            (None, None) => true,
            (Some(built), Some(c)) => std::ptr::eq(built.as_ptr(), Arc::as_ptr(c)),
            _ => false,
        };
        same_creds && bundle.roots().iter().map(|r| &r.der).eq(self.roots.iter())
    }
}

impl TlsConfigs {
    /// The config for a call verifying the CA against `bundle` and presenting `creds` (a
    /// renewal, a poll that reports our state) or nothing (an enrollment, a bundle fetch).
    pub(super) fn get(
        &self,
        bundle: &TrustBundle,
        creds: Option<&Arc<Credentials>>,
    ) -> Result<Arc<rustls::ClientConfig>, CaClientError> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(built) = slot.as_ref().filter(|b| b.is_for(bundle, creds)) {
            return Ok(built.config.clone());
        }
        let config = tls_config(bundle, creds.map(|c| &**c))?;
        *slot = Some(Built {
            roots: bundle.roots().iter().map(|r| r.der.clone()).collect(),
            creds: creds.map(Arc::downgrade),
            config: config.clone(),
        });
        Ok(config)
    }
}

/// A new rustls client config for CA calls: TLS 1.3, `bundle`'s roots, `creds`' certificate or
/// none.
fn tls_config(
    bundle: &TrustBundle,
    creds: Option<&Credentials>,
) -> Result<Arc<rustls::ClientConfig>, CaClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for r in bundle.roots() {
        let _ = roots.add(r.der.clone());
    }
    let builder = rustls::ClientConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaClientError::BadAnswer(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match creds {
        Some(c) => {
            let (chain, key) = c.chain_and_key();
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| CaClientError::BadAnswer(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    // HTTP/2 first, for its PINGs (see the module doc); HTTP/1.1 for a CA that offers no h2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Every call a full handshake, as when each call built its own config: the config now
    // outlives a call, and a resumed session would skip the CA's check of our certificate.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A connection to `target` that has taken its TLS handshake, ready for one call.
pub(super) enum Session {
    /// The CA did not offer h2.
    Http1(http1::SendRequest<Full<Bytes>>),
    /// h2, with PINGs.
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Session {
    /// Sends `req` (to `path` at `target`) and waits for the response head.
    async fn send(
        &mut self,
        target: &Target,
        path: &str,
        req: http::request::Builder,
        body: Full<Bytes>,
    ) -> Result<http::Response<Incoming>, Miss> {
        let built = |req: http::request::Builder| req.body(body).map_err(broken);
        match self {
            // Origin form and a Host field, as HTTP/1.1 has it.
            Session::Http1(s) => {
                let req = req
                    .uri(path)
                    .header(http::header::HOST, target.authority.as_str());
                s.send_request(built(req)?).await.map_err(broken)
            }
            // Absolute form: h2 carries the scheme and authority as pseudo-header fields.
            Session::Http2(s) => {
                let req = req.uri(format!("https://{}{path}", target.authority));
                s.send_request(built(req)?).await.map_err(broken)
            }
        }
    }
}

/// Connects to `target`: TCP (tuned by [`tune`]), TLS and an HTTP/2 or HTTP/1.1 session
/// ([`open`]), within [`CONNECT_TIMEOUT`].
pub(super) async fn connect(
    target: &Target,
    config: Arc<rustls::ClientConfig>,
) -> Result<Session, Miss> {
    tokio::time::timeout(CONNECT_TIMEOUT, open(target, config))
        .await
        .map_err(|_| Miss::Timeout {
            what: "connection",
            after: CONNECT_TIMEOUT,
        })?
}

/// Sends `call` on `session` (a connection to `target`) and reads the whole answer within
/// the call's timeout, whatever its status (judging it is the caller's part).
pub(super) async fn ask(
    mut session: Session,
    target: &Target,
    call: &Call<'_>,
) -> Result<Answer, Miss> {
    let mut req = Request::builder().method(call.method.clone());
    for (k, v) in call.headers {
        req = req.header(*k, *v);
    }
    if call.json.is_some() {
        req = req.header(http::header::CONTENT_TYPE, wire::JSON_CONTENT_TYPE);
    }
    let body = Full::new(Bytes::from(call.json.clone().unwrap_or_default()));
    let answer = async {
        let resp = session.send(target, call.path, req, body).await?;
        let (parts, body) = resp.into_parts();
        let bytes = read_limited(body, wire::MAX_RESPONSE_BODY)
            .await
            .map_err(Miss::Connection)?;
        Ok((parts.status, parts.headers, bytes))
    };
    tokio::time::timeout(call.timeout, answer)
        .await
        .map_err(|_| Miss::Timeout {
            what: "answer",
            after: call.timeout,
        })?
}

/// Opens a TCP connection to `target` (tuned by [`tune`]), TLS over it, and an HTTP/2 session
/// (with PINGs) or, if the CA did not choose h2, an HTTP/1.1 one over that.
async fn open(target: &Target, config: Arc<rustls::ClientConfig>) -> Result<Session, Miss> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(broken)?;
    if let Err(e) = tune(&tcp) {
        // Still usable; only a vanished peer would be noticed later.
        tracing::debug!("CA connection to {}: socket options: {e}", target.shown);
    }
    let name = ServerName::try_from(target.host.clone()).map_err(broken)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(broken)?;
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(broken)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(Session::Http2(sender));
    }
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(broken)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Session::Http1(sender))
}

/// Sets the CA connection's socket options: no Nagle delay (one small request), and
/// [`KEEPALIVE`] with [`USER_TIMEOUT`] (where the platform has it) so the kernel drops the
/// connection soon after its peer goes silent.
pub(super) fn tune(tcp: &TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE);
    socket.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    Ok(())
}

/// A connection that could not be made or broke, with the causes the error wraps (hyper's
/// "connection error" says little without its I/O error underneath).
fn broken(e: impl std::error::Error) -> Miss {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    Miss::Connection(text)
}

/// Reads `body` to the end, refusing it as soon as it exceeds `limit` bytes (so a broken or
/// hostile CA cannot make us buffer without bound).
pub(super) async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(format!("answer larger than {limit} bytes")),
        Err(e) => Err(e.to_string()),
    }
}

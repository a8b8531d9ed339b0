//! Test harness for the sidecar: a real CA on a temp dir issuing real certificates, a real echo
//! app, and real sidecars started in-process on 127.0.0.1:0, configured from TOML built by the
//! `*_section` helpers; `ca_server.rs` serves that CA over HTTPS for sidecars in CA mode.
//! Metrics are read through `tether_testkit::metrics` and the accept-any client comes from
//! `tether_testkit::tls`, shared with the other suites.

// Every test binary includes this module and uses a different subset of it (re-exports of
// the submodules included).
#![allow(dead_code, unused_imports)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

mod ca_server;
pub mod hosts;
mod process;
pub use ca_server::*;
pub use process::*;

pub const TD: &str = "demo.tether";
/// The path of service-a's identity, the caller in most tests.
pub const SERVICE_A: &str = "ns/default/sa/service-a";
/// The path of service-b's identity, the callee in most tests.
pub const SERVICE_B: &str = "ns/default/sa/service-b";

/// A policy that allows service-a everything (for tests about connections, not policy).
pub const ALLOW_A: &str =
    "[[rule]]\nname = \"a\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\n";

/// A policy letting service-a reach `/data` and everything under it.
pub const DATA_POLICY: &str = r#"
[[rule]]
name = "a-data"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/data", "/data/*"]
"#;

pub fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

/// A CA in a temp dir.
pub struct Pki {
    pub dir: TempDir,
    pub ca: tether_ca::Authority,
}

impl Pki {
    pub fn new() -> Self {
        Self::with_domain(TD)
    }

    pub fn with_domain(td: &str) -> Self {
        Self::with_crl_validity(td, Duration::from_secs(86400))
    }

    /// Issues `spiffe://<td>/<path>` into a fresh directory and returns it.
    pub fn issue(&self, path: &str) -> PathBuf {
        let td = self.ca.trust_domain().as_str().to_string();
        let out = self.dir.path().join(path.replace('/', "_"));
        let sid = tether_certs::SpiffeId::parse(&format!("spiffe://{td}/{path}")).unwrap();
        self.ca
            .issue_to_dir(&sid, Duration::from_secs(3600), &out)
            .unwrap();
        out
    }

    /// Writes `toml` as this CA's `policy.toml` and returns its path.
    pub fn policy(&self, toml: &str) -> PathBuf {
        write_policy(self.dir.path(), "policy.toml", toml)
    }

    /// Starts a sidecar named `name` from `toml`, in this CA's temp dir.
    pub async fn start(&self, name: &str, toml: &str) -> Sidecar {
        Sidecar::start(self.dir.path(), name, toml).await
    }

    /// Starts an inbound sidecar `name` in front of `app` with the policy file `policy`:
    /// `identity` (an identity or CA section) and `[inbound]`, then `extra` (more `[inbound]`
    /// keys, or more sections).
    pub async fn start_inbound(
        &self,
        name: &str,
        identity: &str,
        app: SocketAddr,
        policy: &Path,
        extra: &str,
    ) -> Sidecar {
        let toml = format!("{identity}{}{extra}", inbound_section(app, policy));
        self.start(name, &toml).await
    }

    /// The CA's issuing intermediate, loaded from its state dir, for signing what the CA itself
    /// would refuse to (expired leaves, CRLs with chosen dates).
    pub fn intermediate(&self) -> tether_certs::issue::Signer {
        let state = self.ca.dir();
        let read = |p: &str| std::fs::read_to_string(state.join(p)).unwrap();
        tether_certs::issue::Signer::from_pem(
            &read("intermediate/cert.pem"),
            &read("intermediate/key.pem"),
        )
        .unwrap()
    }

    /// Writes the current CRL (PEM) and returns its path.
    pub fn crl(&self) -> PathBuf {
        let crl = self.ca.current_crl(Duration::ZERO).unwrap();
        let p = self.dir.path().join(format!("crl-{}.pem", crl.number));
        std::fs::write(&p, tether_certs::pem::encode("X509 CRL", &crl.der)).unwrap();
        p
    }

    /// Serial (hex) of the leaf in `dir/cert.pem`.
    pub fn serial(dir: &Path) -> tether_certs::Serial {
        let pem = std::fs::read(dir.join("cert.pem")).unwrap();
        let der = tether_certs::pem::certificates(&pem).unwrap().remove(0);
        tether_certs::svid::inspect_leaf(&der, None).unwrap().serial
    }
}

/// An HTTP/1.1 + h2c echo app. Answers JSON describing the request (headers, trailers, body); `/ws` accepts a WebSocket-ish
/// upgrade and echoes bytes; `/grpc` answers with trailers `grpc-status: 0`; `/slow` sleeps 2 s.
pub async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn app(mut req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if req.uri().path() == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
        return Ok(resp);
    }
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let collected = req.into_body().collect().await.ok();
    // The request's trailers, as a framework that merges them into the fields would see them.
    let trailers: serde_json::Map<String, serde_json::Value> = collected
        .as_ref()
        .and_then(|c| c.trailers())
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect()
        })
        .unwrap_or_default();
    let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let json = serde_json::json!({
        "method": method, "path": path, "version": version, "headers": headers,
        "trailers": trailers, "body": String::from_utf8_lossy(&body),
    });
    let bytes = Bytes::from(json.to_string());
    if path.starts_with("/grpc") {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(bytes)),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap());
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(bytes).boxed())
        .unwrap())
}

/// A running in-process sidecar.
pub struct Sidecar {
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub tcp: Vec<(String, SocketAddr)>,
    pub registry: prometheus::Registry,
    pub config_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), tether_proxy::StartError>>>,
}

impl Sidecar {
    /// Starts a sidecar from `toml` (written to `dir/<name>.toml`; relative paths resolve there).
    pub async fn start(dir: &Path, name: &str, toml: &str) -> Sidecar {
        // TETHER_TEST_LOG=debug shows the sidecars' logs in a failing test's output.
        if let Ok(filter) = std::env::var("TETHER_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, toml).unwrap();
        let cfg = tether_proxy::config::Config::load(&config_path, &Default::default()).unwrap();
        let listeners = tether_proxy::Listeners::bind(&cfg).await.unwrap();
        let addr = |l: &Option<TcpListener>| l.as_ref().map(|l| l.local_addr().unwrap());
        let (inbound, outbound, admin) = (
            addr(&listeners.inbound),
            addr(&listeners.outbound),
            addr(&listeners.admin),
        );
        let tcp = listeners
            .tcp
            .iter()
            .map(|(n, l)| (n.clone(), l.local_addr().unwrap()))
            .collect();
        let registry = prometheus::Registry::new();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tether_proxy::run(cfg, listeners, registry.clone(), async {
            let _ = rx.await;
        }));
        Sidecar {
            inbound,
            outbound,
            admin,
            tcp,
            registry,
            config_path,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) -> Result<(), tether_proxy::StartError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }

    /// The sum of the samples of metric `name` whose labels include all of `labels` (what
    /// `/metrics` would show; a counter never touched reads as zero).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("the registry encodes as text");
        tether_testkit::metrics::sum(&text, name, labels)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// An `[identity]` section for the credential directory `dir`.
pub fn identity_section(dir: &Path, crl: Option<&Path>) -> String {
    let mut s = format!(
        "[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n",
        dir.join("chain.pem"),
        dir.join("key.pem"),
        dir.join("bundle.pem")
    );
    if let Some(c) = crl {
        s.push_str(&format!("crl = {c:?}\n"));
    }
    s
}

/// `[inbound]` listening on 127.0.0.1:0 in front of `app`, with the policy file `policy`. More
/// `[inbound]` keys may follow it.
pub fn inbound_section(app: SocketAddr, policy: &Path) -> String {
    format!("[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\npolicy = {policy:?}\n")
}

/// `[outbound]` listening on 127.0.0.1:0.
pub const OUTBOUND_SECTION: &str = "[outbound]\nlisten = \"127.0.0.1:0\"\n";

/// `[admin]` listening on 127.0.0.1:0.
pub const ADMIN_SECTION: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// `[services.<name>]` at `addrs`, expecting the peer `spiffe://<TD>/<identity>`. More keys of
/// the service may follow it.
pub fn service_section(name: &str, addrs: &[SocketAddr], identity: &str) -> String {
    let addrs: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[services.{name}]\naddress = [{}]\nidentity = \"{}\"\n",
        addrs.join(", "),
        id(identity)
    )
}

/// A file-mode pair with certificates from a fresh CA: service-b's inbound sidecar (in front of
/// the echo app, with `policy` and any `b_extra` config appended) and service-a's outbound
/// sidecar that knows service-b. Returns the CA, b, a and the policy file's path.
pub async fn file_pair(policy: &str, b_extra: &str) -> (Pki, Sidecar, Sidecar, PathBuf) {
    file_pair_with(start_app().await, policy, b_extra, "").await
}

/// [`file_pair`] in front of the app at `app`, with `service_extra` appended to the outbound's
/// `[services.service-b]` section.
pub async fn file_pair_with(
    app: SocketAddr,
    policy: &str,
    b_extra: &str,
    service_extra: &str,
) -> (Pki, Sidecar, Sidecar, PathBuf) {
    let pki = Pki::new();
    let (bdir, adir) = (pki.issue(SERVICE_B), pki.issue(SERVICE_A));
    let pol = pki.policy(policy);
    let b = pki
        .start_inbound("b", &identity_section(&bdir, None), app, &pol, b_extra)
        .await;
    let service = service_section("service-b", &[b.inbound.unwrap()], SERVICE_B);
    let a_toml = format!(
        "{}{OUTBOUND_SECTION}{service}{service_extra}\n",
        identity_section(&adir, None)
    );
    let a = pki.start("a", &a_toml).await;
    (pki, b, a, pol)
}

/// Writes a policy file and returns its path.
pub fn write_policy(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, toml).unwrap();
    p
}

/// A plain HTTP/1.1 client for the outbound listener and admin.
pub fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET `http://{addr}{path}` with `Host: host`; returns status and body.
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    send(addr, host, "GET", path, headers, "").await
}

/// Any method, HTTP/1.1 to a plain listener.
pub async fn send(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = http_client()
        .request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GET through a plain listener; `None` if the connection failed (for load loops that count
/// failures instead of panicking).
pub async fn try_get(addr: SocketAddr, host: &str, path: &str) -> Option<StatusCode> {
    let req = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = http_client().request(req).await.ok()?;
    let status = resp.status();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// Parses the echo app's JSON answer.
pub fn echo(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the echo app's JSON ({e}): {body}"))
}

/// The chain and key in the credential directory `dir` (`chain.pem`, `key.pem`).
pub fn credential(
    dir: &Path,
) -> (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let chain = tether_certs::pem::certificates(&read("chain.pem")).unwrap();
    let key = tether_certs::pem::private_key(&read("key.pem")).unwrap();
    (chain, key)
}

/// A rustls client config presenting the credential in `dir` (chain + key) and trusting any server
/// certificate (these tests look at what the *server* decides).
pub fn raw_client_config(dir: Option<&Path>) -> Arc<rustls::ClientConfig> {
    tether_testkit::tls::accept_any_client(dir.map(credential), b"http/1.1")
}

/// Connects straight to a sidecar's inbound with `config`, sends one HTTP/1.1 GET and returns the
/// status, or the error text if the server refused the connection.
pub async fn raw_get(
    inbound: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<StatusCode, String> {
    let tcp = tokio::net::TcpStream::connect(inbound)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("peer").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "peer")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // In TLS 1.3 a rejected client certificate shows up on the first read, i.e. here.
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status())
}

/// [`raw_get`] presenting the credential in `cred`.
pub async fn raw_get_as(
    inbound: SocketAddr,
    cred: &Path,
    path: &str,
) -> Result<StatusCode, String> {
    raw_get(inbound, raw_client_config(Some(cred)), path).await
}

/// The next bodiless request head from a raw HTTP/1.1 connection (for apps that answer by
/// hand), read into `buf` and taken out of it with its blank line; `None` once the client has
/// closed. Bytes after the head stay in `buf` for the next call.
pub async fn read_head(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(buf.drain(..i + 4).collect());
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads exactly `n` bytes from `tcp`, failing the test if they do not come within 5 s.
pub async fn read_exactly(tcp: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

/// Reads `tcp` until the peer closes it (failing the test if that takes over 5 s) and returns
/// how many bytes came; a read error counts as none.
pub async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Polls the synchronous check `f` until it returns true or `within` passes
/// ([`tether_testkit::wait::eventually`] for a check that is a future).
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    tether_testkit::wait::eventually(within, || std::future::ready(f())).await
}

/// Writes `head` (request line and fields, `Connection: close` added), then `body` as it is,
/// on a real socket, and returns the status code and the response body.
pub async fn raw_exchange<S>(mut s: S, head: &str, body: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("{head}Connection: close\r\n\r\n{body}");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .ok();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// [`raw_exchange`] with `a`'s outbound listener.
pub async fn raw_to_outbound(a: &Sidecar, head: &str, body: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(a.outbound.unwrap())
        .await
        .unwrap();
    raw_exchange(tcp, head, body).await
}

/// [`raw_exchange`] straight at `b`'s inbound, over mTLS as service-a.
pub async fn raw_to_inbound(pki: &Pki, b: &Sidecar, head: &str, body: &str) -> (u16, String) {
    let a_dir = pki.issue(SERVICE_A);
    let config = raw_client_config(Some(&a_dir));
    let tls = tls_connect(b.inbound.unwrap(), config).await.unwrap();
    raw_exchange(tls, head, body).await
}

impl Pki {
    /// A CA for `td` whose CRLs are valid for `crl_validity` (it re-signs at half of it), so a
    /// test can let a sidecar's CRL go stale in seconds.
    pub fn with_crl_validity(td: &str, crl_validity: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ca");
        tether_ca::Authority::init(
            &state,
            &tether_ca::InitOptions {
                trust_domain: tether_certs::TrustDomain::new(td).unwrap(),
                root_ttl: Duration::from_secs(86400 * 30),
                intermediate_ttl: Duration::from_secs(86400 * 10),
                extra_sans: vec![],
                settings: tether_ca::Settings {
                    default_ttl: Duration::from_secs(3600),
                    max_ttl: Duration::from_secs(86400),
                    crl_validity,
                },
                database: None,
            },
        )
        .unwrap();
        let ca = tether_ca::Authority::open(&state).unwrap();
        Pki { dir, ca }
    }

    /// Writes (atomically, so a watching sidecar never reads half of it) an empty CRL numbered
    /// `number`, signed by the real intermediate, with thisUpdate and nextUpdate at these offsets
    /// from now, to `name` in the temp dir; returns its path.
    pub fn write_crl(
        &self,
        name: &str,
        number: u64,
        this_update_in: time::Duration,
        next_update_in: time::Duration,
    ) -> PathBuf {
        let now = time::OffsetDateTime::now_utc();
        let der = tether_certs::crl::build(
            &self.intermediate(),
            number,
            now + this_update_in,
            now + next_update_in,
            &[],
        )
        .unwrap();
        let p = self.dir.path().join(name);
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, tether_certs::pem::encode("X509 CRL", &der)).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

/// `GET /identity` on the admin listener `admin`, parsed.
pub async fn admin_identity(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = get(admin, "admin", "/identity", &[]).await;
    serde_json::from_str(&body).unwrap()
}

/// Whether `GET /ready` on the admin listener `admin` answers 200 (false while nothing listens).
pub async fn admin_ready(admin: SocketAddr) -> bool {
    try_get(admin, "admin", "/ready").await == Some(StatusCode::OK)
}

impl Sidecar {
    /// `GET /identity`, parsed.
    pub async fn identity(&self) -> serde_json::Value {
        admin_identity(self.admin.unwrap()).await
    }

    /// Whether `GET /ready` answers 200.
    pub async fn is_ready(&self) -> bool {
        admin_ready(self.admin.unwrap()).await
    }

    /// The sum of the samples of `name` with `labels`, as `GET /metrics` serves them over HTTP
    /// (not read from the registry behind the listener's back).
    pub async fn scraped(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = get(self.admin.unwrap(), "admin", "/metrics", &[]).await;
        tether_testkit::metrics::sum(&text, name, labels)
    }
}

/// service-b's inbound sidecar in file mode (a fresh certificate, allow-all policy, admin
/// listener) reading the CRL file `crl` with a 1 s grace, and any more `[identity]` keys in
/// `extra`.
pub async fn start_file_mode_b(pki: &Pki, crl: &Path, extra: &str) -> Sidecar {
    let app = start_app().await;
    let bdir = pki.issue(SERVICE_B);
    let credentials = format!(
        "{}crl_grace = \"1s\"\n{extra}",
        identity_section(&bdir, Some(crl))
    );
    let pol = pki.policy("[[rule]]\nname = \"all\"\nfrom = [\"spiffe://demo.tether/*\"]\n");
    pki.start_inbound("b", &credentials, app, &pol, ADMIN_SECTION)
        .await
}

/// [`start_app`], also recording the target (path and query) of every request it receives, so
/// a test can show what never reached the app.
pub async fn start_recording_app() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let target = req.uri().path_and_query().map(|p| p.to_string());
                    let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                    seen.push(target.unwrap_or_default());
                    app(req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A plaintext HTTP/2 (h2c, prior knowledge) connection to `addr`, as an app speaks to its
/// outbound; the connection task runs in the background.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A TLS connection to `addr` with `config` (the test clients accept any server certificate,
/// so the name is only for SNI).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("service-b").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

//! Test harness for the sidecar: a real CA on a temp dir issuing real certificates, a real echo
//! app, and real sidecars started in-process on 127.0.0.1:0.
#![allow(dead_code)]

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

pub const TD: &str = "demo.tether";

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
                    crl_validity: Duration::from_secs(86400),
                },
            },
        )
        .unwrap();
        let ca = tether_ca::Authority::open(&state).unwrap();
        Pki { dir, ca }
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

/// An HTTP/1.1 + h2c echo app. Answers JSON describing the request; `/ws` accepts a WebSocket-ish
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
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "method": method, "path": path, "version": version, "headers": headers,
        "body": String::from_utf8_lossy(&body),
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

    /// The sum of the samples of metric `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for family in self.registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let matches = labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                });
                if matches {
                    // A family is either counters or gauges; the other reads as zero.
                    total += m.get_counter().get_value() + m.get_gauge().get_value();
                }
            }
        }
        total
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
    let bdir = pki.issue("ns/default/sa/service-b");
    let adir = pki.issue("ns/default/sa/service-a");
    let pol = write_policy(pki.dir.path(), "policy.toml", policy);
    let b = Sidecar::start(
        pki.dir.path(),
        "b",
        &format!(
            "{}\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\npolicy = {pol:?}\n{b_extra}",
            identity_section(&bdir, None)
        ),
    )
    .await;
    let a = Sidecar::start(
        pki.dir.path(),
        "a",
        &format!(
            "{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.service-b]\naddress = [\"{}\"]\nidentity = \"{}\"\n{service_extra}\n",
            identity_section(&adir, None),
            b.inbound.unwrap(),
            id("ns/default/sa/service-b")
        ),
    )
    .await;
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

/// A rustls client config presenting the credential in `dir` (chain + key) and trusting any server
/// certificate (these tests look at what the *server* decides).
pub fn raw_client_config(dir: Option<&Path>) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny));
    let mut c = match dir {
        Some(d) => {
            let chain =
                tether_certs::pem::certificates(&std::fs::read(d.join("chain.pem")).unwrap())
                    .unwrap();
            let key =
                tether_certs::pem::private_key(&std::fs::read(d.join("key.pem")).unwrap()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
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

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &tether_certs::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &tether_certs::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tether_certs::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Polls `f` every 50 ms until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

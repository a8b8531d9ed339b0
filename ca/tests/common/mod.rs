//! Shared fixtures for the `tether-ca` integration tests: a real CA state directory in a tempdir,
//! the real HTTPS API started in-process on 127.0.0.1:0, a real TLS client (tokio-rustls + hyper,
//! HTTP/1.1 or h2, with or without a client certificate) that trusts the CA's `bundle.pem`, and
//! a way to run the real `tether-ca` binary. The Prometheus parser, the x509 helpers and the
//! optional-tool check come from `tether_testkit`, shared with the other suites.

// Every test binary includes this module and uses a different subset of it (re-exports
// from the test kit included).
#![allow(dead_code, unused_imports)]

pub mod db_proxy;
pub mod procs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use tether_ca::{Authority, InitOptions};
use tether_certs::{SpiffeId, TrustDomain};
pub use tether_testkit::metrics::metric;
pub use tether_testkit::pki::{ders, signed_by, DAY, HOUR};
pub use tether_testkit::tools::have;
pub use tether_testkit::wait::eventually;

/// The trust domain every test CA speaks for.
pub const TD: &str = "test.tether";

/// `spiffe://test.tether{path}`.
pub fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).expect("test SPIFFE IDs are valid")
}

/// The options `tether-ca init` uses by default ([`InitOptions::with_defaults`]).
pub fn init_options(td: &str) -> InitOptions {
    InitOptions::with_defaults(TrustDomain::new(td).expect("test trust domains are valid"))
}

/// Creates a CA for `td` in `parent/ca` and returns that path.
pub fn init_state_td(parent: &Path, td: &str) -> PathBuf {
    let dir = parent.join("ca");
    Authority::init(&dir, &init_options(td)).expect("init a fresh state dir");
    dir
}

/// Creates a CA for [`TD`] in `parent/ca` and returns that path.
pub fn init_state(parent: &Path) -> PathBuf {
    init_state_td(parent, TD)
}

pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A CA with its API running in-process.
pub struct TestCa {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub authority: Arc<Authority>,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestCa {
    /// Inits a fresh state dir and serves it on 127.0.0.1:0.
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = init_state(tmp.path());
        Self::serve(tmp, dir).await
    }

    /// Serves an existing state dir.
    pub async fn serve(tmp: tempfile::TempDir, dir: PathBuf) -> Self {
        let authority = Arc::new(Authority::open(&dir).expect("open the state dir"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let run = tether_ca::api::run(
            listener,
            authority.clone(),
            prometheus::Registry::new(),
            async move {
                let _ = rx.await;
            },
        );
        tokio::spawn(async move {
            if let Err(e) = run.await {
                panic!("the CA API failed: {e}");
            }
        });
        TestCa {
            tmp,
            dir,
            authority,
            addr,
            shutdown: Some(tx),
        }
    }

    /// A client without a certificate.
    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.dir.join("bundle.pem"), None)
    }

    /// A client presenting the CA's admin credential.
    pub fn admin(&self) -> Client {
        self.client_with(
            &read(self.dir.join("admin/chain.pem")),
            &read(self.dir.join("admin/key.pem")),
        )
    }

    /// A client presenting `chain_pem` with `key_pem`.
    pub fn client_with(&self, chain_pem: &str, key_pem: &str) -> Client {
        Client::new(
            self.addr,
            &self.dir.join("bundle.pem"),
            Some((chain_pem.to_string(), key_pem.to_string())),
        )
    }

    /// A client presenting the credential `cred` obtained by enrollment.
    pub fn client_as(&self, cred: &Enrolled) -> Client {
        self.client_with(&cred.chain, &cred.key_pem())
    }

    /// A client presenting the credential in `dir` (`chain.pem` + `key.pem`, as
    /// `Authority::issue_to_dir` writes them).
    pub fn client_from_dir(&self, dir: &Path) -> Client {
        self.client_with(&read(dir.join("chain.pem")), &read(dir.join("key.pem")))
    }

    /// Every certificate this CA has issued, as its store lists them.
    pub fn issued(&self) -> Vec<tether_ca::store::IssuedRecord> {
        self.authority.list(None).expect("list issued certificates")
    }

    /// A one-time token for `id`, valid 10 minutes.
    pub fn token(&self, id: &SpiffeId) -> String {
        self.authority
            .create_token(id, Duration::from_secs(600))
            .expect("create token")
    }

    /// Enrolls `id` over the API (token + fresh key) and returns the credential.
    pub async fn enroll(&self, id: &SpiffeId) -> Enrolled {
        let token = self.token(id);
        let key = tether_certs::keys::generate_key().expect("key");
        let csr = tether_certs::keys::generate_csr(&key, id).expect("csr");
        let resp = self.client().enroll(&token, &csr).await;
        assert_eq!(resp.status, StatusCode::OK, "enroll: {}", resp.text());
        Enrolled::from_response(&resp.json(), key)
    }

    /// How many of the certificates this CA has issued match `pred`.
    pub fn count_issued(&self, pred: impl Fn(&tether_ca::store::IssuedRecord) -> bool) -> usize {
        self.issued().iter().filter(|r| pred(r)).count()
    }

    /// Whether no certificate this CA issued is marked revoked.
    pub fn nothing_revoked(&self) -> bool {
        self.issued().iter().all(|r| r.revoked_at.is_none())
    }

    /// The newest CRL served by the API, verified against the intermediate.
    pub async fn fetch_crl(&self) -> tether_certs::RevocationList {
        let resp = self.client().get("/v1/crl").await;
        assert_eq!(resp.status, StatusCode::OK, "GET /v1/crl: {}", resp.text());
        self.verify_crl(&resp.body)
    }

    /// Parses and verifies a CRL (PEM or DER) against `DIR/intermediate/cert.pem`.
    pub fn verify_crl(&self, crl: &[u8]) -> tether_certs::RevocationList {
        verify_crl_in(&self.dir, crl)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Parses and verifies a CRL against the intermediate of the state dir `dir`.
pub fn verify_crl_in(dir: &Path, crl: &[u8]) -> tether_certs::RevocationList {
    let inter = tether_certs::pem::certificates(read(dir.join("intermediate/cert.pem")).as_bytes())
        .expect("intermediate cert")
        .remove(0);
    tether_certs::RevocationList::parse_and_verify(crl, &inter).expect("CRL verifies")
}

/// A credential obtained by enrollment.
pub struct Enrolled {
    pub id: String,
    pub serial: String,
    pub key: KeyPair,
    pub certificate: String,
    pub chain: String,
}

impl Enrolled {
    pub fn from_response(body: &Value, key: KeyPair) -> Self {
        let s = |k: &str| {
            body[k]
                .as_str()
                .unwrap_or_else(|| panic!("response has no string {k}: {body}"))
                .to_string()
        };
        Enrolled {
            id: s("spiffe_id"),
            serial: s("serial"),
            key,
            certificate: s("certificate"),
            chain: s("chain"),
        }
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// What a certificate says, read with x509-parser.
#[derive(Debug)]
pub struct CertFacts {
    pub serial: tether_certs::Serial,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub other_sans: usize,
    pub basic_constraints_ca: Option<bool>,
    pub key_cert_sign: bool,
    pub public_key: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
}

/// Facts about the first certificate in `pem`.
pub fn cert_facts(pem: &str) -> CertFacts {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let der = tether_certs::pem::certificates(pem.as_bytes())
        .expect("PEM certificate")
        .remove(0);
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&der).expect("certificate parses");
    let mut facts = CertFacts {
        serial: tether_certs::Serial::from_bytes(cert.raw_serial()),
        uris: vec![],
        dns: vec![],
        other_sans: 0,
        basic_constraints_ca: None,
        key_cert_sign: false,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => facts.uris.push(u.to_string()),
                        GeneralName::DNSName(d) => facts.dns.push(d.to_string()),
                        _ => facts.other_sans += 1,
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => facts.basic_constraints_ca = Some(bc.ca),
            ParsedExtension::KeyUsage(ku) => facts.key_cert_sign = ku.key_cert_sign(),
            _ => {}
        }
    }
    facts
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `error` message of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_string()
    }

    /// Fails the test unless the response has `status` and a JSON error message that mentions
    /// `needle`.
    pub fn assert_error(&self, status: StatusCode, needle: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let error = self.error();
        assert!(error.contains(needle), "{error}");
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }
}

/// A TLS client for the CA API that trusts a bundle file and optionally presents a certificate.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl Client {
    /// The address it connects to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn new(addr: SocketAddr, bundle: &Path, identity: Option<(String, String)>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in tether_certs::pem::certificates(read(bundle).as_bytes()).expect("bundle PEM") {
            roots.add(cert).expect("bundle root is usable");
        }
        let identity = identity.map(|(chain, key)| {
            (
                tether_certs::pem::certificates(chain.as_bytes()).expect("client chain PEM"),
                Arc::new(tether_certs::pem::private_key(key.as_bytes()).expect("client key PEM")),
            )
        });
        Client {
            addr,
            roots: Arc::new(roots),
            identity,
        }
    }

    fn config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(tether_certs::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported")
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .expect("client credential is usable"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// A TLS connection to the API (server name `localhost`) negotiating `alpn`.
    pub async fn connect(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        TlsConnector::from(self.config(alpn))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake with the CA API")
    }

    /// Sends one request over a fresh HTTP/1.1 connection.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        self.try_send(req).await.expect("HTTP/1.1 request")
    }

    /// Like [`Client::send`], returning transport errors instead of panicking.
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Resp, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = TlsConnector::from(self.config(b"http/1.1"))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        read_response(resp).await
    }

    /// Sends one request over a fresh h2 connection (ALPN `h2`).
    pub async fn send_h2(&self, mut req: Request<Full<Bytes>>) -> Resp {
        let tls = self.connect(b"h2").await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the CA API negotiates h2"
        );
        // h2 needs :scheme and :authority.
        let path = req.uri().path_and_query().map(|p| p.to_string());
        *req.uri_mut() = format!("https://localhost{}", path.unwrap_or_default())
            .parse()
            .expect("uri");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("h2 request");
        read_response(resp).await.expect("h2 body")
    }

    /// `GET path` over a fresh HTTP/1.1 connection, returning transport errors instead of
    /// panicking.
    pub async fn try_get(&self, path: &str) -> Result<Resp, String> {
        self.try_send(request(Method::GET, path, Bytes::new()))
            .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(request(Method::GET, path, Bytes::new())).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.post_bytes(path, serde_json::to_vec(body).expect("JSON"))
            .await
    }

    /// `POST /v1/enroll` with a one-time `token` and a PEM `csr`.
    pub async fn enroll(&self, token: &str, csr: &str) -> Resp {
        let body = serde_json::json!({"token": token, "csr": csr});
        self.post_json("/v1/enroll", &body).await
    }

    /// `POST /v1/renew` with a PEM `csr`, authenticated by this client's certificate (if any).
    pub async fn renew(&self, csr: &str) -> Resp {
        self.post_json("/v1/renew", &serde_json::json!({ "csr": csr }))
            .await
    }

    /// `POST /v1/revoke` with `body` (a serial or an identity, and options).
    pub async fn revoke(&self, body: &Value) -> Resp {
        self.post_json("/v1/revoke", body).await
    }

    pub async fn post_bytes(&self, path: &str, body: impl Into<Bytes>) -> Resp {
        let mut req = request(Method::POST, path, body.into());
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.send(req).await
    }

    /// Writes `raw` (a complete HTTP/1.1 request that asks for `Connection: close`) and returns
    /// everything the server answers until it closes.
    pub async fn raw_http1(&self, raw: &[u8]) -> String {
        let mut tls = self.connect(b"http/1.1").await;
        tls.write_all(raw).await.expect("write request");
        tls.flush().await.expect("flush");
        let mut out = Vec::new();
        // The server may close without close_notify after answering; what was read counts.
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A request for `path` with a Host header.
pub fn request(method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .body(Full::new(body))
        .expect("request")
}

async fn read_response(resp: http::Response<hyper::body::Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// [`ca_cli`] off the async runtime, so that an API served in-process keeps answering meanwhile.
pub async fn ca_cli_async(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ca_cli(&dir, &refs)
    })
    .await
    .expect("the tether-ca task")
}

/// The `tether-ca` binary with no `TETHER_CA_*` variables inherited from the environment.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether-ca"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TETHER_CA_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("TETHER_LOG");
    cmd
}

/// Runs `tether-ca --state-dir DIR ARGS…` and returns its output.
pub fn ca_cli(dir: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run tether-ca")
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The private keys of one CA generation, relative to its directory.
pub const GENERATION_KEYS: [&str; 4] = [
    "root/key.pem",
    "intermediate/key.pem",
    "server/key.pem",
    "admin/key.pem",
];

/// Fails the test unless every key of the generation in `dir` is 0600 and `dir` and the
/// directories holding the keys are 0700.
pub fn assert_private_generation(dir: &Path) {
    for key in GENERATION_KEYS {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key} mode");
    }
    for sub in ["", "root", "intermediate", "server", "admin"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}/ mode");
    }
}

/// Runs `tether-ca --state-dir DIR issue ID --out OUT EXTRA…` and returns its output.
pub fn ca_issue(dir: &Path, id: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["issue", id, "--out", out.to_str().expect("UTF-8 temp path")];
    args.extend_from_slice(extra);
    ca_cli(dir, &args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `openssl ARGS…`, fails the test (naming `what`, with both streams) unless it
/// succeeded, and returns its output.
pub fn openssl_ok(what: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let o = Command::new("openssl")
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("run openssl");
    assert_ok(&o, what);
    o
}

/// Panics with both streams unless `o` succeeded.
pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

// ---------------------------------------------------------------------------------------------
// Identity lifecycle: sidecar polls, the fleet, rotation.
// ---------------------------------------------------------------------------------------------

impl TestCa {
    /// Inits a state dir with `opts` and serves it on 127.0.0.1:0.
    pub async fn start_with(opts: InitOptions) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        Authority::init(&dir, &opts).expect("init a fresh state dir");
        Self::serve(tmp, dir).await
    }

    /// A client that trusts exactly the roots in `bundle_pem` (no client certificate).
    pub fn client_trusting(&self, bundle_pem: &str) -> Client {
        let path = self.tmp.path().join(format!("trust-{}.pem", rand_suffix()));
        std::fs::write(&path, bundle_pem).expect("write bundle");
        Client::new(self.addr, &path, None)
    }

    /// A client presenting `chain_pem`/`key_pem` that trusts exactly `bundle_pem`.
    pub fn client_trusting_with(&self, bundle_pem: &str, chain_pem: &str, key_pem: &str) -> Client {
        let path = self.tmp.path().join(format!("trust-{}.pem", rand_suffix()));
        std::fs::write(&path, bundle_pem).expect("write bundle");
        Client::new(
            self.addr,
            &path,
            Some((chain_pem.to_string(), key_pem.to_string())),
        )
    }
}

fn rand_suffix() -> String {
    tether_certs::Serial::random().to_string()
}

/// `GET /v1/crl?{query}` as a sidecar sends it: with its instance id and bundle version when
/// given (and its client certificate, if `client` has one).
pub async fn poll_crl(
    client: &Client,
    query: &str,
    instance: Option<&str>,
    bundle_version: Option<u64>,
) -> Resp {
    let mut req = request(Method::GET, &format!("/v1/crl?{query}"), Bytes::new());
    if let Some(i) = instance {
        req.headers_mut()
            .insert("x-tether-instance", i.parse().expect("header value"));
    }
    if let Some(v) = bundle_version {
        req.headers_mut().insert(
            "x-tether-bundle-version",
            v.to_string().parse().expect("header value"),
        );
    }
    client.send(req).await
}

/// [`poll_crl`] as sidecar `instance` that holds CRL number `after` and bundle version 1, without
/// waiting (what a sidecar sends to report in).
pub async fn poll_after(client: &Client, after: u64, instance: &str) -> Resp {
    poll_crl(client, &format!("after={after}"), Some(instance), Some(1)).await
}

/// A simulated sidecar: long-polls the CRL with its client certificate and re-polls with the
/// number of each CRL it receives (acknowledging it), until dropped.
pub struct Sidecar {
    pub instance: String,
    task: tokio::task::JoinHandle<()>,
}

impl Sidecar {
    /// Starts polling from CRL number `after`, reporting `bundle_version`.
    pub fn start(client: Client, instance: &str, after: u64, bundle_version: u64) -> Self {
        let name = instance.to_string();
        let task = tokio::spawn(async move {
            let mut after = after;
            loop {
                let r = poll_crl(
                    &client,
                    &format!("after={after}&wait=30s"),
                    Some(&name),
                    Some(bundle_version),
                )
                .await;
                if r.status == StatusCode::OK {
                    after = r
                        .header("x-tether-crl-number")
                        .expect("x-tether-crl-number")
                        .parse()
                        .expect("a number");
                }
            }
        });
        Sidecar {
            instance: instance.to_string(),
            task,
        }
    }

    /// Stops polling (the in-flight poll's connection is dropped).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the leaf chain `chain_pem` (leaf + intermediate) verifies as a client SVID against
/// exactly the roots in `bundle_pem`.
pub fn chains_to(chain_pem: &str, bundle_pem: &str) -> bool {
    use tether_certs::verify::{ExpectedPeer, Revocation, SvidVerifier};
    let bundle = tether_certs::TrustBundle::from_pem(bundle_pem.as_bytes()).expect("bundle");
    let chain = tether_certs::pem::certificates(chain_pem.as_bytes()).expect("chain");
    let (leaf, intermediates) = chain.split_first().expect("a leaf");
    let verifier = SvidVerifier::new(&bundle, Revocation::new(Default::default()));
    let (usage, now) = (
        tether_certs::svid::Usage::Client,
        rustls_pki_types::UnixTime::now(),
    );
    verifier
        .verify(leaf, intermediates, usage, now, &ExpectedPeer::AnyInBundle)
        .is_ok()
}

/// Splits a `GET /v1/crl` body into the CRL and the certificates that follow it (the signer,
/// then any cross-certificate of it), checks the CRL's signature against the first and that
/// every other one names the same subject, and returns them.
pub fn crl_and_signers(body: &[u8]) -> (tether_certs::RevocationList, Vec<Vec<u8>>) {
    let text = std::str::from_utf8(body).expect("PEM is text");
    assert!(
        text.starts_with("-----BEGIN X509 CRL-----"),
        "the CRL comes first: {text}"
    );
    let certs = ders(text);
    assert!(!certs.is_empty(), "the signer follows the CRL: {text}");
    let crl = tether_certs::RevocationList::parse_and_verify(body, &certs[0])
        .expect("the CRL verifies against the certificate served with it");
    for other in &certs[1..] {
        tether_certs::RevocationList::parse_and_verify(body, other)
            .expect("every certificate after the CRL certifies its signer's name and key");
    }
    (crl, certs)
}

/// [`crl_and_signers`] for a body with exactly one certificate after the CRL.
pub fn crl_and_signer(body: &[u8]) -> (tether_certs::RevocationList, Vec<u8>) {
    let (crl, mut certs) = crl_and_signers(body);
    assert_eq!(certs.len(), 1, "exactly one certificate follows the CRL");
    (crl, certs.remove(0))
}

/// `x-tether-bundle-version` of a response, as a number.
pub fn bundle_version(r: &Resp) -> u64 {
    r.header("x-tether-bundle-version")
        .unwrap_or_else(|| panic!("no x-tether-bundle-version on a {} response", r.status))
        .parse()
        .expect("x-tether-bundle-version is a number")
}

//! The probes: every way the demo looks at the mesh from outside. Plain-HTTP calls through a
//! sidecar as an app would make them, the sidecars' admin endpoints, waiting for something to
//! become true, a direct mTLS probe at a sidecar's inbound (with or without a client
//! certificate), curl and openssl for the same refusals, and summing Prometheus samples.
//!
//! The accept-any server verifier here repeats the one in the proxy's tests on purpose: the demo
//! depends on no crate of the workspace (design.md), so it cannot share a test kit.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use demo_services::http::get_via;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;

/// `127.0.0.1:port`: everything the demo starts listens on loopback.
pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `holds` every `every` until it is true or `within` has passed since `since`: how long
/// after `since` it first held, or None.
pub(crate) async fn eventually<F, Fut>(
    since: Instant,
    within: Duration,
    every: Duration,
    mut holds: F,
) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while since.elapsed() < within {
        if holds().await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// Whether something accepts connections on `port` within `within`.
pub(crate) async fn wait_port(port: u16, within: Duration) -> bool {
    let connects = || async move { tokio::net::TcpStream::connect(addr(port)).await.is_ok() };
    let every = Duration::from_millis(25);
    eventually(Instant::now(), within, every, connects)
        .await
        .is_some()
}

/// Whether the sidecar with admin `port` reports `/ready` within `within`.
pub(crate) async fn wait_ready(port: u16, within: Duration) -> bool {
    let ready = || async move { admin(port, "/ready").await.0 == 200 };
    let every = Duration::from_millis(50);
    eventually(Instant::now(), within, every, ready)
        .await
        .is_some()
}

/// `GET {path}` on a sidecar's admin `port`: status and body, (0, "") if unreachable.
pub(crate) async fn admin(port: u16, path: &str) -> (u16, String) {
    get_via(addr(port), "admin", path)
        .await
        .unwrap_or((0, String::new()))
}

/// `POST {path}` on a sidecar's admin `port`: the status, 0 if unreachable.
pub(crate) async fn post(port: u16, path: &str) -> u16 {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr(port)).await else {
        return 0;
    };
    let Ok((mut s, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
    else {
        return 0;
    };
    tokio::spawn(conn);
    let Ok(req) = hyper::Request::post(path)
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
    else {
        return 0;
    };
    s.send_request(req)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The sidecar's `/identity` document, Null if unreachable.
pub(crate) async fn identity(port: u16) -> Value {
    let (_, body) = admin(port, "/identity").await;
    json(&body)
}

/// The serial of the sidecar's current certificate, "" if unknown.
pub(crate) async fn serial(port: u16) -> String {
    text(&identity(port).await["serial"])
}

/// `body` as JSON, Null if it is not.
pub(crate) fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A JSON string's text, "" for anything else.
pub(crate) fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `GET {path}` with `Host: {host}` on `port`, as an app calls through its sidecar.
pub(crate) async fn call(port: u16, host: &str, path: &str) -> Result<(u16, String), String> {
    get_via(addr(port), host, path).await
}

/// Whether `GET /` for service-a on `port` (the gateway's outbound, or a replica's app) is 200.
pub(crate) async fn service_a_ok(port: u16) -> bool {
    matches!(call(port, "service-a", "/").await, Ok((200, _)))
}

/// What a run of user requests to service-a got back.
pub(crate) struct Sample {
    /// How many answered 200.
    pub(crate) ok: u32,
    /// The replicas that answered them.
    pub(crate) replicas: BTreeSet<String>,
    /// The last answer's JSON, or the last failure as a JSON string.
    pub(crate) last: Value,
}

/// Sends `n` user requests to service-a through the gateway's outbound `port`, one at a time.
pub(crate) async fn sample(port: u16, n: u32) -> Sample {
    let mut s = Sample {
        ok: 0,
        replicas: BTreeSet::new(),
        last: Value::Null,
    };
    for _ in 0..n {
        match call(port, "service-a", "/").await {
            Ok((200, body)) => {
                let j = json(&body);
                s.ok += 1;
                s.replicas.insert(text(&j["replica"]));
                s.last = j;
            }
            other => s.last = serde_json::json!(format!("{other:?}")),
        }
    }
    s
}

/// Users calling service-a through the gateway's outbound `port` back to back for `period`:
/// (answered 200, anything else).
pub(crate) async fn keep_calling(port: u16, period: Duration) -> (u32, u32) {
    let (mut ok, mut failed) = (0u32, 0u32);
    let until = Instant::now() + period;
    while Instant::now() < until {
        if service_a_ok(port).await {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

/// Sums the samples of `metric` by the value of `label` from Prometheus text: `k=v  k=v`.
pub(crate) fn sum_by(text: &str, metric: &str, label: &str) -> String {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
    {
        let Some((labels, value)) = line[metric.len()..].rsplit_once(' ') else {
            continue;
        };
        let key = labels
            .split(&['{', '}', ','][..])
            .find_map(|kv| kv.strip_prefix(&format!("{label}=\"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_default();
        *sums.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    sums.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// An mTLS GET straight at a sidecar's inbound with `creds` (a dir with cert/chain/key.pem) or no
/// certificate. Ok(status) if the server answered HTTP; Err(why) if it refused the connection.
pub(crate) async fn tls_get(to: SocketAddr, creds: Option<&Path>) -> Result<u16, String> {
    let config = client_config(creds)?;
    let tcp = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("service-b").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/data")
        .header("host", "service-b")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    // TLS 1.3: a refused client certificate shows up on the first read, i.e. here.
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("server closed the connection: {e}"))?;
    Ok(resp.status().as_u16())
}

/// A TLS 1.3 client config that accepts any server and presents `creds`, if any.
fn client_config(creds: Option<&Path>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match creds {
        Some(dir) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(dir.join("chain.pem"))
                    .map_err(|e| e.to_string())?
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
            let key =
                PrivateKeyDer::from_pem_file(dir.join("key.pem")).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The same two refusals seen by curl and openssl s_client, when they are installed.
pub(crate) fn external_clients(to: SocketAddr, foreign: &Path) -> Option<String> {
    let mut out = String::new();
    if let Ok(o) = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "5"])
        .arg(format!("https://{to}/data"))
        .output()
    {
        let err = String::from_utf8_lossy(&o.stderr);
        out.push_str(&format!(
            "      curl (no certificate): exit {} {}\n",
            o.status.code().unwrap_or(-1),
            err.trim()
        ));
    }
    if let Some(alert) = openssl_alert(to, foreign) {
        out.push_str(&format!("      openssl s_client (foreign CA): {alert}\n"));
    }
    (!out.is_empty()).then(|| out.trim_end().to_string())
}

/// The alert openssl s_client reports when it presents the `foreign` credentials to `to`.
fn openssl_alert(to: SocketAddr, foreign: &Path) -> Option<String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &to.to_string(), "-tls1_3", "-quiet"])
        .arg("-cert")
        .arg(foreign.join("cert.pem"))
        .arg("-cert_chain")
        .arg(foreign.join("chain.pem"))
        .arg("-key")
        .arg(foreign.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ =
            stdin.write_all(b"GET /data HTTP/1.1\r\nHost: service-b\r\nConnection: close\r\n\r\n");
    }
    let o = child.wait_with_output().ok()?;
    let err = String::from_utf8_lossy(&o.stderr);
    let alert = err.lines().find(|l| l.contains("alert"));
    Some(alert.unwrap_or("connection closed").trim().to_string())
}

/// Accepts any server certificate: these probes test what the *server* refuses, and they never
/// send anything secret.
#[derive(Debug)]
struct AnyServer;

/// What every signature check of [`AnyServer`] answers.
type Signature = Result<HandshakeSignatureValid, rustls::Error>;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &Der, _: &Dss) -> Signature {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(&self, _: &[u8], _: &Der, _: &Dss) -> Signature {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Short names that keep the two signature checks above on one line each.
type Der<'a> = CertificateDer<'a>;
type Dss = DigitallySignedStruct;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_by_adds_samples_with_the_same_label() {
        let text = "# HELP tether_requests_total x\n\
            tether_requests_total{direction=\"inbound\",code=\"200\"} 3\n\
            tether_requests_total{direction=\"outbound\",code=\"200\"} 4\n\
            tether_requests_total{code=\"403\",direction=\"inbound\"} 1\n\
            tether_requests_total_other{code=\"500\"} 9\n";
        assert_eq!(
            sum_by(text, "tether_requests_total", "code"),
            "200=7  403=1"
        );
        assert_eq!(sum_by(text, "tether_absent", "code"), "");
    }

    #[tokio::test]
    async fn eventually_reports_when_it_first_held() {
        let since = Instant::now();
        let mut calls = 0;
        let held = eventually(
            since,
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                let now = calls;
                async move { now == 3 }
            },
        )
        .await;
        assert!(held.is_some() && calls == 3);
        let never = || async { false };
        let gave_up = eventually(since, Duration::ZERO, Duration::from_millis(1), never).await;
        assert_eq!(gave_up, None);
    }
}

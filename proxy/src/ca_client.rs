//! The sidecar's client for the `tether-ca` HTTPS API: enroll, renew, CRL long-poll, bundle.
//!
//! URLs are tried in order; a URL that cannot be reached (connect, TLS or timeout) passes the call
//! to the next one, and the last one that answered is tried first next time. The CA's server
//! certificate is verified against our current trust bundle by DNS name or IP (it is a TLS server
//! certificate, not an SVID). Calls are rare (a renewal per half-lifetime, one long-poll at a
//! time), so each opens its own connection rather than keeping a pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Deserialize;

use tether_certs::TrustBundle;

use crate::identity::Credentials;

/// How long a plain CA call (enroll, renew, bundle) may take end to end.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a CA call failed.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// No URL could be reached.
    #[error("no CA reachable: {0}")]
    Unreachable(String),
    /// The CA answered with an error status.
    #[error("CA answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The CA's `error` message.
        message: String,
    },
    /// The CA's answer did not parse.
    #[error("unexpected answer from the CA: {0}")]
    BadAnswer(String),
}

/// A certificate the CA issued.
#[derive(Debug, Deserialize)]
pub struct Issued {
    /// Leaf + intermediate, PEM.
    pub chain: String,
    /// Trust bundle, PEM.
    pub bundle: String,
    /// Set when the CA shortened the lifetime to its intermediate's.
    pub note: Option<String>,
}

/// What a CRL poll returned.
#[derive(Debug)]
pub enum CrlPoll {
    /// A newer CRL: the PEM body (CRL, then the issuing CA certificate if the CA sends it).
    New {
        /// PEM text.
        pem: Bytes,
        /// The CA's bundle version, if it says.
        bundle_version: Option<u64>,
    },
    /// Nothing newer within the wait.
    NotModified {
        /// The CA's bundle version, if it says.
        bundle_version: Option<u64>,
    },
}

/// A CA API client with URL failover.
pub struct CaClient {
    urls: Vec<Uri>,
    preferred: AtomicUsize,
    instance: String,
}

impl CaClient {
    /// A client for `urls` (https). `instance` identifies this sidecar process in the CA's fleet
    /// table.
    pub fn new(urls: Vec<Uri>) -> Arc<Self> {
        use rand::Rng;
        let instance = format!("{:016x}", rand::thread_rng().gen::<u64>());
        Arc::new(CaClient {
            urls,
            preferred: AtomicUsize::new(0),
            instance,
        })
    }

    /// This process's fleet instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(
        &self,
        bundle: &TrustBundle,
        token: &str,
        csr: &str,
    ) -> Result<Issued, CaClientError> {
        let body = serde_json::json!({ "token": token, "csr": csr }).to_string();
        let (status, _, bytes) = self
            .call(
                bundle,
                None,
                Method::POST,
                "/v1/enroll",
                Some(body),
                &[],
                CALL_TIMEOUT,
            )
            .await?;
        issued(status, &bytes)
    }

    /// `POST /v1/renew`, authenticated with `creds` over mTLS.
    pub async fn renew(&self, creds: &Credentials, csr: &str) -> Result<Issued, CaClientError> {
        let body = serde_json::json!({ "csr": csr }).to_string();
        let (status, _, bytes) = self
            .call(
                &creds.bundle,
                Some(creds),
                Method::POST,
                "/v1/renew",
                Some(body),
                &[],
                CALL_TIMEOUT,
            )
            .await?;
        issued(status, &bytes)
    }

    /// `GET /v1/crl?after=N&wait=…`, reporting our state to the CA's fleet table.
    pub async fn poll_crl(
        &self,
        bundle: &TrustBundle,
        creds: Option<&Credentials>,
        after: u64,
        wait: Duration,
        bundle_version: u64,
    ) -> Result<CrlPoll, CaClientError> {
        let path = format!("/v1/crl?after={after}&wait={}s", wait.as_secs());
        let version = bundle_version.to_string();
        let headers = [
            ("x-tether-instance", self.instance.as_str()),
            ("x-tether-bundle-version", version.as_str()),
        ];
        let (status, h, bytes) = self
            .call(
                bundle,
                creds,
                Method::GET,
                &path,
                None,
                &headers,
                wait + CALL_TIMEOUT,
            )
            .await?;
        let bundle_version = h
            .get("x-tether-bundle-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match status {
            StatusCode::OK => Ok(CrlPoll::New {
                pem: bytes,
                bundle_version,
            }),
            StatusCode::NOT_MODIFIED => Ok(CrlPoll::NotModified { bundle_version }),
            s => Err(refused(s, &bytes)),
        }
    }

    /// `GET /v1/bundle`: the PEM and the CA's bundle version.
    pub async fn bundle(
        &self,
        bundle: &TrustBundle,
    ) -> Result<(Bytes, Option<u64>), CaClientError> {
        let (status, h, bytes) = self
            .call(
                bundle,
                None,
                Method::GET,
                "/v1/bundle",
                None,
                &[],
                CALL_TIMEOUT,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &bytes));
        }
        let v = h
            .get("x-tether-bundle-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((bytes, v))
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        bundle: &TrustBundle,
        creds: Option<&Credentials>,
        method: Method,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes), CaClientError> {
        let config = tls_config(bundle, creds)?;
        let n = self.urls.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let url = &self.urls[idx];
            let attempt = tokio::time::timeout(
                timeout,
                once(
                    url,
                    config.clone(),
                    method.clone(),
                    path,
                    body.clone(),
                    headers,
                ),
            )
            .await;
            match attempt {
                Ok(Ok(answer)) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(e)) => errors.push(format!("{url}: {e}")),
                Err(_) => errors.push(format!("{url}: timed out")),
            }
        }
        Err(CaClientError::Unreachable(errors.join("; ")))
    }
}

fn refused(status: StatusCode, bytes: &[u8]) -> CaClientError {
    let message = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).chars().take(200).collect());
    CaClientError::Refused { status, message }
}

fn issued(status: StatusCode, bytes: &[u8]) -> Result<Issued, CaClientError> {
    if status != StatusCode::OK {
        return Err(refused(status, bytes));
    }
    serde_json::from_slice(bytes).map_err(|e| CaClientError::BadAnswer(e.to_string()))
}

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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn once(
    url: &Uri,
    config: Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let host = url
        .host()
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder().method(method).uri(path).header(
        "host",
        url.authority().map(|a| a.as_str()).unwrap_or("localhost"),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, bytes))
}

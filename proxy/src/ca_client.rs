//! The sidecar's client for the `tether-ca` HTTPS API: enroll, renew, CRL long-poll, bundle.
//!
//! The contract (paths, bodies, header names, limits) is [`tether_certs::wire`], shared with the
//! CA. URLs are tried in order; a URL that cannot be reached (connect, TLS or timeout) or whose
//! answer cannot be read passes the call to the next one, and the last one that answered is
//! tried first next time. The CA's server certificate is verified against our current trust
//! bundle by DNS name or IP (it is a TLS server certificate, not an SVID). Calls are rare (a
//! renewal per half-lifetime, one long-poll at a time), so each opens its own connection rather
//! than keeping a pool. An answer is read up to [`wire::MAX_RESPONSE_BODY`]: a larger one is an
//! error, never an unbounded buffer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use tether_certs::wire::{self, EnrollRequest, ErrorBody, Issued, RenewRequest};
use tether_certs::TrustBundle;

use crate::identity::Credentials;

/// How long a plain CA call (enroll, renew, bundle) may take end to end: generous for a CA
/// signing under load, short enough that a hung replica passes the call to the next URL soon.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of a non-JSON error answer is quoted in the error: enough to recognise an HTML
/// error page, not enough to flood a log line.
const QUOTED_ERROR_CHARS: usize = 200;

/// Why a CA call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaClientError {
    /// The CA's answer did not parse.
    #[error("unexpected answer from the CA: {0}")]
    BadAnswer(String),
    /// The CA answered with an error status.
    #[error("CA answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The CA's `error` message.
        message: String,
    },
    /// No URL could be reached.
    #[error("no CA reachable: {0}")]
    Unreachable(String),
}

impl CaClientError {
    /// Whether the CA refused us (403): our certificate no longer counts, so a renewal should
    /// fall back to the enrollment token.
    pub(crate) fn is_forbidden(&self) -> bool {
        matches!(self, CaClientError::Refused { status, .. } if *status == StatusCode::FORBIDDEN)
    }
}

/// What a CRL poll returned.
#[derive(Debug)]
pub(crate) enum CrlPoll {
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

/// One request, as [`CaClient::call`] sends it to each URL in turn.
struct Call<'a> {
    method: Method,
    path: &'a str,
    /// A JSON body, if any.
    json: Option<String>,
    headers: &'a [(&'static str, &'a str)],
    timeout: Duration,
}

/// A CA answer: status, headers and the (size-limited) body.
type Answer = (StatusCode, HeaderMap, Bytes);

/// A CA API client with URL failover.
pub(crate) struct CaClient {
    urls: Vec<Uri>,
    preferred: AtomicUsize,
    /// Identifies this sidecar process in the CA's fleet table ([`wire::INSTANCE_HEADER`]).
    instance: String,
}

impl CaClient {
    /// A client for `urls` (https), with a fresh random fleet instance id.
    pub(crate) fn new(urls: Vec<Uri>) -> Arc<Self> {
        use rand::Rng;
        let instance = format!("{:016x}", rand::thread_rng().gen::<u64>());
        Arc::new(CaClient {
            urls,
            preferred: AtomicUsize::new(0),
            instance,
        })
    }

    /// `POST` [`wire::ENROLL_PATH`].
    pub(crate) async fn enroll(
        &self,
        bundle: &TrustBundle,
        token: &str,
        csr: &str,
    ) -> Result<Issued, CaClientError> {
        let body = EnrollRequest {
            token: token.to_string(),
            csr: csr.to_string(),
        };
        let (status, _, bytes) = self
            .call(bundle, None, Call::post(wire::ENROLL_PATH, json(&body)?))
            .await?;
        issued(status, &bytes)
    }

    /// `POST` [`wire::RENEW_PATH`], authenticated with `creds` over mTLS.
    pub(crate) async fn renew(
        &self,
        creds: &Credentials,
        csr: &str,
    ) -> Result<Issued, CaClientError> {
        let body = RenewRequest {
            csr: csr.to_string(),
        };
        let (status, _, bytes) = self
            .call(
                &creds.bundle,
                Some(creds),
                Call::post(wire::RENEW_PATH, json(&body)?),
            )
            .await?;
        issued(status, &bytes)
    }

    /// `GET` [`wire::CRL_PATH`] long-poll, reporting our state to the CA's fleet table.
    pub(crate) async fn poll_crl(
        &self,
        bundle: &TrustBundle,
        creds: Option<&Credentials>,
        after: u64,
        wait: Duration,
        bundle_version: u64,
    ) -> Result<CrlPoll, CaClientError> {
        let path = wire::crl_poll_uri(after, wait);
        let version = bundle_version.to_string();
        let headers = [
            (wire::INSTANCE_HEADER, self.instance.as_str()),
            (wire::BUNDLE_VERSION_HEADER, version.as_str()),
        ];
        let call = Call {
            headers: &headers,
            timeout: wait + CALL_TIMEOUT,
            ..Call::get(&path)
        };
        let (status, h, bytes) = self.call(bundle, creds, call).await?;
        let bundle_version = announced_bundle_version(&h);
        match status {
            StatusCode::OK => Ok(CrlPoll::New {
                pem: bytes,
                bundle_version,
            }),
            StatusCode::NOT_MODIFIED => Ok(CrlPoll::NotModified { bundle_version }),
            s => Err(refused(s, &bytes)),
        }
    }

    /// `GET` [`wire::BUNDLE_PATH`]: the PEM and the CA's bundle version.
    pub(crate) async fn bundle(
        &self,
        bundle: &TrustBundle,
    ) -> Result<(Bytes, Option<u64>), CaClientError> {
        let (status, h, bytes) = self
            .call(bundle, None, Call::get(wire::BUNDLE_PATH))
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &bytes));
        }
        Ok((bytes, announced_bundle_version(&h)))
    }

    /// Sends `call` to each URL in turn, starting with the one that answered last, until one
    /// answers (with any status).
    async fn call(
        &self,
        bundle: &TrustBundle,
        creds: Option<&Credentials>,
        call: Call<'_>,
    ) -> Result<Answer, CaClientError> {
        let config = tls_config(bundle, creds)?;
        let n = self.urls.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let url = &self.urls[idx];
            match tokio::time::timeout(call.timeout, once(url, config.clone(), &call)).await {
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

impl<'a> Call<'a> {
    fn get(path: &'a str) -> Self {
        Call {
            method: Method::GET,
            path,
            json: None,
            headers: &[],
            timeout: CALL_TIMEOUT,
        }
    }

    fn post(path: &'a str, json: String) -> Self {
        Call {
            method: Method::POST,
            json: Some(json),
            ..Call::get(path)
        }
    }
}

fn json(body: &impl serde::Serialize) -> Result<String, CaClientError> {
    serde_json::to_string(body).map_err(|e| CaClientError::BadAnswer(e.to_string()))
}

fn announced_bundle_version(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(wire::BUNDLE_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn refused(status: StatusCode, bytes: &[u8]) -> CaClientError {
    let message = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            String::from_utf8_lossy(bytes)
                .chars()
                .take(QUOTED_ERROR_CHARS)
                .collect()
        });
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

/// Opens a TLS connection to `url` and an HTTP/1.1 session over it.
async fn connect(
    url: &Uri,
    config: Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>, String> {
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
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `call` to `url` on a new connection and reads the whole answer.
async fn once(
    url: &Uri,
    config: Arc<rustls::ClientConfig>,
    call: &Call<'_>,
) -> Result<Answer, String> {
    let mut sender = connect(url, config).await?;
    let authority = url.authority().map(|a| a.as_str()).unwrap_or("localhost");
    let mut req = Request::builder()
        .method(call.method.clone())
        .uri(call.path)
        .header(http::header::HOST, authority);
    for (k, v) in call.headers {
        req = req.header(*k, *v);
    }
    if call.json.is_some() {
        req = req.header(http::header::CONTENT_TYPE, wire::JSON_CONTENT_TYPE);
    }
    let req = req
        .body(Full::new(Bytes::from(
            call.json.clone().unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let bytes = read_limited(body, wire::MAX_RESPONSE_BODY).await?;
    Ok((parts.status, parts.headers, bytes))
}

/// Reads `body` to the end, refusing it as soon as it exceeds `limit` bytes (so a broken or
/// hostile CA cannot make us buffer without bound).
async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, String>
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

#[cfg(test)]
mod tests;

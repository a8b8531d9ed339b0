//! The sidecar's client for the `tether-ca` HTTPS API: enroll, renew, CRL long-poll, bundle.
//!
//! The contract (paths, bodies, header names, limits) is [`tether_certs::wire`], shared with the
//! CA. The CA may run as several replicas on one database, listed in `[ca] urls`: a call goes to
//! the URL in use and, if that one cannot take it, to the next ones in order (`failover`). A
//! connection error, a timeout or a 5xx passes the call on; any other answer, 4xx included, is
//! the answer (a revoked or unknown identity is the same at every replica). The URL that
//! accepted a call is the one in use from then on. Each call opens its own connection (calls
//! are rare: a renewal per half-lifetime, one long-poll at a time), with a TLS config built
//! once per bundle and credential, bounded in time so that a replica that died or whose host
//! vanished loses the call within two seconds (`transport`, over HTTP/2 with PINGs where the
//! CA offers it). The CA's server certificate is verified against our current trust bundle by
//! DNS name or IP (it is a TLS server certificate, not an SVID). An answer is read up to
//! [`wire::MAX_RESPONSE_BODY`]: a larger one is an error, never an unbounded buffer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};

use tether_certs::wire::{self, EnrollCredential, EnrollRequest, ErrorBody, Issued, RenewRequest};
use tether_certs::TrustBundle;

use crate::identity::Credentials;
use crate::metrics::FailoverReason;

mod failover;
mod transport;

use failover::Target;

/// How long a plain CA call (enroll, renew, bundle) may wait for its answer once connected:
/// generous for a CA signing under load, short enough that a hung replica passes the call to
/// the next URL soon. (A dead one loses it much sooner: see `transport`.)
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
    /// The CA answered with an error status: a 4xx (the same at every replica), or a 5xx from
    /// the last replica that answered when none could serve (retryable: the renewal loop and
    /// the CRL poller simply try again).
    #[error("CA answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The CA's `error` message.
        message: String,
    },
    /// No URL took the call and none answered 5xx: each one's miss, as `https://host:port: why`.
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
    /// `[ca] urls`, in order.
    targets: Vec<Target>,
    /// The index of the URL in use: the last one that accepted a call, tried first.
    in_use: AtomicUsize,
    /// `tether_ca_failovers_total{reason}`.
    failovers: prometheus::IntCounterVec,
    /// Identifies this sidecar process in the CA's fleet table ([`wire::INSTANCE_HEADER`]).
    instance: String,
    /// The TLS config of the calls, kept while the bundle and credential stay the same.
    tls: transport::TlsConfigs,
}

impl CaClient {
    /// A client for `urls` (https), counting its failovers on `failovers`, with a fresh random
    /// fleet instance id.
    pub(crate) fn new(urls: &[Uri], failovers: prometheus::IntCounterVec) -> Arc<Self> {
        use rand::Rng;
        let instance = format!("{:016x}", rand::thread_rng().gen::<u64>());
        for reason in FailoverReason::ALL {
            failovers.with_label_values(&[reason.as_str()]);
        }
        Arc::new(CaClient {
            targets: urls.iter().map(Target::new).collect(),
            in_use: AtomicUsize::new(0),
            failovers,
            instance,
            tls: Default::default(),
        })
    }

    /// The URL in use (`https://host[:port]`, as configured, never with userinfo): the last one
    /// that accepted a call (completed its TLS handshake, so it holds the CRL long-poll if one
    /// is in flight), or the first before any did.
    pub(crate) fn url_in_use(&self) -> Option<&str> {
        let idx = self.in_use.load(Ordering::Relaxed);
        self.targets.get(idx).map(|t| t.shown.as_str())
    }

    /// `POST` [`wire::ENROLL_PATH`].
    pub(crate) async fn enroll(
        &self,
        bundle: &TrustBundle,
        credential: EnrollCredential<'_>,
        csr: &str,
    ) -> Result<Issued, CaClientError> {
        let body = EnrollRequest::new(credential, csr.to_string());
        let (status, _, bytes) = self
            .call(bundle, None, Call::post(wire::ENROLL_PATH, json(&body)?))
            .await?;
        issued(status, &bytes)
    }

    /// `POST` [`wire::RENEW_PATH`], authenticated with `creds` over mTLS.
    pub(crate) async fn renew(
        &self,
        creds: &Arc<Credentials>,
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
        creds: Option<&Arc<Credentials>>,
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

#[cfg(test)]
mod tests;

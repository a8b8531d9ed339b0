//! Fetching the cluster's JWKS over HTTPS: one `GET` on a fresh connection, the server verified
//! against the `--k8s-jwks-ca` roots only, an optional bearer token, and hard limits — the whole
//! fetch within [`FETCH_TIMEOUT`], a body of at most [`MAX_JWKS_BYTES`], status 200 only — so a
//! slow or hostile endpoint costs one bounded attempt, never a stuck refresh.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest one fetch may take, connect to last byte: the apiserver answers in milliseconds,
/// and a request that waits for a refresh should not wait longer than a sidecar's own timeout.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS accepted: a cluster publishes a handful of keys (a few KiB), so 1 MiB is
/// ample and bounds what a hostile endpoint can make the CA buffer.
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// `GET uri` over HTTPS, trusting `roots`, with `bearer` as the `Authorization` when given;
/// the body of a 200 answer. Errors say what failed, never the bearer token.
pub(super) async fn https_get(
    uri: &Uri,
    roots: Arc<RootCertStore>,
    bearer: Option<String>,
) -> Result<Bytes, String> {
    match tokio::time::timeout(FETCH_TIMEOUT, get(uri, roots, bearer)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
    }
}

async fn get(
    uri: &Uri,
    roots: Arc<RootCertStore>,
    bearer: Option<String>,
) -> Result<Bytes, String> {
    let host = uri.host().ok_or("the URL has no host")?;
    // An IPv6 literal is written `[::1]` in a URL, and bare in a socket address and a SNI.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(tether_certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        ServerName::try_from(bare.to_string()).map_err(|e| format!("server name {host}: {e}"))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with {host}:{port}: {e}"))?;
    // The connection task ends with the fetch (the sender is dropped when this returns).
    tokio::spawn(conn);
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json");
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {uri}: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("GET {uri} answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| {
            format!("reading the JWKS from {uri} (at most {MAX_JWKS_BYTES} bytes): {e}")
        })?;
    Ok(body.to_bytes())
}

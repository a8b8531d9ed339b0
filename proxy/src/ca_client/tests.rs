//! The CA client against real HTTPS servers on 127.0.0.1: the answer size limit (with and
//! without a Content-Length), and how refusals are quoted. Failover is in `tests/failover.rs`
//! (this module's) and, with real sidecars and CA replicas, in the crate's `tests/failover.rs`.

use std::net::SocketAddr;

use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::transport::{read_limited, TlsConfigs};
use super::*;
use crate::outbound::test_credentials;

mod failover;

/// A trust bundle and a TLS server config for `127.0.0.1` that chains to it, as the CA has.
pub(super) fn pki() -> (TrustBundle, Arc<rustls::ServerConfig>) {
    let td = tether_certs::TrustDomain::new("example.org").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let day = Duration::from_secs(86400);
    let (root, _) = tether_certs::issue::new_root(&td, day, now).unwrap();
    let (inter, _) = root.issue_intermediate(&td, day, now).unwrap();
    let key = tether_certs::keys::generate_key().unwrap();
    let leaf = inter
        .issue_server(&key, &["127.0.0.1".to_string()], day, now)
        .unwrap();
    let mut bundle = TrustBundle::default();
    bundle.push(root.cert().clone()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der, inter.cert().clone()], key)
        .unwrap();
    (bundle, Arc::new(config))
}

/// An HTTPS server on 127.0.0.1 with `config`, speaking whichever HTTP version the client does
/// (as the CA's does), answering every request with `answer(handshake, &request)`, where
/// `handshake` is how its connection's TLS handshake went.
pub(super) async fn serving<F>(config: Arc<rustls::ServerConfig>, answer: F) -> SocketAddr
where
    F: Fn(HandshakeKind, &http::Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, answer) = (config.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                    return;
                };
                let kind = tls
                    .get_ref()
                    .1
                    .handshake_kind()
                    .unwrap_or(HandshakeKind::Full);
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let resp = answer(kind, &req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A one-connection HTTPS server that answers any request with a 200 (bundle version 3) and
/// `body_len` bytes of body in 64 KiB chunks (chunked encoding if `chunked`), as fast as they
/// are read.
async fn serve_once(
    config: Arc<rustls::ServerConfig>,
    body_len: usize,
    chunked: bool,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let _ = tls.read(&mut buf).await;
        let framing = if chunked {
            "transfer-encoding: chunked".to_string()
        } else {
            format!("content-length: {body_len}")
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\n{framing}\r\n{}: 3\r\n\r\n",
            wire::BUNDLE_VERSION_HEADER
        );
        if tls.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            let written = if chunked {
                let mut framed = format!("{n:x}\r\n").into_bytes();
                framed.extend_from_slice(&chunk[..n]);
                framed.extend_from_slice(b"\r\n");
                tls.write_all(&framed).await
            } else {
                tls.write_all(&chunk[..n]).await
            };
            if written.is_err() {
                // The client stopped reading: exactly what a limit does.
                return;
            }
            left -= n;
        }
        if chunked {
            let _ = tls.write_all(b"0\r\n\r\n").await;
        }
        let _ = tls.flush().await;
        let _ = tls.shutdown().await;
    });
    addr
}

/// A client for `https://` each of `addrs`, in order, counting failovers on its own counter.
pub(super) fn client(addrs: &[SocketAddr]) -> Arc<CaClient> {
    let urls: Vec<Uri> = addrs
        .iter()
        .map(|a| format!("https://{a}").parse().unwrap())
        .collect();
    let failovers = prometheus::IntCounterVec::new(
        prometheus::Opts::new("tether_ca_failovers_total", "test"),
        &["reason"],
    )
    .unwrap();
    CaClient::new(&urls, failovers)
}

async fn fetch_bundle(
    body_len: usize,
    chunked: bool,
) -> Result<(Bytes, Option<u64>), CaClientError> {
    let (bundle, config) = pki();
    let addr = serve_once(config, body_len, chunked).await;
    client(&[addr]).bundle(&bundle).await
}

#[tokio::test]
async fn an_answer_within_the_limit_is_read_whole() {
    let (body, version) = fetch_bundle(wire::MAX_RESPONSE_BODY, false).await.unwrap();
    assert_eq!(body.len(), wire::MAX_RESPONSE_BODY);
    assert_eq!(version, Some(3));
}

#[tokio::test]
async fn an_oversized_answer_is_an_error_with_or_without_a_length() {
    for chunked in [false, true] {
        let err = fetch_bundle(wire::MAX_RESPONSE_BODY + 1, chunked)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("answer larger than"),
            "chunked={chunked}: {err}"
        );
    }
}

#[tokio::test]
async fn the_limited_reader_stops_at_the_limit() {
    let ok = read_limited(Full::new(Bytes::from(vec![0u8; 10])), 10).await;
    assert_eq!(ok.unwrap().len(), 10);
    let err = read_limited(Full::new(Bytes::from(vec![0u8; 11])), 10)
        .await
        .unwrap_err();
    assert_eq!(err, "answer larger than 10 bytes");
}

#[test]
fn a_refusal_quotes_the_json_error_or_the_start_of_the_body() {
    let json = refused(StatusCode::FORBIDDEN, br#"{"error":"certificate revoked"}"#);
    assert!(json.is_forbidden());
    assert_eq!(
        json.to_string(),
        "CA answered 403 Forbidden: certificate revoked"
    );
    let html = refused(StatusCode::BAD_GATEWAY, "<html>".repeat(100).as_bytes());
    assert!(!html.is_forbidden());
    let CaClientError::Refused { message, .. } = html else {
        unreachable!()
    };
    assert_eq!(message.chars().count(), QUOTED_ERROR_CHARS);
}

#[test]
fn a_tls_config_is_built_once_per_bundle_and_credential() {
    let configs = TlsConfigs::default();
    let ((bundle, _), (rotated, _)) = (pki(), pki());
    let (creds, renewed) = (test_credentials(), test_credentials());
    let get = |b: &TrustBundle, c: Option<&Arc<Credentials>>| configs.get(b, c).unwrap();
    let anonymous = get(&bundle, None);
    assert!(!anonymous.client_auth_cert_resolver.has_certs());
    assert!(Arc::ptr_eq(&anonymous, &get(&bundle, None)), "built again");
    let presenting = get(&bundle, Some(&creds));
    assert!(presenting.client_auth_cert_resolver.has_certs());
    assert!(
        Arc::ptr_eq(&presenting, &get(&bundle, Some(&creds))),
        "built again"
    );
    // A renewed credential, then a new bundle: each is a new config.
    let after_renewal = get(&bundle, Some(&renewed));
    assert!(!Arc::ptr_eq(&presenting, &after_renewal));
    assert!(!Arc::ptr_eq(&after_renewal, &get(&rotated, Some(&renewed))));
}

#[tokio::test]
async fn every_ca_call_takes_a_full_handshake_even_where_the_ca_offers_resumption() {
    // Unlike `tether-ca`'s, this server issues session tickets (rustls' default).
    let (bundle, config) = pki();
    assert!(config.send_tls13_tickets > 0);
    let kinds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = kinds.clone();
    let addr = serving(config, move |kind, _| {
        seen.lock().unwrap().push(kind);
        Response::new(Full::new(Bytes::new()))
    })
    .await;
    let client = client(&[addr]);
    for _ in 0..3 {
        client.bundle(&bundle).await.unwrap();
    }
    // A resumed session would skip the CA's check of the certificate we present.
    assert_eq!(*kinds.lock().unwrap(), [HandshakeKind::Full; 3]);
}

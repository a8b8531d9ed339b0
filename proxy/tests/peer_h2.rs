//! The outbound's shared HTTP/2 connection to a peer (`peer_protocol = "h2"`, and `auto` past
//! 16 app connections): bodies larger than every flow-control window cross it both ways, and a
//! peer that stops answering is given up by the keep-alive ping, not left to the request
//! timeout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An HTTP/1.1 app that streams every request's body back as its response.
async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// `len` bytes that differ from one position to the next, so a lost or reordered chunk shows.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<_>>()
        .into()
}

#[tokio::test]
async fn bodies_larger_than_every_window_cross_the_shared_connection_both_ways() {
    let (_pki, b, a, _) =
        file_pair_with(echo_app().await, ALLOW_A, "", "peer_protocol = \"h2\"").await;
    let out = a.outbound.unwrap();
    // 3 MiB each way, two at once: past the 64 KiB protocol default, the 2 MiB stream window
    // and, together, the 5 MiB connection window, so both sides must give window back.
    let upload = |seed: u8| async move {
        let body = pattern(3 << 20, seed);
        let req = Request::post(format!("http://{out}/upload"))
            .header("host", "service-b")
            .body(Full::new(body.clone()))
            .unwrap();
        let resp = http_client().request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let echoed = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed.len(), body.len(), "echo of upload {seed}");
        assert!(echoed == body, "upload {seed} came back altered");
    };
    let both = async { tokio::join!(upload(1), upload(2)) };
    tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the transfers stalled: window not given back");
    assert_eq!(
        b.metric("tether_tls_handshakes_total", &[("result", "ok")]),
        1.0,
        "both went over the one shared connection"
    );
}

/// A TLS server with service-b's certificate that speaks HTTP/2 until it has read the first
/// request, then reads nothing more: no response, no answer to a ping.
async fn silent_peer(pki: &Pki) -> SocketAddr {
    let dir = pki.issue(SERVICE_B);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            tether_certs::pem::certificates(&read("chain.pem")).unwrap(),
            tether_certs::pem::private_key(&read("key.pem")).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                let first = conn.accept().await;
                // Holds the connection and the stream, never polling either again.
                std::future::pending::<()>().await;
                drop((conn, first));
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_peer_that_stops_answering_is_given_up_by_the_keep_alive_ping() {
    let pki = Pki::new();
    let peer = silent_peer(&pki).await;
    let adir = pki.issue(SERVICE_A);
    // Pings every 0.5 s (half the idle timeout), each given as long to be answered; the request
    // timeout (30 s by default) would take far longer.
    let a_toml = format!(
        "{}{OUTBOUND_SECTION}{}peer_protocol = \"h2\"\n[limits]\nidle_timeout = \"1s\"\n",
        identity_section(&adir, None),
        service_section("service-b", &[peer], SERVICE_B),
    );
    let a = pki.start("a", &a_toml).await;
    let started = Instant::now();
    let (status, _) = get(a.outbound.unwrap(), "service-b", "/hello", &[]).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        took < Duration::from_secs(10),
        "the silent peer was noticed after {took:?}"
    );
}

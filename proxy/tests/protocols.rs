//! Protocols through the sidecar pair: HTTP/2 (h2c) from the app, gRPC-style trailers intact
//! end to end, WebSocket upgrades (authorized like any request), and the opaque TCP mode where
//! the policy matches the caller's identity only.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"
[[rule]]
name = "a-everything-but-ws"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/data", "/data/*", "/grpc/*", "/ws"]
"#;

async fn pair(policy: &str) -> (Pki, Sidecar, Sidecar) {
    let (pki, b, a, _) = file_pair(policy, "").await;
    (pki, b, a)
}

#[tokio::test]
async fn http2_from_the_app_is_carried_and_reused() {
    let (_pki, b, a) = pair(POLICY).await;
    let mut sender = h2c(a.outbound.unwrap()).await;
    for i in 0..5 {
        let req = http::Request::builder()
            .uri(format!("http://service-b/data/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            echo(&String::from_utf8_lossy(&body))["path"],
            format!("/data/{i}")
        );
    }
    // Five requests, one mTLS handshake between the sidecars: the HTTP/2 connection is reused.
    assert_eq!(
        b.metric("tether_tls_handshakes_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn grpc_trailers_arrive_intact() {
    let (_pki, _b, a) = pair(POLICY).await;
    let mut sender = h2c(a.outbound.unwrap()).await;
    let req = http::Request::builder()
        .method("POST")
        .uri("http://service-b/grpc/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers must survive both sidecars");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok");
    let body = collected.to_bytes();
    let e = echo(&String::from_utf8_lossy(&body));
    assert_eq!(e["version"], "HTTP/2.0", "gRPC reaches the app over h2c");
    assert_eq!(e["headers"]["te"], "trailers");
}

async fn upgrade(outbound: SocketAddr, path: &str) -> (String, tokio::net::TcpStream) {
    let mut tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: service-b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n == 1, "connection closed during the response head");
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), tcp)
}

#[tokio::test]
async fn websocket_upgrade_is_bridged_through_both_sidecars() {
    let (_pki, _b, a) = pair(POLICY).await;
    let (head, mut tcp) = upgrade(a.outbound.unwrap(), "/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(b"ping over the mesh").await.unwrap();
    assert_eq!(read_exactly(&mut tcp, 18).await, b"ping over the mesh");
}

#[tokio::test]
async fn websocket_upgrade_is_authorized_like_any_request() {
    let (_pki, _b, a) = pair(POLICY).await;
    let (head, _) = upgrade(a.outbound.unwrap(), "/ws-admin").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

async fn tcp_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn tcp_pair(policy: &str) -> (Pki, Sidecar, Sidecar) {
    let pki = Pki::new();
    let echo_addr = tcp_echo().await;
    let (bdir, adir) = (pki.issue("ns/default/sa/db"), pki.issue(SERVICE_A));
    let pol = pki.policy(policy);
    let identity = identity_section(&bdir, None);
    let tcp = "mode = \"tcp\"\n";
    let b = pki
        .start_inbound("db", &identity, echo_addr, &pol, tcp)
        .await;
    let a_toml = format!(
        "{}{}mode = \"tcp\"\nlisten = \"127.0.0.1:0\"\n",
        identity_section(&adir, None),
        service_section("db", &[b.inbound.unwrap()], "ns/default/sa/db")
    );
    let a = pki.start("a", &a_toml).await;
    (pki, b, a)
}

#[tokio::test]
async fn tcp_mode_carries_opaque_bytes_for_an_allowed_identity() {
    let (_pki, b, a) = tcp_pair(
        "[[rule]]\nname = \"a-to-db\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\n",
    )
    .await;
    let local = a.tcp[0].1;
    let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
    s.write_all(b"\x00\x01binary\xff").await.unwrap();
    assert_eq!(read_exactly(&mut s, 9).await, b"\x00\x01binary\xff");
    assert_eq!(
        b.metric(
            "tether_authz_decisions_total",
            &[("decision", "allow"), ("rule", "a-to-db")]
        ),
        1.0
    );
}

#[tokio::test]
async fn tcp_mode_policy_matches_identity_only() {
    // The only rule for service-a names paths, which opaque TCP does not have: default deny.
    let (_pki, b, a) = tcp_pair(
        "[[rule]]\nname = \"http-only\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\npaths = [\"/x\"]\n",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(a.tcp[0].1).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let n = read_until_closed(&mut s).await;
    assert_eq!(n, 0, "a denied TCP caller gets nothing back");
    assert!(
        eventually(Duration::from_secs(2), || b
            .metric("tether_authz_decisions_total", &[("decision", "deny")])
            == 1.0)
        .await
    );
}

//! Upgraded connections (WebSockets) stay under the same controls as every other connection, in
//! both directions: they count against `max_connections` and in `tether_connections_open` until
//! they really end, they are cut within a second when a CRL revokes the peer, and on shutdown
//! they get `drain_timeout` and are then closed. TCP services get the same drain. Every test
//! talks through a real sidecar pair with a real WebSocket client (tokio-tungstenite) to a real
//! WebSocket echo server.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const POLICY: &str = r#"
[[rule]]
name = "a-websockets"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/ws"]
"#;

/// A WebSocket server that echoes every text and binary message.
async fn start_ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket client session to service-b through the outbound at `outbound`, or the error
/// the handshake ended with.
async fn open_ws(outbound: SocketAddr) -> Result<WebSocketStream<TcpStream>, String> {
    let tcp = TcpStream::connect(outbound)
        .await
        .map_err(|e| e.to_string())?;
    let connect = tokio_tungstenite::client_async("ws://service-b/ws", tcp);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Sends `text` and returns what came back, or `None` if the session ended or stalled.
async fn echo(ws: &mut WebSocketStream<TcpStream>, text: &str) -> Option<String> {
    ws.send(Message::text(text)).await.ok()?;
    match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(t.to_string()),
        _ => None,
    }
}

/// Waits until the session ends (closed, reset, or a close frame); false if it is still open
/// after `within`.
async fn ends_within(ws: &mut WebSocketStream<TcpStream>, within: Duration) -> bool {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn open_gauge(s: &Sidecar, direction: &str) -> f64 {
    s.metric("tether_connections_open", &[("direction", direction)])
}

/// A file-mode pair in front of the WebSocket echo app; `a_extra` is appended to the outbound's
/// config (e.g. a `[limits]` table).
async fn ws_pair(a_extra: &str) -> (Pki, Sidecar, Sidecar) {
    let (pki, b, a, _) = file_pair_with(start_ws_echo().await, POLICY, "", a_extra).await;
    (pki, b, a)
}

#[tokio::test]
async fn a_websocket_counts_as_an_open_connection_until_it_ends() {
    let (_pki, b, a) = ws_pair("").await;
    let mut ws = open_ws(a.outbound.unwrap()).await.unwrap();
    assert_eq!(echo(&mut ws, "hello").await.as_deref(), Some("hello"));
    // Upgraded, the HTTP part of both connections is over, but the connections are not.
    assert_eq!(open_gauge(&a, "outbound"), 1.0);
    assert_eq!(open_gauge(&b, "inbound"), 1.0);
    // A client closes the session, then its TCP connection.
    ws.close(None).await.unwrap();
    drop(ws);
    assert!(
        eventually(Duration::from_secs(3), || open_gauge(&a, "outbound") == 0.0
            && open_gauge(&b, "inbound") == 0.0)
        .await,
        "the gauges fall when the WebSocket ends"
    );
}

#[tokio::test]
async fn websockets_count_against_the_connection_limit() {
    let (_pki, _b, a) = ws_pair("\n[limits]\nmax_connections = 3\n").await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut ws = open_ws(a.outbound.unwrap()).await.unwrap();
        assert_eq!(
            echo(&mut ws, &format!("ws {i}")).await,
            Some(format!("ws {i}"))
        );
        open.push(ws);
    }
    // Three upgraded connections hold all three slots: a fourth is shed.
    assert!(
        open_ws(a.outbound.unwrap()).await.is_err(),
        "a fourth WebSocket got in past max_connections = 3"
    );
    assert_eq!(open_gauge(&a, "outbound"), 3.0);
    // One ends, and its slot is free again.
    open.pop().unwrap().close(None).await.unwrap();
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(ws) = open_ws(a.outbound.unwrap()).await {
            reopened = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = reopened.expect("a freed slot takes a new WebSocket");
    assert_eq!(echo(&mut ws, "again").await.as_deref(), Some("again"));
    for ws in &mut open {
        assert_eq!(echo(ws, "still").await.as_deref(), Some("still"));
    }
}

/// Writes the CA's current CRL to `path` (what an operator's CRL refresh does in file mode).
fn write_current_crl(pki: &Pki, path: &Path) {
    let crl = pki.ca.current_crl(Duration::ZERO).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, tether_certs::pem::encode("X509 CRL", &crl.der)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A pair where each sidecar reads its own CRL file; returns them with (a's, b's) CRL paths and
/// certificate directories.
async fn ws_pair_with_crls() -> (Pki, Sidecar, Sidecar, [PathBuf; 4]) {
    let pki = Pki::new();
    let (bdir, adir) = (pki.issue(SERVICE_B), pki.issue(SERVICE_A));
    let (a_crl, b_crl) = (
        pki.dir.path().join("a-crl.pem"),
        pki.dir.path().join("b-crl.pem"),
    );
    write_current_crl(&pki, &a_crl);
    write_current_crl(&pki, &b_crl);
    let pol = pki.policy(POLICY);
    let app = start_ws_echo().await;
    let b = pki
        .start_inbound("b", &identity_section(&bdir, Some(&b_crl)), app, &pol, "")
        .await;
    let service = service_section("service-b", &[b.inbound.unwrap()], SERVICE_B);
    let a_toml = format!(
        "{}{OUTBOUND_SECTION}{service}\n",
        identity_section(&adir, Some(&a_crl))
    );
    let a = pki.start("a", &a_toml).await;
    (pki, b, a, [a_crl, b_crl, adir, bdir])
}

#[tokio::test]
async fn the_inbound_cuts_a_websocket_whose_caller_is_revoked() {
    let (pki, b, a, [_, b_crl, adir, _]) = ws_pair_with_crls().await;
    let mut ws = open_ws(a.outbound.unwrap()).await.unwrap();
    assert_eq!(echo(&mut ws, "before").await.as_deref(), Some("before"));
    pki.ca.revoke(&Pki::serial(&adir), None).unwrap();
    write_current_crl(&pki, &b_crl);
    // The file watcher polls once a second; the cut itself is immediate.
    assert!(
        ends_within(&mut ws, Duration::from_secs(4)).await,
        "the WebSocket of a revoked caller kept running"
    );
    assert!(b.metric("tether_revoked_connections_closed_total", &[]) >= 1.0);
    assert!(eventually(Duration::from_secs(2), || open_gauge(&b, "inbound") == 0.0).await);
}

#[tokio::test]
async fn the_outbound_cuts_a_websocket_whose_callee_is_revoked() {
    let (pki, _b, a, [a_crl, _, _, bdir]) = ws_pair_with_crls().await;
    let mut ws = open_ws(a.outbound.unwrap()).await.unwrap();
    assert_eq!(echo(&mut ws, "before").await.as_deref(), Some("before"));
    pki.ca.revoke(&Pki::serial(&bdir), None).unwrap();
    write_current_crl(&pki, &a_crl);
    assert!(
        ends_within(&mut ws, Duration::from_secs(4)).await,
        "the WebSocket to a revoked peer kept running"
    );
    assert!(a.metric("tether_revoked_connections_closed_total", &[]) >= 1.0);
    assert!(eventually(Duration::from_secs(2), || open_gauge(&a, "outbound") == 0.0).await);
}

#[tokio::test]
async fn on_shutdown_a_websocket_gets_the_drain_and_is_then_closed() {
    let (_pki, _b, a) = ws_pair("\n[limits]\ndrain_timeout = \"1s\"\n").await;
    let mut ws = open_ws(a.outbound.unwrap()).await.unwrap();
    assert_eq!(echo(&mut ws, "before").await.as_deref(), Some("before"));
    let started = Instant::now();
    let stopping = tokio::spawn(a.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        echo(&mut ws, "during the drain").await.as_deref(),
        Some("during the drain"),
        "the drain cut the WebSocket at once"
    );
    assert!(
        ends_within(&mut ws, Duration::from_secs(4)).await,
        "the WebSocket outlived the drain"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed before the drain: {waited:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the sidecar stops after the drain")
        .unwrap()
        .unwrap();
}

/// A TCP echo server.
async fn start_tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn on_shutdown_a_tcp_service_connection_gets_the_drain_and_is_then_closed() {
    let pki = Pki::new();
    let (bdir, adir) = (pki.issue("ns/default/sa/db"), pki.issue(SERVICE_A));
    let pol = pki.policy(
        "[[rule]]\nname = \"a-db\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\n",
    );
    let b = pki
        .start_inbound(
            "db",
            &identity_section(&bdir, None),
            start_tcp_echo().await,
            &pol,
            "mode = \"tcp\"\n",
        )
        .await;
    let a_toml = format!(
        "{}[services.db]\nmode = \"tcp\"\nlisten = \"127.0.0.1:0\"\naddress = [\"{}\"]\n\
         identity = \"{}\"\n[limits]\ndrain_timeout = \"1s\"\n",
        identity_section(&adir, None),
        b.inbound.unwrap(),
        id("ns/default/sa/db"),
    );
    let a = pki.start("a", &a_toml).await;
    let mut tcp = TcpStream::connect(a.tcp[0].1).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    assert_eq!(read_exactly(&mut tcp, 4).await, b"ping");
    let started = Instant::now();
    let stopping = tokio::spawn(a.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    tcp.write_all(b"pong").await.unwrap();
    assert_eq!(
        read_exactly(&mut tcp, 4).await,
        b"pong",
        "cut before the drain"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(4), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the TCP connection outlived the drain");
    assert!(started.elapsed() >= Duration::from_millis(900));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the sidecar stops after the drain")
        .unwrap()
        .unwrap();
}

//! Operational behaviour of a running sidecar: the policy file is hot-reloaded (a broken file
//! keeps the old policy), oversized headers get 431, a slow app gets 504 at the configured
//! request timeout, and connections beyond the limit and its overflow band are shed.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DENY_DATA: &str = "[[rule]]\nname = \"only-health\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\npaths = [\"/health\"]\n";
const ALLOW_DATA: &str = "[[rule]]\nname = \"data-too\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\npaths = [\"/health\", \"/data\"]\n";

async fn pair(policy: &str, b_limits: &str) -> (Pki, Sidecar, Sidecar, std::path::PathBuf) {
    file_pair(policy, b_limits).await
}

/// Replaces the file the way editors and config managers do: write aside, then rename.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn policy_changes_apply_without_restart_and_a_broken_file_keeps_the_old_one() {
    let (_pki, b, a, pol) = pair(DENY_DATA, "").await;
    let out = a.outbound.unwrap();
    assert_eq!(
        get(out, "service-b", "/data", &[]).await.0,
        StatusCode::FORBIDDEN
    );

    replace_file(&pol, ALLOW_DATA);
    let mut allowed = false;
    for _ in 0..60 {
        if get(out, "service-b", "/data", &[]).await.0 == StatusCode::OK {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "the new policy never applied");
    assert_eq!(
        b.metric("tether_policy_reloads_total", &[("result", "ok")]),
        1.0
    );

    replace_file(
        &pol,
        "[[rule]]\nname = \"broken\"\nfrom = [\"not a spiffe id\"]\n",
    );
    assert!(
        eventually(Duration::from_secs(5), || b
            .metric("tether_policy_reloads_total", &[("result", "error")])
            == 1.0)
        .await,
        "the broken file was never noticed"
    );
    assert_eq!(
        get(out, "service-b", "/data", &[]).await.0,
        StatusCode::OK,
        "the last good policy stays in force"
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (_pki, _b, a, _) = pair(ALLOW_DATA, "").await;
    let big = "x".repeat(80 * 1024);
    let mut tcp = tokio::net::TcpStream::connect(a.outbound.unwrap())
        .await
        .unwrap();
    let req = format!("GET /data HTTP/1.1\r\nHost: service-b\r\nX-Big: {big}\r\n\r\n");
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test]
async fn a_slow_app_gets_504_at_the_request_timeout() {
    let (_pki, _b, a, _) = pair(
        "[[rule]]\nname = \"all\"\nfrom = [\"spiffe://demo.tether/*\"]\n",
        "[limits]\nrequest_timeout = \"300ms\"\n",
    )
    .await;
    let started = std::time::Instant::now();
    let (s, _) = get(a.outbound.unwrap(), "service-b", "/slow", &[]).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "answered before the app's 2 s"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_and_its_overflow_band_are_shed() {
    let (_pki, _b, a, _) = pair(ALLOW_DATA, "").await;
    // The outbound listener of a second sidecar with max_connections = 1.
    let pki = Pki::new();
    let adir = pki.issue(SERVICE_A);
    let toml = format!(
        "{}{OUTBOUND_SECTION}[limits]\nmax_connections = 1\n",
        identity_section(&adir, None)
    );
    let c = pki.start("c", &toml).await;
    let out = c.outbound.unwrap();
    let _held = tokio::net::TcpStream::connect(out).await.unwrap();
    let open = [("direction", "outbound")];
    assert!(
        eventually(Duration::from_secs(5), || c
            .metric("tether_connections_open", &open)
            == 1.0)
        .await,
        "the first connection was not admitted"
    );
    // The overflow band at this limit holds 8 connections, which are refused readably (see
    // tests/refusals/overflow.rs); the listener takes them in the order they connected.
    let mut band = Vec::new();
    for _ in 0..8 {
        band.push(tokio::net::TcpStream::connect(out).await.unwrap());
    }
    let mut beyond = tokio::net::TcpStream::connect(out).await.unwrap();
    let _ = beyond.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = read_until_closed(&mut beyond).await;
    assert_eq!(
        n, 0,
        "the connection past the limit and the band is closed without an answer"
    );
    drop(a);
}

#[tokio::test]
async fn a_tcp_mode_inbound_sheds_past_the_limit_without_a_handshake() {
    // Opaque TCP has no request to refuse readably, so there is no overflow band: a connection
    // past the limit is closed before TLS, where an HTTP inbound would complete the handshake.
    let pki = Pki::new();
    let (bdir, adir) = (pki.issue("ns/default/sa/db"), pki.issue(SERVICE_A));
    let pol = pki.policy(&format!(
        "[[rule]]\nname = \"a\"\nfrom = [\"{}\"]\n",
        id(SERVICE_A)
    ));
    let extra = "mode = \"tcp\"\n[limits]\nmax_connections = 1\n";
    let b = pki
        .start_inbound(
            "db",
            &identity_section(&bdir, None),
            start_app().await,
            &pol,
            extra,
        )
        .await;
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(b.inbound.unwrap())
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("db").unwrap();
        tokio_rustls::TlsConnector::from(raw_client_config(Some(&adir)))
            .connect(name, tcp)
            .await
    };
    // The bytes reach the app (an HTTP echo, here just something that answers): admitted.
    let mut held = connect().await.expect("the first connection is served");
    held.write_all(b"GET /x HTTP/1.1\r\nHost: db\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), held.read_exact(&mut head))
        .await
        .expect("the app answers through the sidecar")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        connect().await.is_err(),
        "a second connection got a handshake"
    );
}

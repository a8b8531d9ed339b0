//! Operational behaviour of a running sidecar: the policy file is hot-reloaded (a broken file
//! keeps the old policy), oversized headers get 431, a slow app gets 504 at the configured
//! request timeout, and connections beyond the limit are shed.

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
async fn connections_beyond_the_limit_are_shed() {
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = tokio::net::TcpStream::connect(out).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = read_until_closed(&mut second).await;
    assert_eq!(
        n, 0,
        "the connection over the limit is closed without an answer"
    );
    drop(a);
}

//! `service-b`, the demo's mesh-unaware app, as the demo and the multi-host sidecar tests use
//! it: it answers with the caller its sidecar named in `x-forwarded-client-cert` (the `URI=`
//! element) and the path it was asked for, and it refuses to start without `--listen`.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the
//! `service-b` binary itself (cargo builds a package's binaries for its integration tests),
//! which the sidecar's network-namespace tests run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_service-b");

/// Kills the app when the test ends, however it ends.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> (App, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let child = Command::new(BIN)
        .args(["--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("service-b starts");
    // Up once it answers a request: a bare connect can succeed before the app listens (a
    // loopback connect to a free port in the ephemeral range may connect to itself), and a
    // request sent then was reset (seen once in CI).
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_get(addr, "/", "").is_err() {
        assert!(
            Instant::now() < deadline,
            "service-b never answered on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (App(child), addr)
}

/// One HTTP/1.1 request with `headers`; the response's status line and JSON body.
fn get(addr: SocketAddr, path: &str, headers: &str) -> (String, serde_json::Value) {
    try_get(addr, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// [`get`], or what went wrong.
fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> Result<(String, serde_json::Value), String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: b\r\n{headers}Connection: close\r\n\r\n");
    tcp.write_all(head.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no head and body")?;
    let status = head.lines().next().unwrap_or_default().to_string();
    let body = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    Ok((status, body))
}

#[test]
fn it_answers_with_the_caller_its_sidecar_named_and_the_path() {
    let (_app, addr) = start();
    let xfcc =
        "x-forwarded-client-cert: By=spiffe://td/b;Hash=ab;URI=spiffe://td/ns/default/sa/a\r\n";
    let (status, body) = get(addr, "/data/7?q=1", xfcc);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body["service"], "service-b");
    assert_eq!(body["path"], "/data/7");
    assert_eq!(body["caller"], "spiffe://td/ns/default/sa/a");
    // Without its sidecar's header there is no caller.
    let (_, body) = get(addr, "/", "");
    assert_eq!(body["caller"], "");
}

#[test]
fn it_refuses_to_start_without_listen() {
    let out = Command::new(BIN).output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

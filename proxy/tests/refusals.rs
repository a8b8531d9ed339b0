//! Refusals a client can read, at both listeners. A request header over `max_header_bytes` gets
//! a 431 that the client reads even while it is still sending (curl, and a client that writes
//! its whole request before reading), and so does a 403 to an upload the policy denies before
//! its body was read. A gRPC or gRPC-Web request gets every sidecar refusal
//! trailers-only — HTTP 200, `grpc-status`, `grpc-message` — read here by tonic's real gRPC
//! client: deny → 7, unknown service or unreachable upstream → 14, timeout → 4. Plain HTTP keeps
//! its 403/502/504, and a denied call never reaches the app. A connection over the limit is
//! refused readably too ([`overflow`]).

mod common;
// Beside this file, not in tests/, where cargo would take it for a test of its own.
#[path = "refusals/grpc.rs"]
mod grpc;
#[path = "refusals/overflow.rs"]
mod overflow;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use grpc::rpc;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::{Code, Status};

/// service-a may call `/grpc/…` and the echo app's `/slow`; everything else is denied.
const POLICY: &str = r#"
[[rule]]
name = "a-grpc"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/grpc/*", "/slow"]
"#;

/// A call service-a is not allowed to make.
const DENIED: &str = "/admin.Admin/Drop";

/// What the refusal tests run against: service-b's inbound in front of an app that records what
/// reaches it, service-a's outbound, which also knows `dead` (an address nobody listens on),
/// and `a_extra` appended to service-a's config.
struct Mesh {
    pki: Pki,
    b: Sidecar,
    a: Sidecar,
    app_saw: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn mesh(b_extra: &str, a_extra: &str) -> Mesh {
    let (app, app_saw) = start_recording_app().await;
    let nobody = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let dead = service_section("dead", &[nobody], SERVICE_B);
    let (pki, b, a, _) = file_pair_with(app, POLICY, b_extra, &format!("{dead}{a_extra}")).await;
    Mesh { pki, b, a, app_saw }
}

/// [`rpc`] through `a`'s outbound listener, to service `service`.
async fn rpc_out(a: &Sidecar, service: &str, path: &'static str) -> Result<Bytes, Status> {
    let tcp = tokio::net::TcpStream::connect(a.outbound.unwrap())
        .await
        .unwrap();
    rpc(tcp, &format!("http://{service}"), path).await
}

/// [`rpc`] straight to `b`'s inbound over mTLS, as the workload whose credentials are in `dir`.
async fn rpc_in(b: &Sidecar, dir: &Path, path: &'static str) -> Result<Bytes, Status> {
    let config = tether_testkit::tls::accept_any_client(Some(credential(dir)), b"h2");
    let tls = tls_connect(b.inbound.unwrap(), config).await.unwrap();
    rpc(tls, "https://service-b", path).await
}

/// Asserts that `result` is the sidecar's gRPC refusal `code` saying `message` (a plain HTTP
/// refusal would reach tonic as a code guessed from the HTTP status, with a message saying so).
fn assert_refused(result: Result<Bytes, Status>, code: Code, message: &str) {
    let status = result.expect_err("the call is refused");
    assert_eq!(
        (status.code(), status.message()),
        (code, message),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_grpc_call_denied_by_policy_is_permission_denied_and_never_reaches_the_app() {
    let m = mesh("", "").await;
    // Through the mesh: the peer's inbound denies, and its answer travels back as it is.
    assert_refused(
        rpc_out(&m.a, "service-b", DENIED).await,
        Code::PermissionDenied,
        "forbidden",
    );
    // Straight at the inbound, from a caller the policy does not know at all.
    let c_dir = m.pki.issue("ns/default/sa/service-c");
    let path = "/grpc/echo.Echo/Say";
    assert_refused(
        rpc_in(&m.b, &c_dir, path).await,
        Code::PermissionDenied,
        "forbidden",
    );
    assert!(
        m.app_saw.lock().unwrap().is_empty(),
        "the app saw {:?}",
        m.app_saw
    );
    // Counted by the refusal's HTTP status, though the gRPC client read a 200.
    let denied = [("direction", "inbound"), ("code", "403")];
    assert_eq!(m.b.metric("tether_requests_total", &denied), 2.0);
}

#[tokio::test]
async fn an_unknown_or_unreachable_service_is_unavailable() {
    let m = mesh("", "").await;
    assert_refused(
        rpc_out(&m.a, "nope", "/grpc/echo.Echo/Say").await,
        Code::Unavailable,
        "unknown service \"nope\"",
    );
    assert_refused(
        rpc_out(&m.a, "dead", "/grpc/echo.Echo/Say").await,
        Code::Unavailable,
        "service \"dead\" unreachable",
    );
}

#[tokio::test]
async fn a_grpc_call_that_times_out_is_deadline_exceeded_at_either_hop() {
    let timeout = "[limits]\nrequest_timeout = \"300ms\"\n";
    // The outbound gives up on the peer.
    let m = mesh("", timeout).await;
    assert_refused(
        rpc_out(&m.a, "service-b", "/slow").await,
        Code::DeadlineExceeded,
        "peer did not answer in time",
    );
    // The inbound gives up on the app; the outbound carries its answer back.
    let m = mesh(timeout, "").await;
    assert_refused(
        rpc_out(&m.a, "service-b", "/slow").await,
        Code::DeadlineExceeded,
        "local app did not answer in time",
    );
}

#[tokio::test]
async fn the_grpc_refusal_is_one_headers_frame_that_ends_the_stream() {
    let m = mesh("", "").await;
    let mut sender = h2c(m.a.outbound.unwrap()).await;
    let req = http::Request::post("http://nope/pkg.Svc/Call")
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(
        h["content-type"], "application/grpc+proto",
        "the request's type, echoed"
    );
    assert_eq!(h["grpc-status"], "14");
    assert_eq!(h["grpc-message"], "unknown service \"nope\"");
    // Trailers-only: the HEADERS frame carried END_STREAM, so there is no body and no trailer.
    assert!(hyper::body::Body::is_end_stream(resp.body()));
    let rest = resp.into_body().collect().await.unwrap();
    assert!(rest.trailers().is_none());
}

#[tokio::test]
async fn grpc_web_over_http1_reads_its_refusal_from_the_headers() {
    let m = mesh("", "").await;
    for (host, path, status, message) in [
        ("service-b", DENIED, "7", "forbidden"),
        ("nope", "/pkg.Svc/Call", "14", "unknown service \"nope\""),
    ] {
        let req = http::Request::post(format!("http://{}{path}", m.a.outbound.unwrap()))
            .header("host", host)
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let resp = http_client().request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert_eq!(resp.status(), StatusCode::OK, "{host}{path}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], "application/grpc-web+proto");
        assert_eq!(h["grpc-status"], status, "{host}{path}");
        assert_eq!(h["grpc-message"], message);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "header-only: {body:?}");
    }
    assert!(m.app_saw.lock().unwrap().is_empty());
}

#[tokio::test]
async fn plain_http_keeps_its_statuses_and_text_bodies() {
    let m = mesh("", "[limits]\nrequest_timeout = \"300ms\"\n").await;
    let out = m.a.outbound.unwrap();
    let json = [("content-type", "application/json")];
    for (host, path, status, body) in [
        ("service-b", "/data", 403, "forbidden\n"),
        ("nope", "/x", 502, "unknown service \"nope\"\n"),
        ("dead", "/x", 502, "service \"dead\" unreachable\n"),
        ("service-b", "/slow", 504, "peer did not answer in time\n"),
    ] {
        let got = send(out, host, "POST", path, &json, "{}").await;
        assert_eq!(
            got,
            (StatusCode::from_u16(status).unwrap(), body.to_string())
        );
    }
}

/// A header file for `curl -H @file` holding one field of `bytes` bytes (a 1 MB field does not
/// fit in one command-line argument; curl's own limit for a whole request is 1 MiB).
fn big_header_file(dir: &Path, bytes: usize) -> PathBuf {
    let path = dir.join("big-header.txt");
    std::fs::write(&path, format!("X-Big: {}\n", "x".repeat(bytes))).unwrap();
    path
}

/// Runs curl with `args`; returns the status code it read (`000` for none) and its stderr.
async fn curl(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn curl_reads_431_for_a_megabyte_header_at_both_listeners() {
    if !tether_testkit::tools::have("curl") {
        return;
    }
    let m = mesh("", "").await;
    let header = format!(
        "@{}",
        big_header_file(m.pki.dir.path(), 1_000_000).display()
    );
    let url = format!("http://{}/grpc/x", m.a.outbound.unwrap());
    let (code, err) = curl(&["--http1.1", "-H", "Host: service-b", "-H", &header, &url]).await;
    assert_eq!(code, "431", "outbound; curl: {err}");

    let a_dir = m.pki.issue(SERVICE_A);
    let (cert, key) = (a_dir.join("chain.pem"), a_dir.join("key.pem"));
    let url = format!("https://{}/grpc/x", m.b.inbound.unwrap());
    let tls = [
        "--http1.1",
        "-k",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let (code, err) = curl(&[&tls[..], &["-H", &header, &url]].concat()).await;
    assert_eq!(code, "431", "inbound; curl: {err}");
    assert!(m.app_saw.lock().unwrap().is_empty());
}

/// A TCP connection to `addr` whose send buffer holds 64 KiB, as on a real network, where a
/// 1 MB request cannot be in flight at once and the client is still sending when the answer
/// comes.
async fn slow_link(addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Writes `request` on `s`, all of it, then reads the status line: what a client that sends
/// its whole request before reading sees (or why it saw none).
async fn send_all_then_read<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> String {
    if let Err(e) = s.write_all(request).await {
        return format!("the request could not be sent: {e}");
    }
    let mut status_line = [0u8; 12];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_exact(&mut status_line),
    );
    match read.await.expect("an answer in time") {
        Ok(_) => String::from_utf8_lossy(&status_line).into_owned(),
        Err(e) => format!("no answer: {e}"),
    }
}

/// A request with a 1 MB header, 15 times `max_header_bytes`.
fn megabyte_header() -> Vec<u8> {
    let big = "x".repeat(1_000_000);
    format!("GET /grpc/x HTTP/1.1\r\nHost: service-b\r\nX-Big: {big}\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_client_still_sending_its_header_reads_the_431_at_both_listeners() {
    let m = mesh("", "").await;
    let outbound = slow_link(m.a.outbound.unwrap()).await;
    let head = send_all_then_read(outbound, &megabyte_header()).await;
    assert_eq!(head, "HTTP/1.1 431", "outbound");

    let a_dir = m.pki.issue(SERVICE_A);
    let config = raw_client_config(Some(&a_dir));
    let tcp = slow_link(m.b.inbound.unwrap()).await;
    let name = rustls_pki_types::ServerName::try_from("service-b").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let head = send_all_then_read(tls, &megabyte_header()).await;
    assert_eq!(head, "HTTP/1.1 431", "inbound");
    assert!(m.app_saw.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_client_still_sending_a_denied_upload_reads_the_403() {
    // The inbound denies before reading the body; without lingering, its reset cut the
    // outbound's request mid-body, and the app read a 502 instead of the 403.
    let m = mesh("", "").await;
    let body = "x".repeat(4_000_000);
    let len = body.len();
    let request =
        format!("POST {DENIED} HTTP/1.1\r\nHost: service-b\r\nContent-Length: {len}\r\n\r\n{body}");
    let head = send_all_then_read(slow_link(m.a.outbound.unwrap()).await, request.as_bytes()).await;
    assert_eq!(head, "HTTP/1.1 403");
    assert!(m.app_saw.lock().unwrap().is_empty());
}

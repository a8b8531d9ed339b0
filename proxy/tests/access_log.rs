//! The access log and the request id, end to end through a real pair of sidecars (service-a's
//! outbound, service-b's inbound, real mTLS between them) in front of the echo app, which shows
//! what it received: one JSON line per request at each hop, joined by one `x-request-id`,
//! with the facts each hop knows; and the metrics an operator slices by peer and status class.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Lets service-a reach `/data/*` and `/grpc/*` (rule names are logged).
const POLICY: &str = r#"
[[rule]]
name = "a-data"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/data", "/data/*"]

[[rule]]
name = "a-grpc"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/grpc/*"]

[[rule]]
name = "a-slow"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/slow", "/ws"]
"#;

/// An `[access_log]` section writing to `path`.
fn access_log(path: &Path) -> String {
    format!("\n[access_log]\npath = {:?}\n", path.display().to_string())
}

/// The pair, each sidecar logging to its own file in `logs`: (pki, b, a, a's log, b's log).
async fn logged_pair(logs: &Path) -> (Pki, Sidecar, Sidecar, PathBuf, PathBuf) {
    let (a_log, b_log) = (logs.join("a.log"), logs.join("b.log"));
    let app = start_app().await;
    let (pki, b, a, _) =
        file_pair_with(app, POLICY, &access_log(&b_log), &access_log(&a_log)).await;
    (pki, b, a, a_log, b_log)
}

/// The lines of the log at `path` once it has `n` (the writer is asynchronous), as JSON.
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect::<Vec<Value>>()
    };
    let arrived = eventually(Duration::from_secs(10), || read().len() >= n).await;
    let got = read();
    assert!(
        arrived,
        "{} has {} lines, expected {n}: {got:?}",
        path.display(),
        got.len()
    );
    got
}

/// The one log line of `path` whose request id is `id`.
fn line_of<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let mut of = lines.iter().filter(|l| l["request_id"] == id);
    let line = of
        .next()
        .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"));
    assert!(of.next().is_none(), "two lines for {id}");
    line
}

/// Whether `id` is a fresh id: 32 lower-case hex digits (128 bits).
fn is_fresh(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn each_hop_logs_one_line_joined_by_the_request_id_the_app_sees() {
    let logs = tempfile::tempdir().unwrap();
    let (_pki, b, a, a_log, b_log) = logged_pair(logs.path()).await;
    let body = "x".repeat(1000);
    let trace = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ];
    let target = "/data/./x/../item?token=s3cret";
    let (status, echoed) = send(
        a.outbound.unwrap(),
        "service-b",
        "POST",
        target,
        &trace,
        &body,
    )
    .await;
    assert_eq!(status, 200, "{echoed}");
    let echoed = echo(&echoed);
    let id = echoed["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(is_fresh(&id), "the app saw x-request-id {id:?}");
    for (k, v) in trace {
        assert_eq!(
            echoed["headers"][k], v,
            "{k} did not pass through untouched"
        );
    }

    let out = lines(&a_log, 1).await;
    let inb = lines(&b_log, 1).await;
    let (out, inb) = (line_of(&out, &id), line_of(&inb, &id));
    let bytes_out = echoed.to_string().len() as u64;
    assert_eq!(out["direction"], "outbound");
    assert_eq!(out["service"], "service-b");
    assert_eq!(out["peer"], id_of(SERVICE_B));
    assert_eq!(
        out["path"], "/data/./x/../item",
        "outbound: the path the app sent, no query"
    );
    assert_eq!(out["upstream"], b.inbound.unwrap().to_string());
    assert!(out["decision"].is_null() && out["rule"].is_null(), "{out}");
    assert_eq!(inb["direction"], "inbound");
    assert_eq!(inb["peer"], id_of(SERVICE_A));
    assert!(inb["service"].is_null(), "{inb}");
    assert_eq!(
        inb["path"], "/data/item",
        "inbound: the normalized path that was authorized"
    );
    assert_eq!(
        (&inb["decision"], &inb["rule"]),
        (&"allow".into(), &"a-data".into())
    );
    assert!(
        inb["upstream"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{inb}"
    );
    for line in [out, inb] {
        assert_eq!(line["method"], "POST");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes_in"], 1000, "{line}");
        // The app's echo is the response body at both hops (it quotes our headers back).
        assert!(
            line["bytes_out"].as_u64().unwrap() >= bytes_out - 64,
            "{line}"
        );
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["grpc_status"].is_null(), "{line}");
        let ts = line["ts"].as_str().unwrap();
        let parsed =
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339);
        let age = time::OffsetDateTime::now_utc() - parsed.unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert!(age.whole_seconds().abs() < 60 && ts.len() == 24, "{ts}");
    }
    for text in [&a_log, &b_log].map(|p| std::fs::read_to_string(p).unwrap()) {
        assert!(
            !text.contains("s3cret"),
            "a query string reached the log: {text}"
        );
    }
}

/// The full SPIFFE ID of `path` in the test trust domain.
fn id_of(path: &str) -> String {
    common::id(path)
}

#[tokio::test]
async fn a_usable_incoming_id_is_kept_and_a_forged_or_conflicting_one_replaced() {
    let logs = tempfile::tempdir().unwrap();
    let (pki, b, a, a_log, b_log) = logged_pair(logs.path()).await;
    let out = a.outbound.unwrap();
    let seen = |body: &str| {
        echo(body)["headers"]["x-request-id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Kept as sent, at both hops.
    let (_, body) = get(
        out,
        "service-b",
        "/data/1",
        &[("x-request-id", "client-chose-this")],
    )
    .await;
    assert_eq!(seen(&body), "client-chose-this");
    // Over-long: replaced by the outbound, and the inbound keeps the outbound's.
    let long = "y".repeat(129);
    let (_, body) = get(out, "service-b", "/data/2", &[("x-request-id", &long)]).await;
    let replaced_long = seen(&body);
    assert!(is_fresh(&replaced_long), "{replaced_long}");
    // Two conflicting fields: one new id; the app sees exactly one.
    let head =
        "GET /data/3 HTTP/1.1\r\nhost: service-b\r\nx-request-id: one\r\nx-request-id: two\r\n";
    let (status, body) = raw_to_outbound(&a, head, "").await;
    assert_eq!(status, 200, "{body}");
    let body = &body[body.find('{').unwrap()..];
    let replaced_two = seen(body);
    assert!(is_fresh(&replaced_two), "{replaced_two}");
    // Straight at the inbound, a non-ASCII id is replaced there.
    let head = "GET /data/4 HTTP/1.1\r\nhost: service-b\r\nx-request-id: caf\u{e9}\r\n";
    let (status, body) = raw_to_inbound(&pki, &b, head, "").await;
    assert_eq!(status, 200, "{body}");
    let replaced_at_inbound = seen(&body[body.find('{').unwrap()..]);
    assert!(is_fresh(&replaced_at_inbound), "{replaced_at_inbound}");

    let a_lines = lines(&a_log, 3).await;
    let b_lines = lines(&b_log, 4).await;
    for id in ["client-chose-this", &replaced_long, &replaced_two] {
        line_of(&a_lines, id);
        line_of(&b_lines, id);
    }
    assert_eq!(line_of(&b_lines, &replaced_at_inbound)["path"], "/data/4");
}

#[tokio::test]
async fn a_denied_request_is_logged_with_its_decision_and_never_an_upstream() {
    let logs = tempfile::tempdir().unwrap();
    let (_pki, b, a, a_log, b_log) = logged_pair(logs.path()).await;
    let (status, _) = get(
        a.outbound.unwrap(),
        "service-b",
        "/admin",
        &[("x-request-id", "denied-1")],
    )
    .await;
    assert_eq!(status, 403);
    let inb = lines(&b_log, 1).await;
    let inb = line_of(&inb, "denied-1");
    assert_eq!(
        (&inb["status"], &inb["decision"]),
        (&403.into(), &"deny".into())
    );
    assert!(inb["rule"].is_null() && inb["upstream"].is_null(), "{inb}");
    let out = lines(&a_log, 1).await;
    let out = line_of(&out, "denied-1");
    // The outbound relays the peer's answer: that address answered.
    assert_eq!(out["status"], 403);
    assert_eq!(out["upstream"], b.inbound.unwrap().to_string());

    // An unknown service: refused at the outbound, with no peer, service or upstream.
    let (status, _) = get(
        a.outbound.unwrap(),
        "nope",
        "/x",
        &[("x-request-id", "unknown-1")],
    )
    .await;
    assert_eq!(status, 502);
    let out = lines(&a_log, 2).await;
    let out = line_of(&out, "unknown-1");
    assert_eq!(out["status"], 502);
    for key in ["peer", "service", "upstream"] {
        assert!(out[key].is_null(), "{key}: {out}");
    }
}

/// A gRPC call (h2c, as an app speaks to its outbound) to `path` with request id `id`; returns
/// the grpc-status the client reads.
async fn grpc_call(a: &Sidecar, path: &str, id: &str) -> String {
    let mut conn = h2c(a.outbound.unwrap()).await;
    let req = Request::post(format!("http://service-b{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-request-id", id)
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let resp = conn.send_request(req).await.unwrap();
    let head = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head);
    status.unwrap().to_str().unwrap().to_owned()
}

#[tokio::test]
async fn grpc_requests_log_their_grpc_status_from_trailers_or_a_trailers_only_refusal() {
    let logs = tempfile::tempdir().unwrap();
    let (_pki, _b, a, a_log, b_log) = logged_pair(logs.path()).await;
    assert_eq!(grpc_call(&a, "/grpc/echo.Echo/Say", "rpc-ok").await, "0");
    assert_eq!(grpc_call(&a, "/denied.Svc/Call", "rpc-denied").await, "7");
    let (out, inb) = (lines(&a_log, 2).await, lines(&b_log, 2).await);
    for lines in [&out, &inb] {
        assert_eq!(line_of(lines, "rpc-ok")["grpc_status"], 0);
        assert_eq!(line_of(lines, "rpc-denied")["grpc_status"], 7);
    }
    // The refusal is logged (and counted) by its HTTP status at the sidecar that refused it.
    assert_eq!(line_of(&inb, "rpc-denied")["status"], 403);
    assert_eq!(line_of(&inb, "rpc-ok")["bytes_in"], 7);
}

#[tokio::test]
async fn metrics_slice_by_peer_and_status_class_and_count_body_bytes_per_direction() {
    let (_pki, b, a, _) = file_pair(POLICY, "").await;
    let out = a.outbound.unwrap();
    send(out, "service-b", "POST", "/data/x", &[], &"z".repeat(300)).await;
    let (status, _) = get(out, "service-b", "/admin", &[]).await;
    assert_eq!(status, 403);
    // No route, no peer: counted under an empty peer, with no empty 2xx series beside it.
    let (status, _) = get(out, "nope", "/x", &[]).await;
    assert_eq!(status, 502);
    let (callee, caller) = (id_of(SERVICE_B), id_of(SERVICE_A));
    for (side, dir, peer) in [(&a, "outbound", &callee), (&b, "inbound", &caller)] {
        let labels = |code| [("direction", dir), ("peer", peer.as_str()), ("code", code)];
        let count = "tether_request_duration_seconds_count";
        assert_eq!(side.metric(count, &labels("2xx")), 1.0, "{dir}");
        assert_eq!(side.metric(count, &labels("4xx")), 1.0, "{dir}");
        let bytes = [("direction", dir), ("peer", peer.as_str())];
        assert_eq!(
            side.metric("tether_request_bytes_total", &bytes),
            300.0,
            "{dir}"
        );
        assert!(
            side.metric("tether_response_bytes_total", &bytes) > 300.0,
            "{dir}"
        );
    }
    // Each sidecar serves one direction, and exports nothing for the other: no empty
    // histogram to read as a NaN quantile.
    let text = |s: &Sidecar| {
        prometheus::TextEncoder::new()
            .encode_to_string(&s.registry.gather())
            .unwrap()
    };
    let (a_text, b_text) = (text(&a), text(&b));
    assert!(!a_text.contains("direction=\"inbound\""), "{a_text}");
    assert!(!b_text.contains("direction=\"outbound\""), "{b_text}");
    assert!(
        a_text.contains("tether_access_log_dropped_total 0"),
        "{a_text}"
    );
    let unrouted = [("direction", "outbound"), ("peer", ""), ("code", "502")];
    assert_eq!(a.metric("tether_requests_total", &unrouted), 1.0);
    // The text spells labels in this order, so the absence below is not vacuous.
    assert!(a_text.contains(r#"code="502",direction="outbound",peer="""#));
    for empty in [
        r#"code="2xx",direction="outbound",peer="""#,
        r#"code="200",direction="outbound",peer="""#,
    ] {
        assert!(
            !a_text.contains(empty),
            "an empty series for no peer: {a_text}"
        );
    }
}

/// A plain connection to `a`'s outbound that has sent `head` as it is, for a test that then
/// drives the client side itself (hangs up, or speaks an upgraded protocol).
async fn raw_request(a: &Sidecar, head: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(a.outbound.unwrap())
        .await
        .unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test]
async fn a_request_whose_client_goes_away_is_logged_as_499_at_both_hops() {
    let logs = tempfile::tempdir().unwrap();
    let (_pki, _b, a, a_log, b_log) = logged_pair(logs.path()).await;
    // The echo app answers /slow after 2 s; the client hangs up after 300 ms.
    let head = "GET /slow HTTP/1.1\r\nhost: service-b\r\nx-request-id: gone-1\r\n\r\n";
    let tcp = raw_request(&a, head).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);
    for log in [&a_log, &b_log] {
        let got = lines(log, 1).await;
        let line = line_of(&got, "gone-1");
        assert_eq!(line["status"], 499, "{line}");
        assert!(line["upstream"].is_null(), "nothing answered: {line}");
        let ms = line["duration_ms"].as_f64().unwrap();
        assert!(
            (250.0..2000.0).contains(&ms),
            "logged when the client left: {line}"
        );
    }
}

#[tokio::test]
async fn an_upgrade_is_logged_once_its_101_has_gone_while_the_stream_still_runs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let logs = tempfile::tempdir().unwrap();
    let (_pki, _b, a, a_log, b_log) = logged_pair(logs.path()).await;
    let head = "GET /ws HTTP/1.1\r\nhost: service-b\r\nconnection: upgrade\r\n\
                upgrade: websocket\r\nx-request-id: ws-1\r\n\r\n";
    let mut tcp = raw_request(&a, head).await;
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    for log in [&a_log, &b_log] {
        let got = lines(log, 1).await;
        let line = line_of(&got, "ws-1");
        assert_eq!(
            (&line["status"], &line["bytes_out"]),
            (&101.into(), &0.into()),
            "{line}"
        );
    }
    // The upgraded stream carries on after its line was written (the app echoes bytes).
    tcp.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping");
}

//! One authority per request, at both listeners (RFC 9112 §3.2, RFC 9113 §8.3.1): what the
//! sidecar routes and authorizes is what the app reads as its Host. Several Host headers, none
//! on HTTP/1.1, or one that is not a plain `host[:port]` is a 400; an absolute-form target or
//! HTTP/2's `:authority` decides, and the Host header sent on is rewritten to match. Requests are
//! written byte by byte on real sockets, as a hostile client would.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

/// The Host the app saw, from the echo app's JSON.
fn app_host(body: &str) -> String {
    echo(body)["headers"]["host"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn several_missing_or_malformed_hosts_are_400_at_the_outbound() {
    let (_pki, _b, a, _) = file_pair(DATA_POLICY, "").await;
    let cases = [
        "GET /data HTTP/1.1\r\nHost: service-b\r\nHost: evil.example\r\n",
        "GET /data HTTP/1.1\r\nHost: service-b\r\nHost: service-b\r\n",
        "GET /data HTTP/1.1\r\n",
        "GET /data HTTP/1.1\r\nHost: service-b/admin\r\n",
        "GET /data HTTP/1.1\r\nHost: user@service-b\r\n",
        "GET /data HTTP/1.1\r\nHost: \r\n",
    ];
    for head in cases {
        let (status, _) = raw_to_outbound(&a, head, "").await;
        assert_eq!(status, 400, "{head:?}");
    }
    // The well-formed control gets through.
    let (status, _) = raw_to_outbound(&a, "GET /data HTTP/1.1\r\nHost: service-b\r\n", "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_absolute_target_decides_and_the_app_sees_that_authority() {
    let (_pki, _b, a, _) = file_pair(DATA_POLICY, "").await;
    let head = "GET http://service-b/data HTTP/1.1\r\nHost: evil.example\r\n";
    let (status, body) = raw_to_outbound(&a, head, "").await;
    assert_eq!(status, 200);
    assert_eq!(app_host(&body), "service-b");
    // Case and port the app wrote do not leak through either: one spelling reaches the app.
    let (status, body) =
        raw_to_outbound(&a, "GET /data HTTP/1.1\r\nHost: Service-B:8080\r\n", "").await;
    assert_eq!(status, 200);
    assert_eq!(app_host(&body), "service-b");
}

#[tokio::test]
async fn over_http2_authority_decides_and_a_conflicting_host_is_rewritten() {
    let (_pki, _b, a, _) = file_pair(DATA_POLICY, "").await;
    let mut sender = h2c(a.outbound.unwrap()).await;
    let req = http::Request::builder()
        .uri("http://service-b/data")
        .header("host", "evil.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(app_host(&String::from_utf8_lossy(&body)), "service-b");
}

#[tokio::test]
async fn straight_at_the_inbound_the_same_rules_hold() {
    let (pki, b, _a, _) = file_pair(DATA_POLICY, "").await;
    for head in [
        "GET /data HTTP/1.1\r\nHost: service-b\r\nHost: evil.example\r\n",
        "GET /data HTTP/1.1\r\n",
        "GET /data HTTP/1.1\r\nHost: service-b/admin\r\n",
    ] {
        let (status, _) = raw_to_inbound(&pki, &b, head, "").await;
        assert_eq!(status, 400, "{head:?}");
    }
    let head = "GET http://service-b/data HTTP/1.1\r\nHost: evil.example\r\n";
    let (status, body) = raw_to_inbound(&pki, &b, head, "").await;
    assert_eq!(status, 200);
    assert_eq!(app_host(&body), "service-b");
}

//! End to end through real sockets: client → outbound sidecar → mTLS → inbound sidecar → app,
//! with certificates from a real in-process CA. Proves that allowed requests arrive with the
//! verified caller in `x-forwarded-client-cert`, that the policy denies what it should (and says
//! nothing about its rules), that paths are normalized before matching and forwarded as matched,
//! and that the outbound side insists on the configured peer identity.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

const POLICY: &str = r#"
[[rule]]
name = "a-reads-data"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
methods = ["GET", "HEAD"]
paths = ["/data", "/data/*"]

[[rule]]
name = "ops-anything"
from = ["spiffe://demo.tether/ns/ops/*"]

[[rule]]
name = "expired-rule"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
paths = ["/old"]
expires = "2020-01-01T00:00:00Z"
"#;

struct Mesh {
    pki: Pki,
    b: Sidecar,
    a: Sidecar,
}

/// service-b's inbound sidecar in front of the echo app, and service-a's outbound sidecar that
/// knows service-b (correct identity) and "impostor" (same address, another expected identity).
async fn mesh(policy: &str, caller: &str) -> Mesh {
    let pki = Pki::new();
    let b = service_b(&pki, policy).await;
    let adir = pki.issue(caller);
    let inbound = [b.inbound.unwrap()];
    let a_toml = format!(
        "{}{OUTBOUND_SECTION}{ADMIN_SECTION}{}{}",
        identity_section(&adir, None),
        service_section("service-b", &inbound, SERVICE_B),
        service_section("impostor", &inbound, "ns/default/sa/someone-else"),
    );
    let a = pki.start("a", &a_toml).await;
    Mesh { pki, b, a }
}

/// service-b's inbound sidecar in front of the echo app, enforcing `policy`.
async fn service_b(pki: &Pki, policy: &str) -> Sidecar {
    let app = start_app().await;
    let bdir = pki.issue(SERVICE_B);
    let pol = pki.policy(policy);
    let identity = identity_section(&bdir, None);
    pki.start_inbound("b", &identity, app, &pol, ADMIN_SECTION)
        .await
}

#[tokio::test]
async fn allowed_request_reaches_the_app_with_the_verified_caller() {
    let m = mesh(POLICY, "ns/default/sa/service-a").await;
    let out = m.a.outbound.unwrap();
    let (status, body) = get(
        out,
        "service-b",
        "/data/x?q=1",
        &[(
            "x-forwarded-client-cert",
            "By=evil;URI=spiffe://demo.tether/ns/ops/root",
        )],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = echo(&body);
    assert_eq!(e["path"], "/data/x?q=1");
    let xfcc = e["headers"]["x-forwarded-client-cert"].as_str().unwrap();
    assert!(
        xfcc.starts_with(&format!("By={};Hash=", id("ns/default/sa/service-b"))),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(&format!(";URI={}", id("ns/default/sa/service-a"))),
        "{xfcc}"
    );
    assert!(
        !xfcc.contains("evil"),
        "the caller's spoofed XFCC must be dropped: {xfcc}"
    );
    assert_eq!(e["headers"]["host"], "service-b");
    assert_eq!(
        m.b.metric(
            "tether_authz_decisions_total",
            &[("decision", "allow"), ("rule", "a-reads-data")]
        ),
        1.0
    );
    assert_eq!(
        m.b.metric(
            "tether_requests_total",
            &[("direction", "inbound"), ("code", "200")]
        ),
        1.0
    );
    assert_eq!(
        m.a.metric(
            "tether_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_absolute_form_uri_routes_like_host_so_http_proxy_works() {
    let m = mesh(POLICY, "ns/default/sa/service-a").await;
    let out = m.a.outbound.unwrap();
    // An http_proxy-style request: absolute URI, Host of the target.
    let tcp = tokio::net::TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://service-b/data")
        .header("host", "service-b")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn policy_denies_by_rule_method_and_expiry_without_revealing_rules() {
    let m = mesh(POLICY, "ns/default/sa/service-a").await;
    let out = m.a.outbound.unwrap();
    // No rule for this path.
    let (s, body) = get(out, "service-b", "/admin", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        !body.contains("a-reads-data") && !body.contains("rule"),
        "403 body reveals policy: {body}"
    );
    // Path allowed, method not.
    let (s, _) = send(out, "service-b", "POST", "/data", &[], "x").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The only rule for /old expired in 2020.
    let (s, _) = get(out, "service-b", "/old", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        m.b.metric("tether_authz_decisions_total", &[("decision", "deny")]),
        3.0
    );
    assert_eq!(
        m.b.metric(
            "tether_requests_total",
            &[("direction", "inbound"), ("code", "403")]
        ),
        3.0
    );
}

#[tokio::test]
async fn a_caller_matched_by_prefix_rule_is_allowed_and_others_are_not() {
    let m = mesh(POLICY, "ns/ops/deployer").await;
    let (s, _) = send(
        m.a.outbound.unwrap(),
        "service-b",
        "DELETE",
        "/anything",
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let m = mesh(POLICY, "ns/default/sa/intruder").await;
    let (s, _) = get(m.a.outbound.unwrap(), "service-b", "/data", &[]).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a valid mesh member without a rule is denied"
    );
}

#[tokio::test]
async fn audit_mode_allows_but_counts_would_deny() {
    let m = mesh(
        &format!("mode = \"audit\"\n{POLICY}"),
        "ns/default/sa/intruder",
    )
    .await;
    let (s, _) = get(m.a.outbound.unwrap(), "service-b", "/data", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        m.b.metric(
            "tether_authz_decisions_total",
            &[("decision", "audit_deny")]
        ),
        1.0
    );
}

#[tokio::test]
async fn paths_are_normalized_before_matching_and_forwarded_as_matched() {
    let m = mesh(POLICY, "ns/default/sa/service-a").await;
    let out = m.a.outbound.unwrap();
    // Normalizes into /data/x: allowed, and the app sees exactly /data/x.
    for raw in ["/data/./x", "/data//x", "/other/../data/x", "/%64ata/x"] {
        let (s, body) = get(out, "service-b", raw, &[]).await;
        assert_eq!(s, StatusCode::OK, "{raw}: {body}");
        assert_eq!(echo(&body)["path"], "/data/x", "{raw}");
    }
    // Normalizes out of /data: denied.
    let (s, _) = get(out, "service-b", "/data/../secret", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Cannot be normalized safely: 400, never reaches the app.
    for raw in [
        "/data/..%2f..%2fsecret",
        "/data%2fx",
        "/data/%5c",
        "/../data",
        "/data/%00",
    ] {
        let (s, _) = get(out, "service-b", raw, &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{raw}");
    }
}

#[tokio::test]
async fn outbound_refuses_unknown_services_and_wrong_identities() {
    let m = mesh(POLICY, "ns/default/sa/service-a").await;
    let out = m.a.outbound.unwrap();
    let (s, body) = get(out, "no-such-service", "/data", &[]).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("no-such-service"),
        "502 must name the service: {body}"
    );
    // "impostor" points at service-b's sidecar but expects another identity.
    let (s, body) = get(out, "impostor", "/data", &[]).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("someone-else"), "{body}");
    assert_eq!(
        m.a.metric(
            "tether_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "identity_mismatch")]
        ),
        1.0
    );
    assert_eq!(
        m.b.metric("tether_requests_total", &[("direction", "inbound")]),
        0.0,
        "nothing reached service-b"
    );
}

#[tokio::test]
async fn admin_reports_identity_readiness_and_metrics() {
    let m = mesh(POLICY, "ns/default/sa/service-a").await;
    let admin = m.b.admin.unwrap();
    let (s, body) = get(admin, "admin", "/identity", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["spiffe_id"], id("ns/default/sa/service-b"));
    assert_eq!(j["bundle"].as_array().unwrap().len(), 1);
    assert!(j["serial"].as_str().unwrap().len() >= 16);
    assert!(!body.contains("PRIVATE"), "no key material in /identity");
    assert_eq!(get(admin, "admin", "/ready", &[]).await.0, StatusCode::OK);
    assert_eq!(get(admin, "admin", "/live", &[]).await.0, StatusCode::OK);
    let (_, metrics) = get(admin, "admin", "/metrics", &[]).await;
    assert!(
        metrics.contains("tether_cert_expiry_timestamp_seconds"),
        "{metrics}"
    );
    assert_eq!(
        get(admin, "admin", "/nope", &[]).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn drains_in_flight_requests_on_shutdown() {
    let m = mesh(POLICY, "ns/ops/deployer").await;
    let out = m.a.outbound.unwrap();
    let slow = tokio::spawn(async move { get(out, "service-b", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Mesh { b, a, pki: _pki } = m;
    let stopped = tokio::spawn(b.stop());
    let (s, _) = slow.await.unwrap();
    assert_eq!(
        s,
        StatusCode::OK,
        "the in-flight request finishes during the drain"
    );
    stopped.await.unwrap().unwrap();
    drop(a);
}

#[tokio::test]
async fn a_peer_addressed_by_dns_name_is_reached_and_a_name_that_does_not_resolve_is_502() {
    let pki = Pki::new();
    let b = service_b(&pki, POLICY).await;
    let adir = pki.issue("ns/default/sa/service-a");
    let port = b.inbound.unwrap().port();
    // `localhost` is looked up at connect time, as a Kubernetes Service name would be; `.invalid`
    // never resolves (RFC 6761).
    let a_toml = format!(
        "{}{OUTBOUND_SECTION}{ADMIN_SECTION}\
         [services.service-b]\naddress = [\"localhost:{port}\"]\nidentity = \"{}\"\n\
         [services.nowhere]\naddress = [\"no-such-host.invalid:{port}\"]\nidentity = \"{}\"\n",
        identity_section(&adir, None),
        id(SERVICE_B),
        id(SERVICE_B),
    );
    let a = pki.start("a", &a_toml).await;
    let out = a.outbound.unwrap();
    let (status, body) = get(out, "service-b", "/data/x", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(echo(&body)["path"], "/data/x");
    let (status, body) = get(out, "nowhere", "/data/x", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("nowhere"),
        "the 502 names the service: {body}"
    );
    assert_eq!(
        b.metric("tether_requests_total", &[("direction", "inbound")]),
        1.0,
        "only the request to the resolvable name reached service-b"
    );
}

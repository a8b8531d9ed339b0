//! Publishing revocations to sidecars: `GET /v1/crl` serves a signed PEM CRL with an `ETag` and
//! `x-tether-crl-number`, honours `If-None-Match`, and long-polls (`?after=N&wait=…`) so that a
//! revocation made with the CLI binary on the same state dir while the server runs reaches a
//! waiting sidecar within about a second; a long-poll with nothing new ends in 304 after the wait.
//! Also: `GET /v1/bundle` is the state dir's `bundle.pem`, and the API speaks h2.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use serde_json::json;

use common::*;

#[tokio::test]
async fn crl_is_signed_pem_with_etag_and_number_and_honours_if_none_match() {
    let ca = TestCa::start().await;
    let client = ca.client();

    let r = client.get("/v1/crl").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/pkix-crl")
    );
    assert!(
        r.text().starts_with("-----BEGIN X509 CRL-----\n"),
        "{}",
        r.text()
    );
    let crl = ca.verify_crl(&r.body);
    let number = r
        .header("x-tether-crl-number")
        .expect("x-tether-crl-number")
        .parse::<u64>()
        .unwrap();
    assert_eq!(crl.number(), number);
    assert!(number >= 1, "init publishes CRL number 1");
    let etag = r.header("etag").expect("ETag");
    assert_eq!(etag, format!("\"{number}\""));
    assert!(crl.revoked().is_empty());
    assert!(crl.next_update() > time::OffsetDateTime::now_utc() + Duration::from_secs(3600));

    let mut req = request(Method::GET, "/v1/crl", Bytes::new());
    req.headers_mut()
        .insert("if-none-match", etag.parse().unwrap());
    let cached = client.send(req).await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some(etag.clone()));

    // A stale ETag gets the full CRL.
    let mut req = request(Method::GET, "/v1/crl", Bytes::new());
    req.headers_mut()
        .insert("if-none-match", "\"0\"".parse().unwrap());
    let fresh = client.send(req).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(ca.verify_crl(&fresh.body).number(), number);

    // After a revocation the old ETag no longer matches.
    let cred = ca.enroll(&id("/ns/default/sa/web")).await;
    let revoked = ca.admin().revoke(&json!({"serial": cred.serial})).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let mut req = request(Method::GET, "/v1/crl", Bytes::new());
    req.headers_mut()
        .insert("if-none-match", etag.parse().unwrap());
    let newer = client.send(req).await;
    assert_eq!(newer.status, StatusCode::OK);
    let newer_crl = ca.verify_crl(&newer.body);
    assert!(newer_crl.number() > number);
    assert!(newer_crl.revoked().contains(&cred.serial.parse().unwrap()));
}

#[tokio::test]
async fn long_poll_wakes_when_the_cli_revokes_while_the_server_runs() {
    let ca = TestCa::start().await;
    let cred = ca.enroll(&id("/ns/default/sa/web")).await;
    let first = ca.client().get("/v1/crl").await;
    let n: u64 = first
        .header("x-tether-crl-number")
        .unwrap()
        .parse()
        .unwrap();

    let client = ca.client();
    let poll = tokio::spawn(async move {
        let resp = client.get(&format!("/v1/crl?after={n}&wait=5s")).await;
        (resp, Instant::now())
    });
    // The poll is waiting, not answering with what it already has.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered before anything changed"
    );

    let dir = ca.dir.clone();
    let serial = cred.serial.clone();
    let (out, revoked_at) = tokio::task::spawn_blocking(move || {
        let out = ca_cli(&dir, &["revoke", &serial]);
        (out, Instant::now())
    })
    .await
    .unwrap();
    assert_ok(&out, "tether-ca revoke");

    let (resp, answered_at) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll answers")
        .unwrap();
    let delay = answered_at.saturating_duration_since(revoked_at);
    assert!(
        delay < Duration::from_secs(2),
        "the CLI's revocation reached the waiting poll only after {delay:?}"
    );
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let crl = ca.verify_crl(&resp.body);
    assert!(crl.number() > n);
    assert_eq!(
        resp.header("x-tether-crl-number"),
        Some(crl.number().to_string())
    );
    assert!(crl.revoked().contains(&cred.serial.parse().unwrap()));
    // The server's gauge follows CRLs the CLI published.
    let text = ca.client().get("/metrics").await.text();
    assert_eq!(
        metric(&text, "tether_ca_crl_number", &[]),
        Some(crl.number() as f64)
    );
}

#[tokio::test]
async fn long_poll_with_nothing_new_is_304_after_the_wait() {
    let ca = TestCa::start().await;
    let client = ca.client();
    let n: u64 = client
        .get("/v1/crl")
        .await
        .header("x-tether-crl-number")
        .unwrap()
        .parse()
        .unwrap();

    let started = Instant::now();
    let r = client.get(&format!("/v1/crl?after={n}&wait=1s")).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-tether-crl-number"), Some(n.to_string()));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "wait=1s took {took:?}"
    );

    // A reader that is behind gets the current CRL at once.
    if n > 0 {
        let started = Instant::now();
        let r = client
            .get(&format!("/v1/crl?after={}&wait=5s", n - 1))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(ca.verify_crl(&r.body).number(), n);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[tokio::test]
async fn bad_long_poll_parameters_are_400() {
    let ca = TestCa::start().await;
    let client = ca.client();
    let r = client.get("/v1/crl?after=abc&wait=1s").await;
    r.assert_error(StatusCode::BAD_REQUEST, "abc");
    let r = client.get("/v1/crl?after=1&wait=forever").await;
    r.assert_error(StatusCode::BAD_REQUEST, "forever");
}

#[tokio::test]
async fn bundle_is_the_state_dirs_bundle_pem() {
    let ca = TestCa::start().await;
    let r = ca.client().get("/v1/bundle").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), read(ca.dir.join("bundle.pem")));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-pem-file")
    );
}

#[tokio::test]
async fn the_api_speaks_h2() {
    let ca = TestCa::start().await;
    let client = ca.client();

    let r = client
        .send_h2(request(Method::GET, "/v1/bundle", Bytes::new()))
        .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), read(ca.dir.join("bundle.pem")));

    // Enrollment over h2 too.
    let wanted = id("/ns/default/sa/h2");
    let token = ca.token(&wanted);
    let key = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&key, &wanted).unwrap();
    let body = serde_json::to_vec(&json!({"token": token, "csr": csr})).unwrap();
    let r = client
        .send_h2(request(Method::POST, "/v1/enroll", body.into()))
        .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["spiffe_id"], wanted.as_str());

    // And the same through curl, when it is installed.
    let curl_h2 = have("curl")
        && std::process::Command::new("curl")
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"))
            .unwrap_or(false);
    if curl_h2 {
        let port = ca.addr.port();
        // Async: the server runs on this test's runtime and must keep answering meanwhile.
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http2", "--resolve"])
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(ca.dir.join("bundle.pem"))
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .arg(format!("https://localhost:{port}/v1/bundle"))
            .output()
            .await
            .unwrap();
        assert_ok(&out, "curl --http2");
        assert_eq!(stdout(&out), "2 200");
    }
}

/// `tether_ca_crl_waiters` on the API's `/metrics`.
async fn waiters(client: &Client) -> f64 {
    let text = client.get("/metrics").await.text();
    metric(&text, "tether_ca_crl_waiters", &[]).expect("tether_ca_crl_waiters")
}

#[tokio::test]
async fn a_long_poll_abandoned_by_its_client_stops_counting_as_a_waiter() {
    let ca = TestCa::start().await;
    let client = ca.client();
    let n = ca.authority.latest_crl_number().unwrap();
    assert_eq!(waiters(&client).await, 0.0);

    // A raw HTTP/1.1 long-poll on a connection this test owns, so it can cut it.
    let mut conn = client.connect(b"http/1.1").await;
    let req = format!("GET /v1/crl?after={n}&wait=30s HTTP/1.1\r\nhost: localhost\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut conn, req.as_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(&mut conn).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            waiters(&client).await == 1.0
        })
        .await,
        "the long-poll never registered as a waiter"
    );

    // The sidecar goes away mid-poll (restart, network cut): its connection closes.
    drop(conn);
    assert!(
        eventually(Duration::from_secs(5), || async {
            waiters(&client).await == 0.0
        })
        .await,
        "an abandoned long-poll still counts as a waiter"
    );
}

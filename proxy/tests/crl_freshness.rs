//! A revocation list can never wedge a file-mode sidecar (issue 12 §5), over real mTLS
//! handshakes: a stale CRL fails closed under `deny` and open with an alarm under `allow`; a CRL
//! that is stale on arrival never replaces a fresh one; once the list in force is stale, a fresh
//! one is taken whatever its number; a thisUpdate a little ahead of our clock reads as age 0 and
//! one far ahead is refused (at start: the sidecar does not start); and `tether_crl_stale` on
//! `/metrics` says what `/identity` says at every moment. The CA-mode side (a CA outage, a CA
//! whose numbering went back) is in `lifecycle.rs`, next to the CA harness.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::StatusCode;
use time::Duration as Offset;

/// How long a test waits for the file watcher (it looks once a second) to act on a new file.
const RELOAD: Duration = Duration::from_secs(10);

/// `/metrics`' count of CRL updates with this `result`.
async fn updates(b: &Sidecar, result: &str) -> f64 {
    b.scraped("tether_crl_updates_total", &[("result", result)])
        .await
}

/// The number of the CRL in force, per `/identity`.
async fn crl_number(b: &Sidecar) -> Option<u64> {
    b.identity().await["crl"]["number"].as_u64()
}

/// Whether a real client with a real service-a certificate gets a 200 through `b`.
async fn admitted(b: &Sidecar, client: &Path) -> bool {
    raw_get_as(b.inbound.unwrap(), client, "/").await == Ok(StatusCode::OK)
}

#[tokio::test]
async fn a_stale_crl_fails_closed_under_deny() {
    let pki = Pki::new();
    let crl = pki.write_crl("stale.pem", 1, -Offset::hours(30), -Offset::hours(1));
    let b = start_file_mode_b(&pki, &crl, "").await;
    let a = pki.issue(SERVICE_A);
    assert!(raw_get_as(b.inbound.unwrap(), &a, "/").await.is_err());
    assert_eq!(
        b.metric("tether_tls_handshakes_total", &[("result", "stale_crl")]),
        1.0
    );
    let (s, body) = get(b.admin.unwrap(), "admin", "/ready", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("stale"), "{body}");
    assert_eq!(b.identity().await["crl"]["stale"], true);
    assert_eq!(b.identity().await["seconds_until_outage"], 0);
}

#[tokio::test]
async fn a_stale_crl_fails_open_with_an_alarm_under_allow() {
    let pki = Pki::new();
    let crl = pki.write_crl("stale.pem", 1, -Offset::hours(30), -Offset::hours(1));
    let b = start_file_mode_b(&pki, &crl, "on_stale_crl = \"allow\"\n").await;
    let a = pki.issue(SERVICE_A);
    assert!(admitted(&b, &a).await);
    // Computed when scraped: no timer to wait for.
    assert_eq!(b.scraped("tether_crl_stale", &[]).await, 1.0);
    let (s, body) = get(b.admin.unwrap(), "admin", "/ready", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("stale"), "/ready must say so: {body}");
}

#[tokio::test]
async fn a_crl_stale_on_arrival_never_replaces_a_fresh_one() {
    let pki = Pki::new();
    let crl = pki.write_crl("crl.pem", 1, -Offset::hours(1), Offset::hours(1));
    let b = start_file_mode_b(&pki, &crl, "").await;
    let a = pki.issue(SERVICE_A);
    assert!(admitted(&b, &a).await);

    // A higher number, but past its nextUpdate: refused, counted, and CRL 1 stays in force.
    pki.write_crl("crl.pem", 9, -Offset::hours(30), -Offset::hours(1));
    assert!(
        tether_testkit::wait::eventually(RELOAD, || async { updates(&b, "stale").await >= 1.0 })
            .await,
        "the stale CRL was not refused"
    );
    assert_eq!(crl_number(&b).await, Some(1));
    assert_eq!(b.identity().await["crl"]["stale"], false);
    assert!(b.is_ready().await);
    assert!(admitted(&b, &a).await, "handshakes still accepted");
    assert_eq!(b.scraped("tether_crl_stale", &[]).await, 0.0);

    // A fresh one is taken, even though its number is below the refused one's.
    pki.write_crl("crl.pem", 2, -Offset::minutes(1), Offset::hours(1));
    assert!(
        tether_testkit::wait::eventually(RELOAD, || async { crl_number(&b).await == Some(2) })
            .await
    );
    assert!(admitted(&b, &a).await);
}

#[tokio::test]
async fn once_the_crl_in_force_is_stale_a_fresh_one_is_taken_whatever_its_number() {
    let pki = Pki::new();
    let crl = pki.write_crl("crl.pem", 9, -Offset::hours(30), -Offset::hours(1));
    let b = start_file_mode_b(&pki, &crl, "").await;
    let a = pki.issue(SERVICE_A);
    assert!(!b.is_ready().await, "stale under deny");
    assert!(!admitted(&b, &a).await);

    // Lower than 9, but fresh while 9 is stale: not a rollback to refuse, the way back.
    pki.write_crl("crl.pem", 2, -Offset::minutes(1), Offset::hours(1));
    assert!(
        tether_testkit::wait::eventually(RELOAD, || b.is_ready()).await,
        "a fresh CRL never replaced the stale one"
    );
    assert_eq!(crl_number(&b).await, Some(2));
    assert!(admitted(&b, &a).await);

    // With a fresh list in force, a lower number is a rollback again: refused and counted.
    pki.write_crl("crl.pem", 1, -Offset::minutes(2), Offset::hours(1));
    assert!(
        tether_testkit::wait::eventually(RELOAD, || async { updates(&b, "rollback").await >= 1.0 })
            .await
    );
    assert_eq!(crl_number(&b).await, Some(2));
    assert!(admitted(&b, &a).await);
}

#[tokio::test]
async fn a_this_update_slightly_ahead_reads_as_age_zero_and_far_ahead_is_refused() {
    let pki = Pki::new();
    let crl = pki.write_crl("crl.pem", 1, -Offset::hours(1), Offset::hours(1));
    let b = start_file_mode_b(&pki, &crl, "").await;
    let a = pki.issue(SERVICE_A);

    // Signed by a CA whose clock runs 30 s ahead of ours: taken, and its age is 0, not -30.
    pki.write_crl("crl.pem", 2, Offset::seconds(30), Offset::hours(1));
    assert!(
        tether_testkit::wait::eventually(RELOAD, || async { crl_number(&b).await == Some(2) })
            .await
    );
    assert_eq!(b.identity().await["crl"]["age_seconds"], 0);
    assert_eq!(b.scraped("tether_crl_age_seconds", &[]).await, 0.0);
    assert!(admitted(&b, &a).await);

    // An hour ahead is more than clock skew: refused, counted, CRL 2 stays.
    pki.write_crl("crl.pem", 3, Offset::hours(1), Offset::hours(2));
    assert!(
        tether_testkit::wait::eventually(RELOAD, || async {
            updates(&b, "not_yet_valid").await >= 1.0
        })
        .await
    );
    assert_eq!(crl_number(&b).await, Some(2));
    assert!(admitted(&b, &a).await);
}

#[tokio::test]
async fn a_crl_from_the_future_at_start_stops_the_start() {
    let pki = Pki::new();
    let crl = pki.write_crl("future.pem", 1, Offset::hours(1), Offset::hours(2));
    let mut b = start_file_mode_b(&pki, &crl, "").await;
    // Fail closed: running without the configured CRL would admit what it revokes.
    let ended = tokio::time::timeout(Duration::from_secs(10), b.task.take().unwrap())
        .await
        .expect("the sidecar refuses to start")
        .unwrap();
    let err = ended.expect_err("a start error").to_string();
    assert!(
        err.contains("future.pem") && err.contains("ahead"),
        "names the file and the problem: {err}"
    );
}

#[tokio::test]
async fn the_stale_gauge_agrees_with_identity_at_every_moment() {
    let pki = Pki::new();
    // Fresh now; stale past nextUpdate (2 s) + grace (1 s).
    let crl = pki.write_crl("crl.pem", 1, -Offset::minutes(1), Offset::seconds(2));
    let b = start_file_mode_b(&pki, &crl, "on_stale_crl = \"allow\"\n").await;
    let stale = |v: serde_json::Value| v["crl"]["stale"].as_bool().unwrap();
    let (mut seen_fresh, mut stale_polls) = (false, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stale_polls < 50 && tokio::time::Instant::now() < deadline {
        let before = b.identity().await;
        let (_, text) = get(b.admin.unwrap(), "admin", "/metrics", &[]).await;
        let after = b.identity().await;
        let gauge = tether_testkit::metrics::sum(&text, "tether_crl_stale", &[]);
        let age = tether_testkit::metrics::sum(&text, "tether_crl_age_seconds", &[]);
        assert!(age >= 0.0, "negative CRL age {age}");
        assert!(before["crl"]["age_seconds"].as_i64().unwrap() >= 0);
        // Staleness only moves from fresh to stale here, so when both /identity reads agree,
        // the scrape between them must say the same.
        if stale(before.clone()) == stale(after.clone()) {
            assert_eq!(
                gauge == 1.0,
                stale(before),
                "/metrics tether_crl_stale {gauge} disagrees with /identity"
            );
        }
        if stale(after) {
            stale_polls += 1;
        } else {
            seen_fresh = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_fresh && stale_polls >= 50, "saw the CRL go stale");
}

//! The CA's `check` findings as gauges, scraped from the real API's `/metrics` over HTTPS against
//! a real state dir and SQLite database: `tether_ca_certificate_expiry_timestamp_seconds` shows
//! the notAfter of each root in the bundle and of the current intermediate, and follows a
//! rotation and a retirement by the real `tether-ca` binary; `tether_ca_fleet_behind` counts the
//! sidecars seen in the fleet window that hold an older CRL or bundle than the CA publishes, and
//! falls back as they catch up. Both are read from the database at each scrape, so no test waits
//! for a timer.

mod common;

use std::path::Path;

use http::StatusCode;

use common::*;

/// The CA's metrics, as a scraper reads them from the API.
async fn scrape(ca: &TestCa) -> String {
    // A client trusting the published bundle as it is now. Right after the CLI retires a root
    // the server may for up to a poll (100 ms) still present its previous certificate, which
    // that bundle no longer trusts: a handshake failure in that window is retried, not a bug.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let resp = loop {
        match ca.client().try_get("/metrics").await {
            Ok(resp) => break resp,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("scrape retried: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the CA never served the published bundle's certificate: {e}"),
        }
    };
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.text()
}

/// Every `tether_ca_certificate_expiry_timestamp_seconds` series in `text`, as
/// `(kind, generation, value)`, sorted.
fn expiries(text: &str) -> Vec<(String, String, i64)> {
    let label = |s: &tether_testkit::metrics::Sample, k: &str| {
        s.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut found: Vec<_> = tether_testkit::metrics::samples(text)
        .into_iter()
        .filter(|s| s.name == "tether_ca_certificate_expiry_timestamp_seconds")
        .map(|s| (label(&s, "kind"), label(&s, "generation"), s.value as i64))
        .collect();
    found.sort();
    found
}

/// `(kind, generation, notAfter of the certificate at dir/file)`.
fn expected(kind: &str, generation: u64, dir: &Path, file: &str) -> (String, String, i64) {
    let not_after = cert_facts(&read(dir.join(file))).not_after;
    (kind.to_string(), generation.to_string(), not_after)
}

/// `tether-ca --state-dir DIR ARGS…` off the runtime, failing the test unless it succeeds.
async fn ca_cli_ok(dir: &Path, args: &[&str]) {
    assert_ok(&ca_cli_async(dir, args).await, &args.join(" "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_expiry_gauges_show_the_certificates_in_force_through_a_rotation() {
    let ca = TestCa::start().await;
    let g2 = ca.dir.join("generations/2");
    assert_eq!(
        expiries(&scrape(&ca).await),
        vec![
            expected("intermediate", 1, &ca.dir, "intermediate/cert.pem"),
            expected("root", 1, &ca.dir, "root/cert.pem"),
        ]
    );

    // During the rotation both roots are in the bundle; only the new intermediate signs.
    ca_cli_ok(&ca.dir, &["root", "rotate"]).await;
    assert_eq!(
        expiries(&scrape(&ca).await),
        vec![
            expected("intermediate", 2, &g2, "intermediate/cert.pem"),
            expected("root", 1, &ca.dir, "root/cert.pem"),
            expected("root", 2, &g2, "root/cert.pem"),
        ]
    );

    // Retired, the old root is no longer in force, so it is no longer watched.
    let old = ca.authority.roots().unwrap()[0].fingerprint.clone();
    ca_cli_ok(&ca.dir, &["root", "retire", &old, "--force"]).await;
    assert_eq!(
        expiries(&scrape(&ca).await),
        vec![
            expected("intermediate", 2, &g2, "intermediate/cert.pem"),
            expected("root", 2, &g2, "root/cert.pem"),
        ]
    );
}

/// `tether_ca_fleet_behind{what}` in `text` (`None` when not exported).
fn behind(text: &str, what: &str) -> Option<f64> {
    metric(text, "tether_ca_fleet_behind", &[("what", what)])
}

/// The (bundle, crl) figures of `tether_ca_fleet_behind` on a fresh scrape.
async fn lag(ca: &TestCa) -> (Option<f64>, Option<f64>) {
    let text = scrape(ca).await;
    (behind(&text, "bundle"), behind(&text, "crl"))
}

/// A poll reporting CRL `after` and bundle `bundle` as sidecar `instance`; not waiting.
async fn report(client: &Client, instance: &str, after: u64, bundle: Option<u64>) {
    let r = poll_crl(client, &format!("after={after}"), Some(instance), bundle).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_behind_counts_sidecars_on_an_old_crl_or_bundle_until_they_catch_up() {
    let ca = TestCa::start().await;
    let (a, b) = (
        ca.enroll(&id("/ns/default/sa/a")).await,
        ca.enroll(&id("/ns/default/sa/b")).await,
    );
    assert_eq!(lag(&ca).await, (Some(0.0), Some(0.0)), "an empty fleet");
    let n = ca.authority.latest_crl_number().unwrap();
    report(&ca.client_as(&a), "a-1", n, Some(1)).await;
    report(&ca.client_as(&b), "b-1", n, Some(1)).await;
    assert_eq!(lag(&ca).await, (Some(0.0), Some(0.0)), "both current");

    // A revocation publishes CRL n+1: both sidecars hold n until they poll again.
    let other = ca.enroll(&id("/ns/default/sa/other")).await;
    ca.authority
        .revoke(&other.serial.parse().unwrap(), None)
        .unwrap();
    assert_eq!(lag(&ca).await, (Some(0.0), Some(2.0)));
    report(&ca.client_as(&a), "a-1", n + 1, Some(1)).await;
    assert_eq!(lag(&ca).await, (Some(0.0), Some(1.0)), "a caught up");

    // A rotation publishes bundle version 2 (and a CRL signed by the new intermediate).
    ca_cli_ok(&ca.dir, &["root", "rotate"]).await;
    let newest = ca.authority.latest_crl_number().unwrap();
    assert_eq!(lag(&ca).await, (Some(2.0), Some(2.0)));
    // New clients, trusting the new bundle file (both roots).
    let (ca_a, ca_b) = (ca.client_as(&a), ca.client_as(&b));
    report(&ca_a, "a-1", newest, Some(2)).await;
    assert_eq!(lag(&ca).await, (Some(1.0), Some(1.0)), "a caught up");
    // A sidecar that does not say which bundle it holds is not taken to hold the current one.
    report(&ca_b, "b-1", newest, None).await;
    assert_eq!(lag(&ca).await, (Some(1.0), Some(0.0)));
    report(&ca_b, "b-1", newest, Some(2)).await;
    assert_eq!(lag(&ca).await, (Some(0.0), Some(0.0)), "all caught up");

    // Revoking a's certificate publishes a CRL a can never fetch with it: a is not counted as
    // behind (it is not waited for either), b is until it polls.
    ca.authority
        .revoke(&a.serial.parse().unwrap(), None)
        .unwrap();
    assert_eq!(lag(&ca).await, (Some(0.0), Some(1.0)), "only b is behind");
    let newest = ca.authority.latest_crl_number().unwrap();
    report(&ca_b, "b-1", newest, Some(2)).await;
    assert_eq!(lag(&ca).await, (Some(0.0), Some(0.0)));
}

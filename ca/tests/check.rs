//! `tether-ca check` (the real binary): "ok" and exit 0 on a healthy CA; exit 1 with one line per
//! problem for a root or intermediate expiring within `--warn-within`, a stale CRL, a leaf that
//! outlives its issuer, and a sidecar whose certificate is expiring unrenewed. Also: a leaf is
//! never issued past its intermediate, and both the CLI and the API say so when one is shortened.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;

use common::*;
use tether_ca::{Authority, InitOptions};

fn check(dir: &Path, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let o = ca_cli(dir, &all);
    let lines = stdout(&o).lines().map(str::to_string).collect();
    (o.status.code(), lines)
}

/// `tether-ca init --trust-domain TD EXTRA…` into `parent/ca`; returns that state dir.
fn init(parent: &Path, extra: &[&str]) -> PathBuf {
    let dir = parent.join("ca");
    let mut args = vec!["init", "--trust-domain", TD];
    args.extend_from_slice(extra);
    assert_ok(&ca_cli(&dir, &args), "init");
    dir
}

/// [`check`] from async code: the binary blocks while the in-process CA's API must keep serving.
async fn check_off_runtime(
    dir: &Path,
    args: &'static [&'static str],
) -> (Option<i32>, Vec<String>) {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || check(&dir, args))
        .await
        .unwrap()
}

/// What `check` answers for a healthy CA: exit 0 and the single line "ok".
fn healthy_report() -> (Option<i32>, Vec<String>) {
    (Some(0), vec!["ok".to_string()])
}

/// Runs `check ARGS`, fails the test unless it exits 1 listing `count` problems, and returns the
/// problem lines.
fn problems(dir: &Path, args: &[&str], count: usize) -> Vec<String> {
    let (code, lines) = check(dir, args);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), count, "{lines:?}");
    lines
}

#[test]
fn a_healthy_ca_is_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path(), &[]);
    assert_eq!(check(&dir, &[]), healthy_report());
    assert_eq!(check(&dir, &["--warn-within", "29d"]), healthy_report());
}

#[test]
fn an_intermediate_or_root_expiring_within_the_window_is_a_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(
        tmp.path(),
        &["--root-ttl", "5d", "--intermediate-ttl", "2d"],
    );

    let (code, lines) = check(&dir, &["--warn-within", "1d"]);
    assert_eq!((code, lines), healthy_report());

    let lines = problems(&dir, &["--warn-within", "3d"], 1);
    assert!(
        lines[0].starts_with("intermediate of generation 1 expires at"),
        "{lines:?}"
    );

    let lines = problems(&dir, &["--warn-within", "7d"], 2);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("root ") && l.contains("(generation 1) expires at")),
        "{lines:?}"
    );
    // The stderr summary counts them.
    let o = ca_cli(&dir, &["check", "--warn-within", "7d"]);
    assert!(stderr(&o).contains("2 problems found"), "{}", stderr(&o));

    // Rotating to a long-lived pair clears the intermediate; the old root still expires soon
    // while it is in the bundle, until it is retired.
    assert_ok(&ca_cli(&dir, &["root", "rotate"]), "root rotate");
    let lines = problems(&dir, &["--warn-within", "7d"], 1);
    assert!(lines[0].contains("(generation 1)"), "{lines:?}");
    let old = Authority::open(&dir).unwrap().roots().unwrap()[0]
        .fingerprint
        .clone();
    assert_ok(&ca_cli(&dir, &["root", "retire", &old]), "root retire");
    assert_eq!(check(&dir, &["--warn-within", "7d"]), healthy_report());
}

#[test]
fn a_crl_past_its_next_update_is_a_problem_until_re_signed() {
    let tmp = tempfile::tempdir().unwrap();
    // 2 s rather than 1: the re-signed CRL below must stay fresh while `check` runs, and
    // nextUpdate is stored in whole seconds.
    let dir = init(tmp.path(), &["--crl-validity", "2s"]);
    std::thread::sleep(Duration::from_millis(3100));
    let lines = problems(&dir, &[], 1);
    assert!(
        lines[0].starts_with("CRL number 1 is stale: its nextUpdate"),
        "{lines:?}"
    );
    // `check` itself re-signs nothing.
    assert_eq!(check(&dir, &[]).0, Some(1));
    assert_ok(&ca_cli(&dir, &["crl"]), "crl");
    assert_eq!(check(&dir, &[]), healthy_report());
}

#[test]
fn a_leaf_outliving_its_issuer_is_a_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    // The CA never issues one; a database restored from elsewhere could hold one.
    let web = id("/ns/default/sa/web");
    let now = time::OffsetDateTime::now_utc();
    let serial = tether_certs::Serial::random();
    tether_ca::store::Store::open(&dir.join("ca.db"))
        .unwrap()
        .record(&tether_ca::store::NewCert {
            serial: serial.clone(),
            spiffe_id: web.to_string(),
            not_before: now,
            not_after: now + time::Duration::days(60),
            issued_at: now,
            method: "cli",
            der: vec![0x30, 0x00],
            generation: 1,
        })
        .unwrap();
    let lines = problems(&dir, &[], 1);
    assert!(
        lines[0].contains(&serial.to_string())
            && lines[0].contains("after its issuing intermediate"),
        "{lines:?}"
    );
    // Revoked, it no longer matters.
    assert_ok(&ca_cli(&dir, &["revoke", &serial.to_string()]), "revoke");
    assert_eq!(check(&dir, &[]), healthy_report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_holding_an_expiring_unrenewed_certificate_is_a_problem() {
    let ca = TestCa::start().await;
    let n = ca.authority.latest_crl_number().unwrap();
    // A healthy sidecar: a fresh 1 h certificate. It expires within 7 d, but it is nowhere near
    // the point where it should have been renewed.
    let healthy = ca.enroll(&id("/ns/default/sa/healthy")).await;
    let r = poll_after(&ca.client_as(&healthy), n, "healthy-1").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let (code, lines) = check_off_runtime(&ca.dir, &[]).await;
    assert_eq!((code, lines), healthy_report());

    // A sidecar whose certificate has a minute left of its 6 minutes (1 min + 5 min backdating):
    // it should have renewed long ago.
    let out = ca.tmp.path().join("stale");
    ca.authority
        .issue_to_dir(&id("/ns/default/sa/stale"), Duration::from_secs(60), &out)
        .unwrap();
    let r = poll_after(&ca.client_from_dir(&out), n, "stale-1").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let (code, lines) = check_off_runtime(&ca.dir, &[]).await;
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "only the stale sidecar: {lines:?}");
    assert!(
        lines[0].starts_with("sidecar stale-1 (spiffe://test.tether/ns/default/sa/stale)")
            && lines[0].contains("has not been renewed"),
        "{lines:?}"
    );
    // A window shorter than what it has left does not flag it.
    let (code, _) = check_off_runtime(&ca.dir, &["--warn-within", "10s"]).await;
    assert_eq!(code, Some(0));
}

#[test]
fn the_cli_says_when_a_leaf_was_cut_to_the_intermediates_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path(), &["--intermediate-ttl", "2h"]);
    let out = tmp.path().join("w");
    let issue = |ttl: &str| ca_issue(&dir, id("/ns/default/sa/w").as_str(), &out, &["--ttl", ttl]);
    let o = issue("5h");
    assert_ok(&o, "issue");
    assert!(
        stdout(&o).contains("note: lifetime shortened to end with the issuing CA certificate"),
        "{}",
        stdout(&o)
    );
    let leaf = cert_facts(&read(out.join("cert.pem")));
    let inter = cert_facts(&read(dir.join("intermediate/cert.pem")));
    assert_eq!(
        leaf.not_after, inter.not_after,
        "never past the intermediate"
    );

    // A lifetime that fits says nothing.
    let o = issue("1h");
    assert_ok(&o, "issue");
    assert!(!stdout(&o).contains("note:"), "{}", stdout(&o));
}

#[tokio::test]
async fn the_api_says_when_a_leaf_was_cut_to_the_intermediates_expiry() {
    let mut opts: InitOptions = init_options(TD);
    opts.intermediate_ttl = HOUR;
    opts.settings.default_ttl = 2 * HOUR;
    let ca = TestCa::start_with(opts).await;
    let web = id("/ns/default/sa/web");
    let token = ca.token(&web);
    let key = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&key, &web).unwrap();
    let r = ca.client().enroll(&token, &csr).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    let note = body["note"].as_str().expect("a note");
    assert!(note.contains("shortened"), "{note}");
    let leaf = cert_facts(body["certificate"].as_str().unwrap());
    let inter = cert_facts(&read(ca.dir.join("intermediate/cert.pem")));
    assert_eq!(leaf.not_after, inter.not_after);
    assert!(note.contains(body["not_after"].as_str().unwrap()), "{note}");

    // Renewal too.
    let cred = Enrolled::from_response(&body, key);
    let k = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&k, &web).unwrap();
    let r = ca.client_as(&cred).renew(&csr).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["note"]
        .as_str()
        .is_some_and(|n| n.contains("shortened")));
}

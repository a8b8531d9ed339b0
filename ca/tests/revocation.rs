//! Revocation beyond one serial: `revoke --id` (CLI and `POST /v1/revoke {"id"}`) revokes every
//! live certificate of exactly that identity issued before a time, in one CRL; renewal refuses a
//! revoked certificate inside the transaction that records the new leaf; and `revoke --wait`
//! returns once every sidecar seen in the last minute has acknowledged the new CRL, or fails
//! listing those that did not — leaving out, and listing apart, the sidecars whose certificates
//! are revoked (they can no longer poll).

mod common;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use common::*;
use tether_ca::store::{RenewalGate, Store};

/// Issues `path` with the CLI into `tmp/<name>` and returns the serial.
fn cli_issue(dir: &std::path::Path, path: &str, out: &std::path::Path) -> String {
    let o = ca_issue(dir, id(path).as_str(), out, &[]);
    assert_ok(&o, "issue");
    cert_facts(&read(out.join("cert.pem"))).serial.to_string()
}

fn revoked_serials(dir: &std::path::Path) -> Vec<String> {
    let o = ca_cli(dir, &["list", "--json"]);
    assert_ok(&o, "list --json");
    let mut out: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&stdout(&o))
        .unwrap()
        .into_iter()
        .filter(|r| !r["revoked_at"].is_null())
        .map(|r| r["serial"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn crl_serials(dir: &std::path::Path) -> tether_certs::RevocationList {
    let o = ca_cli(dir, &["crl"]);
    assert_ok(&o, "crl");
    verify_crl_in(dir, stdout(&o).as_bytes())
}

#[test]
fn revoke_id_revokes_exactly_that_identitys_certificates_issued_before_the_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let web = "/ns/default/sa/web";
    let old1 = cli_issue(&dir, web, &tmp.path().join("w1"));
    let old2 = cli_issue(&dir, web, &tmp.path().join("w2"));
    let other = cli_issue(&dir, "/ns/default/sa/api", &tmp.path().join("a"));
    // A sibling path that merely starts with the same text is another identity.
    let sibling = cli_issue(&dir, "/ns/default/sa/web2", &tmp.path().join("w3"));

    // `issued_at` has whole seconds: a cut-off strictly after the old ones and not after the
    // next one takes waiting for the next second.
    let cutoff = now_unix() + 1;
    while now_unix() < cutoff {
        std::thread::sleep(Duration::from_millis(50));
    }
    let newer = cli_issue(&dir, web, &tmp.path().join("w4"));
    let before = time::OffsetDateTime::from_unix_timestamp(cutoff)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let crl_before = crl_serials(&dir).number();

    let o = ca_cli(
        &dir,
        &[
            "revoke",
            "--id",
            id(web).as_str(),
            "--before",
            &before,
            "--reason",
            "key-compromise",
        ],
    );
    assert_ok(&o, "revoke --id --before");
    let out = stdout(&o);
    assert!(
        out.contains("revoked 2 certificates of spiffe://test.tether/ns/default/sa/web"),
        "{out}"
    );
    assert!(out.contains(&old1) && out.contains(&old2), "{out}");
    assert!(!out.contains(&newer), "{out}");

    let mut want = vec![old1.clone(), old2.clone()];
    want.sort();
    assert_eq!(
        revoked_serials(&dir),
        want,
        "exactly the two old web certificates"
    );
    let crl = crl_serials(&dir);
    assert_eq!(crl.number(), crl_before + 1, "one transaction, one new CRL");
    for s in [&old1, &old2] {
        assert!(crl.revoked().contains(&s.parse().unwrap()), "CRL lists {s}");
    }
    for s in [&newer, &other, &sibling] {
        assert!(
            !crl.revoked().contains(&s.parse().unwrap()),
            "CRL spares {s}"
        );
    }

    // Nothing left before the cut-off: says so, changes nothing, exit 0.
    let o = ca_cli(
        &dir,
        &["revoke", "--id", id(web).as_str(), "--before", &before],
    );
    assert_ok(&o, "revoke --id again");
    assert!(
        stdout(&o).contains("revoked 0 certificates"),
        "{}",
        stdout(&o)
    );
    assert_eq!(crl_serials(&dir).number(), crl_before + 1);

    // Without --before: every certificate of the identity issued so far.
    let o = ca_cli(&dir, &["revoke", "--id", id(web).as_str()]);
    assert_ok(&o, "revoke --id");
    assert!(
        stdout(&o).contains("revoked 1 certificate of"),
        "{}",
        stdout(&o)
    );
    let mut want = vec![old1, old2, newer];
    want.sort();
    assert_eq!(revoked_serials(&dir), want);
}

#[test]
fn revoke_takes_a_serial_or_an_id_not_both_nor_neither() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let serial = cli_issue(&dir, "/ns/default/sa/web", &tmp.path().join("w"));
    let web = id("/ns/default/sa/web");

    for (args, names) in [
        (vec!["revoke"], vec!["SERIAL"]),
        (vec!["revoke", &serial, "--id", web.as_str()], vec!["--id"]),
        (
            vec!["revoke", &serial, "--before", "2030-01-01T00:00:00Z"],
            vec!["--before"],
        ),
        (
            vec!["revoke", "--id", web.as_str(), "--before", "yesterday"],
            vec!["--before", "yesterday"],
        ),
        (vec!["revoke", "--id", "not-a-spiffe-id"], vec!["--id"]),
        (
            vec!["revoke", &serial, "--timeout", "5s"],
            vec!["--timeout"],
        ),
    ] {
        let o = ca_cli(&dir, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        for n in names {
            assert!(
                stderr(&o).contains(n),
                "{args:?}: stderr does not name {n}: {}",
                stderr(&o)
            );
        }
    }
    // An identity of another trust domain is an operational error naming the trust domain.
    let o = ca_cli(&dir, &["revoke", "--id", "spiffe://elsewhere.example/x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("trust domain"), "{}", stderr(&o));
    assert!(revoked_serials(&dir).is_empty());
}

#[tokio::test]
async fn admin_revokes_an_identity_over_the_api() {
    let ca = TestCa::start().await;
    let web = id("/ns/default/sa/web");
    let a = ca.enroll(&web).await;
    let b = ca.enroll(&web).await;
    let other = ca.enroll(&id("/ns/default/sa/api")).await;
    let n = ca.authority.latest_crl_number().unwrap();

    // Only the admin.
    let r = ca
        .client_as(&other)
        .revoke(&json!({"id": web.as_str()}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A cut-off in the past matches nothing.
    let r = ca
        .admin()
        .revoke(&json!({"id": web.as_str(), "before": "2000-01-01T00:00:00Z"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["revoked"], 0);
    assert_eq!(r.json()["status"], "nothing_to_revoke");
    assert!(r.json()["crl_number"].is_null());
    assert_eq!(ca.authority.latest_crl_number().unwrap(), n);

    let r = ca
        .admin()
        .revoke(&json!({"id": web.as_str(), "reason": "privilege-withdrawn"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["revoked"], 2);
    let mut got: Vec<String> = body["serials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = vec![a.serial.clone(), b.serial.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(body["crl_number"], n + 1);
    let crl = ca.fetch_crl().await;
    assert_eq!(crl.number(), n + 1);
    assert!(crl.revoked().contains(&a.serial.parse().unwrap()));
    assert!(crl.revoked().contains(&b.serial.parse().unwrap()));
    assert!(!crl.revoked().contains(&other.serial.parse().unwrap()));
    let text = ca.client().get("/metrics").await.text();
    assert_eq!(metric(&text, "tether_ca_revocations_total", &[]), Some(2.0));

    // Bad bodies are 400 and name the problem.
    for (body, says) in [
        (json!({}), "exactly one"),
        (
            json!({"serial": a.serial, "id": web.as_str()}),
            "exactly one",
        ),
        (
            json!({"serial": a.serial, "before": "2030-01-01T00:00:00Z"}),
            "before",
        ),
        (
            json!({"id": web.as_str(), "before": "tomorrow"}),
            "tomorrow",
        ),
        (json!({"id": "spiffe://other.example/x"}), "trust domain"),
        (json!({"id": "nope"}), ""),
    ] {
        let r = ca.admin().revoke(&body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert!(r.error().contains(says), "{body}: {}", r.error());
    }
}

#[tokio::test]
async fn renewal_with_a_revoked_certificate_is_refused_inside_the_recording_transaction() {
    let ca = TestCa::start().await;
    let web = id("/ns/default/sa/web");
    let cred = ca.enroll(&web).await;
    let serial: tether_certs::Serial = cred.serial.parse().unwrap();

    // The store's gate on its own: a renewal presented with a revoked certificate records
    // nothing, whatever was checked before.
    ca.authority.revoke(&serial, None).unwrap();
    let signer = tether_certs::issue::Signer::from_pem(
        &read(ca.dir.join("intermediate/cert.pem")),
        &read(ca.dir.join("intermediate/key.pem")),
    )
    .unwrap();
    let key = tether_certs::keys::generate_key().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let leaf = signer.issue_leaf(&web, &key, HOUR, DAY, now).unwrap();
    let new = tether_ca::store::NewCert {
        serial: leaf.serial.clone(),
        spiffe_id: web.to_string(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        issued_at: now,
        method: "renew",
        der: leaf.der.to_vec(),
        generation: 1,
    };
    let mut store = Store::open(&ca.dir.join("ca.db")).unwrap();
    assert_eq!(
        store.record_renewal(&serial, &new).unwrap(),
        RenewalGate::Revoked
    );
    assert!(store.certificate(&leaf.serial).unwrap().is_none());
    let unknown = tether_certs::Serial::random();
    assert_eq!(
        store.record_renewal(&unknown, &new).unwrap(),
        RenewalGate::Unknown
    );
    assert!(store.certificate(&leaf.serial).unwrap().is_none());

    // And over the API, where the chain itself is still perfectly valid.
    let (_k, csr) = {
        let k = tether_certs::keys::generate_key().unwrap();
        let csr = tether_certs::keys::generate_csr(&k, &web).unwrap();
        (k, csr)
    };
    let r = ca.client_as(&cred).renew(&csr).await;
    r.assert_error(StatusCode::FORBIDDEN, "revoked");
    let renewed = ca.count_issued(|r| r.method == "renew");
    assert_eq!(renewed, 0, "no renewal was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_racing_a_revocation_never_outlive_it() {
    // Renew in a loop with one certificate while the admin revokes it: every renewal either
    // committed before the revocation or was refused — none is recorded after it.
    let ca = TestCa::start().await;
    let web = id("/ns/default/sa/web");
    let cred = ca.enroll(&web).await;
    let client = ca.client_as(&cred);
    // Two concurrent renewers, each going until it has been refused a few times (or a deadline).
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut renewers = vec![];
    for _ in 0..2 {
        let client = client.clone();
        let web = web.clone();
        let accepted = accepted.clone();
        renewers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut refused = 0;
            while refused < 3 && Instant::now() < deadline {
                let k = tether_certs::keys::generate_key().unwrap();
                let csr = tether_certs::keys::generate_csr(&k, &web).unwrap();
                let r = client.renew(&csr).await;
                match r.status {
                    StatusCode::OK => {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    StatusCode::FORBIDDEN => refused += 1,
                    other => panic!("renewal answered {other}: {}", r.text()),
                }
            }
            refused
        }));
    }
    // Revoke while renewals are flowing.
    let acc = accepted.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let acc = acc.clone();
            async move { acc.load(std::sync::atomic::Ordering::SeqCst) >= 4 }
        })
        .await
    );
    let r = ca.admin().revoke(&json!({"serial": cred.serial})).await;
    assert_eq!(r.status, StatusCode::OK);
    // Every renewal recorded from here on would have been recorded after the revocation.
    let renewed = |ca: &TestCa| ca.count_issued(|r| r.method == "renew");
    let at_revocation = renewed(&ca);
    for renewer in renewers {
        assert_eq!(
            renewer.await.unwrap(),
            3,
            "every renewer ran past the revocation"
        );
    }
    assert_eq!(
        renewed(&ca),
        at_revocation,
        "a renewal was recorded after the revocation committed"
    );
}

/// Runs `tether-ca revoke ARGS… --wait` off the runtime and returns its output and duration.
async fn revoke_and_wait(dir: &std::path::Path, args: &[&str]) -> (std::process::Output, Duration) {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut all = vec!["revoke".to_string()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = ca_cli(&dir, &refs);
        (out, started.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_wait_returns_once_every_polling_sidecar_acknowledged() {
    let ca = TestCa::start().await;
    let n = ca.authority.latest_crl_number().unwrap();
    let mut sidecars = vec![];
    for name in ["a", "b"] {
        let cred = ca.enroll(&id(&format!("/ns/default/sa/{name}"))).await;
        let client = ca.client_as(&cred);
        sidecars.push(Sidecar::start(client, &format!("{name}-1"), n, 1));
    }
    let victim = ca.enroll(&id("/ns/default/sa/victim")).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            ca.authority.fleet(Duration::from_secs(60)).unwrap().len() == 2
        })
        .await,
        "both sidecars are in the fleet"
    );

    let (out, took) =
        revoke_and_wait(&ca.dir, &[&victim.serial, "--wait", "--timeout", "10s"]).await;
    assert_ok(&out, "revoke --wait");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("all 2 sidecars acknowledged CRL number {}", n + 1)),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for m in ca.authority.fleet(Duration::from_secs(60)).unwrap() {
        assert!(m.crl_number > n, "{m:?}");
    }
    drop(sidecars);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_wait_fails_listing_a_sidecar_that_stopped_polling() {
    let ca = TestCa::start().await;
    let n = ca.authority.latest_crl_number().unwrap();
    let live = ca.enroll(&id("/ns/default/sa/live")).await;
    let live = Sidecar::start(ca.client_as(&live), "live-1", n, 1);
    // The other sidecar polled once and then went quiet (crashed, partitioned).
    let dead = ca.enroll(&id("/ns/default/sa/dead")).await;
    let dead_client = ca.client_as(&dead);
    let dead_poller = Sidecar::start(dead_client, "dead-1", n, 1);
    let web = id("/ns/default/sa/web");
    ca.enroll(&web).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            ca.authority.fleet(Duration::from_secs(60)).unwrap().len() == 2
        })
        .await
    );
    dead_poller.stop();

    let (out, took) = revoke_and_wait(
        &ca.dir,
        &["--id", web.as_str(), "--wait", "--timeout", "1500ms"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(took >= Duration::from_millis(1500), "waited {took:?}");
    let text = stdout(&out);
    assert!(text.contains("revoked 1 certificate"), "{text}");
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("IDENTITY"))
        .skip(1)
        .collect();
    assert_eq!(
        listed.len(),
        1,
        "only the silent sidecar is listed:\n{text}"
    );
    let row = listed[0];
    assert!(
        row.contains("spiffe://test.tether/ns/default/sa/dead")
            && row.contains("dead-1")
            && row.contains(&format!("  {n}  ")),
        "identity, instance and the CRL number it holds: {row:?}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "1 of 2 sidecars did not acknowledge CRL number {}",
            n + 1
        )),
        "{}",
        stderr(&out)
    );
    drop(live);

    // Nobody polling at all: nothing to wait for.
    let tmp = tempfile::tempdir().unwrap();
    let quiet = init_state(tmp.path());
    let serial = {
        let o = ca_issue(&quiet, web.as_str(), &tmp.path().join("w"), &[]);
        assert_ok(&o, "issue");
        cert_facts(&read(tmp.path().join("w/cert.pem")))
            .serial
            .to_string()
    };
    let o = ca_cli(&quiet, &["revoke", &serial, "--wait"]);
    assert_ok(&o, "revoke --wait with no fleet");
    assert!(stdout(&o).contains("nothing to wait for"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_wait_leaves_out_the_sidecars_whose_certificates_it_revoked() {
    let ca = TestCa::start().await;
    let n = ca.authority.latest_crl_number().unwrap();
    let live = ca.enroll(&id("/ns/default/sa/live")).await;
    let live = Sidecar::start(ca.client_as(&live), "live-1", n, 1);
    let victim_id = id("/ns/default/sa/victim");
    let victim = ca.enroll(&victim_id).await;
    let victim_poller = Sidecar::start(ca.client_as(&victim), "victim-1", n, 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            ca.authority.fleet(Duration::from_secs(60)).unwrap().len() == 2
        })
        .await,
        "both sidecars are in the fleet"
    );

    // The victim keeps polling, but with a revoked certificate its polls no longer count.
    let (out, _) = revoke_and_wait(
        &ca.dir,
        &["--id", victim_id.as_str(), "--wait", "--timeout", "20s"],
    )
    .await;
    assert_ok(&out, "revoke --id --wait");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("all 1 sidecar acknowledged CRL number {}", n + 1)),
        "{text}"
    );
    let apart: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("not waited for"))
        .skip(2)
        .take_while(|l| l.starts_with("spiffe://"))
        .collect();
    assert_eq!(
        apart.len(),
        1,
        "the revoked sidecar is listed apart:\n{text}"
    );
    assert!(
        apart[0].contains(victim_id.as_str())
            && apart[0].contains("victim-1")
            && apart[0].contains(&victim.serial),
        "{apart:?}"
    );
    // `fleet` marks it too.
    let fleet = ca_cli_async(&ca.dir, &["fleet"]).await;
    assert!(
        stdout(&fleet).contains(&format!("{} (revoked)", victim.serial)),
        "{}",
        stdout(&fleet)
    );

    // The library call says the same.
    drop(live);
    let ack = tokio::task::block_in_place(|| {
        ca.authority
            .wait_for_acknowledgement(n + 1, Duration::from_secs(1))
            .unwrap()
    });
    let revoked: Vec<&str> = ack.revoked.iter().map(|m| m.instance.as_str()).collect();
    assert_eq!(revoked, vec!["victim-1"]);
    assert!(!ack.lagging.iter().any(|m| m.instance == "victim-1"));
    drop(victim_poller);
}

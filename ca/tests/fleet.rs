//! The sidecar's side of the CRL contract and the fleet it builds: every `GET /v1/crl` answer
//! (200 and 304) and `GET /v1/bundle` carry `x-tether-bundle-version`; a 200 body is the CRL
//! followed by the certificate of the intermediate that signed it; a poll with a valid client
//! certificate records the sidecar (instance, identity, serial, expiry, the CRL number it
//! acknowledges, its bundle version) in the `fleet` table, which `tether-ca fleet` prints and
//! `tether_ca_fleet_size` counts; a poll whose certificate does not authenticate records
//! nothing and is still answered. The table holds only what could be true: a poll reporting a
//! CRL number or bundle version never published is 400, and a row belongs to the identity and
//! certificate lineage that created it (another one writing under its instance is 403), also in
//! a state dir from before rows had owners.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use common::*;

/// The fleet row of `instance`, if there is one (seen within the last hour).
fn row(ca: &TestCa, instance: &str) -> Option<tether_ca::store::FleetMember> {
    ca.authority
        .fleet(Duration::from_secs(3600))
        .unwrap()
        .into_iter()
        .find(|m| m.instance == instance)
}

/// `tether_ca_request_failures_total{endpoint="crl",reason}` as the API's `/metrics` says.
async fn crl_failures(ca: &TestCa, reason: &str) -> f64 {
    let text = ca.client().get("/metrics").await.text();
    metric(
        &text,
        "tether_ca_request_failures_total",
        &[("endpoint", "crl"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn crl_and_bundle_answers_carry_the_bundle_version_and_the_signer() {
    let ca = TestCa::start().await;
    let client = ca.client();

    let r = client.get("/v1/crl").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(bundle_version(&r), 1, "1 after init");
    let (crl, signer) = crl_and_signer(&r.body);
    assert_eq!(
        signer,
        ders(&read(ca.dir.join("intermediate/cert.pem")))[0],
        "the certificate after the CRL is the intermediate that signed it"
    );
    // And that intermediate chains to the published bundle.
    let root = ders(&read(ca.dir.join("bundle.pem")))[0].clone();
    assert!(signed_by(&signer, &root));
    let n = crl.number();

    // 304 from a long-poll that timed out, and from If-None-Match.
    let r = client.get(&format!("/v1/crl?after={n}&wait=100ms")).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(bundle_version(&r), 1);
    let mut req = request(http::Method::GET, "/v1/crl", bytes::Bytes::new());
    req.headers_mut()
        .insert("if-none-match", format!("\"{n}\"").parse().unwrap());
    let r = client.send(req).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(bundle_version(&r), 1);

    let r = client.get("/v1/bundle").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(bundle_version(&r), 1);
}

#[tokio::test]
async fn a_poll_with_a_client_certificate_records_the_sidecar() {
    let ca = TestCa::start().await;
    let web = id("/ns/default/sa/web");
    let cred = ca.enroll(&web).await;
    let sidecar = ca.client_as(&cred);
    let n = ca.authority.latest_crl_number().unwrap();
    assert!(ca
        .authority
        .fleet(Duration::from_secs(60))
        .unwrap()
        .is_empty());

    let before = now_unix();
    let r = poll_after(&sidecar, n, "web-7f3a").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    let fleet = ca.authority.fleet(Duration::from_secs(60)).unwrap();
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    let m = &fleet[0];
    assert_eq!(m.instance, "web-7f3a");
    assert_eq!(m.spiffe_id, web.as_str());
    assert_eq!(m.serial, cred.serial);
    assert_eq!(m.cert_not_after, cert_facts(&cred.certificate).not_after);
    assert_eq!(m.crl_number, n, "after=N acknowledges N");
    assert_eq!(m.bundle_version, Some(1));
    assert!(m.last_seen >= before && m.last_seen <= now_unix());

    // The next poll updates the same row (a sidecar that is behind gets the CRL at once).
    let r = poll_crl(&sidecar, "after=0&wait=5s", Some("web-7f3a"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let fleet = ca.authority.fleet(Duration::from_secs(60)).unwrap();
    assert_eq!(fleet.len(), 1);
    assert_eq!(fleet[0].crl_number, 0);
    assert_eq!(fleet[0].bundle_version, None);
    assert!(!fleet[0].cert_revoked);

    // Without an instance header the serial names the row; without a bundle version it is
    // unknown; without `after` the sidecar holds no CRL (0).
    let r = poll_crl(&sidecar, "", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let fleet = ca.authority.fleet(Duration::from_secs(60)).unwrap();
    assert_eq!(fleet.len(), 2);
    let by_serial = fleet.iter().find(|m| m.instance == cred.serial).unwrap();
    assert_eq!(by_serial.bundle_version, None);
    assert_eq!(by_serial.crl_number, 0);

    // An unusable instance id (control characters, absurd length) falls back to the serial too.
    let long = "x".repeat(500);
    poll_after(&sidecar, n, &long).await;
    poll_after(&sidecar, n, "a\tb").await;
    let fleet = ca.authority.fleet(Duration::from_secs(60)).unwrap();
    assert_eq!(fleet.len(), 2, "{fleet:?}");
    assert_eq!(
        fleet
            .iter()
            .find(|m| m.instance == cred.serial)
            .unwrap()
            .crl_number,
        n
    );
}

#[tokio::test]
async fn polls_that_do_not_authenticate_are_answered_but_not_recorded() {
    let ca = TestCa::start().await;
    let n = ca.authority.latest_crl_number().unwrap();

    // No client certificate.
    let r = poll_after(&ca.client(), n, "anon").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // A revoked certificate.
    let gone = ca.enroll(&id("/ns/default/sa/gone")).await;
    let revoked = ca.admin().revoke(&json!({"serial": gone.serial})).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let r = poll_crl(&ca.client_as(&gone), "after=0", Some("gone"), Some(1)).await;
    assert_eq!(r.status, StatusCode::OK, "the CRL is still served");
    crl_and_signer(&r.body);

    // A certificate from another CA of the same trust domain name.
    let other_tmp = tempfile::tempdir().unwrap();
    let other = tether_ca::Authority::open(&init_state(other_tmp.path())).unwrap();
    let out = other_tmp.path().join("svc");
    other
        .issue_to_dir(&id("/ns/default/sa/web"), HOUR, &out)
        .unwrap();
    let n = ca.authority.latest_crl_number().unwrap();
    let r = poll_after(&ca.client_from_dir(&out), n, "foreign").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    assert!(
        ca.authority
            .fleet(Duration::from_secs(3600))
            .unwrap()
            .is_empty(),
        "nothing that failed authentication is in the fleet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_cli_and_fleet_size_metric_show_recent_sidecars() {
    let ca = TestCa::start().await;
    let n = ca.authority.latest_crl_number().unwrap();
    let mut serials = vec![];
    for name in ["a", "b"] {
        let cred = ca.enroll(&id(&format!("/ns/default/sa/{name}"))).await;
        let client = ca.client_as(&cred);
        let r = poll_after(&client, n, &format!("{name}-1")).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        serials.push(cred.serial);
    }

    let admin = ca.client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(
                &admin.get("/metrics").await.text(),
                "tether_ca_fleet_size",
                &[],
            ) == Some(2.0)
        })
        .await,
        "tether_ca_fleet_size reaches 2"
    );

    let dir = ca.dir.clone();
    let (json_out, table_out, old_out) = tokio::task::spawn_blocking(move || {
        (
            ca_cli(&dir, &["fleet", "--json"]),
            ca_cli(&dir, &["fleet"]),
            ca_cli(&dir, &["fleet", "--within", "1s"]),
        )
    })
    .await
    .unwrap();
    assert_ok(&json_out, "fleet --json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&json_out)).unwrap();
    assert_eq!(rows.len(), 2, "{}", stdout(&json_out));
    assert_eq!(rows[0]["instance"], "a-1");
    assert_eq!(rows[0]["spiffe_id"], id("/ns/default/sa/a").as_str());
    assert_eq!(rows[0]["serial"], serials[0].as_str());
    assert_eq!(rows[0]["crl_number"], n);
    assert_eq!(rows[0]["bundle_version"], 1);
    assert!(rows[0]["cert_not_after"].as_i64().unwrap() > now_unix());
    assert!(rows[0]["last_seen"].as_i64().unwrap() <= now_unix());

    assert_ok(&table_out, "fleet");
    let table = stdout(&table_out);
    for want in [
        "INSTANCE",
        "IDENTITY",
        "CERT NOT AFTER",
        "BUNDLE",
        "LAST SEEN",
        "a-1",
        "b-1",
        serials[1].as_str(),
        &format!("CRL number {n}, bundle version 1; 2 sidecars"),
    ] {
        assert!(table.contains(want), "fleet table lacks {want:?}:\n{table}");
    }

    // --within narrows the window: wait until both rows are older than it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let old_out2 = ca_cli_async(&ca.dir, &["fleet", "--within", "1s"]).await;
    assert_ok(&old_out, "fleet --within 1s");
    assert_ok(&old_out2, "fleet --within 1s");
    assert!(
        !stdout(&old_out2).contains("a-1") && stdout(&old_out2).contains("0 sidecars"),
        "{}",
        stdout(&old_out2)
    );
}

#[tokio::test]
async fn a_poll_can_report_only_a_crl_and_a_bundle_this_ca_published() {
    let ca = TestCa::start().await;
    let web = ca.enroll(&id("/ns/default/sa/web")).await;
    let sidecar = ca.client_as(&web);
    let n = ca.authority.latest_crl_number().unwrap();
    assert_eq!(
        poll_after(&sidecar, n, "web-1").await.status,
        StatusCode::NOT_MODIFIED
    );
    let recorded = row(&ca, "web-1").expect("recorded");
    assert_eq!((recorded.crl_number, recorded.bundle_version), (n, Some(1)));

    // A CRL number past the newest, a bundle version past the current one: refused, the row
    // keeps what was true.
    for (query, version, needle) in [
        (format!("after={}", n + 1), Some(1), "names no CRL"),
        ("after=999999".to_string(), Some(1), "names no CRL"),
        (format!("after={n}"), Some(2), "no bundle this CA published"),
        (
            format!("after={n}"),
            Some(u64::MAX),
            "no bundle this CA published",
        ),
    ] {
        let r = poll_crl(&sidecar, &query, Some("web-1"), version).await;
        r.assert_error(StatusCode::BAD_REQUEST, needle);
        assert_eq!(row(&ca, "web-1").as_ref(), Some(&recorded), "{query}");
    }
    // Garbage: no sign, no exponent, no second `after`, a bundle version that is a number.
    for query in [
        "after=-1",
        "after=%2B5",
        "after=1e3",
        "after=1&after=999999",
    ] {
        let r = poll_crl(&sidecar, query, Some("web-1"), Some(1)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text());
    }
    let mut req = request(Method::GET, &format!("/v1/crl?after={n}"), Bytes::new());
    req.headers_mut()
        .insert("x-tether-instance", "web-1".parse().unwrap());
    req.headers_mut()
        .insert("x-tether-bundle-version", "latest".parse().unwrap());
    sidecar
        .send(req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "not a bundle version");
    // Without a certificate too: a long-poll for a CRL that was never published is no poll.
    poll_after(&ca.client(), 999_999, "anon")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "names no CRL");
    assert_eq!(row(&ca, "web-1").as_ref(), Some(&recorded));
    assert_eq!(crl_failures(&ca, "bad_request").await, 10.0);

    // Once that CRL exists, holding it is acknowledged.
    let victim = ca.enroll(&id("/ns/default/sa/victim")).await;
    let revoked = ca.admin().revoke(&json!({"serial": victim.serial})).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    let r = poll_after(&sidecar, n + 1, "web-1").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text());
    assert_eq!(row(&ca, "web-1").unwrap().crl_number, n + 1);
}

#[tokio::test]
async fn a_fleet_row_belongs_to_the_identity_and_lineage_that_created_it() {
    let ca = TestCa::start().await;
    let web = id("/ns/default/sa/web");
    let first = ca.enroll(&web).await;
    let n = ca.authority.latest_crl_number().unwrap();
    assert_eq!(
        poll_after(&ca.client_as(&first), n, "shared").await.status,
        StatusCode::NOT_MODIFIED
    );
    let owned = row(&ca, "shared").expect("recorded");
    assert_eq!(owned.serial, first.serial);

    // Another identity, and another enrollment of the same identity (a second replica with its
    // own token), may not write under it while its owner's certificate can still poll.
    let evil = ca.enroll(&id("/ns/default/sa/evil")).await;
    let replica = ca.enroll(&web).await;
    for cred in [&evil, &replica] {
        let r = poll_crl(&ca.client_as(cred), "after=0", Some("shared"), Some(1)).await;
        r.assert_error(StatusCode::FORBIDDEN, "belongs to another sidecar");
        assert!(
            !r.text().contains(web.as_str()),
            "the owner is not disclosed"
        );
        assert_eq!(row(&ca, "shared").as_ref(), Some(&owned));
    }
    assert_eq!(crl_failures(&ca, "forbidden").await, 2.0);

    // A renewal continues the lineage: the renewed certificate keeps the row.
    let key = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&key, &web).unwrap();
    let r = ca.client_as(&first).renew(&csr).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let renewed = Enrolled::from_response(&r.json(), key);
    let r = poll_after(&ca.client_as(&renewed), n, "shared").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text());
    assert_eq!(row(&ca, "shared").unwrap().serial, renewed.serial);

    // Once the owner's certificate is revoked it can never poll again: the same identity may
    // enroll afresh under that instance (a sidecar whose renewal was refused does), another
    // identity still may not.
    let r = ca.admin().revoke(&json!({"serial": renewed.serial})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(row(&ca, "shared").unwrap().cert_revoked);
    let r = poll_crl(&ca.client_as(&evil), "after=0", Some("shared"), Some(1)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = poll_crl(&ca.client_as(&replica), "after=0", Some("shared"), Some(1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let taken = row(&ca, "shared").unwrap();
    assert_eq!(
        (taken.serial.as_str(), taken.cert_revoked),
        (replica.serial.as_str(), false)
    );
    // And the lineage that left cannot come back with the old, revoked certificate.
    let r = poll_crl(&ca.client_as(&renewed), "after=0", Some("shared"), Some(1)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "answered, as every unauthenticated poll"
    );
    assert_eq!(row(&ca, "shared").unwrap().serial, replica.serial);
}

#[tokio::test]
async fn a_fleet_from_before_row_owners_is_upgraded_and_adopted_by_its_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let web = id("/ns/default/sa/web");
    let out = tmp.path().join("web");
    let serial = {
        let ca = tether_ca::Authority::open(&dir).unwrap();
        ca.issue_to_dir(&web, HOUR, &out).unwrap().serial
    };
    // Take the database back to before lineages, with a row written then.
    {
        let db = rusqlite::Connection::open(dir.join("ca.db")).unwrap();
        db.execute_batch(&format!(
            "ALTER TABLE fleet DROP COLUMN lineage;
             ALTER TABLE certificates DROP COLUMN lineage;
             INSERT INTO fleet (instance, spiffe_id, serial, cert_not_after, crl_number,
                                bundle_version, last_seen)
             VALUES ('old-1', '{web}', '{serial}', {far}, 1, 1, {now});",
            far = now_unix() + 3600,
            now = now_unix(),
        ))
        .unwrap();
    }
    let ca = TestCa::serve(tmp, dir).await;
    let n = ca.authority.latest_crl_number().unwrap();
    // Another identity may not take the old row; its own identity adopts it.
    let evil = ca.enroll(&id("/ns/default/sa/evil")).await;
    let r = poll_after(&ca.client_as(&evil), n, "old-1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let sidecar = ca.client_from_dir(&out);
    let r = poll_after(&sidecar, n, "old-1").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text());
    assert_eq!(row(&ca, "old-1").unwrap().crl_number, n);
    // From then on it is that lineage's: a new enrollment of the same identity may not take it.
    let replica = ca.enroll(&web).await;
    let r = poll_after(&ca.client_as(&replica), n, "old-1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
}

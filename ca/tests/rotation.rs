//! Root rotation without restarts: `tether-ca root rotate` (the real binary, while the API runs
//! in-process on the same state dir) makes generation 2; the bundle holds old + new; a running
//! server serves the new bundle and version, signs with the new intermediate and presents a TLS
//! certificate that chains to the new root, without restart — and a long-poll waiting across the
//! rotation is answered with the new bundle version already in place. `root retire` refuses while
//! old leaves live or sidecars lag, succeeds after they are revoked or with --force, and never
//! retires the current or last root. A state dir from before rotation is upgraded in place.

mod common;

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use common::*;
use tether_ca::Authority;

fn roots_json(dir: &Path) -> Vec<serde_json::Value> {
    let o = ca_cli(dir, &["root", "list", "--json"]);
    assert_ok(&o, "root list --json");
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn fingerprint_of(dir: &Path, generation: u64) -> String {
    roots_json(dir)
        .into_iter()
        .find(|r| r["generation"] == generation)
        .unwrap_or_else(|| panic!("no generation {generation}"))["fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_switches_signer_bundle_and_tls_certificate_of_a_running_server() {
    let ca = TestCa::start().await;
    let old_root = read(ca.dir.join("bundle.pem"));
    let old_admin = (
        read(ca.dir.join("admin/chain.pem")),
        read(ca.dir.join("admin/key.pem")),
    );
    let old_leaf = ca.enroll(&id("/ns/default/sa/old")).await;
    let n = ca.authority.latest_crl_number().unwrap();

    // A sidecar that trusts only the old root is long-polling when the rotation happens.
    let poller = ca.client_trusting(&old_root);
    let woken =
        tokio::spawn(
            async move { poll_crl(&poller, &format!("after={n}&wait=20s"), None, None).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = ca_cli_async(&ca.dir, &["root", "rotate"]).await;
    assert_ok(&out, "root rotate");
    assert!(
        stdout(&out).contains("rotated to generation 2"),
        "{}",
        stdout(&out)
    );

    // The published bundle holds old + new, old first.
    let bundle = read(ca.dir.join("bundle.pem"));
    let roots = ders(&bundle);
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0], ders(&old_root)[0]);
    let new_root = tether_certs::pem::encode("CERTIFICATE", &roots[1]);
    let new_inter = read(ca.dir.join("generations/2/intermediate/cert.pem"));
    assert!(signed_by(&ders(&new_inter)[0], &roots[1]));
    // The old root also certified the new intermediate (same name and key): the cross-certificate.
    let cross = ders(&read(ca.dir.join("generations/2/intermediate/cross.pem")))[0].clone();
    assert!(signed_by(&cross, &roots[0]));
    assert_eq!(read(ca.dir.join("admin/bundle.pem")), bundle);

    // The long-poll wakes with the rotation's CRL, signed by the new intermediate, and the new
    // bundle version is already served with it. The cross-certificate follows the signer, so
    // this sidecar — still on the old bundle — can verify the CRL before it fetches the bundle.
    let r = tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("the long-poll is answered")
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(bundle_version(&r), 2);
    let (crl, signers) = crl_and_signers(&r.body);
    assert!(crl.number() > n);
    assert_eq!(signers, vec![ders(&new_inter)[0].clone(), cross.clone()]);

    // /v1/bundle: both roots, version 2.
    let both = ca.client_trusting(&bundle);
    let r = both.get("/v1/bundle").await;
    assert_eq!(r.text(), bundle);
    assert_eq!(bundle_version(&r), 2);

    // The API's TLS certificate is now issued by the new intermediate and chains to the new root;
    // the cross-certificate lets a client still on the old bundle connect too (it fetches the new
    // bundle over exactly this connection).
    for trusted in [&new_root, &old_root] {
        let tls = ca.client_trusting(trusted).connect(b"http/1.1").await;
        let served: Vec<Vec<u8>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap()
            .iter()
            .map(|c| c.to_vec())
            .collect();
        assert_eq!(
            served.len(),
            3,
            "server certificate, intermediate, cross-certificate"
        );
        assert!(signed_by(&served[0], &ders(&new_inter)[0]));
        assert_eq!(served[1], ders(&new_inter)[0]);
        assert_eq!(served[2], cross);
    }
    let r = ca.client_trusting(&new_root).try_get("/v1/bundle").await;
    assert!(
        r.is_ok(),
        "a client trusting only the new root is served: {r:?}"
    );

    // New leaves are signed by the new intermediate and chain to the new root — and, through the
    // cross-certificate, to the old one for peers that have not fetched the new bundle yet.
    let web = id("/ns/default/sa/web");
    let token = ca.token(&web);
    let key = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&key, &web).unwrap();
    let r = both.enroll(&token, &csr).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let fresh = Enrolled::from_response(&r.json(), key);
    assert!(signed_by(
        &ders(&fresh.certificate)[0],
        &ders(&new_inter)[0]
    ));
    assert!(chains_to(&fresh.chain, &new_root));
    assert!(chains_to(&fresh.chain, &old_root));
    let without_cross = format!("{}{new_inter}", fresh.certificate);
    assert!(!chains_to(&without_cross, &old_root));
    assert_eq!(r.json()["bundle"], bundle.as_str());

    // A leaf from the old generation still renews (its root is still trusted) into a new one.
    let k = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&k, &id("/ns/default/sa/old")).unwrap();
    let r = ca
        .client_trusting_with(&bundle, &old_leaf.chain, &old_leaf.key_pem())
        .renew(&csr)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(chains_to(r.json()["chain"].as_str().unwrap(), &new_root));

    // The admin credential was re-issued under the new root; the old one is revoked.
    let admin_chain = read(ca.dir.join("admin/chain.pem"));
    assert!(chains_to(&admin_chain, &new_root));
    assert_eq!(
        mode(&ca.dir.join("admin/key.pem")),
        0o600,
        "the re-issued admin key is private"
    );
    let admin = ca.client_trusting_with(&bundle, &admin_chain, &read(ca.dir.join("admin/key.pem")));
    let r = ca
        .client_trusting_with(&bundle, &old_admin.0, &old_admin.1)
        .revoke(&json!({"serial": old_leaf.serial}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());

    // A CRL after the rotation is signed by the new intermediate and lists serials of every
    // generation.
    let r = admin.revoke(&json!({"serial": old_leaf.serial})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = admin.revoke(&json!({"serial": fresh.serial})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = both.get("/v1/crl").await;
    let (crl, signers) = crl_and_signers(&r.body);
    assert_eq!(signers[0], ders(&new_inter)[0]);
    assert!(crl.revoked().contains(&old_leaf.serial.parse().unwrap()));
    assert!(crl.revoked().contains(&fresh.serial.parse().unwrap()));
    assert_eq!(bundle_version(&r), 2);

    // The server's own view agrees.
    assert_eq!(ca.authority.generation(), 2);
    assert_eq!(ca.authority.bundle_version(), 2);
    let text = both.get("/metrics").await.text();
    assert_eq!(metric(&text, "tether_ca_bundle_version", &[]), Some(2.0));
}

#[test]
fn rotate_lays_out_generation_2_and_root_list_shows_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let o = ca_cli(
        &dir,
        &[
            "root",
            "rotate",
            "--ttl",
            "90d",
            "--intermediate-ttl",
            "10d",
        ],
    );
    assert_ok(&o, "root rotate");

    let g2 = dir.join("generations/2");
    assert_private_generation(&g2);
    assert_eq!(mode(&dir.join("generations")), 0o700);
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["2"], "no staging directory is left behind");
    assert_eq!(
        read(dir.join("server/chain.pem")),
        read(g2.join("server/chain.pem"))
    );
    assert_eq!(
        read(dir.join("admin/chain.pem")),
        read(g2.join("admin/chain.pem"))
    );
    // Generation 1 stays where it was.
    assert!(dir.join("root/key.pem").is_file() && dir.join("intermediate/key.pem").is_file());

    let now = now_unix();
    let new_root = cert_facts(&read(g2.join("root/cert.pem")));
    let new_inter = cert_facts(&read(g2.join("intermediate/cert.pem")));
    assert!((new_root.not_after - now - 90 * 86400).abs() < 120);
    assert!((new_inter.not_after - now - 10 * 86400).abs() < 120);

    let roots = roots_json(&dir);
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0]["generation"], 1);
    assert_eq!(roots[0]["status"], "trusted");
    assert_eq!(roots[1]["status"], "current");
    assert_eq!(roots[1]["trust_domain"], TD);
    assert_eq!(
        roots[1]["fingerprint"],
        tether_certs::bundle::fingerprint(&ders(&read(g2.join("root/cert.pem")))[0])
    );
    let o = ca_cli(&dir, &["root", "list"]);
    assert_ok(&o, "root list");
    let table = stdout(&o);
    assert!(
        table.contains("FINGERPRINT") && table.contains("current"),
        "{table}"
    );

    // New leaves from the CLI chain to the new root.
    let out = tmp.path().join("w");
    let o = ca_issue(&dir, id("/ns/default/sa/w").as_str(), &out, &[]);
    assert_ok(&o, "issue");
    let new_root_pem = read(g2.join("root/cert.pem"));
    assert!(chains_to(&read(out.join("chain.pem")), &new_root_pem));
    assert_eq!(
        ders(&read(out.join("chain.pem"))).len(),
        3,
        "leaf, intermediate, cross-certificate"
    );
    assert_eq!(read(out.join("bundle.pem")), read(dir.join("bundle.pem")));
    let ca = Authority::open(&dir).unwrap();
    let rec = ca
        .list(None)
        .unwrap()
        .into_iter()
        .find(|r| r.spiffe_id == id("/ns/default/sa/w").as_str())
        .unwrap();
    assert_eq!(rec.generation, 2, "the issuing generation is recorded");
}

fn issue(dir: &Path, path: &str, out: &Path) -> String {
    let o = ca_cli(
        dir,
        &["issue", id(path).as_str(), "--out", out.to_str().unwrap()],
    );
    assert_ok(&o, "issue");
    cert_facts(&read(out.join("cert.pem"))).serial.to_string()
}

#[test]
fn retire_refuses_while_old_leaves_live_and_succeeds_once_they_are_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let a = issue(&dir, "/ns/default/sa/a", &tmp.path().join("a"));
    let b = issue(&dir, "/ns/default/sa/b", &tmp.path().join("b"));
    assert_ok(&ca_cli(&dir, &["root", "rotate"]), "root rotate");
    let old = fingerprint_of(&dir, 1);
    let new = fingerprint_of(&dir, 2);

    let o = ca_cli(&dir, &["root", "retire", &old]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&a) && stdout(&o).contains(&b),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("refusing to retire") && stderr(&o).contains("2 certificate(s)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        ders(&read(dir.join("bundle.pem"))).len(),
        2,
        "nothing changed"
    );

    // One revoked, one left: still refused, naming only the live one.
    assert_ok(&ca_cli(&dir, &["revoke", &a]), "revoke a");
    let o = ca_cli(&dir, &["root", "retire", &old[..12]]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        !stdout(&o).contains(&a) && stdout(&o).contains(&b),
        "{}",
        stdout(&o)
    );

    assert_ok(&ca_cli(&dir, &["revoke", &b]), "revoke b");
    let crl_before = Authority::open(&dir).unwrap().latest_crl_number().unwrap();
    let o = ca_cli(&dir, &["root", "retire", &old]);
    assert_ok(&o, "root retire after revoking");
    assert!(stdout(&o).contains("bundle version 3"), "{}", stdout(&o));
    let bundle = read(dir.join("bundle.pem"));
    assert_eq!(
        ders(&bundle),
        ders(&read(dir.join("generations/2/root/cert.pem")))
    );
    assert_eq!(read(dir.join("admin/bundle.pem")), bundle);
    let ca = Authority::open(&dir).unwrap();
    assert_eq!(ca.bundle_version(), 3);
    assert!(
        ca.latest_crl_number().unwrap() > crl_before,
        "a CRL wakes the pollers"
    );
    let roots = roots_json(&dir);
    assert_eq!(roots[0]["status"], "retired");
    assert_eq!(roots[1]["status"], "current");
    // The cross-certificate from the retired root is dropped from every chain handed out.
    for chain in ["server/chain.pem", "admin/chain.pem"] {
        assert_eq!(ders(&read(dir.join(chain))).len(), 2, "{chain}");
    }
    issue(&dir, "/ns/default/sa/c", &tmp.path().join("c"));
    assert_eq!(ders(&read(tmp.path().join("c/chain.pem"))).len(), 2);

    // Never again, never the current (and last) root.
    for (fp, says) in [
        (old.as_str(), "already retired"),
        (new.as_str(), "current root"),
        ("abc", "at least 8"),
        ("0000000000", "no root"),
    ] {
        let o = ca_cli(&dir, &["root", "retire", fp, "--force"]);
        assert_eq!(o.status.code(), Some(1), "{fp}");
        assert!(stderr(&o).contains(says), "{fp}: {}", stderr(&o));
    }
    assert_eq!(ders(&read(dir.join("bundle.pem"))).len(), 1);
}

#[test]
fn retire_force_overrides_live_leaves_which_then_stop_authenticating() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let out = tmp.path().join("a");
    issue(&dir, "/ns/default/sa/a", &out);
    assert_ok(&ca_cli(&dir, &["root", "rotate"]), "root rotate");
    let old = fingerprint_of(&dir, 1);

    let o = ca_cli(&dir, &["root", "retire", &old, "--force"]);
    assert_ok(&o, "root retire --force");
    assert!(stderr(&o).contains("1 certificate(s)"), "{}", stderr(&o));
    assert_eq!(ders(&read(dir.join("bundle.pem"))).len(), 1);

    // The old leaf no longer chains to anything the CA trusts: renewal is refused.
    let ca = Authority::open(&dir).unwrap();
    let chain = tether_certs::pem::certificates(read(out.join("chain.pem")).as_bytes()).unwrap();
    let key = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&key, &id("/ns/default/sa/a")).unwrap();
    let err = ca.renew(&chain, csr.as_bytes()).unwrap_err();
    assert!(matches!(err, tether_ca::CaError::Forbidden(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_waits_for_every_recent_sidecar_to_report_the_new_bundle() {
    let ca = TestCa::start().await;
    assert_ok(
        &ca_cli_async(&ca.dir, &["root", "rotate"]).await,
        "root rotate",
    );
    let bundle = read(ca.dir.join("bundle.pem"));
    let both = ca.client_trusting(&bundle);
    assert!(
        eventually(Duration::from_secs(5), || async {
            bundle_version(&both.get("/v1/bundle").await) == 2
        })
        .await,
        "the server reloads"
    );
    // A sidecar enrolled under the new root that still reports the bundle from before.
    let cred = ca.enroll(&id("/ns/default/sa/web")).await;
    assert!(chains_to(
        &cred.chain,
        &tether_certs::pem::encode("CERTIFICATE", &ders(&bundle)[1])
    ));
    let sidecar = ca.client_trusting_with(&bundle, &cred.chain, &cred.key_pem());
    let n = ca.authority.latest_crl_number().unwrap();
    let r = poll_after(&sidecar, n, "web-1").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    let old = fingerprint_of(&ca.dir, 1);
    let o = ca_cli_async(&ca.dir, &["root", "retire", &old]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("without bundle version 2") && stdout(&o).contains("web-1"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("1 sidecar(s)"), "{}", stderr(&o));

    // Once it reports the new bundle, nothing blocks (generation 1's server and admin
    // credentials were superseded and revoked by the rotation).
    let r = poll_crl(&sidecar, &format!("after={n}"), Some("web-1"), Some(2)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let o = ca_cli_async(&ca.dir, &["root", "retire", &old]).await;
    assert_ok(&o, "root retire");

    // The running server publishes the one-root bundle as version 3, and stops vouching for
    // itself through the retired root.
    let new_only = read(ca.dir.join("bundle.pem"));
    assert_eq!(ders(&new_only).len(), 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let r = both.get("/v1/bundle").await;
            bundle_version(&r) == 3 && r.text() == new_only
        })
        .await,
        "the server serves the retired bundle"
    );
    let old_root = tether_certs::pem::encode("CERTIFICATE", &ders(&bundle)[0]);
    let r = ca.client_trusting(&old_root).try_get("/v1/bundle").await;
    assert!(r.is_err(), "no chain to the retired root is served: {r:?}");
    let (_, signer) = crl_and_signer(&both.get("/v1/crl").await.body);
    assert_eq!(
        signer,
        ders(&read(ca.dir.join("generations/2/intermediate/cert.pem")))[0]
    );
}

#[test]
fn a_state_dir_from_before_rotation_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let serial = issue(&dir, "/ns/default/sa/a", &tmp.path().join("a"));
    // Take the database back to the schema from before generations existed.
    {
        let db = rusqlite::Connection::open(dir.join("ca.db")).unwrap();
        db.execute_batch(
            "DROP TABLE generations;
             DROP INDEX certificates_by_generation;
             ALTER TABLE certificates DROP COLUMN generation;
             ALTER TABLE crls DROP COLUMN generation;
             DELETE FROM meta WHERE key IN ('generation', 'bundle_version');",
        )
        .unwrap();
    }
    let ca = Authority::open(&dir).expect("an old state dir opens");
    assert_eq!(ca.generation(), 1);
    assert_eq!(ca.bundle_version(), 1);
    let rec = ca
        .list(None)
        .unwrap()
        .into_iter()
        .find(|r| r.serial == serial)
        .unwrap();
    assert_eq!(rec.generation, 1, "old rows default to generation 1");
    drop(ca);

    let roots = roots_json(&dir);
    assert_eq!(roots.len(), 1);
    assert_eq!(
        roots[0]["fingerprint"],
        tether_certs::bundle::fingerprint(&ders(&read(dir.join("root/cert.pem")))[0])
    );
    // And rotation works on it, with the old leaf blocking retirement.
    assert_ok(&ca_cli(&dir, &["root", "rotate"]), "root rotate");
    let o = ca_cli(&dir, &["root", "retire", &fingerprint_of(&dir, 1)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(&serial), "{}", stdout(&o));
}

#[test]
fn a_process_that_missed_the_rotation_signs_nothing_with_the_old_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    // Opened before the rotation and never told about it (no server loop reloading it).
    let stale = Authority::open(&dir).unwrap();
    assert_ok(&ca_cli(&dir, &["root", "rotate"]), "root rotate");
    assert_eq!(stale.generation(), 1);

    let new_root = read(dir.join("generations/2/root/cert.pem"));
    let out = tmp.path().join("w");
    let issued = stale
        .issue_to_dir(&id("/ns/default/sa/w"), HOUR, &out)
        .unwrap();
    assert!(
        chains_to(&issued.chain, &new_root),
        "issued by the new intermediate"
    );
    assert_eq!(read(out.join("chain.pem")), issued.chain);
    assert_eq!(stale.generation(), 2, "it reloaded on the way");
    assert_eq!(ders(&issued.bundle).len(), 2);

    // Same for CRLs.
    let stale = {
        let s = Authority::open(&dir).unwrap();
        assert_ok(&ca_cli(&dir, &["root", "rotate"]), "root rotate again");
        s
    };
    let serial: tether_certs::Serial = issued.serial.parse().unwrap();
    stale.revoke(&serial, None).unwrap();
    let crl = stale.latest_crl().unwrap().unwrap();
    assert_eq!(crl.generation, 3);
    let inter3 = ders(&read(dir.join("generations/3/intermediate/cert.pem")))[0].clone();
    let list = tether_certs::RevocationList::parse_and_verify(&crl.der, &inter3).unwrap();
    assert!(list.revoked().contains(&serial));
}

//! CA replicas sharing one database: `replica add` writes a state dir that `tether-ca serve`
//! runs, tokens stay single-use and serials unique across replicas, CRL numbers are one
//! sequence, a `root rotate` through one replica reaches the other without a restart, and
//! `replica remove` revokes a replica and stops it from serving. Every scenario runs on the
//! embedded SQLite file (shared through `database.url`) and, when the test cluster is up
//! (`eval "$(.ci/postgres.sh start)"`), on PostgreSQL. The replicas are real `tether-ca serve`
//! processes; the tests talk to them over real TLS.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use common::*;

/// Generous for a loaded 2-core machine; the watcher reloads every 100 ms.
const DEADLINE: Duration = Duration::from_secs(30);

/// The databases every scenario runs on: the shared SQLite file, then PostgreSQL if available.
fn databases(test: &str) -> Vec<Option<String>> {
    let mut all = vec![None];
    all.extend(tether_testkit::postgres::database(test).map(Some));
    all
}

/// `init` in `parent/ca` (on `database`, else SQLite) and `replica add --out parent/ca2 ARGS…`.
fn two_replicas(parent: &Path, database: Option<&str>, args: &[&str]) -> (PathBuf, PathBuf) {
    let (dir1, dir2) = (parent.join("ca"), parent.join("ca2"));
    let mut init = vec!["init", "--trust-domain", TD];
    if let Some(url) = database {
        init.extend(["--database", url]);
    }
    assert_ok(&ca_cli(&dir1, &init), "init");
    let mut add = vec!["replica", "add", "--out", dir2.to_str().unwrap()];
    add.extend_from_slice(args);
    let out = ca_cli(&dir1, &add);
    assert_ok(&out, "replica add");
    assert!(
        stdout(&out).contains(&format!("--state-dir {} serve", dir2.display())),
        "says what to run next: {}",
        stdout(&out)
    );
    (dir1, dir2)
}

/// A `tether-ca serve` process ([`procs::serve`]), killed when dropped.
struct Served {
    _child: tokio::process::Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Served {
    async fn start(dir: &Path) -> Served {
        let log = dir.with_extension(format!("serve-{}.log", rand_tag()));
        let (child, client) = procs::serve(dir, &log, &[]).await;
        Served {
            _child: child,
            addr: client.addr(),
            dir: dir.to_path_buf(),
        }
    }

    /// A client trusting this replica's bundle, presenting `cred` (chain, key) if given.
    fn client(&self, cred: Option<(String, String)>) -> Client {
        Client::new(self.addr, &self.dir.join("bundle.pem"), cred)
    }

    /// A client presenting this replica's admin credential.
    fn admin(&self) -> Client {
        let admin = self.dir.join("admin");
        self.client(Some((
            read(admin.join("chain.pem")),
            read(admin.join("key.pem")),
        )))
    }
}

fn rand_tag() -> String {
    tether_certs::Serial::random().to_string()[..8].to_string()
}

/// A one-time token for `path` from `dir`'s CLI.
fn token(dir: &Path, path: &str) -> String {
    let out = ca_cli(dir, &["enroll", id(path).as_str()]);
    assert_ok(&out, "enroll");
    stdout(&out).trim().to_string()
}

/// A CSR for `path` under a fresh key.
fn csr(path: &str) -> String {
    let key = tether_certs::keys::generate_key().unwrap();
    tether_certs::keys::generate_csr(&key, &id(path)).unwrap()
}

/// Enrolls `path` with a token from `from` through `via`'s API.
async fn enroll(from: &Path, via: &Served, path: &str) -> Enrolled {
    let key = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&key, &id(path)).unwrap();
    let resp = via.client(None).enroll(&token(from, path), &csr).await;
    assert_eq!(resp.status, StatusCode::OK, "enroll: {}", resp.text());
    Enrolled::from_response(&resp.json(), key)
}

/// The serial of the first certificate in the PEM file `path`.
fn serial_of(path: &Path) -> tether_certs::Serial {
    cert_facts(&read(path)).serial
}

#[tokio::test(flavor = "multi_thread")]
async fn an_added_replica_serves_with_its_own_certificate_and_shares_tokens() {
    for db in databases("replicas_add") {
        let tmp = tempfile::tempdir().unwrap();
        let (dir1, dir2) = two_replicas(
            tmp.path(),
            db.as_deref(),
            &["--san", "ca2.test", "--id", "second"],
        );
        assert_private_generation(&dir2);
        for secret in ["seal.key", "database.url"] {
            assert_eq!(mode(&dir2.join(secret)), 0o600, "{secret}");
        }
        let seal = |dir: &Path| std::fs::read(dir.join("seal.key")).unwrap();
        assert_eq!(seal(&dir1), seal(&dir2), "one seal key for the replicas");
        let me: Value = serde_json::from_str(&read(dir2.join("replica.json"))).unwrap();
        assert_eq!(me["id"], "second");
        let url = read(dir2.join("database.url"));
        match &db {
            Some(db) => assert_eq!(url.trim(), db.as_str()),
            None => assert_eq!(
                url.trim(),
                format!("sqlite:{}", dir1.join("ca.db").display())
            ),
        }
        // Its own API certificate, with its names; the same intermediate as the first replica.
        let (server1, server2) = (dir1.join("server/chain.pem"), dir2.join("server/chain.pem"));
        assert!(cert_facts(&read(&server2))
            .dns
            .contains(&"ca2.test".to_string()));
        assert!(!cert_facts(&read(&server1))
            .dns
            .contains(&"ca2.test".to_string()));
        assert_ne!(serial_of(&server1), serial_of(&server2));
        assert_eq!(
            read(dir1.join("intermediate/cert.pem")),
            read(dir2.join("intermediate/cert.pem"))
        );

        let (r1, r2) = (Served::start(&dir1).await, Served::start(&dir2).await);
        let cred = enroll(&dir1, &r2, "/web").await;
        assert!(chains_to(&cred.chain, &read(dir1.join("bundle.pem"))));

        // One token sent to both replicas at once: exactly one certificate.
        let csr = csr("/race");
        let t = token(&dir2, "/race");
        let (c1, c2) = (r1.client(None), r2.client(None));
        let (a, b) = tokio::join!(c1.enroll(&t, &csr), c2.enroll(&t, &csr));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::UNAUTHORIZED],
            "{} / {}",
            a.text(),
            b.text()
        );

        // Every CLI command works from the new replica's dir against the shared database.
        let issued = tmp.path().join("issued");
        assert_ok(
            &ca_issue(&dir2, id("/cli").as_str(), &issued, &[]),
            "issue from DIR2",
        );
        let listed = stdout(&ca_cli(&dir2, &["list"]));
        assert!(listed.contains(&cred.serial), "{listed}");
        for args in [
            &["crl"][..],
            &["fleet"],
            &["check"],
            &["root", "list"],
            &["replica", "list"],
        ] {
            assert_ok(&ca_cli(&dir2, args), &format!("{args:?} from DIR2"));
        }
        let replicas = stdout(&ca_cli(&dir1, &["replica", "list"]));
        assert!(
            replicas.contains("second") && replicas.contains("initial"),
            "{replicas}"
        );
        let revoked = ca_cli(&dir2, &["revoke", &cred.serial]);
        assert_ok(&revoked, "revoke from DIR2");
        let serial = cred.serial.parse().unwrap();
        let reached = eventually(DEADLINE, || async {
            let resp = r1.client(None).get("/v1/crl").await;
            crl_and_signer(&resp.body).0.revoked().contains(&serial)
        });
        assert!(
            reached.await,
            "a revocation from DIR2's CLI never reached DIR1's API"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serials_never_collide_and_crl_numbers_increase_across_replicas() {
    for db in databases("replicas_serials") {
        let tmp = tempfile::tempdir().unwrap();
        let (dir1, dir2) = two_replicas(tmp.path(), db.as_deref(), &[]);
        let (r1, r2) = (Served::start(&dir1).await, Served::start(&dir2).await);
        let (e1, e2) = (
            enroll(&dir1, &r1, "/a").await,
            enroll(&dir1, &r2, "/b").await,
        );
        let (csr, csr_b) = (csr("/a"), csr("/b"));
        let (c1, c2) = (
            r1.client(Some((e1.chain.clone(), e1.key_pem()))),
            r2.client(Some((e2.chain.clone(), e2.key_pem()))),
        );
        let mut serials = vec![e1.serial.clone(), e2.serial.clone()];
        for _ in 0..25 {
            let mut batch = Vec::new();
            for _ in 0..4 {
                let (c1, c2, csr, csr_b) = (c1.clone(), c2.clone(), csr.clone(), csr_b.clone());
                batch.push(tokio::spawn(async move {
                    let (a, b) = tokio::join!(c1.renew(&csr), c2.renew(&csr_b));
                    [a, b]
                }));
            }
            for task in batch {
                for r in task.await.unwrap() {
                    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                    serials.push(r.json()["serial"].as_str().unwrap().to_string());
                }
            }
        }
        let unique: HashSet<_> = serials.iter().collect();
        assert_eq!(unique.len(), serials.len(), "a serial repeated");
        assert!(serials.len() >= 200);

        // Revocations through each replica alternately: one strictly increasing sequence.
        let mut last = 0;
        for (i, serial) in serials.iter().take(8).enumerate() {
            let admin = if i % 2 == 0 { r1.admin() } else { r2.admin() };
            let r = admin.revoke(&json!({ "serial": serial })).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let n = r.json()["crl_number"].as_u64().expect("crl_number");
            assert!(n > last, "CRL {n} after {last}");
            last = n;
        }
        for r in [&r1, &r2] {
            let latest = || async {
                let resp = r.client(None).get("/v1/crl").await;
                crl_and_signer(&resp.body).0
            };
            let caught_up = eventually(DEADLINE, || async { latest().await.number() >= last });
            assert!(caught_up.await, "{} never served CRL {last}", r.addr);
            let crl = latest().await;
            assert!(serials
                .iter()
                .take(8)
                .all(|s| crl.revoked().contains(&s.parse().unwrap())));
        }
    }
}

/// The certificates `addr`'s TLS handshake presents (server certificate first).
async fn presented_chain(client: &Client) -> Vec<Vec<u8>> {
    let tls = client.connect(b"http/1.1").await;
    tls.get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_through_one_replica_reaches_the_other_without_a_restart() {
    for db in databases("replicas_rotate") {
        let tmp = tempfile::tempdir().unwrap();
        let (dir1, dir2) = two_replicas(tmp.path(), db.as_deref(), &[]);
        let (r1, r2) = (Served::start(&dir1).await, Served::start(&dir2).await);
        let old = enroll(&dir1, &r2, "/web").await;
        assert_ok(&ca_cli(&dir1, &["root", "rotate"]), "root rotate from DIR1");
        let new_inter = ders(&read(dir1.join("generations/2/intermediate/cert.pem"))).remove(0);

        // DIR2 serves the new generation's TLS chain and signs with it, no restart.
        let trusting = Client::new(r2.addr, &dir1.join("bundle.pem"), None);
        let switched = eventually(DEADLINE, || async {
            presented_chain(&trusting).await.get(1) == Some(&new_inter)
        });
        assert!(
            switched.await,
            "DIR2 never served the new generation's TLS chain"
        );
        let renewed = r2.client(Some((old.chain.clone(), old.key_pem())));
        let resp = renewed.renew(&csr("/web")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        assert_eq!(ders(resp.json()["chain"].as_str().unwrap())[1], new_inter);
        assert_private_generation(&dir2.join("generations/2"));
        assert_eq!(ders(&read(dir2.join("server/chain.pem")))[1], new_inter);

        // Retire the old root from DIR2 once nothing depends on it; DIR1 follows.
        assert_ok(
            &ca_cli(&dir2, &["revoke", &old.serial]),
            "revoke the old leaf",
        );
        let fp = tether_certs::bundle::fingerprint(&ders(&read(dir1.join("root/cert.pem")))[0]);
        assert_ok(
            &ca_cli(&dir2, &["root", "retire", &fp]),
            "root retire from DIR2",
        );
        let retired = eventually(DEADLINE, || async {
            bundle_version(&r1.client(None).get("/v1/crl").await) == 3
        });
        assert!(
            retired.await,
            "DIR1 never served the bundle without the old root"
        );
        assert_eq!(ders(&read(dir1.join("bundle.pem"))).len(), 1);
        assert_eq!(ders(&read(dir2.join("bundle.pem"))).len(), 1);

        // And back: DIR2 rotates, cross-signing with the root key it unsealed; DIR1 follows.
        assert_ok(&ca_cli(&dir2, &["root", "rotate"]), "root rotate from DIR2");
        assert!(dir2.join("generations/3/intermediate/cross.pem").is_file());
        let third = ders(&read(dir2.join("generations/3/intermediate/cert.pem"))).remove(0);
        let trusting = Client::new(r1.addr, &dir2.join("bundle.pem"), None);
        let switched = eventually(DEADLINE, || async {
            presented_chain(&trusting).await.get(1) == Some(&third)
        });
        assert!(switched.await, "DIR1 never served generation 3's TLS chain");
        assert_private_generation(&dir1.join("generations/3"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_replica_is_revoked_and_refuses_to_serve() {
    for db in databases("replicas_remove") {
        let tmp = tempfile::tempdir().unwrap();
        let (dir1, dir2) = two_replicas(tmp.path(), db.as_deref(), &["--id", "gone"]);
        let r1 = Served::start(&dir1).await;
        let r2 = Served::start(&dir2).await;
        let server2 = serial_of(&dir2.join("server/chain.pem"));
        let admin2 = serial_of(&dir2.join("admin/cert.pem"));
        let out = ca_cli(&dir1, &["replica", "remove", "gone"]);
        assert_ok(&out, "replica remove");
        // The running replica stops signing at its next look at the database (every 100 ms, or
        // on the change notification): a fresh token each try, until one is refused with 503.
        let csr = csr("/late");
        let started = std::time::Instant::now();
        let pending = loop {
            let t = token(&dir1, "/late");
            let status = r2.client(None).enroll(&t, &csr).await.status;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                break t;
            }
            assert_eq!(status, StatusCode::OK);
            assert!(
                started.elapsed() < DEADLINE,
                "the running removed replica kept signing"
            );
        };
        // The refused token was not spent: a live replica enrolls it.
        let resp = r1.client(None).enroll(&pending, &csr).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        drop(r2);
        let latest = || async { crl_and_signer(&r1.client(None).get("/v1/crl").await.body).0 };
        let listed = eventually(DEADLINE, || async {
            latest().await.revoked().contains(&server2)
        });
        assert!(
            listed.await,
            "the CRL never listed the removed replica's certificate"
        );
        let crl = latest().await;
        assert!(crl.revoked().contains(&admin2));
        assert!(!crl
            .revoked()
            .contains(&serial_of(&dir1.join("server/chain.pem"))));

        let mut serve = bin();
        serve
            .arg("--state-dir")
            .arg(&dir2)
            .args(["serve", "--listen", "127.0.0.1:0"]);
        let refused = serve.output().unwrap();
        assert_eq!(refused.status.code(), Some(1));
        assert!(
            stderr(&refused).contains("was removed"),
            "{}",
            stderr(&refused)
        );
        let write = ca_cli(&dir2, &["enroll", id("/x").as_str()]);
        assert_eq!(write.status.code(), Some(1));
        assert!(stderr(&write).contains("was removed"), "{}", stderr(&write));

        let listed = stdout(&ca_cli(&dir1, &["replica", "list"]));
        let row = listed.lines().find(|l| l.starts_with("gone")).unwrap();
        assert!(!row.contains(" - "), "a removal date: {row}");
        for (args, needle) in [
            (&["replica", "remove", "gone"][..], "removed already"),
            (&["replica", "remove", "nobody"], "no replica nobody"),
            (
                &["replica", "remove", "initial"],
                "is the replica this state dir is",
            ),
        ] {
            let out = ca_cli(&dir1, args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        }
        drop(r1);
    }
}

#[test]
fn a_bad_seal_key_or_out_dir_is_a_clear_error_and_the_good_state_stays() {
    for db in databases("replicas_bad_input") {
        let tmp = tempfile::tempdir().unwrap();
        let (dir1, dir2) = two_replicas(tmp.path(), db.as_deref(), &["--id", "two"]);
        // DIR2 must materialize generation 2 from the sealed keys at its next command.
        assert_ok(&ca_cli(&dir1, &["root", "rotate"]), "root rotate");
        let seal = dir2.join("seal.key");
        let good = std::fs::read(&seal).unwrap();
        for bad in [Some(vec![7u8; 32]), Some(b"short".to_vec()), None] {
            match &bad {
                Some(bytes) => std::fs::write(&seal, bytes).unwrap(),
                None => std::fs::remove_file(&seal).unwrap(),
            }
            let out = ca_cli(&dir2, &["list"]);
            assert_eq!(out.status.code(), Some(1), "{bad:?}");
            let err = stderr(&out);
            assert!(
                err.contains("seal.key") && !err.contains("panicked"),
                "{err}"
            );
            assert!(!dir2.join("generations/2/intermediate/key.pem").exists());
        }
        std::fs::write(&seal, &good).unwrap();
        assert_ok(&ca_cli(&dir2, &["list"]), "list with the seal key back");
        assert_private_generation(&dir2.join("generations/2"));

        // --out must be new or empty; ids are checked and unique.
        let busy = tmp.path().join("busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("keep"), "x").unwrap();
        for (out, extra, needle) in [
            (&busy, &[][..], "not empty"),
            (
                &tmp.path().join("c3"),
                &["--id", "Bad Id!"][..],
                "replica id",
            ),
            (
                &tmp.path().join("c4"),
                &["--id", "two"][..],
                "exists already",
            ),
        ] {
            let mut args = vec!["replica", "add", "--out", out.to_str().unwrap()];
            args.extend_from_slice(extra);
            let o = ca_cli(&dir1, &args);
            assert_eq!(o.status.code(), Some(1), "{args:?}");
            assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        }
        assert_eq!(read(busy.join("keep")), "x");
        assert!(!tmp.path().join("c3").exists() && !tmp.path().join("c4").exists());
    }
}

#[test]
fn a_state_dir_from_before_replicas_seals_its_keys_at_the_first_add() {
    let tmp = tempfile::tempdir().unwrap();
    let dir1 = tmp.path().join("ca");
    assert_ok(&ca_cli(&dir1, &["init", "--trust-domain", TD]), "init");
    // What an older version left: no seal key, nothing sealed, no replica rows.
    std::fs::remove_file(dir1.join("seal.key")).unwrap();
    let db = rusqlite::Connection::open(dir1.join("ca.db")).unwrap();
    db.execute_batch("DELETE FROM sealed_keys; DELETE FROM replicas;")
        .unwrap();
    drop(db);
    let dir2 = tmp.path().join("ca2");
    let out = ca_cli(&dir1, &["replica", "add", "--out", dir2.to_str().unwrap()]);
    assert_ok(&out, "replica add from an old dir");
    assert_eq!(mode(&dir1.join("seal.key")), 0o600);
    assert_private_generation(&dir2);
    let listed = stdout(&ca_cli(&dir2, &["replica", "list"]));
    assert!(
        listed.contains("initial") && listed.contains("(this one)"),
        "{listed}"
    );
}

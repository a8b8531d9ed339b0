//! Losing a replica mid-burst: two `tether-ca serve` processes on one database (SQLite shared on
//! one host; PostgreSQL when the test cluster is configured) take concurrent enrollments and
//! revocations, each revocation sent to the replica that did not issue the certificate. One
//! replica is SIGKILLed after [`KILL_AFTER`] acknowledgements; its clients move to the survivor,
//! as sidecars do. Afterwards: every acknowledged certificate is recorded under its token's
//! identity, no serial appears twice, every acknowledged revocation is recorded and listed by
//! the survivor's CRL, and the CRL numbers handed out by both replicas never repeat.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use common::procs::{enroll, make_tokens, serve};
use common::*;

const TOKENS: usize = 120;
const KILL_AFTER: usize = 50;
const CLIENTS: usize = 4;

/// What the clients were told.
#[derive(Default)]
struct Acks {
    /// (token, serial) for every 200 to an enrollment.
    enrolled: Vec<(String, String)>,
    /// (serial, CRL number) for every 200 to a revocation.
    revoked: Vec<(String, u64)>,
    /// Non-200 answers from a live replica (must stay empty).
    refused: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_replicas_lose_nothing_when_one_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    assert_ok(&ca_cli(&dir, &["init", "--trust-domain", TD]), "init");
    burst_and_kill(&dir, tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_lose_nothing_when_one_is_killed() {
    let Some(url) = tether_testkit::postgres::database("replica_kill") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let init = ca_cli(&dir, &["init", "--trust-domain", TD, "--database", &url]);
    assert_ok(&init, "init --database");
    burst_and_kill(&dir, tmp.path()).await;
}

/// `POST /v1/revoke {serial}` with the admin credential; the CRL number on 200.
async fn revoke(admin: &Client, serial: &str) -> Result<(StatusCode, u64), String> {
    let body = serde_json::to_vec(&json!({ "serial": serial })).unwrap();
    let mut req = request(http::Method::POST, "/v1/revoke", body.into());
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let r = admin.try_send(req).await?;
    let number = r.json()["crl_number"].as_u64().unwrap_or(0);
    Ok((r.status, number))
}

async fn burst_and_kill(dir: &Path, logs: &Path) {
    let tokens = make_tokens(dir, TOKENS, CLIENTS);
    let identity_of: HashMap<String, String> = tokens.iter().cloned().collect();
    let (mut victim, a) = serve(dir, &logs.join("replica-a.log"), &[]).await;
    let (_survivor, b) = serve(dir, &logs.join("replica-b.log"), &[]).await;
    let admin = (
        read(dir.join("admin/chain.pem")),
        read(dir.join("admin/key.pem")),
    );
    let admin_of = |c: &Client| Client::new(c.addr(), &dir.join("bundle.pem"), Some(admin.clone()));
    let replicas = [(a.clone(), admin_of(&a)), (b.clone(), admin_of(&b))];

    let queue = Arc::new(Mutex::new(tokens));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let count = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (queue, acks, count, replicas) =
                (queue.clone(), acks.clone(), count.clone(), replicas.clone());
            tokio::spawn(async move {
                // Workers start spread over both replicas; one whose replica dies moves to the
                // other for good, as a sidecar fails over.
                let mut home = w % 2;
                loop {
                    // Not in a `while let`: the guard would live across the awaits below.
                    let next = queue.lock().unwrap().pop();
                    let Some((token, who)) = next else { return };
                    let (client, _) = &replicas[home];
                    let serial = match enroll(client, &token, &who).await {
                        Ok((StatusCode::OK, serial)) => serial,
                        Ok((status, body)) => {
                            acks.lock()
                                .unwrap()
                                .refused
                                .push(format!("{status} {body}"));
                            continue;
                        }
                        // Cut off by the kill: the outcome is unknown; move on.
                        Err(_) => {
                            home = 1;
                            continue;
                        }
                    };
                    acks.lock().unwrap().enrolled.push((token, serial.clone()));
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    if n % 3 != 0 {
                        continue;
                    }
                    // Revoked through the other replica, or the survivor once one is gone.
                    let other = if home == 1 { 1 - (n / 3) % 2 } else { 1 };
                    match revoke(&replicas[other].1, &serial).await {
                        Ok((StatusCode::OK, crl)) => {
                            acks.lock().unwrap().revoked.push((serial, crl))
                        }
                        Ok((status, _)) => acks
                            .lock()
                            .unwrap()
                            .refused
                            .push(format!("revoke: {status}")),
                        Err(_) => home = 1,
                    }
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "the burst stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    victim.kill().await.expect("SIGKILL replica a");
    for w in workers {
        w.await.expect("worker");
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert!(
        acks.refused.is_empty(),
        "live replicas refused: {:?}",
        acks.refused
    );
    assert!(
        acks.enrolled.len() > KILL_AFTER && acks.enrolled.len() + CLIENTS >= TOKENS,
        "traffic did not carry on through the survivor: {} of {TOKENS} acknowledged",
        acks.enrolled.len()
    );
    check_records(dir, &acks, &identity_of);
    check_crl(&b, &acks).await;
}

/// Every acknowledged enrollment and revocation is in the database, once.
fn check_records(dir: &Path, acks: &Acks, identity_of: &HashMap<String, String>) {
    let out = ca_cli(dir, &["list", "--json"]);
    assert_ok(&out, "list --json after the kill");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut by_serial = HashMap::new();
    for r in &listed {
        let serial = r["serial"].as_str().unwrap().to_string();
        assert!(
            by_serial.insert(serial.clone(), r.clone()).is_none(),
            "serial {serial} twice"
        );
    }
    for (token, serial) in &acks.enrolled {
        let rec = by_serial
            .get(serial)
            .unwrap_or_else(|| panic!("acknowledged serial {serial} was lost"));
        assert_eq!(rec["spiffe_id"].as_str(), Some(identity_of[token].as_str()));
    }
    for (serial, _) in &acks.revoked {
        assert!(
            by_serial[serial]["revoked_at"].as_i64().is_some(),
            "acknowledged revocation of {serial} was lost"
        );
    }
    let numbers: HashSet<u64> = acks.revoked.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        numbers.len(),
        acks.revoked.len(),
        "a CRL number was handed out twice"
    );
}

/// The survivor's CRL lists every acknowledged revocation.
async fn check_crl(survivor: &Client, acks: &Acks) {
    assert!(!acks.revoked.is_empty(), "no revocation was acknowledged");
    let newest = acks.revoked.iter().map(|(_, n)| *n).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let crl = loop {
        let r = survivor
            .try_get("/v1/crl")
            .await
            .expect("the survivor answers");
        let (list, _) = crl_and_signers(&r.body);
        if list.number() >= newest {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor never served CRL {newest}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (serial, _) in &acks.revoked {
        let serial: tether_certs::Serial = serial.parse().unwrap();
        assert!(
            crl.revoked().contains(&serial),
            "CRL {} misses {serial}",
            crl.number()
        );
    }
}

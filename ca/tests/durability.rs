//! Crash safety of issuance: the real `tether-ca serve` binary is SIGKILLed while several clients
//! enroll concurrently with one-time tokens the CLI made. Afterwards every serial the server
//! acknowledged with 200 is in the database under the token's identity, no serial appears twice,
//! every acknowledged token stays consumed, the database holds at most the in-flight extras, and
//! a restarted server on the same state dir keeps working (a fresh token enrolls, a used one is
//! refused).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use common::procs::{enroll, free_addr, make_tokens, serve, workload};
use common::*;
use tether_ca::Authority;

const TOKENS: usize = 200;
const KILL_AFTER: usize = 100;
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enrollments_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    assert_ok(&ca_cli(&dir, &["init", "--trust-domain", TD]), "init");
    let tokens = make_tokens(&dir, TOKENS, CLIENTS);
    assert_eq!(tokens.len(), TOKENS);
    let identity_of: HashMap<String, String> = tokens.iter().cloned().collect();

    let log = tmp.path().join("serve-1.log");
    let (mut child, client) = serve(&dir, &log, &[]).await;

    let queue = Arc::new(Mutex::new(tokens.clone()));
    // (token, serial) for every 200 the server sent.
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (queue, acked, refused, count, client) = (
                queue.clone(),
                acked.clone(),
                refused.clone(),
                count.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Some((token, who)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    match enroll(&client, &token, &who).await {
                        Ok((StatusCode::OK, serial)) => {
                            acked.lock().unwrap().push((token, serial));
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, body)) => {
                            refused.lock().unwrap().push(format!("{status} {body}"))
                        }
                        // The server is gone: the outcome of this one is unknown, stop.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} enrollments in 60 s; serve log:\n{}",
            count.load(Ordering::SeqCst),
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().await.expect("SIGKILL tether-ca serve"); // kill() sends SIGKILL and reaps
    for w in workers {
        w.await.expect("worker");
    }

    let acked = acked.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    let unused: Vec<(String, String)> = queue.lock().unwrap().clone();
    assert!(
        refused.is_empty(),
        "the live server refused enrollments: {refused:?}"
    );
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        acked.len() < TOKENS && !unused.is_empty(),
        "the kill came after all {} enrollments; nothing was tested mid-way",
        acked.len()
    );
    eprintln!(
        "acknowledged {} of {TOKENS} before the kill landed; {} never sent",
        acked.len(),
        unused.len()
    );
    let acked_serials: HashSet<&str> = acked.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        acked_serials.len(),
        acked.len(),
        "the server acknowledged a serial twice"
    );

    // Everything acknowledged is on disk, under the token's identity.
    {
        let ca = Authority::open(&dir).expect("the state dir opens after SIGKILL");
        let records = ca.list(None).expect("list");
        let mut by_serial = HashMap::new();
        for r in &records {
            assert!(
                by_serial.insert(r.serial.clone(), r.clone()).is_none(),
                "serial {} recorded twice",
                r.serial
            );
        }
        for (token, serial) in &acked {
            let rec = by_serial
                .get(serial)
                .unwrap_or_else(|| panic!("acknowledged serial {serial} was lost in the crash"));
            assert_eq!(rec.method, "enroll");
            assert_eq!(&rec.spiffe_id, &identity_of[token]);
        }
        // At most the requests in flight at the kill committed without an answer.
        let enrolled = records.iter().filter(|r| r.method == "enroll").count();
        assert!(
            enrolled >= acked.len() && enrolled <= acked.len() + CLIENTS,
            "{enrolled} enrollments recorded, {} acknowledged",
            acked.len()
        );
        // The CLI reads the same state.
        let out = ca_cli(&dir, &["list", "--json"]);
        assert_ok(&out, "list --json after the crash");
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed.len(), records.len());
    }

    // A restarted server works on the same state: used tokens stay used, fresh ones enroll.
    let metrics_addr = free_addr().to_string();
    let (mut child, client) = serve(
        &dir,
        &tmp.path().join("serve-2.log"),
        &["--metrics-listen", &metrics_addr],
    )
    .await;
    for (token, _) in acked.iter().take(5) {
        let (status, body) = enroll(&client, token, &identity_of[token]).await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "acknowledged token reused: {body}"
        );
    }
    let (token, who) = &unused[0];
    let (status, serial) = enroll(&client, token, who).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{serial}");
    let out = ca_cli(&dir, &["enroll", &workload(TOKENS)]);
    assert_ok(&out, "enroll after restart");
    let (status, _) = enroll(&client, stdout(&out).trim(), &workload(TOKENS))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let crl = client.try_get("/v1/crl").await.unwrap();
    assert_eq!(crl.status, StatusCode::OK);

    // The optional plain-HTTP metrics listener serves the same registry.
    let mut tcp = tokio::net::TcpStream::connect(&metrics_addr)
        .await
        .expect("connect to --metrics-listen");
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut text)
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert_eq!(
        metric(
            body,
            "tether_ca_certificates_issued_total",
            &[("method", "enroll")]
        ),
        Some(2.0),
        "{body}"
    );

    // SIGTERM (what systemd and `docker stop` send) stops it cleanly with status 0.
    let pid = child.id().expect("running").to_string();
    match std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
    {
        Ok(s) if s.success() => {
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("tether-ca serve stops within 10 s of SIGTERM")
                .unwrap();
            assert!(status.success(), "exit after SIGTERM: {status}");
            let log = read(tmp.path().join("serve-2.log"));
            assert!(log.contains("tether-ca stopped"), "{log}");
        }
        _ => {
            eprintln!("kill(1) not available; skipping the SIGTERM check");
            child.kill().await.expect("stop the second server");
        }
    }
}

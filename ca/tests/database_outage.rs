//! Losing the database (PostgreSQL; skipped without the test cluster, failed under CI without
//! it). A real `tether-ca serve` talks to the cluster through a forwarder the test freezes, so
//! the database goes silent — no RST, no error, nothing: what a hung server or a stalled network
//! path looks like. Enrollment then gets a 503 within seconds (never a hang), `GET /v1/crl` keeps
//! serving the last signed CRL, and once the database answers again the same process issues
//! again without a restart; the enrollment cut off by the outage did not happen at all, so its
//! token still works.

mod common;

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use http::StatusCode;

use common::db_proxy::DbProxy;
use common::procs::{enroll, serve, workload};
use common::*;

/// The API answers within this once the database has gone silent: the store's per-call deadline
/// (6 s) plus margin for a loaded machine. A hang would blow through it.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_is_503_then_issuance_resumes_without_a_restart() {
    let Some(url) = tether_testkit::postgres::database("database_outage") else {
        return;
    };
    let (server, db) = split_url(&url);
    let proxy = DbProxy::start(server);
    let via_proxy = format!("postgres://postgres@{}/{db}", proxy.addr());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let init = ca_cli(
        &dir,
        &["init", "--trust-domain", TD, "--database", &via_proxy],
    );
    assert_ok(&init, "init --database");
    let tokens: Vec<(String, String)> = (0..3)
        .map(|i| {
            let who = workload(i);
            let out = ca_cli(&dir, &["enroll", &who]);
            assert_ok(&out, "enroll");
            (stdout(&out).trim().to_string(), who)
        })
        .collect();
    let (_child, client) = serve(&dir, &tmp.path().join("serve.log"), &[]).await;
    let (status, _) = enroll(&client, &tokens[0].0, &tokens[0].1).await.unwrap();
    assert_eq!(status, StatusCode::OK, "before the outage");
    let crl_before = client.try_get("/v1/crl").await.unwrap();
    assert_eq!(crl_before.status, StatusCode::OK);

    proxy.freeze();
    let started = Instant::now();
    let (status, body) =
        tokio::time::timeout(ANSWER_WITHIN, enroll(&client, &tokens[1].0, &tokens[1].1))
            .await
            .expect("enrollment hung while the database was silent")
            .unwrap();
    eprintln!("503 after {:?} of database silence", started.elapsed());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        !body.contains("postgres://"),
        "no database detail in the answer: {body}"
    );
    let crl = tokio::time::timeout(ANSWER_WITHIN, client.try_get("/v1/crl"))
        .await
        .expect("GET /v1/crl hung")
        .unwrap();
    assert_eq!(
        crl.status,
        StatusCode::OK,
        "the last CRL keeps being served"
    );
    assert_eq!(crl.body, crl_before.body);

    proxy.thaw();
    // Until the store has reconnected, the only other answer is a 503.
    assert!(
        eventually(ANSWER_WITHIN, || async {
            let (status, body) = enroll(&client, &tokens[1].0, &tokens[1].1).await.unwrap();
            if status != StatusCode::OK {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            }
            status == StatusCode::OK
        })
        .await,
        "never issued again after the database came back"
    );
    let (status, body) = enroll(&client, &tokens[2].0, &tokens[2].1).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");

    // The outage's answers are counted as `unavailable` (their own alert), never `internal`.
    let scraped = client.try_get("/metrics").await.unwrap().text();
    let failures = |reason| {
        tether_testkit::metrics::sum(
            &scraped,
            "tether_ca_request_failures_total",
            &[("endpoint", "enroll"), ("reason", reason)],
        )
    };
    assert!(failures("unavailable") >= 1.0, "{scraped}");
    assert_eq!(failures("internal"), 0.0, "{scraped}");
}

/// (server address, database name) of a `postgres://user@host:port/db` URL.
fn split_url(url: &str) -> (std::net::SocketAddr, String) {
    let rest = url.split_once('@').expect("user@").1;
    let (hostport, db) = rest.split_once('/').expect("/db");
    let addr = hostport.to_socket_addrs().unwrap().next().unwrap();
    (addr, db.to_string())
}

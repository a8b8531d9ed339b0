//! TLS to PostgreSQL. The test cluster takes TLS (a certificate for 127.0.0.1 from a throwaway
//! CA, `TETHER_TEST_PG_SSLROOTCERT`) and plain connections alike, so the server itself can say
//! which one the CA used: `pg_stat_ssl`. With `sslmode=verify-full&sslrootcert=…` every
//! connection of the store — and of the real `tether-ca` binary — is TLS; against a CA that did
//! not sign the server's certificate nothing connects, so nothing falls back to plaintext.
//! Skipped without the test cluster (failed under CI).

mod common;

use std::path::Path;

use tether_ca::store::{DatabaseUrl, Location, Store, StoreError};

use common::*;

/// (TLS connections, plain connections) the CA has open to the database `db`, as the server
/// sees them.
fn connections(admin_url: &str, db: &str) -> (i64, i64) {
    let mut admin = postgres::Client::connect(admin_url, postgres::NoTls).unwrap();
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'tether-ca'",
            &[&db],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn with_tls(url: &str, root: &Path) -> String {
    format!("{url}?sslmode=verify-full&sslrootcert={}", root.display())
}

#[test]
fn verify_full_connects_over_tls_only_to_the_server_its_ca_signed() {
    let Some((url, root)) = tether_testkit::postgres::tls_database("tls") else {
        return;
    };
    let db = url.rsplit('/').next().unwrap().to_string();
    let tls = DatabaseUrl::parse(&with_tls(&url, &root)).unwrap();
    let store = Store::open_at(&Location::Postgres(tls)).expect("TLS with the right CA");
    assert_eq!(
        connections(&url, &db),
        (1, 0),
        "the store's connection is TLS"
    );
    drop(store);

    // A CA that did not sign the server's certificate: refused, and nothing plain instead.
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other-ca.pem");
    std::fs::write(
        &other,
        tether_testkit::pki::Pki::new("other.test").root.cert_pem(),
    )
    .unwrap();
    let wrong = DatabaseUrl::parse(&with_tls(&url, &other)).unwrap();
    let e = Store::open_at(&Location::Postgres(wrong))
        .err()
        .expect("refused");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    // A CA file that is not there: a clear error naming it.
    let missing = DatabaseUrl::parse(&with_tls(&url, &tmp.path().join("nope.pem"))).unwrap();
    let e = Store::open_at(&Location::Postgres(missing))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("nope.pem"), "{e}");
    assert_eq!(connections(&url, &db).1, 0, "no plaintext fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_on_a_tls_database_serves_and_every_connection_is_tls() {
    let Some((url, root)) = tether_testkit::postgres::tls_database("tls_serve") else {
        return;
    };
    let db = url.rsplit('/').next().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let init = ca_cli(
        &dir,
        &[
            "init",
            "--trust-domain",
            TD,
            "--database",
            &with_tls(&url, &root),
        ],
    );
    assert_ok(&init, "init over TLS");
    let out = ca_cli(&dir, &["enroll", id("/web").as_str()]);
    assert_ok(&out, "enroll over TLS");
    let (_child, client) = common::procs::serve(&dir, &tmp.path().join("serve.log"), &[]).await;
    let crl = client.try_get("/v1/crl").await.unwrap();
    assert_eq!(crl.status, http::StatusCode::OK);
    let (url2, db2) = (url.clone(), db.clone());
    let (tls, plain) = tokio::task::spawn_blocking(move || connections(&url2, &db2))
        .await
        .unwrap();
    // The pool's connections and the change feed's.
    assert!(tls >= 2, "{tls} TLS connections");
    assert_eq!(plain, 0, "{plain} plaintext connections");
}

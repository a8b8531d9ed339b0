//! The store's guarantees, checked on both backends: SQLite (a temp file) and PostgreSQL (a fresh
//! database on the test cluster; skipped with a SKIPPED line where none is configured, failed
//! under CI). Two `Store`s opened on one database stand for two CA replicas: what must hold
//! across replicas — a token consumed once, serials never reused, CRL numbers one strictly
//! increasing sequence, a revocation and its CRL all or nothing — is raced here from threads;
//! the revocation gate of Kubernetes enrollment is checked on both too.
//! PostgreSQL alone: a connection killed by the server is reopened by the next call, an
//! unreachable database is a quick `Unavailable` (503 at the API), never a hang.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use tether_ca::store::{
    Changes, DatabaseUrl, Location, NewCert, NewGeneration, RevokeOutcome, Store, StoreError,
    StoredCrl,
};
use tether_certs::{Serial, SpiffeId};

/// Runs `$body` with a [`Location`] of a new, empty database, once per backend.
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                ($body)(Location::Sqlite(dir.path().join("ca.db")));
            }

            #[test]
            fn postgres() {
                let Some(url) = tether_testkit::postgres::database(stringify!($name)) else {
                    return;
                };
                ($body)(Location::Postgres(DatabaseUrl::parse(&url).unwrap()));
            }
        }
    };
}

/// A store on `at` holding generation 1, as `init` leaves it.
fn open(at: &Location) -> Store {
    let mut store = Store::open_at(at).expect("opens");
    let now = OffsetDateTime::now_utc();
    store
        .ensure_first_generation(&NewGeneration {
            root_der: b"root".to_vec(),
            root_not_after: now + Duration::from_secs(86_400),
            intermediate_der: b"intermediate".to_vec(),
            intermediate_not_after: now + Duration::from_secs(86_400),
            cross: None,
            created_at: now,
            sealed: Vec::new(),
        })
        .expect("generation 1");
    store
}

fn leaf(id: &str) -> NewCert {
    let now = OffsetDateTime::now_utc();
    NewCert {
        serial: Serial::random(),
        spiffe_id: id.to_string(),
        not_before: now,
        not_after: now + Duration::from_secs(3600),
        issued_at: now,
        method: "enroll",
        der: b"der".to_vec(),
        generation: 1,
    }
}

/// A CRL "signed" with a recognizable body: the store only records what `sign` returns.
fn sign(number: u64, entries: &[tether_certs::crl::CrlEntry]) -> Result<StoredCrl, StoreError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    Ok(StoredCrl {
        number,
        this_update: now,
        next_update: now + 60,
        der: format!("crl {number} with {}", entries.len()).into_bytes(),
        generation: 1,
    })
}

/// Runs `f` on `n` threads, each with its own store (a replica) on `at`, started together.
fn race<T: Send + 'static>(
    at: &Location,
    n: usize,
    f: impl Fn(usize, &mut Store) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (at, f, barrier) = (at.clone(), f.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut store = Store::open_at(&at).expect("a replica opens");
                barrier.wait();
                f(i, &mut store)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

on_both_backends!(a_token_is_consumed_once_across_replicas, |at: Location| {
    let id = SpiffeId::parse("spiffe://t.test/api").unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut store = open(&at);
    for round in 0..10 {
        let hash = format!("token-{round}");
        store.insert_token(&hash, &id, now, now + 600).unwrap();
        let won = race(&at, 4, move |_, s| {
            s.record_enrollment(&hash, now, &leaf("spiffe://t.test/api"))
                .unwrap()
        });
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
    }
    // An expired token enrolls nothing, and a used one cannot be used again.
    store
        .insert_token("old", &id, now - 700, now - 100)
        .unwrap();
    assert!(!store
        .record_enrollment("old", now, &leaf("spiffe://t.test/api"))
        .unwrap());
    assert!(!store
        .record_enrollment("token-0", now, &leaf("spiffe://t.test/api"))
        .unwrap());
    assert_eq!(store.list(now, None).unwrap().len(), 10);
});

on_both_backends!(a_serial_is_never_recorded_twice, |at: Location| {
    let mut store = open(&at);
    let first = leaf("spiffe://t.test/a");
    store.record(&first).unwrap();
    let again = NewCert {
        spiffe_id: "spiffe://t.test/b".into(),
        ..first.clone()
    };
    assert!(
        store.record(&again).is_err(),
        "a reused serial must fail the issuance"
    );
    let record = store.certificate(&first.serial).unwrap().unwrap();
    assert_eq!(
        record.spiffe_id, "spiffe://t.test/a",
        "the first record is kept"
    );
});

on_both_backends!(
    crl_numbers_are_one_sequence_across_replicas,
    |at: Location| {
        drop(open(&at));
        let numbers: Vec<u64> = race(&at, 3, |_, s| {
            (0..15)
                .map(|_| {
                    s.publish_crl(OffsetDateTime::now_utc(), 1, sign)
                        .unwrap()
                        .number
                })
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flat_map(|per_replica| {
            assert!(
                per_replica.windows(2).all(|w| w[0] < w[1]),
                "{per_replica:?}"
            );
            per_replica
        })
        .collect();
        let unique: HashSet<_> = numbers.iter().collect();
        assert_eq!(unique.len(), 45, "every number is handed out once");
        assert_eq!(*numbers.iter().max().unwrap(), 45, "and none is skipped");
        assert_eq!(
            Store::open_at(&at).unwrap().latest_crl_number().unwrap(),
            45
        );
    }
);

on_both_backends!(a_revocation_and_its_crl_commit_together, |at: Location| {
    let mut store = open(&at);
    let cert = leaf("spiffe://t.test/a");
    store.record(&cert).unwrap();
    let now = OffsetDateTime::now_utc();
    // A signer that fails: nothing of the revocation may remain.
    let failed = store.revoke_and_publish(&cert.serial, None, now, 1, |_, _| {
        Err(StoreError::Corrupt("signer down".into()))
    });
    assert!(failed.is_err());
    assert_eq!(
        store.certificate(&cert.serial).unwrap().unwrap().revoked_at,
        None
    );
    assert_eq!(store.latest_crl_number().unwrap(), 0);
    // Signed: revoked, and the CRL that lists it is the newest.
    let done = store
        .revoke_and_publish(&cert.serial, None, now, 1, sign)
        .unwrap();
    assert_eq!(done, RevokeOutcome::Revoked { crl_number: 1 });
    let crl = store.latest_crl().unwrap().unwrap();
    assert_eq!(crl.der, b"crl 1 with 1");
    // A replica signing with a superseded generation writes nothing.
    let stale = store.publish_crl(now, 7, sign);
    assert!(matches!(
        stale,
        Err(StoreError::StaleGeneration {
            used: 7,
            current: 1
        })
    ));
});

on_both_backends!(
    a_credential_older_than_a_revocation_of_its_identity_records_nothing,
    |at: Location| {
        let mut store = open(&at);
        let id = "spiffe://t.test/ns/payments/sa/api";
        assert_eq!(store.latest_revocation(id).unwrap(), None);
        let first = leaf(id);
        store.record(&first).unwrap();
        let now = OffsetDateTime::now_utc();
        store
            .revoke_and_publish(&first.serial, None, now, 1, sign)
            .unwrap();
        let revoked_at = store.latest_revocation(id).unwrap().expect("revoked");
        assert!(
            (revoked_at - now.unix_timestamp()).abs() <= 1,
            "{revoked_at}"
        );
        assert_eq!(
            store.latest_revocation("spiffe://t.test/other").unwrap(),
            None
        );
        // Issued at or before the revocation: refused, nothing recorded.
        let refused = leaf(id);
        assert!(!store
            .record_unless_revoked_since(&refused, revoked_at)
            .unwrap());
        assert!(store.certificate(&refused.serial).unwrap().is_none());
        // Issued after it (the kubelet's next token): recorded.
        let accepted = leaf(id);
        assert!(store
            .record_unless_revoked_since(&accepted, revoked_at + 1)
            .unwrap());
        assert!(store.certificate(&accepted.serial).unwrap().is_some());
    }
);

on_both_backends!(
    opening_again_upgrades_nothing_and_keeps_everything,
    |at: Location| {
        let mut store = open(&at);
        store.set_meta("trust_domain", "t.test").unwrap();
        store.record(&leaf("spiffe://t.test/a")).unwrap();
        drop(store);
        let mut again = open(&at);
        assert_eq!(
            again.meta("trust_domain").unwrap().as_deref(),
            Some("t.test")
        );
        assert_eq!(again.list(0, None).unwrap().len(), 1);
        assert_eq!(again.generations().unwrap().len(), 1);
    }
);

/// Has the server end every other connection to the database behind `at` (the store's).
fn terminate_others(at: &Location) {
    let Location::Postgres(url) = at else {
        unreachable!()
    };
    let mut admin = postgres::Client::connect(url.as_str(), postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
}

#[test]
fn postgres_a_lost_connection_is_reopened_by_the_next_call() {
    let Some(url) = tether_testkit::postgres::database("reconnect") else {
        return;
    };
    let at = Location::Postgres(DatabaseUrl::parse(&url).unwrap());
    let mut store = open(&at);
    store.set_meta("k", "before").unwrap();
    terminate_others(&at);
    // The call that finds the connection dead fails as retryable, not as a database error;
    // the one after reconnects. Acknowledged data survived.
    let mut errors = Vec::new();
    let value = loop {
        match store.meta("k") {
            Ok(v) => break v,
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
                errors.push(e);
                assert!(errors.len() < 3, "never reconnected: {errors:?}");
                std::thread::sleep(tether_ca::store::RETRY_AFTER);
            }
        }
    };
    assert_eq!(value.as_deref(), Some("before"));
}

#[test]
fn postgres_every_publication_wakes_the_other_replicas_change_feed_at_once() {
    let Some(url) = tether_testkit::postgres::database("change_feed") else {
        return;
    };
    let url = DatabaseUrl::parse(&url).unwrap();
    let mut store = open(&Location::Postgres(url.clone()));
    let feed = Changes::listen(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let woken = |within: Duration| {
        rt.block_on(async { tokio::time::timeout(within, feed.changed()).await.is_ok() })
    };
    assert!(woken(Duration::from_secs(10)), "the feed never connected");
    // Nothing published, nothing to wake for.
    assert!(
        !woken(Duration::from_millis(300)),
        "woken without a publication"
    );
    for round in 0..3 {
        // Well past any one-second timer the feed might have, so only a push can be this fast.
        std::thread::sleep(Duration::from_millis(1500));
        let started = Instant::now();
        store
            .publish_crl(OffsetDateTime::now_utc(), 1, sign)
            .unwrap();
        assert!(
            woken(Duration::from_millis(800)),
            "round {round}: the publication did not wake the feed within 800 ms"
        );
        eprintln!(
            "round {round}: woken {:?} after the commit",
            started.elapsed()
        );
    }
}

/// Opening a database on `port` of loopback fails as `Unavailable` within `limit`.
fn assert_unavailable_within(port: u16, limit: Duration) {
    let url = DatabaseUrl::parse(&format!("postgres://ca@127.0.0.1:{port}/tether")).unwrap();
    let started = Instant::now();
    let e = Store::open_at(&Location::Postgres(url))
        .err()
        .expect("refused");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(started.elapsed() < limit, "{:?}", started.elapsed());
}

#[test]
fn postgres_a_server_that_never_answers_is_unavailable_within_the_deadline() {
    // Accepts the connection and then says nothing: a hung server.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert_unavailable_within(silent.local_addr().unwrap().port(), Duration::from_secs(20));
    drop(silent);
}

#[test]
fn postgres_an_unreachable_database_is_unavailable_at_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert_unavailable_within(port, Duration::from_secs(10));
}

//! The revocation cache and its acceptance rule: every case of the rule, a property test that
//! no sequence of CRLs wedges the cache, rollbacks, re-fetches, cutting live connections of a
//! newly revoked peer, and the stale policy.

use super::rule::{judge, Verdict};
use super::*;
use tether_certs::crl::{build, CrlEntry};
use tether_certs::issue::Signer;
use tether_certs::{Serial, TrustDomain};

fn ca() -> Signer {
    let td = TrustDomain::new("example.org").unwrap();
    let now = OffsetDateTime::now_utc();
    let (root, _) = tether_certs::issue::new_root(&td, Duration::from_secs(86400), now).unwrap();
    let (inter, _) = root
        .issue_intermediate(&td, Duration::from_secs(86400), now)
        .unwrap();
    inter
}

/// CRL `number` listing `revoked`, with thisUpdate and nextUpdate at these offsets from
/// `now`.
fn crl_at(
    ca: &Signer,
    number: u64,
    revoked: &[&Serial],
    now: OffsetDateTime,
    this_update_in: time::Duration,
    next_update_in: time::Duration,
) -> RevocationList {
    let entries: Vec<CrlEntry> = revoked
        .iter()
        .map(|s| CrlEntry {
            serial: (*s).clone(),
            revoked_at: now,
            reason: None,
        })
        .collect();
    let der = build(
        ca,
        number,
        now + this_update_in,
        now + next_update_in,
        &entries,
    )
    .unwrap();
    RevocationList::parse_and_verify(&der, ca.cert()).unwrap()
}

/// CRL `number` issued two days ago, with nextUpdate `next_update_in` from now.
fn crl(
    ca: &Signer,
    number: u64,
    revoked: &[&Serial],
    next_update_in: time::Duration,
) -> RevocationList {
    let now = OffsetDateTime::now_utc();
    crl_at(
        ca,
        number,
        revoked,
        now,
        -time::Duration::hours(48),
        next_update_in,
    )
}

fn cache(on_stale: OnStale) -> Arc<RevocationCache> {
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    RevocationCache::new(on_stale, Duration::from_secs(60), &metrics)
}

fn counted(c: &RevocationCache, result: CrlUpdate) -> u64 {
    c.updates.with_label_values(&[result.as_str()]).get()
}

#[test]
fn installs_newer_lists_and_refuses_rollbacks() {
    let ca = ca();
    let s = Serial::random();
    let c = cache(OnStale::Deny);
    c.install(crl(&ca, 5, &[&s], time::Duration::hours(1)))
        .unwrap();
    assert!(c.is_revoked(s.as_bytes()));
    assert_eq!(c.number(), 5);
    // An older list that would un-revoke `s` is refused and the held one stays.
    let err = c
        .install(crl(&ca, 4, &[], time::Duration::hours(1)))
        .unwrap_err();
    assert!(err.to_string().contains("rollback"), "{err}");
    assert!(c.is_revoked(s.as_bytes()));
    assert_eq!(c.number(), 5);
    assert_eq!(counted(&c, CrlUpdate::Rollback), 1);
    // The same number again is a harmless re-fetch; a newer one replaces.
    c.install(crl(&ca, 5, &[&s], time::Duration::hours(1)))
        .unwrap();
    c.install(crl(&ca, 6, &[], time::Duration::hours(1)))
        .unwrap();
    assert!(!c.is_revoked(s.as_bytes()));
    assert_eq!(counted(&c, CrlUpdate::Installed), 3);
}

#[test]
fn the_very_list_held_is_unchanged_and_not_counted() {
    let ca = ca();
    let c = cache(OnStale::Deny);
    let list = crl(&ca, 3, &[], time::Duration::hours(1));
    c.install(list.clone()).unwrap();
    assert_eq!(c.install(list).unwrap(), Installed::Unchanged);
    assert_eq!(counted(&c, CrlUpdate::Installed), 1);
}

#[test]
fn the_rule_in_every_case() {
    use Verdict::*;
    let ca = ca();
    let now = OffsetDateTime::now_utc();
    let grace = Duration::from_secs(60);
    let h = time::Duration::hours;
    let at = |n, this: time::Duration, next: time::Duration| crl_at(&ca, n, &[], now, this, next);
    let fresh = |n| at(n, -h(1), h(1));
    let stale = |n| at(n, -h(30), -h(1));
    let judged = |held: Option<&RevocationList>, offered: &RevocationList| {
        judge(held, offered, now, grace).map_err(|e| e.result())
    };
    // Nothing held: anything not from the future, even stale.
    assert_eq!(judged(None, &stale(9)), Ok(Install));
    assert_eq!(
        judged(None, &at(1, h(1), h(2))),
        Err(CrlUpdate::NotYetValid)
    );
    // Clock skew: 30 s ahead is taken (age 0), an hour ahead is not.
    let ahead = at(2, time::Duration::seconds(30), h(1));
    assert_eq!(judged(Some(&fresh(1)), &ahead), Ok(Install));
    assert_eq!(ahead.age(now), time::Duration::ZERO);
    assert_eq!(
        judged(Some(&fresh(1)), &at(2, h(1), h(2))),
        Err(CrlUpdate::NotYetValid)
    );
    // Stale on arrival never replaces a fresh list, whatever its number.
    assert_eq!(judged(Some(&fresh(1)), &stale(9)), Err(CrlUpdate::Stale));
    // Within the grace it is still fresh.
    let in_grace = at(9, -h(30), -time::Duration::seconds(30));
    assert_eq!(judged(Some(&fresh(1)), &in_grace), Ok(Install));
    // Lower numbers: a rollback while ours is fresh or the offer is no fresher…
    assert_eq!(judged(Some(&fresh(5)), &fresh(4)), Err(CrlUpdate::Rollback));
    assert_eq!(judged(Some(&stale(5)), &stale(4)), Err(CrlUpdate::Rollback));
    // …and the way back once ours is stale.
    assert_eq!(judged(Some(&stale(9)), &fresh(2)), Ok(Install));
    // Same or higher numbers replace, even a stale one over a stale one.
    assert_eq!(judged(Some(&fresh(5)), &fresh(5)), Ok(Install));
    assert_eq!(judged(Some(&stale(5)), &stale(6)), Ok(Install));
    assert_eq!(judged(Some(&fresh(5)), &fresh(6)), Ok(Install));
}

#[test]
fn a_refusal_names_the_numbers_and_dates() {
    let ca = ca();
    let c = cache(OnStale::Deny);
    c.install(crl(&ca, 1, &[], time::Duration::hours(1)))
        .unwrap();
    let err = c
        .install(crl(&ca, 9, &[], -time::Duration::hours(1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CRL 9") && err.contains("keeping CRL 1"),
        "{err}"
    );
    let year = OffsetDateTime::now_utc().year().to_string();
    assert!(
        err.contains(&year) && err.contains("stale on arrival"),
        "{err}"
    );
    assert_eq!(counted(&c, CrlUpdate::Stale), 1);
    assert_eq!(c.number(), 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever CRLs arrive, in whatever order, a stale one never replaces a fresh one, and
    /// the cache is never stale while refusing a fresh list from its CA.
    #[test]
    fn no_sequence_of_crls_wedges_the_cache(
        offers in proptest::collection::vec((0u64..20, -72i64..2, 1i64..72), 0..8),
        theirs in 0u64..20,
    ) {
        let ca = ca();
        let now = OffsetDateTime::now_utc();
        let grace = Duration::from_secs(60);
        let mut held: Option<RevocationList> = None;
        for (number, this_in, valid) in offers {
            let this = time::Duration::hours(this_in);
            let offered =
                crl_at(&ca, number, &[], now, this, this + time::Duration::hours(valid));
            let before = held.clone();
            if judge(held.as_ref(), &offered, now, grace).is_ok() {
                held = Some(offered.clone());
            }
            if let Some(b) = before.filter(|b| !b.is_stale(now, grace)) {
                let now_held = held.as_ref().unwrap();
                proptest::prop_assert!(!now_held.is_stale(now, grace) || now_held.der() == b.der());
            }
        }
        let from_ca = crl_at(
            &ca, theirs, &[], now, -time::Duration::minutes(1), time::Duration::hours(1),
        );
        let stuck = held.as_ref().is_some_and(|h| h.is_stale(now, grace))
            && judge(held.as_ref(), &from_ca, now, grace).is_err();
        proptest::prop_assert!(!stuck);
    }
}

#[tokio::test]
async fn a_new_revocation_closes_live_connections_of_that_peer_only() {
    let ca = ca();
    let (victim, bystander) = (Serial::random(), Serial::random());
    let c = cache(OnStale::Deny);
    let v = c.watch(victim.as_bytes());
    let b = c.watch(bystander.as_bytes());
    assert_eq!(
        c.install(crl(&ca, 1, &[&victim], time::Duration::hours(1)))
            .unwrap(),
        Installed::Replaced { closed: 1 }
    );
    tokio::time::timeout(Duration::from_secs(1), v.revoked())
        .await
        .expect("victim's connection is told");
    assert!(tokio::time::timeout(Duration::from_millis(50), b.revoked())
        .await
        .is_err());
    assert_eq!(c.closed.get(), 1);
    drop(v);
    drop(b);
    assert!(
        c.live.lock().unwrap().is_empty(),
        "guards unregister on drop"
    );
}

#[test]
fn staleness_follows_the_policy() {
    let ca = ca();
    let now = OffsetDateTime::now_utc();
    assert!(cache(OnStale::Deny).admits(now), "no CRL held is not stale");
    // nextUpdate 30 s ago, grace 60 s: still fresh.
    let deny = cache(OnStale::Deny);
    deny.install(crl(&ca, 1, &[], -time::Duration::seconds(30)))
        .unwrap();
    assert!(!deny.is_stale(now) && deny.admits(now));
    // nextUpdate 2 min ago: stale; deny refuses, allow admits.
    let (deny, allow) = (cache(OnStale::Deny), cache(OnStale::Allow));
    for c in [&deny, &allow] {
        c.install(crl(&ca, 2, &[], -time::Duration::minutes(2)))
            .unwrap();
    }
    assert!(deny.is_stale(now) && !deny.admits(now));
    assert!(allow.is_stale(now) && allow.admits(now));
}

//! What a sidecar pays per handshake and per CRL: revocation lookup, X509-SVID chain
//! verification, and CRL parse + verify.
//!
//! ```sh
//! cargo bench -p tether-certs --bench certs                # all cases, ~1 min
//! cargo bench -p tether-certs --bench certs -- revocation  # one group
//! ```
//!
//! Targets (issue "make bench"): a revocation lookup takes ≤ 200 ns with 100,000 revoked
//! serials. The PKI (root → intermediate → leaf, ECDSA P-256) and the 100,000-entry CRL are
//! generated here with the real issuance code; nothing is read from disk.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rustls_pki_types::UnixTime;
use tether_certs::crl::{self, CrlEntry};
use tether_certs::issue::{self, Signer};
use tether_certs::svid::Usage;
use tether_certs::verify::{ExpectedPeer, Revocation, SvidVerifier};
use tether_certs::{RevocationList, RevokedSet, Serial, SpiffeId, TrustBundle, TrustDomain};
use time::OffsetDateTime;

const REVOKED: usize = 100_000;
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

struct Pki {
    root: Signer,
    intermediate: Signer,
    td: TrustDomain,
}

fn pki() -> Pki {
    let now = OffsetDateTime::now_utc();
    let td = TrustDomain::new("demo.local").expect("valid trust domain");
    let (root, _) = issue::new_root(&td, 30 * DAY, now).expect("root");
    let (intermediate, _) = root
        .issue_intermediate(&td, 7 * DAY, now)
        .expect("intermediate");
    Pki {
        root,
        intermediate,
        td,
    }
}

/// `REVOKED` random serials, as the CA makes them.
fn revoked_serials() -> Vec<Serial> {
    (0..REVOKED).map(|_| Serial::random()).collect()
}

fn revocation(c: &mut Criterion) {
    let serials = revoked_serials();
    let mut set = RevokedSet::default();
    for s in &serials {
        set.insert(s);
    }
    let revocation = Revocation::new(set);
    let hit = serials[REVOKED / 2].as_bytes().to_vec();
    let miss = Serial::random().as_bytes().to_vec();
    // A certificate's DER serial may carry a leading zero byte; the lookup normalizes it.
    let mut padded = vec![0u8];
    padded.extend_from_slice(&miss);
    assert!(revocation.is_revoked(&hit));
    assert!(!revocation.is_revoked(&miss));
    let mut group = c.benchmark_group("revocation-100k");
    group.bench_function("hit", |b| b.iter(|| revocation.is_revoked(black_box(&hit))));
    group.bench_function("miss", |b| {
        b.iter(|| revocation.is_revoked(black_box(&miss)))
    });
    group.bench_function("miss-padded", |b| {
        b.iter(|| revocation.is_revoked(black_box(&padded)))
    });
    group.finish();
}

fn svid_verify(c: &mut Criterion) {
    let pki = pki();
    let bundle = TrustBundle::from_pem(pki.root.cert_pem().as_bytes()).expect("bundle");
    let mut set = RevokedSet::default();
    for s in &revoked_serials() {
        set.insert(s);
    }
    let revocation = Revocation::new(set);
    let verifier = SvidVerifier::new(&bundle, revocation.clone());
    let key = tether_certs::keys::generate_key().expect("key");
    let id = SpiffeId::from_parts(&pki.td, "/ns/default/sa/service-a").expect("id");
    let leaf = pki
        .intermediate
        .issue_leaf(&id, &key, HOUR, DAY, OffsetDateTime::now_utc())
        .expect("leaf");
    let intermediates = [pki.intermediate.cert().clone()];
    let expected = ExpectedPeer::OneOf(Arc::from(vec![id.clone()]));
    let now = UnixTime::now();
    verifier
        .verify(&leaf.der, &intermediates, Usage::Client, now, &expected)
        .expect("the leaf verifies");
    let verify = |verifier: &SvidVerifier| {
        verifier
            .verify(
                black_box(&leaf.der),
                black_box(&intermediates),
                Usage::Client,
                now,
                &expected,
            )
            .expect("verifies")
    };
    let mut group = c.benchmark_group("svid-verify");
    // A chain this verifier has not seen: webpki's two signature checks run.
    group.bench_function("chain-leaf-intermediate-root", |b| {
        b.iter_batched(
            || SvidVerifier::new(&bundle, revocation.clone()),
            |fresh| verify(&fresh),
            BatchSize::SmallInput,
        )
    });
    // The same chain again, as on a peer's next connection: remembered.
    group.bench_function("chain-remembered", |b| b.iter(|| verify(&verifier)));
    group.bench_function("inspect-leaf-only", |b| {
        b.iter(|| tether_certs::svid::inspect_leaf(black_box(&leaf.der), Some(Usage::Client)))
    });
    group.finish();
}

fn crl_parse(c: &mut Criterion) {
    let pki = pki();
    let now = OffsetDateTime::now_utc();
    let entries: Vec<CrlEntry> = revoked_serials()
        .into_iter()
        .map(|serial| CrlEntry {
            serial,
            revoked_at: now,
            reason: Some(crl::Reason::KeyCompromise),
        })
        .collect();
    let der = crl::build(&pki.intermediate, 7, now, now + DAY, &entries).expect("CRL builds");
    let issuer = pki.intermediate.cert().clone();
    let parsed = RevocationList::parse_and_verify(&der, &issuer).expect("CRL verifies");
    assert_eq!(parsed.revoked().len(), REVOKED);
    let pem = parsed.to_pem();
    eprintln!(
        "CRL with {REVOKED} entries: {} bytes DER, {} bytes PEM",
        der.len(),
        pem.len()
    );
    let mut group = c.benchmark_group("crl-parse-verify-100k");
    group.sample_size(10);
    group.bench_function("der", |b| {
        b.iter(|| RevocationList::parse_and_verify(black_box(&der), &issuer).expect("verifies"))
    });
    group.bench_function("pem", |b| {
        b.iter(|| {
            RevocationList::parse_and_verify(black_box(pem.as_bytes()), &issuer).expect("verifies")
        })
    });
    group.finish();
}

criterion_group!(benches, revocation, svid_verify, crl_parse);
criterion_main!(benches);

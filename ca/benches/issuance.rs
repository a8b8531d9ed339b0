//! CSR signing at the CA: the work behind every enrollment and renewal.
//!
//! ```sh
//! cargo bench -p tether-ca --bench issuance
//! ```
//!
//! - `sign/parse-csr`: [`parse_csr`] alone (PEM decode, DER parse, CSR self-signature check);
//! - `sign/issue-leaf`: [`Signer::issue_leaf`] alone (build the X509-SVID and sign it);
//! - `sign/parse-csr+issue-leaf`: both, i.e. the CPU cost of one certificate;
//! - `authority/enroll`: [`Authority::enroll`], which adds the token check and the SQLite
//!   transaction that consumes the token and records the certificate (WAL, synchronous=NORMAL)
//!   in a temporary state directory.
//!
//! The HTTPS-level throughput (TLS, HTTP, JSON, concurrency) is measured by
//! `cargo run --release -p tether-ca --example enroll_load` (see `ca/examples/enroll_load.rs`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tether_ca::{Authority, InitOptions};
use tether_certs::issue::{self, parse_csr};
use tether_certs::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn csr() -> String {
    let key = tether_certs::keys::generate_key().expect("key");
    tether_certs::keys::generate_anonymous_csr(&key).expect("CSR")
}

fn sign(c: &mut Criterion) {
    let td = TrustDomain::new("demo.local").expect("trust domain");
    let now = OffsetDateTime::now_utc();
    let (root, _) = issue::new_root(&td, 30 * DAY, now).expect("root");
    let (intermediate, _) = root
        .issue_intermediate(&td, 7 * DAY, now)
        .expect("intermediate");
    let id = SpiffeId::from_parts(&td, "/ns/default/sa/service-a").expect("id");
    let csr = csr();
    let spki = parse_csr(csr.as_bytes()).expect("CSR parses");
    let mut group = c.benchmark_group("sign");
    group.bench_function("parse-csr", |b| {
        b.iter(|| parse_csr(black_box(csr.as_bytes())).expect("parses"))
    });
    group.bench_function("issue-leaf", |b| {
        b.iter(|| {
            intermediate
                .issue_leaf(black_box(&id), &spki, HOUR, DAY, now)
                .expect("issues")
        })
    });
    group.bench_function("parse-csr+issue-leaf", |b| {
        b.iter(|| {
            let key = parse_csr(black_box(csr.as_bytes())).expect("parses");
            intermediate
                .issue_leaf(&id, &key, HOUR, DAY, now)
                .expect("issues")
        })
    });
    group.finish();
}

fn enroll(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("ca");
    let td = TrustDomain::new("demo.local").expect("trust domain");
    Authority::init(&state, &InitOptions::with_defaults(td.clone())).expect("init");
    let authority = Authority::open(&state).expect("open");
    let id = SpiffeId::from_parts(&td, "/ns/default/sa/service-a").expect("id");
    let csr = csr();
    let mut group = c.benchmark_group("authority");
    group.bench_function("enroll", |b| {
        b.iter_batched(
            || authority.create_token(&id, HOUR).expect("token"),
            |token| authority.enroll(&token, csr.as_bytes()).expect("enrolls"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, sign, enroll);
criterion_main!(benches);

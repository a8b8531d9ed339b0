//! Policy decision cost: what every inbound request pays after the handshake.
//!
//! ```sh
//! cargo bench -p tether-proxy --bench policy          # all cases, ~1 min
//! cargo bench -p tether-proxy --bench policy -- 10000 # only the 10,000-rule cases
//! ```
//!
//! Target (issue "make bench"): a decision takes ≤ 2 µs with 10,000 rules. The policies are
//! generated here: rule *k* names one exact caller (`…/ns/team<k % 100>/sa/svc<k>`), one
//! method set and two paths, and every tenth rule also a namespace prefix (`…/ns/team<k>/*`),
//! so the index holds 10,000 exact IDs and 1,000 prefixes, as a big mesh would. Cases:
//! - `allow-exact`: the caller of a rule in the middle of the file, request allowed;
//! - `allow-prefix`: a caller only a prefix rule names;
//! - `deny-unknown`: a caller no rule names (default deny);
//! - `deny-same-caller`: the worst case, one caller named by every rule, no rule matching the
//!   path, so every rule is tried;
//! - `normalize`: [`normalize_path`] on a typical path, which runs before every decision.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tether_certs::SpiffeId;
use tether_proxy::policy::{normalize_path, Decision, Policy};
use time::OffsetDateTime;

const TD: &str = "spiffe://demo.local";

/// A policy of `n` rules shaped as described in the module docs.
fn mesh_policy(n: usize) -> String {
    let mut text = String::from("mode = \"enforce\"\n");
    for k in 0..n {
        let team = k % 100;
        let mut from = format!("\"{TD}/ns/team{team}/sa/svc{k}\"");
        if k % 10 == 0 {
            from.push_str(&format!(", \"{TD}/ns/prefix{k}/*\""));
        }
        let methods = if k % 2 == 0 {
            "[\"GET\", \"HEAD\"]"
        } else {
            "[\"GET\", \"POST\", \"PUT\"]"
        };
        text.push_str(&format!(
            "[[rule]]\nname = \"r{k}\"\nfrom = [{from}]\nmethods = {methods}\n\
             paths = [\"/api/v1/items/*\", \"/health\"]\n"
        ));
    }
    text
}

/// `n` rules that all name the same caller, none of whose paths a request to `/miss` matches.
fn same_caller_policy(n: usize) -> String {
    let mut text = String::new();
    for k in 0..n {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{k}\"\nfrom = [\"{TD}/ns/hot/sa/caller\"]\n\
             paths = [\"/p{k}/*\"]\n"
        ));
    }
    text
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("bench SPIFFE IDs are valid")
}

fn decide(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let mut group = c.benchmark_group("policy-decide");
    for n in [10usize, 10_000] {
        let policy = Policy::parse(&mesh_policy(n), "bench.toml").expect("generated policy parses");
        let mid = (n / 2) | 1; // odd: its methods include POST
        let exact = id(&format!("{TD}/ns/team{}/sa/svc{mid}", mid % 100));
        let prefixed = id(&format!("{TD}/ns/prefix{}/sa/anyone", (n / 2) / 10 * 10));
        let unknown = id(&format!("{TD}/ns/elsewhere/sa/nobody"));
        let worst =
            Policy::parse(&same_caller_policy(n), "bench.toml").expect("generated policy parses");
        let hot = id(&format!("{TD}/ns/hot/sa/caller"));
        let path = "/api/v1/items/42";
        // (case, policy, caller, method, path, allowed?)
        let cases = [
            ("allow-exact", &policy, &exact, "POST", path, true),
            ("allow-prefix", &policy, &prefixed, "GET", path, true),
            ("deny-unknown", &policy, &unknown, "GET", path, false),
            ("deny-same-caller", &worst, &hot, "GET", "/miss", false),
        ];
        for (case, policy, caller, method, path, allowed) in cases {
            // Check the case measures what its name says before timing it.
            let decision = policy.decide(caller, Some(method), Some(path), now);
            let want = if allowed { "allow" } else { "deny" };
            assert_eq!(
                matches!(decision, Decision::Allow { .. }),
                allowed,
                "{case}: expected {want}, got {decision:?}"
            );
            group.bench_with_input(BenchmarkId::new(case, n), &n, |b, _| {
                b.iter(|| {
                    black_box(policy.decide(
                        black_box(caller),
                        Some(black_box(method)),
                        Some(black_box(path)),
                        now,
                    ))
                })
            });
        }
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    // Parsing happens at start and on every reload, not per request; measured so a reload's
    // pause is known.
    let mut group = c.benchmark_group("policy-parse");
    group.sample_size(10);
    for n in [10usize, 10_000] {
        let text = mesh_policy(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| Policy::parse(black_box(text), "bench.toml").expect("parses"))
        });
    }
    group.finish();
}

fn normalize(c: &mut Criterion) {
    c.bench_function("normalize-path", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/items/42")).expect("valid path"))
    });
    c.bench_function("normalize-path-dotted", |b| {
        b.iter(|| normalize_path(black_box("/api//v1/./items/%7Eme/../42")).expect("valid path"))
    });
}

criterion_group!(benches, decide, parse, normalize);
criterion_main!(benches);

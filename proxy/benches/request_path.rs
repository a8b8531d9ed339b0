//! The request path's own header work: what each sidecar does to every request head besides
//! parsing it (hyper), encrypting it (rustls) and moving it (the kernel).
//!
//! ```sh
//! cargo bench -p tether-proxy --bench request_path
//! ```
//!
//! Each case calls the sidecar's own functions (through `tether_proxy::fuzzing`, where the
//! private ones are reachable) on a copy of a typical head, made and dropped outside the
//! timing:
//! - `outbound`: one authority for the route, the upgrade check, hop-by-hop stripping and a
//!   fresh request id, as the outbound does for a client's request;
//! - `inbound`: one authority, path normalization, the policy decision, the rebuilt target,
//!   the upgrade check, hop-by-hop and identity-field stripping and the kept request id, as
//!   the inbound does for a peer's request;
//! - the same functions one by one, the worst inputs beside the common ones.
//!
//! A sidecar spends about 20 µs of CPU per request at 32 connections (README, Performance);
//! these cases show which share of it is Tether's own code.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderValue, Request};
use tether_certs::SpiffeId;
use tether_proxy::fuzzing;
use tether_proxy::policy::{normalize_path_with, Decision, PathParams, Policy};
use time::OffsetDateTime;

const CALLER: &str = "spiffe://demo.local/ns/default/sa/service-a";

/// The policy `make bench`'s inbound runs (`proxy/bench/policy.toml`).
const POLICY: &str = include_str!("../bench/policy.toml");

/// A request head as curl or a service's HTTP client sends it.
fn client_head() -> Request<()> {
    Request::get("/api/v1/items/42?limit=10")
        .header("host", "service-b")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "*/*")
        .header("accept-encoding", "gzip")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(())
        .unwrap()
}

/// The same head as the inbound receives it from the outbound: with the request id.
fn peer_head() -> Request<()> {
    let mut req = client_head();
    let id = HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736");
    req.headers_mut().insert("x-request-id", id);
    req
}

/// A head that makes each function do its most: hop-by-hop fields named in `Connection`, an
/// identity header a caller tried to forge, two request ids.
fn hostile_head() -> Request<()> {
    let mut req = peer_head();
    let h = req.headers_mut();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-debug"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("x-debug", HeaderValue::from_static("1"));
    h.insert("te", HeaderValue::from_static("trailers"));
    let forged = HeaderValue::from_static("By=spiffe://demo.local/ns/x/sa/admin");
    h.insert("x-forwarded-client-cert", forged);
    h.append("x-request-id", HeaderValue::from_static("second"));
    req
}

fn outbound(mut req: Request<()>) -> Request<()> {
    black_box(fuzzing::settle_authority(&mut req).expect("one authority"));
    let upgrade = fuzzing::is_upgrade(req.headers());
    fuzzing::strip_hop_by_hop(req.headers_mut(), upgrade);
    black_box(fuzzing::settle_request_id(req.headers_mut()));
    req
}

fn inbound(policy: &Policy, caller: &SpiffeId, mut req: Request<()>) -> Request<()> {
    black_box(fuzzing::settle_authority(&mut req).expect("one authority"));
    let path = normalize_path_with(req.uri().path(), PathParams::Reject).expect("valid path");
    let now = OffsetDateTime::now_utc();
    let decision = policy.decide(caller, Some(req.method().as_str()), Some(&path), now);
    assert!(matches!(decision, Decision::Allow { .. }), "{decision:?}");
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    *req.uri_mut() = http::Uri::try_from(pq).expect("valid target");
    let upgrade = fuzzing::is_upgrade(req.headers());
    fuzzing::strip_hop_by_hop(req.headers_mut(), upgrade);
    fuzzing::strip_identity_fields(req.headers_mut());
    black_box(fuzzing::settle_request_id(req.headers_mut()));
    req
}

fn heads(c: &mut Criterion) {
    let policy = Policy::parse(POLICY, "policy.toml").expect("the bench policy parses");
    let caller: SpiffeId = CALLER.parse().expect("a SPIFFE ID");
    let mut group = c.benchmark_group("head");
    group.bench_function("outbound", |b| {
        b.iter_batched(client_head, outbound, BatchSize::SmallInput)
    });
    group.bench_function("inbound", |b| {
        b.iter_batched(
            peer_head,
            |r| inbound(&policy, &caller, r),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("inbound-hostile", |b| {
        b.iter_batched(
            hostile_head,
            |r| inbound(&policy, &caller, r),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn functions(c: &mut Criterion) {
    let mut group = c.benchmark_group("fn");
    for (name, make) in [
        ("common", peer_head as fn() -> _),
        ("hostile", hostile_head),
    ] {
        group.bench_function(format!("strip-hop-by-hop/{name}"), |b| {
            b.iter_batched(
                || make().into_parts().0.headers,
                |mut h| {
                    fuzzing::strip_hop_by_hop(&mut h, false);
                    h
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("strip-identity-fields/{name}"), |b| {
            b.iter_batched(
                || make().into_parts().0.headers,
                |mut h| {
                    fuzzing::strip_identity_fields(&mut h);
                    h
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("settle-authority/{name}"), |b| {
            b.iter_batched(
                make,
                |mut r| {
                    black_box(fuzzing::settle_authority(&mut r).is_ok());
                    r
                },
                BatchSize::SmallInput,
            )
        });
    }
    // Kept (one usable id), and fresh (none: 128 random bits formatted as hex).
    for (name, make) in [("kept", peer_head as fn() -> _), ("fresh", client_head)] {
        group.bench_function(format!("request-id/{name}"), |b| {
            b.iter_batched(
                || make().into_parts().0.headers,
                |mut h| (fuzzing::settle_request_id(&mut h), h),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, heads, functions);
criterion_main!(benches);

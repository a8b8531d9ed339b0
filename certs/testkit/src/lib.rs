//! Dev-only test kit shared by Tether's test suites (certs, ca, proxy): one place for the PKI
//! builders, the Prometheus text parser, the accept-any TLS verifier and the polling helper that
//! the suites used to copy. Only `[dev-dependencies]` name this crate; no shipped binary links it, so it may panic
//! freely: every helper fails the calling test with a message instead of returning an error.
//!
//! # Layout
//! - [`pki`]: a throw-away root → intermediate per trust domain (rcgen at test time, nothing
//!   committed), leaves through the real issuance policy or from hand-edited params, and small
//!   x509-parser helpers for looking into what was issued.
//! - [`k8s`]: Kubernetes service-account tokens in the exact shape a kube-apiserver issues, signed
//!   with a throwaway key, and the JWKS that publishes it.
//! - [`metrics`]: samples read out of Prometheus text exposition, by name and labels.
//! - [`netns`]: simulated hosts (network namespaces on one bridge) that can be cut off and
//!   restored, and a PostgreSQL server running on one of them.
//! - [`postgres`]: a fresh database per test on the throwaway cluster `.ci/postgres.sh` starts,
//!   or a clear skip (a failure under CI) where there is none.
//! - [`tls`]: a rustls client that trusts any server certificate, for tests that look at what
//!   the *server* decides.
//! - [`tools`]: whether an optional external tool (`openssl`, `curl`) is installed.
//! - [`wait`]: polling a condition until it holds, instead of fixed sleeps.
//!
//! The kit depends on `tether-certs` only: suites that need a running CA (`tether-ca`) build it
//! in their own `tests/common`, so no dependency circle runs through the kit.

pub mod k8s;
pub mod metrics;
pub mod netns;
pub mod pki;
pub mod postgres;
pub mod tls;
pub mod tools;
pub mod wait;

/// Whether the suites run under CI (`CI` set to anything but empty, `0` or `false`, as CI
/// services set `CI=true`). There a missing prerequisite that CI provides (PostgreSQL, network
/// namespaces as root) fails the test instead of skipping it: CI must never pass silently
/// without the part it was meant to check.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

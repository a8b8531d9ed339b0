//! Dev-only test kit shared by Tether's test suites (certs, ca, proxy): one place for the PKI
//! builders, the Prometheus text parser, the accept-any TLS verifier and the polling helper that
//! the suites used to copy. Only `[dev-dependencies]` name this crate; no shipped binary links it, so it may panic
//! freely: every helper fails the calling test with a message instead of returning an error.
//!
//! # Layout
//! - [`pki`]: a throw-away root → intermediate per trust domain (rcgen at test time, nothing
//!   committed), leaves through the real issuance policy or from hand-edited params, and small
//!   x509-parser helpers for looking into what was issued.
//! - [`metrics`]: samples read out of Prometheus text exposition, by name and labels.
//! - [`tls`]: a rustls client that trusts any server certificate, for tests that look at what
//!   the *server* decides.
//! - [`tools`]: whether an optional external tool (`openssl`, `curl`) is installed.
//! - [`wait`]: polling a condition until it holds, instead of fixed sleeps.
//!
//! The kit depends on `tether-certs` only: suites that need a running CA (`tether-ca`) build it
//! in their own `tests/common`, so no dependency circle runs through the kit.

pub mod metrics;
pub mod pki;
pub mod tls;
pub mod tools;
pub mod wait;

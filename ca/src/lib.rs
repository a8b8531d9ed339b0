//! Tether's certificate authority: a small CA that issues short-lived X509-SVIDs from one-time
//! enrollment tokens, renews them over mTLS, records everything it issued and revoked in SQLite,
//! and publishes signed CRLs that sidecars long-poll.
//!
//! # Layout
//! - [`store`]: the SQLite database (certificates, revocations, tokens, CRLs) and its
//!   transactions.
//! - [`authority`]: the state directory and every operation that issues or revokes; the CLI and
//!   the API are thin layers over it.
//! - [`api`]: the HTTPS API (HTTP/1.1 and h2): enroll, renew, bundle, CRL with long-poll, revoke,
//!   metrics.
//! - [`metrics`]: the CA's Prometheus metrics on an injected registry.
//! - [`cli`]: the `tether-ca` command line.

pub mod api;
pub mod authority;
pub mod cli;
pub mod metrics;
pub mod store;

pub use authority::{Authority, CaError, InitOptions, Settings};

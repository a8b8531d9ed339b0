//! Tether's certificate authority: a small CA that issues short-lived X509-SVIDs from one-time
//! enrollment tokens, renews them over mTLS, records everything it issued and revoked in SQLite,
//! publishes signed CRLs that sidecars long-poll, keeps track of the sidecars that poll, and
//! rotates its root without restarting anything.
//!
//! # Layout
//! - [`store`]: the SQLite database (certificates, revocations, tokens, CRLs, generations, fleet)
//!   and its transactions.
//! - [`authority`]: the state directory and every operation that issues or revokes; the CLI and
//!   the API are thin layers over it.
//! - [`state`]: the state directory on disk: init, each generation's files, loading the signer
//!   and bundle, the published copies.
//! - [`rotation`]: root rotate / retire / list.
//! - [`fleet`]: what polling sidecars report, and waiting for them to acknowledge a CRL.
//! - [`check`]: the CA's health check.
//! - [`api`]: the HTTPS API (HTTP/1.1 and h2): enroll, renew, bundle, CRL with long-poll, revoke,
//!   metrics; reloads itself when the CLI rotates the root.
//! - [`metrics`]: the CA's Prometheus metrics on an injected registry.
//! - [`cli`]: the `tether-ca` command line.

pub mod api;
pub mod authority;
pub mod check;
pub mod cli;
pub mod fleet;
pub mod metrics;
pub mod rotation;
pub mod state;
pub mod store;

pub use authority::{Authority, CaError, InitOptions, Settings};

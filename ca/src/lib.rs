//! Tether's certificate authority: a small CA that issues short-lived X509-SVIDs from one-time
//! enrollment tokens, renews them over mTLS, records everything it issued and revoked in SQLite,
//! publishes signed CRLs that sidecars long-poll, keeps track of the sidecars that poll, and
//! rotates its root without restarting anything.
//!
//! # Layout
//! - [`error`]: `CaError`, the error of every authority operation (its variant picks the HTTP
//!   status).
//! - [`settings`]: `InitOptions` (what `init` creates) and `Settings` (the lifetimes stored in
//!   `ca.db`).
//! - [`store`]: the SQLite database and its transactions: certificates in `store.rs`; in
//!   `store/`, the schema and in-place upgrade (`schema`), enrollment tokens (`tokens`),
//!   revocations and CRLs (`revocation`), generations and rotation (`generations`), root
//!   retirement (`retirement`) and the fleet (`fleet`).
//! - [`state`]: the state directory on disk: init, each generation's files, loading the signer
//!   and bundle, the published copies; `state/credentials.rs` issues the CA's own API and admin
//!   credentials.
//! - [`authority`]: `Authority`, the loaded CA, and the checks on a presented certificate;
//!   `authority/issuance.rs` (tokens, enroll, renew, issue to a directory) and
//!   `authority/revocation.rs` (revoke, CRLs, listings) add its operations. The CLI and the API
//!   are thin layers over it.
//! - [`rotation`]: root rotate / retire / list.
//! - [`replica`]: CA replicas sharing one database: `replica add` / `remove` / `list`, each
//!   replica's identity, and materializing a generation from the keys sealed in the database
//!   (`replica/materialize.rs`; the seal itself is `state/seal.rs`).
//! - [`fleet`]: what polling sidecars report (only what was published, only under their own
//!   row), and waiting for them to acknowledge a CRL.
//! - [`check`]: the CA's health check.
//! - [`k8s`]: enrollment with Kubernetes service-account tokens: the JWKS (file or https URL,
//!   refreshed), the token checks and the `--k8s-allow` globs.
//! - [`api`]: the HTTPS API (HTTP/1.1 and h2) and the metrics listener: `api/server.rs` (both
//!   listeners on `tether_net::serve`), `api/routes.rs` (the typed `Endpoint`, dispatch, the
//!   error → response edge), `api/body.rs` (request bodies: read within the limit, the unread
//!   rest discarded so every answer arrives), `api/watcher.rs` (the database watch: reload after
//!   a rotation, CRL announcements, housekeeping), `api/revocation.rs` (revoke and the CRL
//!   long-poll), `api/fleet.rs` (what a poll reports to the fleet) and `api/tls.rs` (the
//!   swappable server certificate, deferred client authentication).
//! - [`metrics`]: the CA's Prometheus metrics on an injected registry, with typed labels.
//! - [`timefmt`]: RFC 3339 and short durations, parsed and printed one way everywhere.
//! - [`cli`]: the `tether-ca` command line: `cli/args.rs` (flags; `serve`'s Kubernetes ones in
//!   `cli/k8s_args.rs`), `cli/commands.rs` (init, enroll, issue, revoke, crl, list) and
//!   `cli/report.rs` (revoke --wait, fleet, root, check).
//!
//! The request and answer bodies, header names and limits of the API are the wire contract in
//! [`tether_certs::wire`], shared with the sidecar.

pub mod api;
pub(crate) mod authority;
pub(crate) mod check;
pub mod cli;
pub(crate) mod error;
pub(crate) mod fleet;
pub mod k8s;
pub(crate) mod metrics;
pub mod replica;
pub mod rotation;
pub(crate) mod settings;
pub(crate) mod state;
pub mod store;
pub(crate) mod timefmt;

pub use authority::Authority;
pub use error::CaError;
pub use settings::{InitOptions, Settings, ADMIN_PATH};

//! The CA's HTTPS API (HTTP/1.1 and h2 over TLS 1.3).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /v1/enroll` | one-time token, or a Kubernetes service-account token, in the body | `{token, csr}` or `{k8s_token, csr}` → leaf + chain + bundle |
//! | `POST /v1/renew` | client certificate (mTLS) | `{csr}` → leaf for the *same* identity |
//! | `GET /v1/bundle` | none | trust bundle, PEM; `x-tether-bundle-version` |
//! | `GET /v1/crl` | none (a client certificate is recorded in the fleet) | current CRL + the intermediate that signed it (+ its cross-certificate during a rotation), PEM; `ETag`, `If-None-Match`, long-poll `?after=N&wait=30s`; `x-tether-crl-number`, `x-tether-bundle-version` |
//! | `POST /v1/revoke` | admin client certificate | `{serial, reason?}` or `{id, before?, reason?}` |
//! | `GET /metrics` | none | Prometheus text |
//!
//! The TLS layer asks every client for a certificate but does not judge it: rustls still checks
//! the handshake signature (proof that the client holds the key), and the handlers that need an
//! identity verify the chain themselves through [`crate::Authority::authenticate`]. That is what lets a
//! renewal with an expired or revoked certificate get a clear 403 instead of a bare TLS alert,
//! and lets enrollment (no certificate yet) share the listener.
//!
//! **The fleet.** A sidecar polls `GET /v1/crl` with its current certificate and the headers
//! `x-tether-instance` (an opaque per-process id) and `x-tether-bundle-version`; a poll with
//! `after=N` acknowledges CRL N. Every such poll whose certificate authenticates upserts the
//! sidecar's row in the `fleet` table (see [`crate::fleet`]); one that does not is still answered.
//! A poll (with a certificate or without) whose `after` or bundle version names something this
//! CA never published is 400, and one under an instance whose row belongs to another identity
//! or lineage is 403; neither writes anything.
//!
//! **Rotation without restart.** The server re-reads `meta.bundle_version` with its CRL check
//! (every [`CRL_POLL_INTERVAL`] on SQLite; on PostgreSQL when notified, at least once a second:
//! see `watcher.rs`); when the CLI or another replica rotated or retired a root it reloads the
//! signer, the bundle and its own TLS certificate (new handshakes get the new one; open
//! connections are undisturbed) *before* it announces any newer CRL, so a long-poller woken by
//! the rotation's CRL already gets the new bundle version with it. If the reload fails, the old
//! state keeps serving, every poll tries again, and the failure is logged every ten seconds until
//! it succeeds.
//!
//! **Answers always arrive.** A body over [`MAX_BODY`] is 413, and whatever an answer leaves
//! unread (the rest of that body, or one a 401/404/405 never looked at) is read and dropped on
//! its own task, up to [`DRAIN_LIMIT`] and [`DRAIN_TIME`], while the answer goes out; over
//! HTTP/1.1 the answer then says `Connection: close`.
//!
//! Where it lives: `server.rs` runs both listeners on the shared accept loop, `routes.rs` maps a
//! request to its typed `Endpoint` and turns every error into a response, `enroll.rs` answers
//! enrollment (one-time or Kubernetes token), `body.rs` reads and discards request bodies,
//! `watcher.rs` watches the database, `revocation.rs` answers revoke and the CRL long-poll,
//! `fleet.rs` takes a poll's report to the fleet, `tls.rs` holds the swappable certificate. Bodies, header names and limits come from [`tether_certs::wire`].

mod body;
mod enroll;
mod fleet;
mod revocation;
mod routes;
mod server;
mod tls;
mod watcher;

use std::time::Duration;

use crate::error::CaError;

pub use server::{
    run, run_metrics, run_with, ServeOptions, MAX_API_CONNECTIONS, MAX_METRICS_CONNECTIONS,
};

/// Largest request body accepted (the wire contract's [`tether_certs::wire::MAX_REQUEST_BODY`]).
pub const MAX_BODY: usize = tether_certs::wire::MAX_REQUEST_BODY;
/// The most of a refused body that is read and dropped. A client that reads our answer while
/// it sends stops at the answer; what it still has in flight by then is bounded by its send
/// buffer and our receive window (a few MiB on common TCP stacks), so 16 MiB lets that arrive,
/// while a client that never stops costs at most this much reading.
pub const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
/// The longest a refused body is read and dropped: ample time for a client to read an answer
/// that was sent first, short enough that a client trickling bytes holds its connection slot
/// for no longer than this.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Longest a CRL long-poll may wait, whatever `wait=` asks (proxies and load balancers commonly
/// cut idle requests after 60 s).
pub const MAX_LONG_POLL: Duration = Duration::from_secs(55);
/// How often the server looks for CRLs published by other processes (the CLI's `revoke` writes
/// straight to the database): a revocation made with the CLI reaches long-polling sidecars
/// within this interval.
pub const CRL_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A TLS handshake that takes longer than this is dropped, so idle sockets cannot pin tasks.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `tether_ca_fleet_size` is recounted: a gauge over a one-minute window needs no
/// finer resolution.
pub const FLEET_COUNT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the CRL's age is checked for re-signing and old fleet rows are pruned.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API's own certificate or key is unusable.
    #[error("CA API TLS setup: {0}")]
    Tls(String),
    /// Reading the state failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Metrics could not be registered (a name registered twice on the same registry).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

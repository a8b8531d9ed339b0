//! The API's watch over the database: what other processes changed (a root rotation or
//! retirement by the CLI or another replica → reload, swap the TLS certificate; a CRL published
//! elsewhere → wake the long-polls) and the housekeeping (re-sign the CRL at half its validity,
//! count and prune the fleet). Failure semantics: a failed reload keeps the old signer, bundle
//! and certificate serving and is retried every poll; a failed refresh keeps the last CRL
//! published.
//!
//! When it looks: on SQLite every [`CRL_POLL_INTERVAL`] (replicas share one host and one file,
//! and a look reads local pages); on PostgreSQL when the database says something was published
//! (`LISTEN`, see [`crate::store::Changes`]) — milliseconds after the commit — and otherwise
//! every [`SAFETY_POLL`], for housekeeping and in case a notification was lost with a
//! connection (the feed also wakes on reconnect).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::server::{blocking, State};
use super::tls::certified_key;
use super::{CRL_POLL_INTERVAL, FLEET_COUNT_INTERVAL, HOUSEKEEPING_INTERVAL};
use crate::store::Changes;

/// How often a replica on PostgreSQL looks without being told to.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// Waits until it is time to look at the database again.
async fn next_look(changes: Option<&Changes>) {
    match changes {
        None => tokio::time::sleep(CRL_POLL_INTERVAL).await,
        Some(feed) => {
            tokio::select! {
                () = feed.changed() => {}
                () = tokio::time::sleep(SAFETY_POLL) => {}
            }
        }
    }
}

/// How often a failure that repeats every poll is logged again: often enough to be seen, not
/// ten times a second.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// A warning shared by many tasks, due at most once per [`REPEAT_WARNING_EVERY`].
pub(super) struct EveryFewSeconds(std::sync::Mutex<Option<Instant>>);

impl EveryFewSeconds {
    pub(super) const fn new() -> Self {
        EveryFewSeconds(std::sync::Mutex::new(None))
    }

    /// Whether to log now (and, if so, not again for a while).
    pub(super) fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= REPEAT_WARNING_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

/// Watches the database for what other processes change, at each look (see the module docs for
/// when): a rotation or retirement (reload, then swap the TLS certificate), new CRLs (wake
/// long-polls), this replica's removal (refuse to sign); and does the housekeeping: re-sign the
/// CRL at half its validity, count and prune the fleet.
pub(super) async fn watch_database(state: Arc<State>, refresh: Duration) {
    let mut last_housekeeping = Instant::now();
    let mut last_fleet_count: Option<Instant> = None;
    let (reload_warning, crl_warning) = (EveryFewSeconds::new(), EveryFewSeconds::new());
    let changes = state
        .authority
        .database_url()
        .map(|url| Changes::listen(&url));
    loop {
        next_look(changes.as_ref()).await;
        // Reload first: a CRL signed by a new intermediate is announced only once this server
        // serves the bundle that trusts it.
        let reloaded = match blocking(&state.authority, |a| a.reload()).await {
            Ok(_) => reload_server_cert(&state).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = reloaded {
            if reload_warning.due() {
                tracing::warn!(
                    "reloading the CA after a root rotation failed (the old signer, bundle and \
                     TLS certificate stay in use; retrying every poll): {e}"
                );
            }
        }
        let housekeeping = last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL;
        let count_fleet = last_fleet_count.is_none_or(|t| t.elapsed() >= FLEET_COUNT_INTERVAL);
        let result = blocking(&state.authority, move |a| {
            let removed = a.replica_removed()?;
            // A removed replica signs nothing more, CRLs included: the others keep them fresh.
            if housekeeping && removed.is_none() {
                a.current_crl(refresh)?;
                if let Err(e) = a.prune_fleet() {
                    tracing::warn!("pruning old fleet rows failed: {e}");
                }
            }
            let fleet = if count_fleet {
                Some(a.fleet_size()?)
            } else {
                None
            };
            let newest = a.latest_crl_number()?;
            // Read after the CRL number: a rotation that committed after this iteration's reload
            // shows here, and its CRL waits for the next iteration, which reloads first. Without
            // this, a long-poller could get the rotation's CRL with the old bundle version and
            // learn of the new bundle only at its next poll.
            let stale = a.stored_bundle_version()? != a.bundle_version();
            Ok((newest, fleet, stale, removed))
        })
        .await;
        if housekeeping {
            last_housekeeping = Instant::now();
        }
        match result {
            Ok((n, fleet, stale, removed)) => {
                note_removal(&state, removed);
                if let Some(size) = fleet {
                    state.metrics.fleet_size.set(size as i64);
                    last_fleet_count = Some(Instant::now());
                }
                if !stale {
                    publish(&state, n);
                }
            }
            Err(e) => {
                if crl_warning.due() {
                    tracing::warn!("CRL refresh failed (the last CRL stays published): {e}");
                }
            }
        }
    }
}

/// Swaps in the current generation's TLS certificate if the authority was reloaded since it was
/// loaded. On failure the old certificate keeps serving (and the next poll tries again).
async fn reload_server_cert(state: &Arc<State>) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let version = state.authority.bundle_version();
    if state.server_cert.version.load(Ordering::Acquire) == version {
        return Ok(());
    }
    let a = state.authority.clone();
    let key = tokio::task::spawn_blocking(move || certified_key(&a))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    *state
        .server_cert
        .current
        .write()
        .unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    state.server_cert.version.store(version, Ordering::Release);
    state.metrics.bundle_version.set(version as i64);
    tracing::info!(
        "trust bundle version {version}: signing with generation {} and serving its TLS \
         certificate",
        state.authority.generation()
    );
    Ok(())
}

/// Announces CRL `number` to long-polls if it is newer than the one announced.
pub(super) fn publish(state: &State, number: u64) {
    let changed = state.crl_tx.send_if_modified(|current| {
        if number > *current {
            *current = number;
            true
        } else {
            false
        }
    });
    if changed {
        state.metrics.crl_number.set(number as i64);
        state.metrics.crl_publishes.inc();
    }
}

/// Records whether this replica was removed (`replica remove`), logging the change once.
fn note_removal(state: &State, removed: Option<String>) {
    let mut current = state.removed.write().unwrap_or_else(|p| p.into_inner());
    if removed.is_some() && current.is_none() {
        tracing::error!(
            "{}; refusing to sign (enroll, renew and revoke answer 503)",
            removed.as_deref().unwrap_or_default()
        );
    }
    *current = removed;
}

//! The revocation cache: the CRL in force, its freshness, and the live connections it may have to
//! cut.
//!
//! Every CRL, from every source (the `[identity] crl` file at start and on change, the CA's
//! answers, the state directory's cache at start), passes one acceptance rule (`rule::judge`)
//! before it is installed; each offer is counted in `tether_crl_updates_total` by its outcome.
//! Installing swaps the serial set the TLS verifiers consult, so the next handshake sees it, and
//! closes every live connection whose peer serial it newly revokes — revocation does not wait for
//! connections to idle out.
//!
//! Staleness is explicit: past nextUpdate + grace the CRL is stale, and `on_stale_crl` decides
//! whether new handshakes are refused (`deny`, the default: fail closed) or admitted with an
//! alarm (`allow`). `/ready`, `/identity`, `tether_crl_stale` and the handshake path all ask
//! [`RevocationCache::is_stale`] at the moment they answer. Lookups on the handshake path are
//! O(1) and allocation-free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::Notify;

use tether_certs::serial::normalize;
use tether_certs::verify::Revocation;
use tether_certs::RevocationList;

use crate::metrics::{CrlUpdate, Metrics};

mod rule;

use rule::{judge, Verdict};
pub use rule::{InstallError, When};

/// What a stale CRL means for new handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Refuse new handshakes (fail closed).
    #[default]
    Deny,
    /// Admit them and raise `tether_crl_stale` (fail open with an alarm).
    Allow,
}

/// What an accepted CRL did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// It is now in force; `closed` live connections of peers it newly revokes were cut.
    Replaced {
        /// Connections told to close.
        closed: usize,
    },
    /// It is the list already in force (a re-fetch): nothing changed.
    Unchanged,
}

/// Live peer connections by the peer leaf's serial (normalized): (connection id, its close signal).
type LiveConnections = HashMap<Box<[u8]>, Vec<(u64, Arc<Notify>)>>;

/// The revocation cache shared by the verifiers, the connection tasks and the CRL poller.
pub struct RevocationCache {
    revocation: Arc<Revocation>,
    current: RwLock<Option<Arc<RevocationList>>>,
    on_stale: OnStale,
    grace: Duration,
    live: Mutex<LiveConnections>,
    next_id: AtomicU64,
    closed: prometheus::IntCounter,
    updates: prometheus::IntCounterVec,
}

impl RevocationCache {
    /// An empty cache (nothing revoked, no CRL held), counting in `metrics` the connections it
    /// cuts and the CRLs offered to it.
    pub fn new(on_stale: OnStale, grace: Duration, metrics: &Metrics) -> Arc<Self> {
        Arc::new(RevocationCache {
            revocation: Revocation::new(Default::default()),
            current: RwLock::new(None),
            on_stale,
            grace,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed: metrics.revoked_closed.clone(),
            updates: metrics.crl_updates.clone(),
        })
    }

    /// The handle the TLS verifiers consult.
    pub fn revocation(&self) -> Arc<Revocation> {
        self.revocation.clone()
    }

    /// The CRL in force, if any.
    pub fn current(&self) -> Option<Arc<RevocationList>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The number of the CRL in force (0 if none).
    pub(crate) fn number(&self) -> u64 {
        self.current().map(|c| c.number()).unwrap_or(0)
    }

    /// Offers `crl` (already signature-checked by the caller) to the cache: installed if
    /// [`judge`] accepts it, else refused with the reason, and counted either way. A refusal
    /// keeps the list in force; the caller logs it with its context (file, CA).
    pub fn install(&self, crl: RevocationList) -> Result<Installed, InstallError> {
        let now = OffsetDateTime::now_utc();
        // Held across the judgement and the swap, so two sources cannot interleave.
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let verdict = judge(current.as_deref(), &crl, now, self.grace);
        match verdict {
            Err(e) => {
                self.count(e.result());
                return Err(e);
            }
            Ok(Verdict::Unchanged) => return Ok(Installed::Unchanged),
            Ok(Verdict::Install) => {}
        }
        if crl.is_stale(now, self.grace) {
            tracing::warn!(
                "CRL {} installed although stale (nextUpdate {}): no fresher one is held",
                crl.number(),
                When(crl.next_update())
            );
        } else if let Some(held) = current.as_ref().filter(|h| h.number() > crl.number()) {
            tracing::warn!(
                "fresh CRL {} replaces stale CRL {} although its number is lower: the CA's \
                 numbering went back",
                crl.number(),
                held.number()
            );
        }
        let crl = Arc::new(crl);
        self.revocation.replace(crl.revoked().clone());
        *current = Some(crl.clone());
        drop(current);
        self.count(CrlUpdate::Installed);
        Ok(Installed::Replaced {
            closed: self.close_revoked(&crl),
        })
    }

    fn count(&self, result: CrlUpdate) {
        self.updates.with_label_values(&[result.as_str()]).inc();
    }

    fn close_revoked(&self, crl: &RevocationList) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (serial, conns) in live.iter() {
            if crl.revoked().contains_bytes(serial) {
                for (_, notify) in conns {
                    notify.notify_one();
                    n += 1;
                }
            }
        }
        self.closed.inc_by(n as u64);
        n
    }

    /// Whether the CRL in force is past nextUpdate + grace at `now` (no CRL at all is not
    /// stale: file mode may run without one).
    pub fn is_stale(&self, now: OffsetDateTime) -> bool {
        self.current().is_some_and(|c| c.is_stale(now, self.grace))
    }

    /// How old the CRL in force is at `now`, never negative (see [`RevocationList::age`]), if
    /// one is held.
    pub fn age(&self, now: OffsetDateTime) -> Option<time::Duration> {
        self.current().map(|c| c.age(now))
    }

    /// When the CRL goes stale (nextUpdate + grace), if one is held.
    pub(crate) fn stale_at(&self) -> Option<OffsetDateTime> {
        self.current().map(|c| c.next_update() + self.grace)
    }

    /// The configured stale policy.
    pub fn on_stale(&self) -> OnStale {
        self.on_stale
    }

    /// Whether a new handshake may proceed at `now`: false only for a stale CRL under `deny`.
    pub fn admits(&self, now: OffsetDateTime) -> bool {
        !(self.on_stale == OnStale::Deny && self.is_stale(now))
    }

    /// Whether `serial` (big-endian bytes) is revoked now. The handshake path asks the verifiers'
    /// [`Revocation`] directly; this is for tests of the cache.
    #[cfg(test)]
    fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revocation.is_revoked(serial)
    }

    /// Registers a live connection with a peer whose leaf has `serial`; the returned guard's
    /// `closed()` resolves if a later CRL revokes it. Dropping the guard unregisters.
    pub fn watch(self: &Arc<Self>, serial: &[u8]) -> LiveGuard {
        let key: Box<[u8]> = normalize(serial).into();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .push((id, notify.clone()));
        LiveGuard {
            cache: self.clone(),
            key,
            id,
            notify,
        }
    }
}

/// A registered live connection; see [`RevocationCache::watch`].
pub struct LiveGuard {
    cache: Arc<RevocationCache>,
    key: Box<[u8]>,
    id: u64,
    notify: Arc<Notify>,
}

impl LiveGuard {
    /// Resolves when the peer's certificate is revoked.
    pub async fn revoked(&self) {
        self.notify.notified().await
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut live = self.cache.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = live.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                live.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The revocation cache: the CRL in force, its freshness, and the live connections it may have to
//! cut.
//!
//! A new CRL is installed only if it is at least as new as the one held (a lower CRL number is a
//! rollback and is refused); installing swaps the serial set the TLS verifiers consult, so the
//! next handshake sees it, and closes every live connection whose peer serial it newly revokes —
//! revocation does not wait for connections to idle out.
//!
//! Staleness is explicit: past nextUpdate + grace the CRL is stale, and `on_stale_crl` decides
//! whether new handshakes are refused (`deny`, the default: fail closed) or admitted with an
//! alarm (`allow`). Lookups on the handshake path are O(1) and allocation-free.

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

/// Why a CRL was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Its number is lower than the one held: a replay of an old list.
    #[error("CRL number {offered} is older than the one in force ({held}); refusing a rollback")]
    Rollback {
        /// Number offered.
        offered: u64,
        /// Number held.
        held: u64,
    },
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
}

impl RevocationCache {
    /// An empty cache (nothing revoked, no CRL held). `closed` counts connections cut by a
    /// revocation.
    pub fn new(on_stale: OnStale, grace: Duration, closed: prometheus::IntCounter) -> Arc<Self> {
        Arc::new(RevocationCache {
            revocation: Revocation::new(Default::default()),
            current: RwLock::new(None),
            on_stale,
            grace,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed,
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

    /// Installs `crl` (already signature-checked by the caller) unless it is a rollback; returns
    /// how many live connections it closed. The same number again is accepted (a re-fetch).
    pub fn install(&self, crl: RevocationList) -> Result<usize, InstallError> {
        let held = self.number();
        if crl.number() < held {
            return Err(InstallError::Rollback {
                offered: crl.number(),
                held,
            });
        }
        let crl = Arc::new(crl);
        self.revocation.replace(crl.revoked().clone());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(crl.clone());
        Ok(self.close_revoked(&crl))
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
mod tests {
    use super::*;
    use tether_certs::crl::{build, CrlEntry};
    use tether_certs::issue::Signer;
    use tether_certs::{Serial, TrustDomain};

    struct Ca {
        inter: Signer,
    }

    fn ca() -> Ca {
        let td = TrustDomain::new("example.org").unwrap();
        let now = OffsetDateTime::now_utc();
        let (root, _) =
            tether_certs::issue::new_root(&td, Duration::from_secs(86400), now).unwrap();
        let (inter, _) = root
            .issue_intermediate(&td, Duration::from_secs(86400), now)
            .unwrap();
        Ca { inter }
    }

    fn crl(
        ca: &Ca,
        number: u64,
        revoked: &[&Serial],
        next_update_in: time::Duration,
    ) -> RevocationList {
        let now = OffsetDateTime::now_utc();
        let entries: Vec<CrlEntry> = revoked
            .iter()
            .map(|s| CrlEntry {
                serial: (*s).clone(),
                revoked_at: now,
                reason: None,
            })
            .collect();
        let this = now - time::Duration::hours(48);
        let der = build(&ca.inter, number, this, now + next_update_in, &entries).unwrap();
        RevocationList::parse_and_verify(&der, ca.inter.cert()).unwrap()
    }

    fn cache(on_stale: OnStale) -> Arc<RevocationCache> {
        let counter = prometheus::IntCounter::new("c", "c").unwrap();
        RevocationCache::new(on_stale, Duration::from_secs(60), counter)
    }

    #[test]
    fn installs_newer_lists_and_refuses_rollbacks() {
        let ca = ca();
        let s = Serial::random();
        let c = cache(OnStale::Deny);
        c.install(crl(&ca, 5, &[&s], time::Duration::hours(1)))
            .unwrap();
        assert!(c.is_revoked(s.as_bytes()));
        assert_eq!(c.number(), 5);
        // An older list that would un-revoke `s` is refused and the held one stays.
        let err = c
            .install(crl(&ca, 4, &[], time::Duration::hours(1)))
            .unwrap_err();
        assert!(err.to_string().contains("rollback"), "{err}");
        assert!(c.is_revoked(s.as_bytes()));
        assert_eq!(c.number(), 5);
        // The same number again is a harmless re-fetch; a newer one replaces.
        c.install(crl(&ca, 5, &[&s], time::Duration::hours(1)))
            .unwrap();
        c.install(crl(&ca, 6, &[], time::Duration::hours(1)))
            .unwrap();
        assert!(!c.is_revoked(s.as_bytes()));
    }

    #[tokio::test]
    async fn a_new_revocation_closes_live_connections_of_that_peer_only() {
        let ca = ca();
        let (victim, bystander) = (Serial::random(), Serial::random());
        let c = cache(OnStale::Deny);
        let v = c.watch(victim.as_bytes());
        let b = c.watch(bystander.as_bytes());
        assert_eq!(
            c.install(crl(&ca, 1, &[&victim], time::Duration::hours(1)))
                .unwrap(),
            1
        );
        tokio::time::timeout(Duration::from_secs(1), v.revoked())
            .await
            .expect("victim's connection is told");
        assert!(tokio::time::timeout(Duration::from_millis(50), b.revoked())
            .await
            .is_err());
        assert_eq!(c.closed.get(), 1);
        drop(v);
        drop(b);
        assert!(
            c.live.lock().unwrap().is_empty(),
            "guards unregister on drop"
        );
    }

    #[test]
    fn staleness_follows_the_policy() {
        let ca = ca();
        let deny = cache(OnStale::Deny);
        let allow = cache(OnStale::Allow);
        let now = OffsetDateTime::now_utc();
        assert!(deny.admits(now), "no CRL held is not stale");
        // nextUpdate 30 s ago, grace 60 s: still fresh.
        deny.install(crl(&ca, 1, &[], -time::Duration::seconds(30)))
            .unwrap();
        assert!(!deny.is_stale(now) && deny.admits(now));
        // nextUpdate 2 min ago: stale; deny refuses, allow admits.
        deny.install(crl(&ca, 2, &[], -time::Duration::minutes(2)))
            .unwrap();
        allow
            .install(crl(&ca, 2, &[], -time::Duration::minutes(2)))
            .unwrap();
        assert!(deny.is_stale(now) && !deny.admits(now));
        assert!(allow.is_stale(now) && allow.admits(now));
    }
}

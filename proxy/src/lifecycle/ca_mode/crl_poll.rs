//! The CRL poller of CA mode: long-polls for a CRL newer than ours, held at the CA until one
//! comes or until ours would go stale; while ours is stale, asks for the CA's current CRL at
//! least every [`STALE_RETRY`]. Every CRL it gets passes the revocation cache's one acceptance
//! rule, and an installed one is cached in the state directory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;

use tether_certs::{RevocationList, TrustBundle};

use crate::ca_client::CrlPoll;
use crate::identity::Credentials;
use crate::lifecycle::{rand01, Backoff, CRL_BACKOFF_BASE, CRL_WAIT, STALE_RETRY};
use crate::revocation::Installed;

use super::CaMode;

/// [`STALE_RETRY`], jittered over its upper half so a fleet that went stale together does not
/// poll its CA in step.
fn stale_retry() -> Duration {
    STALE_RETRY.mul_f64(0.5 + 0.5 * rand01())
}

impl CaMode {
    /// Polls the CA's CRL forever (see the module doc), following the CA's bundle version as it
    /// goes. A failed poll or a refused CRL keeps the CRL in force and is retried with
    /// [`Self::retry_delay`].
    pub(super) async fn crl_loop(self: Arc<Self>) {
        let fresh_backoff = || Backoff::starting_at(CRL_BACKOFF_BASE);
        let mut backoff = fresh_backoff();
        loop {
            let creds = self.store.current();
            let (bundle, version) = self.bundle();
            let stale = self.cache.is_stale(self.clock.now());
            let (after, wait) = self.crl_query(creds.is_some());
            let polled = self
                .client
                .poll_crl(&bundle, creds.as_ref(), after, wait, version)
                .await;
            let (outcome, ca_version) = match polled {
                Ok(CrlPoll::New {
                    pem,
                    bundle_version,
                }) => (
                    self.take_crl(&pem, creds.as_deref(), &bundle).await,
                    bundle_version,
                ),
                Ok(CrlPoll::NotModified { bundle_version }) => (Ok(()), bundle_version),
                Err(e) => (Err(format!("CRL poll failed: {e}")), None),
            };
            if let Some(v) = ca_version.filter(|v| *v != version) {
                self.update_bundle(v).await;
            }
            let pause = match outcome {
                Ok(()) => {
                    backoff = fresh_backoff();
                    // The CA answered while ours was stale but had nothing fresh: ask again
                    // soon, not in a tight loop.
                    (stale && self.cache.is_stale(self.clock.now())).then(stale_retry)
                }
                Err(e) => {
                    let d = self.retry_delay(&mut backoff);
                    let held = self.cache.number();
                    tracing::warn!("{e} (keeping CRL {held}, retry in {d:?})");
                    Some(d)
                }
            };
            if let Some(d) = pause {
                tokio::time::sleep(d).await;
            }
        }
    }

    /// The next poll's `after` and `wait`. Normally: newer than ours, held at the CA up to
    /// [`CRL_WAIT`] but not past the moment ours goes stale, so that moment is acted on at
    /// once. While ours is stale: `after=0`, answered at once with the CA's current CRL —
    /// waiting for one newer than ours would wait forever if the CA's numbering went back, and
    /// a fresh list from the CA is what makes us ready again. (The CA's fleet table then shows
    /// us at CRL 0 until we hold a fresh one.) Without a certificate the poll reports nothing to
    /// the fleet table, so it is kept short: the first poll that carries the new certificate then
    /// comes within a second.
    fn crl_query(&self, has_certificate: bool) -> (u64, Duration) {
        let now = self.clock.now();
        if self.cache.is_stale(now) {
            return (0, Duration::from_secs(1));
        }
        let mut wait = if has_certificate {
            CRL_WAIT
        } else {
            Duration::from_secs(1)
        };
        if let Some(at) = self.cache.stale_at() {
            // Whole seconds, rounded up, as the poll's query carries them.
            let left = (at - now).max(time::Duration::ZERO).unsigned_abs();
            let left = Duration::from_secs(left.as_secs() + 1);
            wait = wait.min(left);
        }
        (self.cache.number(), wait)
    }

    /// How long to wait after a failed poll or a refused CRL: the capped backoff (from
    /// [`CRL_BACKOFF_BASE`]), tightened so
    /// retries keep coming up to the moment the CRL in force goes stale, and at most
    /// [`STALE_RETRY`] once it is.
    fn retry_delay(&self, backoff: &mut Backoff) -> Duration {
        let now = self.clock.now();
        match self.cache.stale_at() {
            Some(_) if self.cache.is_stale(now) => stale_retry(),
            Some(at) => backoff.next(Some((at - now).unsigned_abs()), rand01()),
            None => backoff.next(None, rand01()),
        }
    }

    /// Verifies a CRL the CA sent against the bundle (and our chain's CA certificates), offers it
    /// to the revocation cache and caches it if installed. If it is refused (unverifiable, or
    /// by the acceptance rule), the CRL in force stays.
    async fn take_crl(
        &self,
        pem: &Bytes,
        creds: Option<&Credentials>,
        bundle: &TrustBundle,
    ) -> Result<(), String> {
        let known = creds.map(Credentials::intermediates).unwrap_or_default();
        let now = OffsetDateTime::now_utc();
        let crl = RevocationList::parse_and_verify_in_bundle(pem, bundle, known, now)
            .map_err(|e| format!("CRL refused: {e}"))?;
        let number = crl.number();
        match self.cache.install(crl).map_err(|e| e.to_string())? {
            Installed::Unchanged => return Ok(()),
            Installed::Replaced { closed } => {
                tracing::info!("CRL {number} installed ({closed} revoked connection(s) closed)")
            }
        }
        if let Err(e) = self.state.cache_crl(pem.to_vec()).await {
            tracing::warn!("{e}");
        }
        Ok(())
    }
}

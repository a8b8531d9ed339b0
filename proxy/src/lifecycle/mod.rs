//! The identity lifecycle: where certificates come from and how they stay fresh.
//!
//! - **CA mode** (`[ca]`): enroll once with a one-time token and a CSR (the key never leaves the
//!   sidecar), then renew over mTLS at half the lifetime ± 10 % jitter with a fresh key each time.
//!   A failed renewal keeps serving the last good certificate and retries with capped, jittered
//!   backoff that tightens as expiry nears. Everything is cached in `state_dir` (key 0600), so a
//!   restart while the CA is down starts from the cached certificate if it is still valid and not
//!   revoked by the cached CRL. The CRL is long-polled (`after=<our number>`), verified against a
//!   CA certificate the bundle vouches for, judged by the revocation cache's one acceptance rule,
//!   persisted, and swapped in; while ours is stale the CA's current CRL is asked for at least
//!   once a second, whatever its number. A new bundle version from the CA is fetched and applied
//!   without restart.
//! - **File mode** (`[identity]`): the files are watched; a complete, consistent new set is
//!   published, a broken or mismatched one keeps the old credential and logs why.
//!
//! Either way new credentials are published on the [`IdentityStore`]: new handshakes use them at
//! once, connections in flight finish on the old ones.
//!
//! Here: the renewal timing (`renew_at`, `Backoff`, `renewal_loop`) and the gauges, computed
//! at read time (`bind_gauges`). In `ca_mode`: enrollment, renewal and bundle updates, with
//! the CRL poller in `ca_mode/crl_poll`; in `state_dir`: the CA-mode cache on disk; in
//! `files`: file mode.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::identity::{Credentials, IdentityStore};
use crate::metrics::{LifecycleReading, Metrics, Outcome};
use crate::revocation::{OnStale, RevocationCache};

mod ca_mode;
mod files;
mod state_dir;
#[cfg(test)]
mod tests;

pub use ca_mode::CaMode;
pub use files::{install_first_crl, watch_files};

/// Renewal happens at half the lifetime, ± this fraction of the lifetime, so a CA outage of up
/// to half a lifetime costs nothing and a fleet issued at once does not renew at once.
pub(crate) const RENEW_JITTER: f64 = 0.1;
/// First retry delay after a failed renewal: a CA that blinked is retried at once.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay: a recovered CA is noticed within this.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// First retry delay after a failed CRL poll. A poll has already tried every CA URL, so the
/// failure is a moment when none answered (replicas restarting one after the other, a network
/// blip): ask again within a fifth of a second, so revocations keep arriving within about a
/// second, doubling from here to [`BACKOFF_CAP`] so a fleet with every CA down does not spin.
pub(crate) const CRL_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest wait between CRL polls while the CRL in force is stale (jittered over its upper
/// half): a sidecar is ready again within about this long of its CA's return, for one small
/// request a second per stale sidecar while the CA is down — and stale is already an alarm.
pub(crate) const STALE_RETRY: Duration = Duration::from_secs(1);
/// How long one CRL long-poll waits at the CA: well under the CA's longest hold, so the CA
/// answers 304 before any proxy or load balancer in between times the request out.
pub(crate) const CRL_WAIT: Duration = Duration::from_secs(30);
/// How often `[identity]` files are checked for changes: a second is quick enough for an
/// operator replacing files and cheap (four `stat` calls).
pub(crate) const FILE_POLL: Duration = Duration::from_secs(1);

/// Wall-clock time that follows tokio's clock, so time-based logic can run under paused tokio
/// time in tests while reading as real time in production.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall: OffsetDateTime,
    mono: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            wall: OffsetDateTime::now_utc(),
            mono: tokio::time::Instant::now(),
        }
    }
}

impl Clock {
    /// A clock that reads `wall` now.
    #[cfg(test)]
    pub(crate) fn starting_at(wall: OffsetDateTime) -> Self {
        Clock {
            wall,
            mono: tokio::time::Instant::now(),
        }
    }

    /// The current time.
    pub(crate) fn now(&self) -> OffsetDateTime {
        self.wall + self.mono.elapsed()
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: half-life plus
/// `jitter` × [`RENEW_JITTER`] × lifetime, with `jitter` in [-1, 1].
pub(crate) fn renew_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    jitter: f64,
) -> OffsetDateTime {
    let life = not_after - not_before;
    not_before + life / 2 + life * (RENEW_JITTER * jitter.clamp(-1.0, 1.0))
}

/// Capped exponential backoff with jitter, tightened so retries keep happening before expiry.
/// The default starts at [`BACKOFF_BASE`].
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::starting_at(BACKOFF_BASE)
    }
}

impl Backoff {
    /// A backoff whose first delay is at most `base`, doubling up to [`BACKOFF_CAP`].
    pub(crate) fn starting_at(base: Duration) -> Self {
        Backoff { base, attempt: 0 }
    }

    /// The delay before the next retry. `left` is the time until the certificate expires (if
    /// any): the delay never exceeds half of it, so attempts keep coming until the last moment.
    /// `rand01` in [0, 1) spreads retries of many sidecars ("full jitter" over the upper half).
    pub(crate) fn next(&mut self, left: Option<Duration>, rand01: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(BACKOFF_CAP);
        self.attempt = self.attempt.saturating_add(1);
        let mut d = exp.mul_f64(0.5 + 0.5 * rand01.clamp(0.0, 1.0));
        if let Some(left) = left.filter(|l| !l.is_zero()) {
            d = d.min(left / 2);
        }
        d.max(Duration::from_millis(100))
    }
}

/// Renews forever: waits for the renewal time of the current certificate (or a `rotate`
/// request), calls `refresh`, and on failure retries with [`Backoff`] while the old certificate
/// keeps serving. `validity` reads the current certificate's (notBefore, notAfter); `None` means
/// there is none yet and `refresh` is called at once (enrollment).
pub(crate) async fn renewal_loop<R, Fut>(
    validity: impl Fn() -> Option<(OffsetDateTime, OffsetDateTime)>,
    mut refresh: R,
    rotate: Arc<Notify>,
    clock: Clock,
    results: prometheus::IntCounterVec,
) where
    R: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    loop {
        if let Some((nb, na)) = validity() {
            let jitter = rand01() * 2.0 - 1.0;
            let wait = (renew_at(nb, na, jitter) - clock.now()).max(time::Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait.unsigned_abs()) => {}
                _ = rotate.notified() => tracing::info!("renewal requested (POST /rotate)"),
            }
        }
        let mut backoff = Backoff::default();
        loop {
            match refresh().await {
                Ok(()) => {
                    results.with_label_values(&[Outcome::Ok.as_str()]).inc();
                    break;
                }
                Err(e) => {
                    results.with_label_values(&[Outcome::Error.as_str()]).inc();
                    let left = validity()
                        .map(|(_, na)| (na - clock.now()).max(time::Duration::ZERO).unsigned_abs());
                    let delay = backoff.next(left, rand01());
                    tracing::warn!("certificate refresh failed (keeping the current one, retry in {delay:?}): {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = rotate.notified() => {}
                    }
                }
            }
        }
    }
}

/// A uniform random number in [0, 1) (the thread RNG is not held across awaits).
fn rand01() -> f64 {
    rand::thread_rng().gen()
}

/// Runs blocking file work on tokio's blocking pool, so a slow disk (an fsync, a stalled network
/// mount) never holds up the worker threads that carry traffic. The error says the work panicked
/// or was cancelled at shutdown.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("file work did not finish: {e}"))
}

/// Seconds of service left if nothing can be renewed from now on: the least of the leaf's
/// expiry, its CA chain's expiry and, under `on_stale_crl = "deny"`, the CRL staleness deadline.
pub fn time_until_outage(
    creds: Option<&Credentials>,
    cache: &RevocationCache,
    now: OffsetDateTime,
) -> Option<time::Duration> {
    let creds = creds?;
    let mut end = creds.not_after.min(creds.chain_not_after);
    if cache.on_stale() == OnStale::Deny {
        if let Some(stale) = cache.stale_at() {
            end = end.min(stale);
        }
    }
    Some((end - now).max(time::Duration::ZERO))
}

/// What the lifecycle gauges show at `now`: the same figures, from the same functions, that
/// `/identity` shows at that instant.
pub(crate) fn reading(
    creds: Option<&Credentials>,
    cache: &RevocationCache,
    now: OffsetDateTime,
) -> LifecycleReading {
    LifecycleReading {
        cert_expiry: creds.map_or(0, |c| c.not_after.unix_timestamp()),
        crl_number: cache.number(),
        crl_age_seconds: cache.age(now).map_or(0.0, |a| a.as_seconds_f64()),
        crl_stale: cache.is_stale(now),
        time_until_outage_seconds: time_until_outage(creds, cache, now)
            .map_or(0.0, |d| d.as_seconds_f64()),
        crl_seconds_until_stale: cache
            .stale_at()
            .map_or(f64::INFINITY, |at| (at - now).as_seconds_f64()),
    }
}

/// Makes the lifecycle gauges read `store` and `cache` whenever the registry is gathered (every
/// scrape), so they agree with `/identity` at every moment instead of lagging it by a timer.
pub fn bind_gauges(store: &IdentityStore, cache: &Arc<RevocationCache>, metrics: &Metrics) {
    let (store, cache) = (store.clone(), cache.clone());
    metrics.read_lifecycle_from(move || {
        reading(
            store.current().as_deref(),
            &cache,
            OffsetDateTime::now_utc(),
        )
    });
}

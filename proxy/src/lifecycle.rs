//! The identity lifecycle: where certificates come from and how they stay fresh.
//!
//! - **CA mode** (`[ca]`): enroll once with a one-time token and a CSR (the key never leaves the
//!   sidecar), then renew over mTLS at half the lifetime ± 10 % jitter with a fresh key each time.
//!   A failed renewal keeps serving the last good certificate and retries with capped, jittered
//!   backoff that tightens as expiry nears. Everything is cached in `state_dir` (key 0600), so a
//!   restart while the CA is down starts from the cached certificate if it is still valid and not
//!   revoked by the cached CRL. The CRL is long-polled (`after=<our number>`), verified against a
//!   CA certificate the bundle vouches for, refused if older than ours, persisted, and swapped in;
//!   a new bundle version from the CA is fetched and applied without restart.
//! - **File mode** (`[identity]`): the files are watched; a complete, consistent new set is
//!   published, a broken or mismatched one keeps the old credential and logs why.
//!
//! Either way new credentials are published on the [`IdentityStore`]: new handshakes use them at
//! once, connections in flight finish on the old ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::sync::Notify;

use tether_certs::{RevocationList, TrustBundle};

use crate::ca_client::{CaClient, CaClientError, CrlPoll};
use crate::config::{CaSettings, IdentityFiles};
use crate::identity::{read_file, Credentials, IdentityError, IdentityStore};
use crate::metrics::Metrics;
use crate::revocation::{OnStale, RevocationCache};

/// Renewal happens at half the lifetime, ± this fraction of the lifetime, so a CA outage of up
/// to half a lifetime costs nothing and a fleet issued at once does not renew at once.
pub const RENEW_JITTER: f64 = 0.1;
/// First retry delay after a failed renewal.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay: a recovered CA is noticed within this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long one CRL long-poll waits at the CA.
pub const CRL_WAIT: Duration = Duration::from_secs(30);
/// How often `[identity]` files are checked for changes.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Wall-clock time that follows tokio's clock, so time-based logic can run under paused tokio
/// time in tests while reading as real time in production.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
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
    pub fn starting_at(wall: OffsetDateTime) -> Self {
        Clock {
            wall,
            mono: tokio::time::Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        self.wall + self.mono.elapsed()
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: half-life plus
/// `jitter` × [`RENEW_JITTER`] × lifetime, with `jitter` in [-1, 1].
pub fn renew_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    jitter: f64,
) -> OffsetDateTime {
    let life = not_after - not_before;
    not_before + life / 2 + life * (RENEW_JITTER * jitter.clamp(-1.0, 1.0))
}

/// Capped exponential backoff with jitter, tightened so retries keep happening before expiry.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next retry. `left` is the time until the certificate expires (if
    /// any): the delay never exceeds half of it, so attempts keep coming until the last moment.
    /// `rand01` in [0, 1) spreads retries of many sidecars ("full jitter" over the upper half).
    pub fn next(&mut self, left: Option<Duration>, rand01: f64) -> Duration {
        let exp = BACKOFF_BASE
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
pub async fn renewal_loop<R, Fut>(
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
                    results.with_label_values(&["ok"]).inc();
                    break;
                }
                Err(e) => {
                    results.with_label_values(&["error"]).inc();
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

/// Keeps the lifecycle gauges current (once a second).
pub async fn update_gauges(store: IdentityStore, cache: Arc<RevocationCache>, metrics: Metrics) {
    loop {
        let now = OffsetDateTime::now_utc();
        let creds = store.current();
        if let Some(c) = &creds {
            metrics.cert_expiry.set(c.not_after.unix_timestamp());
        }
        if let Some(crl) = cache.current() {
            metrics.crl_number.set(crl.number() as i64);
            metrics
                .crl_age
                .set((now - crl.this_update()).as_seconds_f64());
        }
        metrics.crl_stale.set(i64::from(cache.is_stale(now)));
        let outage = time_until_outage(creds.as_deref(), &cache, now)
            .map(|d| d.as_seconds_f64())
            .unwrap_or(0.0);
        metrics.time_until_outage.set(outage);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Watches `[identity]` files and publishes a new credential when a consistent set appears.
pub async fn watch_files(
    files: IdentityFiles,
    store: IdentityStore,
    cache: Arc<RevocationCache>,
    metrics: Metrics,
) {
    let stamp = |files: &IdentityFiles| -> Vec<Option<(SystemTime, u64)>> {
        [
            Some(&files.cert),
            Some(&files.key),
            Some(&files.bundle),
            files.crl.as_ref(),
        ]
        .into_iter()
        .map(|p| {
            p.and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
    };
    let mut last = stamp(&files);
    loop {
        tokio::time::sleep(FILE_POLL).await;
        let now = stamp(&files);
        if now == last {
            continue;
        }
        last = now;
        match Credentials::load_files(&files, cache.revocation()) {
            Ok((creds, crl)) => {
                if let Some(crl) = crl {
                    if let Err(e) = cache.install(crl) {
                        metrics.cert_refresh.with_label_values(&["error"]).inc();
                        tracing::warn!(
                            "new CRL file refused, keeping the old credential and CRL: {e}"
                        );
                        continue;
                    }
                }
                tracing::info!(
                    "reloaded certificate {} (serial {}) from files",
                    creds.id,
                    creds.serial
                );
                metrics.cert_refresh.with_label_values(&["ok"]).inc();
                store.publish(creds);
            }
            Err(e) => {
                metrics.cert_refresh.with_label_values(&["error"]).inc();
                tracing::warn!(
                    "certificate files changed but are unusable, keeping the old credential: {e}"
                );
            }
        }
    }
}

/// Verifies a CRL body (PEM: the CRL, optionally followed by the CA certificate that signed it)
/// against every CA certificate the bundle vouches for: the ones in the body and `known`.
pub fn verify_crl(
    body: &[u8],
    bundle: &TrustBundle,
    known: &[CertificateDer<'static>],
    now: OffsetDateTime,
) -> Result<RevocationList, String> {
    let mut candidates = tether_certs::pem::certificates(body).unwrap_or_default();
    candidates.extend(known.iter().cloned());
    let mut last = "no CA certificate the trust bundle vouches for signed it".to_string();
    for issuer in candidates.iter().filter(|c| bundle.vouches_for(c, now)) {
        match RevocationList::parse_and_verify(body, issuer) {
            Ok(crl) => return Ok(crl),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("CRL refused: {last}"))
}

/// The CA-mode state of one sidecar.
pub struct CaMode {
    settings: CaSettings,
    client: Arc<CaClient>,
    store: IdentityStore,
    cache: Arc<RevocationCache>,
    metrics: Metrics,
    bundle: Mutex<(TrustBundle, u64)>,
    clock: Clock,
}

impl CaMode {
    /// Loads the trust bundle (cached, else configured) and, if present and still good, the
    /// cached certificate and CRL, publishing them so the sidecar serves at once — even with the
    /// CA down.
    pub fn start(
        settings: CaSettings,
        store: IdentityStore,
        cache: Arc<RevocationCache>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, IdentityError> {
        crate::fsutil::create_private_dir(&settings.state_dir).map_err(|e| {
            IdentityError::Invalid(settings.state_dir.display().to_string(), e.to_string())
        })?;
        let dir = &settings.state_dir;
        let cached_bundle = dir.join("bundle.pem");
        let (bundle_path, version) = if cached_bundle.exists() {
            let v = std::fs::read_to_string(dir.join("bundle.version"))
                .ok()
                .and_then(|v| v.trim().parse().ok());
            (cached_bundle, v.unwrap_or(0))
        } else {
            (settings.bundle.clone(), 0)
        };
        let bundle = TrustBundle::from_pem(&read_file(&bundle_path)?).map_err(|e| {
            IdentityError::Invalid(bundle_path.display().to_string(), e.to_string())
        })?;
        let mode = Arc::new(CaMode {
            client: CaClient::new(settings.urls.clone()),
            settings,
            store,
            cache,
            metrics,
            bundle: Mutex::new((bundle, version)),
            clock: Clock::default(),
        });
        mode.load_cache();
        Ok(mode)
    }

    fn dir(&self) -> &Path {
        &self.settings.state_dir
    }

    fn bundle(&self) -> (TrustBundle, u64) {
        self.bundle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Restores the cached certificate and CRL, if usable.
    fn load_cache(&self) {
        let (bundle, _) = self.bundle();
        let (Ok(chain_pem), Ok(key_pem)) = (
            std::fs::read(self.dir().join("chain.pem")),
            std::fs::read(self.dir().join("key.pem")),
        ) else {
            return tracing::info!(
                "no cached certificate in {}; enrolling",
                self.dir().display()
            );
        };
        let (Ok(chain), Ok(key)) = (
            tether_certs::pem::certificates(&chain_pem),
            tether_certs::pem::private_key(&key_pem),
        ) else {
            return tracing::warn!(
                "cached certificate in {} is unreadable; enrolling",
                self.dir().display()
            );
        };
        if let Ok(body) = std::fs::read(self.dir().join("crl.pem")) {
            match verify_crl(&body, &bundle, &chain[1..], OffsetDateTime::now_utc()) {
                Ok(crl) => {
                    let _ = self.cache.install(crl);
                }
                Err(e) => tracing::warn!("cached CRL ignored: {e}"),
            }
        }
        match Credentials::build(chain, key, bundle, self.cache.revocation()) {
            Ok(creds) => {
                tracing::info!(
                    "serving cached certificate {} (serial {}) until renewal",
                    creds.id,
                    creds.serial
                );
                self.metrics
                    .cert_refresh
                    .with_label_values(&["cache"])
                    .inc();
                self.store.publish(creds);
            }
            Err((_, e)) => tracing::warn!("cached certificate not usable ({e}); enrolling"),
        }
    }

    /// Runs renewal and the CRL poller forever.
    pub async fn run(self: Arc<Self>, rotate: Arc<Notify>) {
        let poller = tokio::spawn(self.clone().crl_loop());
        let me = self.clone();
        let store = self.store.clone();
        renewal_loop(
            move || store.current().map(|c| (c.not_before, c.not_after)),
            move || {
                let me = me.clone();
                async move { me.refresh().await }
            },
            rotate,
            self.clock,
            self.metrics.cert_refresh.clone(),
        )
        .await;
        poller.abort();
    }

    fn token(&self) -> Option<String> {
        if let Some(t) = &self.settings.token {
            return Some(t.trim().to_string());
        }
        let path = self.settings.token_file.as_ref()?;
        std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// Renews with the current certificate, or enrolls with the token when there is no usable
    /// certificate (none yet, expired, or refused by the CA).
    async fn refresh(&self) -> Result<(), String> {
        let key = tether_certs::keys::generate_key().map_err(|e| e.to_string())?;
        let current = self
            .store
            .current()
            .filter(|c| c.is_valid_at(self.clock.now()));
        let issued = match &current {
            Some(creds) => {
                let csr =
                    tether_certs::keys::generate_csr(&key, &creds.id).map_err(|e| e.to_string())?;
                match self.client.renew(creds, &csr).await {
                    Ok(i) => i,
                    Err(CaClientError::Refused { status, message })
                        if status.as_u16() == 403 && self.token().is_some() =>
                    {
                        tracing::warn!("renewal refused ({message}); trying the enrollment token");
                        self.enroll(&key).await?
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            None => self.enroll(&key).await?,
        };
        if let Some(note) = &issued.note {
            tracing::info!("CA: {note}");
        }
        self.adopt(issued, key)
    }

    async fn enroll(&self, key: &rcgen::KeyPair) -> Result<crate::ca_client::Issued, String> {
        let token = self.token().ok_or_else(|| {
            "no usable certificate and no enrollment token (set ca.token_file or TETHER_PROXY_TOKEN)".to_string()
        })?;
        let csr = tether_certs::keys::generate_anonymous_csr(key).map_err(|e| e.to_string())?;
        let (bundle, _) = self.bundle();
        self.client
            .enroll(&bundle, &token, &csr)
            .await
            .map_err(|e| e.to_string())
    }

    /// Builds, persists and publishes a freshly issued certificate.
    fn adopt(&self, issued: crate::ca_client::Issued, key: rcgen::KeyPair) -> Result<(), String> {
        let chain =
            tether_certs::pem::certificates(issued.chain.as_bytes()).map_err(|e| e.to_string())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let (mut bundle, version) = self.bundle();
        // The CA's bundle came over a TLS connection verified with our current one.
        if let Ok(b) = TrustBundle::from_pem(issued.bundle.as_bytes()) {
            if b.to_pem() != bundle.to_pem() {
                bundle = b;
                *self.bundle.lock().unwrap_or_else(|p| p.into_inner()) = (bundle.clone(), version);
                let _ = crate::fsutil::write_atomic(
                    &self.dir().join("bundle.pem"),
                    bundle.to_pem().as_bytes(),
                    0o644,
                );
            }
        }
        let creds = Credentials::build(chain, key_der, bundle, self.cache.revocation())
            .map_err(|(_, e)| format!("the CA issued an unusable certificate: {e}"))?;
        // Key first, then the chain: a crash in between leaves a key that matches no chain and
        // the cache is simply not used at the next start (re-enroll or renew).
        crate::fsutil::write_atomic(
            &self.dir().join("key.pem"),
            key.serialize_pem().as_bytes(),
            0o600,
        )
        .map_err(|e| format!("caching key: {e}"))?;
        crate::fsutil::write_atomic(
            &self.dir().join("chain.pem"),
            issued.chain.as_bytes(),
            0o644,
        )
        .map_err(|e| format!("caching certificate: {e}"))?;
        tracing::info!(
            "new certificate {} serial {} valid until {}",
            creds.id,
            creds.serial,
            creds.not_after
        );
        self.metrics
            .cert_expiry
            .set(creds.not_after.unix_timestamp());
        self.store.publish(creds);
        Ok(())
    }

    /// Long-polls the CA's CRL forever.
    async fn crl_loop(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            let creds = self.store.current();
            let (bundle, version) = self.bundle();
            let after = self.cache.number();
            let polled = self
                .client
                .poll_crl(&bundle, creds.as_deref(), after, CRL_WAIT, version)
                .await;
            let ca_version = match polled {
                Ok(CrlPoll::New {
                    pem,
                    bundle_version,
                }) => {
                    let known = creds
                        .as_deref()
                        .map(|c| c.intermediates().to_vec())
                        .unwrap_or_default();
                    match verify_crl(&pem, &bundle, &known, OffsetDateTime::now_utc()) {
                        Ok(crl) => {
                            let number = crl.number();
                            match self.cache.install(crl) {
                                Ok(closed) => {
                                    backoff = Backoff::default();
                                    tracing::info!("CRL {number} installed ({closed} revoked connection(s) closed)");
                                    if let Err(e) = crate::fsutil::write_atomic(
                                        &self.dir().join("crl.pem"),
                                        &pem,
                                        0o644,
                                    ) {
                                        tracing::warn!("caching the CRL: {e}");
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!("{e}");
                                    tokio::time::sleep(backoff.next(None, rand01())).await;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!("{e}; keeping CRL {after}");
                            tokio::time::sleep(backoff.next(None, rand01())).await;
                        }
                    }
                    bundle_version
                }
                Ok(CrlPoll::NotModified { bundle_version }) => {
                    backoff = Backoff::default();
                    bundle_version
                }
                Err(e) => {
                    let d = backoff.next(None, rand01());
                    tracing::warn!("CRL poll failed (keeping CRL {after}, retry in {d:?}): {e}");
                    tokio::time::sleep(d).await;
                    None
                }
            };
            if let Some(v) = ca_version.filter(|v| *v != version) {
                self.update_bundle(v).await;
            }
        }
    }

    /// Fetches the CA's bundle and applies it to new handshakes.
    async fn update_bundle(&self, announced: u64) {
        let (bundle, _) = self.bundle();
        let fetched = match self.client.bundle(&bundle).await {
            Ok((pem, v)) => TrustBundle::from_pem(&pem).map(|b| (b, v.unwrap_or(announced))),
            Err(e) => return tracing::warn!("fetching the new trust bundle: {e}"),
        };
        let (new, version) = match fetched {
            Ok(x) => x,
            Err(e) => {
                return tracing::warn!("the CA's trust bundle is unusable, keeping ours: {e}")
            }
        };
        if let Some(creds) = self.store.current() {
            match creds.with_bundle(new.clone(), self.cache.revocation()) {
                Ok(c) => self.store.publish(c),
                Err(e) => {
                    return tracing::warn!(
                        "new trust bundle would not verify our own certificate, keeping ours: {e}"
                    )
                }
            }
        }
        tracing::info!(
            "trust bundle version {version} applied ({} root(s))",
            new.len()
        );
        let _ = crate::fsutil::write_atomic(
            &self.dir().join("bundle.pem"),
            new.to_pem().as_bytes(),
            0o644,
        );
        let _ = crate::fsutil::write_atomic(
            &self.dir().join("bundle.version"),
            version.to_string().as_bytes(),
            0o644,
        );
        *self.bundle.lock().unwrap_or_else(|p| p.into_inner()) = (new, version);
    }
}

/// The state directory's path for `name` (for tests and `/identity`).
pub fn state_file(settings: &CaSettings, name: &str) -> PathBuf {
    settings.state_dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn renewal_is_at_half_life_within_ten_percent() {
        let (nb, na) = (t0(), t0() + time::Duration::hours(1));
        assert_eq!(renew_at(nb, na, 0.0), t0() + time::Duration::minutes(30));
        assert_eq!(renew_at(nb, na, -1.0), t0() + time::Duration::minutes(24));
        assert_eq!(renew_at(nb, na, 1.0), t0() + time::Duration::minutes(36));
        // Out-of-range jitter is clamped, never pushing renewal past the window.
        assert_eq!(renew_at(nb, na, 7.0), t0() + time::Duration::minutes(36));
    }

    #[test]
    fn backoff_grows_is_capped_and_tightens_near_expiry() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next(None, 0.999)).collect();
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert!(delays[0] <= Duration::from_secs(1));
        assert!(delays.iter().all(|d| *d <= BACKOFF_CAP));
        assert!(
            delays[9] > Duration::from_secs(29),
            "reaches the cap: {delays:?}"
        );
        // With 10 s left, never wait more than 5 s; with nothing left, still a small positive delay.
        assert!(b.next(Some(Duration::from_secs(10)), 0.999) <= Duration::from_secs(5));
        assert_eq!(
            b.next(Some(Duration::from_millis(1)), 0.5),
            Duration::from_millis(100)
        );
        // Jitter spreads retries over the upper half of the window.
        let mut lo = Backoff::default();
        let mut hi = Backoff::default();
        assert!(lo.next(None, 0.0) < hi.next(None, 0.999));
    }

    /// A certificate holder for the loop under test: validity, and the times `refresh` ran.
    struct Fake {
        validity: StdMutex<Option<(OffsetDateTime, OffsetDateTime)>>,
        attempts: StdMutex<Vec<OffsetDateTime>>,
        fail_first: usize,
    }

    fn spawn_loop(
        fake: Arc<Fake>,
        clock: Clock,
        rotate: Arc<Notify>,
    ) -> (tokio::task::JoinHandle<()>, prometheus::IntCounterVec) {
        let results =
            prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["result"]).unwrap();
        let r = results.clone();
        let f1 = fake.clone();
        let task = tokio::spawn(async move {
            renewal_loop(
                move || *f1.validity.lock().unwrap(),
                move || {
                    let fake = fake.clone();
                    async move {
                        let now = clock.now();
                        let n = {
                            let mut a = fake.attempts.lock().unwrap();
                            a.push(now);
                            a.len()
                        };
                        if n <= fake.fail_first {
                            return Err("CA down".to_string());
                        }
                        // A fresh one-hour certificate: keep-last-good is replaced only on success.
                        *fake.validity.lock().unwrap() =
                            Some((now, now + time::Duration::hours(1)));
                        Ok(())
                    }
                },
                rotate,
                clock,
                r,
            )
            .await
        });
        (task, results)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_life_then_again_for_the_new_certificate() {
        let clock = Clock::starting_at(t0());
        let fake = Arc::new(Fake {
            validity: StdMutex::new(Some((t0(), t0() + time::Duration::hours(1)))),
            attempts: StdMutex::new(Vec::new()),
            fail_first: 0,
        });
        let (task, results) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        task.abort();
        let attempts = fake.attempts.lock().unwrap().clone();
        assert!(attempts.len() >= 2, "{attempts:?}");
        let first = attempts[0] - t0();
        assert!(
            first >= time::Duration::minutes(24) && first <= time::Duration::minutes(36),
            "{first}"
        );
        let second = attempts[1] - attempts[0];
        assert!(
            second >= time::Duration::minutes(24) && second <= time::Duration::minutes(36),
            "{second}"
        );
        assert_eq!(
            results.with_label_values(&["ok"]).get(),
            attempts.len() as u64
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_back_off_and_keep_the_last_good_certificate() {
        let clock = Clock::starting_at(t0());
        let first_cert = (t0(), t0() + time::Duration::hours(1));
        let fake = Arc::new(Fake {
            validity: StdMutex::new(Some(first_cert)),
            attempts: StdMutex::new(Vec::new()),
            fail_first: 5,
        });
        let (task, results) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
        tokio::time::sleep(Duration::from_secs(40 * 60)).await;
        task.abort();
        let attempts = fake.attempts.lock().unwrap().clone();
        assert!(attempts.len() >= 6, "{attempts:?}");
        let gaps: Vec<time::Duration> = attempts.windows(2).take(5).map(|w| w[1] - w[0]).collect();
        // 5 failures: each gap within [half, full] of 1, 2, 4, 8, 16 s.
        for (i, g) in gaps.iter().enumerate() {
            let full = time::Duration::seconds(1 << i);
            assert!(
                *g >= full / 2 - time::Duration::milliseconds(1) && *g <= full,
                "gap {i}: {g} ({gaps:?})"
            );
        }
        assert_eq!(results.with_label_values(&["error"]).get(), 5);
        assert_eq!(results.with_label_values(&["ok"]).get(), 1);
        // The sixth attempt succeeded and replaced the certificate; until then the first one stayed.
        let now_validity = fake.validity.lock().unwrap().unwrap();
        assert_eq!(now_validity.0, attempts[5]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_keep_coming_until_expiry_and_never_extend_it() {
        let clock = Clock::starting_at(t0());
        let expiry = t0() + time::Duration::hours(1);
        let fake = Arc::new(Fake {
            validity: StdMutex::new(Some((t0(), expiry))),
            attempts: StdMutex::new(Vec::new()),
            fail_first: usize::MAX,
        });
        let (task, _) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
        tokio::time::sleep(Duration::from_secs(3600 + 120)).await;
        task.abort();
        let attempts = fake.attempts.lock().unwrap().clone();
        assert_eq!(
            fake.validity.lock().unwrap().unwrap().1,
            expiry,
            "a failed renewal never changes the certificate"
        );
        let before: Vec<_> = attempts.iter().filter(|t| **t < expiry).collect();
        // Once past the 30 s cap, the gap never exceeds half of the time left, so the last attempt
        // before expiry is within a second of it.
        let last = **before.last().unwrap();
        assert!(
            expiry - last <= time::Duration::seconds(1),
            "last attempt {} before expiry",
            expiry - last
        );
        for w in before.windows(2) {
            let (a, b): (OffsetDateTime, OffsetDateTime) = (*w[0], *w[1]);
            let bound = ((expiry - a) / 2_i32).max(time::Duration::milliseconds(100));
            assert!(
                b - a <= bound + time::Duration::milliseconds(1),
                "gap {} > {bound}",
                b - a
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rotate_renews_now() {
        let clock = Clock::starting_at(t0());
        let fake = Arc::new(Fake {
            validity: StdMutex::new(Some((t0(), t0() + time::Duration::hours(1)))),
            attempts: StdMutex::new(Vec::new()),
            fail_first: 0,
        });
        let rotate = Arc::new(Notify::new());
        let (task, _) = spawn_loop(fake.clone(), clock, rotate.clone());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(fake.attempts.lock().unwrap().is_empty());
        rotate.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        task.abort();
        let attempts = fake.attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), 1);
        assert!(attempts[0] - t0() < time::Duration::seconds(61));
    }

    #[tokio::test(start_paused = true)]
    async fn enrolls_at_once_without_a_certificate() {
        let clock = Clock::starting_at(t0());
        let fake = Arc::new(Fake {
            validity: StdMutex::new(None),
            attempts: StdMutex::new(Vec::new()),
            fail_first: 2,
        });
        let (task, _) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        task.abort();
        let attempts = fake.attempts.lock().unwrap().clone();
        assert_eq!(attempts[0], t0(), "first enrollment attempt is immediate");
        assert_eq!(
            attempts.len(),
            3,
            "two failures with backoff, then enrolled: {attempts:?}"
        );
    }
}

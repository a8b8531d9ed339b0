//! CA mode: enrollment with a one-time token, renewal over mTLS, the state-directory cache, the
//! CRL long-poll and trust-bundle updates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::sync::Notify;

use tether_certs::{RevocationList, TrustBundle};

use crate::ca_client::{CaClient, CaClientError, CrlPoll};
use crate::config::CaSettings;
use crate::identity::{read_file, Credentials, IdentityError, IdentityStore};
use crate::metrics::Metrics;
use crate::revocation::RevocationCache;

use super::{rand01, renewal_loop, Backoff, Clock, CRL_WAIT};

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

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

    /// Runs renewal and the CRL poller until this future is dropped (the sidecar stops), which
    /// also stops the poller: a stopped sidecar must not keep acknowledging CRLs to the fleet.
    pub async fn run(self: Arc<Self>, rotate: Arc<Notify>) {
        let _poller = AbortOnDrop(tokio::spawn(self.clone().crl_loop()));
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
            // Without a certificate the poll reports nothing to the fleet table, so keep it short:
            // the first poll that carries the new certificate then comes within a second.
            let wait = if creds.is_some() {
                CRL_WAIT
            } else {
                Duration::from_secs(1)
            };
            let polled = self
                .client
                .poll_crl(&bundle, creds.as_deref(), after, wait, version)
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

//! CA mode: enrollment with a one-time token, renewal over mTLS, the state-directory cache, the
//! CRL long-poll and trust-bundle updates.
//!
//! Apart from reading the cache once at start (see [`StateDir`]), file work — the token file,
//! caching what the CA sent — runs on tokio's blocking pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::sync::Notify;

use tether_certs::wire::Issued;
use tether_certs::{RevocationList, TrustBundle};

use crate::ca_client::{CaClient, CaClientError, CrlPoll};
use crate::config::CaSettings;
use crate::identity::{read_file, Credentials, IdentityError, IdentityStore};
use crate::metrics::{Metrics, Outcome};
use crate::revocation::RevocationCache;

use super::state_dir::StateDir;
use super::{off_runtime, rand01, renewal_loop, Backoff, Clock, CRL_WAIT};

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
    state: StateDir,
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
    /// CA down. An unusable cache is logged and skipped (the sidecar enrolls); an unusable
    /// state directory or trust bundle is an error.
    pub fn start(
        settings: CaSettings,
        store: IdentityStore,
        cache: Arc<RevocationCache>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, IdentityError> {
        let state = StateDir::open(&settings.state_dir)?;
        let (bundle_path, version) = state
            .cached_bundle()
            .unwrap_or_else(|| (settings.bundle.clone(), 0));
        let bundle = TrustBundle::from_pem(&read_file(&bundle_path)?).map_err(|e| {
            IdentityError::Invalid(bundle_path.display().to_string(), e.to_string())
        })?;
        let mode = Arc::new(CaMode {
            client: CaClient::new(settings.urls.clone()),
            settings,
            state,
            store,
            cache,
            metrics,
            bundle: Mutex::new((bundle, version)),
            clock: Clock::default(),
        });
        mode.load_cache();
        Ok(mode)
    }

    fn bundle(&self) -> (TrustBundle, u64) {
        self.bundle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_bundle(&self, bundle: TrustBundle, version: u64) {
        *self.bundle.lock().unwrap_or_else(|p| p.into_inner()) = (bundle, version);
    }

    /// Restores the cached certificate and CRL, if usable.
    fn load_cache(&self) {
        let (bundle, _) = self.bundle();
        let dir = self.state.path().display();
        let Some((chain_pem, key_pem)) = self.state.cached_credential() else {
            return tracing::info!("no cached certificate in {dir}; enrolling");
        };
        let (Ok(chain), Ok(key)) = (
            tether_certs::pem::certificates(&chain_pem),
            tether_certs::pem::private_key(&key_pem),
        ) else {
            return tracing::warn!("cached certificate in {dir} is unreadable; enrolling");
        };
        if let Some(body) = self.state.cached_crl() {
            let known = chain.get(1..).unwrap_or_default();
            let now = OffsetDateTime::now_utc();
            match RevocationList::parse_and_verify_in_bundle(&body, &bundle, known, now) {
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
                self.metrics.count_cert_refresh(Outcome::Cache);
                self.store.publish(creds);
            }
            Err(e) => tracing::warn!("cached certificate not usable ({e}); enrolling"),
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

    /// The enrollment token: the configured one, else the token file's content (read at each
    /// attempt, so an operator can drop a new token in place), if it is not empty.
    async fn token(&self) -> Option<String> {
        if let Some(t) = &self.settings.token {
            return Some(t.trim().to_string());
        }
        let path = self.settings.token_file.clone()?;
        off_runtime(move || std::fs::read_to_string(path))
            .await
            .ok()?
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// Renews with the current certificate, or enrolls with the token when there is no usable
    /// certificate (none yet, expired, or refused by the CA). On failure nothing changes: the
    /// current certificate keeps serving.
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
                    Err(e @ CaClientError::Refused { .. }) if e.is_forbidden() => {
                        let Some(token) = self.token().await else {
                            return Err(e.to_string());
                        };
                        tracing::warn!("renewal refused ({e}); trying the enrollment token");
                        self.enroll(&key, &token).await?
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            None => {
                let token = self.token().await.ok_or_else(|| {
                    "no usable certificate and no enrollment token (set ca.token_file or TETHER_PROXY_TOKEN)".to_string()
                })?;
                self.enroll(&key, &token).await?
            }
        };
        if let Some(note) = &issued.note {
            tracing::info!("CA: {note}");
        }
        self.adopt(issued, key).await
    }

    async fn enroll(&self, key: &rcgen::KeyPair, token: &str) -> Result<Issued, String> {
        let csr = tether_certs::keys::generate_anonymous_csr(key).map_err(|e| e.to_string())?;
        let (bundle, _) = self.bundle();
        self.client
            .enroll(&bundle, token, &csr)
            .await
            .map_err(|e| e.to_string())
    }

    /// Builds, persists and publishes a freshly issued certificate. If the CA's certificate is
    /// unusable or cannot be cached, the current one keeps serving.
    async fn adopt(&self, issued: Issued, key: rcgen::KeyPair) -> Result<(), String> {
        let chain =
            tether_certs::pem::certificates(issued.chain.as_bytes()).map_err(|e| e.to_string())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let (mut bundle, version) = self.bundle();
        // The CA's bundle came over a TLS connection verified with our current one.
        if let Ok(b) = TrustBundle::from_pem(issued.bundle.as_bytes()) {
            if b.to_pem() != bundle.to_pem() {
                bundle = b;
                self.set_bundle(bundle.clone(), version);
                let pem = bundle.to_pem().into_bytes();
                if let Err(e) = self.state.cache_bundle(pem, None).await {
                    tracing::warn!("{e}");
                }
            }
        }
        let creds = Credentials::build(chain, key_der, bundle, self.cache.revocation())
            .map_err(|e| format!("the CA issued an unusable certificate: {e}"))?;
        self.state
            .cache_credential(key.serialize_pem().into_bytes(), issued.chain.into_bytes())
            .await?;
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

    /// Long-polls the CA's CRL forever, following the CA's bundle version as it goes.
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
                    match self.take_crl(&pem, creds.as_deref(), &bundle).await {
                        Ok(()) => backoff = Backoff::default(),
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

    /// Verifies a CRL the CA sent against the bundle (and our chain's CA certificates), installs
    /// it and caches it. If it is refused (unverifiable or a rollback), the CRL in force stays.
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
        let closed = self.cache.install(crl).map_err(|e| e.to_string())?;
        tracing::info!("CRL {number} installed ({closed} revoked connection(s) closed)");
        if let Err(e) = self.state.cache_crl(pem.to_vec()).await {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Fetches the CA's bundle and applies it to new handshakes. If it cannot be fetched, does
    /// not parse, or would not verify our own certificate, ours is kept.
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
        let cached = self
            .state
            .cache_bundle(new.to_pem().into_bytes(), Some(version))
            .await;
        if let Err(e) = cached {
            tracing::warn!("{e}");
        }
        self.set_bundle(new, version);
    }
}

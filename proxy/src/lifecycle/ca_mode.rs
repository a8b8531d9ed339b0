//! CA mode: enrollment with a one-time or a Kubernetes service-account token, renewal over
//! mTLS, the state-directory cache, the CRL long-poll and trust-bundle updates.
//!
//! The CRL poller asks for a CRL newer than ours, held at the CA until one comes or until ours
//! would go stale, whichever is first. While ours is stale it asks for the CA's current CRL,
//! whatever its number, at least every [`STALE_RETRY`], so a sidecar is ready again within about
//! a second of its CA's return however long the outage was; every CRL it gets passes the
//! revocation cache's one acceptance rule.
//!
//! Apart from reading the cache once at start (see [`StateDir`]), file work — the token files,
//! caching what the CA sent — runs on tokio's blocking pool.

use std::sync::{Arc, Mutex};

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::sync::Notify;

use tether_certs::wire::{EnrollCredential, Issued};
use tether_certs::{RevocationList, TrustBundle};

use crate::ca_client::{CaClient, CaClientError};
use crate::config::{CaSettings, Enrollment};
use crate::identity::{read_file, Credentials, IdentityError, IdentityStore};
use crate::metrics::{Metrics, Outcome};
use crate::revocation::RevocationCache;

use super::state_dir::StateDir;
use super::{off_runtime, renewal_loop, Clock};

mod crl_poll;

/// Why a sidecar without a usable certificate cannot enroll, when nothing is configured.
const NO_CREDENTIAL: &str = "no usable certificate and no enrollment token (set ca.token_file, \
                             ca.k8s_token_file or TETHER_PROXY_TOKEN)";

/// An enrollment credential as read for one attempt. A secret: its Display names only its kind,
/// and it has no Debug, so it cannot end up in a log line.
enum Credential {
    /// A Kubernetes service-account token.
    K8s(String),
    /// A one-time token from `tether-ca enroll`.
    Token(String),
}

impl Credential {
    /// As the wire contract sends it.
    fn wire(&self) -> EnrollCredential<'_> {
        match self {
            Credential::K8s(t) => EnrollCredential::K8s(t),
            Credential::Token(t) => EnrollCredential::Token(t),
        }
    }
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::K8s(_) => "Kubernetes service-account token",
            Credential::Token(_) => "one-time enrollment token",
        })
    }
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
            client: CaClient::new(&settings.urls, metrics.ca_failovers.clone()),
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

    /// The CA client, shared with `/identity` (which shows the CA URL in use).
    pub(crate) fn client(&self) -> Arc<CaClient> {
        self.client.clone()
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
            let installed = RevocationList::parse_and_verify_in_bundle(&body, &bundle, known, now)
                .map_err(|e| e.to_string())
                .and_then(|crl| self.cache.install(crl).map_err(|e| e.to_string()));
            if let Err(e) = installed {
                tracing::warn!("cached CRL in {dir} ignored: {e}");
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

    /// The credential for this enrollment attempt: the configured token, else the token file's
    /// content, read now so that a file replaced in place (an operator's new token, the
    /// kubelet's rotated service-account token) counts at once. An error says why there is none
    /// (no credential configured, or its file missing or empty) and never quotes the file.
    async fn credential(&self) -> Result<Credential, String> {
        let Some(enrollment) = &self.settings.enrollment else {
            return Err(NO_CREDENTIAL.to_string());
        };
        let (path, key, credential): (_, _, fn(String) -> Credential) = match enrollment {
            Enrollment::Token(t) => return Ok(Credential::Token(t.trim().to_string())),
            Enrollment::TokenFile(p) => (p.clone(), "ca.token_file", Credential::Token),
            Enrollment::K8sTokenFile(p) => (p.clone(), "ca.k8s_token_file", Credential::K8s),
        };
        let shown = path.display().to_string();
        let text = off_runtime(move || std::fs::read_to_string(path))
            .await?
            .map_err(|e| format!("cannot read {key} {shown}: {e}"))?;
        match text.trim() {
            "" => Err(format!("{key} {shown} is empty")),
            token => Ok(credential(token.to_string())),
        }
    }

    /// Renews with the current certificate, or enrolls with the configured credential when there
    /// is no usable certificate (none yet, expired, or refused by the CA). On failure nothing
    /// changes: the current certificate keeps serving.
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
                        let credential = self
                            .credential()
                            .await
                            .map_err(|why| format!("{e}; {why}"))?;
                        tracing::warn!("renewal refused ({e}); enrolling with the {credential}");
                        self.enroll(&key, &credential).await?
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            None => {
                let credential = self.credential().await?;
                self.enroll(&key, &credential).await?
            }
        };
        if let Some(note) = &issued.note {
            tracing::info!("CA: {note}");
        }
        self.adopt(issued, key).await
    }

    async fn enroll(
        &self,
        key: &rcgen::KeyPair,
        credential: &Credential,
    ) -> Result<Issued, String> {
        let csr = tether_certs::keys::generate_anonymous_csr(key).map_err(|e| e.to_string())?;
        let (bundle, _) = self.bundle();
        self.client
            .enroll(&bundle, credential.wire(), &csr)
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
        self.store.publish(creds);
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

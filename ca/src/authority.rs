//! The authority: the state directory, its CA material, and every operation that issues or
//! revokes. The CLI and the HTTPS API are both thin layers over [`Authority`]. Issuance
//! (tokens, enroll, renew, issue to a directory) lives in `authority/issuance.rs`, revocation and
//! CRLs in `authority/revocation.rs`; root rotation, the fleet and `check` add their methods in
//! their own modules.
//!
//! State directory layout (private keys 0600, directories 0700):
//! ```text
//! DIR/ca.db                    SQLite: certificates, revocations, tokens, CRLs, settings,
//!                              generations (which is current, which roots are retired), fleet
//! DIR/bundle.pem               the published trust bundle: every root not retired
//! DIR/root/{cert,key}.pem      generation 1 root (can be moved offline once the intermediate exists)
//! DIR/intermediate/{cert,key}.pem   generation 1 issuing CA
//! DIR/generations/<N>/root/{cert,key}.pem           generation N ≥ 2 (one per `root rotate`)
//! DIR/generations/<N>/intermediate/{cert,key}.pem
//! DIR/generations/<N>/intermediate/cross.pem        the same intermediate certified by the
//!                                                   previous root (if its key was here)
//! DIR/generations/<N>/{server,admin}/…              the credentials re-issued by rotation N
//! DIR/server/{chain,key}.pem   TLS certificate of the CA's own API (the current generation's)
//! DIR/admin/{cert,chain,key,bundle}.pem   admin client credential (spiffe://TD/tether/admin)
//! DIR/database.url             (0600) the shared database when it is not DIR/ca.db: a
//!                              PostgreSQL URL, or `sqlite:/ABS/PATH` (see `state/database.rs`)
//! DIR/seal.key                 (0600) opens the generation keys sealed in the database (the
//!                              same in every replica; see `state/seal.rs`)
//! DIR/replica.json             this replica's id and API names (absent: replica "initial")
//! ```
//!
//! "`ca.db`" below means the database, wherever `database.url` puts it: several replicas
//! (`crate::replica`) share it, and materialize a generation's files from its sealed keys.
//!
//! A *generation* is one root + issuing intermediate pair. `init` makes generation 1 in the
//! layout that predates rotation; `root rotate` makes generation N+1 under `generations/`, and
//! from then on it signs every leaf and CRL. `ca.db` is the source of truth: `meta.generation`
//! names the current pair, the `generations` table records each pair (fingerprints, expiry, the
//! bundle version that added its root, whether it is retired), and every certificate and CRL
//! row records the generation that signed it (rows from before rotation default to 1).
//! `bundle.pem`, `server/` and `admin/` are published copies of what `ca.db` says is current.
//!
//! While the root that was current before a rotation is still in the bundle, every chain the CA
//! hands out (leaves, its own TLS certificate, the admin credential, the certificates after a CRL)
//! ends with the new intermediate's cross-certificate from that root, so a peer or sidecar that
//! has not fetched the new bundle yet still accepts them; retiring that root drops it.
//!
//! A running server notices a rotation or retirement made by the CLI (it polls
//! `meta.bundle_version`) and calls [`Authority::reload`]; until then any write it attempts with
//! the old generation is refused by the store and retried with the reloaded one, so nothing is
//! ever signed by a superseded intermediate after the rotation committed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};

use tether_certs::svid::{LeafInfo, Usage};
use tether_certs::verify::{ExpectedPeer, VerifyError};
use tether_certs::{Serial, SpiffeId, TrustBundle, TrustDomain};

use crate::error::CaError;
use crate::replica::{self, Me};
use crate::settings::{InitOptions, Settings, ADMIN_PATH};
use crate::state::{self, generation_dir, Keys};
use crate::store::{Location, Pool, Pooled, Store, StoreError};

mod issuance;
mod revocation;

/// A loaded certificate authority.
pub struct Authority {
    dir: PathBuf,
    trust_domain: TrustDomain,
    settings: Settings,
    keys: RwLock<Arc<Keys>>,
    store: Pool,
    /// Where the database is (read once from the state dir at open).
    location: Location,
    /// Which replica this state dir is (`replica.json` is written once, by `replica add`).
    me: Me,
}

impl Authority {
    /// Creates a new CA in `dir`, which must not exist or be empty. Everything is built in a
    /// sibling temporary directory and renamed into place, so a failed init leaves nothing behind.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<(), CaError> {
        state::refuse_non_empty(dir)?;
        state::build_beside(dir, "init", |tmp| state::build_state(tmp, opts))
    }

    /// Opens the CA in `dir`, upgrading a state dir from before root rotation in place, and
    /// brings the published files (`bundle.pem`, `server/`, `admin/`) in line with `ca.db`.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let location = state::database_location(dir)?;
        if let Location::Sqlite(db) = &location {
            if !db.exists() {
                return Err(CaError::State(format!(
                    "{} is not a tether-ca state dir (no ca.db); run `tether-ca init` first",
                    dir.display()
                )));
            }
        }
        let mut store = Store::open_at(&location)?;
        let trust_domain = trust_domain(&mut store)?;
        let settings = Settings {
            default_ttl: seconds(&mut store, "default_ttl")?,
            max_ttl: seconds(&mut store, "max_ttl")?,
            crl_validity: seconds(&mut store, "crl_validity")?,
        };
        state::adopt_first_generation(dir, &mut store)?;
        let me = replica::identity(dir)?;
        // Also brings the published files in line (see `state::load_keys`).
        let keys = state::load_keys(dir, &me, &mut store)?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            trust_domain,
            settings,
            keys: RwLock::new(Arc::new(keys)),
            store: Pool::new(store, &location)?,
            location,
            me,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The replica this state dir is.
    pub(crate) fn me(&self) -> &Me {
        &self.me
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The stored settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The trust bundle this process uses (every root not retired, as of the last reload).
    pub fn bundle(&self) -> TrustBundle {
        self.keys().trust.bundle.clone()
    }

    /// The trust bundle as PEM.
    pub fn bundle_pem(&self) -> String {
        self.keys().trust.bundle_pem.clone()
    }

    /// The version of [`Authority::bundle`] (1 after init, +1 per rotate and per retire).
    pub fn bundle_version(&self) -> u64 {
        self.keys().bundle_version
    }

    /// The current generation (the one that signs).
    pub fn generation(&self) -> u64 {
        self.keys().generation
    }

    /// The CA material in use (a snapshot: a reload replaces it whole).
    pub(crate) fn keys(&self) -> Arc<Keys> {
        // Only ever replaced whole, so a poisoned lock still holds a complete value.
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The shared PostgreSQL database, if this CA uses one (`None`: SQLite).
    pub fn database_url(&self) -> Option<crate::store::DatabaseUrl> {
        match &self.location {
            Location::Sqlite(_) => None,
            Location::Postgres(url) => Some(url.clone()),
        }
    }

    /// A database connection for this thread (one of the pool's; see [`Pool`]).
    pub(crate) fn store(&self) -> Pooled<'_> {
        self.store.get()
    }

    /// The bundle version recorded in `ca.db` (which another process may have changed).
    pub fn stored_bundle_version(&self) -> Result<u64, CaError> {
        Ok(self.store().bundle_version()?)
    }

    /// Reloads the signer and bundle if `ca.db` says the bundle changed (another process rotated
    /// or retired a root); returns whether it did. If reloading fails, the old signer and bundle
    /// stay in use and the error says why — the store still refuses to record anything they sign
    /// after a rotation, so a failed reload stops issuance rather than issuing from the old pair.
    pub fn reload(&self) -> Result<bool, CaError> {
        if self.stored_bundle_version()? == self.bundle_version() {
            return Ok(false);
        }
        self.load()?;
        Ok(true)
    }

    /// Reloads the signer and bundle from `ca.db` and the state directory, unconditionally.
    pub(crate) fn load(&self) -> Result<(), CaError> {
        let keys = state::load_keys(&self.dir, &self.me, &mut self.store())?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// Runs `f` with the current keys; if the store says another process rotated meanwhile,
    /// reloads and runs it once more with the new ones.
    pub(crate) fn with_current_keys<T>(
        &self,
        mut f: impl FnMut(&Keys) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        match f(&self.keys()) {
            Err(CaError::Store(StoreError::StaleGeneration { .. })) => {
                self.load()?;
                f(&self.keys())
            }
            other => other,
        }
    }

    /// Checks a client chain presented over mTLS: chain to the bundle, X509-SVID rules, not
    /// expired, issued by this CA and not revoked (the database is authoritative, so a revocation
    /// counts even before any CRL was fetched).
    pub fn authenticate(&self, peer_chain: &[CertificateDer<'_>]) -> Result<LeafInfo, CaError> {
        let info = self.verify_chain(peer_chain)?;
        match self.store().certificate(&info.serial)? {
            None => Err(not_ours(&info.serial)),
            Some(r) if r.revoked_at.is_some() => Err(revoked(&info.serial)),
            Some(_) => Ok(info),
        }
    }

    /// Chain to the bundle, X509-SVID rules, validity period — no database lookup.
    fn verify_chain(&self, peer_chain: &[CertificateDer<'_>]) -> Result<LeafInfo, CaError> {
        let (leaf, intermediates) = peer_chain.split_first().ok_or_else(|| {
            CaError::Unauthorized("a client certificate is required (mTLS)".into())
        })?;
        self.keys()
            .verifier
            .verify(
                leaf,
                intermediates,
                Usage::Client,
                UnixTime::now(),
                &ExpectedPeer::AnyInBundle,
            )
            .map_err(|e| match e {
                VerifyError::Expired => CaError::Forbidden(
                    "client certificate has expired; enroll again with a new token".into(),
                ),
                other => CaError::Forbidden(other.to_string()),
            })
    }

    /// Whether `info` is the admin identity of this trust domain.
    pub fn is_admin(&self, id: &SpiffeId) -> bool {
        id.is_member_of(&self.trust_domain) && id.path() == ADMIN_PATH
    }

    /// Refuses an identity outside this trust domain, or one without a path.
    pub(crate) fn check_member(&self, id: &SpiffeId) -> Result<(), CaError> {
        if !id.is_member_of(&self.trust_domain) {
            return Err(CaError::BadRequest(format!(
                "{id} is not in this CA's trust domain {}",
                self.trust_domain
            )));
        }
        if id.is_trust_domain_id() {
            return Err(CaError::BadRequest(format!(
                "{id} has no path; name a workload"
            )));
        }
        Ok(())
    }

    /// The API's server credential (chain PEM, key PEM) of the current generation. The chain is
    /// the server certificate followed by the current intermediate and, while the previous root
    /// is in the bundle, the intermediate's cross-certificate from it — so a client that has not
    /// fetched the new bundle yet still trusts the API after a rotation.
    pub fn server_credential(&self) -> Result<(String, String), CaError> {
        let keys = self.keys();
        let d = generation_dir(&self.dir, keys.generation).join("server");
        let chain = state::with_tail(&state::read(&d.join("chain.pem"))?, &keys.trust.chain_tail)?;
        Ok((chain, state::read(&d.join("key.pem"))?))
    }
}

/// The refusal of a presented certificate that was revoked.
pub(crate) fn revoked(serial: &Serial) -> CaError {
    CaError::Forbidden(format!("client certificate {serial} is revoked"))
}

/// The refusal of a presented certificate this CA did not issue.
pub(crate) fn not_ours(serial: &Serial) -> CaError {
    CaError::Forbidden(format!(
        "client certificate {serial} was not issued by this CA"
    ))
}

/// A setting the database must hold.
fn setting(store: &mut Store, key: &str) -> Result<String, CaError> {
    store
        .meta(key)?
        .ok_or_else(|| CaError::State(format!("the database has no setting {key}")))
}

/// The trust domain the database records.
pub(crate) fn trust_domain(store: &mut Store) -> Result<TrustDomain, CaError> {
    TrustDomain::new(&setting(store, "trust_domain")?)
        .map_err(|e| CaError::State(format!("database trust_domain: {e}")))
}

/// A setting that is a number of seconds.
pub(crate) fn seconds(store: &mut Store, key: &str) -> Result<Duration, CaError> {
    setting(store, key)?
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| CaError::State(format!("the database setting {key} is not a number")))
}

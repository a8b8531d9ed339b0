//! The authority: the state directory, its CA material, and every operation that issues or
//! revokes. The CLI and the HTTPS API are both thin layers over [`Authority`].
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
//! ```
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
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use rand::RngCore;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use tether_certs::crl::{CrlEntry, Reason};
use tether_certs::issue::IssueError;
use tether_certs::verify::{ExpectedPeer, Revocation, SvidVerifier, VerifyError};
use tether_certs::{svid::Usage, RevocationList, Serial, SpiffeId, TrustBundle, TrustDomain};

use crate::state::{self, generation_dir, io_err, Keys};
use crate::store::{
    IdentityRevocation, IssuedRecord, NewCert, RenewalGate, RevokeOutcome, ServedCrl, Store,
    StoreError, StoredCrl, TokenRecord,
};

pub use crate::state::{add_secs, create_private_dir, write_file};

/// Why an authority operation failed. The variant decides the HTTP status the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The request is malformed (bad CSR, bad JSON, bad SPIFFE ID) → 400.
    #[error("{0}")]
    BadRequest(String),
    /// No valid credential (unknown/used/expired token, no client certificate) → 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A credential that is not allowed (revoked, expired, not admin) → 403.
    #[error("{0}")]
    Forbidden(String),
    /// The thing named does not exist (unknown serial) → 404.
    #[error("{0}")]
    NotFound(String),
    /// The state directory is missing, incomplete or already initialized.
    #[error("{0}")]
    State(String),
    /// The database failed → 500.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed → 500.
    #[error("signing failed: {0}")]
    Sign(String),
}

impl From<IssueError> for CaError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::MalformedCsr(_)
            | IssueError::BadCsrSignature
            | IssueError::UnsupportedKey(_)
            | IssueError::Identity(..) => CaError::BadRequest(e.to_string()),
            other => CaError::Sign(other.to_string()),
        }
    }
}

/// Settings chosen at `init` and stored in the database.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of a leaf when the caller does not ask for one.
    pub default_ttl: Duration,
    /// Longest leaf lifetime the CA grants, whatever is asked.
    pub max_ttl: Duration,
    /// nextUpdate − thisUpdate of every CRL.
    pub crl_validity: Duration,
}

/// What `init` is asked to create.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The trust domain the CA speaks for.
    pub trust_domain: TrustDomain,
    /// Root lifetime.
    pub root_ttl: Duration,
    /// Intermediate lifetime (capped at the root's).
    pub intermediate_ttl: Duration,
    /// Extra DNS names / IPs for the API's server certificate.
    pub extra_sans: Vec<String>,
    /// Stored settings.
    pub settings: Settings,
}

impl InitOptions {
    /// What `tether-ca init --trust-domain TD` creates with no other flag: root 365 d,
    /// intermediate 30 d, leaves 1 h by default and 24 h at most, CRLs valid 24 h, no extra SANs.
    /// The CLI's flag defaults are checked against this in `cli::tests`.
    pub fn with_defaults(trust_domain: TrustDomain) -> Self {
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        InitOptions {
            trust_domain,
            root_ttl: 365 * DAY,
            intermediate_ttl: 30 * DAY,
            extra_sans: Vec::new(),
            settings: Settings {
                default_ttl: HOUR,
                max_ttl: DAY,
                crl_validity: DAY,
            },
        }
    }
}

/// A certificate the authority just issued, with everything a workload needs to use it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    /// The identity in the certificate.
    pub spiffe_id: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// The leaf, PEM.
    pub certificate: String,
    /// Leaf + intermediate, PEM: what a TLS endpoint presents.
    pub chain: String,
    /// The trust bundle (roots), PEM.
    pub bundle: String,
    /// Set when the lifetime was cut to the issuing CA's notAfter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The admin identity's path under the trust domain: only it may call `POST /v1/revoke`.
pub const ADMIN_PATH: &str = "/tether/admin";

/// A loaded certificate authority.
pub struct Authority {
    dir: PathBuf,
    trust_domain: TrustDomain,
    settings: Settings,
    keys: RwLock<Arc<Keys>>,
    store: Mutex<Store>,
}

impl Authority {
    /// Creates a new CA in `dir`, which must not exist or be empty. Everything is built in a
    /// sibling temporary directory and renamed into place, so a failed init leaves nothing behind.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<(), CaError> {
        if dir.exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(CaError::State(format!(
                "state dir {} already exists and is not empty; refusing to touch it",
                dir.display()
            )));
        }
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let tmp = parent.join(format!(
            ".{}.init-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
            std::process::id()
        ));
        let result = state::build_state(&tmp, opts).and_then(|()| {
            std::fs::rename(&tmp, dir).map_err(|e| {
                CaError::State(format!(
                    "could not move new state into {}: {e}",
                    dir.display()
                ))
            })
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Opens the CA in `dir`, upgrading a state dir from before root rotation in place, and
    /// brings the published files (`bundle.pem`, `server/`, `admin/`) in line with `ca.db`.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let db = dir.join("ca.db");
        if !db.exists() {
            return Err(CaError::State(format!(
                "{} is not a tether-ca state dir (no ca.db); run `tether-ca init` first",
                dir.display()
            )));
        }
        let mut store = Store::open(&db)?;
        let meta = |k: &str| -> Result<String, CaError> {
            store
                .meta(k)?
                .ok_or_else(|| CaError::State(format!("ca.db has no setting {k}")))
        };
        let secs = |k: &str| -> Result<Duration, CaError> {
            meta(k)?
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| CaError::State(format!("ca.db setting {k} is not a number")))
        };
        let trust_domain = TrustDomain::new(&meta("trust_domain")?)
            .map_err(|e| CaError::State(format!("ca.db trust_domain: {e}")))?;
        let settings = Settings {
            default_ttl: secs("default_ttl")?,
            max_ttl: secs("max_ttl")?,
            crl_validity: secs("crl_validity")?,
        };
        state::adopt_first_generation(dir, &mut store)?;
        let keys = state::load_keys(dir, &store)?;
        if let Err(e) = state::publish_files(dir, &keys) {
            // The database is right and every reader of these copies tolerates a stale one for
            // a while; the next open or rotation tries again.
            tracing::warn!(
                "could not refresh the published files in {}: {e}",
                dir.display()
            );
        }
        Ok(Authority {
            dir: dir.to_path_buf(),
            trust_domain,
            settings,
            keys: RwLock::new(Arc::new(keys)),
            store: Mutex::new(store),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        self.keys().bundle.clone()
    }

    /// The trust bundle as PEM.
    pub fn bundle_pem(&self) -> String {
        self.keys().bundle_pem.clone()
    }

    /// The version of [`Authority::bundle`] (1 after init, +1 per rotate and per retire).
    pub fn bundle_version(&self) -> u64 {
        self.keys().bundle_version
    }

    /// The current generation (the one that signs).
    pub fn generation(&self) -> u64 {
        self.keys().generation
    }

    /// The issuing intermediate's certificate.
    pub fn intermediate(&self) -> CertificateDer<'static> {
        self.keys().signer.cert().clone()
    }

    pub(crate) fn keys(&self) -> Arc<Keys> {
        // Only ever replaced whole, so a poisoned lock still holds a complete value.
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
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

    pub(crate) fn load(&self) -> Result<(), CaError> {
        let keys = state::load_keys(&self.dir, &self.store())?;
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

    /// Makes a one-time enrollment token for `id`, valid for `ttl`. Only its SHA-256 is stored.
    pub fn create_token(&self, id: &SpiffeId, ttl: Duration) -> Result<String, CaError> {
        self.check_member(id)?;
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        use base64::Engine as _;
        let token = format!(
            "tether-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.store()
            .insert_token(&token_hash(&token), id, now, add_secs(now, ttl))?;
        Ok(token)
    }

    /// Enrollment: a valid, unused, unexpired token + a CSR → a leaf for the token's identity.
    /// The token is consumed in the same transaction that records the certificate.
    pub fn enroll(&self, token: &str, csr: &[u8]) -> Result<Issued, CaError> {
        let key = tether_certs::issue::parse_csr(csr)?;
        let now = OffsetDateTime::now_utc();
        let hash = token_hash(token);
        let token_error = |row: Option<&TokenRecord>| match row {
            None => CaError::Unauthorized("unknown enrollment token".into()),
            Some(r) if r.used_at.is_some() => {
                CaError::Unauthorized("enrollment token was already used".into())
            }
            Some(_) => CaError::Unauthorized("enrollment token has expired".into()),
        };
        let row = self.store().token(&hash)?;
        let id = match &row {
            Some(r) if r.used_at.is_none() && r.expires_at > now.unix_timestamp() => {
                SpiffeId::parse(&r.spiffe_id)
                    .map_err(|e| StoreError::Corrupt(format!("token identity: {e}")))?
            }
            other => return Err(token_error(other.as_ref())),
        };
        self.with_current_keys(|keys| {
            // Signed without the store lock, so enrollments sign in parallel; the token is
            // consumed in the transaction that records the certificate.
            let (record, issued) =
                self.sign(keys, &id, &key, self.settings.default_ttl, now, "enroll")?;
            if self
                .store()
                .record_enrollment(&hash, now.unix_timestamp(), &record)?
            {
                Ok(issued)
            } else {
                // Used (or expired) by a concurrent enrollment since we looked.
                Err(token_error(self.store().token(&hash)?.as_ref()))
            }
        })
    }

    /// Renewal: the caller's current certificate chain (from the mTLS handshake) must verify
    /// against the bundle and be unexpired; the new leaf names the *same* identity over the CSR's
    /// fresh key. Whether the presented certificate is unrevoked is decided in the transaction
    /// that records the new leaf ([`Store::record_renewal`]), so a revocation cannot slip in
    /// between the check and the issuance.
    pub fn renew(&self, peer_chain: &[CertificateDer<'_>], csr: &[u8]) -> Result<Issued, CaError> {
        let leaf = self.verify_chain(peer_chain)?;
        let key = tether_certs::issue::parse_csr(csr)?;
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            let (record, issued) = self.sign(
                keys,
                &leaf.id,
                &key,
                self.settings.default_ttl,
                now,
                "renew",
            )?;
            match self.store().record_renewal(&leaf.serial, &record)? {
                RenewalGate::Recorded => Ok(issued),
                RenewalGate::Revoked => Err(revoked(&leaf.serial)),
                RenewalGate::Unknown => Err(not_ours(&leaf.serial)),
            }
        })
    }

    /// Checks a client chain presented over mTLS: chain to the bundle, X509-SVID rules, not
    /// expired, issued by this CA and not revoked (the database is authoritative, so a revocation
    /// counts even before any CRL was fetched).
    pub fn authenticate(
        &self,
        peer_chain: &[CertificateDer<'_>],
    ) -> Result<tether_certs::svid::LeafInfo, CaError> {
        let info = self.verify_chain(peer_chain)?;
        match self.store().certificate(&info.serial)? {
            None => Err(not_ours(&info.serial)),
            Some(r) if r.revoked_at.is_some() => Err(revoked(&info.serial)),
            Some(_) => Ok(info),
        }
    }

    /// Chain to the bundle, X509-SVID rules, validity period — no database lookup.
    fn verify_chain(
        &self,
        peer_chain: &[CertificateDer<'_>],
    ) -> Result<tether_certs::svid::LeafInfo, CaError> {
        let (leaf, intermediates) = peer_chain.split_first().ok_or_else(|| {
            CaError::Unauthorized("a client certificate is required (mTLS)".into())
        })?;
        let verifier = SvidVerifier::new(&self.keys().bundle, Revocation::new(Default::default()));
        verifier
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

    /// Issues a leaf for `id` with a key generated here, and writes `key.pem` (0600),
    /// `cert.pem`, `chain.pem` and `bundle.pem` to `out` (for services that take files).
    pub fn issue_to_dir(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        out: &Path,
    ) -> Result<Issued, CaError> {
        self.check_member(id)?;
        let key = tether_certs::keys::generate_key().map_err(|e| CaError::Sign(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            let (record, issued) = self.sign(keys, id, &key, ttl, now, "cli")?;
            create_private_dir(out)?;
            // Files first, then the record: a failed write leaves no certificate whose key is
            // lost.
            write_file(&out.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&out.join("cert.pem"), issued.certificate.as_bytes(), 0o644)?;
            write_file(&out.join("chain.pem"), issued.chain.as_bytes(), 0o644)?;
            write_file(&out.join("bundle.pem"), issued.bundle.as_bytes(), 0o644)?;
            self.store().record(&record)?;
            Ok(issued)
        })
    }

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

    fn sign(
        &self,
        keys: &Keys,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
        method: &'static str,
    ) -> Result<(NewCert, Issued), CaError> {
        // X.509 times have whole seconds: issue from a whole second so the notAfter reported to
        // the caller (and recorded) is exactly the certificate's, not up to 1 s past it.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let leaf = keys
            .signer
            .issue_leaf(id, key, ttl, self.settings.max_ttl, now)?;
        let certificate = tether_certs::pem::encode("CERTIFICATE", &leaf.der);
        let not_after = rfc3339(leaf.not_after);
        let note = leaf.shortened_to_issuer.then(|| {
            format!("lifetime shortened to end with the issuing CA certificate at {not_after}")
        });
        let issued = Issued {
            spiffe_id: id.to_string(),
            serial: leaf.serial.to_string(),
            not_after,
            chain: format!("{certificate}{}", keys.chain_tail),
            certificate,
            bundle: keys.bundle_pem.clone(),
            note,
        };
        let record = NewCert {
            serial: leaf.serial,
            spiffe_id: id.to_string(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            issued_at: now,
            method,
            der: leaf.der.to_vec(),
            generation: keys.generation,
        };
        Ok((record, issued))
    }

    /// Revokes `serial` and publishes a CRL listing it, atomically.
    pub fn revoke(
        &self,
        serial: &Serial,
        reason: Option<Reason>,
    ) -> Result<RevokeOutcome, CaError> {
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            self.store()
                .revoke_and_publish(serial, reason, now, keys.generation, |n, e| {
                    self.sign_crl(keys, n, e, now)
                })
        })
    }

    /// Revokes every unrevoked, unexpired certificate of `id` issued before `before` (default:
    /// everything issued so far) and publishes one CRL listing them, atomically. Sidecars enforce
    /// it for certificates they have never seen, because the CRL lists every such serial.
    pub fn revoke_identity(
        &self,
        id: &SpiffeId,
        before: Option<OffsetDateTime>,
        reason: Option<Reason>,
    ) -> Result<IdentityRevocation, CaError> {
        self.check_member(id)?;
        // `issued_at` is whole seconds, so "issued before T" is `issued_at < ceil(T)`.
        let before = before.map(|t| t.unix_timestamp() + i64::from(t.nanosecond() > 0));
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            self.store().revoke_identity_and_publish(
                id.as_str(),
                before,
                reason,
                now,
                keys.generation,
                |n, e| self.sign_crl(keys, n, e, now),
            )
        })
    }

    /// The current CRL; a new one (same entries, next number) is published first when the
    /// newest is older than `refresh_after`, or when there is none.
    pub fn current_crl(&self, refresh_after: Duration) -> Result<StoredCrl, CaError> {
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            let mut store = self.store();
            if let Some(crl) = store.latest_crl()? {
                if now.unix_timestamp() - crl.this_update < refresh_after.as_secs() as i64 {
                    return Ok(crl);
                }
            }
            store.publish_crl(now, keys.generation, |n, e| self.sign_crl(keys, n, e, now))
        })
    }

    /// The newest CRL number in the database (0 if none).
    pub fn latest_crl_number(&self) -> Result<u64, CaError> {
        Ok(self.store().latest_crl_number()?)
    }

    /// The newest stored CRL without refreshing it.
    pub fn latest_crl(&self) -> Result<Option<StoredCrl>, CaError> {
        Ok(self.store().latest_crl()?)
    }

    /// CRL `number` and the certificates that vouch for its signer: the intermediate that signed
    /// it, then its cross-certificate from the previous root while that root is in the bundle.
    pub fn crl_with_issuer(&self, number: u64) -> Result<Option<ServedCrl>, CaError> {
        Ok(self.store().crl_with_issuer(number)?)
    }

    /// Issued certificates (see [`Store::list`]).
    pub fn list(&self, expiring_within: Option<Duration>) -> Result<Vec<IssuedRecord>, CaError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Ok(self
            .store()
            .list(now, expiring_within.map(|d| add_secs(now, d)))?)
    }

    fn sign_crl(
        &self,
        keys: &Keys,
        number: u64,
        entries: &[CrlEntry],
        now: OffsetDateTime,
    ) -> Result<StoredCrl, CaError> {
        state::sign_crl(
            &keys.signer,
            keys.generation,
            number,
            entries,
            now,
            self.settings.crl_validity,
        )
    }

    /// Parses a CRL back and verifies it against the current intermediate (used by tests and the
    /// CLI to double-check what was published).
    pub fn verify_crl(&self, der: &[u8]) -> Result<RevocationList, CaError> {
        RevocationList::parse_and_verify(der, self.keys().signer.cert())
            .map_err(|e| CaError::Sign(e.to_string()))
    }

    /// The API's server credential (chain PEM, key PEM) of the current generation. The chain is
    /// the server certificate followed by the current intermediate and, while the previous root
    /// is in the bundle, the intermediate's cross-certificate from it — so a client that has not
    /// fetched the new bundle yet still trusts the API after a rotation.
    pub fn server_credential(&self) -> Result<(String, String), CaError> {
        let keys = self.keys();
        let d = generation_dir(&self.dir, keys.generation).join("server");
        let chain = state::with_tail(&state::read(&d.join("chain.pem"))?, &keys.chain_tail)?;
        Ok((chain, state::read(&d.join("key.pem"))?))
    }
}

fn revoked(serial: &Serial) -> CaError {
    CaError::Forbidden(format!("client certificate {serial} is revoked"))
}

fn not_ours(serial: &Serial) -> CaError {
    CaError::Forbidden(format!(
        "client certificate {serial} was not issued by this CA"
    ))
}

/// `t` as RFC 3339 (`2025-01-31T12:00:00Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Unix seconds as RFC 3339 (the number itself if it is out of range).
pub fn unix_rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(rfc3339)
        .unwrap_or_else(|_| unix.to_string())
}

/// `d` the way operators write it (`7d`, `36h`, `90s`): the largest unit that divides it.
/// (humantime would print 40 days as "1month 9days 13h 26m 24s".)
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// SHA-256 of a token, hex: what the database stores instead of the token.
fn token_hash(token: &str) -> String {
    tether_certs::bundle::fingerprint(token.as_bytes())
}

/// Shared handle type used by the API.
pub type SharedAuthority = Arc<Authority>;

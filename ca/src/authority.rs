//! The authority: the state directory, its CA material, and every operation that issues or
//! revokes. The CLI and the HTTPS API are both thin layers over [`Authority`].
//!
//! State directory layout (private keys 0600, directories 0700):
//! ```text
//! DIR/ca.db                    SQLite: certificates, revocations, tokens, CRLs, settings
//! DIR/bundle.pem               the published trust bundle (roots)
//! DIR/root/{cert,key}.pem      root CA (can be moved offline once the intermediate exists)
//! DIR/intermediate/{cert,key}.pem   issuing CA
//! DIR/server/{chain,key}.pem   TLS certificate of the CA's own API
//! DIR/admin/{cert,chain,key,bundle}.pem   admin client credential (spiffe://TD/tether/admin)
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngCore;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use tether_certs::crl::{CrlEntry, Reason};
use tether_certs::issue::{IssueError, Signer};
use tether_certs::verify::{ExpectedPeer, Revocation, SvidVerifier, VerifyError};
use tether_certs::{svid::Usage, RevocationList, Serial, SpiffeId, TrustBundle, TrustDomain};

use crate::store::{IssuedRecord, NewCert, RevokeOutcome, Store, StoreError, StoredCrl};

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
    signer: Signer,
    bundle: TrustBundle,
    bundle_pem: String,
    settings: Settings,
    store: Mutex<Store>,
}

impl Authority {
    /// Creates a new CA in `dir`, which must not exist or be empty. Everything is built in a
    /// sibling temporary directory and renamed into place, so a failed init leaves nothing behind.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<(), CaError> {
        if dir.exists()
            && fs::read_dir(dir)
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
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let tmp = parent.join(format!(
            ".{}.init-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
            std::process::id()
        ));
        let result = build_state(&tmp, opts).and_then(|()| {
            fs::rename(&tmp, dir).map_err(|e| {
                CaError::State(format!(
                    "could not move new state into {}: {e}",
                    dir.display()
                ))
            })
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let db = dir.join("ca.db");
        if !db.exists() {
            return Err(CaError::State(format!(
                "{} is not a tether-ca state dir (no ca.db); run `tether-ca init` first",
                dir.display()
            )));
        }
        let store = Store::open(&db)?;
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
        let read = |rel: &str| {
            let p = dir.join(rel);
            fs::read_to_string(&p).map_err(|e| io_err(&p, e))
        };
        let signer = Signer::from_pem(
            &read("intermediate/cert.pem")?,
            &read("intermediate/key.pem")?,
        )
        .map_err(|e| CaError::State(format!("intermediate: {e}")))?;
        let bundle_pem = read("bundle.pem")?;
        let bundle = TrustBundle::from_pem(bundle_pem.as_bytes())
            .map_err(|e| CaError::State(format!("bundle.pem: {e}")))?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            trust_domain,
            signer,
            bundle,
            bundle_pem,
            settings,
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

    /// The trust bundle.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The trust bundle as PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The issuing intermediate's certificate.
    pub fn intermediate(&self) -> &CertificateDer<'static> {
        self.signer.cert()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut store = self.store();
        store.consume_token_and_record(
            &token_hash(token),
            now.unix_timestamp(),
            |row| {
                let row =
                    row.ok_or_else(|| CaError::Unauthorized("unknown enrollment token".into()))?;
                if row.used_at.is_some() {
                    return Err(CaError::Unauthorized(
                        "enrollment token was already used".into(),
                    ));
                }
                if row.expires_at <= now.unix_timestamp() {
                    return Err(CaError::Unauthorized("enrollment token has expired".into()));
                }
                SpiffeId::parse(&row.spiffe_id)
                    .map_err(|e| StoreError::Corrupt(format!("token identity: {e}")).into())
            },
            |id| self.sign(id, &key, self.settings.default_ttl, now, "enroll"),
        )
    }

    /// Renewal: the caller's current certificate chain (from the mTLS handshake) must verify
    /// against the bundle, be unexpired, and be unrevoked in the database; the new leaf names the
    /// *same* identity over the CSR's fresh key.
    pub fn renew(&self, peer_chain: &[CertificateDer<'_>], csr: &[u8]) -> Result<Issued, CaError> {
        let leaf = self.authenticate(peer_chain)?;
        let key = tether_certs::issue::parse_csr(csr)?;
        let now = OffsetDateTime::now_utc();
        let (record, issued) =
            self.sign(&leaf.id, &key, self.settings.default_ttl, now, "renew")?;
        self.store().record(&record)?;
        Ok(issued)
    }

    /// Checks a client chain presented over mTLS: chain to the bundle, X509-SVID rules, not
    /// expired, issued by this CA and not revoked (the database is authoritative, so a revocation
    /// counts even before any CRL was fetched).
    pub fn authenticate(
        &self,
        peer_chain: &[CertificateDer<'_>],
    ) -> Result<tether_certs::svid::LeafInfo, CaError> {
        let (leaf, intermediates) = peer_chain.split_first().ok_or_else(|| {
            CaError::Unauthorized("a client certificate is required (mTLS)".into())
        })?;
        let verifier = SvidVerifier::new(&self.bundle, Revocation::new(Default::default()));
        let info = verifier
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
            })?;
        match self.store().certificate(&info.serial)? {
            None => Err(CaError::Forbidden(format!(
                "client certificate {} was not issued by this CA",
                info.serial
            ))),
            Some(r) if r.revoked_at.is_some() => Err(CaError::Forbidden(format!(
                "client certificate {} is revoked",
                info.serial
            ))),
            Some(_) => Ok(info),
        }
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
        let (record, issued) = self.sign(id, &key, ttl, now, "cli")?;
        create_private_dir(out)?;
        // Files first, then the record: a failed write leaves no certificate whose key is lost.
        write_file(&out.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&out.join("cert.pem"), issued.certificate.as_bytes(), 0o644)?;
        write_file(&out.join("chain.pem"), issued.chain.as_bytes(), 0o644)?;
        write_file(&out.join("bundle.pem"), issued.bundle.as_bytes(), 0o644)?;
        self.store().record(&record)?;
        Ok(issued)
    }

    fn check_member(&self, id: &SpiffeId) -> Result<(), CaError> {
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
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
        method: &'static str,
    ) -> Result<(NewCert, Issued), CaError> {
        // X.509 times have whole seconds: issue from a whole second so the notAfter reported to
        // the caller (and recorded) is exactly the certificate's, not up to 1 s past it.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let leaf = self
            .signer
            .issue_leaf(id, key, ttl, self.settings.max_ttl, now)?;
        let certificate = tether_certs::pem::encode("CERTIFICATE", &leaf.der);
        let not_after = leaf
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let note = leaf.shortened_to_issuer.then(|| {
            format!("lifetime shortened to end with the issuing CA certificate at {not_after}")
        });
        let issued = Issued {
            spiffe_id: id.to_string(),
            serial: leaf.serial.to_string(),
            not_after,
            chain: format!("{certificate}{}", self.signer.cert_pem()),
            certificate,
            bundle: self.bundle_pem.clone(),
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
        self.store()
            .revoke_and_publish(serial, reason, now, |n, e| self.sign_crl(n, e, now))
    }

    /// The current CRL; a new one (same entries, next number) is published first when the
    /// newest is older than `refresh_after`, or when there is none.
    pub fn current_crl(&self, refresh_after: Duration) -> Result<StoredCrl, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut store = self.store();
        if let Some(crl) = store.latest_crl()? {
            if now.unix_timestamp() - crl.this_update < refresh_after.as_secs() as i64 {
                return Ok(crl);
            }
        }
        store.publish_crl(now, |n, e| self.sign_crl(n, e, now))
    }

    /// The newest CRL number in the database (0 if none).
    pub fn latest_crl_number(&self) -> Result<u64, CaError> {
        Ok(self.store().latest_crl_number()?)
    }

    /// The newest stored CRL without refreshing it.
    pub fn latest_crl(&self) -> Result<Option<StoredCrl>, CaError> {
        Ok(self.store().latest_crl()?)
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
        number: u64,
        entries: &[CrlEntry],
        now: OffsetDateTime,
    ) -> Result<StoredCrl, CaError> {
        let next = now + self.settings.crl_validity;
        let der = tether_certs::crl::build(&self.signer, number, now, next, entries)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(StoredCrl {
            number,
            this_update: now.unix_timestamp(),
            next_update: next.unix_timestamp(),
            der,
        })
    }

    /// Parses a stored CRL back (used by tests and the CLI to double-check what was published).
    pub fn verify_crl(&self, der: &[u8]) -> Result<RevocationList, CaError> {
        RevocationList::parse_and_verify(der, self.signer.cert())
            .map_err(|e| CaError::Sign(e.to_string()))
    }

    /// The API's server credential (chain PEM, key PEM) from the state dir.
    pub fn server_credential(&self) -> Result<(String, String), CaError> {
        let read = |rel: &str| {
            let p = self.dir.join(rel);
            fs::read_to_string(&p).map_err(|e| io_err(&p, e))
        };
        Ok((read("server/chain.pem")?, read("server/key.pem")?))
    }
}

/// `unix + d` in Unix seconds, saturating: an absurd operator-given duration must mean "very
/// long", never wrap around to a time in the past.
pub fn add_secs(unix: i64, d: Duration) -> i64 {
    unix.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// SHA-256 of a token, hex: what the database stores instead of the token.
fn token_hash(token: &str) -> String {
    tether_certs::bundle::fingerprint(token.as_bytes())
}

fn io_err(path: &Path, e: std::io::Error) -> CaError {
    CaError::State(format!("{}: {e}", path.display()))
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))
}

/// Writes `bytes` to `path` atomically (temp file + rename) with `mode`, so a crash never leaves
/// a half-written key or certificate and a key is never readable by others, even briefly.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io_err(path, e))
}

fn build_state(tmp: &Path, opts: &InitOptions) -> Result<(), CaError> {
    let now = OffsetDateTime::now_utc();
    let td = &opts.trust_domain;
    let sign_err = |e: IssueError| CaError::Sign(e.to_string());
    create_private_dir(tmp)?;
    let (root, root_key) =
        tether_certs::issue::new_root(td, opts.root_ttl, now).map_err(sign_err)?;
    let (inter, inter_key) = root
        .issue_intermediate(td, opts.intermediate_ttl, now)
        .map_err(sign_err)?;
    for (name, signer, key) in [
        ("root", &root, &root_key),
        ("intermediate", &inter, &inter_key),
    ] {
        let d = tmp.join(name);
        create_private_dir(&d)?;
        write_file(&d.join("cert.pem"), signer.cert_pem().as_bytes(), 0o644)?;
        write_file(&d.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
    }
    let bundle_pem = root.cert_pem();
    write_file(&tmp.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;

    let mut store = Store::open(&tmp.join("ca.db"))?;
    store.set_meta("trust_domain", td.as_str())?;
    store.set_meta(
        "default_ttl",
        &opts.settings.default_ttl.as_secs().to_string(),
    )?;
    store.set_meta("max_ttl", &opts.settings.max_ttl.as_secs().to_string())?;
    store.set_meta(
        "crl_validity",
        &opts.settings.crl_validity.as_secs().to_string(),
    )?;

    // The API's server certificate: DNS localhost, 127.0.0.1 and ::1, plus what was asked for.
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    sans.extend(opts.extra_sans.iter().cloned());
    let server_key =
        tether_certs::keys::generate_key().map_err(|e| CaError::Sign(e.to_string()))?;
    let server = inter
        .issue_server(&server_key, &sans, opts.intermediate_ttl, now)
        .map_err(sign_err)?;
    let server_dir = tmp.join("server");
    create_private_dir(&server_dir)?;
    let server_chain = format!(
        "{}{}",
        tether_certs::pem::encode("CERTIFICATE", &server.der),
        inter.cert_pem()
    );
    write_file(
        &server_dir.join("chain.pem"),
        server_chain.as_bytes(),
        0o644,
    )?;
    write_file(
        &server_dir.join("key.pem"),
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    store.record(&NewCert {
        serial: server.serial,
        spiffe_id: format!("dns:{}", sans.join(",")),
        not_before: server.not_before,
        not_after: server.not_after,
        issued_at: now,
        method: "server",
        der: server.der.to_vec(),
    })?;

    // The admin client credential for the CLI's calls to the API (revoke).
    let admin_id = SpiffeId::from_parts(td, ADMIN_PATH)
        .map_err(|e| CaError::State(format!("admin identity: {e}")))?;
    let admin_key = tether_certs::keys::generate_key().map_err(|e| CaError::Sign(e.to_string()))?;
    let admin = inter
        .issue_leaf(
            &admin_id,
            &admin_key,
            opts.intermediate_ttl,
            opts.intermediate_ttl,
            now,
        )
        .map_err(sign_err)?;
    let admin_dir = tmp.join("admin");
    create_private_dir(&admin_dir)?;
    let admin_pem = tether_certs::pem::encode("CERTIFICATE", &admin.der);
    write_file(&admin_dir.join("cert.pem"), admin_pem.as_bytes(), 0o644)?;
    write_file(
        &admin_dir.join("chain.pem"),
        format!("{admin_pem}{}", inter.cert_pem()).as_bytes(),
        0o644,
    )?;
    write_file(
        &admin_dir.join("key.pem"),
        admin_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&admin_dir.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
    store.record(&NewCert {
        serial: admin.serial,
        spiffe_id: admin_id.to_string(),
        not_before: admin.not_before,
        not_after: admin.not_after,
        issued_at: now,
        method: "admin",
        der: admin.der.to_vec(),
    })?;

    // CRL number 1, empty, so readers have a signed list from the first second.
    let validity = opts.settings.crl_validity;
    store.publish_crl(now, |number, entries| -> Result<StoredCrl, CaError> {
        let next = now + validity;
        let der = tether_certs::crl::build(&inter, number, now, next, entries)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(StoredCrl {
            number,
            this_update: now.unix_timestamp(),
            next_update: next.unix_timestamp(),
            der,
        })
    })?;
    Ok(())
}

/// Shared handle type used by the API.
pub type SharedAuthority = Arc<Authority>;

//! The sidecar's identity: its certificate, key, trust bundle and revocation list, turned into
//! ready-to-use rustls configs once per credential (never per connection).
//!
//! Credentials are published on a `watch` channel ([`IdentityStore`]); every new handshake takes
//! the newest, and connections in flight keep the config they started with. Whatever produces
//! them — the files at start, a file reload, an enrollment or a renewal (see
//! [`crate::lifecycle`]) — publishes on the same channel.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::sync::watch;

use tether_certs::verify::{
    client_config, server_config, ExpectedPeer, Revocation, SvidClientVerifier, SvidServerVerifier,
    SvidVerifier,
};
use tether_certs::{RevocationList, Serial, SpiffeId, TrustBundle};

use crate::config::IdentityFiles;

/// Why credentials could not be loaded. Names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
    /// A file's content is unusable.
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// Why [`Credentials::build`] refused a chain and key: which of the two is at fault (so a file
/// loader can name the right file), and why.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The certificate or its chain is unusable.
    #[error("{0}")]
    Certificate(String),
    /// The private key does not match the certificate or is unusable.
    #[error("{0}")]
    Key(String),
}

/// One loaded credential with its TLS configs.
pub struct Credentials {
    /// Our SPIFFE ID.
    pub id: SpiffeId,
    /// Our leaf's serial.
    pub serial: Serial,
    /// Our leaf's notBefore.
    pub(crate) not_before: OffsetDateTime,
    /// Our leaf's notAfter.
    pub not_after: OffsetDateTime,
    /// notAfter of the CA certificates our chain depends on (intermediate, root): past it the
    /// chain is dead even with a fresh leaf.
    pub(crate) chain_not_after: OffsetDateTime,
    /// The trust bundle.
    pub bundle: TrustBundle,
    /// Inbound: TLS 1.3, client certificate required, any SVID of the bundle (policy decides).
    pub server: Arc<rustls::ServerConfig>,
    verifier: Arc<SvidVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: std::sync::Mutex<HashMap<(SpiffeId, Alpn), Arc<rustls::ClientConfig>>>,
}

/// Which application protocol an outbound connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// HTTP/2: the default between sidecars, many requests over one handshake.
    H2,
    /// HTTP/1.1: for upgrade (WebSocket) requests, which HTTP/2 cannot carry here.
    Http1,
    /// Nothing: opaque TCP services.
    None,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is deliberately left out: no secret in logs.
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Reads a file, naming it in the error.
pub(crate) fn read_file(p: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(p).map_err(|e| IdentityError::Read(p.display().to_string(), e))
}

impl Credentials {
    /// Loads `[identity]` files and cross-checks them: the key must match the certificate, the
    /// certificate must be a valid, unexpired X509-SVID that chains to the bundle and is not
    /// revoked by `revocation`. Returns the CRL file's list (signature-checked against our issuing
    /// CA) for the caller to install *before* this call's revocation check matters.
    ///
    /// Blocking file I/O: call it from async code through `spawn_blocking`.
    pub fn load_files(
        files: &IdentityFiles,
        revocation: Arc<Revocation>,
    ) -> Result<(Self, Option<RevocationList>), IdentityError> {
        let name = |p: &Path| p.display().to_string();
        let chain = tether_certs::pem::certificates(&read_file(&files.cert)?)
            .map_err(|e| IdentityError::Invalid(name(&files.cert), e.to_string()))?;
        let key = tether_certs::pem::private_key(&read_file(&files.key)?)
            .map_err(|e| IdentityError::Invalid(name(&files.key), e.to_string()))?;
        let bundle = TrustBundle::from_pem(&read_file(&files.bundle)?)
            .map_err(|e| IdentityError::Invalid(name(&files.bundle), e.to_string()))?;
        let crl = match &files.crl {
            None => None,
            Some(p) => {
                let bytes = read_file(p)?;
                let issuer = chain.get(1).ok_or_else(|| {
                    IdentityError::Invalid(
                        name(&files.cert),
                        "a CRL is configured, so the certificate file must hold leaf + issuing CA (chain.pem)".into(),
                    )
                })?;
                let crl = RevocationList::parse_and_verify(&bytes, issuer)
                    .map_err(|e| IdentityError::Invalid(name(p), e.to_string()))?;
                // Our own serial on the list means this credential is dead: say which file.
                let leaf = tether_certs::svid::inspect_leaf(&chain[0], None)
                    .map_err(|e| IdentityError::Invalid(name(&files.cert), e.to_string()))?;
                if crl.revoked().contains(&leaf.serial) {
                    return Err(IdentityError::Invalid(
                        name(p),
                        format!("revokes our own certificate {}", leaf.serial),
                    ));
                }
                Some(crl)
            }
        };
        let creds = Self::build(chain, key, bundle, revocation).map_err(|e| match e {
            BuildError::Certificate(problem) => IdentityError::Invalid(name(&files.cert), problem),
            BuildError::Key(problem) => IdentityError::Invalid(name(&files.key), problem),
        })?;
        Ok((creds, crl))
    }

    /// Builds credentials from a chain (leaf first), its key and a bundle. The error says whether
    /// the key or the certificate is at fault, and why.
    pub(crate) fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: TrustBundle,
        revocation: Arc<Revocation>,
    ) -> Result<Self, BuildError> {
        let Some(leaf_der) = chain.first() else {
            return Err(BuildError::Certificate(
                "no certificate in the chain".into(),
            ));
        };
        let leaf = tether_certs::svid::inspect_leaf(leaf_der, None)
            .map_err(|e| BuildError::Certificate(format!("not a valid X509-SVID: {e}")))?;
        let verifier = Arc::new(SvidVerifier::new(&bundle, revocation));
        // Our own certificate must be one our peers accept: chain to the bundle, unexpired,
        // not revoked. Checked as a server certificate (EKU serverAuth), the stricter use.
        verifier
            .verify(
                leaf_der,
                &chain[1..],
                tether_certs::svid::Usage::Server,
                rustls_pki_types::UnixTime::now(),
                &ExpectedPeer::AnyInBundle,
            )
            .map_err(|e| {
                BuildError::Certificate(format!("our own certificate is unusable: {e}"))
            })?;
        let client_verifier =
            SvidClientVerifier::new(verifier.clone(), ExpectedPeer::AnyInBundle, true);
        let server =
            server_config(chain.clone(), key.clone_key(), client_verifier).map_err(|e| {
                let problem = format!("key does not match the certificate or is unusable: {e}");
                match e {
                    rustls::Error::InconsistentKeys(_) => BuildError::Key(problem),
                    _ => BuildError::Certificate(problem),
                }
            })?;
        let chain_not_after = chain_expiry(&chain, &bundle).unwrap_or(leaf.not_after);
        Ok(Credentials {
            id: leaf.id,
            serial: leaf.serial,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            chain_not_after,
            bundle,
            server: Arc::new(server),
            verifier,
            chain,
            key,
            clients: Default::default(),
        })
    }

    /// The same certificate and key with another trust bundle (after a root rotation).
    pub(crate) fn with_bundle(
        &self,
        bundle: TrustBundle,
        revocation: Arc<Revocation>,
    ) -> Result<Self, BuildError> {
        Self::build(self.chain.clone(), self.key.clone_key(), bundle, revocation)
    }

    /// The CA certificates of our chain (everything after the leaf).
    pub(crate) fn intermediates(&self) -> &[CertificateDer<'static>] {
        // `build` refused an empty chain, so the leaf is there to skip.
        self.chain.get(1..).unwrap_or_default()
    }

    /// Our chain (leaf first) and key, for presenting to the CA.
    pub(crate) fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }

    /// The client config that presents our certificate and admits only `peer`. Built once per
    /// expected identity and protocol, and cached for the life of this credential.
    pub fn client_for(
        &self,
        peer: &SpiffeId,
        alpn: Alpn,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let key = (peer.clone(), alpn);
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let verifier = SvidServerVerifier::new(
            self.verifier.clone(),
            ExpectedPeer::OneOf(Arc::from(vec![peer.clone()])),
        );
        let mut config = client_config(self.chain.clone(), self.key.clone_key(), verifier)?;
        config.alpn_protocols = match alpn {
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::None => Vec::new(),
        };
        let config = Arc::new(config);
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// Whether the certificate is inside its validity period at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        now < self.not_after
    }
}

/// notAfter of the intermediate(s) in `chain` and of the bundle root that issued the top one.
fn chain_expiry(chain: &[CertificateDer<'static>], bundle: &TrustBundle) -> Option<OffsetDateTime> {
    use x509_parser::prelude::FromDer;
    let mut earliest: Option<OffsetDateTime> = None;
    let mut top_issuer = None;
    for der in &chain[1..] {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        let t = cert.validity().not_after.to_datetime();
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
        top_issuer = Some(cert.issuer().as_raw().to_vec());
    }
    let top_issuer = top_issuer?;
    for root in bundle.roots() {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&root.der).ok()?;
        if cert.subject().as_raw() == top_issuer.as_slice() {
            earliest = Some(earliest.map_or(root.not_after, |e| e.min(root.not_after)));
        }
    }
    earliest
}

/// The publishing side of the current credentials. Empty until the first certificate: until then
/// every handshake fails closed and `/ready` says not ready.
#[derive(Clone)]
pub struct IdentityStore {
    tx: Arc<watch::Sender<Option<Arc<Credentials>>>>,
}

impl Default for IdentityStore {
    fn default() -> Self {
        let (tx, _) = watch::channel(None);
        IdentityStore { tx: Arc::new(tx) }
    }
}

impl IdentityStore {
    /// A store holding `creds`.
    pub fn new(creds: Credentials) -> Self {
        let store = Self::default();
        store.publish(creds);
        store
    }

    /// The newest credentials (cheap: an `Arc` clone), or `None` before the first certificate.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.tx.borrow().clone()
    }

    /// Publishes new credentials for every new handshake; connections in flight keep theirs.
    pub(crate) fn publish(&self, creds: Credentials) {
        self.tx.send_replace(Some(Arc::new(creds)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls_pki_types::PrivatePkcs8KeyDer;

    use super::*;

    /// A bundle, and a chain (leaf, intermediate) for `spiffe://example.org/a` with its key.
    fn credential() -> (TrustBundle, Vec<CertificateDer<'static>>, rcgen::KeyPair) {
        let td = tether_certs::TrustDomain::new("example.org").unwrap();
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(86400);
        let (root, _) = tether_certs::issue::new_root(&td, day, now).unwrap();
        let (inter, _) = root.issue_intermediate(&td, day, now).unwrap();
        let key = tether_certs::keys::generate_key().unwrap();
        let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
        let leaf = inter.issue_leaf(&id, &key, day, day, now).unwrap();
        let mut bundle = TrustBundle::default();
        bundle.push(root.cert().clone()).unwrap();
        (bundle, vec![leaf.der, inter.cert().clone()], key)
    }

    fn der(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: &rcgen::KeyPair,
        bundle: &TrustBundle,
    ) -> Result<Credentials, BuildError> {
        let revocation = Revocation::new(Default::default());
        Credentials::build(chain, der(key), bundle.clone(), revocation)
    }

    #[test]
    fn a_matching_chain_and_key_build_and_publish() {
        let (bundle, chain, key) = credential();
        let creds = build(chain, &key, &bundle).unwrap();
        assert_eq!(creds.id.as_str(), "spiffe://example.org/a");
        assert_eq!(creds.intermediates().len(), 1);
        let store = IdentityStore::default();
        assert!(
            store.current().is_none(),
            "empty until the first certificate"
        );
        store.publish(creds);
        assert_eq!(store.current().unwrap().bundle.len(), 1);
    }

    #[test]
    fn the_error_says_whether_the_key_or_the_certificate_is_at_fault() {
        let (bundle, chain, key) = credential();
        let other = tether_certs::keys::generate_key().unwrap();
        let err = build(chain.clone(), &other, &bundle).unwrap_err();
        assert!(matches!(err, BuildError::Key(_)), "{err:?}");
        // The intermediate is no X509-SVID leaf.
        let err = build(chain[1..].to_vec(), &key, &bundle).unwrap_err();
        assert!(matches!(err, BuildError::Certificate(_)), "{err:?}");
        // A chain to a root outside the bundle is unusable, whatever the key.
        let (foreign, _, _) = credential();
        let err = build(chain, &key, &foreign).unwrap_err();
        assert!(matches!(err, BuildError::Certificate(_)), "{err:?}");
        let err = build(Vec::new(), &key, &bundle).unwrap_err();
        assert!(matches!(err, BuildError::Certificate(_)), "{err:?}");
    }
}

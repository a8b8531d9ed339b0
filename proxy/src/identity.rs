//! The sidecar's identity: its certificate, key, trust bundle and revocation list, turned into
//! ready-to-use rustls configs once per credential (never per connection).
//!
//! Credentials are published on a `watch` channel ([`IdentityStore`]); every new handshake takes
//! the newest, and connections in flight keep the config they started with. This issue loads them
//! from files at start; renewal and hot reload publish on the same channel.

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

/// One loaded credential with its TLS configs.
pub struct Credentials {
    /// Our SPIFFE ID.
    pub id: SpiffeId,
    /// Our leaf's serial.
    pub serial: Serial,
    /// Our leaf's notBefore.
    pub not_before: OffsetDateTime,
    /// Our leaf's notAfter.
    pub not_after: OffsetDateTime,
    /// notAfter of the CA certificates our chain depends on (intermediate, root): past it the
    /// chain is dead even with a fresh leaf.
    pub chain_not_after: OffsetDateTime,
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
pub fn read_file(p: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(p).map_err(|e| IdentityError::Read(p.display().to_string(), e))
}

impl Credentials {
    /// Loads `[identity]` files and cross-checks them: the key must match the certificate, the
    /// certificate must be a valid, unexpired X509-SVID that chains to the bundle and is not
    /// revoked by `revocation`. Returns the CRL file's list (signature-checked against our issuing
    /// CA) for the caller to install *before* this call's revocation check matters.
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
        let creds =
            Self::build(chain, key, bundle, revocation).map_err(|(key_fault, problem)| {
                IdentityError::Invalid(
                    if key_fault {
                        name(&files.key)
                    } else {
                        name(&files.cert)
                    },
                    problem,
                )
            })?;
        Ok((creds, crl))
    }

    /// Builds credentials from a chain (leaf first), its key and a bundle. The error says whether
    /// the key (true) or the certificate (false) is at fault, and why.
    pub fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: TrustBundle,
        revocation: Arc<Revocation>,
    ) -> Result<Self, (bool, String)> {
        let leaf = tether_certs::svid::inspect_leaf(&chain[0], None)
            .map_err(|e| (false, format!("not a valid X509-SVID: {e}")))?;
        let verifier = Arc::new(SvidVerifier::new(&bundle, revocation));
        // Our own certificate must be one our peers accept: chain to the bundle, unexpired,
        // not revoked. Checked as a server certificate (EKU serverAuth), the stricter use.
        verifier
            .verify(
                &chain[0],
                &chain[1..],
                tether_certs::svid::Usage::Server,
                rustls_pki_types::UnixTime::now(),
                &ExpectedPeer::AnyInBundle,
            )
            .map_err(|e| (false, format!("our own certificate is unusable: {e}")))?;
        let client_verifier =
            SvidClientVerifier::new(verifier.clone(), ExpectedPeer::AnyInBundle, true);
        let server =
            server_config(chain.clone(), key.clone_key(), client_verifier).map_err(|e| {
                let key_fault = matches!(e, rustls::Error::InconsistentKeys(_));
                (
                    key_fault,
                    format!("key does not match the certificate or is unusable: {e}"),
                )
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
    pub fn with_bundle(
        &self,
        bundle: TrustBundle,
        revocation: Arc<Revocation>,
    ) -> Result<Self, String> {
        Self::build(self.chain.clone(), self.key.clone_key(), bundle, revocation)
            .map_err(|(_, e)| e)
    }

    /// The CA certificates of our chain (everything after the leaf).
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.chain[1..]
    }

    /// Our chain (leaf first) and key, for presenting to the CA.
    pub fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
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
    pub fn publish(&self, creds: Credentials) {
        self.tx.send_replace(Some(Arc::new(creds)));
    }

    /// A receiver that sees every publication.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Credentials>>> {
        self.tx.subscribe()
    }
}

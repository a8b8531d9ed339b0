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
    /// Our leaf's notAfter.
    pub not_after: OffsetDateTime,
    /// The trust bundle.
    pub bundle: TrustBundle,
    /// The CRL in force, if any.
    pub crl: Option<RevocationList>,
    /// The revocation set the verifiers consult (swappable without rebuilding configs).
    pub revocation: Arc<Revocation>,
    /// Inbound: TLS 1.3, client certificate required, any SVID of the bundle (policy decides).
    pub server: Arc<rustls::ServerConfig>,
    /// Inbound TCP mode uses the same server config.
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

impl Credentials {
    /// Loads and cross-checks the files: the key must match the certificate, the certificate must
    /// be a valid, unexpired X509-SVID that chains to the bundle, and the CRL (if any) must be
    /// signed by our issuing CA and must not list our own serial.
    pub fn load(files: &IdentityFiles) -> Result<Self, IdentityError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| IdentityError::Read(p.display().to_string(), e))
        };
        let name = |p: &Path| p.display().to_string();
        let chain = tether_certs::pem::certificates(&read(&files.cert)?)
            .map_err(|e| IdentityError::Invalid(name(&files.cert), e.to_string()))?;
        let key = tether_certs::pem::private_key(&read(&files.key)?)
            .map_err(|e| IdentityError::Invalid(name(&files.key), e.to_string()))?;
        let bundle = TrustBundle::from_pem(&read(&files.bundle)?)
            .map_err(|e| IdentityError::Invalid(name(&files.bundle), e.to_string()))?;
        let crl = match &files.crl {
            None => None,
            Some(p) => {
                let bytes = read(p)?;
                let issuer = chain.get(1).ok_or_else(|| {
                    IdentityError::Invalid(
                        name(&files.cert),
                        "a CRL is configured, so the certificate file must hold leaf + issuing CA (chain.pem)".into(),
                    )
                })?;
                Some(
                    RevocationList::parse_and_verify(&bytes, issuer)
                        .map_err(|e| IdentityError::Invalid(name(p), e.to_string()))?,
                )
            }
        };
        Self::build(chain, key, bundle, crl).map_err(|(which, problem)| {
            let file = match which {
                Part::Cert => name(&files.cert),
                Part::Key => name(&files.key),
                Part::Crl => files.crl.as_deref().map(name).unwrap_or_default(),
            };
            IdentityError::Invalid(file, problem)
        })
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: TrustBundle,
        crl: Option<RevocationList>,
    ) -> Result<Self, (Part, String)> {
        let leaf = tether_certs::svid::inspect_leaf(&chain[0], None)
            .map_err(|e| (Part::Cert, format!("not a valid X509-SVID: {e}")))?;
        let revocation = Revocation::new(
            crl.as_ref()
                .map(|c| c.revoked().clone())
                .unwrap_or_default(),
        );
        let verifier = Arc::new(SvidVerifier::new(&bundle, revocation.clone()));
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
            .map_err(|e| {
                (
                    if matches!(e, tether_certs::verify::VerifyError::Revoked(_)) {
                        Part::Crl
                    } else {
                        Part::Cert
                    },
                    format!("our own certificate is unusable: {e}"),
                )
            })?;
        let client_verifier =
            SvidClientVerifier::new(verifier.clone(), ExpectedPeer::AnyInBundle, true);
        let server =
            server_config(chain.clone(), key.clone_key(), client_verifier).map_err(|e| {
                let part = if matches!(e, rustls::Error::InconsistentKeys(_)) {
                    Part::Key
                } else {
                    Part::Cert
                };
                (
                    part,
                    format!("key does not match the certificate or is unusable: {e}"),
                )
            })?;
        Ok(Credentials {
            id: leaf.id,
            serial: leaf.serial,
            not_after: leaf.not_after,
            bundle,
            crl,
            revocation,
            server: Arc::new(server),
            verifier,
            chain,
            key,
            clients: Default::default(),
        })
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

enum Part {
    Cert,
    Key,
    Crl,
}

/// The publishing side of the current credentials.
#[derive(Clone)]
pub struct IdentityStore {
    tx: Arc<watch::Sender<Arc<Credentials>>>,
}

impl IdentityStore {
    /// A store holding `creds`.
    pub fn new(creds: Credentials) -> Self {
        let (tx, _) = watch::channel(Arc::new(creds));
        IdentityStore { tx: Arc::new(tx) }
    }

    /// The newest credentials (cheap: an `Arc` clone).
    pub fn current(&self) -> Arc<Credentials> {
        self.tx.borrow().clone()
    }

    /// Publishes new credentials for every new handshake.
    pub fn publish(&self, creds: Credentials) {
        self.tx.send_replace(Arc::new(creds));
    }

    /// A receiver that sees every publication.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Credentials>> {
        self.tx.subscribe()
    }
}

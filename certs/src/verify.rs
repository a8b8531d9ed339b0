//! rustls verifiers for both directions of an mTLS handshake between SPIFFE workloads.
//!
//! On top of webpki's chain validation (signature path to a root, validity period, EKU) each
//! verifier enforces what a mesh relies on:
//! 1. the X509-SVID leaf rules ([`crate::svid`]), which webpki alone does not check;
//! 2. the leaf's trust domain is the one of the roots that validated it — the chain is built only
//!    against the roots of the trust domain the leaf names;
//! 3. the peer's SPIFFE ID is one of the expected ones ([`ExpectedPeer`]);
//! 4. the leaf's serial is not revoked ([`Revocation`], shared and swappable so a new CRL applies
//!    to the next handshake without rebuilding the TLS config).
//!
//! webpki's answer for an accepted chain is remembered while it is valid (`verify/chain.rs`:
//! peers reconnect with one chain many times); everything else is checked on every handshake.
//!
//! Failures become `rustls::Error`s that [`failure_reason`] maps back to a short label for
//! metrics (`unknown_ca`, `expired`, `revoked`, `bad_svid`, `identity_mismatch`, …).

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
// A renamed import, not a type alias, so the public signatures still document `CertificateDer`.
use rustls_pki_types::CertificateDer as Der;

use crate::bundle::TrustBundle;
use crate::crl::RevokedSet;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{inspect_leaf, LeafInfo, SvidError, Usage};

mod chain;
use chain::VerifiedChains;

/// Which peer identities a verifier admits.
#[derive(Debug, Clone)]
pub enum ExpectedPeer {
    /// Any valid SVID from a trust domain in the bundle (authorization happens later, e.g. by
    /// policy on the inbound side, or by the CA on renewal).
    AnyInBundle,
    /// Exactly one of these SPIFFE IDs (outbound: the service's configured identity).
    OneOf(Arc<[SpiffeId]>),
}

/// Why a peer certificate was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// The leaf breaks an X509-SVID rule.
    #[error("peer certificate is not a valid X509-SVID: {0}")]
    BadSvid(#[from] SvidError),
    /// No root of the leaf's trust domain, or the chain does not reach one.
    #[error("peer certificate does not chain to a trusted root of trust domain {0}")]
    UnknownCa(String),
    /// Outside its validity period.
    #[error("peer certificate is expired or not yet valid")]
    Expired,
    /// The serial is on the revocation list.
    #[error("peer certificate {0} is revoked")]
    Revoked(String),
    /// A valid SVID, but not one the caller expected.
    #[error("peer presented {got}, expected {expected}")]
    IdentityMismatch {
        /// The ID in the certificate.
        got: String,
        /// The IDs that would have been accepted.
        expected: String,
    },
    /// Any other chain failure (bad signature, bad encoding, wrong EKU …).
    #[error("peer certificate chain is invalid: {0}")]
    Chain(String),
}

impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        // Standard variants where one fits, so peers get the matching TLS alert; our own error
        // inside `Other` otherwise, so `failure_reason` can still tell the cases apart.
        let ce = match &e {
            VerifyError::UnknownCa(_) => CertificateError::UnknownIssuer,
            VerifyError::Expired => CertificateError::Expired,
            VerifyError::Revoked(_) => CertificateError::Revoked,
            _ => CertificateError::Other(OtherError(Arc::new(e))),
        };
        rustls::Error::InvalidCertificate(ce)
    }
}

/// A short label for why a handshake failed, for metrics and logs: `no_cert`, `unknown_ca`,
/// `expired`, `revoked`, `bad_svid`, `identity_mismatch`, `bad_chain`, or `tls` for anything
/// that is not about the peer's certificate.
pub fn failure_reason(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::NoCertificatesPresented => "no_cert",
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "expired",
            CertificateError::Revoked => "revoked",
            CertificateError::Other(OtherError(inner)) => {
                match inner.downcast_ref::<VerifyError>() {
                    Some(VerifyError::BadSvid(_)) => "bad_svid",
                    Some(VerifyError::IdentityMismatch { .. }) => "identity_mismatch",
                    _ => "bad_chain",
                }
            }
            _ => "bad_chain",
        },
        _ => "tls",
    }
}

/// The revocation set a verifier consults, shared between the verifiers and whoever refreshes
/// the CRL. Replacing it applies to the next handshake; readers never block each other.
#[derive(Debug, Default)]
pub struct Revocation {
    current: RwLock<Arc<RevokedSet>>,
}

impl Revocation {
    /// A handle holding `set`.
    pub fn new(set: RevokedSet) -> Arc<Self> {
        Arc::new(Revocation {
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// Swaps in a new set (for example from a newer CRL).
    pub fn replace(&self, set: RevokedSet) {
        // A poisoned lock only means a writer panicked mid-swap of an Arc, which cannot leave
        // the Arc half-written: keep using it.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// The current set.
    pub fn snapshot(&self) -> Arc<RevokedSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the serial with these big-endian bytes is revoked. O(1), no allocation.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_bytes(serial)
    }
}

/// Chain + SVID + identity + revocation checks, shared by both rustls verifiers.
#[derive(Debug)]
pub struct SvidVerifier {
    anchors: Vec<(TrustDomain, Vec<TrustAnchor<'static>>)>,
    revocation: Arc<Revocation>,
    chains: VerifiedChains,
}

impl SvidVerifier {
    /// A verifier trusting `bundle`'s roots and consulting `revocation`.
    pub fn new(bundle: &TrustBundle, revocation: Arc<Revocation>) -> Self {
        let mut anchors: Vec<(TrustDomain, Vec<TrustAnchor<'static>>)> = Vec::new();
        for root in bundle.roots() {
            // The bundle already parsed each root, so webpki accepting it is the normal case; a
            // root webpki cannot use is simply not an anchor (fail closed).
            let Ok(anchor) = webpki::anchor_from_trusted_cert(&root.der) else {
                continue;
            };
            let anchor = anchor.to_owned();
            match anchors.iter_mut().find(|(td, _)| *td == root.trust_domain) {
                Some((_, list)) => list.push(anchor),
                None => anchors.push((root.trust_domain.clone(), vec![anchor])),
            }
        }
        SvidVerifier {
            anchors,
            revocation,
            chains: VerifiedChains::default(),
        }
    }

    /// Verifies a peer's chain for `usage` at `now` and returns what its leaf says.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: Usage,
        now: UnixTime,
        expected: &ExpectedPeer,
    ) -> Result<LeafInfo, VerifyError> {
        let leaf = inspect_leaf(end_entity, Some(usage))?;
        let td = leaf.id.trust_domain_name();
        let anchors = self
            .anchors
            .iter()
            .find(|(d, _)| d.as_str() == td)
            .map(|(_, a)| a.as_slice())
            .ok_or_else(|| VerifyError::UnknownCa(td.to_string()))?;
        self.chains
            .check(anchors, end_entity, intermediates, usage, now, &leaf)?;
        if let ExpectedPeer::OneOf(ids) = expected {
            if !ids.contains(&leaf.id) {
                let expected = ids
                    .iter()
                    .map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ");
                return Err(VerifyError::IdentityMismatch {
                    got: leaf.id.to_string(),
                    expected,
                });
            }
        }
        if self.revocation.is_revoked(leaf.serial.as_bytes()) {
            return Err(VerifyError::Revoked(leaf.serial.to_string()));
        }
        Ok(leaf)
    }

    /// How many accepted chains this verifier remembers (see the `chain` module: a chain seen
    /// again skips webpki's signature checks, never the SVID, identity and revocation ones).
    pub fn remembered_chains(&self) -> usize {
        self.chains.len()
    }
}

/// Checks a TLS 1.2 handshake signature with Tether's provider: the proof that the peer holds the
/// key of the certificate it sent. Shared by every verifier, including ones that judge the
/// certificate itself elsewhere (the CA API).
pub fn verify_tls12(message: &[u8], cert: &Der, dss: &DigitallySignedStruct) -> SignatureResult {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
}

/// The TLS 1.3 counterpart of [`verify_tls12`].
pub fn verify_tls13(message: &[u8], cert: &Der, dss: &DigitallySignedStruct) -> SignatureResult {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
}

/// The signature schemes [`verify_tls12`] and [`verify_tls13`] accept.
pub fn supported_schemes() -> Vec<SignatureScheme> {
    algorithms().supported_schemes()
}

/// The signature algorithms of Tether's provider.
fn algorithms() -> WebPkiSupportedAlgorithms {
    crate::provider().signature_verification_algorithms
}

/// Implements the three handshake-signature methods of rustls' `ClientCertVerifier` or
/// `ServerCertVerifier` with [`verify_tls12`](crate::verify::verify_tls12),
/// [`verify_tls13`](crate::verify::verify_tls13) and
/// [`supported_schemes`](crate::verify::supported_schemes); use it inside the `impl` block.
/// Every verifier in the workspace checks signatures this way and differs only in how it judges
/// the certificate, and the two traits declare these methods separately, so the methods are
/// written once here.
#[macro_export]
macro_rules! check_handshake_signatures {
    () => {
        $crate::check_handshake_signatures!(verify_tls12_signature => verify_tls12);
        $crate::check_handshake_signatures!(verify_tls13_signature => verify_tls13);

        fn supported_verify_schemes(&self) -> ::std::vec::Vec<::rustls::SignatureScheme> {
            $crate::verify::supported_schemes()
        }
    };
    // One signature method (the TLS 1.2 and 1.3 ones differ only in their names).
    ($method:ident => $check:ident) => {
        fn $method(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> $crate::verify::SignatureResult {
            $crate::verify::$check(message, cert, dss)
        }
    };
}

/// What a handshake-signature check answers.
pub type SignatureResult = Result<HandshakeSignatureValid, rustls::Error>;

// Short names that keep the verifiers' certificate checks readable.
type ClientVerdict = Result<ClientCertVerified, rustls::Error>;
type ServerVerdict = Result<ServerCertVerified, rustls::Error>;

/// Verifies client certificates on a TLS server (inbound sidecar, CA API).
#[derive(Debug)]
pub struct SvidClientVerifier {
    core: Arc<SvidVerifier>,
    expected: ExpectedPeer,
    mandatory: bool,
}

impl SvidClientVerifier {
    /// A client verifier. `mandatory = false` lets clients without a certificate finish the
    /// handshake (the CA's enrollment endpoint needs that); a certificate that *is* presented is
    /// still fully verified.
    pub fn new(core: Arc<SvidVerifier>, expected: ExpectedPeer, mandatory: bool) -> Arc<Self> {
        Arc::new(SvidClientVerifier {
            core,
            expected,
            mandatory,
        })
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(&self, leaf: &Der, chain: &[Der], now: UnixTime) -> ClientVerdict {
        self.core
            .verify(leaf, chain, Usage::Client, now, &self.expected)?;
        Ok(ClientCertVerified::assertion())
    }

    crate::check_handshake_signatures!();
}

/// Verifies the server's certificate on a TLS client (outbound sidecar).
///
/// The TLS server name is ignored: a mesh peer is identified by the SPIFFE ID in its SVID, which
/// must be one of `expected`, not by a DNS name.
#[derive(Debug)]
pub struct SvidServerVerifier {
    core: Arc<SvidVerifier>,
    expected: ExpectedPeer,
}

impl SvidServerVerifier {
    /// A server verifier admitting `expected`.
    pub fn new(core: Arc<SvidVerifier>, expected: ExpectedPeer) -> Arc<Self> {
        Arc::new(SvidServerVerifier { core, expected })
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        leaf: &Der,
        chain: &[Der],
        _server_name: &ServerName,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> ServerVerdict {
        self.core
            .verify(leaf, chain, Usage::Server, now, &self.expected)?;
        Ok(ServerCertVerified::assertion())
    }

    crate::check_handshake_signatures!();
}

/// A TLS 1.3-only server config for mesh traffic: the cipher suite by Tether's order, not the
/// client's ([`crate::provider`]), ALPN h2 + http/1.1, no session resumption (rustls does not
/// re-verify a resumed peer, so resumption would bypass revocation), no 0-RTT.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    client_verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// A TLS 1.3-only client config presenting `chain`/`key` and verifying the server with
/// `server_verifier`; no resumption, no early data.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    server_verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

//! Key and CSR generation for the side that holds the private key (a sidecar or the CLI).
//!
//! Keys are ECDSA P-256: small certificates, fast handshakes with aws-lc-rs, and accepted by every
//! SPIFFE implementation. The private key never leaves the process that generated it; only the
//! CSR (which carries the public key) is sent to the CA.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

use crate::spiffe::SpiffeId;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The crypto library refused (should not happen with a working RNG).
    #[error("key generation failed: {0}")]
    Generate(rcgen::Error),
    /// The CSR could not be built or signed.
    #[error("could not build CSR: {0}")]
    Csr(rcgen::Error),
    /// A stored key could not be read.
    #[error("unreadable private key: {0}")]
    Parse(rcgen::Error),
}

/// A fresh ECDSA P-256 key pair.
pub fn generate_key() -> Result<KeyPair, KeyError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(KeyError::Generate)
}

/// Reads a PKCS#8 PEM private key as written by [`KeyPair::serialize_pem`].
pub fn key_from_pem(pem: &str) -> Result<KeyPair, KeyError> {
    KeyPair::from_pem(pem).map_err(KeyError::Parse)
}

/// A PEM CSR for `key` that names no identity: for enrollment, where the token decides the
/// identity and the sidecar may not know it yet.
pub fn generate_anonymous_csr(key: &KeyPair) -> Result<String, KeyError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(KeyError::Csr)
}

/// A PEM CSR for `key`, naming `id` as its URI SAN.
///
/// The SAN is a courtesy for humans reading the CSR: the CA decides the identity from the
/// enrollment token or the caller's current certificate and ignores what the CSR asks for.
pub fn generate_csr(key: &KeyPair, id: &SpiffeId) -> Result<String, KeyError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id.as_str().to_string().try_into().map_err(KeyError::Csr)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(KeyError::Csr)
}

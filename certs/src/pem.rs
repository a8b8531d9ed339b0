//! PEM helpers: split PEM text into DER blocks by label, and print DER back as PEM.
//!
//! Every input that reaches these functions may come from a file or the network, so they return
//! errors instead of panicking and never accept a block whose label is not the one asked for.

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM input was refused.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The text is not PEM, or a block is malformed.
    #[error("malformed PEM: {0}")]
    Malformed(String),
    /// No block with the wanted label was found.
    #[error("no {0} found in PEM input")]
    Missing(&'static str),
}

/// Every `CERTIFICATE` block in `pem`, in order; errors if there is none.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Missing("CERTIFICATE"));
    }
    Ok(certs)
}

/// Every `CERTIFICATE` in `pem` as TLS trust anchors (a CA file that verifies a server, such
/// as PostgreSQL's `sslrootcert` or the CA's `--k8s-jwks-ca`); errors if there is none or one
/// is not a usable anchor.
pub fn root_store(pem: &[u8]) -> Result<rustls::RootCertStore, PemError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem)? {
        roots
            .add(cert)
            .map_err(|e| PemError::Malformed(e.to_string()))?;
    }
    Ok(roots)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::Missing("PRIVATE KEY"),
        other => PemError::Malformed(other.to_string()),
    })
}

/// The DER of the first block labelled `label` (for example `X509 CRL`).
pub fn block(pem: &[u8], label: &'static str) -> Result<Vec<u8>, PemError> {
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| PemError::Malformed(e.to_string()))?;
        if kind_label(kind) == Some(label) {
            return Ok(der);
        }
    }
    Err(PemError::Missing(label))
}

fn kind_label(kind: SectionKind) -> Option<&'static str> {
    match kind {
        SectionKind::Certificate => Some("CERTIFICATE"),
        SectionKind::Crl => Some("X509 CRL"),
        SectionKind::Csr => Some("CERTIFICATE REQUEST"),
        SectionKind::PrivateKey => Some("PRIVATE KEY"),
        SectionKind::EcPrivateKey => Some("EC PRIVATE KEY"),
        _ => None,
    }
}

/// `der` as a PEM block with `label`, lines of 64 characters, ending in a newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

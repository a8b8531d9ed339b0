//! The X509-SVID leaf rules, applied to a DER certificate.
//!
//! rustls/webpki validates the chain but happily accepts a leaf with two URI SANs, or a cA=false
//! leaf that may sign certificates. The X509-SVID spec forbids both, so every peer certificate
//! passes through [`inspect_leaf`] as well: exactly one URI SAN that is a valid SPIFFE ID with a
//! path, explicit basicConstraints cA=false, key usage present with digitalSignature and without
//! keyCertSign/cRLSign, and, if an EKU is present, the usage the handshake needs.

use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::serial::Serial;
use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Which side of a TLS handshake a leaf is presented for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A client certificate (EKU clientAuth).
    Client,
    /// A server certificate (EKU serverAuth).
    Server,
}

/// Which X509-SVID rule a certificate broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// Not a parseable X.509 certificate.
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    /// Zero or several URI SANs.
    #[error("an X509-SVID has exactly one URI SAN; this certificate has {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    BadId(SpiffeIdError),
    /// The SPIFFE ID names a trust domain, not a workload.
    #[error("SPIFFE ID {0} has no path; a leaf SVID must name a workload")]
    NoPath(String),
    /// basicConstraints missing or cA=true.
    #[error("a leaf SVID must carry basicConstraints with cA=false")]
    NotLeaf,
    /// Key usage missing, without digitalSignature, or with a CA bit.
    #[error("leaf key usage must include digitalSignature and exclude keyCertSign/cRLSign")]
    KeyUsage,
    /// An EKU is present without the usage this handshake needs.
    #[error("extended key usage does not allow {0:?} authentication")]
    ExtendedKeyUsage(Usage),
}

/// What a verified leaf says about its holder.
#[derive(Debug, Clone)]
pub struct LeafInfo {
    /// The SPIFFE ID from the URI SAN.
    pub id: SpiffeId,
    /// The serial, normalized.
    pub serial: Serial,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

/// Applies the X509-SVID leaf rules to `der` and returns what it names. `usage` adds the EKU
/// check for one side of a handshake; `None` checks the shape only.
pub fn inspect_leaf(der: &[u8], usage: Option<Usage>) -> Result<LeafInfo, SvidError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let mut uris = Vec::new();
    let mut basic_ca = None;
    let mut key_usage_ok = false;
    let mut eku_ok = true;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push(*uri);
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => basic_ca = Some(bc.ca),
            ParsedExtension::KeyUsage(ku) => {
                key_usage_ok = ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                eku_ok = match usage {
                    Some(Usage::Client) => eku.client_auth || eku.any,
                    Some(Usage::Server) => eku.server_auth || eku.any,
                    None => true,
                };
            }
            ParsedExtension::ParseError { error } => {
                return Err(SvidError::Malformed(format!(
                    "extension {}: {error}",
                    ext.oid
                )))
            }
            _ => {}
        }
    }
    if basic_ca != Some(false) {
        return Err(SvidError::NotLeaf);
    }
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    let id = SpiffeId::parse(uris[0]).map_err(SvidError::BadId)?;
    if id.is_trust_domain_id() {
        return Err(SvidError::NoPath(id.to_string()));
    }
    if !key_usage_ok {
        return Err(SvidError::KeyUsage);
    }
    if let (false, Some(u)) = (eku_ok, usage) {
        return Err(SvidError::ExtendedKeyUsage(u));
    }
    Ok(LeafInfo {
        id,
        serial: Serial::from_bytes(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

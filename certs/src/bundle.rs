//! `TrustBundle`: the roots a peer certificate is checked against.
//!
//! A bundle holds one or more roots; during a root rotation it holds the old and the new so that
//! leaves from either chain verify and nothing has to restart. Each root speaks for the trust
//! domain named in its URI SAN (`spiffe://<trust-domain>`), which is how a verifier makes sure a
//! leaf's trust domain is the one of the root that validated it.

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::spiffe::{SpiffeId, TrustDomain};

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The PEM text is malformed or holds no certificate.
    #[error("trust bundle: {0}")]
    Pem(#[from] crate::pem::PemError),
    /// A certificate does not parse.
    #[error("trust bundle certificate {index} does not parse: {reason}")]
    Malformed {
        /// 0-based position in the bundle.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// A certificate is not a CA or names no trust domain.
    #[error("trust bundle certificate {index} ({subject}) {problem}")]
    NotARoot {
        /// 0-based position in the bundle.
        index: usize,
        /// Its subject, for the operator.
        subject: String,
        /// What is wrong.
        problem: &'static str,
    },
}

/// One root of a bundle.
#[derive(Debug, Clone)]
pub struct Root {
    /// The certificate.
    pub der: CertificateDer<'static>,
    /// The trust domain it speaks for.
    pub trust_domain: TrustDomain,
    /// SHA-256 of the DER, lowercase hex: how operators name a root (`root retire`).
    pub fingerprint: String,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

/// A set of trusted roots.
#[derive(Debug, Clone, Default)]
pub struct TrustBundle {
    roots: Vec<Root>,
}

impl TrustBundle {
    /// Reads every `CERTIFICATE` in `pem`; each must be a CA with a trust-domain URI SAN.
    pub fn from_pem(pem: &[u8]) -> Result<Self, BundleError> {
        let mut bundle = TrustBundle::default();
        // Errors name the certificate's position in the input, which is what the operator sees.
        for (index, der) in crate::pem::certificates(pem)?.into_iter().enumerate() {
            bundle.insert(inspect_root(index, der)?);
        }
        Ok(bundle)
    }

    /// Adds a root (ignored if the same certificate is already present).
    pub fn push(&mut self, der: CertificateDer<'static>) -> Result<(), BundleError> {
        let root = inspect_root(self.roots.len(), der)?;
        self.insert(root);
        Ok(())
    }

    fn insert(&mut self, root: Root) {
        if !self.roots.iter().any(|r| r.fingerprint == root.fingerprint) {
            self.roots.push(root);
        }
    }

    /// Removes the root with this fingerprint; returns whether one was removed.
    pub fn remove(&mut self, fingerprint: &str) -> bool {
        let before = self.roots.len();
        self.roots
            .retain(|r| !r.fingerprint.eq_ignore_ascii_case(fingerprint));
        before != self.roots.len()
    }

    /// The roots, in bundle order.
    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    /// Whether `ca_der` is a CA certificate, valid at `now`, directly signed by one of the roots
    /// (or is itself one of them): how a reader decides to trust the intermediate that signed a
    /// CRL it fetched.
    pub fn vouches_for(&self, ca_der: &[u8], now: OffsetDateTime) -> bool {
        let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(ca_der) else {
            return false;
        };
        let valid = cert.validity().not_before.to_datetime() <= now
            && now <= cert.validity().not_after.to_datetime();
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !valid || !is_ca {
            return false;
        }
        self.roots.iter().any(|root| {
            if root.der.as_ref() == ca_der {
                return true;
            }
            let Ok((_, r)) = x509_parser::certificate::X509Certificate::from_der(&root.der) else {
                return false;
            };
            r.subject().as_raw() == cert.issuer().as_raw()
                && cert.verify_signature(Some(r.public_key())).is_ok()
        })
    }

    /// The bundle as PEM, one certificate per root.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| crate::pem::encode("CERTIFICATE", &r.der))
            .collect()
    }

    /// Number of roots.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// Whether the bundle holds no root (then nothing verifies: fail closed).
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// SHA-256 of `der` as lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn inspect_root(index: usize, der: CertificateDer<'static>) -> Result<Root, BundleError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).map_err(|e| {
        BundleError::Malformed {
            index,
            reason: e.to_string(),
        }
    })?;
    let subject = cert.subject().to_string();
    let not_root = |problem| BundleError::NotARoot {
        index,
        subject: subject.clone(),
        problem,
    };
    let mut is_ca = false;
    let mut td = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        if let Ok(id) = SpiffeId::parse(uri) {
                            td = Some(id.trust_domain());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !is_ca {
        return Err(not_root(
            "is not a CA certificate (basicConstraints cA=true)",
        ));
    }
    let trust_domain = td.ok_or_else(|| not_root("has no spiffe://<trust-domain> URI SAN"))?;
    Ok(Root {
        fingerprint: fingerprint(&der),
        not_after: cert.validity().not_after.to_datetime(),
        trust_domain,
        der,
    })
}

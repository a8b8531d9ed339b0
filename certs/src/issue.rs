//! The CA hierarchy and the leaf issuance policy.
//!
//! A [`Signer`] is a CA certificate plus its key. Roots and intermediates are made here; leaves are
//! built by [`Signer::issue_leaf`] from the *authorized* identity only. rcgen's CSR parser copies
//! whatever a CSR asks for (SANs, key usages, EKU, even CA:TRUE), so a CSR contributes nothing but
//! its public key: [`parse_csr`] checks the CSR's signature and returns that key alone.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use crate::serial::Serial;
use crate::spiffe::{SpiffeId, TrustDomain};

/// How far notBefore is backdated, so a peer whose clock is a little behind the CA's still
/// accepts a certificate issued a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR is not DER/PEM, or its structure is broken.
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    /// The CSR's self-signature does not verify: whoever sent it does not hold the key.
    #[error("CSR signature does not verify")]
    BadCsrSignature,
    /// The CSR's key is not ECDSA P-256.
    #[error("CSR key must be ECDSA P-256, got {0}")]
    UnsupportedKey(String),
    /// The identity cannot be issued (for example the bare trust domain ID).
    #[error("cannot issue {0}: {1}")]
    Identity(String, &'static str),
    /// The signer has expired or the requested lifetime is empty.
    #[error("no lifetime left: {0}")]
    Lifetime(&'static str),
    /// The CA certificate or key could not be read.
    #[error("unreadable CA material: {0}")]
    CaMaterial(String),
    /// rcgen refused to build or sign.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A CA certificate and its private key, ready to sign leaves, CA certificates or CRLs.
pub struct Signer {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    subject_der: Vec<u8>,
}

/// A leaf issued by [`Signer::issue_leaf`].
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    /// The certificate.
    pub der: CertificateDer<'static>,
    /// Its random serial.
    pub serial: Serial,
    /// notBefore (backdated by [`CLOCK_SKEW`]).
    pub not_before: OffsetDateTime,
    /// notAfter after every cap was applied.
    pub not_after: OffsetDateTime,
    /// Set when notAfter was cut to the issuer's notAfter: the CA says so to the caller.
    pub shortened_to_issuer: bool,
}

impl Signer {
    /// A signer from a CA certificate and its key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IssueError> {
        let cert = crate::pem::certificates(cert_pem.as_bytes())
            .map_err(|e| IssueError::CaMaterial(e.to_string()))?
            .remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| IssueError::CaMaterial(e.to_string()))?;
        Self::from_der(cert, key)
    }

    /// A signer from a DER CA certificate and its key.
    pub fn from_der(cert: CertificateDer<'static>, key: KeyPair) -> Result<Self, IssueError> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&cert)
            .map_err(|e| IssueError::CaMaterial(e.to_string()))?;
        // A key that is not the certificate's would sign certificates and CRLs nobody can verify.
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(IssueError::CaMaterial(
                "the private key does not belong to the CA certificate".into(),
            ));
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let subject_der = parsed.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| IssueError::CaMaterial(e.to_string()))?;
        Ok(Signer {
            cert,
            issuer,
            not_after,
            subject_der,
        })
    }

    /// The CA certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        crate::pem::encode("CERTIFICATE", &self.cert)
    }

    /// The CA certificate's notAfter: nothing it signs may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The DER of the CA certificate's subject name (a CRL's issuer must equal it).
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Issues an X509-SVID leaf for `id` over `public_key`.
    ///
    /// The policy: exactly one URI SAN (`id`), explicit basicConstraints cA=false, key usage
    /// digitalSignature (critical), EKU serverAuth + clientAuth, a random serial, notBefore
    /// backdated by [`CLOCK_SKEW`], notAfter = min(now + ttl, now + max_ttl, issuer's notAfter).
    pub fn issue_leaf(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        ttl: Duration,
        max_ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedLeaf, IssueError> {
        if id.is_trust_domain_id() {
            return Err(IssueError::Identity(
                id.to_string(),
                "a workload ID needs a path",
            ));
        }
        let lifetime = ttl.min(max_ttl);
        if lifetime.is_zero() {
            return Err(IssueError::Lifetime("the requested lifetime is empty"));
        }
        // A lifetime past what a date can hold is capped by the issuer like any other.
        let wanted = add(now, lifetime);
        let shortened_to_issuer = wanted.is_none_or(|w| w > self.not_after);
        let not_after = wanted.map_or(self.not_after, |w| w.min(self.not_after));
        if not_after <= now {
            return Err(IssueError::Lifetime(
                "the issuing CA certificate has expired",
            ));
        }
        let not_before = now - CLOCK_SKEW;
        let serial = Serial::random();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // An empty subject makes rcgen mark the SAN critical, as RFC 5280 4.2.1.6 requires.
        params.subject_alt_names = vec![SanType::URI(id.as_str().to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedLeaf {
            der: cert.der().clone(),
            serial,
            not_before,
            not_after,
            shortened_to_issuer,
        })
    }

    /// Issues a TLS server certificate (DNS/IP SANs, serverAuth) for the CA's own API.
    pub fn issue_server(
        &self,
        key: &KeyPair,
        sans: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedLeaf, IssueError> {
        let serial = Serial::random();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "tether-ca API");
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = now - CLOCK_SKEW;
        let wanted = add(now, ttl);
        params.not_after = wanted.map_or(self.not_after, |w| w.min(self.not_after));
        if params.not_after <= now {
            return Err(IssueError::Lifetime(
                "the issuing CA certificate has expired or the lifetime is empty",
            ));
        }
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(IssuedLeaf {
            der: cert.der().clone(),
            serial,
            not_before: params.not_before,
            not_after: params.not_after,
            shortened_to_issuer: wanted.is_none_or(|w| w > self.not_after),
        })
    }

    /// Issues an intermediate CA (path length 0) for `td`, signed by this signer.
    pub fn issue_intermediate(
        &self,
        td: &TrustDomain,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(Signer, KeyPair), IssueError> {
        let (_, key, signer) = self.new_intermediate(td, ttl, now)?;
        Ok((signer, key))
    }

    /// Like [`Signer::issue_intermediate`], and also returns a *cross-certificate*: the same
    /// intermediate (same subject, same key, its own serial) certified by `also_by`, valid no
    /// longer than `also_by`. During a root rotation a chain that carries it verifies against
    /// `also_by`'s root as well as this one, so peers that do not have the new root yet still
    /// accept what the new intermediate signs (leaves, CRLs, the CA's own TLS certificate).
    pub fn issue_intermediate_cross_signed(
        &self,
        td: &TrustDomain,
        ttl: Duration,
        now: OffsetDateTime,
        also_by: &Signer,
    ) -> Result<(Signer, KeyPair, CertificateDer<'static>), IssueError> {
        let (mut params, key, signer) = self.new_intermediate(td, ttl, now)?;
        // Same subject and key (so it names the same issuer for everything the intermediate
        // signs), a serial of its own, and never past the certifying root.
        params.serial_number = Some(SerialNumber::from_slice(Serial::random().as_bytes()));
        params.not_after = params.not_after.min(also_by.not_after);
        let cross = params.signed_by(&key, &also_by.issuer)?;
        Ok((signer, key, cross.der().clone()))
    }

    /// A new intermediate for `td` (path length 0, never past this signer) certified by this
    /// signer: its params (kept so a cross-certificate can repeat its subject), key and signer.
    fn new_intermediate(
        &self,
        td: &TrustDomain,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(CertificateParams, KeyPair, Signer), IssueError> {
        let key = crate::keys::generate_key().map_err(|e| IssueError::CaMaterial(e.to_string()))?;
        let mut params = ca_params(td, "intermediate", ttl, now)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.not_after = params.not_after.min(self.not_after);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let signer = Signer::from_der(cert.der().clone(), clone_key(&key)?)?;
        Ok((params, key, signer))
    }
}

/// A new self-signed root CA for `td` (path length 1: root → intermediate → leaf).
pub fn new_root(
    td: &TrustDomain,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<(Signer, KeyPair), IssueError> {
    let key = crate::keys::generate_key().map_err(|e| IssueError::CaMaterial(e.to_string()))?;
    let mut params = ca_params(td, "root", ttl, now)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let cert = params.self_signed(&key)?;
    let signer = Signer::from_der(cert.der().clone(), clone_key(&key)?)?;
    Ok((signer, key))
}

fn clone_key(key: &KeyPair) -> Result<KeyPair, IssueError> {
    KeyPair::from_pem(&key.serialize_pem()).map_err(|e| IssueError::CaMaterial(e.to_string()))
}

/// Params shared by roots and intermediates. The trust domain's own SPIFFE ID goes in the URI SAN
/// so a bundle can tell which trust domain each root speaks for (SPIFFE signing certificates may
/// carry it, and SPIRE's do).
fn ca_params(
    td: &TrustDomain,
    role: &str,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tether");
    let serial = Serial::random();
    // Chain building and CRL issuer matching go by name, so two CAs must never share one, not
    // even two of one trust domain created in the same second: part of the random serial makes
    // the name unique.
    let hex = serial.to_string();
    let cn = format!(
        "Tether {role} CA {td} {} {}",
        now.unix_timestamp(),
        &hex[hex.len().saturating_sub(8)..]
    );
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = vec![SanType::URI(td.id().as_str().to_string().try_into()?)];
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    params.not_before = now - CLOCK_SKEW;
    params.not_after = add(now, ttl).ok_or(IssueError::Lifetime(
        "the requested CA lifetime is too long",
    ))?;
    Ok(params)
}

/// `now + d`, or `None` when the result is past what a date can hold (user-supplied lifetimes
/// must not panic).
fn add(now: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d))
}

/// The public key of a CSR (PEM or DER), after checking its self-signature and key type.
///
/// Everything else in the CSR (subject, SANs, key usages, basic constraints, extensions) is
/// deliberately dropped: the CA decides what a leaf says.
pub fn parse_csr(input: &[u8]) -> Result<SubjectPublicKeyInfo, IssueError> {
    let der = if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        crate::pem::block(input, "CERTIFICATE REQUEST")
            .map_err(|e| IssueError::MalformedCsr(e.to_string()))?
    } else {
        input.to_vec()
    };
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| IssueError::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IssueError::MalformedCsr(
            "trailing bytes after the CSR".into(),
        ));
    }
    csr.verify_signature()
        .map_err(|_| IssueError::BadCsrSignature)?;
    let spki = &csr.certification_request_info.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    // id-ecPublicKey on prime256v1.
    if alg != "1.2.840.10045.2.1" || curve.as_deref() != Some("1.2.840.10045.3.1.7") {
        return Err(IssueError::UnsupportedKey(match curve {
            Some(c) => format!("{alg} ({c})"),
            None => alg,
        }));
    }
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| IssueError::MalformedCsr(e.to_string()))
}

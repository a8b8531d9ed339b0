//! Certificate revocation lists: built and signed by the CA, parsed and verified by everyone else.
//!
//! A CRL is the revocation cache's unit of exchange. Its CRL number only ever grows, so a reader
//! can refuse a rollback; its signature must verify against the issuing CA certificate and its
//! issuer name must equal that certificate's subject. Freshness (nextUpdate) is reported rather
//! than enforced at parse time, because what a stale CRL means is the reader's policy (fail
//! closed or fail open), not the parser's.

use std::collections::HashSet;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use crate::issue::Signer;
use crate::serial::{normalize, Serial};

/// Why a CRL was refused.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// Not a DER/PEM CRL.
    #[error("malformed CRL: {0}")]
    Malformed(String),
    /// The CRL names another issuer than the certificate it was checked against.
    #[error("CRL issuer {crl} is not the expected issuer {expected}")]
    WrongIssuer {
        /// Issuer named in the CRL.
        crl: String,
        /// Subject of the CA certificate it was checked against.
        expected: String,
    },
    /// The signature does not verify with the issuer's key.
    #[error("CRL signature does not verify against the issuer's key")]
    BadSignature,
    /// The CRL has no CRL number extension, or one that does not fit in 64 bits.
    #[error("CRL has no usable CRL number")]
    NoNumber,
    /// The CRL has no nextUpdate, so nobody could tell when it goes stale.
    #[error("CRL has no nextUpdate")]
    NoNextUpdate,
    /// Signing failed at the CA.
    #[error("could not sign CRL: {0}")]
    Sign(#[from] rcgen::Error),
}

/// One revoked certificate, as the CA records it.
#[derive(Debug, Clone)]
pub struct CrlEntry {
    /// The revoked serial.
    pub serial: Serial,
    /// When the CA processed the revocation.
    pub revoked_at: OffsetDateTime,
    /// Why, if the operator said.
    pub reason: Option<Reason>,
}

/// RFC 5280 revocation reasons, by the names the CLI accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `unspecified`
    Unspecified,
    /// `key-compromise`
    KeyCompromise,
    /// `ca-compromise`
    CaCompromise,
    /// `affiliation-changed`
    AffiliationChanged,
    /// `superseded`
    Superseded,
    /// `cessation-of-operation`
    CessationOfOperation,
    /// `privilege-withdrawn`
    PrivilegeWithdrawn,
}

impl Reason {
    const ALL: [(&'static str, Reason); 7] = [
        ("unspecified", Reason::Unspecified),
        ("key-compromise", Reason::KeyCompromise),
        ("ca-compromise", Reason::CaCompromise),
        ("affiliation-changed", Reason::AffiliationChanged),
        ("superseded", Reason::Superseded),
        ("cessation-of-operation", Reason::CessationOfOperation),
        ("privilege-withdrawn", Reason::PrivilegeWithdrawn),
    ];

    /// The CLI name of this reason.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map(|(n, _)| *n)
            .unwrap_or("unspecified")
    }

    fn to_rcgen(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CaCompromise => RevocationReason::CaCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown revocation reason {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Builds and signs a CRL with `number` listing `entries`.
pub fn build(
    signer: &Signer,
    number: u64,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    entries: &[CrlEntry],
) -> Result<Vec<u8>, CrlError> {
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(e.serial.as_bytes()),
                revocation_time: e.revoked_at,
                reason_code: e.reason.map(Reason::to_rcgen),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(signer.issuer())?.der().to_vec())
}

/// A set of revoked serials with O(1), allocation-free lookups.
#[derive(Debug, Clone, Default)]
pub struct RevokedSet(HashSet<Box<[u8]>>);

impl RevokedSet {
    /// Whether `serial` is revoked.
    pub fn contains(&self, serial: &Serial) -> bool {
        self.0.contains(serial.as_bytes())
    }

    /// Whether the serial with these big-endian bytes (as found in a certificate, possibly padded
    /// with a leading zero) is revoked.
    pub fn contains_bytes(&self, serial: &[u8]) -> bool {
        self.0.contains(normalize(serial))
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a serial.
    pub fn insert(&mut self, serial: &Serial) {
        self.0.insert(serial.as_bytes().into());
    }
}

/// A parsed CRL whose signature and issuer have been verified.
#[derive(Debug, Clone)]
pub struct RevocationList {
    number: u64,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    revoked: RevokedSet,
    der: Vec<u8>,
}

impl RevocationList {
    /// Parses `input` (DER, or PEM `X509 CRL`) and verifies it was issued and signed by the CA
    /// certificate `issuer_der`. Does not judge freshness: see [`RevocationList::is_stale`].
    pub fn parse_and_verify(input: &[u8], issuer_der: &[u8]) -> Result<Self, CrlError> {
        let der = if input.trim_ascii_start().starts_with(b"-----BEGIN") {
            crate::pem::block(input, "X509 CRL").map_err(|e| CrlError::Malformed(e.to_string()))?
        } else {
            input.to_vec()
        };
        let (rest, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .map_err(|e| CrlError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CrlError::Malformed("trailing bytes after the CRL".into()));
        }
        let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(issuer_der)
            .map_err(|e| CrlError::Malformed(format!("issuer certificate: {e}")))?;
        if crl.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(CrlError::WrongIssuer {
                crl: crl.issuer().to_string(),
                expected: issuer.subject().to_string(),
            });
        }
        crl.verify_signature(issuer.public_key())
            .map_err(|_| CrlError::BadSignature)?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(CrlError::NoNumber)?;
        let next_update = crl
            .next_update()
            .ok_or(CrlError::NoNextUpdate)?
            .to_datetime();
        let mut revoked = RevokedSet::default();
        for entry in crl.iter_revoked_certificates() {
            revoked.insert(&Serial::from_bytes(entry.raw_serial()));
        }
        let this_update = crl.last_update().to_datetime();
        drop(crl);
        Ok(RevocationList {
            number,
            this_update,
            next_update,
            revoked,
            der,
        })
    }

    /// The CRL number (strictly increasing per issuer).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// thisUpdate.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// nextUpdate: after it (plus whatever grace the reader allows) the CRL is stale.
    pub fn next_update(&self) -> OffsetDateTime {
        self.next_update
    }

    /// Whether the CRL is past nextUpdate + `grace` at `now`.
    pub fn is_stale(&self, now: OffsetDateTime, grace: std::time::Duration) -> bool {
        now > self.next_update + grace
    }

    /// The revoked serials.
    pub fn revoked(&self) -> &RevokedSet {
        &self.revoked
    }

    /// The CRL's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CRL as PEM (`X509 CRL`), as `openssl crl` reads it.
    pub fn to_pem(&self) -> String {
        crate::pem::encode("X509 CRL", &self.der)
    }
}

//! Certificate revocation lists: built and signed by the CA, parsed and verified by everyone else.
//!
//! A CRL is the revocation cache's unit of exchange. Its CRL number only ever grows, so a reader
//! can refuse a rollback; its signature must verify against the issuing CA certificate and its
//! issuer name must equal that certificate's subject. Freshness (nextUpdate) is reported rather
//! than enforced at parse time, because what a stale CRL means is the reader's policy (fail
//! closed or fail open), not the parser's.
//!
//! A reader that fetched a CRL from the network does not know its signer in advance:
//! [`RevocationList::parse_and_verify_in_bundle`] tries every CA certificate the trust bundle
//! vouches for.

use std::collections::HashSet;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundle;
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
    /// No CA certificate the trust bundle vouches for was offered to check the CRL against.
    #[error("no CA certificate the trust bundle vouches for signed it")]
    NoTrustedSigner,
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

    /// Parses `body` (PEM: the CRL, optionally followed by CA certificates, as the CA's CRL
    /// endpoint answers) and verifies it against every CA certificate `bundle` vouches for at
    /// `now`: those in `body` and those in `known` (the CA certificates of the reader's own
    /// chain). A certificate shipped in the body is only a candidate, never trusted by itself: a
    /// CRL signed by a foreign CA that carries its own issuer is refused.
    ///
    /// Returns the first candidate's verified list; otherwise the last candidate's error, or
    /// [`CrlError::NoTrustedSigner`] when the bundle vouches for none of them.
    pub fn parse_and_verify_in_bundle(
        body: &[u8],
        bundle: &TrustBundle,
        known: &[CertificateDer<'static>],
        now: OffsetDateTime,
    ) -> Result<Self, CrlError> {
        // A body without certificates (or with unreadable PEM) still has `known` to try, and the
        // CRL parse below says what is wrong with it.
        let mut candidates = crate::pem::certificates(body).unwrap_or_default();
        candidates.extend(known.iter().cloned());
        let mut last = CrlError::NoTrustedSigner;
        for issuer in candidates.iter().filter(|c| bundle.vouches_for(c, now)) {
            match Self::parse_and_verify(body, issuer) {
                Ok(crl) => return Ok(crl),
                Err(e) => last = e,
            }
        }
        Err(last)
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

    /// How old the CRL is at `now` (now − thisUpdate), never negative: a thisUpdate a little
    /// ahead of the reader's clock (the signer's clock runs ahead) reads as age 0. Whether one
    /// too far ahead is acceptable at all is the reader's policy.
    pub fn age(&self, now: OffsetDateTime) -> time::Duration {
        (now - self.this_update).max(time::Duration::ZERO)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::TrustDomain;

    /// A root in a bundle and the intermediate it signed.
    fn hierarchy(now: OffsetDateTime) -> (TrustBundle, Signer) {
        let td = TrustDomain::new("example.org").unwrap();
        let day = Duration::from_secs(86400);
        let (root, _) = crate::issue::new_root(&td, day, now).unwrap();
        let (inter, _) = root.issue_intermediate(&td, day, now).unwrap();
        let mut bundle = TrustBundle::default();
        bundle.push(root.cert().clone()).unwrap();
        (bundle, inter)
    }

    fn crl_pem(signer: &Signer, number: u64, now: OffsetDateTime) -> Vec<u8> {
        let der = build(signer, number, now, now + time::Duration::hours(1), &[]).unwrap();
        crate::pem::encode("X509 CRL", &der).into_bytes()
    }

    #[test]
    fn a_bundle_verifies_crls_from_known_or_shipped_signers() {
        let now = OffsetDateTime::now_utc();
        let (bundle, inter) = hierarchy(now);
        let body = crl_pem(&inter, 3, now);
        let known = [inter.cert().clone()];
        let crl = RevocationList::parse_and_verify_in_bundle(&body, &bundle, &known, now).unwrap();
        assert_eq!(crl.number(), 3);
        // The CA's answer carries the signer after the CRL: no known certificate is needed.
        let mut shipped = body.clone();
        shipped.extend_from_slice(inter.cert_pem().as_bytes());
        let crl = RevocationList::parse_and_verify_in_bundle(&shipped, &bundle, &[], now).unwrap();
        assert_eq!(crl.number(), 3);
    }

    #[test]
    fn a_signer_the_bundle_does_not_vouch_for_is_never_tried() {
        let now = OffsetDateTime::now_utc();
        let (bundle, inter) = hierarchy(now);
        let (_, foreign) = hierarchy(now);
        // A foreign CA's CRL that ships its own signer: the signer is not vouched for.
        let mut body = crl_pem(&foreign, 9, now);
        body.extend_from_slice(foreign.cert_pem().as_bytes());
        let err = RevocationList::parse_and_verify_in_bundle(&body, &bundle, &[], now).unwrap_err();
        assert!(matches!(err, CrlError::NoTrustedSigner), "{err:?}");
        // With our own intermediate known, it is tried and names the mismatch.
        let known = [inter.cert().clone()];
        let err =
            RevocationList::parse_and_verify_in_bundle(&body, &bundle, &known, now).unwrap_err();
        assert!(matches!(err, CrlError::WrongIssuer { .. }), "{err:?}");
        // Past the intermediate's notAfter, the bundle stops vouching for it.
        let later = now + time::Duration::days(2);
        let ours = crl_pem(&inter, 1, now);
        let err =
            RevocationList::parse_and_verify_in_bundle(&ours, &bundle, &known, later).unwrap_err();
        assert!(matches!(err, CrlError::NoTrustedSigner), "{err:?}");
    }

    #[test]
    fn the_age_is_never_negative() {
        let now = OffsetDateTime::now_utc();
        let (bundle, inter) = hierarchy(now);
        let known = [inter.cert().clone()];
        let body = crl_pem(&inter, 1, now);
        let crl = RevocationList::parse_and_verify_in_bundle(&body, &bundle, &known, now).unwrap();
        // X.509 times have whole seconds, so thisUpdate is up to a second before `now`.
        assert!(crl.age(now + time::Duration::minutes(1)) >= time::Duration::minutes(1));
        assert_eq!(
            crl.age(now - time::Duration::seconds(30)),
            time::Duration::ZERO
        );
    }

    #[test]
    fn garbage_is_refused_with_the_parse_error() {
        let now = OffsetDateTime::now_utc();
        let (bundle, inter) = hierarchy(now);
        let known = [inter.cert().clone()];
        for body in [&b"<html>oops</html>"[..], b""] {
            let err =
                RevocationList::parse_and_verify_in_bundle(body, &bundle, &known, now).unwrap_err();
            assert!(matches!(err, CrlError::Malformed(_)), "{err:?}");
        }
    }
}

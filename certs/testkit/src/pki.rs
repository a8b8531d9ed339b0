//! A throw-away PKI per trust domain: a root and an issuing intermediate generated with rcgen when
//! the test runs (no key is ever committed), leaves issued through the real issuance policy
//! ([`Pki::leaf`]) or signed from hand-edited rcgen params ([`Pki::custom_leaf`] with
//! [`svid_params`]) to build certificates that break exactly one X509-SVID rule, and helpers that
//! look into DER with x509-parser.

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use tether_certs::issue::{self, IssuedLeaf, Signer};
use tether_certs::{Serial, SpiffeId, TrustBundle, TrustDomain};

/// One hour, the default leaf lifetime.
pub const HOUR: Duration = Duration::from_secs(3600);
/// One day, the default maximum leaf lifetime.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Now, truncated to whole seconds (X.509 times have second precision, so a test can compare a
/// certificate's notBefore/notAfter with what it asked for exactly).
pub fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .expect("the current time is representable")
}

/// A root and an issuing intermediate for one trust domain.
pub struct Pki {
    /// The trust domain both CAs speak for.
    pub td: TrustDomain,
    /// The self-signed root.
    pub root: Signer,
    /// The root's key (kept so a test can sign with it directly).
    pub root_key: KeyPair,
    /// The intermediate that issues leaves, signed by [`Pki::root`].
    pub intermediate: Signer,
    /// The intermediate's key.
    pub intermediate_key: KeyPair,
    /// When both were created (their notBefore, less the issuance policy's clock skew).
    pub created: OffsetDateTime,
}

impl Pki {
    /// Root valid 30 days, intermediate 7 days, both created now.
    pub fn new(td: &str) -> Self {
        Self::with(td, now(), 30 * DAY, 7 * DAY)
    }

    /// A PKI created at `at`, with the given root and intermediate lifetimes.
    pub fn with(td: &str, at: OffsetDateTime, root_ttl: Duration, int_ttl: Duration) -> Self {
        let td = TrustDomain::new(td).expect("test trust domain is valid");
        let (root, root_key) = issue::new_root(&td, root_ttl, at).expect("new root");
        let (intermediate, intermediate_key) = root
            .issue_intermediate(&td, int_ttl, at)
            .expect("new intermediate");
        Pki {
            td,
            root,
            root_key,
            intermediate,
            intermediate_key,
            created: at,
        }
    }

    /// `spiffe://<td><path>`.
    pub fn id(&self, path: &str) -> SpiffeId {
        SpiffeId::from_parts(&self.td, path).expect("test path is valid")
    }

    /// A bundle holding this PKI's root only.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(self.root.cert_pem().as_bytes()).expect("root makes a bundle")
    }

    /// A leaf for `path` issued through the real issuance policy (1 h).
    pub fn leaf(&self, path: &str) -> Svid {
        let key = tether_certs::keys::generate_key().expect("key");
        let issued = self
            .intermediate
            .issue_leaf(&self.id(path), &key, HOUR, DAY, now())
            .expect("issue leaf");
        Svid::new(issued.der.clone(), key, self, Some(issued))
    }

    /// An rcgen issuer over the intermediate, rebuilt from its certificate and key, so a test can
    /// sign anything with it (bypassing the leaf policy on purpose).
    pub fn intermediate_issuer(&self) -> Issuer<'static, KeyPair> {
        let key = KeyPair::from_pem(&self.intermediate_key.serialize_pem()).expect("key copy");
        Issuer::from_ca_cert_der(self.intermediate.cert(), key).expect("issuer from intermediate")
    }

    /// Signs `params` over a fresh key with the intermediate and returns the chain + key.
    pub fn custom_leaf(&self, params: &CertificateParams) -> Svid {
        let key = tether_certs::keys::generate_key().expect("key");
        let cert = params
            .signed_by(&key, &self.intermediate_issuer())
            .expect("rcgen signs");
        Svid::new(cert.der().clone(), key, self, None)
    }
}

/// A leaf, its key and its chain (leaf + intermediate).
pub struct Svid {
    /// The leaf certificate.
    pub der: CertificateDer<'static>,
    /// The leaf's private key.
    pub key: KeyPair,
    /// Leaf then intermediate, as a TLS peer presents them.
    pub chain: Vec<CertificateDer<'static>>,
    /// What the issuance policy returned, for leaves made by [`Pki::leaf`].
    pub issued: Option<IssuedLeaf>,
}

impl Svid {
    fn new(
        der: CertificateDer<'static>,
        key: KeyPair,
        pki: &Pki,
        issued: Option<IssuedLeaf>,
    ) -> Self {
        let chain = vec![der.clone(), pki.intermediate.cert().clone()];
        Svid {
            der,
            key,
            chain,
            issued,
        }
    }

    /// The private key as rustls wants it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The leaf's serial as found in the certificate.
    pub fn serial(&self) -> Serial {
        with_cert(&self.der, |c| Serial::from_bytes(c.raw_serial()))
    }
}

/// Params that mirror the issuance policy for `id` (one URI SAN, explicit cA=false,
/// digitalSignature, serverAuth + clientAuth, random serial, valid from 5 min ago for 1 h).
/// Tests change one property and sign the result with [`Pki::custom_leaf`].
pub fn svid_params(id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(id)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(SerialNumber::from_slice(Serial::random().as_bytes()));
    let now = now();
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + HOUR;
    params.use_authority_key_identifier_extension = true;
    params
}

/// A URI SAN holding `uri` verbatim (rcgen does not validate it, which is the point).
pub fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.to_string().try_into().expect("ASCII URI"))
}

/// Runs `f` on the parsed certificate; fails the test if `der` is not exactly one certificate.
pub fn with_cert<T>(der: &[u8], f: impl FnOnce(&X509Certificate) -> T) -> T {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty(), "no trailing bytes after the certificate");
    f(&cert)
}

/// PEM text of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    tether_certs::pem::encode("CERTIFICATE", der)
}

/// Every certificate in `pem`, DER.
pub fn ders(pem: &str) -> Vec<Vec<u8>> {
    tether_certs::pem::certificates(pem.as_bytes())
        .expect("PEM certificates")
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Whether the certificate `cert_der` names `issuer_der` as its issuer and carries a signature
/// made by its key.
pub fn signed_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (_, cert) = X509Certificate::from_der(cert_der).expect("cert");
    let (_, issuer) = X509Certificate::from_der(issuer_der).expect("issuer");
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Flips the low bit of the last byte of `der`: for an rcgen-made certificate, CSR or CRL that
/// byte belongs to the ECDSA signature's `s` integer, so the structure still parses but the
/// signature no longer verifies.
pub fn flip_signature(der: &[u8]) -> Vec<u8> {
    let mut bad = der.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_chains_to_the_intermediate_and_the_intermediate_to_the_root() {
        let pki = Pki::new("kit.test");
        let leaf = pki.leaf("/svc");
        assert_eq!(leaf.chain.len(), 2);
        assert!(signed_by(&leaf.der, pki.intermediate.cert()));
        assert!(signed_by(pki.intermediate.cert(), pki.root.cert()));
        assert!(
            !signed_by(&leaf.der, pki.root.cert()),
            "the root did not sign the leaf"
        );
        assert_eq!(
            Some(leaf.serial()),
            leaf.issued.as_ref().map(|i| i.serial.clone())
        );
    }

    #[test]
    fn a_custom_leaf_is_signed_by_the_intermediate_and_a_flipped_one_is_not() {
        let pki = Pki::new("kit.test");
        let leaf = pki.custom_leaf(&svid_params("spiffe://kit.test/x"));
        assert!(leaf.issued.is_none());
        assert!(signed_by(&leaf.der, pki.intermediate.cert()));
        assert!(!signed_by(
            &flip_signature(&leaf.der),
            pki.intermediate.cert()
        ));
        assert_eq!(ders(&cert_pem(&leaf.der)), vec![leaf.der.to_vec()]);
    }
}

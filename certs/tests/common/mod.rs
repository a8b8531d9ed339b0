//! Shared fixtures for the `tether-certs` integration tests: a throw-away PKI per trust domain
//! (root → intermediate, generated with rcgen at test time, nothing committed), a way to sign
//! arbitrary rcgen params with the real intermediate (to hand-build certificates that break one
//! rule at a time), and small helpers for x509-parser and the `openssl` CLI.

// Every test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tether_certs::issue::{self, IssuedLeaf, Signer};
use tether_certs::{Serial, SpiffeId, TrustBundle, TrustDomain};
use time::OffsetDateTime;

/// The trust domain most tests live in.
pub const TD: &str = "example.org";
/// Another trust domain, for cross-domain cases.
pub const FOREIGN_TD: &str = "foreign.test";

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Now, truncated to whole seconds (X.509 times have second precision, so a test can compare a
/// certificate's notBefore/notAfter with what it asked for exactly).
pub fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .expect("the current time is representable")
}

/// A root and an issuing intermediate for one trust domain.
pub struct Pki {
    pub td: TrustDomain,
    pub root: Signer,
    pub root_key: KeyPair,
    pub intermediate: Signer,
    pub intermediate_key: KeyPair,
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
    pub der: CertificateDer<'static>,
    pub key: KeyPair,
    pub chain: Vec<CertificateDer<'static>>,
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

/// Runs `f` on the parsed certificate.
pub fn with_cert<T>(
    der: &[u8],
    f: impl FnOnce(&x509_parser::certificate::X509Certificate) -> T,
) -> T {
    use x509_parser::prelude::FromDer;
    let (rest, cert) =
        x509_parser::certificate::X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty(), "no trailing bytes after the certificate");
    f(&cert)
}

/// PEM text of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    tether_certs::pem::encode("CERTIFICATE", der)
}

/// Whether an `openssl` binary is usable; prints why a check is skipped when not.
pub fn have_openssl(what: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("openssl not on PATH: skipping the openssl check of {what}");
    }
    ok
}

/// Runs `openssl <args>` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs")
}

/// stdout + stderr of an openssl run, for assertions and failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

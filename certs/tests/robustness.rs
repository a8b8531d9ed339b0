//! Untrusted input never panics: `RevocationList::parse_and_verify`, `issue::parse_csr`,
//! `svid::inspect_leaf` and `TrustBundle::from_pem` return errors for arbitrary bytes, for valid
//! inputs with bytes flipped or cut off, and for arbitrary bytes inside PEM armour. Moreover a
//! damaged CRL or CSR that still parses must say exactly what the signed original said: the
//! signature is what makes the content trustworthy, so no mutation may change it and verify.

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use rcgen::PublicKeyData;
use tether_certs::crl::{self, CrlEntry};
use tether_certs::{issue, svid, RevocationList, Serial, SpiffeId, TrustBundle};

/// Valid inputs to mutate, made once per test binary.
struct Fixture {
    issuer: Vec<u8>,
    crl: Vec<u8>,
    crl_number: u64,
    revoked: Vec<Serial>,
    csr: Vec<u8>,
    csr_key: Vec<u8>,
    leaf: Vec<u8>,
    bundle_pem: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pki = Pki::new(TD);
        let other = Pki::new(FOREIGN_TD);
        let at = now();
        let revoked = vec![Serial::from_bytes(&[0x80, 1, 2, 3]), Serial::random()];
        let entries: Vec<CrlEntry> = revoked
            .iter()
            .map(|s| CrlEntry {
                serial: s.clone(),
                revoked_at: at,
                reason: None,
            })
            .collect();
        let crl = crl::build(&pki.intermediate, 9, at, at + HOUR, &entries).unwrap();
        let key = tether_certs::keys::generate_key().unwrap();
        let csr_pem = tether_certs::keys::generate_csr(
            &key,
            &SpiffeId::parse("spiffe://example.org/a").unwrap(),
        )
        .unwrap();
        let csr = tether_certs::pem::block(csr_pem.as_bytes(), "CERTIFICATE REQUEST").unwrap();
        Fixture {
            issuer: pki.intermediate.cert().to_vec(),
            crl,
            crl_number: 9,
            revoked,
            csr,
            csr_key: key.public_key_raw().to_vec(),
            leaf: pki.leaf("/svc").der.to_vec(),
            bundle_pem: [pki.root.cert_pem(), other.root.cert_pem()]
                .concat()
                .into_bytes(),
        }
    })
}

/// `base` with each (position, value) written over it.
fn mutate(base: &[u8], edits: &[(Index, u8)]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (at, value) in edits {
        let i = at.index(out.len());
        out[i] = *value;
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(Index, u8)>> {
    prop::collection::vec((any::<Index>(), any::<u8>()), 1..4)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..1500)
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    tether_certs::pem::encode(label, der).into_bytes()
}

/// A CRL that verified must say what the signed original says.
fn check_crl(input: &[u8]) {
    let f = fixture();
    if let Ok(list) = RevocationList::parse_and_verify(input, &f.issuer) {
        assert_eq!(list.number(), f.crl_number);
        assert_eq!(list.revoked().len(), f.revoked.len());
        for s in &f.revoked {
            assert!(list.revoked().contains(s));
        }
    }
}

/// A CSR that verified must carry the original key.
fn check_csr(input: &[u8]) {
    if let Ok(spki) = issue::parse_csr(input) {
        assert_eq!(spki.der_bytes(), fixture().csr_key.as_slice());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(input in bytes()) {
        let f = fixture();
        prop_assert!(RevocationList::parse_and_verify(&input, &f.issuer).is_err());
        let _ = RevocationList::parse_and_verify(&f.crl, &input);
        prop_assert!(issue::parse_csr(&input).is_err());
        prop_assert!(svid::inspect_leaf(&input, Some(svid::Usage::Client)).is_err());
        prop_assert!(TrustBundle::from_pem(&input).is_err());
    }

    #[test]
    fn arbitrary_bytes_in_pem_armour_never_panic(input in bytes()) {
        let f = fixture();
        prop_assert!(RevocationList::parse_and_verify(&pem("X509 CRL", &input), &f.issuer).is_err());
        prop_assert!(issue::parse_csr(&pem("CERTIFICATE REQUEST", &input)).is_err());
        let _ = TrustBundle::from_pem(&pem("CERTIFICATE", &input));
    }

    #[test]
    fn mutated_crls_never_panic_nor_change_meaning(e in edits()) {
        let f = fixture();
        let bad = mutate(&f.crl, &e);
        check_crl(&bad);
        check_crl(&pem("X509 CRL", &bad));
    }

    #[test]
    fn truncated_crls_never_panic(cut in any::<Index>()) {
        let f = fixture();
        let n = cut.index(f.crl.len());
        prop_assert!(RevocationList::parse_and_verify(&f.crl[..n], &f.issuer).is_err());
    }

    #[test]
    fn mutated_issuer_certificates_never_panic(e in edits()) {
        let f = fixture();
        let _ = RevocationList::parse_and_verify(&f.crl, &mutate(&f.issuer, &e));
    }

    #[test]
    fn mutated_csrs_never_panic_nor_change_key(e in edits()) {
        let f = fixture();
        let bad = mutate(&f.csr, &e);
        check_csr(&bad);
        check_csr(&pem("CERTIFICATE REQUEST", &bad));
    }

    #[test]
    fn truncated_csrs_never_panic(cut in any::<Index>()) {
        let f = fixture();
        let n = cut.index(f.csr.len());
        prop_assert!(issue::parse_csr(&f.csr[..n]).is_err());
    }

    #[test]
    fn mutated_leaves_never_panic(e in edits(), cut in any::<Index>()) {
        let f = fixture();
        let bad = mutate(&f.leaf, &e);
        let _ = svid::inspect_leaf(&bad, Some(svid::Usage::Server));
        let _ = svid::inspect_leaf(&bad, None);
        let n = cut.index(f.leaf.len());
        prop_assert!(svid::inspect_leaf(&f.leaf[..n], None).is_err());
    }

    #[test]
    fn mutated_bundles_never_panic(e in edits(), cut in any::<Index>()) {
        let f = fixture();
        // Damage the PEM text itself, and the DER inside intact armour.
        let _ = TrustBundle::from_pem(&mutate(&f.bundle_pem, &e));
        let n = cut.index(f.bundle_pem.len());
        let _ = TrustBundle::from_pem(&f.bundle_pem[..n]);
        let root = TrustBundle::from_pem(&f.bundle_pem).unwrap().roots()[0].der.to_vec();
        let _ = TrustBundle::from_pem(&pem("CERTIFICATE", &mutate(&root, &e)));
    }
}

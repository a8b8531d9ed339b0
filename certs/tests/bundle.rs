//! `TrustBundle`: a bundle with two roots (a rotation in progress) survives a PEM round trip in
//! order; the same root is held once; a root is retired by its SHA-256 fingerprint (the one
//! `openssl x509 -fingerprint -sha256` prints); and a bundle refuses anything that is not a CA
//! speaking for a `spiffe://<trust-domain>`, naming the offending certificate's position in the
//! input, as well as PEM that holds no certificate or does not parse.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
use tether_certs::bundle::{fingerprint, BundleError};
use tether_certs::TrustBundle;

fn concat(pems: &[String]) -> String {
    pems.concat()
}

/// Where in `pem` the bundle found a certificate that is not a root; fails the test if the
/// bundle was refused for anything else, or accepted.
fn not_a_root_index(pem: &str) -> usize {
    match TrustBundle::from_pem(pem.as_bytes()) {
        Err(BundleError::NotARoot { index, .. }) => index,
        other => panic!("expected NotARoot, got {other:?}"),
    }
}

/// A self-signed CA certificate with the given URI SANs (none when empty).
fn self_signed_ca(uris: &[&str]) -> Vec<u8> {
    let key = tether_certs::keys::generate_key().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Some other CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = uris.iter().map(|u| uri_san(u)).collect();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn two_roots_round_trip_through_pem_in_order() {
    let old = Pki::new(TD);
    let new = Pki::new(TD);
    let pem = concat(&[old.root.cert_pem(), new.root.cert_pem()]);
    let bundle = TrustBundle::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(bundle.len(), 2);
    assert!(!bundle.is_empty());
    let roots = bundle.roots();
    assert_eq!(roots[0].der, *old.root.cert());
    assert_eq!(roots[1].der, *new.root.cert());
    for (root, pki) in roots.iter().zip([&old, &new]) {
        assert_eq!(root.trust_domain.as_str(), TD);
        assert_eq!(root.fingerprint, fingerprint(pki.root.cert()));
        assert_eq!(root.not_after, pki.root.not_after());
    }
    assert_ne!(roots[0].fingerprint, roots[1].fingerprint);

    let again = TrustBundle::from_pem(bundle.to_pem().as_bytes()).unwrap();
    assert_eq!(again.to_pem(), bundle.to_pem());
    assert_eq!(
        bundle.to_pem(),
        pem,
        "to_pem prints each root as it was read"
    );
}

#[test]
fn each_root_speaks_for_the_trust_domain_in_its_uri_san() {
    let a = Pki::new(TD);
    let b = Pki::new(FOREIGN_TD);
    let bundle =
        TrustBundle::from_pem(concat(&[a.root.cert_pem(), b.root.cert_pem()]).as_bytes()).unwrap();
    let tds: Vec<&str> = bundle
        .roots()
        .iter()
        .map(|r| r.trust_domain.as_str())
        .collect();
    assert_eq!(tds, vec![TD, FOREIGN_TD]);
}

#[test]
fn the_same_root_is_held_once() {
    let pki = Pki::new(TD);
    let pem = concat(&[pki.root.cert_pem(), pki.root.cert_pem()]);
    let mut bundle = TrustBundle::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(bundle.len(), 1);
    bundle.push(pki.root.cert().clone()).unwrap();
    assert_eq!(bundle.len(), 1, "push of a present root is a no-op");
    let other = Pki::new(TD);
    bundle.push(other.root.cert().clone()).unwrap();
    assert_eq!(bundle.len(), 2);
}

#[test]
fn a_root_is_removed_by_fingerprint() {
    let old = Pki::new(TD);
    let new = Pki::new(TD);
    let mut bundle =
        TrustBundle::from_pem(concat(&[old.root.cert_pem(), new.root.cert_pem()]).as_bytes())
            .unwrap();
    let old_fp = fingerprint(old.root.cert());
    assert_eq!(old_fp.len(), 64);
    assert!(old_fp
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));

    assert!(!bundle.remove("00"), "unknown fingerprint removes nothing");
    assert!(!bundle.remove(""));
    assert_eq!(bundle.len(), 2);
    assert!(
        bundle.remove(&old_fp.to_uppercase()),
        "fingerprints match case-insensitively"
    );
    assert_eq!(bundle.len(), 1);
    assert_eq!(bundle.roots()[0].der, *new.root.cert());
    assert!(!bundle.remove(&old_fp), "already gone");

    assert!(bundle.remove(&fingerprint(new.root.cert())));
    assert!(bundle.is_empty());
    assert_eq!(bundle.to_pem(), "");
}

#[test]
fn a_leaf_is_not_a_root() {
    let pki = Pki::new(TD);
    let leaf = pki.leaf("/svc");
    assert_eq!(not_a_root_index(&cert_pem(&leaf.der)), 0);
    let mut bundle = pki.bundle();
    let err = bundle.push(leaf.der.clone()).unwrap_err();
    assert!(matches!(err, BundleError::NotARoot { .. }), "{err:?}");
    assert_eq!(
        bundle.len(),
        1,
        "a refused push leaves the bundle as it was"
    );
}

#[test]
fn a_ca_without_a_spiffe_trust_domain_is_not_a_root() {
    for uris in [
        &[][..],
        &["https://ca.example.org"][..],
        &["spiffe://Bad"][..],
    ] {
        let der = self_signed_ca(uris);
        assert_eq!(not_a_root_index(&cert_pem(&der)), 0, "{uris:?}");
    }
}

#[test]
fn errors_name_the_position_in_the_input() {
    let pki = Pki::new(TD);
    let leaf = pki.leaf("/svc");
    // The duplicate root is dropped, but the operator counts certificates in the file.
    let pem = concat(&[
        pki.root.cert_pem(),
        pki.root.cert_pem(),
        cert_pem(&leaf.der),
    ]);
    assert_eq!(not_a_root_index(&pem), 2);
    let pem = concat(&[
        pki.root.cert_pem(),
        tether_certs::pem::encode("CERTIFICATE", b"not DER"),
    ]);
    let err = TrustBundle::from_pem(pem.as_bytes()).unwrap_err();
    assert!(
        matches!(err, BundleError::Malformed { index: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn garbage_pem_is_refused() {
    let pki = Pki::new(TD);
    let key_only = pki.root_key.serialize_pem();
    let root_pem = pki.root.cert_pem();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("text", b"hello world".to_vec()),
        ("only a private key", key_only.into_bytes()),
        (
            "unterminated block",
            root_pem.as_bytes()[..root_pem.len() - 30].to_vec(),
        ),
        (
            "bad base64",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(),
        ),
    ];
    for (what, input) in cases {
        match TrustBundle::from_pem(&input) {
            Err(BundleError::Pem(_)) => {}
            other => panic!("{what}: expected a PEM error, got {other:?}"),
        }
    }
    // Raw DER is not PEM either.
    assert!(TrustBundle::from_pem(pki.root.cert()).is_err());
}

#[test]
fn fingerprints_match_openssl() {
    if !have_openssl("root fingerprints") {
        return;
    }
    let pki = Pki::new(TD);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), pki.root.cert_pem()).unwrap();
    let text = openssl_ok(
        dir.path(),
        &[
            "x509",
            "-in",
            "root.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let hex: String = text
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(pki.bundle().roots()[0].fingerprint, hex);
}

//! CRLs: what `crl::build` signs is exactly what `RevocationList::parse_and_verify` reads back
//! (CRL number, thisUpdate/nextUpdate, every revoked serial — including one whose DER needs a
//! padding byte), from DER or PEM; staleness honours the grace period; and a CRL is refused when
//! it names another issuer, was signed by another key under the same name, has a damaged
//! signature or content, or is not a CRL at all. `openssl crl` reads and verifies what we build.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use tether_certs::crl::{self, CrlEntry, CrlError, Reason};
use tether_certs::issue::Signer;
use tether_certs::{RevocationList, Serial};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

fn entry(serial: &Serial, at: OffsetDateTime, reason: Option<Reason>) -> CrlEntry {
    CrlEntry {
        serial: serial.clone(),
        revoked_at: at,
        reason,
    }
}

/// A serial whose first byte has the high bit set: its DER INTEGER needs a leading 0x00.
fn high_bit_serial() -> Serial {
    Serial::from_bytes(&[0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08])
}

#[test]
fn a_crl_round_trips_number_times_and_revoked_serials() {
    let pki = Pki::new(TD);
    let at = now();
    let next = at + HOUR;
    let leaf = pki.leaf("/svc");
    let padded = high_bit_serial();
    let entries = [
        entry(&padded, at, Some(Reason::KeyCompromise)),
        entry(&leaf.serial(), at - Duration::from_secs(60), None),
    ];
    let der = crl::build(&pki.intermediate, 7, at, next, &entries).unwrap();

    let list = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap();
    assert_eq!(list.number(), 7);
    assert_eq!(list.this_update(), at);
    assert_eq!(list.next_update(), next);
    assert_eq!(list.der(), der.as_slice());
    let revoked = list.revoked();
    assert_eq!(revoked.len(), 2);
    assert!(revoked.contains(&padded));
    assert!(
        revoked.contains_bytes(&[0x00, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]),
        "the padded form, as a certificate carries it, matches too"
    );
    assert!(revoked.contains(&leaf.serial()));
    with_cert(&leaf.der, |c| {
        assert!(
            revoked.contains_bytes(c.raw_serial()),
            "matches the leaf's own serial bytes"
        )
    });
    assert!(!revoked.contains(&Serial::random()));
    assert!(!revoked.contains(&Serial::from_bytes(&[0x80, 0x01])));

    // On the wire the high-bit serial is a positive INTEGER (00 80 …), not a negative one.
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    let raws: Vec<Vec<u8>> = parsed
        .iter_revoked_certificates()
        .map(|e| e.raw_serial().to_vec())
        .collect();
    assert!(raws.contains(&vec![
        0x00, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08
    ]));
}

#[test]
fn crl_numbers_round_trip_across_the_u64_range() {
    let pki = Pki::new(TD);
    let at = now();
    for n in [
        0,
        1,
        127,
        128,
        255,
        256,
        u64::from(u32::MAX) + 1,
        u64::MAX - 1,
        u64::MAX,
    ] {
        let der = crl::build(&pki.intermediate, n, at, at + HOUR, &[]).unwrap();
        let list = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap();
        assert_eq!(list.number(), n);
        assert!(list.revoked().is_empty());
    }
}

#[test]
fn pem_and_der_are_both_accepted() {
    let pki = Pki::new(TD);
    let at = now();
    let der = crl::build(
        &pki.intermediate,
        3,
        at,
        at + HOUR,
        &[entry(&high_bit_serial(), at, None)],
    )
    .unwrap();
    let from_der = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap();
    let pem = from_der.to_pem();
    assert!(pem.starts_with("-----BEGIN X509 CRL-----\n"));
    assert!(pem.ends_with("-----END X509 CRL-----\n"));
    let from_pem =
        RevocationList::parse_and_verify(pem.as_bytes(), pki.intermediate.cert()).unwrap();
    assert_eq!(from_pem.der(), der.as_slice());
    assert_eq!(from_pem.number(), 3);
    assert!(from_pem.revoked().contains(&high_bit_serial()));
    // Blank lines before the armour (a file edited by hand) are fine.
    let padded = format!("\n\n{pem}");
    RevocationList::parse_and_verify(padded.as_bytes(), pki.intermediate.cert()).unwrap();
}

#[test]
fn staleness_is_past_next_update_plus_grace() {
    let pki = Pki::new(TD);
    let at = now();
    let next = at + HOUR;
    let der = crl::build(&pki.intermediate, 1, at, next, &[]).unwrap();
    let list = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap();
    let grace = Duration::from_secs(300);
    let second = Duration::from_secs(1);
    assert!(!list.is_stale(at, grace));
    assert!(
        !list.is_stale(next, Duration::ZERO),
        "fresh up to nextUpdate itself"
    );
    assert!(list.is_stale(next + second, Duration::ZERO));
    assert!(
        !list.is_stale(next + second, grace),
        "within the grace period"
    );
    assert!(!list.is_stale(next + grace, grace));
    assert!(list.is_stale(next + grace + second, grace));
}

#[test]
fn a_crl_from_an_intermediate_with_another_name_is_wrong_issuer() {
    let pki = Pki::new(TD);
    let at = now();
    // A sibling intermediate under the same root: another subject name.
    let (sibling, _) = pki
        .root
        .issue_intermediate(&pki.td, 7 * DAY, pki.created + Duration::from_secs(1))
        .unwrap();
    assert_ne!(sibling.subject_der(), pki.intermediate.subject_der());
    let der = crl::build(&sibling, 1, at, at + HOUR, &[]).unwrap();
    let err = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap_err();
    assert!(matches!(err, CrlError::WrongIssuer { .. }), "{err:?}");

    // The root's CRL is not the intermediate's either, nor is another trust domain's.
    let der = crl::build(&pki.root, 1, at, at + HOUR, &[]).unwrap();
    let err = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap_err();
    assert!(matches!(err, CrlError::WrongIssuer { .. }), "{err:?}");
    let foreign = Pki::new(FOREIGN_TD);
    let der = crl::build(&foreign.intermediate, 1, at, at + HOUR, &[]).unwrap();
    let err = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap_err();
    assert!(matches!(err, CrlError::WrongIssuer { .. }), "{err:?}");
}

/// Another intermediate under the same root whose subject name is byte-for-byte the one of
/// `pki.intermediate`, over a different key (what an attacker who can pick names would make).
fn twin_intermediate(pki: &Pki) -> Signer {
    let (org, cn) = with_cert(pki.intermediate.cert(), |c| {
        let org = c.subject().iter_organization().next().unwrap();
        let cn = c.subject().iter_common_name().next().unwrap();
        (
            org.as_str().unwrap().to_string(),
            cn.as_str().unwrap().to_string(),
        )
    });
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri_san("spiffe://example.org")];
    params.serial_number = Some(SerialNumber::from_slice(Serial::random().as_bytes()));
    params.not_before = now() - HOUR;
    params.not_after = now() + DAY;
    let root_key = KeyPair::from_pem(&pki.root_key.serialize_pem()).unwrap();
    let root = Issuer::from_ca_cert_der(pki.root.cert(), root_key).unwrap();
    let key = tether_certs::keys::generate_key().unwrap();
    let cert = params.signed_by(&key, &root).unwrap();
    Signer::from_der(cert.der().clone(), key).unwrap()
}

#[test]
fn a_crl_signed_by_another_key_under_the_same_name_is_bad_signature() {
    let pki = Pki::new(TD);
    let at = now();
    let twin = twin_intermediate(&pki);
    assert_eq!(twin.subject_der(), pki.intermediate.subject_der());
    assert_ne!(twin.cert(), pki.intermediate.cert());
    let der = crl::build(&twin, 1, at, at + HOUR, &[]).unwrap();
    let err = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap_err();
    assert!(matches!(err, CrlError::BadSignature), "{err:?}");
    // And it does verify against its real issuer, so the refusal above is about the key.
    RevocationList::parse_and_verify(&der, twin.cert()).unwrap();
}

#[test]
fn a_flipped_signature_byte_is_bad_signature() {
    let pki = Pki::new(TD);
    let at = now();
    let der = crl::build(&pki.intermediate, 1, at, at + HOUR, &[]).unwrap();
    let err = RevocationList::parse_and_verify(&flip_signature(&der), pki.intermediate.cert())
        .unwrap_err();
    assert!(matches!(err, CrlError::BadSignature), "{err:?}");
}

#[test]
fn an_edited_revoked_serial_is_bad_signature() {
    // Somebody on the path "un-revokes" a certificate by changing its serial in the list.
    let pki = Pki::new(TD);
    let at = now();
    let serial = high_bit_serial();
    let mut der = crl::build(
        &pki.intermediate,
        1,
        at,
        at + HOUR,
        &[entry(&serial, at, None)],
    )
    .unwrap();
    let pos = der
        .windows(serial.as_bytes().len())
        .position(|w| w == serial.as_bytes())
        .expect("serial in the CRL");
    der[pos + serial.as_bytes().len() - 1] ^= 0xff;
    let err = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap_err();
    assert!(matches!(err, CrlError::BadSignature), "{err:?}");
}

#[test]
fn garbage_empty_and_truncated_crls_are_malformed() {
    let pki = Pki::new(TD);
    let at = now();
    let der = crl::build(&pki.intermediate, 1, at, at + HOUR, &[]).unwrap();
    let pem = crl::build(&pki.intermediate, 1, at, at + HOUR, &[])
        .map(|d| tether_certs::pem::encode("X509 CRL", &d))
        .unwrap();
    let mut trailing = der.clone();
    trailing.push(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"definitely not a CRL".to_vec()),
        ("half", der[..der.len() / 2].to_vec()),
        ("one byte short", der[..der.len() - 1].to_vec()),
        ("trailing bytes", trailing),
        ("truncated PEM", pem.as_bytes()[..pem.len() / 2].to_vec()),
        ("a certificate instead", pki.intermediate.cert().to_vec()),
        (
            "PEM of another kind",
            cert_pem(pki.intermediate.cert()).into_bytes(),
        ),
        (
            "PEM around garbage",
            tether_certs::pem::encode("X509 CRL", b"nope").into_bytes(),
        ),
    ];
    for (what, input) in cases {
        match RevocationList::parse_and_verify(&input, pki.intermediate.cert()) {
            Err(CrlError::Malformed(_)) => {}
            other => panic!("{what}: expected Malformed, got {other:?}"),
        }
    }
    // A broken issuer certificate is refused the same way, not trusted.
    for issuer in [&b""[..], b"garbage", &pki.intermediate.cert()[..10]] {
        match RevocationList::parse_and_verify(&der, issuer) {
            Err(CrlError::Malformed(_)) => {}
            other => panic!("bad issuer: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn reason_names_round_trip_and_unknown_names_list_the_choices() {
    let names = [
        "unspecified",
        "key-compromise",
        "ca-compromise",
        "affiliation-changed",
        "superseded",
        "cessation-of-operation",
        "privilege-withdrawn",
    ];
    for name in names {
        let reason: Reason = name.parse().unwrap();
        assert_eq!(reason.as_str(), name);
    }
    let err = "stolen".parse::<Reason>().unwrap_err();
    assert!(
        err.contains("stolen") && err.contains("key-compromise"),
        "{err}"
    );
}

#[test]
fn openssl_reads_and_verifies_the_crl() {
    if !have_openssl("the CRL") {
        return;
    }
    let pki = Pki::new(TD);
    let at = now();
    let leaf = pki.leaf("/svc");
    let der = crl::build(
        &pki.intermediate,
        42,
        at,
        at + HOUR,
        &[
            entry(&high_bit_serial(), at, Some(Reason::KeyCompromise)),
            entry(&leaf.serial(), at, None),
        ],
    )
    .unwrap();
    let list = RevocationList::parse_and_verify(&der, pki.intermediate.cert()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crl.pem"), list.to_pem()).unwrap();
    std::fs::write(dir.path().join("crl.der"), &der).unwrap();
    std::fs::write(
        dir.path().join("intermediate.pem"),
        pki.intermediate.cert_pem(),
    )
    .unwrap();

    let text = openssl_ok(dir.path(), &["crl", "-in", "crl.pem", "-text", "-noout"]);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("X509v3 CRL Number: 42"), "{text}");
    assert!(flat.contains("Key Compromise"), "{text}");
    for serial in [high_bit_serial(), leaf.serial()] {
        let hex: String = serial
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert!(
            flat.contains(&format!("Serial Number: {hex}")),
            "{hex} in {text}"
        );
    }

    // DER too, and the signature verifies against the intermediate.
    let text = openssl_ok(
        dir.path(),
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "intermediate.pem",
            "-noout",
        ],
    );
    assert!(text.contains("verify OK"), "{text}");
}

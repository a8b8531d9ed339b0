//! Issuance policy: what `issue::new_root`, `Signer::issue_intermediate`, `Signer::issue_leaf`,
//! `issue::parse_csr` and `keys::generate_csr` put into (and keep out of) a certificate.
//!
//! A leaf must be a strict X509-SVID built from the *authorized* identity only — one URI SAN,
//! explicit cA=false, critical key usage digitalSignature, EKU serverAuth + clientAuth, a random
//! positive serial with well over 64 random bits, notBefore backdated by five minutes and notAfter
//! capped by the requested TTL, the maximum TTL and the issuer — however greedy the CSR was. A CSR
//! is accepted only if it parses, its signature verifies and its key is ECDSA P-256. Leaves are
//! cross-checked by two independent implementations: the `spiffe` crate (X509-SVID shape) and,
//! when it is installed, `openssl verify` (chain, purpose, RFC 5280 strictness).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tether_certs::issue::{self, IssueError, IssuedLeaf, Signer, CLOCK_SKEW};
use tether_certs::keys;
use tether_certs::{Serial, SpiffeId, TrustDomain};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn csr_der(pem: &str) -> Vec<u8> {
    tether_certs::pem::block(pem.as_bytes(), "CERTIFICATE REQUEST").unwrap()
}

/// `pki`'s intermediate issues `id` over a fresh key at `at`, for `ttl` capped at `max_ttl`.
fn issue_at(
    pki: &Pki,
    id: &SpiffeId,
    ttl: Duration,
    max_ttl: Duration,
    at: OffsetDateTime,
) -> Result<IssuedLeaf, IssueError> {
    let key = keys::generate_key().unwrap();
    pki.intermediate.issue_leaf(id, &key, ttl, max_ttl, at)
}

/// The URI SANs of a certificate, in order.
fn uri_sans(der: &[u8]) -> Vec<String> {
    with_cert(der, |c| {
        c.subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

// ---------------------------------------------------------------------------------------------
// The leaf
// ---------------------------------------------------------------------------------------------

#[test]
fn leaf_is_a_strict_x509_svid_for_the_authorized_id() {
    let pki = Pki::new(TD);
    let key = keys::generate_key().unwrap();
    let id = pki.id("/ns/prod/sa/payments");
    let leaf = pki
        .intermediate
        .issue_leaf(&id, &key, HOUR, DAY, now())
        .unwrap();

    with_cert(&leaf.der, |c| {
        // Exactly one SAN entry, the URI, and the SAN is critical because the subject is empty.
        let san = c.subject_alternative_name().unwrap().expect("SAN present");
        assert_eq!(san.value.general_names.len(), 1, "exactly one SAN entry");
        assert!(
            matches!(san.value.general_names[0], GeneralName::URI(u) if u == id.as_str()),
            "the only SAN is the authorized URI: {:?}",
            san.value.general_names
        );
        assert_eq!(c.subject().iter().count(), 0, "empty subject");
        assert!(
            san.critical,
            "SAN is critical with an empty subject (RFC 5280 4.2.1.6)"
        );

        let bc = c
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(!bc.value.ca, "cA=false");
        assert_eq!(bc.value.path_len_constraint, None);

        let ku = c.key_usage().unwrap().expect("key usage present");
        assert!(ku.critical, "key usage is critical");
        assert!(ku.value.digital_signature());
        assert_eq!(ku.value.flags, 1, "digitalSignature and nothing else");

        let eku = c.extended_key_usage().unwrap().expect("EKU present");
        let e = eku.value;
        assert!(e.server_auth && e.client_auth, "serverAuth + clientAuth");
        assert!(
            !e.any
                && !e.code_signing
                && !e.email_protection
                && !e.time_stamping
                && !e.ocsp_signing
                && e.other.is_empty(),
            "no other EKU"
        );

        // Chains to the intermediate: issuer name, AKI = the intermediate's SKI, signature.
        with_cert(pki.intermediate.cert(), |int| {
            assert_eq!(c.issuer().as_raw(), int.subject().as_raw());
            let aki = c
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                })
                .expect("AKI present");
            let ski = int
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                        Some(k.0.to_vec())
                    }
                    _ => None,
                })
                .expect("intermediate has an SKI");
            assert_eq!(aki, ski);
            c.verify_signature(Some(int.public_key()))
                .expect("signed by the intermediate");
        });

        // Over the requested key.
        assert_eq!(c.public_key().subject_public_key.data, key.public_key_raw());
        assert_eq!(leaf.serial, Serial::from_bytes(c.raw_serial()));
    });

    // Our own SVID rules accept it for both directions.
    let info = tether_certs::svid::inspect_leaf(&leaf.der, Some(tether_certs::svid::Usage::Client))
        .unwrap();
    assert_eq!(info.id, id);
    tether_certs::svid::inspect_leaf(&leaf.der, Some(tether_certs::svid::Usage::Server)).unwrap();
}

#[test]
fn serials_are_positive_distinct_and_carry_at_least_64_random_bits() {
    let pki = Pki::new(TD);
    let key = keys::generate_key().unwrap();
    let id = pki.id("/svc");
    let at = now();
    // Same key, same ID, same time: only the serial's randomness can tell the leaves apart (rcgen
    // would derive the same serial from the public key every time if none were set).
    let raws: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            let leaf = pki
                .intermediate
                .issue_leaf(&id, &key, HOUR, DAY, at)
                .unwrap();
            with_cert(&leaf.der, |c| {
                let raw = c.raw_serial().to_vec();
                assert!(raw[0] & 0x80 == 0, "DER INTEGER is positive");
                assert!(raw.iter().any(|b| *b != 0), "serial is not zero");
                assert!(raw.len() <= 20, "RFC 5280: at most 20 octets");
                raw
            })
        })
        .collect();
    let distinct: HashSet<_> = raws.iter().collect();
    assert_eq!(distinct.len(), raws.len(), "every serial is distinct");

    // Count the bit positions that vary across the sample: a fixed or counter-based bit would
    // stay constant; with 300 samples a truly random bit stays constant with odds 2^-299.
    let len = raws.iter().map(Vec::len).max().unwrap();
    let padded: Vec<Vec<u8>> = raws
        .iter()
        .map(|r| {
            let mut p = vec![0u8; len - r.len()];
            p.extend_from_slice(r);
            p
        })
        .collect();
    let varying = (0..len * 8)
        .filter(|bit| {
            let get = |s: &Vec<u8>| s[bit / 8] >> (7 - bit % 8) & 1;
            padded.iter().any(|s| get(s) != get(&padded[0]))
        })
        .count();
    assert!(varying >= 64, "only {varying} serial bits vary");
}

#[test]
fn not_before_is_backdated_by_five_minutes() {
    let pki = Pki::new(TD);
    let at = now();
    let leaf = issue_at(&pki, &pki.id("/svc"), HOUR, DAY, at).unwrap();
    assert_eq!(CLOCK_SKEW, Duration::from_secs(300));
    assert_eq!(leaf.not_before, at - Duration::from_secs(300));
    with_cert(&leaf.der, |c| {
        assert_eq!(c.validity().not_before.to_datetime(), at - CLOCK_SKEW);
    });
}

#[test]
fn not_after_is_now_plus_ttl_when_that_is_the_tightest_cap() {
    let pki = Pki::new(TD);
    let at = now();
    let leaf = issue_at(&pki, &pki.id("/svc"), HOUR, DAY, at).unwrap();
    assert_eq!(leaf.not_after, at + HOUR);
    assert!(!leaf.shortened_to_issuer);
    with_cert(&leaf.der, |c| {
        assert_eq!(c.validity().not_after.to_datetime(), at + HOUR)
    });
}

#[test]
fn not_after_is_capped_by_max_ttl() {
    let pki = Pki::new(TD);
    let at = now();
    let max = Duration::from_secs(600);
    let leaf = issue_at(&pki, &pki.id("/svc"), DAY, max, at).unwrap();
    assert_eq!(leaf.not_after, at + max);
    assert!(
        !leaf.shortened_to_issuer,
        "the max TTL is not the issuer cap"
    );
    with_cert(&leaf.der, |c| {
        assert_eq!(c.validity().not_after.to_datetime(), at + max)
    });
}

#[test]
fn not_after_is_capped_by_the_issuer_and_the_caller_is_told() {
    let at = now();
    // Intermediate with 30 minutes left; a 1 h leaf must stop when the intermediate does.
    let pki = Pki::with(TD, at, 30 * DAY, Duration::from_secs(1800));
    assert_eq!(pki.intermediate.not_after(), at + Duration::from_secs(1800));
    let leaf = issue_at(&pki, &pki.id("/svc"), HOUR, DAY, at).unwrap();
    assert_eq!(leaf.not_after, pki.intermediate.not_after());
    assert!(leaf.shortened_to_issuer);
    with_cert(&leaf.der, |c| {
        assert_eq!(
            c.validity().not_after.to_datetime(),
            pki.intermediate.not_after()
        )
    });
}

#[test]
fn absurd_ttls_are_capped_by_the_issuer_without_panicking() {
    let pki = Pki::new(TD);
    let at = now();
    let leaf = issue_at(&pki, &pki.id("/svc"), Duration::MAX, Duration::MAX, at).unwrap();
    assert_eq!(leaf.not_after, pki.intermediate.not_after());
    assert!(leaf.shortened_to_issuer);

    // A CA with a lifetime past what X.509 can express is refused, not a panic.
    assert!(matches!(
        issue::new_root(&td(TD), Duration::MAX, at),
        Err(IssueError::Lifetime(_))
    ));
    assert!(matches!(
        pki.root.issue_intermediate(&td(TD), Duration::MAX, at),
        Err(IssueError::Lifetime(_))
    ));
}

#[test]
fn the_bare_trust_domain_id_is_refused() {
    let pki = Pki::new(TD);
    let err = issue_at(&pki, &pki.td.id(), HOUR, DAY, now()).unwrap_err();
    assert!(matches!(err, IssueError::Identity(..)), "{err:?}");
}

#[test]
fn an_expired_issuer_refuses_to_issue() {
    let at = now();
    // Created two hours ago with a one-hour intermediate: expired an hour ago.
    let pki = Pki::with(TD, at - 2 * HOUR, 30 * DAY, HOUR);
    let err = issue_at(&pki, &pki.id("/svc"), HOUR, DAY, at).unwrap_err();
    assert!(matches!(err, IssueError::Lifetime(_)), "{err:?}");

    // At the very second it expires there is nothing left to give either.
    let err = issue_at(
        &pki,
        &pki.id("/svc"),
        HOUR,
        DAY,
        pki.intermediate.not_after(),
    )
    .unwrap_err();
    assert!(matches!(err, IssueError::Lifetime(_)), "{err:?}");
}

#[test]
fn a_zero_ttl_is_refused() {
    let pki = Pki::new(TD);
    let err = issue_at(&pki, &pki.id("/svc"), Duration::ZERO, DAY, now()).unwrap_err();
    assert!(matches!(err, IssueError::Lifetime(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Root and intermediate
// ---------------------------------------------------------------------------------------------

#[test]
fn root_and_intermediate_are_constrained_cas_naming_their_trust_domain() {
    let at = now();
    let pki = Pki::with(TD, at, 30 * DAY, 7 * DAY);
    with_cert(pki.root.cert(), |root| {
        assert_eq!(
            root.subject().as_raw(),
            root.issuer().as_raw(),
            "self-signed"
        );
        root.verify_signature(None)
            .expect("self-signature verifies");
        let bc = root.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(
            bc.path_len_constraint,
            Some(1),
            "root → intermediate → leaf"
        );
        let ku = root.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(root.validity().not_before.to_datetime(), at - CLOCK_SKEW);
        assert_eq!(root.validity().not_after.to_datetime(), at + 30 * DAY);
        assert_eq!(pki.root.subject_der(), root.subject().as_raw());

        with_cert(pki.intermediate.cert(), |int| {
            assert_eq!(int.issuer().as_raw(), root.subject().as_raw());
            int.verify_signature(Some(root.public_key()))
                .expect("signed by the root");
            let bc = int.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca);
            assert_eq!(bc.path_len_constraint, Some(0), "issues leaves only");
            let ku = int.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            assert_eq!(int.validity().not_after.to_datetime(), at + 7 * DAY);
            assert_eq!(pki.intermediate.not_after(), at + 7 * DAY);
        });
    });
    assert_eq!(uri_sans(pki.root.cert()), vec!["spiffe://example.org"]);
    assert_eq!(
        uri_sans(pki.intermediate.cert()),
        vec!["spiffe://example.org"]
    );
}

#[test]
fn cas_created_in_the_same_second_have_distinct_names() {
    // Chain building and CRL issuer checks go by name: two roots (or intermediates) of one trust
    // domain made at the same instant must not be mistaken for each other.
    let at = now();
    let a = Pki::with(TD, at, 30 * DAY, 7 * DAY);
    let b = Pki::with(TD, at, 30 * DAY, 7 * DAY);
    assert_ne!(a.root.subject_der(), b.root.subject_der());
    assert_ne!(a.intermediate.subject_der(), b.intermediate.subject_der());
    let (sibling, _) = a.root.issue_intermediate(&a.td, 7 * DAY, at).unwrap();
    assert_ne!(sibling.subject_der(), a.intermediate.subject_der());
}

#[test]
fn an_intermediate_never_outlives_its_root() {
    let at = now();
    let pki = Pki::with(TD, at, HOUR, 30 * DAY);
    assert_eq!(pki.intermediate.not_after(), pki.root.not_after());
    assert_eq!(pki.root.not_after(), at + HOUR);
}

#[test]
fn a_signer_reloads_from_pem_and_refuses_a_key_that_is_not_its_own() {
    let pki = Pki::new(TD);
    let reloaded = Signer::from_pem(
        &pki.intermediate.cert_pem(),
        &pki.intermediate_key.serialize_pem(),
    )
    .unwrap();
    assert_eq!(reloaded.cert(), pki.intermediate.cert());
    assert_eq!(reloaded.not_after(), pki.intermediate.not_after());
    let key = keys::generate_key().unwrap();
    let leaf = reloaded
        .issue_leaf(&pki.id("/svc"), &key, HOUR, DAY, now())
        .unwrap();
    with_cert(&leaf.der, |c| {
        with_cert(pki.intermediate.cert(), |int| {
            c.verify_signature(Some(int.public_key())).unwrap()
        })
    });

    // The root's key with the intermediate's certificate would sign leaves nobody can verify.
    let err = Signer::from_pem(&pki.intermediate.cert_pem(), &pki.root_key.serialize_pem())
        .err()
        .expect("mismatched key refused");
    assert!(matches!(err, IssueError::CaMaterial(_)), "{err:?}");

    for (cert, key) in [
        ("", pki.intermediate_key.serialize_pem()),
        ("not pem", pki.intermediate_key.serialize_pem()),
        (pki.intermediate.cert_pem().as_str(), String::new()),
        (pki.intermediate.cert_pem().as_str(), "garbage".into()),
    ] {
        let err = Signer::from_pem(cert, &key).err().expect("refused");
        assert!(matches!(err, IssueError::CaMaterial(_)), "{err:?}");
    }
}

#[test]
fn the_ca_api_server_certificate_names_its_hosts_and_serves_only() {
    let at = now();
    let pki = Pki::with(TD, at, 30 * DAY, 2 * HOUR);
    let key = keys::generate_key().unwrap();
    let sans = ["127.0.0.1".to_string(), "ca.example.org".to_string()];
    let cert = pki
        .intermediate
        .issue_server(&key, &sans, HOUR, at)
        .unwrap();
    assert_eq!(cert.not_after, at + HOUR);
    assert!(!cert.shortened_to_issuer);
    with_cert(&cert.der, |c| {
        let names: Vec<String> = c
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, vec!["ip:[127, 0, 0, 1]", "dns:ca.example.org"]);
        assert!(!c.basic_constraints().unwrap().unwrap().value.ca);
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert_eq!(Serial::from_bytes(c.raw_serial()), cert.serial);
    });

    // Capped by the issuer, absurd lifetimes included; refused once the issuer has expired.
    let long = pki
        .intermediate
        .issue_server(&key, &sans, Duration::MAX, at)
        .unwrap();
    assert_eq!(long.not_after, pki.intermediate.not_after());
    assert!(long.shortened_to_issuer);
    let err = pki
        .intermediate
        .issue_server(&key, &sans, HOUR, pki.intermediate.not_after())
        .unwrap_err();
    assert!(matches!(err, IssueError::Lifetime(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// CSRs
// ---------------------------------------------------------------------------------------------

#[test]
fn generate_csr_round_trips_through_parse_csr_as_pem_and_der() {
    let key = keys::generate_key().unwrap();
    let reloaded = keys::key_from_pem(&key.serialize_pem()).unwrap();
    assert_eq!(reloaded.public_key_raw(), key.public_key_raw());

    let id = SpiffeId::parse("spiffe://example.org/svc").unwrap();
    let pem = keys::generate_csr(&key, &id).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));

    // The CSR names the ID as a courtesy for humans.
    let der = csr_der(&pem);
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
    let names: Vec<String> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(s),
            _ => None,
        })
        .flat_map(|s| s.general_names.iter())
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, vec!["spiffe://example.org/svc"]);

    use rcgen::PublicKeyData;
    let from_pem = issue::parse_csr(pem.as_bytes()).unwrap();
    assert_eq!(from_pem.der_bytes(), key.public_key_raw());
    let from_der = issue::parse_csr(&der).unwrap();
    assert_eq!(from_der.der_bytes(), key.public_key_raw());
    // Blank lines before the PEM armour are fine.
    let padded = format!("\n\r\n{pem}");
    issue::parse_csr(padded.as_bytes()).unwrap();
}

#[test]
fn a_greedy_csr_gets_nothing_it_asked_for() {
    let pki = Pki::new(TD);
    let key = keys::generate_key().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "root of all evil");
    params.subject_alt_names = vec![
        SanType::DnsName("evil.example".try_into().unwrap()),
        uri_san("spiffe://example.org/admin"),
        uri_san("spiffe://other.org/x"),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::Any,
        ExtendedKeyUsagePurpose::CodeSigning,
        ExtendedKeyUsagePurpose::OcspSigning,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let csr = params.serialize_request(&key).unwrap();

    let spki = issue::parse_csr(csr.der()).unwrap();
    let authorized = pki.id("/svc");
    let leaf = pki
        .intermediate
        .issue_leaf(&authorized, &spki, HOUR, DAY, now())
        .unwrap();

    with_cert(&leaf.der, |c| {
        let san = c.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names.len(),
            1,
            "no DNS and no other URI: {:?}",
            san.general_names
        );
        assert_eq!(
            c.subject().iter().count(),
            0,
            "the CSR's subject is dropped"
        );
        assert!(
            !c.basic_constraints().unwrap().unwrap().value.ca,
            "not a CA"
        );
        assert_eq!(
            c.key_usage().unwrap().unwrap().value.flags,
            1,
            "no keyCertSign"
        );
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.any && !eku.code_signing && !eku.ocsp_signing);
        assert_eq!(c.public_key().subject_public_key.data, key.public_key_raw());
    });
    assert_eq!(uri_sans(&leaf.der), vec![authorized.as_str().to_string()]);
}

#[test]
fn a_csr_with_a_broken_signature_is_refused() {
    let key = keys::generate_key().unwrap();
    let pem =
        keys::generate_csr(&key, &SpiffeId::parse("spiffe://example.org/a").unwrap()).unwrap();
    let der = csr_der(&pem);
    let err = issue::parse_csr(&flip_signature(&der)).unwrap_err();
    assert!(matches!(err, IssueError::BadCsrSignature), "{err:?}");

    // The same through PEM.
    let bad_pem = tether_certs::pem::encode("CERTIFICATE REQUEST", &flip_signature(&der));
    let err = issue::parse_csr(bad_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, IssueError::BadCsrSignature), "{err:?}");
}

#[test]
fn a_csr_for_someone_elses_key_is_refused() {
    // Splice another key's SPKI into a valid CSR (same length for P-256): the self-signature
    // proves possession, so it must no longer verify.
    let key = keys::generate_key().unwrap();
    let other = keys::generate_key().unwrap();
    let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
    let mut der = csr_der(&keys::generate_csr(&key, &id).unwrap());
    let ours = key.public_key_raw();
    let pos = der
        .windows(ours.len())
        .position(|w| w == ours)
        .expect("public key inside the CSR");
    der[pos..pos + ours.len()].copy_from_slice(other.public_key_raw());
    let err = issue::parse_csr(&der).unwrap_err();
    assert!(matches!(err, IssueError::BadCsrSignature), "{err:?}");
}

#[test]
fn garbage_truncated_and_empty_csrs_are_malformed() {
    let key = keys::generate_key().unwrap();
    let pem =
        keys::generate_csr(&key, &SpiffeId::parse("spiffe://example.org/a").unwrap()).unwrap();
    let der = csr_der(&pem);
    let mut trailing = der.clone();
    trailing.extend_from_slice(b"\0\0");
    let cert_pem = cert_pem(Pki::new(TD).root.cert());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"hello, I am a CSR".to_vec()),
        ("half", der[..der.len() / 2].to_vec()),
        ("one byte short", der[..der.len() - 1].to_vec()),
        ("trailing bytes", trailing),
        ("truncated PEM", pem.as_bytes()[..pem.len() / 2].to_vec()),
        ("PEM of another kind", cert_pem.into_bytes()),
        (
            "PEM around garbage",
            tether_certs::pem::encode("CERTIFICATE REQUEST", b"nope").into_bytes(),
        ),
    ];
    for (what, input) in cases {
        match issue::parse_csr(&input) {
            Err(IssueError::MalformedCsr(_)) => {}
            other => panic!("{what}: expected MalformedCsr, got {other:?}"),
        }
    }
}

/// A CSR over a fresh `alg` key is refused as an unsupported key (only ECDSA P-256 is issued).
fn assert_csr_key_unsupported(alg: &'static rcgen::SignatureAlgorithm) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri_san("spiffe://example.org/a")];
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    let err = issue::parse_csr(&der).unwrap_err();
    assert!(matches!(err, IssueError::UnsupportedKey(_)), "{err:?}");
}

#[test]
fn an_rsa_csr_is_refused_as_unsupported() {
    assert_csr_key_unsupported(&rcgen::PKCS_RSA_SHA256);
}

#[test]
fn a_p384_csr_is_refused_as_unsupported() {
    assert_csr_key_unsupported(&rcgen::PKCS_ECDSA_P384_SHA384);
}

#[test]
fn an_ed25519_csr_is_refused_as_unsupported() {
    assert_csr_key_unsupported(&rcgen::PKCS_ED25519);
}

// ---------------------------------------------------------------------------------------------
// Independent validators
// ---------------------------------------------------------------------------------------------

#[test]
fn the_spiffe_crate_accepts_an_issued_leaf_as_an_x509_svid() {
    let pki = Pki::new(TD);
    let svid = pki.leaf("/ns/prod/sa/web");
    let chain: Vec<u8> = svid.chain.iter().flat_map(|c| c.to_vec()).collect();
    let parsed = spiffe::X509Svid::parse_from_der(&chain, &svid.key.serialize_der())
        .expect("spiffe crate accepts the SVID");
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://example.org/ns/prod/sa/web"
    );
    assert_eq!(parsed.spiffe_id().trust_domain_name(), "example.org");
    assert_eq!(parsed.cert_chain().len(), 2);
    assert_eq!(parsed.leaf().as_bytes(), svid.der.as_ref());
}

#[test]
fn openssl_verifies_the_chain_strictly_for_both_purposes() {
    if !have_openssl("the issued chain") {
        return;
    }
    let pki = Pki::new(TD);
    let other = Pki::new(TD);
    let svid = pki.leaf("/svc");
    let dir = tempfile::tempdir().unwrap();
    let write =
        |name: &str, der: &[u8]| std::fs::write(dir.path().join(name), cert_pem(der)).unwrap();
    write("root.pem", pki.root.cert());
    write("intermediate.pem", pki.intermediate.cert());
    write("leaf.pem", &svid.der);
    write("other-root.pem", other.root.cert());

    for purpose in ["sslclient", "sslserver"] {
        let out = openssl(
            dir.path(),
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                "leaf.pem",
            ],
        );
        let text = output_text(&out);
        assert!(
            out.status.success(),
            "openssl verify ({purpose}) failed: {text}"
        );
        assert!(text.contains("leaf.pem: OK"), "{text}");
    }

    // Control: the same command with another root of the same trust domain must fail, so the
    // check above is not vacuous.
    let out = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "other-root.pem",
            "-untrusted",
            "intermediate.pem",
            "leaf.pem",
        ],
    );
    assert!(!out.status.success(), "{}", output_text(&out));
}

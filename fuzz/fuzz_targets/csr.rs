//! CSR handling at the CA, as `POST /v1/enroll` and `POST /v1/renew` run it on the body's `csr`
//! (PEM, or DER): a real `tether-ca` (a scratch state dir, opened once). Every input is
//! enrolled with an unknown token, which must fail, and as a bad request exactly when
//! `parse_csr` refuses the CSR (the CSR is judged before the token). A CSR that `parse_csr`
//! accepts must then enroll with a fresh token and renew over the resulting certificate, and
//! both leaves must carry the CSR's public key: accepted means signable.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tether_ca::{Authority, CaError, InitOptions};
use tether_certs::{SpiffeId, TrustDomain};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

struct Fixture {
    authority: Authority,
    id: SpiffeId,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("ca");
        let td = TrustDomain::new("fuzz.test").expect("trust domain");
        Authority::init(&state, &InitOptions::with_defaults(td)).expect("init");
        Fixture {
            authority: Authority::open(&state).expect("open"),
            id: SpiffeId::parse("spiffe://fuzz.test/csr").expect("id"),
            _dir: dir,
        }
    })
}

/// The CSR's DER (the input itself, or its PEM block), to compare public keys.
fn csr_der(data: &[u8]) -> Vec<u8> {
    if data.trim_ascii_start().starts_with(b"-----BEGIN") {
        tether_certs::pem::block(data, "CERTIFICATE REQUEST").expect("parse_csr accepted it")
    } else {
        data.to_vec()
    }
}

/// The public key of a PEM certificate, raw SPKI DER.
fn leaf_spki(pem: &str) -> Vec<u8> {
    let der = tether_certs::pem::certificates(pem.as_bytes())
        .expect("leaf PEM")
        .remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("leaf DER");
    cert.public_key().raw.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let parsed = tether_certs::issue::parse_csr(data);
    match f.authority.enroll("tether-unknown-fuzz-token", data) {
        Ok(_) => panic!("an unknown token enrolled"),
        Err(CaError::BadRequest(_)) => assert!(parsed.is_err(), "{parsed:?}"),
        Err(CaError::Unauthorized(_)) => assert!(parsed.is_ok()),
        Err(other) => panic!("unexpected enrollment error: {other}"),
    }
    if parsed.is_err() {
        return;
    }
    let der = csr_der(data);
    let (_, csr) = X509CertificationRequest::from_der(&der).expect("parsed once");
    let want = csr.certification_request_info.subject_pki.raw;
    let token = f
        .authority
        .create_token(&f.id, Duration::from_secs(600))
        .expect("token");
    let issued = f
        .authority
        .enroll(&token, data)
        .expect("an accepted CSR enrolls");
    assert_eq!(leaf_spki(&issued.certificate), want);
    let chain = tether_certs::pem::certificates(issued.chain.as_bytes()).expect("chain");
    let renewed = f
        .authority
        .renew(&chain, data)
        .expect("an accepted CSR renews");
    assert_eq!(leaf_spki(&renewed.certificate), want);
});

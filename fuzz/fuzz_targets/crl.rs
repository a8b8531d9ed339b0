//! CRL parse and verify, as the sidecar reads the CA's CRL answer (PEM: the CRL, then the
//! signer) or a CRL file (DER or PEM). The fixed trust bundle and signer are a real
//! `tether-ca` root and intermediate (fuzz/fixtures/crl), so the seeds verify and mutations
//! of them reach every check. Beyond no panic: whatever verifies against the intermediate
//! directly also verifies through the bundle, and a verified list reparses, from its DER and
//! from its PEM, to the same number, dates and revoked set.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use tether_certs::{RevocationList, TrustBundle};
use time::OffsetDateTime;

struct Fixture {
    bundle: TrustBundle,
    signer: CertificateDer<'static>,
    /// Inside the fixture certificates' ten-year validity, and fixed so runs reproduce.
    now: OffsetDateTime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let bundle = TrustBundle::from_pem(include_bytes!("../fixtures/crl/bundle.pem"))
            .expect("fixture bundle");
        let signer =
            tether_certs::pem::certificates(include_bytes!("../fixtures/crl/intermediate.pem"))
                .expect("fixture intermediate")
                .remove(0);
        let now = OffsetDateTime::from_unix_timestamp(1_798_761_600).expect("2027-01-01");
        Fixture {
            bundle,
            signer,
            now,
        }
    })
}

fn same(a: &RevocationList, b: &RevocationList) {
    assert_eq!(a.number(), b.number());
    assert_eq!(a.this_update(), b.this_update());
    assert_eq!(a.next_update(), b.next_update());
    assert_eq!(a.revoked().len(), b.revoked().len());
    assert_eq!(a.der(), b.der());
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let direct = RevocationList::parse_and_verify(data, &f.signer);
    let in_bundle = RevocationList::parse_and_verify_in_bundle(
        data,
        &f.bundle,
        std::slice::from_ref(&f.signer),
        f.now,
    );
    if let Ok(crl) = &direct {
        let via_bundle = in_bundle
            .as_ref()
            .expect("verified by the intermediate, so by the bundle that vouches for it");
        let _ = crl.is_stale(f.now, std::time::Duration::from_secs(60));
        let from_der = RevocationList::parse_and_verify(crl.der(), &f.signer).expect("own DER");
        let from_pem =
            RevocationList::parse_and_verify(crl.to_pem().as_bytes(), &f.signer).expect("own PEM");
        for other in [via_bundle, &from_der, &from_pem] {
            same(crl, other);
        }
    }
});

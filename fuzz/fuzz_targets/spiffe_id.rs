//! SPIFFE ID parsing (URI SANs of peer certificates, policy `from` values). Beyond no panic:
//! an accepted ID prints back byte for byte, reparses to itself, and splits into a trust
//! domain and a path that rebuild it; a trust domain accepted alone makes the same ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_certs::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(td) = TrustDomain::new(s) {
        assert_eq!(td.as_str(), s);
        let id = td.id();
        assert!(id.is_trust_domain_id());
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    }
    let Ok(id) = SpiffeId::parse(s) else {
        return;
    };
    // Canonical form only: nothing is repaired, so the ID is exactly the input.
    assert_eq!(id.as_str(), s);
    assert_eq!(id.to_string(), s);
    assert!(s.len() <= SpiffeId::MAX_LEN);
    assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    let td = TrustDomain::new(id.trust_domain_name()).expect("an ID's trust domain is valid");
    assert!(id.is_member_of(&td));
    assert_eq!(td, id.trust_domain());
    let rebuilt = SpiffeId::from_parts(&td, id.path()).expect("an ID's parts rebuild it");
    assert_eq!(rebuilt, id);
    assert_eq!(id.is_trust_domain_id(), id.path().is_empty());
    for segment in id.segments() {
        assert!(!segment.is_empty() && segment != "." && segment != "..");
    }
});

//! The policy file: TOML text, as the start and the hot reloader read it. No panic on any text;
//! a policy that parses can decide requests (an empty one denies everything), including for
//! callers and paths taken from the text itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_certs::SpiffeId;
use tether_proxy::fuzzing::parse_policy;
use tether_proxy::policy::Decision;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse_policy(text) else {
        return;
    };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    // Quoted strings of the text are likely callers and paths of its rules.
    let strings: Vec<&str> = text.split('"').skip(1).step_by(2).collect();
    let callers = strings.iter().filter_map(|s| SpiffeId::parse(s).ok());
    for caller in callers.chain([SpiffeId::parse("spiffe://fuzz.test/a").unwrap()]) {
        let _ = policy.decide(&caller, None, None, now);
        for path in strings.iter().filter(|s| s.starts_with('/')).chain([&"/"]) {
            let _ = policy.decide(&caller, Some("GET"), Some(path), now);
        }
    }
    if policy.is_empty() {
        let caller = SpiffeId::parse("spiffe://fuzz.test/a").unwrap();
        assert!(matches!(
            policy.decide(&caller, Some("GET"), Some("/"), now),
            Decision::Deny
        ));
    }
});

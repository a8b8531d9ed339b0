//! Policy path normalization (the request path matched against the policy and forwarded to the
//! app), in each `path_params` mode: the first byte picks it (mod 3: reject, strip, keep), the
//! rest is the path. Beyond no panic, every accepted path's normal form starts with `/`, has no
//! empty, `.` or `..` segment, and is a fixed point: normalizing it again in the same mode
//! changes nothing. In reject and strip mode no segment of it is `.` or `..` once its `;`
//! parameters are removed, so a backend that strips them resolves nothing further.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proxy::fuzzing::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = mode % 3;
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(normal) = normalize_path(raw, mode) else {
        return;
    };
    assert!(normal.starts_with('/'), "{raw:?} -> {normal:?}");
    assert!(!normal.contains("//"), "{raw:?} -> {normal:?}");
    for segment in normal.split('/') {
        assert!(segment != "." && segment != "..", "{raw:?} -> {normal:?}");
        if mode != 2 {
            let name = segment.split(';').next().unwrap_or_default();
            assert!(
                name != "." && name != "..",
                "mode {mode}: {raw:?} -> {normal:?}"
            );
        }
    }
    assert_eq!(
        normalize_path(&normal, mode).as_deref(),
        Ok(normal.as_str()),
        "not idempotent in mode {mode} for {raw:?}"
    );
});

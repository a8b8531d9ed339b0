//! The sidecar's config file: TOML text, validated once into typed values. No panic, whatever
//! the text; paths are only joined, never read, so the base directory need not exist.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proxy::fuzzing::parse_config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_config(text);
    }
});

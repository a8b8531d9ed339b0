//! Shared fixtures for the `tether-certs` integration tests: the throw-away PKI of
//! `tether_testkit::pki` (root → intermediate per trust domain, rcgen at test time, nothing
//! committed; [`Pki::custom_leaf`] signs hand-built certificates that break one rule at a time),
//! the trust domains these suites use, and small helpers for the `openssl` CLI.

// Every test binary includes this module and uses a different subset of it (re-exports
// from the test kit included).
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::process::{Command, Output};

pub use tether_testkit::pki::{
    cert_pem, flip_signature, now, svid_params, uri_san, with_cert, Pki, Svid, DAY, HOUR,
};

/// The trust domain most tests live in.
pub const TD: &str = "example.org";
/// Another trust domain, for cross-domain cases.
pub const FOREIGN_TD: &str = "foreign.test";

/// Whether an `openssl` binary is usable; prints which check is skipped when not.
pub fn have_openssl(what: &str) -> bool {
    let ok = tether_testkit::tools::have("openssl");
    if !ok {
        eprintln!("skipping the openssl check of {what}");
    }
    ok
}

/// Runs `openssl <args>` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs")
}

/// Runs `openssl <args>` in `dir`, fails the test unless it succeeded, and returns its
/// stdout + stderr.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// stdout + stderr of an openssl run, for assertions and failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

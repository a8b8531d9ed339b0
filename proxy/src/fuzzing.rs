//! Entry points for `fuzz/` and the request-path benchmark (`benches/request_path.rs`), not an
//! API: thin wrappers that let them reach the sidecar's network-facing parsers and per-request
//! header work, some of which live in private modules. Each target and bench goes through here,
//! so a signature change is adapted in this one place.

use std::path::Path;

use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request};

use crate::config::{Config, ConfigError, Overrides};
use crate::policy::{PathError, PathParams, Policy, PolicyError};

/// Request-path normalization, exactly as the inbound applies it before the policy decides,
/// with `[inbound] path_params` chosen by `mode` (0 reject, 1 strip, else keep).
pub fn normalize_path(raw: &str, mode: u8) -> Result<String, PathError> {
    let params = match mode {
        0 => PathParams::Reject,
        1 => PathParams::Strip,
        _ => PathParams::Keep,
    };
    crate::policy::normalize_path_with(raw, params)
}

/// Settles a request's one authority (`forward::settle_authority`); the error is its message,
/// since the request path's error type is private.
pub fn settle_authority<B>(req: &mut Request<B>) -> Result<Authority, String> {
    crate::forward::settle_authority(req).map_err(|e| e.to_string())
}

/// Parses policy text as the policy loader and the hot reloader do.
pub fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, "fuzz-policy.toml")
}

/// Parses config text with no overrides; relative paths are joined to a base that is never
/// read, because validation only joins paths.
pub fn parse_config(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        "fuzz-config.toml",
        Path::new("/fuzz"),
        &Overrides::default(),
    )
}

/// Removes the hop-by-hop fields of `headers`, keeping `Upgrade` if asked
/// (`forward::strip_hop_by_hop`, four calls per request through a pair).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    crate::forward::strip_hop_by_hop(headers, keep_upgrade)
}

/// Removes every field that claims a caller identity (`forward::strip_identity_fields`).
pub fn strip_identity_fields(headers: &mut HeaderMap) {
    crate::forward::strip_identity_fields(headers)
}

/// Whether the request asks for a protocol upgrade (`forward::is_upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    crate::forward::is_upgrade(headers)
}

/// Keeps the one usable `x-request-id` or sets a fresh one (`observe::request_id::settle`).
pub fn settle_request_id(headers: &mut HeaderMap) -> HeaderValue {
    crate::observe::settle_request_id(headers)
}

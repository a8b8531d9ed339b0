//! Entry points for `fuzz/`, not an API: thin wrappers that let the fuzz targets reach the
//! sidecar's network-facing parsers, some of which live in private modules. Each target goes
//! through here, so a signature change is adapted in this one place.

use std::path::Path;

use http::uri::Authority;
use http::Request;

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

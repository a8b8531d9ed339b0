//! The config file as serde reads it: strings and options, before any validation. Every table
//! denies unknown keys, so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{AppProtocol, ConfigError, Mode, PeerProtocol};
use crate::revocation::OnStale;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) workers: Option<usize>,
    pub(super) identity: Option<RawIdentity>,
    pub(super) ca: Option<RawCa>,
    pub(super) inbound: Option<RawInbound>,
    pub(super) outbound: Option<RawListener>,
    #[serde(default)]
    pub(super) services: BTreeMap<String, RawService>,
    pub(super) admin: Option<RawListener>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) access_log: Option<RawAccessLog>,
}

/// `[identity]`: certificates from files.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) bundle: String,
    pub(super) crl: Option<String>,
    pub(super) on_stale_crl: Option<OnStale>,
    pub(super) crl_grace: Option<String>,
}

/// `[ca]`: certificates from the CA.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCa {
    pub(super) urls: Vec<String>,
    pub(super) bundle: String,
    pub(super) token_file: Option<String>,
    /// A Kubernetes projected service-account token (instead of `token_file`).
    pub(super) k8s_token_file: Option<String>,
    pub(super) state_dir: String,
    pub(super) on_stale_crl: Option<OnStale>,
    pub(super) crl_grace: Option<String>,
    /// Never read from the file (a `token` key there is unknown, so an error): a secret
    /// belongs in the environment (`TETHER_PROXY_TOKEN`), set here by the override.
    #[serde(skip)]
    pub(super) token: Option<String>,
}

/// `[inbound]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    pub(super) listen: String,
    pub(super) app: String,
    pub(super) policy: String,
    #[serde(default)]
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) app_protocol: AppProtocol,
    /// Read as a string so a bad value is reported against its key, with the allowed values.
    pub(super) path_params: Option<String>,
}

/// `[outbound]` and `[admin]`: a listener and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) listen: String,
}

/// One `[services.NAME]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) address: Vec<String>,
    pub(super) identity: String,
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) listen: Option<String>,
    pub(super) peer_protocol: Option<PeerProtocol>,
}

/// `[limits]`: every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) handshake_timeout: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) idle_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) drain_timeout: Option<String>,
}

/// `[access_log]`. `path` is read as any TOML value so that a missing or mistyped one is
/// reported against its key (a serde type error would name only the line).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub(super) path: Option<toml::Value>,
}

impl RawConfig {
    /// Reads `text`, the file called `file`; a TOML or shape error names the line it is on.
    pub(super) fn from_toml(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| {
                    // `get` rather than slicing: a span off a char boundary must not panic.
                    let before = text.get(..s.start).unwrap_or(text);
                    format!(" (line {})", before.lines().count().max(1))
                })
                .unwrap_or_default();
            ConfigError {
                file: file.to_owned(),
                key: "(syntax)".to_owned(),
                problem: format!("{}{line}", e.message()),
            }
        })
    }
}

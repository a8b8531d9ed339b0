//! Single settings from the command line or the environment (`TETHER_PROXY_*`) over the file's.
//!
//! [`Overrides`] is written once: clap reads it (flattened into `tether-proxy run`), and
//! [`Config::load`](super::Config::load) applies it. An override changes a setting the file
//! has; one whose section the file lacks is an error naming the flag, because dropping it would
//! start a sidecar other than the one the operator asked for. `--outbound-listen` and
//! `--admin-listen` are the exception: their sections hold nothing but `listen`, so the flag can
//! stand for the whole section and creates it.

use super::raw::{RawCa, RawConfig, RawIdentity, RawInbound, RawListener};
use super::ConfigError;

/// Command-line / environment overrides of single settings (`TETHER_PROXY_*`). Each field's
/// doc is its `--help` text.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Overrides {
    /// Runtime worker threads (default: all cores).
    #[arg(long, env = "TETHER_PROXY_WORKERS")]
    pub workers: Option<usize>,
    /// Overrides `[inbound] listen`.
    #[arg(long, env = "TETHER_PROXY_INBOUND_LISTEN")]
    pub inbound_listen: Option<String>,
    /// Overrides `[inbound] app`.
    #[arg(long, env = "TETHER_PROXY_INBOUND_APP")]
    pub inbound_app: Option<String>,
    /// Overrides `[inbound] policy`.
    #[arg(long, env = "TETHER_PROXY_INBOUND_POLICY")]
    pub inbound_policy: Option<String>,
    /// Overrides `[outbound] listen`.
    #[arg(long, env = "TETHER_PROXY_OUTBOUND_LISTEN")]
    pub outbound_listen: Option<String>,
    /// Overrides `[admin] listen`.
    #[arg(long, env = "TETHER_PROXY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Overrides `[identity] cert`.
    #[arg(long, env = "TETHER_PROXY_IDENTITY_CERT")]
    pub identity_cert: Option<String>,
    /// Overrides `[identity] key`.
    #[arg(long, env = "TETHER_PROXY_IDENTITY_KEY")]
    pub identity_key: Option<String>,
    /// Overrides `[identity] bundle`.
    #[arg(long, env = "TETHER_PROXY_IDENTITY_BUNDLE")]
    pub identity_bundle: Option<String>,
    /// Overrides `[identity] crl`.
    #[arg(long, env = "TETHER_PROXY_IDENTITY_CRL")]
    pub identity_crl: Option<String>,
    /// The one-time enrollment token for `[ca]` mode (instead of `ca.token_file`). Prefer the
    /// environment variable: a flag shows up in `ps`.
    #[arg(long, env = "TETHER_PROXY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// One override of a key in section `S`: the clap id of the field (its name), the value, and
/// how it is written into the section.
type Setter<'a, S> = (&'static str, &'a Option<String>, fn(&mut S, String));

impl Overrides {
    /// Writes every override that is set into `raw`, the file called `file`. Fails on the
    /// first override whose section the file has not got.
    pub(super) fn apply(&self, raw: &mut RawConfig, file: &str) -> Result<(), ConfigError> {
        if let Some(w) = self.workers {
            raw.workers = Some(w);
        }
        // `[outbound]` and `[admin]` are nothing but their listener.
        if let Some(listen) = &self.outbound_listen {
            raw.outbound = Some(RawListener {
                listen: listen.clone(),
            });
        }
        if let Some(listen) = &self.admin_listen {
            raw.admin = Some(RawListener {
                listen: listen.clone(),
            });
        }
        let inbound: [Setter<'_, RawInbound>; 3] = [
            ("inbound_listen", &self.inbound_listen, |s, v| s.listen = v),
            ("inbound_app", &self.inbound_app, |s, v| s.app = v),
            ("inbound_policy", &self.inbound_policy, |s, v| s.policy = v),
        ];
        set_in(&mut raw.inbound, "inbound", file, &inbound)?;
        let identity: [Setter<'_, RawIdentity>; 4] = [
            ("identity_cert", &self.identity_cert, |s, v| s.cert = v),
            ("identity_key", &self.identity_key, |s, v| s.key = v),
            ("identity_bundle", &self.identity_bundle, |s, v| {
                s.bundle = v
            }),
            ("identity_crl", &self.identity_crl, |s, v| s.crl = Some(v)),
        ];
        set_in(&mut raw.identity, "identity", file, &identity)?;
        // A blank token (`TETHER_PROXY_TOKEN=`) counts as none, as an unset variable would.
        let token = self.token.clone().filter(|t| !t.trim().is_empty());
        let ca: [Setter<'_, RawCa>; 1] = [("token", &token, |s, v| s.token = Some(v))];
        set_in(&mut raw.ca, "ca", file, &ca)
    }
}

/// Applies the `setters` that have a value to `section` (`[name]` of `file`), or fails naming
/// the first one's flag when the file has no such section.
fn set_in<S>(
    section: &mut Option<S>,
    name: &str,
    file: &str,
    setters: &[Setter<'_, S>],
) -> Result<(), ConfigError> {
    for (id, value, write) in setters {
        let Some(value) = value else { continue };
        let Some(section) = section.as_mut() else {
            let (flag, env) = flag_of(id);
            return Err(ConfigError {
                file: "<flags>".into(),
                key: flag,
                problem: format!(
                    "{file} has no [{name}] section for this override to change (it was set \
                     by the flag or {env}); add [{name}] to the file or drop the override"
                ),
            });
        };
        write(section, value.clone());
    }
    Ok(())
}

/// The flag (`--inbound-app`) and environment variable of the field with clap id `id`, read
/// from clap's own definition so that they are spelled in one place.
pub(super) fn flag_of(id: &str) -> (String, String) {
    let command = <Overrides as clap::Args>::augment_args(clap::Command::new("tether-proxy"));
    let arg = command.get_arguments().find(|a| a.get_id() == id);
    let flag = match arg.and_then(|a| a.get_long()) {
        Some(long) => format!("--{long}"),
        // Unreachable while every id names a field; clap's own spelling rule as the fallback.
        None => format!("--{}", id.replace('_', "-")),
    };
    let env = match arg.and_then(|a| a.get_env()) {
        Some(env) => env.to_string_lossy().into_owned(),
        None => "its environment variable".to_owned(),
    };
    (flag, env)
}

//! What a CA is made with and runs under: [`InitOptions`] (what `init` creates) and
//! [`Settings`] (the lifetimes chosen at `init` and stored in `ca.db`), plus the admin identity's
//! path. Plain data, so the state directory and the authority can share it without importing
//! each other.

use std::time::Duration;

use tether_certs::TrustDomain;

use crate::store::DatabaseUrl;

/// The admin identity's path under the trust domain: only it may call `POST /v1/revoke`.
pub const ADMIN_PATH: &str = "/tether/admin";

/// Settings chosen at `init` and stored in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Lifetime of a leaf when the caller does not ask for one.
    pub default_ttl: Duration,
    /// Longest leaf lifetime the CA grants, whatever is asked.
    pub max_ttl: Duration,
    /// nextUpdate − thisUpdate of every CRL.
    pub crl_validity: Duration,
}

/// What `init` is asked to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The trust domain the CA speaks for.
    pub trust_domain: TrustDomain,
    /// Root lifetime.
    pub root_ttl: Duration,
    /// Intermediate lifetime (capped at the root's).
    pub intermediate_ttl: Duration,
    /// Extra DNS names / IPs for the API's server certificate.
    pub extra_sans: Vec<String>,
    /// Stored settings.
    pub settings: Settings,
    /// The shared PostgreSQL database; `None`: an SQLite file in the state dir.
    pub database: Option<DatabaseUrl>,
}

impl InitOptions {
    /// What `tether-ca init --trust-domain TD` creates with no other flag: root 365 d,
    /// intermediate 30 d, leaves 1 h by default and 24 h at most, CRLs valid 24 h, no extra SANs.
    /// The CLI's flag defaults are checked against this in `cli::tests`.
    pub fn with_defaults(trust_domain: TrustDomain) -> Self {
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        InitOptions {
            trust_domain,
            root_ttl: 365 * DAY,
            intermediate_ttl: 30 * DAY,
            extra_sans: Vec::new(),
            database: None,
            settings: Settings {
                default_ttl: HOUR,
                max_ttl: DAY,
                crl_validity: DAY,
            },
        }
    }
}

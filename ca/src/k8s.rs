//! Kubernetes enrollment: a pod proves who it is with its projected service-account token (a
//! JWT the kubelet mounts, audience `tether-ca`) instead of a one-time token, and gets
//! `spiffe://TD/ns/NAMESPACE/sa/SERVICEACCOUNT`.
//!
//! [`K8sVerifier`] checks a token against the cluster's published keys (`jwks.rs`: a file or an
//! `https://` URL such as the apiserver's `/openid/v1/jwks`, fetched by `fetch.rs`), then its
//! claims (`verify.rs`), then the `--k8s-allow` globs (`allow.rs`). What it trusts: whoever holds
//! a valid token of a service account can enroll as that service account until the token
//! expires — the token is a bearer credential, reusable, not bound to one enrollment. Hence the
//! revocation gate in [`crate::Authority::enroll_verified`]: after `revoke`, a token issued
//! before the revocation no longer enrolls (the kubelet's next token will). Asking the
//! apiserver (TokenReview) whether the pod still exists would also catch deleted pods; that is
//! the next step, not done here.
//!
//! Refusals ([`Refusal`]) name the failed check; the token itself is never logged or echoed.

mod allow;
mod fetch;
mod jwks;
#[cfg(test)]
mod tests;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use tether_certs::{SpiffeId, TrustDomain};

pub use allow::AllowList;
pub use jwks::JwksSource;
use jwks::{Jwks, Lookup};
use verify::shown;
pub(crate) use verify::LEEWAY_SECS;

/// The issuer of legacy secret-based tokens, which never expire: refused as `--k8s-issuer`
/// and in every token.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// The audience sidecars ask the kubelet for, `--k8s-audience`'s default.
pub const DEFAULT_AUDIENCE: &str = "tether-ca";

/// How often the JWKS is re-read when nothing asks sooner: the apiserver adds a key well before
/// signing with it, and an unknown `kid` triggers a refresh anyway, so this mainly drops
/// retired keys.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// How often a JWKS that never loaded is retried: a CA started before the apiserver answers
/// accepts Kubernetes enrollments within seconds of it answering.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// What `tether-ca serve` accepts Kubernetes tokens from (see `cli/args.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sOptions {
    /// The `iss` every token must carry (the apiserver's `--service-account-issuer`).
    pub issuer: String,
    /// The audience every token must list.
    pub audience: String,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Who may enroll.
    pub allow: AllowList,
}

/// The configuration cannot work: `serve` refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("Kubernetes enrollment: {0}")]
pub struct SetupError(pub(crate) String);

/// Why a token does not enroll; the variant picks the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a valid token of this cluster for this CA → 401.
    Unauthorized(String),
    /// A valid token of a service account outside `--k8s-allow` → 403.
    NotAllowed(String),
    /// No key set has loaded yet → 503, retryable.
    Unavailable(String),
}

/// A verified token: the identity it enrolls and when the token was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Enrollee {
    /// `spiffe://TD/ns/NS/sa/SA`.
    pub(crate) id: SpiffeId,
    /// The token's `iat`, Unix seconds (the revocation gate compares it).
    pub(crate) issued_at: i64,
}

/// Verifies service-account tokens for one cluster.
pub struct K8sVerifier {
    /// What it accepts.
    options: K8sOptions,
    /// The cluster's keys.
    jwks: Jwks,
}

impl K8sVerifier {
    /// Loads the key set: a file that cannot be read or holds no usable key is an error; a URL
    /// that cannot be fetched is logged and retried (see [`K8sVerifier::keep_fresh`]).
    pub async fn start(options: K8sOptions) -> Result<Arc<Self>, SetupError> {
        let jwks = Jwks::open(options.jwks.clone()).await?;
        Ok(Arc::new(K8sVerifier { options, jwks }))
    }

    /// What it accepts, for the startup log.
    pub fn describe(&self) -> String {
        let o = &self.options;
        format!(
            "issuer {}, audience {}, keys from {}, allowed: {}",
            o.issuer,
            o.audience,
            o.jwks.describe(),
            o.allow.describe()
        )
    }

    /// Re-reads the key set every [`REFRESH_INTERVAL`] (every [`RETRY_INTERVAL`] until one has
    /// loaded), forever; a failed refresh keeps the last good set. Runs beside the API.
    pub async fn keep_fresh(self: Arc<Self>) {
        loop {
            let wait = if self.jwks.loaded() {
                REFRESH_INTERVAL
            } else {
                RETRY_INTERVAL
            };
            tokio::time::sleep(wait).await;
            if let Err(e) = self.jwks.refresh().await {
                tracing::warn!(
                    "refreshing the Kubernetes JWKS from {}: {e}; keeping the last good set",
                    self.options.jwks.describe()
                );
            }
        }
    }

    /// Who `token` enrolls as in trust domain `td`, or why it does not.
    pub(crate) async fn verify(&self, token: &str, td: &TrustDomain) -> Result<Enrollee, Refusal> {
        let (alg, kid) = verify::header(token).map_err(Refusal::Unauthorized)?;
        let key = match self.jwks.key(&kid).await {
            Lookup::Found(key) => key,
            Lookup::Unknown => {
                return Err(Refusal::Unauthorized(format!(
                    "unknown key id {}: not in the cluster's JWKS",
                    shown(&kid)
                )))
            }
            Lookup::NotLoaded => {
                return Err(Refusal::Unavailable(
                    "the cluster's JWKS has not loaded yet; retry".into(),
                ))
            }
        };
        let o = &self.options;
        let now = jsonwebtoken::get_current_timestamp();
        let who = verify::claims(token, (alg, &kid), &key, (&o.issuer, &o.audience), now)
            .map_err(Refusal::Unauthorized)?;
        let (ns, sa) = (&who.namespace, &who.service_account);
        // The apiserver only signs real names, but a name with a '/' would change the path's
        // shape (and dodge the allow-list's segments), so it is checked, not assumed.
        if !is_k8s_name(ns, 63, false) || !is_k8s_name(sa, 253, true) {
            return Err(Refusal::Unauthorized(format!(
                "the token's namespace/serviceaccount {}/{} is not a Kubernetes name",
                shown(ns),
                shown(sa)
            )));
        }
        let id = SpiffeId::from_parts(td, &format!("/ns/{ns}/sa/{sa}")).map_err(|e| {
            Refusal::Unauthorized(format!(
                "service account {ns}/{sa} makes no valid SPIFFE ID: {e}"
            ))
        })?;
        if !o.allow.allows(ns, sa) {
            return Err(Refusal::NotAllowed(format!(
                "service account {ns}/{sa} may not enroll here (not matched by --k8s-allow)"
            )));
        }
        Ok(Enrollee {
            id,
            issued_at: who.issued_at,
        })
    }
}

/// A Kubernetes object name: lower-case letters, digits and '-' (and '.' where `dots`, as in a
/// DNS subdomain; a namespace is a DNS label), starting and ending alphanumeric, at most `max`.
fn is_k8s_name(name: &str, max: usize, dots: bool) -> bool {
    let ok =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (1..=max).contains(&name.len())
        && name.bytes().all(ok)
        && edge(name.as_bytes().first())
        && edge(name.as_bytes().last())
}

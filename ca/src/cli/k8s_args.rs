//! `tether-ca serve`'s Kubernetes flags ([`K8sArgs`]), each with its `TETHER_CA_K8S_*`
//! environment fallback, and the checks that refuse, before anything starts, a combination that
//! cannot work (a legacy issuer, no JWKS, a plain-http JWKS, a URL without roots, a bad glob).

use std::path::PathBuf;

use clap::Args;

use crate::k8s::{AllowList, JwksSource, K8sOptions, DEFAULT_AUDIENCE, LEGACY_ISSUER};

/// `serve`'s flags for enrollment with Kubernetes service-account tokens (see [`crate::k8s`]).
#[derive(Debug, Args)]
pub struct K8sArgs {
    /// Accept pods' projected service-account tokens issued by ISS (the apiserver's
    /// --service-account-issuer), enrolling spiffe://TD/ns/NAMESPACE/sa/SERVICEACCOUNT.
    #[arg(long = "k8s-issuer", env = "TETHER_CA_K8S_ISSUER", value_name = "ISS")]
    pub issuer: Option<String>,
    /// The cluster's signing keys: an https:// URL (e.g.
    /// https://kubernetes.default.svc/openid/v1/jwks) or a JWKS file. Required with --k8s-issuer.
    #[arg(
        long = "k8s-jwks",
        env = "TETHER_CA_K8S_JWKS",
        value_name = "FILE_OR_URL"
    )]
    pub jwks: Option<String>,
    /// The audience every token must list [default: tether-ca].
    #[arg(
        long = "k8s-audience",
        env = "TETHER_CA_K8S_AUDIENCE",
        value_name = "AUD"
    )]
    pub audience: Option<String>,
    /// PEM roots that verify the https JWKS server (in a pod:
    /// /var/run/secrets/kubernetes.io/serviceaccount/ca.crt). Required with a URL.
    #[arg(
        long = "k8s-jwks-ca",
        env = "TETHER_CA_K8S_JWKS_CA",
        value_name = "FILE"
    )]
    pub jwks_ca: Option<PathBuf>,
    /// A bearer token sent when fetching the JWKS, re-read at every fetch (in a pod:
    /// /var/run/secrets/kubernetes.io/serviceaccount/token).
    #[arg(
        long = "k8s-jwks-token-file",
        env = "TETHER_CA_K8S_JWKS_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub jwks_token_file: Option<PathBuf>,
    /// Who may enroll, as NAMESPACE/SERVICEACCOUNT globs (`*` within a segment, `?`), e.g.
    /// payments/* or */api; repeatable. None: every service account.
    #[arg(
        long = "k8s-allow",
        env = "TETHER_CA_K8S_ALLOW",
        value_delimiter = ',',
        value_name = "NS/SA"
    )]
    pub allow: Vec<String>,
}

impl K8sArgs {
    /// What `serve` verifies tokens with, `None` without --k8s-issuer; refused when the flags
    /// cannot work together.
    pub fn options(&self) -> Result<Option<K8sOptions>, String> {
        let Some(issuer) = self.issuer.as_deref() else {
            // No default stands in for a flag here, so every one given is seen and named.
            let given = [
                ("--k8s-jwks", self.jwks.is_some()),
                ("--k8s-audience", self.audience.is_some()),
                ("--k8s-jwks-ca", self.jwks_ca.is_some()),
                ("--k8s-jwks-token-file", self.jwks_token_file.is_some()),
                ("--k8s-allow", !self.allow.is_empty()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                return Err(format!("{flag} needs --k8s-issuer"));
            }
            return Ok(None);
        };
        if issuer.is_empty() || issuer == LEGACY_ISSUER {
            return Err(format!(
                "--k8s-issuer {issuer:?}: give the apiserver's --service-account-issuer; legacy \
                 secret-based tokens ({LEGACY_ISSUER}) never expire and are not accepted"
            ));
        }
        let audience = self.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE);
        if audience.is_empty() {
            return Err("--k8s-audience must not be empty".into());
        }
        let jwks = self
            .jwks
            .as_deref()
            .ok_or("--k8s-issuer needs --k8s-jwks FILE_OR_URL")?;
        Ok(Some(K8sOptions {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            jwks: JwksSource::parse(jwks, self.jwks_ca.clone(), self.jwks_token_file.clone())?,
            allow: AllowList::parse(&self.allow)?,
        }))
    }
}

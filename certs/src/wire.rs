//! The contract between the CA's HTTPS API and the sidecar's client of it, written once so the
//! two sides cannot drift: the URL paths, the JSON bodies, the `x-tether-*` header names, the
//! CRL poll's query, the content types and the size limits. Plain data and constants; the HTTP
//! code lives with each side.
//!
//! | route | request | answer |
//! |---|---|---|
//! | `POST` [`ENROLL_PATH`] | [`EnrollRequest`] | [`Issued`] |
//! | `POST` [`RENEW_PATH`] (mTLS) | [`RenewRequest`] | [`Issued`] |
//! | `GET` [`BUNDLE_PATH`] | — | PEM; [`BUNDLE_VERSION_HEADER`] |
//! | `GET` [`CRL_PATH`]`?after=N&wait=30s` | [`INSTANCE_HEADER`], [`BUNDLE_VERSION_HEADER`] | PEM (CRL, signer); [`CRL_NUMBER_HEADER`], [`BUNDLE_VERSION_HEADER`] |
//! | `POST` [`REVOKE_PATH`] (admin mTLS) | [`RevokeRequest`] | [`SerialRevoked`] or [`IdentityRevoked`] |
//! | `GET` [`METRICS_PATH`] | — | Prometheus text |
//!
//! Every error answer is an [`ErrorBody`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `POST`: a one-time token and a CSR become a first certificate.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// `POST`, authenticated by the current certificate: a CSR becomes a certificate for the same
/// identity.
pub const RENEW_PATH: &str = "/v1/renew";
/// `GET`: the trust bundle, PEM.
pub const BUNDLE_PATH: &str = "/v1/bundle";
/// `GET`: the current CRL and the certificates of its signer, PEM; long-polls with
/// [`crl_poll_uri`].
pub const CRL_PATH: &str = "/v1/crl";
/// `POST`, admin only: revoke a serial or an identity.
pub const REVOKE_PATH: &str = "/v1/revoke";
/// `GET`: Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// Request header: the polling sidecar's per-process id (opaque), the key of its fleet row.
pub const INSTANCE_HEADER: &str = "x-tether-instance";
/// Request header (the sidecar's) and response header (the CA's): a trust bundle version.
pub const BUNDLE_VERSION_HEADER: &str = "x-tether-bundle-version";
/// Response header: the CRL number of the answer (or of the current CRL, on a 304).
pub const CRL_NUMBER_HEADER: &str = "x-tether-crl-number";

/// CRL query parameter: the CRL number the poller has; answered at once when a newer one exists,
/// otherwise held until one is published or the wait ends (then 304).
pub const CRL_AFTER_PARAM: &str = "after";
/// CRL query parameter: how long to hold the poll, as a humantime duration (`30s`).
pub const CRL_WAIT_PARAM: &str = "wait";

/// Content type of the JSON bodies.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content type of the bundle answer.
pub const PEM_CONTENT_TYPE: &str = "application/x-pem-file";
/// Content type of the CRL answer (PEM text: the CRL, then its signer's certificates).
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";

/// Largest request body the CA reads: a P-256 CSR in PEM is under 1 KiB and a token under 100
/// bytes, so anything near this limit is not a request of ours.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Largest answer body the sidecar reads from the CA. The biggest answer is a CRL: an entry is
/// about 50 bytes of DER (serial, time, reason), 4/3 of that in PEM, so 16 MiB holds some
/// 200,000 revoked, unexpired certificates plus the signer's certificates — far beyond a
/// fleet's worth of short-lived leaves — while a broken or hostile CA still cannot make a
/// sidecar buffer without bound.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// The path and query of a CRL long-poll: newer than CRL `after`, waiting up to `wait` (whole
/// seconds).
pub fn crl_poll_uri(after: u64, wait: Duration) -> String {
    format!(
        "{CRL_PATH}?{CRL_AFTER_PARAM}={after}&{CRL_WAIT_PARAM}={}s",
        wait.as_secs()
    )
}

/// Body of `POST /v1/enroll`. Its `Debug` hides the tokens (a service-account token is
/// reusable until it expires).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token (`tether-…`). Give this or `k8s_token`, never both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A Kubernetes projected service-account token (a JWT with audience `tether-ca`): the CA
    /// verifies it against the cluster's JWKS and enrolls `spiffe://TD/ns/NS/sa/SA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_token: Option<String>,
    /// The CSR, PEM.
    pub csr: String,
}

/// What an enrollment proves itself with (see [`EnrollRequest::credential`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EnrollCredential<'a> {
    /// A one-time token made by `tether-ca enroll`.
    Token(&'a str),
    /// A Kubernetes service-account token.
    K8s(&'a str),
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("EnrollRequest")
            .field("token", &hidden(&self.token))
            .field("k8s_token", &hidden(&self.k8s_token))
            .field("csr", &self.csr)
            .finish()
    }
}

impl std::fmt::Debug for EnrollCredential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnrollCredential::Token(_) => "Token(<redacted>)",
            EnrollCredential::K8s(_) => "K8s(<redacted>)",
        })
    }
}

impl EnrollRequest {
    /// A request proving itself with `credential`.
    pub fn new(credential: EnrollCredential<'_>, csr: String) -> Self {
        let (token, k8s_token) = match credential {
            EnrollCredential::Token(t) => (Some(t.to_string()), None),
            EnrollCredential::K8s(t) => (None, Some(t.to_string())),
        };
        EnrollRequest {
            token,
            k8s_token,
            csr,
        }
    }

    /// The one credential the request carries; an error when it has none or both.
    pub fn credential(&self) -> Result<EnrollCredential<'_>, &'static str> {
        match (&self.token, &self.k8s_token) {
            (Some(t), None) => Ok(EnrollCredential::Token(t)),
            (None, Some(t)) => Ok(EnrollCredential::K8s(t)),
            (None, None) => Err("enrollment needs a token or a k8s_token"),
            (Some(_), Some(_)) => Err("enrollment takes a token or a k8s_token, not both"),
        }
    }
}

/// Body of `POST /v1/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The CSR over the new key, PEM.
    pub csr: String,
}

/// Body of `POST /v1/revoke`: exactly one of `serial` or `id`; `before` only with `id`. The CA
/// checks those rules and answers 400 when they are broken, so the type stays loose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// A serial, hex (colons and case are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A SPIFFE ID: revoke every unexpired certificate of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// With `id`: only certificates issued before this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// An RFC 5280 reason (`key-compromise`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A certificate the CA just issued, with everything a workload needs to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The identity in the certificate.
    pub spiffe_id: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// The leaf, PEM.
    pub certificate: String,
    /// Leaf + intermediate (+ its cross-certificate during a rotation), PEM: what a TLS
    /// endpoint presents.
    pub chain: String,
    /// The trust bundle (roots), PEM.
    pub bundle: String,
    /// Set when the lifetime was cut to the issuing CA's notAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a revocation did, as the `status` field says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeStatus {
    /// The serial was revoked before; nothing changed.
    AlreadyRevoked,
    /// The identity had no unrevoked, unexpired certificate issued before the time given.
    NothingToRevoke,
    /// Newly revoked, and a CRL listing it was published.
    Revoked,
}

/// Answer to a revocation by serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialRevoked {
    /// The serial as the request spelled it.
    pub serial: String,
    /// `revoked` or `already_revoked`.
    pub status: RevokeStatus,
    /// With `revoked`: the CRL that lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_number: Option<u64>,
    /// With `already_revoked`: when it was revoked, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// Answer to a revocation by identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRevoked {
    /// The SPIFFE ID as the request spelled it.
    pub id: String,
    /// `revoked` or `nothing_to_revoke`.
    pub status: RevokeStatus,
    /// How many certificates were revoked.
    pub revoked: usize,
    /// Their serials, lowercase hex.
    pub serials: Vec<String>,
    /// The CRL that lists them; `null` when nothing was revoked.
    pub crl_number: Option<u64>,
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_poll_uri_names_the_path_and_both_parameters() {
        assert_eq!(
            crl_poll_uri(7, Duration::from_millis(30_900)),
            "/v1/crl?after=7&wait=30s"
        );
    }

    #[test]
    fn requests_reject_unknown_fields() {
        let ok: EnrollRequest = serde_json::from_str(r#"{"token":"t","csr":"c"}"#).unwrap();
        assert_eq!(ok.credential(), Ok(EnrollCredential::Token("t")));
        assert!(serde_json::from_str::<EnrollRequest>(r#"{"token":"t","csr":"c","x":1}"#).is_err());
        assert!(serde_json::from_str::<RenewRequest>(r#"{"csr":"c","token":"t"}"#).is_err());
        assert!(serde_json::from_str::<RevokeRequest>(r#"{"serial":"01","why":"x"}"#).is_err());
        let revoke: RevokeRequest = serde_json::from_str(r#"{"id":"spiffe://td/a"}"#).unwrap();
        assert_eq!(revoke.id.as_deref(), Some("spiffe://td/a"));
        assert_eq!(revoke.serial, None);
    }

    #[test]
    fn an_enrollment_carries_exactly_one_credential() {
        let k8s: EnrollRequest = serde_json::from_str(r#"{"k8s_token":"j","csr":"c"}"#).unwrap();
        assert_eq!(k8s.credential(), Ok(EnrollCredential::K8s("j")));
        for body in [
            r#"{"csr":"c"}"#,
            r#"{"token":"t","k8s_token":"j","csr":"c"}"#,
        ] {
            let req: EnrollRequest = serde_json::from_str(body).unwrap();
            assert!(req.credential().is_err(), "{body}");
        }
        let wire =
            serde_json::to_string(&EnrollRequest::new(EnrollCredential::K8s("j"), "c".into()))
                .unwrap();
        assert_eq!(wire, r#"{"k8s_token":"j","csr":"c"}"#);
    }

    #[test]
    fn issued_omits_an_absent_note_and_reads_without_one() {
        let issued = Issued {
            spiffe_id: "spiffe://td/a".into(),
            serial: "01".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            certificate: "C".into(),
            chain: "CH".into(),
            bundle: "B".into(),
            note: None,
        };
        let text = serde_json::to_string(&issued).unwrap();
        assert!(!text.contains("note"), "{text}");
        assert_eq!(serde_json::from_str::<Issued>(&text).unwrap(), issued);
    }

    #[test]
    fn revocation_answers_keep_their_field_names() {
        let serial = SerialRevoked {
            serial: "0A".into(),
            status: RevokeStatus::AlreadyRevoked,
            crl_number: None,
            revoked_at: Some(5),
        };
        assert_eq!(
            serde_json::to_value(&serial).unwrap(),
            serde_json::json!({"serial": "0A", "status": "already_revoked", "revoked_at": 5})
        );
        let identity = IdentityRevoked {
            id: "spiffe://td/a".into(),
            status: RevokeStatus::NothingToRevoke,
            revoked: 0,
            serials: vec![],
            crl_number: None,
        };
        assert_eq!(
            serde_json::to_value(&identity).unwrap(),
            serde_json::json!({"id": "spiffe://td/a", "status": "nothing_to_revoke",
                "revoked": 0, "serials": [], "crl_number": null})
        );
    }
}

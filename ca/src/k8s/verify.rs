//! The checks on one service-account token, with `jsonwebtoken` doing the JWS work: the header
//! ([`header`]: RS256 or ES256 and a `kid`), then the signature and the claims ([`claims`]:
//! issuer, audience, `exp` required, `nbf` and `iat` not in the future beyond
//! [`LEEWAY_SECS`], the `kubernetes.io` namespace and service account, and `sub` naming them).
//! Each refusal says which check failed, in words an operator can act on, and never quotes the
//! token.

use base64::Engine as _;
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::jwks::Key;
use super::LEGACY_ISSUER;

/// Clock skew allowed between the apiserver and the CA, on `exp`, `nbf` and `iat`: node clocks
/// are NTP-synced to well within this, and a token lives an hour or more.
pub(crate) const LEEWAY_SECS: u64 = 30;

/// The claims Tether reads. Every field is optional, so a missing one is refused by name
/// instead of as "malformed".
#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    iat: Option<i64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubeClaims>,
}

/// The apiserver's private claim.
#[derive(Deserialize)]
struct KubeClaims {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
}

/// An object reference in it.
#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Subject {
    /// The pod's namespace.
    pub(super) namespace: String,
    /// Its service account.
    pub(super) service_account: String,
    /// The token's `iat`, Unix seconds.
    pub(super) issued_at: i64,
}

/// The token's algorithm and key id, or why they are refused.
pub(super) fn header(token: &str) -> Result<(Algorithm, String), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| match named_alg(token) {
        Some(alg) if alg.eq_ignore_ascii_case("none") => {
            "alg none is not accepted: the token must be signed (RS256 or ES256)".to_string()
        }
        // An alg jsonwebtoken knows, so the header failed for another reason.
        Some(alg) if alg.parse::<Algorithm>().is_ok() => malformed(&e),
        Some(alg) => format!("alg {} is not accepted (RS256 or ES256 only)", shown(&alg)),
        None => malformed(&e),
    })?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(format!(
            "alg {:?} is not accepted (RS256 or ES256 only)",
            header.alg
        ));
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or("the token's header has no kid (key id)")?;
    Ok((header.alg, kid))
}

/// Verifies `token`'s signature with `key` (the JWKS key `kid`) and its claims against
/// `issuer` and `audience` at `now` (Unix seconds); who it speaks for, or why it is refused.
pub(super) fn claims(
    token: &str,
    (alg, kid): (Algorithm, &str),
    key: &Key,
    (issuer, audience): (&str, &str),
    now: u64,
) -> Result<Subject, String> {
    if key.alg != alg {
        return Err(format!(
            "the token says alg {alg:?} but key {} is {:?}",
            shown(kid),
            key.alg
        ));
    }
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    // Without them listed, a token that lacks `iss` or `aud` would pass those checks.
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map_err(|e| refusal(token, kid, &e, issuer, audience))?
        .claims;
    let issued_at = claims.iat.ok_or("the token has no iat claim")?;
    if issued_at > now.saturating_add(LEEWAY_SECS) as i64 {
        return Err(format!(
            "the token was issued in the future (iat more than {LEEWAY_SECS} s ahead of this \
             CA's clock)"
        ));
    }
    let kube = claims.kubernetes.as_ref();
    let namespace = kube.and_then(|k| k.namespace.clone());
    let sa = kube.and_then(|k| k.serviceaccount.as_ref()?.name.clone());
    let (Some(namespace), Some(service_account)) = (namespace, sa) else {
        return Err(
            "the token has no kubernetes.io namespace and serviceaccount claims; is it \
                    a pod's service-account token?"
                .into(),
        );
    };
    let want = format!("system:serviceaccount:{namespace}:{service_account}");
    if claims.sub.as_deref() != Some(want.as_str()) {
        return Err(format!("the token's sub is not {want}"));
    }
    Ok(Subject {
        namespace,
        service_account,
        issued_at,
    })
}

/// The message for a failed `decode`. Claim errors only arise after the signature verified, so
/// reading the claims then to recognize a legacy token is safe.
fn refusal(token: &str, kid: &str, e: &Error, issuer: &str, audience: &str) -> String {
    let claim_error = matches!(
        e.kind(),
        ErrorKind::MissingRequiredClaim(_)
            | ErrorKind::InvalidClaimFormat(_)
            | ErrorKind::ExpiredSignature
            | ErrorKind::ImmatureSignature
            | ErrorKind::InvalidIssuer
            | ErrorKind::InvalidAudience
    );
    if claim_error {
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token)
            .ok()
            .and_then(|c| c.iss);
        if iss.as_deref() == Some(LEGACY_ISSUER) {
            return format!(
                "legacy secret-based service-account tokens (iss {LEGACY_ISSUER}) are not \
                 accepted; mount a projected token with audience {audience}"
            );
        }
    }
    match e.kind() {
        ErrorKind::InvalidSignature => {
            format!(
                "the token's signature does not verify with key {}",
                shown(kid)
            )
        }
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf in the future)".into(),
        ErrorKind::InvalidAudience => format!("the token is not for audience {audience}"),
        ErrorKind::InvalidIssuer => format!("the token was not issued by {issuer}"),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the token's {c} claim is malformed"),
        _ => malformed(e),
    }
}

fn malformed(e: &Error) -> String {
    format!("the token is malformed (not a signed JWT): {e}")
}

/// The `alg` a header names, read only to say which one was refused (`decode_header` knows no
/// `none`).
fn named_alg(token: &str) -> Option<String> {
    let part = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&json).ok()?;
    header.get("alg")?.as_str().map(str::to_string)
}

/// Text from the token as a message may quote it: quoted, escaped and at most 64 characters.
pub(super) fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    format!("{cut:?}")
}

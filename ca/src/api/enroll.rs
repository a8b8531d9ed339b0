//! `POST /v1/enroll`: with a one-time token (checked and consumed by the authority), or with a
//! Kubernetes service-account token (verified here by [`crate::k8s::K8sVerifier`], then issued
//! behind the revocation gate of [`crate::Authority::enroll_verified`]).

use http::StatusCode;

use tether_certs::wire::{EnrollCredential, EnrollRequest};

use super::routes::{fail, issue, refused, Fail, Resp};
use super::server::State;
use crate::error::CaError;
use crate::k8s::Refusal;
use crate::metrics::{FailureReason, IssueMethod};

/// Answers an enrollment by the one credential `body` carries (none or both: 400).
pub(super) async fn enroll(state: &State, body: EnrollRequest) -> Result<Resp, Fail> {
    let csr = body.csr.clone();
    match body.credential() {
        Ok(EnrollCredential::Token(token)) => {
            let token = token.to_string();
            issue(state, IssueMethod::Enroll, move |a| {
                a.enroll(&token, csr.as_bytes())
            })
            .await
        }
        Ok(EnrollCredential::K8s(jwt)) => enroll_k8s(state, jwt, csr).await,
        Err(why) => Err(fail(CaError::BadRequest(why.into()))),
    }
}

/// `POST /v1/enroll` with a Kubernetes service-account token: verified here (cheap: one
/// signature, no I/O unless an unknown key id triggers a JWKS refresh), then issued like any
/// enrollment, behind the revocation gate of [`crate::Authority::enroll_verified`]. Logged with
/// the reason and the service account, never the token.
async fn enroll_k8s(state: &State, jwt: &str, csr: String) -> Result<Resp, Fail> {
    let Some(k8s) = &state.k8s else {
        return Err(fail(CaError::Unauthorized(
            "this CA does not accept Kubernetes service-account tokens".into(),
        )));
    };
    let who = match k8s.verify(jwt, state.authority.trust_domain()).await {
        Ok(who) => who,
        Err(refusal) => {
            let (status, msg) = match refusal {
                Refusal::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
                Refusal::NotAllowed(m) => (StatusCode::FORBIDDEN, m),
                Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            };
            tracing::warn!(
                "refused a Kubernetes enrollment ({}): {msg}",
                status.as_u16()
            );
            if status == StatusCode::FORBIDDEN {
                return Ok(refused(FailureReason::NotAllowed, status, &msg));
            }
            return Err((status, msg));
        }
    };
    let id = who.id.clone();
    let answer = issue(state, IssueMethod::Enroll, move |a| {
        a.enroll_verified(&who.id, csr.as_bytes(), who.issued_at)
    })
    .await;
    match &answer {
        Ok(_) => tracing::info!("enrolled {id} with a Kubernetes service-account token"),
        // 5xx were logged, with their cause, where they became an answer (`routes::fail`).
        Err((status, msg)) if status.is_client_error() => tracing::warn!(
            "refused a Kubernetes enrollment of {id} ({}): {msg}",
            status.as_u16()
        ),
        Err(_) => {}
    }
    answer
}

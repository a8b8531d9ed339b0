//! The revocation endpoints: `POST /v1/revoke` (a serial, or an identity) and `GET /v1/crl`
//! with long-poll, which also records polling sidecars in the fleet.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::{
    blocking, fail, header_value, json, publish, text, Fail, Resp, State, BUNDLE_VERSION_HEADER,
    CRL_NUMBER_HEADER, INSTANCE_HEADER, MAX_LONG_POLL,
};
use crate::authority::CaError;
use crate::store::RevokeOutcome;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeBody {
    serial: Option<String>,
    id: Option<String>,
    before: Option<String>,
    reason: Option<String>,
}

/// `POST /v1/revoke`: one serial, or every certificate of an identity issued before a time.
pub(super) async fn revoke(
    state: &State,
    peer: Vec<CertificateDer<'static>>,
    body: RevokeBody,
) -> Result<Resp, Fail> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let reason = match body.reason.as_deref() {
        Some(r) => Some(r.parse().map_err(bad)?),
        None => None,
    };
    let target = match (&body.serial, &body.id) {
        (Some(serial), None) => {
            if body.before.is_some() {
                return Err(bad("\"before\" goes with \"id\", not \"serial\"".into()));
            }
            let serial: tether_certs::Serial = serial
                .parse()
                .map_err(|e: tether_certs::serial::SerialError| bad(e.to_string()))?;
            Target::Serial(serial)
        }
        (None, Some(id)) => {
            let id = tether_certs::SpiffeId::parse(id).map_err(|e| bad(e.to_string()))?;
            let before = match body.before.as_deref() {
                Some(t) => Some(
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| bad(format!("before={t:?} is not an RFC 3339 time: {e}")))?,
                ),
                None => None,
            };
            Target::Identity(id, before)
        }
        _ => {
            return Err(bad(
                "give exactly one of \"serial\" or \"id\" (with an optional \"before\")".into(),
            ))
        }
    };
    let outcome = blocking(&state.authority, move |a| {
        let caller = a.authenticate(&peer)?;
        if !a.is_admin(&caller.id) {
            return Err(CaError::Forbidden(format!(
                "{} may not revoke; only the admin identity may",
                caller.id
            )));
        }
        Ok(match target {
            Target::Serial(serial) => {
                let outcome = a.revoke(&serial, reason)?;
                Revoked::Serial(serial, outcome)
            }
            Target::Identity(id, before) => {
                Revoked::Identity(a.revoke_identity(&id, before, reason)?)
            }
        })
    })
    .await
    .map_err(fail)?;
    let body = match outcome {
        Revoked::Serial(_, RevokeOutcome::Revoked { crl_number }) => {
            state.metrics.revocations.inc();
            publish(state, crl_number);
            serde_json::json!({"serial": body.serial, "status": "revoked", "crl_number": crl_number})
        }
        Revoked::Serial(_, RevokeOutcome::AlreadyRevoked(at)) => {
            serde_json::json!({"serial": body.serial, "status": "already_revoked", "revoked_at": at})
        }
        Revoked::Serial(serial, RevokeOutcome::Unknown) => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no certificate with serial {serial} was issued by this CA"),
            ))
        }
        Revoked::Identity(revoked) => {
            state
                .metrics
                .revocations
                .inc_by(revoked.serials.len() as u64);
            if let Some(n) = revoked.crl_number {
                publish(state, n);
            }
            serde_json::json!({
                "id": body.id,
                "status": if revoked.serials.is_empty() { "nothing_to_revoke" } else { "revoked" },
                "revoked": revoked.serials.len(),
                "serials": revoked.serials,
                "crl_number": revoked.crl_number,
            })
        }
    };
    Ok(json(StatusCode::OK, &body))
}

/// What a revoke request names.
enum Target {
    Serial(tether_certs::Serial),
    Identity(tether_certs::SpiffeId, Option<time::OffsetDateTime>),
}

/// What a revoke request did.
enum Revoked {
    Serial(tether_certs::Serial, RevokeOutcome),
    Identity(crate::store::IdentityRevocation),
}

/// `GET /v1/crl[?after=N&wait=DUR]`.
pub(super) async fn crl(
    state: &State,
    peer: &[CertificateDer<'static>],
    req: Request<Incoming>,
) -> Result<Resp, Fail> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let after = match query.get("after") {
        Some(a) => Some(
            a.parse::<u64>()
                .map_err(|_| bad(format!("after={a:?} is not a CRL number")))?,
        ),
        None => None,
    };
    let wait = match query.get("wait") {
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| bad(format!("wait={w:?}: {e} (e.g. wait=30s)")))?
            .min(MAX_LONG_POLL),
        None => Duration::ZERO,
    };
    if !peer.is_empty() {
        record_poll(state, peer, req.headers(), after.unwrap_or(0)).await;
    }
    let mut rx = state.crl_number.clone();
    // Serve the number this server has announced, not whatever is newest in the database: it
    // announces a CRL only after reloading for the bundle that trusts its signer.
    let mut current = *rx.borrow();
    if let Some(after) = after {
        if current <= after {
            let waiting = Waiting::start(&state.metrics.crl_waiters);
            let woke = tokio::time::timeout(wait, rx.wait_for(|n| *n > after)).await;
            drop(waiting);
            match woke {
                Ok(Ok(n)) => current = *n,
                _ => return Ok(not_modified(state, current)),
            }
        }
    }
    let served = blocking(&state.authority, move |a| a.crl_with_issuer(current))
        .await
        .map_err(fail)?
        .ok_or_else(|| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no CRL published yet".to_string(),
            )
        })?;
    let crl = &served.crl;
    let etag = format!("\"{}\"", crl.number);
    if after.is_none()
        && req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            == Some(etag.as_str())
    {
        return Ok(not_modified(state, crl.number));
    }
    // The signer's certificate follows the CRL, so a sidecar whose own chain came from an older
    // intermediate can still verify a CRL signed by the new one (it checks that this
    // certificate chains to a root in its bundle). During a rotation the signer's
    // cross-certificate from the previous root follows too, for sidecars that do not have the
    // new root yet.
    let mut body = tether_certs::pem::encode("X509 CRL", &crl.der);
    for der in &served.issuers {
        body.push_str(&tether_certs::pem::encode("CERTIFICATE", der));
    }
    let mut resp = text(StatusCode::OK, "application/pkix-crl", body);
    let h = resp.headers_mut();
    h.insert(header::ETAG, header_value(&etag));
    h.insert(CRL_NUMBER_HEADER, header_value(&crl.number.to_string()));
    h.insert(
        BUNDLE_VERSION_HEADER,
        header_value(&state.authority.bundle_version().to_string()),
    );
    Ok(resp)
}

/// Records the polling sidecar in the fleet table. A certificate that does not authenticate
/// (expired, revoked, foreign) records nothing; the poll is answered either way.
async fn record_poll(
    state: &State,
    peer: &[CertificateDer<'static>],
    headers: &http::HeaderMap,
    crl_number: u64,
) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let instance = header(INSTANCE_HEADER);
    let bundle_version = header(BUNDLE_VERSION_HEADER).and_then(|v| v.trim().parse::<u64>().ok());
    let peer = peer.to_vec();
    let recorded = blocking(&state.authority, move |a| {
        a.record_poll(&peer, instance.as_deref(), crl_number, bundle_version)
    })
    .await;
    if let Err(e) = recorded {
        tracing::debug!("CRL poll not recorded in the fleet: {e}");
    }
}

/// Counts one long-poll in `tether_ca_crl_waiters` for as long as it lives. A guard rather than
/// inc/dec around the wait: hyper drops the request future when the client disconnects mid-poll,
/// and the count must go down then too.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn not_modified(state: &State, number: u64) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    h.insert(header::ETAG, header_value(&format!("\"{number}\"")));
    h.insert(CRL_NUMBER_HEADER, header_value(&number.to_string()));
    h.insert(
        BUNDLE_VERSION_HEADER,
        header_value(&state.authority.bundle_version().to_string()),
    );
    resp
}

//! The revocation endpoints: `POST /v1/revoke` (a serial, or an identity) and `GET /v1/crl`
//! with long-poll, whose report to the fleet `api/fleet.rs` takes first.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use tether_certs::crl::Reason;
use tether_certs::serial::SerialError;
use tether_certs::wire::{
    self, IdentityRevoked, RevokeRequest, RevokeStatus, SerialRevoked, BUNDLE_VERSION_HEADER,
    CRL_NUMBER_HEADER,
};
use tether_certs::{Serial, SpiffeId};

use super::fleet;
use super::routes::{fail, header_value, json, text, Fail, Resp};
use super::server::{blocking, State};
use super::watcher::publish;
use super::MAX_LONG_POLL;
use crate::authority::Authority;
use crate::error::CaError;
use crate::store::{IdentityRevocation, RevokeOutcome, ServedCrl};
use crate::timefmt::parse_rfc3339;

/// `POST /v1/revoke`: one serial, or every certificate of an identity issued before a time.
pub(super) async fn revoke(
    state: &State,
    peer: Vec<CertificateDer<'static>>,
    body: RevokeRequest,
) -> Result<Resp, Fail> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let reason: Option<Reason> = match body.reason.as_deref() {
        Some(r) => Some(r.parse().map_err(bad)?),
        None => None,
    };
    let target = Target::parse(&body).map_err(bad)?;
    let outcome = blocking(&state.authority, move |a| {
        let caller = a.authenticate(&peer)?;
        if !a.is_admin(&caller.id) {
            return Err(CaError::Forbidden(format!(
                "{} may not revoke; only the admin identity may",
                caller.id
            )));
        }
        target.revoke(a, reason)
    })
    .await
    .map_err(fail)?;
    outcome.answer(state, body)
}

/// What a revoke request names.
enum Target {
    Serial(Serial),
    Identity(SpiffeId, Option<OffsetDateTime>),
}

impl Target {
    /// Exactly one of `serial` or `id`, `before` only with `id`; the error is the 400's message.
    fn parse(body: &RevokeRequest) -> Result<Self, String> {
        match (&body.serial, &body.id) {
            (Some(serial), None) => {
                if body.before.is_some() {
                    return Err("\"before\" goes with \"id\", not \"serial\"".into());
                }
                let serial: Serial = serial.parse().map_err(|e: SerialError| e.to_string())?;
                Ok(Target::Serial(serial))
            }
            (None, Some(id)) => {
                let id = SpiffeId::parse(id).map_err(|e| e.to_string())?;
                let before = match body.before.as_deref() {
                    Some(t) => Some(parse_rfc3339(t).map_err(|e| format!("before: {e}"))?),
                    None => None,
                };
                Ok(Target::Identity(id, before))
            }
            _ => {
                Err("give exactly one of \"serial\" or \"id\" (with an optional \"before\")".into())
            }
        }
    }

    /// Revokes it (with the CRL that lists it, in one transaction).
    fn revoke(self, a: &Authority, reason: Option<Reason>) -> Result<Revoked, CaError> {
        Ok(match self {
            Target::Serial(serial) => {
                let outcome = a.revoke(&serial, reason)?;
                Revoked::Serial(serial, outcome)
            }
            Target::Identity(id, before) => {
                Revoked::Identity(a.revoke_identity(&id, before, reason)?)
            }
        })
    }
}

/// What a revoke request did.
enum Revoked {
    Serial(Serial, RevokeOutcome),
    Identity(IdentityRevocation),
}

impl Revoked {
    /// Counts and announces what was revoked, and answers `body` (whose `serial` or `id` the
    /// answer echoes as the request spelled it).
    fn answer(self, state: &State, body: RevokeRequest) -> Result<Resp, Fail> {
        let serial = || body.serial.clone().unwrap_or_default();
        let answer = match self {
            Revoked::Serial(_, RevokeOutcome::Revoked { crl_number }) => {
                state.metrics.revocations.inc();
                publish(state, crl_number);
                json(
                    StatusCode::OK,
                    &SerialRevoked {
                        serial: serial(),
                        status: RevokeStatus::Revoked,
                        crl_number: Some(crl_number),
                        revoked_at: None,
                    },
                )
            }
            Revoked::Serial(_, RevokeOutcome::AlreadyRevoked(at)) => json(
                StatusCode::OK,
                &SerialRevoked {
                    serial: serial(),
                    status: RevokeStatus::AlreadyRevoked,
                    crl_number: None,
                    revoked_at: Some(at),
                },
            ),
            Revoked::Serial(serial, RevokeOutcome::Unknown) => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("no certificate with serial {serial} was issued by this CA"),
                ))
            }
            Revoked::Identity(revoked) => {
                let count = revoked.serials.len();
                state.metrics.revocations.inc_by(count as u64);
                if let Some(n) = revoked.crl_number {
                    publish(state, n);
                }
                let status = if count == 0 {
                    RevokeStatus::NothingToRevoke
                } else {
                    RevokeStatus::Revoked
                };
                json(
                    StatusCode::OK,
                    &IdentityRevoked {
                        id: body.id.unwrap_or_default(),
                        status,
                        revoked: count,
                        serials: revoked.serials,
                        crl_number: revoked.crl_number,
                    },
                )
            }
        };
        Ok(answer)
    }
}

/// `GET /v1/crl[?after=N&wait=DUR]`.
pub(super) async fn crl(
    state: &State,
    peer: &[CertificateDer<'static>],
    parts: &Parts,
) -> Result<Resp, Fail> {
    let poll = CrlQuery::parse(parts.uri.query().unwrap_or_default())
        .map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    fleet::report(state, peer, &parts.headers, poll.after.unwrap_or(0)).await?;
    let mut rx = state.crl_number.clone();
    // Serve the number this server has announced, not whatever is newest in the database: it
    // announces a CRL only after reloading for the bundle that trusts its signer.
    let mut current = *rx.borrow();
    if let Some(after) = poll.after {
        if current <= after {
            let waiting = Waiting::start(&state.metrics.crl_waiters);
            let woke = tokio::time::timeout(poll.wait, rx.wait_for(|n| *n > after)).await;
            drop(waiting);
            match woke {
                Ok(Ok(n)) => current = *n,
                _ => return Ok(not_modified(state, current)),
            }
        }
    }
    let served = match blocking(&state.authority, move |a| a.crl_with_issuer(current)).await {
        Ok(Some(served)) => state.remember_crl(served),
        Ok(None) => {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "no CRL published yet".to_string(),
            ))
        }
        // The database is down (or failing): the last CRL this server read is still signed and
        // valid, and serving it keeps sidecars that lost theirs (a restart) enforcing it.
        Err(e) => state
            .cached_crl(poll.after.unwrap_or(0))
            .ok_or_else(|| fail(e))?,
    };
    let etag = format!("\"{}\"", served.crl.number);
    if poll.after.is_none()
        && parts
            .headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            == Some(etag.as_str())
    {
        return Ok(not_modified(state, served.crl.number));
    }
    Ok(crl_answer(state, &served, &etag))
}

/// The CRL poll's query.
#[derive(Debug, PartialEq, Eq)]
struct CrlQuery {
    /// The CRL number the poller holds: wait for a newer one.
    after: Option<u64>,
    /// How long to wait, capped at [`MAX_LONG_POLL`] (zero without `wait=`).
    wait: Duration,
}

impl CrlQuery {
    /// Parses `after=N&wait=DUR` (other parameters are ignored); the error is the 400's message.
    /// `after` is decimal digits only (no sign), and each of the two may be given once.
    fn parse(query: &str) -> Result<Self, String> {
        let mut params: HashMap<&str, &str> = HashMap::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            let known = k == wire::CRL_AFTER_PARAM || k == wire::CRL_WAIT_PARAM;
            if params.insert(k, v).is_some() && known {
                return Err(format!("{k}= is given twice"));
            }
        }
        let after = match params.get(wire::CRL_AFTER_PARAM) {
            Some(a) => Some(
                a.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| a.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| format!("after={a:?} is not a CRL number"))?,
            ),
            None => None,
        };
        let wait = match params.get(wire::CRL_WAIT_PARAM) {
            Some(w) => humantime::parse_duration(w)
                .map_err(|e| format!("wait={w:?}: {e} (e.g. wait=30s)"))?
                .min(MAX_LONG_POLL),
            None => Duration::ZERO,
        };
        Ok(CrlQuery { after, wait })
    }
}

/// `200`: the CRL, then the certificates of its signer, PEM.
fn crl_answer(state: &State, served: &ServedCrl, etag: &str) -> Resp {
    // The signer's certificate follows the CRL, so a sidecar whose own chain came from an older
    // intermediate can still verify a CRL signed by the new one (it checks that this
    // certificate chains to a root in its bundle). During a rotation the signer's
    // cross-certificate from the previous root follows too, for sidecars that do not have the
    // new root yet.
    let mut body = tether_certs::pem::encode("X509 CRL", &served.crl.der);
    for der in &served.issuers {
        body.push_str(&tether_certs::pem::encode("CERTIFICATE", der));
    }
    let mut resp = text(StatusCode::OK, wire::CRL_CONTENT_TYPE, body);
    let h = resp.headers_mut();
    h.insert(header::ETAG, header_value(etag));
    h.insert(
        CRL_NUMBER_HEADER,
        header_value(&served.crl.number.to_string()),
    );
    h.insert(
        BUNDLE_VERSION_HEADER,
        header_value(&state.authority.bundle_version().to_string()),
    );
    resp
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crl_query_reads_after_and_a_capped_wait() {
        assert_eq!(
            CrlQuery::parse("").unwrap(),
            CrlQuery {
                after: None,
                wait: Duration::ZERO
            }
        );
        assert_eq!(
            CrlQuery::parse("after=7&wait=30s&x=y").unwrap(),
            CrlQuery {
                after: Some(7),
                wait: Duration::from_secs(30)
            }
        );
        assert_eq!(CrlQuery::parse("wait=1h").unwrap().wait, MAX_LONG_POLL);
        for bad in [
            "after=x",
            "after=-1",
            "after=+5",
            "after=",
            "after=1e3",
            "after= 1",
        ] {
            assert!(
                CrlQuery::parse(bad).unwrap_err().contains("CRL number"),
                "{bad}"
            );
        }
        assert!(CrlQuery::parse("after=1&after=999999")
            .unwrap_err()
            .contains("twice"));
        assert!(CrlQuery::parse("wait=1s&wait=2s")
            .unwrap_err()
            .contains("twice"));
        assert_eq!(CrlQuery::parse("x=1&x=2&after=3").unwrap().after, Some(3));
        assert!(CrlQuery::parse("wait=soon").unwrap_err().contains("wait="));
    }
}

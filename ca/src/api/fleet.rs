//! What a CRL poll reports to the fleet: its `after` (the CRL number it holds), the bundle
//! version it holds (`x-tether-bundle-version`) and its instance id (`x-tether-instance`),
//! recorded under the client certificate it presents (see [`crate::fleet`]). Taken before the
//! poll is answered, so that a poll reporting what cannot be true is refused, not served.

use http::{HeaderMap, StatusCode};
use rustls_pki_types::CertificateDer;

use tether_certs::wire::{BUNDLE_VERSION_HEADER, INSTANCE_HEADER};

use super::routes::{fail, Fail};
use super::server::{blocking, State};
use super::watcher::EveryFewSeconds;
use crate::error::CaError;

/// When a failed fleet write was last logged.
static NOT_RECORDED: EveryFewSeconds = EveryFewSeconds::new();

/// Takes the report of a poll that holds CRL `after`, presenting `peer` (maybe nothing):
/// records it when the certificate authenticates. Refused, writing nothing: a bundle version
/// that is not a number, or a CRL number or bundle version this CA never published (400, with a
/// certificate or without), or another sidecar's instance (403). A certificate that does not
/// authenticate records nothing and the poll is still answered, as it is when the database
/// fails.
pub(super) async fn report(
    state: &State,
    peer: &[CertificateDer<'static>],
    headers: &HeaderMap,
    after: u64,
) -> Result<(), Fail> {
    let bundle_version =
        reported_bundle_version(headers).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    let recorded = !peer.is_empty() && record(state, peer, headers, after, bundle_version).await?;
    if !recorded {
        check(state, after, bundle_version).await?;
    }
    Ok(())
}

/// The bundle version a poll reports (`x-tether-bundle-version`), if it says; the error (not a
/// number) is the 400's message.
fn reported_bundle_version(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let Some(v) = headers.get(BUNDLE_VERSION_HEADER) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default().trim();
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match digits.then(|| text.parse::<u64>().ok()).flatten() {
        Some(n) => Ok(Some(n)),
        None => Err(format!(
            "{BUNDLE_VERSION_HEADER} {v:?} is not a bundle version"
        )),
    }
}

/// Records the polling sidecar in the fleet table; returns whether it did (see [`report`]).
async fn record(
    state: &State,
    peer: &[CertificateDer<'static>],
    headers: &HeaderMap,
    crl_number: u64,
    bundle_version: Option<u64>,
) -> Result<bool, Fail> {
    let instance = headers
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let peer = peer.to_vec();
    let recorded = blocking(&state.authority, move |a| {
        a.record_poll(&peer, instance.as_deref(), crl_number, bundle_version)
    })
    .await;
    match recorded {
        Ok(member) => Ok(member.is_some()),
        Err(e @ (CaError::BadRequest(_) | CaError::Forbidden(_))) => Err(fail(e)),
        Err(e) => {
            // While the database is down every poll fails here: one line per interval, not
            // one per sidecar per poll.
            if NOT_RECORDED.due() {
                tracing::warn!(
                    "CRL polls not recorded in the fleet (the poll is still served): {e}"
                );
            }
            Ok(false)
        }
    }
}

/// Refuses a poll that records nothing but still reports a CRL number or bundle version this CA
/// never published. Only numbers above what this server announced need the database (another
/// replica, or the CLI, may have published more since).
async fn check(state: &State, after: u64, bundle_version: Option<u64>) -> Result<(), Fail> {
    let announced = *state.crl_number.borrow();
    let loaded = state.authority.bundle_version();
    if after <= announced && bundle_version.is_none_or(|v| v <= loaded) {
        return Ok(());
    }
    blocking(&state.authority, move |a| {
        a.check_poll(after, bundle_version)
    })
    .await
    .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_bundle_version_is_a_number_or_absent() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(BUNDLE_VERSION_HEADER, v.parse().unwrap());
            reported_bundle_version(&h)
        };
        assert_eq!(reported_bundle_version(&HeaderMap::new()), Ok(None));
        assert_eq!(with("3"), Ok(Some(3)));
        assert_eq!(with(" 3 "), Ok(Some(3)));
        for bad in ["x", "-1", "+1", "", "99999999999999999999999"] {
            assert!(
                with(bad).unwrap_err().contains("not a bundle version"),
                "{bad}"
            );
        }
    }
}

//! `tether-ca check`: the CA's own health, one line per problem, for cron jobs and alerting.
//!
//! Read-only: it re-signs nothing and changes nothing, so it is safe to run anywhere the state
//! dir is readable, as often as wanted. The CA certificates it watches ([`CaCertificate`]) are
//! also what `tether_ca_certificate_expiry_timestamp_seconds` exports (see [`crate::metrics`]),
//! so the alert and the command can never disagree about which certificates are in force.

use std::time::Duration;

use time::OffsetDateTime;

use crate::authority::Authority;
use crate::error::CaError;
use crate::fleet::FLEET_WINDOW;
use crate::store::Store;
use crate::timefmt::{add_secs, short_duration, unix_rfc3339};

/// How much of a fingerprint a problem line shows: enough to pick the root in `root list`.
const FINGERPRINT_SHOWN: usize = 16;

impl Authority {
    /// Everything that needs an operator within `warn_within`, one line each (empty: healthy):
    /// - a root in the bundle, or the current intermediate, expires within the window;
    /// - the newest CRL is past its nextUpdate (nobody re-signed it: is the server running?);
    /// - an unrevoked leaf outlives the intermediate that issued it;
    /// - a sidecar seen within the last minute holds a certificate that expires within the
    ///   window *and* has less than a quarter of its lifetime left — a sidecar renews at half its
    ///   lifetime, so that one's renewals are failing. (Every healthy short-lived leaf expires
    ///   within any window of days; flagging those would make `check` fail on every mesh.)
    pub fn check(&self, warn_within: Duration) -> Result<Vec<String>, CaError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let window = Window {
            now,
            horizon: add_secs(now, warn_within),
            shown: short_duration(warn_within),
        };
        let mut store = self.store();
        let mut problems = expiring_cas(&mut store, &window)?;
        match store.latest_crl()? {
            None => problems.push("no CRL has been published".into()),
            Some(crl) if crl.next_update < now => problems.push(format!(
                "CRL number {} is stale: its nextUpdate {} has passed (a running `tether-ca \
                 serve` re-signs it; `tether-ca crl` does once)",
                crl.number,
                unix_rfc3339(crl.next_update)
            )),
            Some(_) => {}
        }
        for (leaf, issuer_not_after) in store.leaves_outliving_issuer(now)? {
            problems.push(format!(
                "certificate {} ({}) expires at {}, after its issuing intermediate \
                 (generation {}, {})",
                leaf.serial,
                leaf.spiffe_id,
                unix_rfc3339(leaf.not_after),
                leaf.generation,
                unix_rfc3339(issuer_not_after)
            ));
        }
        problems.extend(unrenewed_sidecars(&mut store, &window)?);
        Ok(problems)
    }
}

/// The window `check` looks ahead over.
struct Window {
    /// Now, Unix seconds.
    now: i64,
    /// The end of the window, Unix seconds.
    horizon: i64,
    /// The window as the operator wrote it (`7d`).
    shown: String,
}

impl Window {
    /// How a `not_after` inside the window is reported.
    fn expiry(&self, not_after: i64) -> String {
        if not_after <= self.now {
            format!("expired at {}", unix_rfc3339(not_after))
        } else {
            format!(
                "expires at {}, within {}",
                unix_rfc3339(not_after),
                self.shown
            )
        }
    }
}

/// Which CA certificate a [`CaCertificate`] is: the `kind` label of
/// `tether_ca_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaKind {
    /// The issuing intermediate of the current generation (it signs every leaf and CRL).
    Intermediate,
    /// A root in the published bundle.
    Root,
}

impl CaKind {
    /// Its label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CaKind::Intermediate => "intermediate",
            CaKind::Root => "root",
        }
    }
}

/// A CA certificate in force: what `check` watches for expiry, and what the CA's expiry gauge
/// shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaCertificate {
    /// Root or intermediate.
    pub(crate) kind: CaKind,
    /// The generation it belongs to (`tether-ca root list`).
    pub(crate) generation: u64,
    /// SHA-256 of the root, lowercase hex (how operators name a root).
    pub(crate) root_fingerprint: String,
    /// Its notAfter, Unix seconds.
    pub(crate) not_after: i64,
}

impl Authority {
    /// The CA certificates in force, as `ca.db` records them now: every root still in the
    /// bundle (two or more during a rotation), and the current intermediate.
    pub(crate) fn ca_certificates(&self) -> Result<Vec<CaCertificate>, CaError> {
        in_force(&mut self.store())
    }
}

/// See [`Authority::ca_certificates`].
fn in_force(store: &mut Store) -> Result<Vec<CaCertificate>, CaError> {
    let current = store.current_generation()?;
    let mut certs = Vec::new();
    for g in store.generations()? {
        if g.retired_at.is_some() {
            continue;
        }
        let cert = |kind, not_after| CaCertificate {
            kind,
            generation: g.generation,
            root_fingerprint: g.root_fingerprint.clone(),
            not_after,
        };
        certs.push(cert(CaKind::Root, g.root_not_after));
        if g.generation == current {
            certs.push(cert(CaKind::Intermediate, g.intermediate_not_after));
        }
    }
    Ok(certs)
}

/// The CA certificates in force (see [`in_force`]) that expire within the window.
fn expiring_cas(store: &mut Store, window: &Window) -> Result<Vec<String>, CaError> {
    Ok(in_force(store)?
        .into_iter()
        .filter(|c| c.not_after <= window.horizon)
        .map(|c| match c.kind {
            CaKind::Root => {
                let fp = &c.root_fingerprint[..FINGERPRINT_SHOWN.min(c.root_fingerprint.len())];
                format!(
                    "root {fp} (generation {}) {}; rotate with `tether-ca root rotate`",
                    c.generation,
                    window.expiry(c.not_after)
                )
            }
            CaKind::Intermediate => format!(
                "intermediate of generation {} {}; rotate with `tether-ca root rotate`",
                c.generation,
                window.expiry(c.not_after)
            ),
        })
        .collect())
}

/// Sidecars seen within the fleet window whose certificate expires within the window with
/// less than a quarter of its lifetime left (see [`Authority::check`]).
fn unrenewed_sidecars(store: &mut Store, window: &Window) -> Result<Vec<String>, CaError> {
    let mut problems = Vec::new();
    let since = window.now - FLEET_WINDOW.as_secs() as i64;
    for member in store.fleet(since)? {
        if member.cert_not_after > window.horizon {
            continue;
        }
        let remaining = member.cert_not_after - window.now;
        let lifetime = member
            .serial
            .parse()
            .ok()
            .and_then(|s| store.certificate(&s).ok().flatten())
            .map(|r| r.not_after - r.not_before);
        if lifetime.is_some_and(|l| remaining * 4 >= l) {
            continue;
        }
        problems.push(format!(
            "sidecar {} ({}) holds certificate {} that {} and has not been renewed",
            member.instance,
            member.spiffe_id,
            member.serial,
            window.expiry(member.cert_not_after)
        ));
    }
    Ok(problems)
}

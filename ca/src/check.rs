//! `tether-ca check`: the CA's own health, one line per problem, for cron jobs and alerting.
//!
//! Read-only: it re-signs nothing and changes nothing, so it is safe to run anywhere the state
//! dir is readable, as often as wanted.

use std::time::Duration;

use time::OffsetDateTime;

use crate::authority::{add_secs, short_duration, unix_rfc3339, Authority, CaError};
use crate::fleet::FLEET_WINDOW;

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
        let horizon = add_secs(now, warn_within);
        let window = short_duration(warn_within);
        let expiry = |not_after: i64| {
            if not_after <= now {
                format!("expired at {}", unix_rfc3339(not_after))
            } else {
                format!("expires at {}, within {window}", unix_rfc3339(not_after))
            }
        };
        let mut problems = Vec::new();
        let store = self.store();

        let current = store.current_generation()?;
        for g in store.generations()? {
            if g.retired_at.is_some() {
                continue;
            }
            let fp = &g.root_fingerprint[..FINGERPRINT_SHOWN.min(g.root_fingerprint.len())];
            if g.root_not_after <= horizon {
                problems.push(format!(
                    "root {fp} (generation {}) {}; rotate with `tether-ca root rotate`",
                    g.generation,
                    expiry(g.root_not_after)
                ));
            }
            if g.generation == current && g.intermediate_not_after <= horizon {
                problems.push(format!(
                    "intermediate of generation {} {}; rotate with `tether-ca root rotate`",
                    g.generation,
                    expiry(g.intermediate_not_after)
                ));
            }
        }

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

        let since = now - FLEET_WINDOW.as_secs() as i64;
        for member in store.fleet(since)? {
            if member.cert_not_after > horizon {
                continue;
            }
            let remaining = member.cert_not_after - now;
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
                expiry(member.cert_not_after)
            ));
        }
        Ok(problems)
    }
}

//! Retiring a root: removing an old generation's root from the bundle once nothing depends on
//! it (no unexpired, unrevoked leaf it issued; no recently seen sidecar on a bundle without the
//! current root), in one transaction with the CRL that announces the new bundle version.

use time::OffsetDateTime;

use tether_certs::crl::CrlEntry;

use super::db::{args, Exec};
use super::fleet::{members_since, FleetMember};
use super::generations::{all_generations, set_meta, Generation};
use super::{
    current_generation, meta_u64, publish_in, row_to_record, IssuedRecord, Store, StoreError,
    StoredCrl, SELECT_CERT,
};

/// What still depends on a root that someone wants to retire.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetireBlockers {
    /// Unexpired, unrevoked certificates issued under that root.
    pub leaves: Vec<IssuedRecord>,
    /// Sidecars seen recently that have not reported a bundle with the current root.
    pub fleet: Vec<FleetMember>,
    /// The bundle version a sidecar must hold (the one that added the current root).
    pub required_bundle_version: u64,
}

impl RetireBlockers {
    /// Whether nothing blocks.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.fleet.is_empty()
    }
}

/// What `retire` did.
#[derive(Debug, Clone)]
pub enum RetireOutcome {
    /// Removed from the bundle; `overridden` is what `--force` ignored (empty without force).
    Retired {
        /// The new bundle version.
        bundle_version: u64,
        /// The CRL published to wake long-polling sidecars.
        crl_number: u64,
        /// Blockers ignored because of `force`.
        overridden: RetireBlockers,
    },
    /// Refused: these still depend on the root.
    Blocked(RetireBlockers),
    /// Refused for a reason no `--force` overrides (current root, already retired, unknown).
    NotRetirable(String),
}

impl Store {
    /// Removes `generation`'s root from the bundle (bumps the bundle version and publishes a CRL
    /// so long-polling sidecars hear of it at once) unless something still depends on it:
    /// unexpired, unrevoked leaves it issued, or sidecars seen since `fleet_since` that have not
    /// reported the bundle that added the current root. `force` retires anyway and returns what
    /// it overrode. The CRL is signed by `signing_generation`, which must be current.
    pub fn retire<E: From<StoreError>>(
        &mut self,
        generation: u64,
        force: bool,
        now: OffsetDateTime,
        fleet_since: i64,
        signing_generation: u64,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<RetireOutcome, E> {
        let mut tx = self.immediate()?;
        let current = current_generation(&mut tx)?;
        let all = all_generations(&mut tx)?;
        if let Some(why) = refusal(&all, generation, current) {
            return Ok(RetireOutcome::NotRetirable(why));
        }
        let required_bundle_version = all
            .iter()
            .find(|g| g.generation == current)
            .map(|g| g.bundle_version)
            .ok_or_else(|| StoreError::Corrupt(format!("current generation {current} missing")))?;
        let blockers = RetireBlockers {
            leaves: live_leaves_of(&mut tx, generation, now)?,
            fleet: members_since(&mut tx, fleet_since)?
                .into_iter()
                .filter(|m| m.bundle_version.is_none_or(|v| v < required_bundle_version))
                .collect(),
            required_bundle_version,
        };
        if !blockers.is_empty() && !force {
            return Ok(RetireOutcome::Blocked(blockers));
        }
        let bundle_version = meta_u64(&mut tx, "bundle_version")? + 1;
        tx.execute(
            "UPDATE generations SET retired_at = ?1 WHERE generation = ?2",
            args![now.unix_timestamp(), generation as i64],
        )?;
        set_meta(&mut tx, "bundle_version", bundle_version)?;
        let crl = publish_in(&mut tx, now, signing_generation, sign)?;
        tx.commit()?;
        Ok(RetireOutcome::Retired {
            bundle_version,
            crl_number: crl.number,
            overridden: blockers,
        })
    }
}

/// Why `generation`'s root may not be retired whatever `force` says: unknown, already retired,
/// the current root, or the last one in the bundle.
fn refusal(all: &[Generation], generation: u64, current: u64) -> Option<String> {
    let Some(target) = all.iter().find(|g| g.generation == generation) else {
        return Some(format!("no generation {generation}"));
    };
    let root = &target.root_fingerprint;
    if let Some(at) = target.retired_at {
        return Some(format!(
            "root {root} was already retired (at Unix time {at})"
        ));
    }
    if generation == current {
        return Some(format!(
            "root {root} is the current root (it signs every new certificate); rotate first"
        ));
    }
    if all.iter().filter(|g| g.retired_at.is_none()).count() <= 1 {
        return Some(format!("root {root} is the last root in the bundle"));
    }
    None
}

/// Unexpired, unrevoked certificates issued by `generation`'s intermediate, soonest to expire
/// first.
fn live_leaves_of(
    db: &mut dyn Exec,
    generation: u64,
    now: OffsetDateTime,
) -> Result<Vec<IssuedRecord>, StoreError> {
    db.query(
        &format!(
            "{SELECT_CERT} WHERE generation = ?1 AND revoked_at IS NULL
             AND not_after > ?2 ORDER BY not_after"
        ),
        args![generation as i64, now.unix_timestamp()],
    )?
    .iter()
    .map(row_to_record)
    .collect()
}

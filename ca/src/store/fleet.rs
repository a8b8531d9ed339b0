//! The `fleet` table: the sidecars that poll `GET /v1/crl` with a client certificate, and what
//! each one reported on its latest poll. Written on every such poll (one short immediate
//! transaction, no fsync in WAL mode with `synchronous=NORMAL`), read by `tether-ca fleet`,
//! `revoke --wait`, `root retire` and `check` — which run as separate processes, hence SQLite
//! rather than memory.
//!
//! The table only holds what could be true: a poll may report only a CRL number and a bundle
//! version this CA has published, and a row belongs to the identity and certificate lineage
//! (see [`super::schema`]) that created it — the instance id is the sidecar's own choice, so
//! without that any member could write under another's id.

use super::db::{args, Exec, Row};
use super::revocation::newest_crl_number;
use super::{lineage_of, meta_u64, Store, StoreError};

/// One sidecar process, as of its latest CRL poll.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetMember {
    /// The sidecar's per-process id (`x-tether-instance`), or its certificate serial when it
    /// sent none.
    pub instance: String,
    /// The identity in its client certificate.
    pub spiffe_id: String,
    /// Its certificate's serial, lowercase hex.
    pub serial: String,
    /// Its certificate's notAfter, Unix seconds.
    pub cert_not_after: i64,
    /// The CRL number it holds (the `after` of its poll; 0 when it holds none).
    pub crl_number: u64,
    /// The trust bundle version it holds (`x-tether-bundle-version`), if it said.
    pub bundle_version: Option<u64>,
    /// When it last polled, Unix seconds.
    pub last_seen: i64,
    /// Whether that certificate has been revoked since: the sidecar can no longer authenticate
    /// a poll with it, so its row cannot move until it enrolls again.
    pub cert_revoked: bool,
}

/// What a poll reported that this CA never published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpublished {
    /// A CRL number above the newest one.
    Crl {
        /// What the poll said it holds.
        claimed: u64,
        /// The newest CRL number published.
        newest: u64,
    },
    /// A bundle version above the current one.
    Bundle {
        /// What the poll said it holds.
        claimed: u64,
        /// The current bundle version.
        newest: u64,
    },
}

/// What [`Store::record_poll`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollRecord {
    /// The row was written.
    Recorded,
    /// The instance's row belongs to another identity, or to another lineage of the same one
    /// whose certificate can still poll; nothing was written.
    Taken,
    /// The poll reported something never published; nothing was written.
    Unpublished(Unpublished),
}

const SELECT_MEMBER: &str = "SELECT f.instance, f.spiffe_id, f.serial, f.cert_not_after,
    f.crl_number, f.bundle_version, f.last_seen, c.revoked_at IS NOT NULL
    FROM fleet f LEFT JOIN certificates c ON c.serial = f.serial";

/// A `fleet` row (joined with its certificate's revocation, see [`SELECT_MEMBER`]).
pub(super) fn row_to_member(r: &Row) -> Result<FleetMember, StoreError> {
    Ok(FleetMember {
        instance: r.get(0)?,
        spiffe_id: r.get(1)?,
        serial: r.get(2)?,
        cert_not_after: r.get(3)?,
        crl_number: r.get(4)?,
        bundle_version: r.get(5)?,
        last_seen: r.get(6)?,
        cert_revoked: r.get(7)?,
    })
}

/// Members seen at or after `since`, by identity then instance.
pub(super) fn members_since(db: &mut dyn Exec, since: i64) -> Result<Vec<FleetMember>, StoreError> {
    db.query(
        &format!("{SELECT_MEMBER} WHERE f.last_seen >= ?1 ORDER BY f.spiffe_id, f.instance"),
        args![since],
    )?
    .iter()
    .map(row_to_member)
    .collect()
}

/// What `crl_number` and `bundle_version` claim beyond what this CA published, if anything.
/// CRL numbers are handed out in sequence from 1 and never deleted, so every number up to the
/// newest exists; 0 means "none yet".
fn unpublished_in(
    db: &mut dyn Exec,
    crl_number: u64,
    bundle_version: Option<u64>,
) -> Result<Option<Unpublished>, StoreError> {
    let newest = newest_crl_number(db)?;
    if crl_number > newest {
        return Ok(Some(Unpublished::Crl {
            claimed: crl_number,
            newest,
        }));
    }
    let current = meta_u64(db, "bundle_version")?;
    Ok(bundle_version
        .filter(|v| *v > current)
        .map(|claimed| Unpublished::Bundle {
            claimed,
            newest: current,
        }))
}

/// Whether the poll of `member` (lineage `lineage`) may write the row of its instance: no row
/// yet; a row of the same identity and lineage; one from before lineages of the same identity;
/// or one of the same identity whose certificate can never poll again (revoked, expired at
/// `now`, or unknown here) — the same sidecar enrolling afresh after its renewal was refused.
/// Another identity never may: the row expires by retention instead.
fn may_write(
    db: &mut dyn Exec,
    member: &FleetMember,
    lineage: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let owner = db
        .query_opt(
            "SELECT f.spiffe_id, f.lineage, f.cert_not_after > ?2 AND c.serial IS NOT NULL
                    AND c.revoked_at IS NULL
             FROM fleet f LEFT JOIN certificates c ON c.serial = f.serial
             WHERE f.instance = ?1",
            args![member.instance, now],
        )?
        .map(|r| -> Result<RowOwner, StoreError> {
            Ok(RowOwner {
                spiffe_id: r.get(0)?,
                lineage: r.get(1)?,
                // NULL when no certificate matched: that row's owner cannot poll.
                can_poll: r.get::<Option<bool>>(2)?.unwrap_or(false),
            })
        })
        .transpose()?;
    Ok(match owner {
        None => true,
        Some(o) if o.spiffe_id != member.spiffe_id => false,
        Some(o) => match o.lineage {
            None => true,
            Some(l) => l == lineage || !o.can_poll,
        },
    })
}

/// Who holds a fleet row, as [`may_write`] judges it.
struct RowOwner {
    /// The identity that wrote it.
    spiffe_id: String,
    /// Its lineage (`None` on rows from before lineages).
    lineage: Option<String>,
    /// Whether the row's certificate could still authenticate a poll (issued here, unexpired,
    /// unrevoked).
    can_poll: bool,
}

impl Store {
    /// Records (or replaces) what `member` reported on this poll, at Unix time `now`, unless it
    /// reports something never published or the instance's row is not its to write (see
    /// [`PollRecord`]). `member.serial` must be a certificate this CA issued (the poll
    /// authenticated with it); `member.cert_revoked` is ignored.
    pub fn record_poll(
        &mut self,
        member: &FleetMember,
        now: i64,
    ) -> Result<PollRecord, StoreError> {
        let mut tx = self.immediate()?;
        if let Some(u) = unpublished_in(&mut tx, member.crl_number, member.bundle_version)? {
            return Ok(PollRecord::Unpublished(u));
        }
        let lineage = lineage_of(&mut tx, &member.serial)?.ok_or_else(|| {
            StoreError::Corrupt(format!("no certificate {} for a fleet row", member.serial))
        })?;
        if !may_write(&mut tx, member, &lineage, now)? {
            return Ok(PollRecord::Taken);
        }
        tx.execute(
            "INSERT INTO fleet (instance, spiffe_id, serial, cert_not_after, crl_number,
                                bundle_version, last_seen, lineage)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(instance) DO UPDATE SET
                 spiffe_id = excluded.spiffe_id, serial = excluded.serial,
                 cert_not_after = excluded.cert_not_after, crl_number = excluded.crl_number,
                 bundle_version = excluded.bundle_version, last_seen = excluded.last_seen,
                 lineage = excluded.lineage",
            args![
                member.instance,
                member.spiffe_id,
                member.serial,
                member.cert_not_after,
                // Both were checked against what was published, which fits an i64.
                member.crl_number as i64,
                member.bundle_version.map(|v| v as i64),
                member.last_seen,
                lineage,
            ],
        )?;
        tx.commit()?;
        Ok(PollRecord::Recorded)
    }

    /// What a poll claiming CRL `crl_number` and bundle `bundle_version` claims beyond what this
    /// CA published, if anything (the check [`Store::record_poll`] makes, for polls it does not
    /// record).
    pub fn unpublished(
        &mut self,
        crl_number: u64,
        bundle_version: Option<u64>,
    ) -> Result<Option<Unpublished>, StoreError> {
        unpublished_in(&mut self.db, crl_number, bundle_version)
    }

    /// Sidecars seen at or after `since` (Unix seconds), by identity then instance.
    pub fn fleet(&mut self, since: i64) -> Result<Vec<FleetMember>, StoreError> {
        members_since(&mut self.db, since)
    }

    /// How many sidecars were seen at or after `since`.
    pub fn fleet_size(&mut self, since: i64) -> Result<u64, StoreError> {
        self.db
            .query_one(
                "SELECT count(*) FROM fleet WHERE last_seen >= ?1",
                args![since],
            )?
            .get(0)
    }

    /// Deletes fleet rows last seen before `before` (Unix seconds); how many.
    pub fn prune_fleet(&mut self, before: i64) -> Result<u64, StoreError> {
        self.db
            .execute("DELETE FROM fleet WHERE last_seen < ?1", args![before])
    }
}

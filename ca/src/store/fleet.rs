//! The `fleet` table: the sidecars that poll `GET /v1/crl` with a client certificate, and what
//! each one reported on its latest poll. Written on every such poll (one upsert, no fsync in WAL
//! mode with `synchronous=NORMAL`), read by `tether-ca fleet`, `revoke --wait`, `root retire` and
//! `check` — which run as separate processes, hence SQLite rather than memory.

use rusqlite::params;

use super::{Store, StoreError};

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
}

const SELECT_MEMBER: &str = "SELECT instance, spiffe_id, serial, cert_not_after, crl_number,
    bundle_version, last_seen FROM fleet";

/// A `fleet` row.
pub(super) fn row_to_member(r: &rusqlite::Row<'_>) -> rusqlite::Result<FleetMember> {
    Ok(FleetMember {
        instance: r.get(0)?,
        spiffe_id: r.get(1)?,
        serial: r.get(2)?,
        cert_not_after: r.get(3)?,
        crl_number: r.get::<_, i64>(4)? as u64,
        bundle_version: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        last_seen: r.get(6)?,
    })
}

/// Members seen at or after `since`, stalest CRL first (the order `--wait` reports them in).
pub(super) fn members_since(
    conn: &rusqlite::Connection,
    since: i64,
) -> Result<Vec<FleetMember>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "{SELECT_MEMBER} WHERE last_seen >= ?1 ORDER BY spiffe_id, instance"
    ))?;
    let rows = stmt.query_map([since], row_to_member)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Store {
    /// Records (or replaces) what `member` reported on this poll.
    pub fn record_poll(&self, member: &FleetMember) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO fleet (instance, spiffe_id, serial, cert_not_after, crl_number,
                                bundle_version, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(instance) DO UPDATE SET
                 spiffe_id = excluded.spiffe_id, serial = excluded.serial,
                 cert_not_after = excluded.cert_not_after, crl_number = excluded.crl_number,
                 bundle_version = excluded.bundle_version, last_seen = excluded.last_seen",
            params![
                member.instance,
                member.spiffe_id,
                member.serial,
                member.cert_not_after,
                // SQLite integers are signed 64-bit: a reported number past i64::MAX is clamped
                // (no CA ever publishes that many CRLs or bundles).
                i64::try_from(member.crl_number).unwrap_or(i64::MAX),
                member
                    .bundle_version
                    .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
                member.last_seen,
            ],
        )?;
        Ok(())
    }

    /// Sidecars seen at or after `since` (Unix seconds), by identity then instance.
    pub fn fleet(&self, since: i64) -> Result<Vec<FleetMember>, StoreError> {
        members_since(&self.conn, since)
    }

    /// How many sidecars were seen at or after `since`.
    pub fn fleet_size(&self, since: i64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM fleet WHERE last_seen >= ?1",
            [since],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Forgets sidecars not seen since `before`; returns how many.
    pub fn prune_fleet(&self, before: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM fleet WHERE last_seen < ?1", [before])?)
    }
}

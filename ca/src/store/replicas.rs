//! CA replicas in the shared database: the `replicas` table (each replica's id, API names, when
//! it was added and removed), `replica_credentials` (which replica each API server and admin
//! certificate was issued for, so a replica's credentials can be superseded or revoked without
//! touching the others') and `sealed_keys` (each generation's intermediate key, and the current
//! root's, sealed with the replicas' seal key — see `state/seal.rs`).
//!
//! Server and admin certificates with no `replica_credentials` row were issued before replicas
//! existed, by the state dir `init` made: they belong to the replica called [`INITIAL_REPLICA`].

use time::OffsetDateTime;

use tether_certs::crl::CrlEntry;

use super::db::{args, Exec, Row};
use super::{insert_cert, publish_in, NewCert, Store, StoreError, StoredCrl};

/// The id of the replica `init` made (a state dir without `replica.json`).
pub const INITIAL_REPLICA: &str = "initial";

/// One replica as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaRecord {
    /// Its id (`replica.json` in its state dir; [`INITIAL_REPLICA`] for the one `init` made).
    pub id: String,
    /// The DNS names and IPs of its API server certificate.
    pub sans: Vec<String>,
    /// When it was added, Unix seconds.
    pub created_at: i64,
    /// When `replica remove` removed it, if it did.
    pub removed_at: Option<i64>,
}

/// What `replica remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaRemoval {
    /// Marked removed; its unrevoked API server and admin certificates were revoked.
    Removed {
        /// The serials revoked.
        revoked: Vec<String>,
        /// The CRL published in the same transaction (none when nothing was revoked).
        crl_number: Option<u64>,
    },
    /// It was removed before, at this Unix time; nothing changed.
    AlreadyRemoved(i64),
    /// No replica has that id.
    Unknown,
}

fn row_to_replica(r: &Row) -> Result<ReplicaRecord, StoreError> {
    let id: String = r.get(0)?;
    let sans: String = r.get(1)?;
    let sans = serde_json::from_str(&sans)
        .map_err(|_| StoreError::Corrupt(format!("replica {id}: sans is not a JSON list")))?;
    Ok(ReplicaRecord {
        id,
        sans,
        created_at: r.get(2)?,
        removed_at: r.get(3)?,
    })
}

const SELECT_REPLICA: &str = "SELECT id, sans, created_at, removed_at FROM replicas";

impl Store {
    /// The sealed key of `kind` for `generation`, if one was stored.
    pub fn sealed_key(
        &mut self,
        generation: u64,
        kind: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .query_opt(
                "SELECT sealed FROM sealed_keys WHERE generation = ?1 AND kind = ?2",
                args![generation as i64, kind],
            )?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Stores a sealed key unless one is stored for `(generation, kind)` already; returns whether
    /// it stored this one.
    pub fn store_sealed(
        &mut self,
        generation: u64,
        kind: &str,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let mut tx = self.immediate()?;
        let stored = insert_sealed(&mut tx, generation, kind, sealed)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Every replica, oldest first.
    pub fn replicas(&mut self) -> Result<Vec<ReplicaRecord>, StoreError> {
        self.db
            .query(
                &format!("{SELECT_REPLICA} ORDER BY created_at, id"),
                args![],
            )?
            .iter()
            .map(row_to_replica)
            .collect()
    }

    /// The replica `id`, if recorded.
    pub fn replica(&mut self, id: &str) -> Result<Option<ReplicaRecord>, StoreError> {
        self.db
            .query_opt(&format!("{SELECT_REPLICA} WHERE id = ?1"), args![id])?
            .map(|r| row_to_replica(&r))
            .transpose()
    }

    /// Records a replica unless one with that id is recorded (removed or not); returns whether
    /// it recorded this one.
    pub fn add_replica(&mut self, id: &str, sans: &[String], now: i64) -> Result<bool, StoreError> {
        let sans = serde_json::to_string(sans).unwrap_or_else(|_| "[]".into());
        let added = self.db.execute(
            "INSERT INTO replicas (id, sans, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO NOTHING",
            args![id, sans, now],
        )?;
        Ok(added == 1)
    }

    /// The label of the newest API server certificate issued for `replica`.
    pub fn newest_server_label(&mut self, replica: &str) -> Result<Option<String>, StoreError> {
        self.db
            .query_opt(
                "SELECT c.spiffe_id FROM certificates c
                 LEFT JOIN replica_credentials r ON r.serial = c.serial
                 WHERE c.method = 'server' AND coalesce(r.replica, ?1) = ?2
                 ORDER BY c.issued_at DESC, c.rowid DESC LIMIT 1",
                args![INITIAL_REPLICA, replica],
            )?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Records the API server and admin credentials a replica issued itself for `generation`
    /// (which must be current) when it materialized that generation from the sealed keys, in
    /// one transaction with: `place` (moves the files into the state dir, under the write lock
    /// so two processes of one replica cannot both do it; it returns `false` when another one
    /// already had, and then nothing is recorded and this returns `None`), revoking that
    /// replica's older credentials as superseded, and the CRL that lists them (`sign`).
    pub fn record_materialized<E: From<StoreError>>(
        &mut self,
        replica: &str,
        generation: u64,
        credentials: &[NewCert],
        now: OffsetDateTime,
        place: impl FnOnce() -> Result<bool, E>,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<Option<Vec<String>>, E> {
        let mut tx = self.immediate()?;
        super::ensure_current(&mut tx, generation)?;
        if !place()? {
            return Ok(None);
        }
        let superseded = supersede_credentials(&mut tx, replica, now, "superseded")?;
        for cert in credentials {
            insert_cert(&mut tx, cert, None)?;
            link_credential(&mut tx, &cert.serial.to_string(), replica)?;
        }
        if !superseded.is_empty() {
            publish_in(&mut tx, now, generation, sign)?;
        }
        tx.commit()?;
        Ok(Some(superseded))
    }

    /// Removes replica `id`: marks it removed and revokes its unrevoked API server and admin
    /// certificates (reason cessation-of-operation), with the CRL that lists them, in one
    /// transaction signed by `generation` (which must be current).
    pub fn remove_replica<E: From<StoreError>>(
        &mut self,
        id: &str,
        now: OffsetDateTime,
        generation: u64,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<ReplicaRemoval, E> {
        let mut tx = self.immediate()?;
        let row = tx.query_opt(&format!("{SELECT_REPLICA} WHERE id = ?1"), args![id])?;
        match row.map(|r| row_to_replica(&r)).transpose()? {
            None => return Ok(ReplicaRemoval::Unknown),
            Some(ReplicaRecord {
                removed_at: Some(at),
                ..
            }) => return Ok(ReplicaRemoval::AlreadyRemoved(at)),
            Some(_) => {}
        }
        tx.execute(
            "UPDATE replicas SET removed_at = ?1 WHERE id = ?2",
            args![now.unix_timestamp(), id],
        )?;
        let revoked = supersede_credentials(&mut tx, id, now, "cessation-of-operation")?;
        let crl_number = if revoked.is_empty() {
            None
        } else {
            Some(publish_in(&mut tx, now, generation, sign)?.number)
        };
        tx.commit()?;
        Ok(ReplicaRemoval::Removed {
            revoked,
            crl_number,
        })
    }
}

/// Stores a sealed key unless `(generation, kind)` has one; whether it did.
pub(super) fn insert_sealed(
    db: &mut dyn Exec,
    generation: u64,
    kind: &str,
    sealed: &[u8],
) -> Result<bool, StoreError> {
    let n = db.execute(
        "INSERT INTO sealed_keys (generation, kind, sealed) VALUES (?1, ?2, ?3)
         ON CONFLICT(generation, kind) DO NOTHING",
        args![generation as i64, kind, sealed],
    )?;
    Ok(n == 1)
}

/// Records that certificate `serial` was issued for `replica`.
pub(super) fn link_credential(
    db: &mut dyn Exec,
    serial: &str,
    replica: &str,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO replica_credentials (serial, replica) VALUES (?1, ?2)",
        args![serial, replica],
    )?;
    Ok(())
}

/// Revokes (with `reason`) every unrevoked API server and admin certificate of `replica`;
/// returns their serials.
pub(super) fn supersede_credentials(
    db: &mut dyn Exec,
    replica: &str,
    now: OffsetDateTime,
    reason: &str,
) -> Result<Vec<String>, StoreError> {
    let serials = db
        .query(
            "SELECT c.serial FROM certificates c
             LEFT JOIN replica_credentials r ON r.serial = c.serial
             WHERE c.method IN ('server', 'admin') AND c.revoked_at IS NULL
               AND coalesce(r.replica, ?1) = ?2
             ORDER BY c.serial",
            args![INITIAL_REPLICA, replica],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<Vec<String>, StoreError>>()?;
    for serial in &serials {
        db.execute(
            "UPDATE certificates SET revoked_at = ?1, reason = ?2 WHERE serial = ?3",
            args![now.unix_timestamp(), reason, serial],
        )?;
    }
    Ok(serials)
}

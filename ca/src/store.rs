//! The CA's database: issued certificates, revocations, enrollment tokens, signed CRLs, the CA
//! generations (root + intermediate pairs, see [`crate::authority`]) and the fleet of sidecars
//! that poll for CRLs.
//!
//! SQLite (bundled) in WAL mode with `synchronous=NORMAL`: a transaction is durable once
//! `COMMIT` returns as far as a process crash or kill is concerned (the WAL is written before
//! the commit returns), which is the guarantee the CA gives — an issued certificate or a
//! revocation is acknowledged only after its transaction committed. A power loss can still lose
//! the last transactions; `synchronous=FULL` would trade issuance throughput for that.
//!
//! Every write that must be atomic with a signature (consume a token + record the leaf, record a
//! revocation + publish the CRL that lists it) runs inside one `BEGIN IMMEDIATE` transaction, so
//! a CA killed at any moment either did all of it or none of it. The CLI and the server open the
//! same file; SQLite's locking (with a busy timeout) serializes them.
//!
//! Every signing transaction also checks that the generation it signs with is still the current
//! one (`meta.generation`), so a server that has not yet noticed a `root rotate` made by the CLI
//! can never record a leaf or a CRL from a superseded intermediate: it gets
//! [`StoreError::StaleGeneration`], reloads and tries again.
//!
//! Older databases are upgraded in place when opened (new columns default to generation 1).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use time::OffsetDateTime;

use tether_certs::Serial;

mod fleet;
mod generations;
mod retirement;
mod revocation;
mod schema;
mod tokens;

pub use fleet::{FleetMember, PollRecord, Unpublished};
pub use generations::{Generation, NewGeneration, Rotation};
pub use retirement::{RetireBlockers, RetireOutcome};
use revocation::publish_in;
pub use revocation::{IdentityRevocation, RevokeOutcome, ServedCrl, StoredCrl};
pub use tokens::TokenRecord;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (locked past the busy timeout, disk full, corrupt file …).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not parse (the file was edited or is from another version).
    #[error("database row is corrupt: {0}")]
    Corrupt(String),
    /// The caller signs with a generation that is no longer the current one (another process
    /// rotated the root): reload the CA material and try again. Nothing was written.
    #[error("the CA was rotated to generation {current} while signing with generation {used}")]
    StaleGeneration {
        /// The generation the caller signed with.
        used: u64,
        /// The current generation in the database.
        current: u64,
    },
}

/// One issued certificate as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedRecord {
    /// Serial, lowercase hex.
    pub serial: String,
    /// The SPIFFE ID it names.
    pub spiffe_id: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// When it was issued, Unix seconds.
    pub issued_at: i64,
    /// How it was issued: `enroll`, `renew`, `cli`, `admin`, `server`.
    pub method: String,
    /// When it was revoked, Unix seconds, if it was.
    pub revoked_at: Option<i64>,
    /// Why, if said.
    pub reason: Option<String>,
    /// The CA generation whose intermediate signed it.
    pub generation: u64,
}

/// Whether a renewal was recorded (see [`Store::record_renewal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalGate {
    /// The presented certificate was unrevoked and the new leaf is recorded.
    Recorded,
    /// The presented certificate is revoked; nothing was recorded.
    Revoked,
    /// This CA never issued the presented certificate; nothing was recorded.
    Unknown,
}

/// An open database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Starts a `BEGIN IMMEDIATE` transaction: it takes the write lock at once, so a read
    /// inside it cannot be overtaken by another writer before the write that depends on it.
    fn immediate(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Opens (creating if needed) the database at `path` and applies the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // Concurrent CLI and server writers wait for each other instead of failing at once.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::apply(&conn)?;
        Ok(Store { conn })
    }

    /// The current CA generation (`meta.generation`; 1 for databases from before rotation).
    pub fn current_generation(&self) -> Result<u64, StoreError> {
        current_generation(&self.conn)
    }

    /// The published bundle's version (`meta.bundle_version`; 1 until the first rotation).
    pub fn bundle_version(&self) -> Result<u64, StoreError> {
        meta_u64(&self.conn, "bundle_version")
    }

    /// A setting from the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Writes a setting.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// Records an issued certificate (its own transaction).
    pub fn record(&mut self, cert: &NewCert) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        insert_cert(&tx, cert, None)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a renewed leaf only if the certificate the caller presented (`presented`) is still
    /// unrevoked — the check and the insert are one immediate transaction, so a revocation that
    /// commits while the new leaf is being signed either lands before (the renewal is refused) or
    /// after (the CRL lists the old serial and the new leaf is the caller's to keep, exactly as if
    /// the renewal had come a moment earlier); it can never slip in between.
    pub fn record_renewal(
        &mut self,
        presented: &Serial,
        cert: &NewCert,
    ) -> Result<RenewalGate, StoreError> {
        let tx = self.immediate()?;
        match revocation_state(&tx, presented)? {
            None => return Ok(RenewalGate::Unknown),
            Some(Some(_)) => return Ok(RenewalGate::Revoked),
            Some(None) => {}
        }
        let lineage = lineage_of(&tx, &presented.to_string())?;
        insert_cert(&tx, cert, lineage.as_deref())?;
        tx.commit()?;
        Ok(RenewalGate::Recorded)
    }

    /// The record for `serial`, if this CA issued it.
    pub fn certificate(&self, serial: &Serial) -> Result<Option<IssuedRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("{SELECT_CERT} WHERE serial = ?1"),
                [serial.to_string()],
                row_to_record,
            )
            .optional()?)
    }

    /// The newest certificate issued with `method` (`server`, `admin`, …).
    pub fn newest_of_method(&self, method: &str) -> Result<Option<IssuedRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "{SELECT_CERT} WHERE method = ?1 ORDER BY issued_at DESC, rowid DESC LIMIT 1"
                ),
                [method],
                row_to_record,
            )
            .optional()?)
    }

    /// Issued certificates, newest first. `expiring_before` keeps only unrevoked ones whose
    /// notAfter is before that Unix time (and still in the future at `now`).
    pub fn list(
        &self,
        now: i64,
        expiring_before: Option<i64>,
    ) -> Result<Vec<IssuedRecord>, StoreError> {
        let mut out = Vec::new();
        match expiring_before {
            Some(limit) => {
                let mut stmt = self.conn.prepare(&format!(
                    "{SELECT_CERT} WHERE revoked_at IS NULL AND not_after > ?1 AND not_after <= ?2
                     ORDER BY not_after"
                ))?;
                for r in stmt.query_map(params![now, limit], row_to_record)? {
                    out.push(r?);
                }
            }
            None => {
                let mut stmt = self
                    .conn
                    .prepare(&format!("{SELECT_CERT} ORDER BY issued_at DESC, serial"))?;
                for r in stmt.query_map([], row_to_record)? {
                    out.push(r?);
                }
            }
        }
        Ok(out)
    }
}

/// A certificate to record.
#[derive(Debug, Clone)]
pub struct NewCert {
    /// Its serial.
    pub serial: Serial,
    /// The identity (or a label such as the CA API's DNS name for the server certificate).
    pub spiffe_id: String,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// Issue time.
    pub issued_at: OffsetDateTime,
    /// `enroll`, `renew`, `cli`, `admin` or `server`.
    pub method: &'static str,
    /// The certificate.
    pub der: Vec<u8>,
    /// The generation whose intermediate signed it; must be the current one when recorded.
    pub generation: u64,
}

const SELECT_CERT: &str = "SELECT serial, spiffe_id, not_before, not_after, issued_at, method,
    revoked_at, reason, generation FROM certificates";

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<IssuedRecord> {
    Ok(IssuedRecord {
        serial: r.get(0)?,
        spiffe_id: r.get(1)?,
        not_before: r.get(2)?,
        not_after: r.get(3)?,
        issued_at: r.get(4)?,
        method: r.get(5)?,
        revoked_at: r.get(6)?,
        reason: r.get(7)?,
        generation: r.get::<_, i64>(8)? as u64,
    })
}

fn meta_u64(conn: &Connection, key: &str) -> Result<u64, StoreError> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    match value {
        // Databases from before rotation have neither key: generation 1, bundle version 1.
        None => Ok(1),
        Some(v) => v
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("meta {key} = {v:?} is not a number"))),
    }
}

fn current_generation(conn: &Connection) -> Result<u64, StoreError> {
    meta_u64(conn, "generation")
}

/// Fails with [`StoreError::StaleGeneration`] unless `generation` is the current one.
fn ensure_current(conn: &Connection, generation: u64) -> Result<(), StoreError> {
    let current = current_generation(conn)?;
    if current != generation {
        return Err(StoreError::StaleGeneration {
            used: generation,
            current,
        });
    }
    Ok(())
}

/// The lineage of `serial` (lowercase hex): the serial of the enrolled or issued certificate it
/// was renewed from, itself for such a certificate (and for rows from before lineages were
/// recorded); `None` when this CA did not issue it.
fn lineage_of(conn: &Connection, serial: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(lineage, serial) FROM certificates WHERE serial = ?1")?
        .query_row([serial], |r| r.get(0))
        .optional()?)
}

/// Whether this CA issued `serial` (`None`: it did not) and when it was revoked, if it was.
fn revocation_state(conn: &Connection, serial: &Serial) -> Result<Option<Option<i64>>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT revoked_at FROM certificates WHERE serial = ?1")?
        .query_row([serial.to_string()], |r| r.get(0))
        .optional()?)
}

/// Records `c`, renewed from a certificate of `lineage` (`None`: it starts its own lineage).
fn insert_cert(
    tx: &rusqlite::Transaction<'_>,
    c: &NewCert,
    lineage: Option<&str>,
) -> Result<(), StoreError> {
    ensure_current(tx, c.generation)?;
    let serial = c.serial.to_string();
    // The serial is the primary key: a (astronomically unlikely) collision fails the insert and
    // so the whole issuance, rather than ever reusing a serial.
    tx.prepare_cached(
        "INSERT INTO certificates
             (serial, spiffe_id, not_before, not_after, issued_at, method, der, generation,
              lineage)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        serial,
        c.spiffe_id,
        c.not_before.unix_timestamp(),
        c.not_after.unix_timestamp(),
        c.issued_at.unix_timestamp(),
        c.method,
        c.der,
        c.generation as i64,
        lineage.unwrap_or(&serial),
    ])?;
    Ok(())
}

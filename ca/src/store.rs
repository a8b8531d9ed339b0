//! The CA's database: issued certificates, revocations, enrollment tokens and signed CRLs.
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

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;

use tether_certs::crl::{CrlEntry, Reason};
use tether_certs::{Serial, SpiffeId};

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (locked past the busy timeout, disk full, corrupt file …).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not parse (the file was edited or is from another version).
    #[error("database row is corrupt: {0}")]
    Corrupt(String),
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
}

/// A token row looked up for enrollment.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The identity the token enrolls.
    pub spiffe_id: String,
    /// Unix seconds after which it is refused.
    pub expires_at: i64,
    /// When it was used, if it was.
    pub used_at: Option<i64>,
}

/// A stored, signed CRL.
#[derive(Debug, Clone)]
pub struct StoredCrl {
    /// CRL number.
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// DER.
    pub der: Vec<u8>,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Newly revoked; the CRL with this number lists it.
    Revoked {
        /// The CRL published in the same transaction.
        crl_number: u64,
    },
    /// It was revoked before (at this Unix time); nothing changed.
    AlreadyRevoked(i64),
    /// This CA never issued that serial.
    Unknown,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    method TEXT NOT NULL,
    der BLOB NOT NULL,
    revoked_at INTEGER,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS certificates_by_id ON certificates (spiffe_id);
CREATE INDEX IF NOT EXISTS certificates_by_not_after ON certificates (not_after);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS crls (
    number INTEGER PRIMARY KEY,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    der BLOB NOT NULL
);
";

/// An open database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // Concurrent CLI and server writers wait for each other instead of failing at once.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// A setting from the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
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

    /// Stores an enrollment token by its hash.
    pub fn insert_token(
        &self,
        hash: &str,
        id: &SpiffeId,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tokens (hash, spiffe_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, id.as_str(), now, expires_at],
        )?;
        Ok(())
    }

    /// Runs `issue` inside one immediate transaction that first marks the token `hash` used.
    ///
    /// `check` sees the token row (or `None`) and decides whether it may be used; `issue` then
    /// signs and returns the record to store. If either fails, nothing is written: the token stays
    /// unused and no certificate exists.
    pub fn consume_token_and_record<T, E: From<StoreError>>(
        &mut self,
        hash: &str,
        now: i64,
        check: impl FnOnce(Option<TokenRecord>) -> Result<SpiffeId, E>,
        issue: impl FnOnce(&SpiffeId) -> Result<(NewCert, T), E>,
    ) -> Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let row = tx
            .query_row(
                "SELECT spiffe_id, expires_at, used_at FROM tokens WHERE hash = ?1",
                [hash],
                |r| {
                    Ok(TokenRecord {
                        spiffe_id: r.get(0)?,
                        expires_at: r.get(1)?,
                        used_at: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(StoreError::from)?;
        let id = check(row)?;
        tx.execute(
            "UPDATE tokens SET used_at = ?1 WHERE hash = ?2",
            params![now, hash],
        )
        .map_err(StoreError::from)?;
        let (cert, out) = issue(&id)?;
        insert_cert(&tx, &cert)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Records an issued certificate (its own transaction).
    pub fn record(&mut self, cert: &NewCert) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_cert(&tx, cert)?;
        tx.commit()?;
        Ok(())
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

    /// The newest CRL, if any was published.
    pub fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT number, this_update, next_update, der FROM crls
                 ORDER BY number DESC LIMIT 1",
                [],
                |r| {
                    Ok(StoredCrl {
                        number: r.get::<_, i64>(0)? as u64,
                        this_update: r.get(1)?,
                        next_update: r.get(2)?,
                        der: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// The newest CRL number (0 when none was published): a cheap query for change polling.
    pub fn latest_crl_number(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn
            .query_row("SELECT max(number) FROM crls", [], |r| r.get(0))?;
        Ok(n.unwrap_or(0) as u64)
    }

    /// Revokes `serial` (if it is not already) and publishes a new CRL in the same transaction.
    ///
    /// `sign` receives the next CRL number and every revoked, not yet expired entry, and returns
    /// the signed CRL with its thisUpdate/nextUpdate.
    pub fn revoke_and_publish<E: From<StoreError>>(
        &mut self,
        serial: &Serial,
        reason: Option<Reason>,
        now: OffsetDateTime,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<RevokeOutcome, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let state: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM certificates WHERE serial = ?1",
                [serial.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::from)?;
        match state {
            None => return Ok(RevokeOutcome::Unknown),
            Some(Some(at)) => return Ok(RevokeOutcome::AlreadyRevoked(at)),
            Some(None) => {}
        }
        tx.execute(
            "UPDATE certificates SET revoked_at = ?1, reason = ?2 WHERE serial = ?3",
            params![
                now.unix_timestamp(),
                reason.map(|r| r.as_str()),
                serial.to_string()
            ],
        )
        .map_err(StoreError::from)?;
        let crl = publish_in(&tx, now, sign)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(RevokeOutcome::Revoked {
            crl_number: crl.number,
        })
    }

    /// Publishes a new CRL (next number, same revoked entries): used at init and to re-sign
    /// before nextUpdate so readers never see a stale list while the CA is up.
    pub fn publish_crl<E: From<StoreError>>(
        &mut self,
        now: OffsetDateTime,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<StoredCrl, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let crl = publish_in(&tx, now, sign)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(crl)
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
}

const SELECT_CERT: &str = "SELECT serial, spiffe_id, not_before, not_after, issued_at, method,
    revoked_at, reason FROM certificates";

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
    })
}

fn insert_cert(tx: &rusqlite::Transaction<'_>, c: &NewCert) -> Result<(), StoreError> {
    // The serial is the primary key: a (astronomically unlikely) collision fails the insert and
    // so the whole issuance, rather than ever reusing a serial.
    tx.execute(
        "INSERT INTO certificates (serial, spiffe_id, not_before, not_after, issued_at, method, der)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            c.serial.to_string(),
            c.spiffe_id,
            c.not_before.unix_timestamp(),
            c.not_after.unix_timestamp(),
            c.issued_at.unix_timestamp(),
            c.method,
            c.der,
        ],
    )?;
    Ok(())
}

fn publish_in<E: From<StoreError>>(
    tx: &rusqlite::Transaction<'_>,
    now: OffsetDateTime,
    sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
) -> Result<StoredCrl, E> {
    let last: Option<i64> = tx
        .query_row("SELECT max(number) FROM crls", [], |r| r.get(0))
        .map_err(StoreError::from)?;
    let number = last.unwrap_or(0) as u64 + 1;
    // Entries stay listed until their certificate has expired (with the issuance clock-skew
    // margin): after that every verifier rejects the certificate on its own.
    let keep_after = (now - tether_certs::issue::CLOCK_SKEW).unix_timestamp();
    let mut stmt = tx
        .prepare(
            "SELECT serial, revoked_at, reason FROM certificates
             WHERE revoked_at IS NOT NULL AND not_after > ?1 ORDER BY revoked_at",
        )
        .map_err(StoreError::from)?;
    let rows = stmt
        .query_map([keep_after], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(StoreError::from)?;
    let mut entries = Vec::new();
    for row in rows {
        let (serial, at, reason) = row.map_err(StoreError::from)?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("revoked {serial}: {what}"));
        entries.push(CrlEntry {
            serial: serial.parse().map_err(|_| corrupt("bad serial"))?,
            revoked_at: OffsetDateTime::from_unix_timestamp(at).map_err(|_| corrupt("bad time"))?,
            reason: reason.and_then(|r| r.parse().ok()),
        });
    }
    drop(stmt);
    let crl = sign(number, &entries)?;
    tx.execute(
        "INSERT INTO crls (number, this_update, next_update, der) VALUES (?1, ?2, ?3, ?4)",
        params![crl.number as i64, crl.this_update, crl.next_update, crl.der],
    )
    .map_err(StoreError::from)?;
    Ok(crl)
}

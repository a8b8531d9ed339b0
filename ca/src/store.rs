//! The CA's database: issued certificates, revocations, enrollment tokens, signed CRLs, the CA
//! generations (root + intermediate pairs, see [`crate::authority`]) and the fleet of sidecars
//! that poll for CRLs.
//!
//! Two backends behind one API ([`db`] is the SQL both speak): SQLite (bundled, the embedded
//! default: `ca.db` in the state dir, which replicas on one host may share) and PostgreSQL (for
//! replicas across hosts; the state dir remembers its URL in `database.url`). A transaction is
//! durable once its `COMMIT` returns — an issued certificate or a revocation is acknowledged
//! only after that — and [`sqlite`] and [`postgres`] say what each backend adds.
//!
//! Every write that must be atomic with a signature (consume a token + record the leaf, record a
//! revocation + publish the CRL that lists it) runs inside one write transaction, so a CA killed
//! at any moment either did all of it or none of it. The CLI, the server and every replica open
//! the same database; SQLite's lock, or PostgreSQL's cluster-wide advisory write lock,
//! serializes them, so replicas agree on tokens, serials, CRL numbers and the current
//! generation.
//!
//! Every signing transaction also checks that the generation it signs with is still the current
//! one (`meta.generation`), so a server that has not yet noticed a `root rotate` made by the CLI
//! can never record a leaf or a CRL from a superseded intermediate: it gets
//! [`StoreError::StaleGeneration`], reloads and tries again.
//!
//! Older databases are upgraded in place when opened ([`schema`]). Every CRL published (a
//! revocation, a rotation, a retirement, a re-signing) is announced on [`CHANGES_CHANNEL`] when
//! its transaction commits, so other replicas wake their long-polls at once ([`listen`]).

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use tether_certs::Serial;

mod backend;
pub(crate) mod db;
mod fleet;
mod generations;
mod listen;
mod pgpass;
mod pool;
mod postgres;
pub mod replicas;
mod retirement;
mod revocation;
mod schema;
mod sqlite;
mod tokens;

use backend::Backend;
pub(crate) use backend::Tx;
use db::{args, Exec, Row};
pub use fleet::{FleetMember, PollRecord, Unpublished};
pub use generations::{Generation, NewGeneration, Rotation};
pub use listen::Changes;
pub use pool::{Pool, Pooled, POSTGRES_CONNECTIONS};
pub use postgres::{DatabaseUrl, RETRY_AFTER};
pub use retirement::{RetireBlockers, RetireOutcome};
use revocation::publish_in;
pub use revocation::{IdentityRevocation, RevokeOutcome, ServedCrl, StoredCrl};
pub use tokens::TokenRecord;

/// The PostgreSQL channel every CRL publication is announced on (see [`listen`]).
pub const CHANGES_CHANNEL: &str = "tether_ca_changes";

/// Where a CA's database is.
#[derive(Debug, Clone)]
pub enum Location {
    /// An SQLite file (the embedded default, `ca.db` in the state dir).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas.
    Postgres(DatabaseUrl),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(u) => f.write_str(u.as_str()),
        }
    }
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (locked past the busy timeout, disk full, corrupt file …).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused a statement (a constraint, a permission, a schema problem).
    #[error("database: {0}")]
    Postgres(String),
    /// The database cannot be reached or is overloaded now (connection lost or refused, a
    /// timeout, a shutdown): retryable, and answered 503. Nothing was written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A database URL that cannot be used (the message never repeats a password).
    #[error("database URL: {0}")]
    BadUrl(String),
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
    db: Backend,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_at(&Location::Sqlite(path.to_path_buf()))
    }

    /// Opens the database at `location`, creating or upgrading its schema.
    pub fn open_at(location: &Location) -> Result<Self, StoreError> {
        let mut store = match location {
            Location::Sqlite(path) => Store {
                db: Backend::Sqlite(sqlite::open(path)?),
            },
            Location::Postgres(url) => Store {
                db: Backend::Postgres(Box::new(postgres::Pg::connect(url)?)),
            },
        };
        match &mut store.db {
            Backend::Sqlite(c) => schema::apply_sqlite(c)?,
            Backend::Postgres(p) => schema::apply_postgres(p)?,
        }
        Ok(store)
    }

    /// The current CA generation (`meta.generation`; 1 for databases from before rotation).
    pub fn current_generation(&mut self) -> Result<u64, StoreError> {
        current_generation(&mut self.db)
    }

    /// The published bundle's version (`meta.bundle_version`; 1 until the first rotation).
    pub fn bundle_version(&mut self) -> Result<u64, StoreError> {
        meta_u64(&mut self.db, "bundle_version")
    }

    /// A setting from the `meta` table.
    pub fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        meta_in(&mut self.db, key)
    }

    /// Writes a setting.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        set_meta_in(&mut self.db, key, value)
    }

    /// Records an issued certificate (its own transaction).
    pub fn record(&mut self, cert: &NewCert) -> Result<(), StoreError> {
        let mut tx = self.immediate()?;
        insert_cert(&mut tx, cert, None)?;
        tx.commit()
    }

    /// Records a renewed leaf only if the certificate the caller presented (`presented`) is still
    /// unrevoked — the check and the insert are one write transaction, so a revocation that
    /// commits while the new leaf is being signed either lands before (the renewal is refused) or
    /// after (the CRL lists the old serial and the new leaf is the caller's to keep, exactly as if
    /// the renewal had come a moment earlier); it can never slip in between.
    pub fn record_renewal(
        &mut self,
        presented: &Serial,
        cert: &NewCert,
    ) -> Result<RenewalGate, StoreError> {
        let mut tx = self.immediate()?;
        match revocation_state(&mut tx, presented)? {
            None => return Ok(RenewalGate::Unknown),
            Some(Some(_)) => return Ok(RenewalGate::Revoked),
            Some(None) => {}
        }
        let lineage = lineage_of(&mut tx, &presented.to_string())?;
        insert_cert(&mut tx, cert, lineage.as_deref())?;
        tx.commit()?;
        Ok(RenewalGate::Recorded)
    }

    /// The record for `serial`, if this CA issued it.
    pub fn certificate(&mut self, serial: &Serial) -> Result<Option<IssuedRecord>, StoreError> {
        self.db
            .query_opt(
                &format!("{SELECT_CERT} WHERE serial = ?1"),
                args![serial.to_string()],
            )?
            .map(|r| row_to_record(&r))
            .transpose()
    }

    /// The newest certificate issued with `method` (`server`, `admin`, …).
    pub fn newest_of_method(&mut self, method: &str) -> Result<Option<IssuedRecord>, StoreError> {
        self.db
            .query_opt(
                &format!(
                    "{SELECT_CERT} WHERE method = ?1 ORDER BY issued_at DESC, rowid DESC LIMIT 1"
                ),
                args![method],
            )?
            .map(|r| row_to_record(&r))
            .transpose()
    }

    /// Issued certificates, newest first. `expiring_before` keeps only unrevoked ones whose
    /// notAfter is before that Unix time (and still in the future at `now`).
    pub fn list(
        &mut self,
        now: i64,
        expiring_before: Option<i64>,
    ) -> Result<Vec<IssuedRecord>, StoreError> {
        let rows = match expiring_before {
            Some(limit) => self.db.query(
                &format!(
                    "{SELECT_CERT} WHERE revoked_at IS NULL AND not_after > ?1 AND not_after <= ?2
                     ORDER BY not_after"
                ),
                args![now, limit],
            )?,
            None => self.db.query(
                &format!("{SELECT_CERT} ORDER BY issued_at DESC, serial"),
                args![],
            )?,
        };
        rows.iter().map(row_to_record).collect()
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

fn row_to_record(r: &Row) -> Result<IssuedRecord, StoreError> {
    Ok(IssuedRecord {
        serial: r.get(0)?,
        spiffe_id: r.get(1)?,
        not_before: r.get(2)?,
        not_after: r.get(3)?,
        issued_at: r.get(4)?,
        method: r.get(5)?,
        revoked_at: r.get(6)?,
        reason: r.get(7)?,
        generation: r.get(8)?,
    })
}

/// The `meta` setting `key`, if set.
fn meta_in(db: &mut dyn Exec, key: &str) -> Result<Option<String>, StoreError> {
    db.query_opt("SELECT value FROM meta WHERE key = ?1", args![key])?
        .map(|r| r.get(0))
        .transpose()
}

/// Sets the `meta` setting `key` to `value`.
fn set_meta_in(db: &mut dyn Exec, key: &str, value: &str) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        args![key, value],
    )?;
    Ok(())
}

/// The numeric `meta` setting `key`, `unset` if it is not set.
fn meta_number(db: &mut dyn Exec, key: &str, unset: u64) -> Result<u64, StoreError> {
    match meta_in(db, key)? {
        None => Ok(unset),
        Some(v) => v
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("meta {key} = {v:?} is not a number"))),
    }
}

fn meta_u64(db: &mut dyn Exec, key: &str) -> Result<u64, StoreError> {
    // Databases from before rotation have neither key: generation 1, bundle version 1.
    meta_number(db, key, 1)
}

fn current_generation(db: &mut dyn Exec) -> Result<u64, StoreError> {
    meta_u64(db, "generation")
}

/// Fails with [`StoreError::StaleGeneration`] unless `generation` is the current one.
fn ensure_current(db: &mut dyn Exec, generation: u64) -> Result<(), StoreError> {
    let current = current_generation(db)?;
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
fn lineage_of(db: &mut dyn Exec, serial: &str) -> Result<Option<String>, StoreError> {
    db.query_opt(
        "SELECT coalesce(lineage, serial) FROM certificates WHERE serial = ?1",
        args![serial],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Whether this CA issued `serial` (`None`: it did not) and when it was revoked, if it was.
fn revocation_state(db: &mut dyn Exec, serial: &Serial) -> Result<Option<Option<i64>>, StoreError> {
    db.query_opt(
        "SELECT revoked_at FROM certificates WHERE serial = ?1",
        args![serial.to_string()],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Records `c`, renewed from a certificate of `lineage` (`None`: it starts its own lineage).
fn insert_cert(db: &mut dyn Exec, c: &NewCert, lineage: Option<&str>) -> Result<(), StoreError> {
    ensure_current(db, c.generation)?;
    let serial = c.serial.to_string();
    // The serial is the primary key: a (astronomically unlikely) collision fails the insert and
    // so the whole issuance, rather than ever reusing a serial — on every replica alike.
    db.execute(
        "INSERT INTO certificates
             (serial, spiffe_id, not_before, not_after, issued_at, method, der, generation,
              lineage)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        args![
            serial,
            c.spiffe_id,
            c.not_before.unix_timestamp(),
            c.not_after.unix_timestamp(),
            c.issued_at.unix_timestamp(),
            c.method,
            c.der,
            c.generation as i64,
            lineage.unwrap_or(&serial),
        ],
    )?;
    Ok(())
}

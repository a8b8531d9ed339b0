//! The database's schema: the tables and indexes `Store::open` creates, and the in-place
//! upgrade of databases written by older versions (columns added since: generations default to
//! 1, and a certificate or fleet row without a lineage is read as described on
//! [`ADDED_COLUMNS`]).

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

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
    reason TEXT,
    generation INTEGER NOT NULL DEFAULT 1,
    lineage TEXT
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
    der BLOB NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    root_fingerprint TEXT NOT NULL UNIQUE,
    root_der BLOB NOT NULL,
    root_not_after INTEGER NOT NULL,
    intermediate_fingerprint TEXT NOT NULL,
    intermediate_der BLOB NOT NULL,
    intermediate_not_after INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    bundle_version INTEGER NOT NULL,
    retired_at INTEGER,
    cross_der BLOB,
    cross_generation INTEGER
);
CREATE TABLE IF NOT EXISTS fleet (
    instance TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    serial TEXT NOT NULL,
    cert_not_after INTEGER NOT NULL,
    crl_number INTEGER NOT NULL,
    bundle_version INTEGER,
    last_seen INTEGER NOT NULL,
    lineage TEXT
);
CREATE INDEX IF NOT EXISTS fleet_by_last_seen ON fleet (last_seen);
";

/// Indexes on columns that databases from before generations lack until [`upgrade`] adds them.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS certificates_by_generation ON certificates (generation, not_after);
";

/// Columns added since the first schema, oldest first: (table, column, declaration). Append
/// only; a release never changes an entry an older one shipped.
///
/// `certificates.lineage` is the serial of the enrolled (or CLI-issued) certificate a leaf
/// renews from; NULL on rows from before it, which count as their own lineage.
/// `fleet.lineage` is the lineage of the sidecar that owns the row; NULL on rows from before
/// it, which the next poll of the same identity adopts.
const ADDED_COLUMNS: [(&str, &str, &str); 6] = [
    ("certificates", "generation", "INTEGER NOT NULL DEFAULT 1"),
    ("crls", "generation", "INTEGER NOT NULL DEFAULT 1"),
    ("generations", "cross_der", "BLOB"),
    ("generations", "cross_generation", "INTEGER"),
    ("certificates", "lineage", "TEXT"),
    ("fleet", "lineage", "TEXT"),
];

/// Creates what is missing and upgrades an older database in place.
pub(super) fn apply(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    upgrade(conn)?;
    conn.execute_batch(INDEXES)?;
    Ok(())
}

/// Adds the columns a database from an older version lacks. Checked first without a write lock,
/// so opening an up-to-date database never waits for a writer.
fn upgrade(conn: &Connection) -> Result<(), StoreError> {
    let missing = |conn: &Connection| -> Result<Vec<(&str, &str, &str)>, StoreError> {
        let mut out = Vec::new();
        for (table, column, decl) in ADDED_COLUMNS {
            let mut stmt =
                conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            if !names.iter().any(|n| n == column) {
                out.push((table, column, decl));
            }
        }
        Ok(out)
    };
    if missing(conn)?.is_empty() {
        return Ok(());
    }
    // Two processes may open an old database at once: re-check under the write lock.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    for (table, column, decl) in missing(&tx)? {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    tx.commit()?;
    Ok(())
}

//! The database's schema: the tables and indexes `Store::open` creates, for each backend.
//!
//! - **SQLite** keeps the upgrade it has always had: [`SCHEMA`] creates what is missing and
//!   databases written by older versions get the columns added since (generations default to
//!   1, and a certificate or fleet row without a lineage is read as described on
//!   [`ADDED_COLUMNS`]).
//! - **PostgreSQL** databases are new, so they get versioned migrations instead
//!   ([`PG_MIGRATIONS`]): applied in order on open, under the write lock, each recorded in
//!   `meta.schema_version`, so replicas of different versions opening one database at once
//!   agree on what ran. The same tables, with `BIGINT` for integers, `BYTEA` for DER, and a
//!   `rowid` sequence on `certificates` (SQLite's implicit insertion order, which "newest"
//!   queries break ties with).

use rusqlite::{Connection, TransactionBehavior};

use super::db::{args, Exec};
use super::postgres::Pg;
use super::{meta_number, set_meta_in, StoreError};

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
CREATE TABLE IF NOT EXISTS sealed_keys (
    generation INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (generation, kind)
);
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY,
    sans TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    removed_at INTEGER
);
CREATE TABLE IF NOT EXISTS replica_credentials (
    serial TEXT PRIMARY KEY,
    replica TEXT NOT NULL
);
";

/// PostgreSQL's migrations, oldest first: (version, statements). Append only; a release never
/// changes an entry an older one shipped.
pub(super) const PG_MIGRATIONS: [(u64, &str); 1] = [(
    1,
    "
CREATE TABLE certificates (
    rowid BIGSERIAL NOT NULL,
    serial TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    method TEXT NOT NULL,
    der BYTEA NOT NULL,
    revoked_at BIGINT,
    reason TEXT,
    generation BIGINT NOT NULL DEFAULT 1,
    lineage TEXT
);
CREATE INDEX certificates_by_id ON certificates (spiffe_id);
CREATE INDEX certificates_by_not_after ON certificates (not_after);
CREATE INDEX certificates_by_generation ON certificates (generation, not_after);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE TABLE crls (
    number BIGINT PRIMARY KEY,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    der BYTEA NOT NULL,
    generation BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE generations (
    generation BIGINT PRIMARY KEY,
    root_fingerprint TEXT NOT NULL UNIQUE,
    root_der BYTEA NOT NULL,
    root_not_after BIGINT NOT NULL,
    intermediate_fingerprint TEXT NOT NULL,
    intermediate_der BYTEA NOT NULL,
    intermediate_not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    bundle_version BIGINT NOT NULL,
    retired_at BIGINT,
    cross_der BYTEA,
    cross_generation BIGINT
);
CREATE TABLE fleet (
    instance TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    serial TEXT NOT NULL,
    cert_not_after BIGINT NOT NULL,
    crl_number BIGINT NOT NULL,
    bundle_version BIGINT,
    last_seen BIGINT NOT NULL,
    lineage TEXT
);
CREATE INDEX fleet_by_last_seen ON fleet (last_seen);
CREATE TABLE sealed_keys (
    generation BIGINT NOT NULL,
    kind TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    PRIMARY KEY (generation, kind)
);
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    sans TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    removed_at BIGINT
);
CREATE TABLE replica_credentials (
    serial TEXT PRIMARY KEY,
    replica TEXT NOT NULL
);
",
)];

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

/// Applies the migrations `pg` has not run yet, in order, in one transaction under the write
/// lock (a replica that loses the race finds them done and runs nothing).
pub(super) fn apply_postgres(pg: &mut Pg) -> Result<(), StoreError> {
    let newest = PG_MIGRATIONS.last().map_or(0, |m| m.0);
    let mut tx = pg.write_tx()?;
    // `meta` comes first, outside the migrations: it holds the version they are counted by.
    tx.execute(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        args![],
    )?;
    let version = meta_number(&mut tx, "schema_version", 0)?;
    if version > newest {
        return Err(StoreError::Corrupt(format!(
            "the database is at schema version {version}, newer than this tether-ca knows \
             ({newest}): upgrade this replica"
        )));
    }
    for (v, statements) in PG_MIGRATIONS.iter().filter(|(v, _)| *v > version) {
        tx.batch(statements)?;
        set_meta_in(&mut tx, "schema_version", &v.to_string())?;
    }
    tx.commit()
}

/// Creates what is missing and upgrades an older SQLite database in place.
pub(super) fn apply_sqlite(conn: &Connection) -> Result<(), StoreError> {
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

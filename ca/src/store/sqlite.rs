//! The embedded backend: one SQLite file (`ca.db` in the state dir) in WAL mode, which several
//! processes on one host may share — the CLI and a server, or several replicas.
//!
//! `synchronous=NORMAL`: a transaction is durable once `COMMIT` returns as far as a process
//! crash or kill is concerned (the WAL is written before the commit returns); a power loss can
//! still lose the last transactions, which `synchronous=FULL` would trade issuance throughput
//! for. Writers serialize on SQLite's lock (`BEGIN IMMEDIATE`, with a busy timeout).

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::db::{params, Cell, Exec, Param, Row, ToParam};
use super::StoreError;

/// How long a writer waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (creating if needed) the database file at `path`.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // Concurrent CLI and server writers wait for each other instead of failing at once.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Int(v) => ValueRef::Integer(v),
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Blob(b) => ValueRef::Blob(b),
            Param::Null => ValueRef::Null,
        }))
    }
}

fn cell(v: ValueRef<'_>) -> Result<Cell, StoreError> {
    Ok(match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Text(t) => Cell::Text(
            std::str::from_utf8(t)
                .map_err(|_| StoreError::Corrupt("text that is not UTF-8".into()))?
                .to_string(),
        ),
        ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        ValueRef::Real(_) => return Err(StoreError::Corrupt("a REAL value".into())),
    })
}

impl Exec for Connection {
    fn execute(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError> {
        exec_on(self, sql, args)
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        query_on(self, sql, args)
    }
}

impl Exec for rusqlite::Transaction<'_> {
    fn execute(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError> {
        // A transaction is its connection with BEGIN issued; statements run on it alike.
        let conn: &Connection = self;
        exec_on(conn, sql, args)
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        let conn: &Connection = self;
        query_on(conn, sql, args)
    }
}

fn exec_on(conn: &Connection, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError> {
    let params = params(args);
    let n = conn
        .prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(params.iter()))?;
    Ok(n as u64)
}

fn query_on(conn: &Connection, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
    let params = params(args);
    let mut stmt = conn.prepare_cached(sql)?;
    let width = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let cells = (0..width)
            .map(|i| cell(r.get_ref(i)?))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.push(Row(cells));
    }
    Ok(out)
}

//! The connection behind a [`Store`] and its transactions, for either backend: [`Backend`]
//! dispatches each statement to SQLite or PostgreSQL, [`Tx`] is a transaction of either, and
//! [`Store::immediate`] / [`Store::snapshot`] start the two kinds the store uses — a write
//! transaction that takes the write lock first, and a read of one consistent state.

use rusqlite::TransactionBehavior;

use super::db::{Exec, Row, ToParam};
use super::{postgres, Store, StoreError, CHANGES_CHANNEL};

/// The connection behind a [`Store`].
pub(super) enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Pg>),
}

/// A transaction of either backend; dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres(postgres::PgTx<'a>),
}

impl Exec for Backend {
    fn execute(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError> {
        match self {
            Backend::Sqlite(c) => c.execute(sql, args),
            Backend::Postgres(p) => p.execute(sql, args),
        }
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        match self {
            Backend::Sqlite(c) => Exec::query(c, sql, args),
            Backend::Postgres(p) => p.query(sql, args),
        }
    }
}

impl Exec for Tx<'_> {
    fn execute(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError> {
        match self {
            Tx::Sqlite(t) => Exec::execute(t, sql, args),
            Tx::Postgres(t) => t.execute(sql, args),
        }
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        match self {
            Tx::Sqlite(t) => Exec::query(t, sql, args),
            Tx::Postgres(t) => t.query(sql, args),
        }
    }
}

impl Tx<'_> {
    /// Commits: everything the transaction did is durable, or (on error) none of it.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => Ok(t.commit()?),
            Tx::Postgres(t) => t.commit(),
        }
    }

    /// Announces a new CRL to other replicas when this transaction commits. SQLite replicas
    /// share one host and see it at their next look at the file (every 100 ms).
    pub(crate) fn announce(&mut self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(_) => Ok(()),
            Tx::Postgres(t) => t.notify(CHANGES_CHANNEL),
        }
    }
}

impl Store {
    /// Starts a write transaction: it takes the write lock at once (`BEGIN IMMEDIATE`, or the
    /// advisory lock), so a read inside it cannot be overtaken by another writer before the
    /// write that depends on it.
    pub(super) fn immediate(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(match &mut self.db {
            Backend::Sqlite(c) => {
                Tx::Sqlite(c.transaction_with_behavior(TransactionBehavior::Immediate)?)
            }
            Backend::Postgres(p) => Tx::Postgres(p.write_tx()?),
        })
    }

    /// Starts a read transaction that sees one consistent state throughout.
    pub(super) fn snapshot(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(match &mut self.db {
            Backend::Sqlite(c) => Tx::Sqlite(c.transaction()?),
            Backend::Postgres(p) => Tx::Postgres(p.snapshot_tx()?),
        })
    }
}

//! The one SQL vocabulary the store is written in, whichever database is behind it: statement
//! parameters ([`Param`], passed with [`args!`]), rows read back by column ([`Row::get`]) and the
//! [`Exec`] trait that both backends — SQLite ([`super::sqlite`]) and PostgreSQL
//! ([`super::postgres`]) — and their transactions implement.
//!
//! Statements are written once, in the dialect both databases share: `?N` parameters (rewritten
//! to `$N` for PostgreSQL), `ON CONFLICT`, `coalesce`, `CASE`. Only the schema differs (column
//! types), and lives with each backend. Values are the four kinds SQLite has — integer, text,
//! blob, null — which map onto PostgreSQL's `BIGINT`, `TEXT` and `BYTEA` (and `BOOLEAN` results,
//! read as 0/1), so a row reads the same from both.

use super::StoreError;

/// One statement parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    /// An integer (every integer column is 64-bit).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes (DER).
    Blob(&'a [u8]),
    /// SQL NULL.
    Null,
}

/// A value that can be bound as a [`Param`].
pub(crate) trait ToParam {
    /// The parameter.
    fn param(&self) -> Param<'_>;
}

impl ToParam for i64 {
    fn param(&self) -> Param<'_> {
        Param::Int(*self)
    }
}

impl ToParam for str {
    fn param(&self) -> Param<'_> {
        Param::Text(self)
    }
}

impl ToParam for String {
    fn param(&self) -> Param<'_> {
        Param::Text(self)
    }
}

impl ToParam for [u8] {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}

impl ToParam for Vec<u8> {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}

impl<T: ToParam + ?Sized> ToParam for &T {
    fn param(&self) -> Param<'_> {
        (**self).param()
    }
}

impl<T: ToParam> ToParam for Option<T> {
    fn param(&self) -> Param<'_> {
        match self {
            Some(v) => v.param(),
            None => Param::Null,
        }
    }
}

/// `args` as the [`Param`]s each backend binds.
pub(crate) fn params<'a>(args: &'a [&'a dyn ToParam]) -> Vec<Param<'a>> {
    args.iter().map(|a| a.param()).collect()
}

/// The parameters of a statement, in order: `args![serial, now]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$(&$value as &dyn $crate::store::db::ToParam),*][..]
    };
}
pub(crate) use args;

/// One column's value as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// NULL.
    Null,
    /// An integer (or a boolean, as 0/1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A row read back: its columns in `SELECT` order.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    /// Column `i` as a `T`; a NULL or a value of another kind where `T` cannot hold it is
    /// [`StoreError::Corrupt`] (the file was edited, or the query and the reader disagree).
    pub(crate) fn get<T: FromCell>(&self, i: usize) -> Result<T, StoreError> {
        let cell = self.0.get(i).unwrap_or(&Cell::Null);
        T::from_cell(cell).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "column {i} holds {cell:?}, not {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A Rust type a [`Cell`] converts to.
pub(crate) trait FromCell: Sized {
    /// The value, or `None` if the cell holds another kind.
    fn from_cell(cell: &Cell) -> Option<Self>;
}

impl FromCell for i64 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Int(v) => Some(*v),
            _ => None,
        }
    }
}

/// Counters and numbers the CA writes are never negative; a negative one is corrupt.
impl FromCell for u64 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        i64::from_cell(cell).and_then(|v| u64::try_from(v).ok())
    }
}

impl FromCell for bool {
    fn from_cell(cell: &Cell) -> Option<Self> {
        i64::from_cell(cell).map(|v| v != 0)
    }
}

impl FromCell for String {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromCell for Vec<u8> {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Null => Some(None),
            other => T::from_cell(other).map(Some),
        }
    }
}

/// Runs statements: a connection or a transaction of either backend.
pub(crate) trait Exec {
    /// Runs `sql` with `args`; the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError>;

    /// Runs the query `sql` with `args`; every row.
    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError>;

    /// The first row of the query, if any.
    fn query_opt(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of a query that always returns one (an aggregate).
    fn query_one(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Row, StoreError> {
        self.query_opt(sql, args)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row from {sql}")))
    }
}

/// `sql` with SQLite's `?N` parameters rewritten as PostgreSQL's `$N`. The store's statements
/// hold no `?` inside string literals, so a plain scan is exact.
pub(crate) fn numbered_dollars(sql: &str) -> String {
    sql.replace('?', "$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_of_another_kind_is_corrupt_not_a_panic() {
        let row = Row(vec![Cell::Text("x".into()), Cell::Null, Cell::Int(-1)]);
        assert!(matches!(row.get::<i64>(0), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.get::<String>(1), Err(StoreError::Corrupt(_))));
        assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
        assert!(matches!(row.get::<u64>(2), Err(StoreError::Corrupt(_))));
        assert!(row.get::<bool>(2).unwrap());
        assert!(matches!(row.get::<i64>(9), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn parameters_are_renumbered_for_postgres() {
        assert_eq!(
            numbered_dollars("UPDATE t SET a = ?1 WHERE b = ?2 AND c > ?1"),
            "UPDATE t SET a = $1 WHERE b = $2 AND c > $1"
        );
    }
}

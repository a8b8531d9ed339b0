//! Values across the PostgreSQL wire: the store's [`Param`]s bound as the types the server
//! inferred for each placeholder, rows read back as the store's [`Row`], and PostgreSQL's
//! errors sorted into "retry later" ([`StoreError::Unavailable`]) and the rest.

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::super::db::{Cell, Param, Row};
use super::StoreError;

pub(super) fn refs<'a>(params: &'a [Param<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Int(v) if *ty == Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            Param::Int(v) if *ty == Type::BOOL => (v != 0).to_sql(ty, out),
            Param::Int(v) => v.to_sql(ty, out),
            Param::Text(s) => s.to_sql(ty, out),
            Param::Blob(b) => b.to_sql(ty, out),
            Param::Null => Ok(IsNull::Yes),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT8,
            Type::INT4,
            Type::BOOL,
            Type::TEXT,
            Type::VARCHAR,
            Type::BYTEA,
        ]
        .contains(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A PostgreSQL row as the store's [`Row`]: integers, booleans (as 0/1), text and bytes.
pub(super) fn row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let get = |i: usize, ty: &Type| -> Result<Cell, tokio_postgres::Error> {
        Ok(match *ty {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
            Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|v| Cell::Int(v.into())),
            Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|v| Cell::Int(v.into())),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Blob),
            _ => r.try_get::<_, Option<String>>(i)?.map(Cell::Text),
        }
        .unwrap_or(Cell::Null))
    };
    r.columns()
        .iter()
        .enumerate()
        .map(|(i, c)| get(i, c.type_()).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

/// A PostgreSQL error as a [`StoreError`]: what means "the database is not available now"
/// (connection lost, timeouts, shutdown, too many clients, lock or serialization conflicts) is
/// [`StoreError::Unavailable`] — retryable, answered 503 — and the rest a database error.
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        return StoreError::Unavailable(format!("database connection: {e}"));
    };
    let code = db.code().code();
    let transient = ["08", "40", "53", "57"].iter().any(|c| code.starts_with(c))
        || code == "55P03"
        || code == "25006";
    let message = format!("{} (SQLSTATE {code})", db.message());
    if transient {
        StoreError::Unavailable(message)
    } else {
        StoreError::Postgres(message)
    }
}

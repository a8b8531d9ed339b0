//! The shared backend: a PostgreSQL database that CA replicas on several hosts use at once (as
//! SPIRE servers share one SQL datastore). The client is `tokio-postgres`, driven by a small
//! runtime of this connection's own: the authority runs every store call on a blocking thread
//! (as it does for SQLite), so each call blocks on its future — with a deadline — and the store
//! keeps one synchronous API for both backends.
//!
//! - **Writers serialize** on one transaction-scoped advisory lock ([`WRITE_LOCK`]), taken first
//!   in every write transaction: the same guarantee as SQLite's `BEGIN IMMEDIATE`, cluster-wide.
//!   That is what keeps a token single-use, CRL numbers one strictly increasing sequence and a
//!   generation switch atomic across replicas.
//! - **Never a hang.** Every call has a client-side deadline ([`CALL_TIMEOUT`]: a hung server or
//!   a stuck proxy answers nothing at all), the connection a connect timeout, TCP keepalives and
//!   `TCP_USER_TIMEOUT` on both ends, and the session a statement, lock and idle-in-transaction
//!   timeout, so a database (or a replica) that vanishes mid-call costs an error within a few
//!   seconds, and a replica cut off inside a transaction cannot hold the write lock for longer.
//! - **Reconnects by itself.** A lost connection is reopened at the next call; while the
//!   database is unreachable, calls fail at once for [`RETRY_AFTER`] instead of each waiting out
//!   a connect timeout ([`StoreError::Unavailable`], answered 503 by the API).
//! - **Passwords** never come from the URL (it is stored in the state dir and shown in errors):
//!   they come from `PGPASSWORD` or the passfile, as libpq reads them ([`super::pgpass`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Weak;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_postgres::{Client, Statement};

use super::db::{numbered_dollars, params, Exec, Row, ToParam};

mod url;
mod values;

pub use url::DatabaseUrl;

use super::StoreError;
use values::{pg_error, refs, row};

/// The advisory lock every write transaction takes first ("teth" in ASCII).
const WRITE_LOCK: i64 = 0x7465_7468;

/// The longest any one call (a statement, a commit, a connect) may take before it counts as a
/// lost connection: above the server's own statement and lock timeouts, so those answer first.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// How long a connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long calls fail fast after the database could not be reached.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A runtime for one connection's futures (they run only while a call blocks on them).
pub(super) fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("starting the database client: {e}")))
}

/// What drives a connection's messages once it is open.
pub(super) enum Drive {
    /// Nothing but the calls' own answers.
    Calls,
    /// Also wake this holder at each notification (`LISTEN`), while there still is one.
    Notifications(Weak<Notify>),
}

/// Connects to `url` (TLS if it asks for it) within [`CALL_TIMEOUT`], and spawns the task that
/// drives the connection as `drive` says; the task ends, with the reason, when the connection
/// does.
pub(super) async fn open_client(
    url: &DatabaseUrl,
    drive: Drive,
) -> Result<(Client, tokio::task::JoinHandle<String>), String> {
    let (config, note) = url.client_config();
    let tls = url.tls()?;
    match tokio::time::timeout(CALL_TIMEOUT, config.connect(tls)).await {
        Ok(Ok((client, connection))) => {
            Ok((client, tokio::spawn(run_connection(connection, drive))))
        }
        Ok(Err(e)) => {
            // The causes too: "invalid configuration" alone does not say "password missing".
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            if let Some(note) = note {
                why.push_str(&format!(" ({note})"));
            }
            Err(format!("database {}: {why}", url.as_str()))
        }
        Err(_) => Err(format!(
            "database {} did not answer within {CALL_TIMEOUT:?}",
            url.as_str()
        )),
    }
}

/// Drives `connection` until it ends: the reason it ended.
async fn run_connection<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    drive: Drive,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                if let Drive::Notifications(holder) = &drive {
                    super::listen::wake(holder);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return e.to_string(),
            None => return "the connection closed".to_string(),
        }
    }
}

/// Blocks on `fut` with the [`CALL_TIMEOUT`] deadline; a missed deadline marks the connection
/// `broken` (it is dropped and reopened at the next call).
fn block<T>(
    rt: &Runtime,
    broken: &Cell<bool>,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    // The timer is made inside `block_on`: it needs the runtime's clock.
    match rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await }) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(pg_error(e)),
        Err(_) => {
            broken.set(true);
            Err(StoreError::Unavailable(format!(
                "the database did not answer within {CALL_TIMEOUT:?}"
            )))
        }
    }
}

/// [`Pg::connected`]'s parts.
type Connected<'a> = (
    &'a Runtime,
    &'a mut Client,
    &'a mut HashMap<String, Statement>,
    &'a Cell<bool>,
);

/// One replica's connection to the shared database, reopened when lost.
pub(crate) struct Pg {
    url: DatabaseUrl,
    rt: Runtime,
    client: Option<Client>,
    /// Prepared statements of `client`, by their SQLite-dialect text.
    statements: HashMap<String, Statement>,
    /// Set when a call missed its deadline: `client` is dropped at the next call.
    broken: Cell<bool>,
    /// While set and in the future, calls fail at once: the last connect failed.
    down_until: Option<(Instant, String)>,
}

impl Pg {
    /// Connects to `url` (failing if the database cannot be reached now).
    pub(crate) fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let mut pg = Pg {
            url: url.clone(),
            rt: runtime()?,
            client: None,
            statements: HashMap::new(),
            broken: Cell::new(false),
            down_until: None,
        };
        pg.client()?;
        Ok(pg)
    }

    /// Makes sure a live client is open, reconnecting if the last one was lost.
    fn client(&mut self) -> Result<(), StoreError> {
        if self.broken.replace(false) || self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.statements.clear();
        }
        if self.client.is_some() {
            return Ok(());
        }
        if let Some((until, why)) = &self.down_until {
            if Instant::now() < *until {
                return Err(StoreError::Unavailable(why.clone()));
            }
        }
        let url = &self.url;
        // The connection's task runs whenever a call blocks on this runtime.
        match self.rt.block_on(async {
            open_client(url, Drive::Calls)
                .await
                .map(|(client, _)| client)
        }) {
            Ok(c) => {
                self.client = Some(c);
                self.down_until = None;
                Ok(())
            }
            Err(why) => {
                self.down_until = Some((Instant::now() + RETRY_AFTER, why.clone()));
                Err(StoreError::Unavailable(why))
            }
        }
    }

    /// Starts a write transaction holding the cluster-wide write lock.
    pub(crate) fn write_tx(&mut self) -> Result<PgTx<'_>, StoreError> {
        let tx = self.begin(false)?;
        let lock = WRITE_LOCK;
        block(
            tx.rt,
            tx.broken,
            tx.tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]),
        )?;
        Ok(tx)
    }

    /// Starts a read-only transaction that sees one snapshot throughout.
    pub(crate) fn snapshot_tx(&mut self) -> Result<PgTx<'_>, StoreError> {
        self.begin(true)
    }

    /// The open client (reconnecting first if needed) with what calls on it need, borrowed
    /// apart: the runtime, the statement cache and the broken flag.
    fn connected(&mut self) -> Result<Connected<'_>, StoreError> {
        self.client()?;
        let Pg {
            rt,
            client,
            statements,
            broken,
            ..
        } = self;
        let client = client.as_mut().expect("connected by client()");
        Ok((rt, client, statements, broken))
    }

    fn begin(&mut self, snapshot: bool) -> Result<PgTx<'_>, StoreError> {
        let (rt, client, statements, broken) = self.connected()?;
        let mut builder = client.build_transaction();
        if snapshot {
            builder = builder
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true);
        }
        let tx = block(rt, broken, builder.start())?;
        Ok(PgTx {
            rt,
            tx,
            statements,
            broken,
        })
    }
}

/// A transaction on [`Pg`]; dropped without [`PgTx::commit`], it rolls back.
pub(crate) struct PgTx<'a> {
    rt: &'a Runtime,
    tx: tokio_postgres::Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
    broken: &'a Cell<bool>,
}

impl PgTx<'_> {
    /// Commits; an error means it may or may not have committed only if the connection was lost
    /// during the commit itself, and either way it is all or nothing.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        block(self.rt, self.broken, self.tx.commit())
    }

    /// Runs `batch` (several statements, no parameters): schema migrations.
    pub(crate) fn batch(&mut self, batch: &str) -> Result<(), StoreError> {
        block(self.rt, self.broken, self.tx.batch_execute(batch))
    }

    /// Queues a notification on `channel`, delivered to listeners when (and only if) this
    /// transaction commits.
    pub(crate) fn notify(&mut self, channel: &str) -> Result<(), StoreError> {
        block(
            self.rt,
            self.broken,
            self.tx.execute("SELECT pg_notify($1, '')", &[&channel]),
        )
        .map(drop)
    }
}

/// The prepared form of `sql` on this connection, prepared on first use.
fn prepared(
    statements: &mut HashMap<String, Statement>,
    prepare: impl FnOnce(String) -> Result<Statement, StoreError>,
    sql: &str,
) -> Result<Statement, StoreError> {
    if let Some(stmt) = statements.get(sql) {
        return Ok(stmt.clone());
    }
    let stmt = prepare(numbered_dollars(sql))?;
    statements.insert(sql.to_string(), stmt.clone());
    Ok(stmt)
}

impl Exec for Pg {
    fn execute(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let params = params(args);
        let client = self.client.as_ref().expect("connected by statement()");
        block(
            &self.rt,
            &self.broken,
            client.execute(&stmt, &refs(&params)),
        )
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let params = params(args);
        let client = self.client.as_ref().expect("connected by statement()");
        let rows = block(&self.rt, &self.broken, client.query(&stmt, &refs(&params)))?;
        rows.iter().map(row).collect()
    }
}

impl Pg {
    /// The prepared form of `sql` on the (re)opened client.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        let (rt, client, statements, broken) = self.connected()?;
        prepared(statements, |s| block(rt, broken, client.prepare(&s)), sql)
    }
}

impl PgTx<'_> {
    /// The prepared form of `sql` inside this transaction's connection.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        let (rt, broken, tx) = (self.rt, self.broken, &self.tx);
        prepared(self.statements, |s| block(rt, broken, tx.prepare(&s)), sql)
    }
}

impl Exec for PgTx<'_> {
    fn execute(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let params = params(args);
        block(self.rt, self.broken, self.tx.execute(&stmt, &refs(&params)))
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let params = params(args);
        let rows = block(self.rt, self.broken, self.tx.query(&stmt, &refs(&params)))?;
        rows.iter().map(row).collect()
    }
}

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
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls, Statement};

use super::db::{numbered_dollars, Exec, Row, ToParam};

mod values;

use super::StoreError;
use values::{bind, pg_error, refs, row};

/// The advisory lock every write transaction takes first ("teth" in ASCII).
const WRITE_LOCK: i64 = 0x7465_7468;

/// The longest any one call (a statement, a commit, a connect) may take before it counts as a
/// lost connection: above the server's own statement and lock timeouts, so those answer first.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long calls fail fast after the database could not be reached.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Server-side limits, so no statement, lock wait or half-done transaction outlives a few
/// seconds, and the server notices a vanished client as fast as the client notices it.
const SESSION_OPTIONS: &str = "-c statement_timeout=5000 -c lock_timeout=5000 \
    -c idle_in_transaction_session_timeout=5000 -c tcp_keepalives_idle=2 \
    -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 -c tcp_user_timeout=3000";

/// A database URL as given to `init --database`: checked, password-free, printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Parses `postgres://USER@HOST[:PORT]/DB`. A password in the URL is refused (the URL is
    /// written to the state dir and appears in messages); the error never repeats it.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::BadUrl(why.to_string());
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("a database URL starts with postgres://"));
        }
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| bad("not a valid postgres://USER@HOST[:PORT]/DB URL"))?;
        if config.get_password().is_some() {
            return Err(bad(
                "the URL holds a password; put it in PGPASSWORD or a passfile (~/.pgpass) \
                 instead, so it is never stored or shown",
            ));
        }
        if config.get_user().is_none() || config.get_hosts().is_empty() {
            return Err(bad(
                "the URL needs a user and a host: postgres://USER@HOST/DB",
            ));
        }
        Ok(DatabaseUrl(url.to_string()))
    }

    /// The URL as given (it holds no password).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The client configuration — the URL, the password from the environment, the timeouts —
    /// and a note on a passfile that was ignored, for the error if the connection then fails.
    pub(super) fn client_config(&self) -> (tokio_postgres::Config, Option<String>) {
        // Parsed once already by `parse`, which is the only way to make a `DatabaseUrl`.
        let mut c: tokio_postgres::Config = self.0.parse().expect("checked by DatabaseUrl::parse");
        let note = match super::pgpass::password(&c) {
            Ok(Some(pw)) => {
                c.password(pw);
                None
            }
            Ok(None) => None,
            Err(note) => Some(note),
        };
        c.application_name("tether-ca")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(2))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(2)
            .tcp_user_timeout(Duration::from_secs(3))
            .options(SESSION_OPTIONS);
        (c, note)
    }
}

/// A runtime for one connection's futures (they run only while a call blocks on them).
pub(super) fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("starting the database client: {e}")))
}

/// Connects to `url` on `rt`, within [`CONNECT_TIMEOUT`].
pub(super) async fn open_client(
    url: &DatabaseUrl,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    String,
> {
    let (config, note) = url.client_config();
    match tokio::time::timeout(CALL_TIMEOUT, config.connect(NoTls)).await {
        Ok(Ok(pair)) => Ok(pair),
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

    /// The URL this connection uses.
    pub(crate) fn url(&self) -> &DatabaseUrl {
        &self.url
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
        match self.rt.block_on(async {
            let (client, connection) = open_client(url).await?;
            // Driven whenever a call blocks on this runtime; it ends with the connection.
            tokio::spawn(connection);
            Ok::<_, String>(client)
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
        let params = bind(args);
        let client = self.client.as_ref().expect("connected by statement()");
        block(
            &self.rt,
            &self.broken,
            client.execute(&stmt, &refs(&params)),
        )
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let params = bind(args);
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
        let params = bind(args);
        block(self.rt, self.broken, self.tx.execute(&stmt, &refs(&params)))
    }

    fn query(&mut self, sql: &str, args: &[&dyn ToParam]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let params = bind(args);
        let rows = block(self.rt, self.broken, self.tx.query(&stmt, &refs(&params)))?;
        rows.iter().map(row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused_without_repeating_it() {
        let e = DatabaseUrl::parse("postgres://ca:hunter2@db.example:5432/tether").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("PGPASSWORD"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn urls_need_the_postgres_scheme_a_user_and_a_host() {
        for bad in [
            "mysql://a@b/c",
            "postgres://",
            "postgres:///db",
            "not a url",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
        let ok = DatabaseUrl::parse("postgres://ca@db.example:5433/tether").unwrap();
        assert_eq!(ok.as_str(), "postgres://ca@db.example:5433/tether");
    }
}

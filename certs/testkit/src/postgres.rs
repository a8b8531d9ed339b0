//! A fresh PostgreSQL database per test, on the throwaway cluster that `.ci/postgres.sh start`
//! makes and describes in `TETHER_TEST_PG_*` variables (`.ci/run` starts one for CI; locally,
//! `eval "$(.ci/postgres.sh start)"`). Without the cluster a test is skipped with a `SKIPPED`
//! line on stderr, never silently, and under CI ([`crate::in_ci`]) it fails instead: CI must
//! not pass without the PostgreSQL half of the store's tests.
//!
//! Every call makes a new database, so tests never share tables and may run in parallel. None is
//! ever dropped: the cluster is thrown away with its directory (`.ci/postgres.sh stop`), which
//! is cheaper than cleaning up after each test and keeps a failed test's data to look at.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The cluster's superuser URL (trust auth, no password), e.g.
/// `postgres://postgres@127.0.0.1:PORT/postgres`.
pub const URL_VAR: &str = "TETHER_TEST_PG_URL";
/// The URL of a role that must authenticate with a password (SCRAM), without the password.
pub const PASSWORD_URL_VAR: &str = "TETHER_TEST_PG_PASSWORD_URL";
/// That role's password, kept out of the URL as the CA keeps it (PGPASSWORD, passfile).
pub const PASSWORD_VAR: &str = "TETHER_TEST_PG_PASSWORD";
/// The CA that signed the cluster's TLS certificate (for 127.0.0.1 and localhost).
pub const SSL_ROOT_VAR: &str = "TETHER_TEST_PG_SSLROOTCERT";

/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1), so two long test names could
/// collide after truncation; names are cut to fit here instead, keeping the unique suffix.
const MAX_IDENT: usize = 63;

/// How long creating a database may wait for the cluster: long enough for a loaded 2-core
/// machine, short enough that a dead cluster fails the test instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A new, empty database for `test` on the test cluster, as a URL with the cluster's superuser
/// (same host, port and user as [`URL_VAR`], new database name). `None`, after a `SKIPPED`
/// line on stderr, when no cluster is configured; panics under CI in that case, and whenever
/// the cluster is configured but cannot create the database.
pub fn database(test: &str) -> Option<String> {
    let admin = admin_url(test, env, crate::in_ci())?;
    let name = create_database(&admin, test, None);
    Some(with_dbname(&admin, &name))
}

/// A new, empty database for `test` owned by the password role, as `(url, password)`: the URL
/// names the role but carries no password, so a test can hand the password over the way an
/// operator would (PGPASSWORD, a passfile) and check it never leaks. Skips and panics as
/// [`database`] does.
pub fn password_url(test: &str) -> Option<(String, String)> {
    let admin = admin_url(test, env, crate::in_ci())?;
    let (Some(url), Some(password)) = (env(PASSWORD_URL_VAR), env(PASSWORD_VAR)) else {
        panic!("{URL_VAR} is set but {PASSWORD_URL_VAR} or {PASSWORD_VAR} is not: eval all of `.ci/postgres.sh start`'s output");
    };
    let name = create_database(&admin, test, Some(user(&url)));
    Some((with_dbname(&url, &name), password))
}

/// A new, empty database for `test` as [`database`] gives it, and the CA file that verifies
/// the cluster's TLS certificate. Skips and panics as [`database`] does.
pub fn tls_database(test: &str) -> Option<(String, PathBuf)> {
    let url = database(test)?;
    let Some(root) = env(SSL_ROOT_VAR) else {
        panic!("{URL_VAR} is set but {SSL_ROOT_VAR} is not: eval all of `.ci/postgres.sh start`'s output");
    };
    Some((url, PathBuf::from(root)))
}

/// The newest PostgreSQL server's `bin` directory under Debian's `/usr/lib/postgresql/*/bin`
/// (by version number, so 15 beats 9.6), as `.ci/postgres.sh` picks it; `None` when no server
/// is installed. PATH is not consulted: Debian puts only wrapper scripts there.
pub fn server_bin_dir() -> Option<PathBuf> {
    let version = |name: &str| -> Option<Vec<u32>> {
        name.split('.').map(|part| part.parse().ok()).collect()
    };
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let bin = entry.path().join("bin");
            let number = version(entry.file_name().to_str()?)?;
            bin.join("initdb").is_file().then_some((number, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The superuser URL from `lookup`, or the skip (or, under CI, the failure) when there is none.
/// The environment comes in as `lookup` so the decision is testable without `set_var`.
fn admin_url(test: &str, lookup: impl Fn(&str) -> Option<String>, ci: bool) -> Option<String> {
    if let Some(url) = lookup(URL_VAR) {
        return Some(url);
    }
    if ci {
        panic!("{test}: CI is set but {URL_VAR} is not; CI must not pass without PostgreSQL (.ci/run starts a cluster with .ci/postgres.sh)");
    }
    eprintln!("SKIPPED {test}: no PostgreSQL (set {URL_VAR}; .ci/postgres.sh start prints it)");
    None
}

/// Creates a fresh database for `test` (owned by `owner`, else by the superuser) and returns
/// its name. The sync client runs on a thread of its own because it starts a runtime of its
/// own, which panics inside the tokio runtime of an async test.
fn create_database(admin: &str, test: &str, owner: Option<&str>) -> String {
    let name = database_name(test);
    let mut sql = format!("CREATE DATABASE {}", quote_ident(&name));
    if let Some(owner) = owner {
        sql += &format!(" OWNER {}", quote_ident(owner));
    }
    let admin = admin.to_owned();
    let run = move || {
        let mut config: postgres::Config = admin
            .parse()
            .unwrap_or_else(|e| panic!("{URL_VAR} ({admin}) is not a PostgreSQL URL: {e}"));
        config.connect_timeout(CONNECT_TIMEOUT);
        let mut client = config
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach the test cluster at {admin}: {}", chain(&e)));
        client
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql} on {admin}: {}", chain(&e)));
    };
    if let Err(panic) = std::thread::spawn(run).join() {
        std::panic::resume_unwind(panic);
    }
    name
}

/// An error with its causes: the client's own message ("error connecting to server") names
/// none of them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// `t_<test>_<pid>_<n>`: lower-case letters, digits and `_` only (so it needs no quoting in any
/// tool), unique across the processes of a parallel run and the calls of one process, and
/// short enough that PostgreSQL keeps it whole.
fn database_name(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let suffix = format!(
        "_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let room = MAX_IDENT - "t_".len() - suffix.len();
    let stem: String = test
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .take(room)
        .collect();
    format!("t_{stem}{suffix}")
}

/// An SQL identifier in double quotes, inner quotes doubled.
fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `url` with its database (the path) replaced by `name`; user, host, port and query stay.
fn with_dbname(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let host_start = base
        .find("://")
        .map(|i| i + 3)
        .unwrap_or_else(|| panic!("{url} is not a postgres:// URL"));
    let path_start = base[host_start..]
        .find('/')
        .map_or(base.len(), |i| host_start + i);
    format!("{}/{name}{query}", &base[..path_start])
}

/// The user named in a `postgres://user[:password]@host/...` URL.
fn user(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let userinfo = authority
        .rsplit_once('@')
        .map(|(userinfo, _)| userinfo)
        .unwrap_or_else(|| panic!("{PASSWORD_URL_VAR} must name its role (role@host)"));
    userinfo.split(':').next().unwrap_or(userinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with a client of `url` (and `password`), on the plain thread the sync client
    /// needs; the connection's error comes back for the tests that expect one.
    fn with_client<T: Send + 'static>(
        url: &str,
        password: Option<&str>,
        f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
    ) -> Result<T, postgres::Error> {
        let mut config: postgres::Config = url.parse().expect("a PostgreSQL URL");
        config.connect_timeout(CONNECT_TIMEOUT);
        if let Some(password) = password {
            config.password(password);
        }
        std::thread::spawn(move || config.connect(postgres::NoTls).map(|mut c| f(&mut c)))
            .join()
            .expect("the client thread")
    }

    #[test]
    fn without_a_cluster_a_test_is_skipped() {
        assert_eq!(admin_url("t", |_| None, false), None);
    }

    #[test]
    #[should_panic(expected = "CI must not pass without PostgreSQL")]
    fn without_a_cluster_ci_fails() {
        admin_url("t", |_| None, true);
    }

    #[test]
    fn with_a_cluster_its_url_is_used() {
        let url = admin_url(
            "t",
            |var| (var == URL_VAR).then(|| "postgres://a@b/c".into()),
            true,
        );
        assert_eq!(url.as_deref(), Some("postgres://a@b/c"));
    }

    #[test]
    fn database_names_are_plain_unique_and_whole() {
        let long = "ca::store::Tokens are single-use across \"replicas\"!".repeat(3);
        let (a, b) = (database_name(&long), database_name(&long));
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(name.len() <= MAX_IDENT, "{name}");
            assert!(name.starts_with("t_ca__store__tokens_are"), "{name}");
            assert!(name
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_')));
            assert!(name.contains(&format!("_{}_", std::process::id())));
        }
    }

    #[test]
    fn only_the_database_of_a_url_changes() {
        let cases = [
            ("postgres://u@h:5/postgres", "postgres://u@h:5/t_x"),
            ("postgres://u@h:5", "postgres://u@h:5/t_x"),
            ("postgres://u@h:5/", "postgres://u@h:5/t_x"),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/t_x?sslmode=disable",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(with_dbname(url, "t_x"), want, "{url}");
        }
        assert_eq!(
            user("postgres://tether_pw@127.0.0.1:5/postgres"),
            "tether_pw"
        );
        assert_eq!(user("postgres://r:secret@h/db"), "r");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn a_fresh_database_is_empty_and_answers() {
        let Some(url) = database("testkit_fresh_database") else {
            return;
        };
        let Some(other) = database("testkit_fresh_database") else {
            return;
        };
        let name = url.rsplit('/').next().unwrap().to_owned();
        let current = with_client(&url, None, |c| {
            c.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
                .unwrap();
            let row = c.query_one("SELECT current_database(), (SELECT v FROM t)", &[]);
            let row = row.unwrap();
            (row.get::<_, String>(0), row.get::<_, i32>(1))
        });
        assert_eq!(
            current.expect("the new database accepts the superuser"),
            (name, 7)
        );
        let tables = with_client(&other, None, |c| {
            let row = c.query_one("SELECT count(*) FROM pg_tables WHERE tablename = 't'", &[]);
            row.unwrap().get::<_, i64>(0)
        });
        assert_eq!(
            tables.expect("the second database answers"),
            0,
            "databases are separate"
        );
    }

    #[test]
    fn the_password_role_needs_its_password() {
        let Some((url, password)) = password_url("testkit_password_role") else {
            return;
        };
        assert!(!url.contains(&password), "the URL carries no password");
        let owner = with_client(&url, Some(&password), |c| {
            c.batch_execute("CREATE TABLE mine (v int)").unwrap();
            let row = c.query_one("SELECT current_user::text", &[]).unwrap();
            row.get::<_, String>(0)
        });
        assert_eq!(owner.expect("the password opens the database"), user(&url));
        let refused = with_client(&url, None, |_| ()).expect_err("no password, no session");
        let wrong = with_client(&url, Some("not-the-password"), |_| ());
        assert!(wrong.is_err(), "a wrong password is refused");
        assert!(!refused.to_string().contains(&password));
    }
}

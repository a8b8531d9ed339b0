//! A PostgreSQL server on a simulated host: a throwaway cluster (initdb as the `postgres` user,
//! as `.ci/postgres.sh` makes one) in a temporary directory, its postmaster started inside the
//! host's namespace and listening on the host's address only, trusting every client on the
//! net's /24. It is reachable from the other hosts of the net, not from the test process (which
//! stays in the root namespace): the CA replicas that use it run on hosts too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Host;

/// The server's port: every host has a network stack of its own, so the standard port is free.
const PORT: u16 = 5432;

/// A running server on a [`Host`]; dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct PgServer {
    host: Host,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// Starts a PostgreSQL server on `host` (which must stay plugged in until it is up). `None`,
/// after a `SKIPPED` line on stderr, when no server is installed under
/// `/usr/lib/postgresql/*/bin`; under CI that panics instead, since `.ci/run` installs one.
/// Panics when the cluster cannot be made or started, with the server's log.
pub fn postgres_in(host: &Host) -> Option<PgServer> {
    let Some(bin) = crate::postgres::server_bin_dir() else {
        assert!(!crate::in_ci(), "CI is set but no PostgreSQL server is installed under /usr/lib/postgresql (.ci/run installs it)");
        eprintln!("SKIPPED: no PostgreSQL server under /usr/lib/postgresql/*/bin (apt-get install postgresql)");
        return None;
    };
    let dir = tempfile::Builder::new()
        .prefix("tether-pg-")
        .tempdir()
        .expect("a temporary directory for the cluster");
    // initdb refuses to run as root; the cluster's files belong to the `postgres` user.
    run(
        Command::new("chown").arg("postgres:").arg(dir.path()),
        "chown",
    );
    let server = PgServer {
        host: host.clone(),
        bin,
        dir,
    };
    server.init();
    server.start();
    Some(server)
}

impl PgServer {
    /// The superuser's URL: `postgres://postgres@IP:5432/postgres` (trust, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{PORT}/postgres", self.host.ip())
    }

    /// Stops the server at once, as a crash would (immediate shutdown: clients are cut off, no
    /// checkpoint; committed work survives by the WAL). Panics if it was not running.
    pub fn stop(&self) {
        let data = self.data();
        let mut pg_ctl = as_postgres(self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"]);
        run(&mut pg_ctl, "pg_ctl stop");
    }

    /// Starts the server (again) on its host, on the same data; returns once it accepts
    /// connections. Panics with the server's log if it does not start.
    pub fn start(&self) {
        let mut pg_ctl = self.host.command("runuser");
        pg_ctl
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"));
        pg_ctl.arg("-D").arg(self.data()).arg("-l").arg(self.log());
        // A loaded 2-core machine can take a while for recovery after `stop`; 60 s is generous.
        pg_ctl.args(["-w", "-t", "60", "start"]);
        if let Err(why) = try_run(&mut pg_ctl) {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            panic!(
                "PostgreSQL did not start on host {}: {why}\n{log}",
                self.host.name()
            );
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// initdb, then the settings: the host's address only, the socket in our directory, and
    /// trust for the net's /24.
    fn init(&self) {
        let mut initdb = as_postgres(self.bin.join("initdb"));
        initdb.arg("-D").arg(self.data());
        initdb.args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        run(&mut initdb, "initdb");
        let mut conf = String::new();
        let dir = self.dir.path().display();
        writeln!(
            conf,
            "listen_addresses = '{}'\nport = {PORT}",
            self.host.ip()
        )
        .unwrap();
        writeln!(
            conf,
            "unix_socket_directories = '{dir}'\nmax_connections = 200"
        )
        .unwrap();
        // The cluster dies with its directory: durability across a machine crash is worth
        // nothing here, and fsync costs every commit time. (`stop` is a process crash, which
        // the WAL survives without fsync.)
        conf += "fsync = off\nfull_page_writes = off\n";
        append(&self.data().join("postgresql.conf"), &conf);
        let [a, b, c, _] = self.host.ip().octets();
        let hba = format!("local all all trust\nhost all all {a}.{b}.{c}.0/24 trust\n");
        std::fs::write(self.data().join("pg_hba.conf"), hba).expect("writing pg_hba.conf");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Only a server that runs has a pid file; one stopped by the test needs nothing.
        if self.data().join("postmaster.pid").exists() {
            let mut pg_ctl = as_postgres(self.bin.join("pg_ctl"));
            pg_ctl
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"]);
            if let Err(why) = try_run(&mut pg_ctl) {
                eprintln!(
                    "warning: stopping the PostgreSQL server in {}: {why}",
                    self.dir.path().display()
                );
            }
        }
    }
}

/// `program` run as the `postgres` user.
fn as_postgres(program: PathBuf) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn run(command: &mut Command, what: &str) {
    if let Err(why) = try_run(command) {
        panic!("{what} for a test PostgreSQL server: {why}");
    }
}

/// Runs `command` to completion; the error carries its exit status and output. Its stdin is
/// closed and the postmaster writes to its log (`-l`), so nothing holds the pipes open.
fn try_run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    Err(format!(
        "{command:?}: {}: {}{}",
        output.status,
        out.trim(),
        err.trim()
    ))
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("the cluster's config");
    file.write_all(text.as_bytes())
        .expect("appending to the cluster's config");
}

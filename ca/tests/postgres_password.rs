//! Where a PostgreSQL password comes from, and where it never goes. The test cluster's
//! `tether_pw` role must log in with its password (SCRAM); the real `tether-ca` binary gets it
//! from `PGPASSWORD` or a passfile, as libpq would, never from the URL — and it appears in no
//! output and no file of the state dir. Skipped without the test cluster (failed under CI).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::*;

/// `tether-ca --state-dir DIR ARGS…` with exactly the PostgreSQL environment given.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        // No ~/.pgpass of the machine's may answer for the test.
        .env("HOME", home.path())
        .arg("--state-dir")
        .arg(dir)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tether-ca")
}

/// Every byte of every file under `dir`.
fn contents(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.extend(contents(&path));
        } else {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

fn init(dir: &Path, url: &str, env: &[(&str, &str)]) -> Output {
    run(dir, &["init", "--trust-domain", TD, "--database", url], env)
}

fn assert_no_secret(o: &Output, password: &str) {
    for stream in [&o.stdout, &o.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(password),
            "the password was printed"
        );
    }
}

#[test]
fn the_password_comes_from_pgpassword_or_a_private_passfile_and_goes_nowhere() {
    let Some((url, password)) = tether_testkit::postgres::password_url("password_env") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();

    // PGPASSWORD: init and every later command work; nothing stores or prints it.
    let dir = tmp.path().join("env");
    let o = init(&dir, &url, &[("PGPASSWORD", &password)]);
    assert_ok(&o, "init with PGPASSWORD");
    assert_no_secret(&o, &password);
    let listed = run(&dir, &["list"], &[("PGPASSWORD", &password)]);
    assert_ok(&listed, "list with PGPASSWORD");
    let stored = contents(&dir);
    assert!(
        !stored
            .windows(password.len())
            .any(|w| w == password.as_bytes()),
        "the password is in the state dir"
    );
    assert_eq!(mode(&dir.join("database.url")) & 0o777, 0o600);

    // No password: a clear failure that names the database, not the password.
    let o = run(&dir, &["list"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("database"), "{}", stderr(&o));

    // A passfile readable only by its owner is used; one others can read is ignored.
    let passfile = tmp.path().join("pgpass");
    std::fs::write(&passfile, format!("*:*:*:tether_pw:{password}\n")).unwrap();
    let file = passfile.to_str().unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&dir, &["list"], &[("PGPASSFILE", file)]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a world-readable passfile was used"
    );
    assert!(
        stderr(&o).contains("ignoring the passfile"),
        "{}",
        stderr(&o)
    );
    assert_no_secret(&o, &password);
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(&dir, &["list"], &[("PGPASSFILE", file)]);
    assert_ok(&o, "list with a 0600 passfile");
}

#[test]
fn a_password_in_the_url_is_refused_without_being_repeated() {
    let Some((url, password)) = tether_testkit::postgres::password_url("password_url") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let with_password = url.replacen("tether_pw@", &format!("tether_pw:{password}@"), 1);
    let o = init(&tmp.path().join("ca"), &with_password, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("PGPASSWORD"), "{}", stderr(&o));
    assert_no_secret(&o, &password);
    assert!(
        !tmp.path().join("ca").exists(),
        "a refused init left a state dir"
    );
    // The environment variable is checked the same way, and never echoed.
    let o = run(
        &tmp.path().join("ca"),
        &["init", "--trust-domain", TD],
        &[("TETHER_CA_DATABASE", &with_password)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_no_secret(&o, &password);
}

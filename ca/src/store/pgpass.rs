//! Where a PostgreSQL password comes from, as libpq finds it (the Rust client reads neither):
//! `PGPASSWORD`, else the passfile — `PGPASSFILE`, or `~/.pgpass` — whose lines are
//! `host:port:database:user:password` with `*` for any and `\:` / `\\` escapes. Like libpq, a
//! passfile that others can read is ignored; the note saying so (it names the file, never its
//! content) is added to the error of a connection that then fails. The password is handed to
//! the client and never logged.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tokio_postgres::config::Host;

/// The password for `config`'s first host, user and database, if the environment has one; `Err`
/// is a passfile that was ignored, and why.
pub(super) fn password(config: &tokio_postgres::Config) -> Result<Option<String>, String> {
    if let Some(pw) = std::env::var_os("PGPASSWORD") {
        return Ok(Some(pw.to_string_lossy().into_owned()));
    }
    let Some(path) = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))
    else {
        return Ok(None);
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return Ok(None);
    };
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "ignoring the passfile {}: others can read it (chmod 0600 it)",
            path.display()
        ));
    }
    Ok(std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| from_passfile(config, &text)))
}

/// The password `passfile` holds for `config`.
fn from_passfile(config: &tokio_postgres::Config, text: &str) -> Option<String> {
    let host = match config.get_hosts().first()? {
        Host::Tcp(h) => h.clone(),
        Host::Unix(p) => p.display().to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user()?;
    let db = config.get_dbname().unwrap_or(user);
    lookup(text, [&host, &port, db, user])
}

/// The password of the first line of `passfile` whose four fields match `want`.
fn lookup(passfile: &str, want: [&str; 4]) -> Option<String> {
    passfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let fields = split(l);
            (fields.len() == 5).then_some(fields)
        })
        .find(|f| {
            f.iter()
                .zip(want)
                .all(|(have, want)| have == "*" || have == want)
        })
        .map(|mut f| f.remove(4))
}

/// Splits a passfile line at unescaped `:`, undoing `\:` and `\\`.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("never empty").extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n\
        other:5432:*:ca:wrong\n\
        db.example:5433:tether:ca:s3cr\\:et\n\
        *:*:*:ca:fallback\n";

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        assert_eq!(
            lookup(FILE, ["db.example", "5433", "tether", "ca"]).as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            lookup(FILE, ["db.example", "5432", "tether", "ca"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup(FILE, ["db.example", "5433", "tether", "bob"]), None);
    }

    #[test]
    fn a_line_with_too_few_fields_is_skipped() {
        assert_eq!(lookup("db:5432:ca\n", ["db", "5432", "ca", "ca"]), None);
    }
}

//! Where a state dir's database is, remembered in `database.url` (0600): a PostgreSQL URL
//! (`postgres://USER@HOST[:PORT]/DB[?sslmode=…&sslrootcert=FILE]`, never with a password; see
//! `store::DatabaseUrl`) for replicas across hosts, or
//! `sqlite:/ABSOLUTE/PATH` for a replica sharing another state dir's SQLite file on one host.
//! Without the file the database is `ca.db` in the state dir — the embedded default, and what
//! every state dir from before replicas has.

use std::path::{Path, PathBuf};

use tether_certs::files::SECRET_MODE;

use super::{read, write_file};
use crate::error::CaError;
use crate::store::{DatabaseUrl, Location};

/// The file that names the database.
pub(crate) const URL_FILE: &str = "database.url";

/// The prefix of a shared SQLite file's location in [`URL_FILE`].
const SQLITE_PREFIX: &str = "sqlite:";

/// Where `dir`'s database is.
pub(crate) fn database_location(dir: &Path) -> Result<Location, CaError> {
    let file = dir.join(URL_FILE);
    if !file.exists() {
        return Ok(Location::Sqlite(dir.join("ca.db")));
    }
    let text = read(&file)?;
    let text = text.trim();
    if let Some(path) = text.strip_prefix(SQLITE_PREFIX) {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(CaError::State(format!(
                "{}: an SQLite location must be an absolute path",
                file.display()
            )));
        }
        return Ok(Location::Sqlite(path));
    }
    DatabaseUrl::parse(text)
        .map(Location::Postgres)
        .map_err(|e| CaError::State(format!("{}: {e}", file.display())))
}

/// Records in `dir` that its database is `location` (nothing for `ca.db` in `dir` itself).
pub(crate) fn remember_location(dir: &Path, location: &Location) -> Result<(), CaError> {
    let text = match location {
        Location::Sqlite(p) if p == &dir.join("ca.db") => return Ok(()),
        Location::Sqlite(p) => {
            let abs = std::path::absolute(p).map_err(|e| CaError::io(p, e))?;
            format!("{SQLITE_PREFIX}{}", abs.display())
        }
        Location::Postgres(url) => url.as_str().to_string(),
    };
    write_file(
        &dir.join(URL_FILE),
        format!("{text}\n").as_bytes(),
        SECRET_MODE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_round_trips_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            database_location(dir.path()).unwrap(),
            Location::Sqlite(p) if p == dir.path().join("ca.db")
        ));
        let url = DatabaseUrl::parse("postgres://ca@db.example:5433/tether").unwrap();
        remember_location(dir.path(), &Location::Postgres(url.clone())).unwrap();
        let mode = std::fs::metadata(dir.path().join(URL_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            database_location(dir.path()).unwrap(),
            Location::Postgres(u) if u == url
        ));
        let shared = Location::Sqlite("/srv/ca/ca.db".into());
        remember_location(dir.path(), &shared).unwrap();
        assert!(matches!(
            database_location(dir.path()).unwrap(),
            Location::Sqlite(p) if p == Path::new("/srv/ca/ca.db")
        ));
    }

    #[test]
    fn a_broken_location_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "sqlite:relative/ca.db",
            "mysql://x@y/z",
            "postgres://a:pw@h/db",
        ] {
            std::fs::write(dir.path().join(URL_FILE), bad).unwrap();
            let e = database_location(dir.path()).unwrap_err().to_string();
            assert!(e.contains(URL_FILE), "{e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }
}

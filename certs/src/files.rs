//! Private directories and atomic file writes for the files that hold identity: the CA's state
//! directory and the sidecar's. A crash never leaves a half-written key or certificate, and a
//! key is never readable by others, not even for the moment between creating and chmod-ing it.
//!
//! Plain `std::io` results: each caller adds the context its operators need (which state dir,
//! which credential).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of a file holding a secret (a private key): owner read/write only.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of a file anyone may read (certificates, chains, bundles).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of a directory that holds secrets: only the owner may list or enter it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode [`PRIVATE_DIR_MODE`] (less the umask).
/// Existing directories are left as they are.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same directory (so the
/// rename cannot cross file systems) created with `mode` from its first byte, written, fsync'd,
/// then renamed over `path`. Readers see the old content or the new, never a mix; on error
/// `path` is untouched and the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        // A leftover of a crashed process that had the same pid; `create_new` must not trip
        // over it, and `create_new` is what keeps a foreign file with looser modes from being
        // reused.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] unless `path` already holds exactly `bytes`; returns whether it wrote.
/// Saves a rewrite (and an fsync) when published copies are already current.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes, mode)?;
    Ok(true)
}

/// `.NAME.tmp.PID.N` next to `path`: hidden, unique per process and per call, so two writers of
/// the same file (or of `cert.pem` and `cert.der`) in one process never share a temporary file.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn private_dirs_are_0700_with_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        // Existing: fine, and left alone.
        create_private_dir(&dir).unwrap();
    }

    #[test]
    fn secrets_are_0600_and_public_files_not_writable_by_others() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key.pem");
        write_atomic(&key, b"secret", SECRET_MODE).unwrap();
        assert_eq!(mode(&key), 0o600);
        let cert = tmp.path().join("cert.pem");
        write_atomic(&cert, b"public", PUBLIC_MODE).unwrap();
        assert_eq!(mode(&cert) & !PUBLIC_MODE, 0, "{:o}", mode(&cert));
        assert_eq!(mode(&cert) & 0o600, 0o600);
    }

    #[test]
    fn replacing_swaps_content_and_mode_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key.pem");
        write_atomic(&path, b"old", PUBLIC_MODE).unwrap();
        write_atomic(&path, b"new", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(tmp.path()), ["key.pem"]);
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_partial_file() {
        let tmp = tempfile::tempdir().unwrap();
        // Renaming a file over a directory fails after the temporary file was written.
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        assert!(write_atomic(&target, b"bytes", SECRET_MODE).is_err());
        assert!(target.is_dir());
        assert_eq!(names(tmp.path()), ["target"]);
        // A missing directory fails before anything is created.
        assert!(write_atomic(&tmp.path().join("missing/x"), b"x", SECRET_MODE).is_err());
        assert_eq!(names(tmp.path()), ["target"]);
    }

    #[test]
    fn write_if_changed_skips_identical_content() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bundle.pem");
        assert!(write_if_changed(&path, b"a", PUBLIC_MODE).unwrap());
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(!write_if_changed(&path, b"a", PUBLIC_MODE).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        assert!(write_if_changed(&path, b"b", PUBLIC_MODE).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"b");
    }

    #[test]
    fn temporary_names_are_hidden_and_unique() {
        let a = temp_path(Path::new("/d/cert.pem"));
        let b = temp_path(Path::new("/d/cert.pem"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/d")));
        assert!(a
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".cert.pem.tmp."));
    }
}

//! The CA-mode state directory: the key (0600), chain, CRL and trust bundle a sidecar caches, so
//! a restart while the CA is down serves at once from the last good credential.
//!
//! Reads happen once, synchronously, at start (before anything is served). Writes come later,
//! from the lifecycle tasks, and run on tokio's blocking pool: an atomic write ends in an fsync,
//! which can stall on a busy disk. Each file is replaced atomically, so a crash leaves the old
//! file or the new one, never a mix.

use std::path::{Path, PathBuf};

use tether_certs::files::{create_private_dir, write_atomic, PUBLIC_MODE, SECRET_MODE};

use crate::identity::IdentityError;

use super::off_runtime;

/// The private key, owner read/write only from its first byte.
const KEY_FILE: &str = "key.pem";
/// Leaf + intermediate as the CA issued them.
const CHAIN_FILE: &str = "chain.pem";
/// The last CRL installed, so a restart with the CA down still knows what is revoked.
const CRL_FILE: &str = "crl.pem";
/// The newest trust bundle, which replaces the configured one once the CA has sent one.
const BUNDLE_FILE: &str = "bundle.pem";
/// The CA's version number of [`BUNDLE_FILE`], reported on every CRL poll.
const BUNDLE_VERSION_FILE: &str = "bundle.version";

/// One sidecar's state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, creating it (mode 0700) if missing.
    pub(crate) fn open(path: &Path) -> Result<Self, IdentityError> {
        create_private_dir(path)
            .map_err(|e| IdentityError::Invalid(path.display().to_string(), e.to_string()))?;
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// The directory, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The cached trust bundle's file and version (0 if unknown), if the CA ever sent one.
    pub(crate) fn cached_bundle(&self) -> Option<(PathBuf, u64)> {
        let file = self.path.join(BUNDLE_FILE);
        if !file.exists() {
            return None;
        }
        let version = std::fs::read_to_string(self.path.join(BUNDLE_VERSION_FILE))
            .ok()
            .and_then(|v| v.trim().parse().ok());
        Some((file, version.unwrap_or(0)))
    }

    /// The cached chain and key PEM, if both are there.
    pub(crate) fn cached_credential(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let chain = std::fs::read(self.path.join(CHAIN_FILE)).ok()?;
        let key = std::fs::read(self.path.join(KEY_FILE)).ok()?;
        Some((chain, key))
    }

    /// The cached CRL body, if there is one.
    pub(crate) fn cached_crl(&self) -> Option<Vec<u8>> {
        std::fs::read(self.path.join(CRL_FILE)).ok()
    }

    /// Caches a new key and chain: the key first, so a crash in between leaves a key that
    /// matches no chain and the cache is simply not used at the next start (re-enroll or renew).
    pub(crate) async fn cache_credential(
        &self,
        key_pem: Vec<u8>,
        chain_pem: Vec<u8>,
    ) -> Result<(), String> {
        self.write(vec![
            (KEY_FILE, key_pem, SECRET_MODE),
            (CHAIN_FILE, chain_pem, PUBLIC_MODE),
        ])
        .await
    }

    /// Caches the CRL just installed.
    pub(crate) async fn cache_crl(&self, pem: Vec<u8>) -> Result<(), String> {
        self.write(vec![(CRL_FILE, pem, PUBLIC_MODE)]).await
    }

    /// Caches a trust bundle, and its version when the CA announced one.
    pub(crate) async fn cache_bundle(
        &self,
        pem: Vec<u8>,
        version: Option<u64>,
    ) -> Result<(), String> {
        let mut files = vec![(BUNDLE_FILE, pem, PUBLIC_MODE)];
        if let Some(v) = version {
            files.push((BUNDLE_VERSION_FILE, v.to_string().into_bytes(), PUBLIC_MODE));
        }
        self.write(files).await
    }

    /// Writes `files` (name, content, mode) in order, each atomically, on the blocking pool.
    /// Stops at the first failure and names that file; the files already written stay.
    async fn write(&self, files: Vec<(&'static str, Vec<u8>, u32)>) -> Result<(), String> {
        let dir = self.path.clone();
        off_runtime(move || {
            for (name, bytes, mode) in &files {
                write_atomic(&dir.join(name), bytes, *mode)
                    .map_err(|e| format!("caching {name} in {}: {e}", dir.display()))?;
            }
            Ok(())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn what_is_cached_is_what_a_restart_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        assert_eq!(mode(state.path()), 0o700);
        assert!(state.cached_credential().is_none());
        assert!(state.cached_bundle().is_none());
        assert!(state.cached_crl().is_none());

        state
            .cache_credential(b"KEY".to_vec(), b"CHAIN".to_vec())
            .await
            .unwrap();
        assert_eq!(
            state.cached_credential(),
            Some((b"CHAIN".to_vec(), b"KEY".to_vec()))
        );
        assert_eq!(mode(&state.path().join(KEY_FILE)), 0o600);
        state.cache_crl(b"CRL".to_vec()).await.unwrap();
        assert_eq!(state.cached_crl(), Some(b"CRL".to_vec()));

        // A bundle without a version reads as version 0; the version is kept once announced.
        state.cache_bundle(b"B1".to_vec(), None).await.unwrap();
        let (file, version) = state.cached_bundle().unwrap();
        assert_eq!(
            (std::fs::read(&file).unwrap(), version),
            (b"B1".to_vec(), 0)
        );
        state.cache_bundle(b"B2".to_vec(), Some(7)).await.unwrap();
        let (file, version) = state.cached_bundle().unwrap();
        assert_eq!(
            (std::fs::read(&file).unwrap(), version),
            (b"B2".to_vec(), 7)
        );
    }

    #[tokio::test]
    async fn a_failed_write_names_the_file_and_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        // A directory where the key goes: the key write fails and the chain is not written.
        std::fs::create_dir(tmp.path().join(KEY_FILE)).unwrap();
        let err = state
            .cache_credential(b"KEY".to_vec(), b"CHAIN".to_vec())
            .await
            .unwrap_err();
        assert!(err.contains(KEY_FILE), "{err}");
        assert!(!tmp.path().join(CHAIN_FILE).exists());
    }
}

//! The seal key (`seal.key`, 32 random bytes, 0600) that every replica's state dir holds, and
//! how CA private keys are sealed with it for the `sealed_keys` table: AES-256-GCM with a fresh
//! random 96-bit nonce stored in front of the ciphertext, and the generation and kind bound in
//! as associated data, so a sealed key cannot be passed off as another generation's or kind's.
//!
//! Why a seal: the database is shared by every replica (and by whoever administers it), the
//! state dirs are not. The database alone does not give the keys, and a replica dir alone does
//! not get a future generation's keys once its database access is cut.

use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rand::RngCore;

use tether_certs::files::SECRET_MODE;

use super::{io_err, write_file};
use crate::error::CaError;

/// The seal key's file in a state dir.
pub(crate) const SEAL_FILE: &str = "seal.key";

/// The seal key's length: AES-256.
const KEY_LEN: usize = 32;

/// What is sealed: the kind column of `sealed_keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The generation's issuing intermediate's key (PEM).
    Intermediate,
    /// The generation's root key (PEM), kept while rotation may cross-sign with it.
    Root,
}

impl Kind {
    /// The `sealed_keys.kind` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Intermediate => "intermediate",
            Kind::Root => "root",
        }
    }
}

/// A state dir's seal key.
pub(crate) struct SealKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl SealKey {
    /// `dir`'s seal key: a clear error naming the file when it is missing, unreadable or not
    /// exactly 32 bytes (the key itself never appears in a message).
    pub(crate) fn load(dir: &Path) -> Result<Self, CaError> {
        let path = dir.join(SEAL_FILE);
        let bytes = fs::read(&path).map_err(|e| {
            CaError::State(format!(
                "{}: {e} (every replica's state dir holds the seal key that opens the signing \
                 keys sealed in the database; copy it from another replica of this CA)",
                path.display()
            ))
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// `dir`'s seal key, made (32 random bytes, 0600) if the dir has none — a state dir from
    /// before replicas, or one being built.
    pub(crate) fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let path = dir.join(SEAL_FILE);
        if !path.exists() {
            let mut raw = [0u8; KEY_LEN];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            write_file(&path, &raw, SECRET_MODE)?;
        }
        Self::load(dir)
    }

    fn from_bytes(bytes: &[u8], path: PathBuf) -> Result<Self, CaError> {
        let key = (bytes.len() == KEY_LEN)
            .then(|| UnboundKey::new(&AES_256_GCM, bytes).ok())
            .flatten()
            .ok_or_else(|| {
                CaError::State(format!(
                    "{}: a seal key is exactly {KEY_LEN} bytes, this file has {}",
                    path.display(),
                    bytes.len()
                ))
            })?;
        Ok(SealKey {
            key: LessSafeKey::new(key),
            path,
        })
    }

    /// Writes this seal key to `dir` (0600): how a new replica gets it.
    pub(crate) fn copy_to(&self, dir: &Path) -> Result<(), CaError> {
        let bytes = fs::read(&self.path).map_err(|e| io_err(&self.path, e))?;
        write_file(&dir.join(SEAL_FILE), &bytes, SECRET_MODE)
    }

    /// `plaintext` sealed for `(generation, kind)`: nonce ‖ ciphertext ‖ tag.
    pub(crate) fn seal(
        &self,
        generation: u64,
        kind: Kind,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CaError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut sealed = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(generation, kind)),
                &mut sealed,
            )
            .map_err(|_| CaError::Sign("sealing a CA key failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`SealKey::seal`] sealed for `(generation, kind)`. A wrong seal key, a
    /// tampered row or a row moved to another generation or kind all fail the same way, with
    /// the file's name.
    pub(crate) fn unseal(
        &self,
        generation: u64,
        kind: Kind,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CaError> {
        let refused = || {
            CaError::State(format!(
                "{}: this seal key does not open the {} key of generation {generation} sealed in \
                 the database (a seal key from another CA, or a tampered row)",
                self.path.display(),
                kind.as_str()
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(generation, kind)), &mut buf)
            .map_err(|_| refused())?;
        Ok(plain.to_vec())
    }
}

/// The associated data: binds a sealed key to its generation and kind.
fn aad(generation: u64, kind: Kind) -> Vec<u8> {
    format!("tether-ca sealed-key v1|{generation}|{}", kind.as_str()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_key_generation_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal(3, Kind::Intermediate, b"secret pem").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            key.unseal(3, Kind::Intermediate, &sealed).unwrap(),
            b"secret pem"
        );
        assert!(key.unseal(4, Kind::Intermediate, &sealed).is_err());
        assert!(key.unseal(3, Kind::Root, &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.unseal(3, Kind::Intermediate, &tampered).is_err());
        assert!(key.unseal(3, Kind::Intermediate, &sealed[..5]).is_err());

        let other = tempfile::tempdir().unwrap();
        let e = SealKey::load_or_create(other.path())
            .unwrap()
            .unseal(3, Kind::Intermediate, &sealed)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(SEAL_FILE), "{e}");
    }

    #[test]
    fn a_missing_or_short_seal_key_is_a_clear_error_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let e = SealKey::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains(SEAL_FILE), "{e}");
        SealKey::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(SEAL_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(dir.path().join(SEAL_FILE), b"short").unwrap();
        let e = SealKey::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains(SEAL_FILE) && e.contains("32 bytes"), "{e}");
    }
}

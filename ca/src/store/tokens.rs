//! One-time enrollment tokens: stored by their SHA-256 only, looked up, and consumed in the
//! transaction that records the certificate they enrolled.

use tether_certs::SpiffeId;

use super::db::{args, Exec};
use super::{insert_cert, NewCert, Store, StoreError};

/// A token row looked up for enrollment.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The identity the token enrolls.
    pub spiffe_id: String,
    /// Unix seconds after which it is refused.
    pub expires_at: i64,
    /// When it was used, if it was.
    pub used_at: Option<i64>,
}

impl Store {
    /// Stores an enrollment token by its hash.
    pub fn insert_token(
        &mut self,
        hash: &str,
        id: &SpiffeId,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO tokens (hash, spiffe_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            args![hash, id.as_str(), now, expires_at],
        )?;
        Ok(())
    }

    /// The token row for `hash`, if any (a plain read: [`Store::record_enrollment`] decides
    /// atomically whether the token is still usable).
    pub fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.db
            .query_opt(
                "SELECT spiffe_id, expires_at, used_at FROM tokens WHERE hash = ?1",
                args![hash],
            )?
            .map(|r| {
                Ok(TokenRecord {
                    spiffe_id: r.get(0)?,
                    expires_at: r.get(1)?,
                    used_at: r.get(2)?,
                })
            })
            .transpose()
    }

    /// Marks the token `hash` used and records `cert`, in one write transaction, only if the
    /// token is still unused and unexpired at `now`; returns whether it was. The caller signs
    /// `cert` before, outside the store lock, so concurrent enrollments sign in parallel; two
    /// enrollments racing for one token — at one replica or at two — both sign, and exactly one
    /// is recorded and answered: the conditional update runs under the write lock.
    pub fn record_enrollment(
        &mut self,
        hash: &str,
        now: i64,
        cert: &NewCert,
    ) -> Result<bool, StoreError> {
        let mut tx = self.immediate()?;
        let consumed = tx.execute(
            "UPDATE tokens SET used_at = ?1
             WHERE hash = ?2 AND used_at IS NULL AND expires_at > ?1",
            args![now, hash],
        )?;
        if consumed != 1 {
            return Ok(false);
        }
        insert_cert(&mut tx, cert, None)?;
        tx.commit()?;
        Ok(true)
    }
}

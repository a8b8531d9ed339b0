//! Revocation and CRLs: revoking a serial or an identity (each with the CRL that lists it, in
//! one transaction), the current CRL with re-signing when it is old, and the listings the CLI
//! and the API read.

use std::time::Duration;

use time::OffsetDateTime;

use tether_certs::crl::{CrlEntry, Reason};
use tether_certs::{Serial, SpiffeId};

use super::Authority;
use crate::error::CaError;
use crate::state::{self, Keys};
use crate::store::{IdentityRevocation, IssuedRecord, RevokeOutcome, ServedCrl, StoredCrl};
use crate::timefmt::add_secs;

impl Authority {
    /// Revokes `serial` and publishes a CRL listing it, atomically.
    pub fn revoke(
        &self,
        serial: &Serial,
        reason: Option<Reason>,
    ) -> Result<RevokeOutcome, CaError> {
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            self.store()
                .revoke_and_publish(serial, reason, now, keys.generation, |n, e| {
                    self.sign_crl(keys, n, e, now)
                })
        })
    }

    /// Revokes every unrevoked, unexpired certificate of `id` issued before `before` (default:
    /// everything issued so far) and publishes one CRL listing them, atomically. Sidecars enforce
    /// it for certificates they have never seen, because the CRL lists every such serial.
    pub fn revoke_identity(
        &self,
        id: &SpiffeId,
        before: Option<OffsetDateTime>,
        reason: Option<Reason>,
    ) -> Result<IdentityRevocation, CaError> {
        self.check_member(id)?;
        // `issued_at` is whole seconds, so "issued before T" is `issued_at < ceil(T)`.
        let before = before.map(|t| t.unix_timestamp() + i64::from(t.nanosecond() > 0));
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            self.store().revoke_identity_and_publish(
                id.as_str(),
                before,
                reason,
                now,
                keys.generation,
                |n, e| self.sign_crl(keys, n, e, now),
            )
        })
    }

    /// The current CRL; a new one (same entries, next number) is published first when the
    /// newest is older than `refresh_after`, or when there is none.
    pub fn current_crl(&self, refresh_after: Duration) -> Result<StoredCrl, CaError> {
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            let mut store = self.store();
            if let Some(crl) = store.latest_crl()? {
                if now.unix_timestamp() - crl.this_update < refresh_after.as_secs() as i64 {
                    return Ok(crl);
                }
            }
            store.publish_crl(now, keys.generation, |n, e| self.sign_crl(keys, n, e, now))
        })
    }

    /// The newest CRL number in the database (0 if none).
    pub fn latest_crl_number(&self) -> Result<u64, CaError> {
        Ok(self.store().latest_crl_number()?)
    }

    /// The newest stored CRL without refreshing it.
    pub fn latest_crl(&self) -> Result<Option<StoredCrl>, CaError> {
        Ok(self.store().latest_crl()?)
    }

    /// CRL `number` and the certificates that vouch for its signer: the intermediate that signed
    /// it, then its cross-certificate from the previous root while that root is in the bundle.
    pub fn crl_with_issuer(&self, number: u64) -> Result<Option<ServedCrl>, CaError> {
        Ok(self.store().crl_with_issuer(number)?)
    }

    /// Issued certificates (see [`crate::store::Store::list`]).
    pub fn list(&self, expiring_within: Option<Duration>) -> Result<Vec<IssuedRecord>, CaError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Ok(self
            .store()
            .list(now, expiring_within.map(|d| add_secs(now, d)))?)
    }

    fn sign_crl(
        &self,
        keys: &Keys,
        number: u64,
        entries: &[CrlEntry],
        now: OffsetDateTime,
    ) -> Result<StoredCrl, CaError> {
        state::sign_crl(
            &keys.signer,
            keys.generation,
            number,
            entries,
            now,
            self.settings.crl_validity,
        )
    }
}

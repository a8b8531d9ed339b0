//! CRLs and revocations: revoke a serial or an identity and publish the CRL that lists it in the
//! same transaction; re-publish; read CRLs back; and the latest revocation of an identity, which
//! gates enrollment with reusable credentials (`record_unless_revoked_since`).

use time::OffsetDateTime;

use tether_certs::crl::{CrlEntry, Reason};
use tether_certs::Serial;

use super::db::{args, Exec, Row};
use super::{ensure_current, insert_cert, revocation_state, NewCert, Store, StoreError, Tx};

/// A stored, signed CRL.
#[derive(Debug, Clone)]
pub struct StoredCrl {
    /// CRL number.
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// DER.
    pub der: Vec<u8>,
    /// The CA generation whose intermediate signed it.
    pub generation: u64,
}

/// A CRL with the certificates (DER) that vouch for its signer, signer first.
#[derive(Debug, Clone)]
pub struct ServedCrl {
    /// The CRL.
    pub crl: StoredCrl,
    /// The intermediate that signed it, then its cross-certificate while that one's root is
    /// trusted.
    pub issuers: Vec<Vec<u8>>,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Newly revoked; the CRL with this number lists it.
    Revoked {
        /// The CRL published in the same transaction.
        crl_number: u64,
    },
    /// It was revoked before (at this Unix time); nothing changed.
    AlreadyRevoked(i64),
    /// This CA never issued that serial.
    Unknown,
}

/// What a revocation by identity did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentityRevocation {
    /// The serials newly revoked (none when nothing matched).
    pub serials: Vec<String>,
    /// The CRL published in the same transaction, if anything was revoked.
    pub crl_number: Option<u64>,
}

impl Store {
    /// The newest CRL, if any was published.
    pub fn latest_crl(&mut self) -> Result<Option<StoredCrl>, StoreError> {
        self.db
            .query_opt(
                "SELECT number, this_update, next_update, der, generation FROM crls
                 ORDER BY number DESC LIMIT 1",
                args![],
            )?
            .map(|r| row_to_crl(&r))
            .transpose()
    }

    /// CRL `number` with the certificates that vouch for its signer (what `GET /v1/crl` serves):
    /// the intermediate that signed it, then — while the root that certified it is still in the
    /// bundle — that intermediate's cross-certificate from the previous root.
    pub fn crl_with_issuer(&mut self, number: u64) -> Result<Option<ServedCrl>, StoreError> {
        self.db
            .query_opt(
                "SELECT c.number, c.this_update, c.next_update, c.der, c.generation,
                        g.intermediate_der,
                        CASE WHEN x.retired_at IS NULL THEN g.cross_der END
                 FROM crls c JOIN generations g ON g.generation = c.generation
                 LEFT JOIN generations x ON x.generation = g.cross_generation
                 WHERE c.number = ?1",
                args![number as i64],
            )?
            .map(|r| {
                let mut issuers = vec![r.get::<Vec<u8>>(5)?];
                issuers.extend(r.get::<Option<Vec<u8>>>(6)?);
                Ok(ServedCrl {
                    crl: row_to_crl(&r)?,
                    issuers,
                })
            })
            .transpose()
    }

    /// The newest CRL number (0 when none was published): a cheap query for change polling.
    pub fn latest_crl_number(&mut self) -> Result<u64, StoreError> {
        newest_crl_number(&mut self.db)
    }

    /// Revokes `serial` (if it is not already) and publishes a new CRL in the same transaction.
    ///
    /// `sign` receives the next CRL number and every revoked, not yet expired entry, and returns
    /// the signed CRL with its thisUpdate/nextUpdate.
    pub fn revoke_and_publish<E: From<StoreError>>(
        &mut self,
        serial: &Serial,
        reason: Option<Reason>,
        now: OffsetDateTime,
        generation: u64,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<RevokeOutcome, E> {
        let mut tx = self.immediate()?;
        match revocation_state(&mut tx, serial)? {
            None => return Ok(RevokeOutcome::Unknown),
            Some(Some(at)) => return Ok(RevokeOutcome::AlreadyRevoked(at)),
            Some(None) => {}
        }
        mark_revoked(&mut tx, &serial.to_string(), reason, now)?;
        let crl = publish_in(&mut tx, now, generation, sign)?;
        tx.commit()?;
        Ok(RevokeOutcome::Revoked {
            crl_number: crl.number,
        })
    }

    /// Revokes every unrevoked, unexpired certificate of `spiffe_id` issued before `before`
    /// (Unix seconds, exclusive; `None`: everything issued so far) and publishes one CRL listing
    /// them, in one transaction. Nothing matching → nothing written and no CRL.
    ///
    /// "Unexpired" uses the same clock-skew margin as the CRL itself, so every certificate a
    /// verifier could still accept is covered.
    pub fn revoke_identity_and_publish<E: From<StoreError>>(
        &mut self,
        spiffe_id: &str,
        before: Option<i64>,
        reason: Option<Reason>,
        now: OffsetDateTime,
        generation: u64,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<IdentityRevocation, E> {
        let mut tx = self.immediate()?;
        let live_after = (now - tether_certs::issue::CLOCK_SKEW).unix_timestamp();
        let serials = tx
            .query(
                "SELECT serial FROM certificates
                 WHERE spiffe_id = ?1 AND revoked_at IS NULL AND not_after > ?2
                   AND issued_at < ?3
                 ORDER BY issued_at, serial",
                args![spiffe_id, live_after, before.unwrap_or(i64::MAX)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect::<Result<Vec<String>, StoreError>>()?;
        if serials.is_empty() {
            return Ok(IdentityRevocation {
                serials,
                crl_number: None,
            });
        }
        for serial in &serials {
            mark_revoked(&mut tx, serial, reason, now)?;
        }
        let crl = publish_in(&mut tx, now, generation, sign)?;
        tx.commit()?;
        Ok(IdentityRevocation {
            serials,
            crl_number: Some(crl.number),
        })
    }

    /// When a certificate of `spiffe_id` was last revoked (Unix seconds), if one ever was.
    pub fn latest_revocation(&mut self, spiffe_id: &str) -> Result<Option<i64>, StoreError> {
        latest_revocation_in(&mut self.db, spiffe_id)
    }

    /// Records `cert` unless a certificate of its identity was revoked at or after `since`
    /// (Unix seconds); whether it did. One write transaction, so a revocation either lands
    /// before (refused) or after (the CRL lists it like any other certificate of the identity).
    pub fn record_unless_revoked_since(
        &mut self,
        cert: &NewCert,
        since: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.immediate()?;
        if latest_revocation_in(&mut tx, &cert.spiffe_id)?.is_some_and(|at| at >= since) {
            return Ok(false);
        }
        insert_cert(&mut tx, cert, None)?;
        tx.commit()?;
        Ok(true)
    }

    /// Publishes a new CRL (next number, same revoked entries): used at init and to re-sign
    /// before nextUpdate so readers never see a stale list while the CA is up.
    pub fn publish_crl<E: From<StoreError>>(
        &mut self,
        now: OffsetDateTime,
        generation: u64,
        sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<StoredCrl, E> {
        let mut tx = self.immediate()?;
        let crl = publish_in(&mut tx, now, generation, sign)?;
        tx.commit()?;
        Ok(crl)
    }
}

/// The newest CRL number, 0 before the first.
pub(super) fn newest_crl_number(db: &mut dyn Exec) -> Result<u64, StoreError> {
    let n: Option<u64> = db
        .query_one("SELECT max(number) FROM crls", args![])?
        .get(0)?;
    Ok(n.unwrap_or(0))
}

/// The latest `revoked_at` of any certificate of `spiffe_id`.
fn latest_revocation_in(db: &mut dyn Exec, spiffe_id: &str) -> Result<Option<i64>, StoreError> {
    db.query_one(
        "SELECT max(revoked_at) FROM certificates WHERE spiffe_id = ?1",
        args![spiffe_id],
    )?
    .get(0)
}

/// Records `serial` (lowercase hex) as revoked at `now` for `reason`.
fn mark_revoked(
    db: &mut dyn Exec,
    serial: &str,
    reason: Option<Reason>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE certificates SET revoked_at = ?1, reason = ?2 WHERE serial = ?3",
        args![now.unix_timestamp(), reason.map(|r| r.as_str()), serial],
    )?;
    Ok(())
}

/// A `crls` row.
pub(super) fn row_to_crl(r: &Row) -> Result<StoredCrl, StoreError> {
    Ok(StoredCrl {
        number: r.get(0)?,
        this_update: r.get(1)?,
        next_update: r.get(2)?,
        der: r.get(3)?,
        generation: r.get(4)?,
    })
}

/// Publishes the next CRL inside `tx`: every revoked, unexpired entry, signed by `sign` (with
/// `generation`, which must be current), announced to other replicas on commit.
pub(super) fn publish_in<E: From<StoreError>>(
    tx: &mut Tx<'_>,
    now: OffsetDateTime,
    generation: u64,
    sign: impl FnOnce(u64, &[CrlEntry]) -> Result<StoredCrl, E>,
) -> Result<StoredCrl, E> {
    ensure_current(tx, generation)?;
    let number = newest_crl_number(tx)? + 1;
    // Entries stay listed until their certificate has expired (with the issuance clock-skew
    // margin): after that every verifier rejects the certificate on its own.
    let keep_after = (now - tether_certs::issue::CLOCK_SKEW).unix_timestamp();
    let rows = tx.query(
        "SELECT serial, revoked_at, reason FROM certificates
         WHERE revoked_at IS NOT NULL AND not_after > ?1 ORDER BY revoked_at",
        args![keep_after],
    )?;
    let mut entries = Vec::new();
    for row in rows {
        let (serial, at, reason): (String, i64, Option<String>) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        let corrupt = |what: &str| StoreError::Corrupt(format!("revoked {serial}: {what}"));
        entries.push(CrlEntry {
            serial: serial.parse().map_err(|_| corrupt("bad serial"))?,
            revoked_at: OffsetDateTime::from_unix_timestamp(at).map_err(|_| corrupt("bad time"))?,
            reason: reason.and_then(|r| r.parse().ok()),
        });
    }
    let crl = sign(number, &entries)?;
    tx.execute(
        "INSERT INTO crls (number, this_update, next_update, der, generation)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        args![
            crl.number as i64,
            crl.this_update,
            crl.next_update,
            crl.der,
            generation as i64
        ],
    )?;
    tx.announce()?;
    Ok(crl)
}

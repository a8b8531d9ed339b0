//! The `generations` table: every root + issuing intermediate pair the CA has made, which of
//! them the published bundle still holds, and the transactions that rotate to a new pair and
//! retire an old root.
//!
//! `meta.generation` names the current pair (it signs every new leaf and CRL);
//! `meta.bundle_version` counts changes to the published bundle (1 after init, +1 per rotate and
//! per retire). Each row remembers the bundle version that first included its root, which is
//! what a sidecar must have reported before the previous root may be retired.

use time::OffsetDateTime;

use tether_certs::crl::CrlEntry;

use super::db::{args, Exec, Row};
use super::replicas::{insert_sealed, link_credential, supersede_credentials};
use super::{
    current_generation, insert_cert, meta_u64, publish_in, row_to_record, set_meta_in,
    IssuedRecord, NewCert, Store, StoreError, StoredCrl,
};

/// One root + intermediate pair as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// 1 for the pair made by `init`, then 2, 3, … per `root rotate`.
    pub generation: u64,
    /// SHA-256 of the root certificate, lowercase hex (how operators name a root).
    pub root_fingerprint: String,
    /// The root certificate.
    #[serde(skip)]
    pub root_der: Vec<u8>,
    /// The root's notAfter, Unix seconds.
    pub root_not_after: i64,
    /// SHA-256 of the intermediate certificate, lowercase hex.
    pub intermediate_fingerprint: String,
    /// The intermediate certificate.
    #[serde(skip)]
    pub intermediate_der: Vec<u8>,
    /// The intermediate's notAfter, Unix seconds.
    pub intermediate_not_after: i64,
    /// The same intermediate certified by the root that was current before it (see
    /// [`tether_certs::issue::Signer::issue_intermediate_cross_signed`]), if that root's key was
    /// at hand when rotating.
    #[serde(skip)]
    pub cross_der: Option<Vec<u8>>,
    /// The generation whose root certified `cross_der`.
    pub cross_generation: Option<u64>,
    /// When the pair was made, Unix seconds.
    pub created_at: i64,
    /// The bundle version that first included this root.
    pub bundle_version: u64,
    /// When the root was removed from the bundle, if it was.
    pub retired_at: Option<i64>,
}

/// A pair to record (fingerprints and dates already computed by the caller).
#[derive(Debug, Clone)]
pub struct NewGeneration {
    /// The root certificate.
    pub root_der: Vec<u8>,
    /// The root's notAfter.
    pub root_not_after: OffsetDateTime,
    /// The intermediate certificate.
    pub intermediate_der: Vec<u8>,
    /// The intermediate's notAfter.
    pub intermediate_not_after: OffsetDateTime,
    /// The intermediate certified by the previous root, and that root's generation.
    pub cross: Option<(Vec<u8>, u64)>,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// Its keys sealed for the other replicas, by `sealed_keys.kind` (`intermediate`, `root`),
    /// stored in the same transaction as the generation (a rotation, which learns its number
    /// only inside the transaction, has `place` return them instead).
    pub sealed: Vec<(&'static str, Vec<u8>)>,
}

/// Result of a rotation transaction.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new generation.
    pub generation: u64,
    /// The new bundle version.
    pub bundle_version: u64,
    /// The CRL signed by the new intermediate, published in the same transaction.
    pub crl: StoredCrl,
    /// Serials of the API server and admin credentials that the new ones superseded (revoked).
    pub superseded: Vec<String>,
}

const SELECT_GENERATION: &str = "SELECT generation, root_fingerprint, root_der, root_not_after,
    intermediate_fingerprint, intermediate_der, intermediate_not_after, created_at,
    bundle_version, retired_at, cross_der, cross_generation FROM generations";

fn row_to_generation(r: &Row) -> Result<Generation, StoreError> {
    Ok(Generation {
        generation: r.get(0)?,
        root_fingerprint: r.get(1)?,
        root_der: r.get(2)?,
        root_not_after: r.get(3)?,
        intermediate_fingerprint: r.get(4)?,
        intermediate_der: r.get(5)?,
        intermediate_not_after: r.get(6)?,
        created_at: r.get(7)?,
        bundle_version: r.get(8)?,
        retired_at: r.get(9)?,
        cross_der: r.get(10)?,
        cross_generation: r.get(11)?,
    })
}

fn insert_generation(
    tx: &mut dyn Exec,
    generation: u64,
    g: &NewGeneration,
    bundle_version: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO generations (generation, root_fingerprint, root_der, root_not_after,
             intermediate_fingerprint, intermediate_der, intermediate_not_after, created_at,
             bundle_version, cross_der, cross_generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        args![
            generation as i64,
            tether_certs::bundle::fingerprint(&g.root_der),
            g.root_der,
            g.root_not_after.unix_timestamp(),
            tether_certs::bundle::fingerprint(&g.intermediate_der),
            g.intermediate_der,
            g.intermediate_not_after.unix_timestamp(),
            g.created_at.unix_timestamp(),
            bundle_version as i64,
            g.cross.as_ref().map(|(der, _)| der),
            g.cross.as_ref().map(|(_, generation)| *generation as i64),
        ],
    )?;
    for (kind, sealed) in &g.sealed {
        insert_sealed(tx, generation, kind, sealed)?;
    }
    Ok(())
}

/// Writes a numeric setting inside `tx`.
pub(super) fn set_meta(tx: &mut dyn Exec, key: &str, value: u64) -> Result<(), StoreError> {
    set_meta_in(tx, key, &value.to_string())
}

impl Store {
    /// Unrevoked, unexpired certificates whose notAfter is past their issuing intermediate's,
    /// with that intermediate's notAfter (the CA never issues one; `check` looks anyway, since a
    /// database restored from elsewhere or edited by hand could hold one).
    pub fn leaves_outliving_issuer(
        &mut self,
        now: i64,
    ) -> Result<Vec<(IssuedRecord, i64)>, StoreError> {
        self.db
            .query(
                "SELECT c.serial, c.spiffe_id, c.not_before, c.not_after, c.issued_at, c.method,
                        c.revoked_at, c.reason, c.generation, g.intermediate_not_after
                 FROM certificates c JOIN generations g ON g.generation = c.generation
                 WHERE c.revoked_at IS NULL AND c.not_after > ?1
                   AND c.not_after > g.intermediate_not_after
                 ORDER BY c.not_after",
                args![now],
            )?
            .iter()
            .map(|r| Ok((row_to_record(r)?, r.get(9)?)))
            .collect()
    }

    /// Every generation, oldest first.
    pub fn generations(&mut self) -> Result<Vec<Generation>, StoreError> {
        all_generations(&mut self.db)
    }

    /// A consistent snapshot of (current generation, bundle version, every generation) — what a
    /// reload needs, read in one transaction so a rotation committing meanwhile is seen whole
    /// or not at all.
    pub fn trust_state(&mut self) -> Result<(u64, u64, Vec<Generation>), StoreError> {
        let mut tx = self.snapshot()?;
        let generation = current_generation(&mut tx)?;
        let version = meta_u64(&mut tx, "bundle_version")?;
        let all = all_generations(&mut tx)?;
        tx.commit()?;
        Ok((generation, version, all))
    }

    /// Records generation 1 if no generation is recorded yet (at init, and when a database from
    /// before root rotation is opened). Sets `meta.generation` and `meta.bundle_version` to 1 if
    /// they are missing.
    pub fn ensure_first_generation(&mut self, first: &NewGeneration) -> Result<(), StoreError> {
        let mut tx = self.immediate()?;
        let any = tx.query_opt("SELECT generation FROM generations LIMIT 1", args![])?;
        if any.is_none() {
            insert_generation(&mut tx, 1, first, 1)?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1'), ('bundle_version', '1')
             ON CONFLICT(key) DO NOTHING",
            args![],
        )?;
        tx.commit()
    }

    /// Makes `new` the current generation in one transaction: records it with the next
    /// generation number (`place` is told that number first, to move the staged files into
    /// place, and returns the new keys sealed for that number, stored here), bumps the bundle
    /// version, records the re-issued API server and admin credentials of `replica`, the one
    /// rotating (`credentials`, which must carry generation 0 — replaced by the new number
    /// here), revokes the ones of that replica they supersede (every other replica supersedes
    /// its own when it materializes the new generation), drops the sealed copies of older roots
    /// (only the current root ever cross-signs), and publishes a CRL signed by the new
    /// intermediate (`sign(generation, number, entries)`).
    pub fn rotate<E: From<StoreError>>(
        &mut self,
        new: &NewGeneration,
        replica: &str,
        credentials: &[NewCert],
        now: OffsetDateTime,
        place: impl FnOnce(u64) -> Result<Vec<(&'static str, Vec<u8>)>, E>,
        sign: impl FnOnce(u64, u64, &[CrlEntry]) -> Result<StoredCrl, E>,
    ) -> Result<Rotation, E> {
        let mut tx = self.immediate()?;
        let last: Option<u64> = tx
            .query_one("SELECT max(generation) FROM generations", args![])?
            .get(0)?;
        let generation = last.unwrap_or(0) + 1;
        let sealed = place(generation)?;
        let bundle_version = meta_u64(&mut tx, "bundle_version")? + 1;
        insert_generation(&mut tx, generation, new, bundle_version)?;
        for (kind, sealed) in &sealed {
            insert_sealed(&mut tx, generation, kind, sealed)?;
        }
        set_meta(&mut tx, "generation", generation)?;
        set_meta(&mut tx, "bundle_version", bundle_version)?;
        tx.execute(
            "DELETE FROM sealed_keys WHERE kind = 'root' AND generation < ?1",
            args![generation as i64],
        )?;
        let superseded = supersede_credentials(&mut tx, replica, now, "superseded")?;
        for cert in credentials {
            let cert = NewCert {
                generation,
                ..cert.clone()
            };
            insert_cert(&mut tx, &cert, None)?;
            link_credential(&mut tx, &cert.serial.to_string(), replica)?;
        }
        let crl = publish_in(&mut tx, now, generation, |n, e| sign(generation, n, e))?;
        tx.commit()?;
        Ok(Rotation {
            generation,
            bundle_version,
            crl,
            superseded,
        })
    }
}

/// Every generation, oldest first.
pub(super) fn all_generations(db: &mut dyn Exec) -> Result<Vec<Generation>, StoreError> {
    db.query(&format!("{SELECT_GENERATION} ORDER BY generation"), args![])?
        .iter()
        .map(row_to_generation)
        .collect()
}

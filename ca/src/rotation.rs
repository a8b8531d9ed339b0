//! Root rotation: `root rotate` makes a new generation (root + intermediate) that signs from then
//! on while the bundle keeps the old root, `root retire` removes an old root from the bundle once
//! nothing depends on it, and `root list` shows them all. See [`crate::authority`] for where each
//! generation lives on disk.
//!
//! With replicas, any replica rotates: its new intermediate and root keys are sealed into the
//! database in the rotation's transaction, and every other replica materializes the new
//! generation from them (with its own API certificate) at its next reload, within a poll.
//!
//! Failure semantics: a rotation stages its files in `generations/.staging-*`, moves them into
//! `generations/<N>/` and commits the database in one transaction; if anything fails before the
//! commit the staged files are removed and the previous generation stays current. After the
//! commit, the published copies (`bundle.pem`, `server/`, `admin/`) are rewritten; if that fails
//! the next `tether-ca` command (or server start) rewrites them from `ca.db`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use tether_certs::issue::Signer;

use crate::authority::Authority;
use crate::error::CaError;
use crate::fleet::FLEET_WINDOW;
use crate::state::{self, generation_dir, CredentialSpec};
use crate::store::{Generation, RetireOutcome};
use crate::timefmt::{rfc3339, unix_rfc3339};

/// What `root rotate` is asked to make.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Lifetime of the new root.
    pub root_ttl: Duration,
    /// Lifetime of the new intermediate (capped at the root's).
    pub intermediate_ttl: Duration,
}

/// What a rotation made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotated {
    /// The new generation's number.
    pub generation: u64,
    /// SHA-256 of the new root, lowercase hex.
    pub root_fingerprint: String,
    /// The new root's notAfter, RFC 3339.
    pub root_not_after: String,
    /// The new intermediate's notAfter, RFC 3339.
    pub intermediate_not_after: String,
    /// The bundle version that holds the new root.
    pub bundle_version: u64,
    /// The CRL the new intermediate signed in the same transaction.
    pub crl_number: u64,
    /// The generation whose root also certified the new intermediate (none when that root's
    /// key is not in the state dir).
    pub cross_signed_by: Option<u64>,
    /// Serials of the API server and admin credentials that were re-issued (and revoked).
    pub superseded: Vec<String>,
}

/// One root, as `root list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RootInfo {
    /// Its generation.
    pub generation: u64,
    /// SHA-256 of the root, lowercase hex.
    pub fingerprint: String,
    /// The trust domain in its URI SAN.
    pub trust_domain: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Its intermediate's notAfter, RFC 3339.
    pub intermediate_not_after: String,
    /// `current` (signs new certificates), `trusted` (still in the bundle) or `retired`.
    pub status: &'static str,
    /// The bundle version that added it.
    pub added_in_bundle_version: u64,
}

/// The shortest root fingerprint prefix `root retire` accepts: long enough that a typo does not
/// name another root.
pub const MIN_FINGERPRINT_PREFIX: usize = 8;

impl Authority {
    /// Makes a new root + intermediate, makes it the current generation, adds the root to the
    /// bundle (bundle version + 1), re-issues the API server certificate and the admin credential
    /// under the new intermediate (revoking the old ones as superseded) and publishes a CRL
    /// signed by the new intermediate, so long-polling sidecars hear of the new bundle at once.
    pub fn rotate_root(&self, opts: &RotateOptions) -> Result<Rotated, CaError> {
        self.reload()?;
        let now = OffsetDateTime::now_utc();
        let generations = self.dir().join("generations");
        state::create_private_dir(&generations)?;
        let staging = generations.join(format!(
            ".staging-{}-{}",
            std::process::id(),
            now.unix_timestamp_nanos()
        ));
        state::create_private_dir(&staging)?;
        let placed: RefCell<Option<PathBuf>> = RefCell::new(None);
        // The root being superseded certifies the new intermediate too (if its key is here), so
        // peers and sidecars that have not fetched the new bundle yet keep trusting new leaves,
        // new CRLs and the API's new TLS certificate until they do.
        let previous_generation = self.generation();
        let previous = state::load_root(self.dir(), previous_generation);
        let result = self.make_generation(&staging, opts, now, previous.as_ref(), &placed);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            if let Some(target) = placed.borrow().as_ref() {
                let _ = std::fs::remove_dir_all(target);
            }
            return result;
        }
        self.load()?;
        state::publish_files(self.dir(), &self.keys())?;
        result
    }

    /// Makes generation N+1 in `staging` and commits it: the new pair (cross-certified by
    /// `previous`, the current root, if its key is here), the re-issued credentials, the move of
    /// `staging` to `generations/<N+1>/` (recorded in `placed`, so the caller can undo it) and
    /// the database rows with the first CRL of the new intermediate.
    fn make_generation(
        &self,
        staging: &Path,
        opts: &RotateOptions,
        now: OffsetDateTime,
        previous: Option<&Signer>,
        placed: &RefCell<Option<PathBuf>>,
    ) -> Result<Rotated, CaError> {
        let previous_generation = self.generation();
        let pair = state::new_pair(
            staging,
            self.trust_domain(),
            opts.root_ttl,
            opts.intermediate_ttl.min(opts.root_ttl),
            now,
            previous.map(|p| (p, previous_generation)),
        )?;
        let mut bundle = self.bundle();
        bundle
            .push(pair.root.cert().clone())
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let sans = state::server_sans(self.me(), &mut self.store())?;
        let seal = state::SealKey::load_or_create(self.dir())?;
        let spec = CredentialSpec {
            td: self.trust_domain(),
            sans: &sans,
            ttl: opts.intermediate_ttl,
            bundle_pem: &bundle.to_pem(),
            chain_tail: &pair.chain_tail(),
        };
        let credentials = state::issue_credentials(staging, &pair.intermediate, &spec, now, 0)?;
        let validity = self.settings().crl_validity;
        let inter = &pair.intermediate;
        let rotation = self.store().rotate(
            &pair.describe(now, Vec::new()),
            &self.me().id,
            &credentials,
            now,
            |generation| {
                // A directory for a generation the database does not record is what a
                // rotation killed before its commit left behind: nothing refers to it.
                let target = generation_dir(self.dir(), generation);
                if target.exists() {
                    std::fs::remove_dir_all(&target).map_err(|e| state::io_err(&target, e))?;
                }
                std::fs::rename(staging, &target).map_err(|e| state::io_err(&target, e))?;
                *placed.borrow_mut() = Some(target.clone());
                state::seal_pair(&target, &seal, generation)
            },
            |generation, number, entries| {
                state::sign_crl(inter, generation, number, entries, now, validity)
            },
        )?;
        Ok(Rotated {
            generation: rotation.generation,
            root_fingerprint: tether_certs::bundle::fingerprint(pair.root.cert()),
            root_not_after: rfc3339(pair.root.not_after()),
            intermediate_not_after: rfc3339(inter.not_after()),
            cross_signed_by: pair.cross.as_ref().map(|(_, g)| *g),
            bundle_version: rotation.bundle_version,
            crl_number: rotation.crl.number,
            superseded: rotation.superseded,
        })
    }

    /// Removes the root named by `fingerprint` (or an unambiguous prefix of at least
    /// [`MIN_FINGERPRINT_PREFIX`] hex digits) from the bundle. Refuses the current root and the
    /// last one whatever `force` says; refuses while unexpired, unrevoked leaves chain to it or
    /// sidecars seen in the last minute report a bundle older than the one that added the
    /// current root, unless `force`.
    pub fn retire_root(
        &self,
        fingerprint: &str,
        force: bool,
    ) -> Result<(Generation, RetireOutcome), CaError> {
        self.reload()?;
        let target = self.find_root(fingerprint)?;
        let now = OffsetDateTime::now_utc();
        let fleet_since = now.unix_timestamp() - FLEET_WINDOW.as_secs() as i64;
        let validity = self.settings().crl_validity;
        let outcome = self.with_current_keys(|keys| {
            self.store().retire(
                target.generation,
                force,
                now,
                fleet_since,
                keys.generation,
                |n, e| state::sign_crl(&keys.signer, keys.generation, n, e, now, validity),
            )
        })?;
        if matches!(outcome, RetireOutcome::Retired { .. }) {
            self.load()?;
            state::publish_files(self.dir(), &self.keys())?;
        }
        Ok((target, outcome))
    }

    /// Every root the CA has made, oldest first.
    pub fn roots(&self) -> Result<Vec<RootInfo>, CaError> {
        let current = self.store().current_generation()?;
        let generations = self.store().generations()?;
        Ok(generations
            .into_iter()
            .map(|g| {
                let trust_domain = tether_certs::TrustBundle::from_pem(
                    tether_certs::pem::encode("CERTIFICATE", &g.root_der).as_bytes(),
                )
                .ok()
                .and_then(|b| b.roots().first().map(|r| r.trust_domain.to_string()))
                .unwrap_or_else(|| "?".into());
                RootInfo {
                    generation: g.generation,
                    fingerprint: g.root_fingerprint,
                    trust_domain,
                    not_after: unix_rfc3339(g.root_not_after),
                    intermediate_not_after: unix_rfc3339(g.intermediate_not_after),
                    status: if g.retired_at.is_some() {
                        "retired"
                    } else if g.generation == current {
                        "current"
                    } else {
                        "trusted"
                    },
                    added_in_bundle_version: g.bundle_version,
                }
            })
            .collect())
    }

    fn find_root(&self, fingerprint: &str) -> Result<Generation, CaError> {
        let wanted: String = fingerprint
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if wanted.len() < MIN_FINGERPRINT_PREFIX || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CaError::BadRequest(format!(
                "{fingerprint:?} is not a root fingerprint: give its SHA-256 in hex (at least \
                 {MIN_FINGERPRINT_PREFIX} digits), as `tether-ca root list` prints it"
            )));
        }
        let mut matches: Vec<Generation> = self
            .store()
            .generations()?
            .into_iter()
            .filter(|g| g.root_fingerprint.starts_with(&wanted))
            .collect();
        match matches.len() {
            0 => Err(CaError::NotFound(format!(
                "no root with fingerprint {fingerprint} (see `tether-ca root list`)"
            ))),
            1 => Ok(matches.remove(0)),
            n => Err(CaError::BadRequest(format!(
                "{fingerprint} matches {n} roots; give more of the fingerprint"
            ))),
        }
    }
}

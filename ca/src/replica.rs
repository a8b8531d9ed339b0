//! CA replicas: several `tether-ca serve` processes, each with its own state dir, sharing one
//! database (a PostgreSQL database across hosts, or one SQLite file on one host). They share one
//! intermediate per generation, distributed sealed through the database (`state/seal.rs`):
//! `replica add` writes a new replica's state dir, each replica materializes every new
//! generation by itself (`replica/materialize.rs`), and `replica remove` cuts one off.
//!
//! A replica's identity is `replica.json` in its state dir (`{"id": …, "sans": […]}`); a state
//! dir without it is the replica `init` made, [`INITIAL_REPLICA`], whose API names are those of
//! its newest server certificate. The `replicas` table records every replica; one marked removed
//! loads nothing (it refuses to serve, and every CLI command run from its dir fails).

use std::path::{Path, PathBuf};

use rand::RngCore;
use time::OffsetDateTime;

use tether_certs::files::PUBLIC_MODE;

use crate::authority::Authority;
use crate::error::CaError;
use crate::state::{
    self, database_location, default_sans, generation_dir, read, remember_location, write_file,
    SealKey, SealKind,
};
use crate::store::replicas::{ReplicaRecord, ReplicaRemoval, INITIAL_REPLICA};
use crate::store::{Location, Store};
use crate::timefmt::unix_rfc3339;

mod materialize;

pub(crate) use materialize::materialize;

/// A replica's identity file in its state dir.
pub(crate) const REPLICA_FILE: &str = "replica.json";

/// The longest replica id accepted.
const MAX_ID_LEN: usize = 32;

/// Which replica a state dir is: its `replica.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Me {
    /// Its id.
    pub id: String,
    /// Its API names; `None` for [`INITIAL_REPLICA`] without `replica.json` (see
    /// `state::server_sans`).
    #[serde(default)]
    pub sans: Option<Vec<String>>,
}

/// The identity of the replica whose state dir is `dir`.
pub(crate) fn identity(dir: &Path) -> Result<Me, CaError> {
    let path = dir.join(REPLICA_FILE);
    if !path.exists() {
        return Ok(Me {
            id: INITIAL_REPLICA.into(),
            sans: None,
        });
    }
    let me: Me = serde_json::from_str(&read(&path)?)
        .map_err(|e| CaError::State(format!("{}: {e}", path.display())))?;
    check_id(&me.id).map_err(|e| CaError::State(format!("{}: {e}", path.display())))?;
    Ok(me)
}

/// Refuses to go on for a replica the database marks removed, or does not know.
pub(crate) fn ensure_active(store: &mut Store, me: &Me) -> Result<(), CaError> {
    match store.replica(&me.id)? {
        Some(ReplicaRecord {
            removed_at: Some(at),
            ..
        }) => Err(CaError::State(removed_message(&me.id, at))),
        Some(_) => Ok(()),
        // A database from before replicas has no row for the replica `init` made.
        None if me.id == INITIAL_REPLICA => Ok(()),
        None => Err(CaError::State(format!(
            "{REPLICA_FILE} names replica {}, which the database does not record (is \
             database.url pointing at this CA's database?)",
            me.id
        ))),
    }
}

fn removed_message(id: &str, at: i64) -> String {
    format!(
        "this replica ({id}) was removed at {} with `tether-ca replica remove`; it may no \
         longer serve, issue or sign",
        unix_rfc3339(at)
    )
}

/// Refuses ids that could not be typed safely on a command line or in a path.
fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a replica id is 1 to {MAX_ID_LEN} characters of a-z, 0-9, '-' and '_'; {id:?} is not"
        ))
    }
}

/// A new random id: 8 hex digits.
fn random_id() -> String {
    let mut raw = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `replica add` is asked to make.
#[derive(Debug, Clone)]
pub struct AddReplica {
    /// The new replica's state dir (must not exist, or be empty).
    pub out: PathBuf,
    /// Extra DNS names / IPs for its API certificate (the local names are always included).
    pub extra_sans: Vec<String>,
    /// Its id (default: random).
    pub id: Option<String>,
}

/// What `replica add` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AddedReplica {
    /// Its id.
    pub id: String,
    /// Its state dir.
    pub dir: PathBuf,
    /// Its API names.
    pub sans: Vec<String>,
    /// The database it shares (a path or a password-free URL).
    pub database: String,
}

/// What `replica remove` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemovedReplica {
    /// The replica's id.
    pub id: String,
    /// Serials of its API server and admin certificates revoked.
    pub revoked: Vec<String>,
    /// The CRL that lists them (none when it had none unrevoked).
    pub crl_number: Option<u64>,
}

impl Authority {
    /// The id of the replica this state dir is.
    pub fn replica_id(&self) -> &str {
        &self.me().id
    }

    /// Why this replica may not issue, if it was removed (the API's watcher asks every poll and
    /// answers 503 with this message while it is `Some`).
    pub fn replica_removed(&self) -> Result<Option<String>, CaError> {
        let me = self.me();
        Ok(match self.store().replica(&me.id)? {
            Some(ReplicaRecord {
                removed_at: Some(at),
                ..
            }) => Some(removed_message(&me.id, at)),
            _ => None,
        })
    }

    /// Every replica, oldest first.
    pub fn replicas(&self) -> Result<Vec<ReplicaRecord>, CaError> {
        let mut list = self.store().replicas()?;
        let me = self.me();
        // A database from before replicas has no row for the initial one until the first add.
        if me.id == INITIAL_REPLICA && !list.iter().any(|r| r.id == INITIAL_REPLICA) {
            let sans = state::server_sans(me, &mut self.store())?;
            list.insert(
                0,
                ReplicaRecord {
                    id: INITIAL_REPLICA.into(),
                    sans,
                    created_at: 0,
                    removed_at: None,
                },
            );
        }
        Ok(list)
    }

    /// Writes a new replica's state dir (see [`AddReplica`]): the shared database's location,
    /// the seal key, `replica.json`, the bundle and the current generation materialized with its
    /// own API certificate and admin credential. Built in a sibling temporary dir and renamed
    /// into place, so a failure leaves no half-made replica dir behind.
    pub fn add_replica(&self, opts: &AddReplica) -> Result<AddedReplica, CaError> {
        state::refuse_non_empty(&opts.out)?;
        let id = match &opts.id {
            Some(id) => {
                check_id(id).map_err(CaError::BadRequest)?;
                id.clone()
            }
            None => random_id(),
        };
        let mut sans = default_sans();
        for san in &opts.extra_sans {
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        self.reload()?;
        let seal = SealKey::load_or_create(self.dir())?;
        self.seal_current(&seal)?;
        self.record_initial()?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if id == INITIAL_REPLICA || !self.store().add_replica(&id, &sans, now)? {
            return Err(CaError::BadRequest(format!(
                "a replica with id {id} exists already (see `tether-ca replica list`)"
            )));
        }
        let location = match database_location(self.dir())? {
            Location::Sqlite(path) => {
                Location::Sqlite(std::path::absolute(&path).map_err(|e| CaError::io(&path, e))?)
            }
            other => other,
        };
        let me = Me {
            id: id.clone(),
            sans: Some(sans.clone()),
        };
        let result = self.build_replica(&opts.out, &location, &seal, &me);
        if result.is_err() {
            // Nothing must stay valid for a replica that was never finished.
            if let Err(e) = self.remove_replica(&id) {
                tracing::warn!("could not mark the unfinished replica {id} removed: {e}");
            }
        }
        result?;
        Ok(AddedReplica {
            id,
            dir: opts.out.clone(),
            sans,
            database: location.to_string(),
        })
    }

    /// Builds the new replica's dir next to `out` and renames it into place.
    fn build_replica(
        &self,
        out: &Path,
        location: &Location,
        seal: &SealKey,
        me: &Me,
    ) -> Result<(), CaError> {
        state::build_beside(out, "replica", |tmp| {
            remember_location(tmp, location)?;
            seal.copy_to(tmp)?;
            let json = serde_json::to_string_pretty(me).unwrap_or_default();
            write_file(&tmp.join(REPLICA_FILE), json.as_bytes(), PUBLIC_MODE)?;
            write_file(
                &tmp.join("bundle.pem"),
                self.bundle_pem().as_bytes(),
                PUBLIC_MODE,
            )?;
            // Opening it materializes the current generation and publishes server/ and admin/.
            drop(Authority::open(tmp)?);
            Ok(())
        })
    }

    /// Seals the current generation's keys into the database if they are not yet (a state dir
    /// from before replicas), and checks that this dir's seal key opens what is sealed.
    fn seal_current(&self, seal: &SealKey) -> Result<(), CaError> {
        let generation = self.generation();
        let dir = generation_dir(self.dir(), generation);
        for (kind, sealed) in state::seal_pair(&dir, seal, generation)? {
            self.store().store_sealed(generation, kind, &sealed)?;
        }
        let sealed = self
            .store()
            .sealed_key(generation, SealKind::Intermediate.as_str())?
            .ok_or_else(|| CaError::State("the intermediate key could not be sealed".into()))?;
        seal.unseal(generation, SealKind::Intermediate, &sealed)
            .map(drop)
    }

    /// Records the replica `init` made, when this is it and the database predates replicas.
    fn record_initial(&self) -> Result<(), CaError> {
        let me = self.me();
        if me.id != INITIAL_REPLICA || self.store().replica(INITIAL_REPLICA)?.is_some() {
            return Ok(());
        }
        let sans = state::server_sans(me, &mut self.store())?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.store().add_replica(INITIAL_REPLICA, &sans, now)?;
        Ok(())
    }

    /// Marks replica `id` removed and revokes its API server and admin certificates, with the
    /// CRL that lists them, in one transaction. Refuses the replica this state dir is.
    pub fn remove_replica(&self, id: &str) -> Result<RemovedReplica, CaError> {
        if self.me().id == id {
            return Err(CaError::BadRequest(format!(
                "{id} is the replica this state dir is; remove it from another replica's state dir"
            )));
        }
        let now = OffsetDateTime::now_utc();
        let validity = self.settings().crl_validity;
        let outcome = self.with_current_keys(|keys| {
            self.store()
                .remove_replica(id, now, keys.generation, |n, e| {
                    state::sign_crl(&keys.signer, keys.generation, n, e, now, validity)
                })
        })?;
        match outcome {
            ReplicaRemoval::Removed {
                revoked,
                crl_number,
            } => Ok(RemovedReplica {
                id: id.to_string(),
                revoked,
                crl_number,
            }),
            ReplicaRemoval::AlreadyRemoved(at) => Err(CaError::BadRequest(format!(
                "replica {id} was removed already, at {}",
                unix_rfc3339(at)
            ))),
            ReplicaRemoval::Unknown => Err(CaError::NotFound(format!(
                "no replica {id} (see `tether-ca replica list`)"
            ))),
        }
    }
}

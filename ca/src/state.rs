//! The state directory on disk: where each generation's CA material lives, how `init` lays it
//! out, how the current signer and bundle are loaded, and the files published for operators
//! (`bundle.pem`, `server/`, `admin/`). The layout is documented in [`crate::authority`]; the CA's own credentials
//! (`server/`, `admin/`) are issued in `state/credentials.rs`.
//!
//! `ca.db` is the source of truth for which generation is current and which roots the bundle
//! holds; the published files are copies that [`publish_files`] rewrites whenever they differ
//! (after a rotation or retirement, and on every open, so a process killed between committing a
//! rotation and copying the files leaves nothing stale behind for long).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use tether_certs::files::{self, PUBLIC_MODE, SECRET_MODE};
use tether_certs::issue::Signer;
use tether_certs::verify::{Revocation, SvidVerifier};
use tether_certs::TrustBundle;

use crate::error::CaError;
use crate::replica::{self, Me};
use crate::settings::InitOptions;
use crate::store::replicas::INITIAL_REPLICA;
use crate::store::{Generation, Location, NewGeneration, Store, StoredCrl};

mod credentials;
mod database;
mod pair;
mod seal;

pub(crate) use credentials::{default_sans, issue_credentials, server_sans, CredentialSpec};
pub(crate) use database::{database_location, remember_location};
pub(crate) use pair::{load_root, new_pair, seal_pair};
pub(crate) use seal::{Kind as SealKind, SealKey, SEAL_FILE};

/// The CA material currently in use: loaded at open, replaced whole on reload.
pub(crate) struct Keys {
    /// The current generation (signs leaves and CRLs).
    pub generation: u64,
    /// The published bundle's version.
    pub bundle_version: u64,
    /// The current generation's intermediate and key.
    pub signer: Signer,
    /// The bundle and the chain tail handed out with every leaf.
    pub trust: Trust,
    /// Checks callers' chains against `trust`'s bundle. One per `Keys`, so a caller's chain is
    /// verified once while it is valid and the bundle unchanged (`tether_certs::verify`); its
    /// revocation set is empty because the store says what is revoked.
    pub verifier: SvidVerifier,
}

/// Where generation `generation`'s `root/`, `intermediate/`, `server/` and `admin/` live:
/// the state dir itself for generation 1 (the layout from before rotation existed), and
/// `generations/<N>/` after that.
pub(crate) fn generation_dir(dir: &Path, generation: u64) -> PathBuf {
    if generation <= 1 {
        dir.to_path_buf()
    } else {
        dir.join("generations").join(generation.to_string())
    }
}

/// A file-system error on `path` (see [`CaError::io`]).
pub(crate) fn io_err(path: &Path, e: std::io::Error) -> CaError {
    CaError::io(path, e)
}

/// Reads a text file of the state directory.
pub(crate) fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    files::create_private_dir(dir).map_err(|e| io_err(dir, e))
}

/// Writes `bytes` to `path` atomically (temp file + rename) with `mode`, so a crash never leaves
/// a half-written key or certificate and a key is never readable by others, even briefly.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    files::write_atomic(path, bytes, mode).map_err(|e| io_err(path, e))
}

/// [`write_file`] unless `path` already holds exactly `bytes`.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    files::write_if_changed(path, bytes, mode)
        .map(drop)
        .map_err(|e| io_err(path, e))
}

/// The first certificate of `chain_pem` (the leaf) followed by `tail`.
pub(crate) fn with_tail(chain_pem: &str, tail: &str) -> Result<String, CaError> {
    let leaf = tether_certs::pem::certificates(chain_pem.as_bytes())
        .map_err(|e| CaError::State(format!("certificate chain: {e}")))?
        .remove(0);
    Ok(format!(
        "{}{tail}",
        tether_certs::pem::encode("CERTIFICATE", &leaf)
    ))
}

/// Refuses to make a state dir at `out` when it exists and is not an empty directory.
pub(crate) fn refuse_non_empty(out: &Path) -> Result<(), CaError> {
    let empty = fs::read_dir(out).is_ok_and(|mut d| d.next().is_none());
    if out.exists() && !empty {
        return Err(CaError::State(format!(
            "{} already exists and is not empty; refusing to touch it",
            out.display()
        )));
    }
    Ok(())
}

/// Makes a state dir at `out` (see [`refuse_non_empty`]) with `build`, which fills a sibling
/// temporary directory (0700, named after `what`) that is then renamed into place: a failure at
/// any step leaves no half-made state dir behind.
pub(crate) fn build_beside(
    out: &Path,
    what: &str,
    build: impl FnOnce(&Path) -> Result<(), CaError>,
) -> Result<(), CaError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = parent.join(format!(".{name}.{what}-{}", std::process::id()));
    let result = create_private_dir(&tmp)
        .and_then(|()| build(&tmp))
        .and_then(|()| fs::rename(&tmp, out).map_err(|e| io_err(out, e)));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Lays out a new state directory in `tmp`, an empty directory (see [`build_beside`]).
pub(crate) fn build_state(tmp: &Path, opts: &InitOptions) -> Result<(), CaError> {
    let now = OffsetDateTime::now_utc();
    let td = &opts.trust_domain;
    let pair = new_pair(tmp, td, opts.root_ttl, opts.intermediate_ttl, now, None)?;
    let sealed = seal_pair(tmp, &SealKey::load_or_create(tmp)?, 1)?;
    let bundle_pem = pair.root.cert_pem();
    write_file(&tmp.join("bundle.pem"), bundle_pem.as_bytes(), PUBLIC_MODE)?;

    let location = match &opts.database {
        Some(url) => Location::Postgres(url.clone()),
        None => Location::Sqlite(tmp.join("ca.db")),
    };
    let mut store = Store::open_at(&location)?;
    refuse_used_database(&mut store, &location)?;
    if let Location::Postgres(_) = &location {
        remember_location(tmp, &location)?;
    }
    let settings = &opts.settings;
    store.set_meta("default_ttl", &settings.default_ttl.as_secs().to_string())?;
    store.set_meta("max_ttl", &settings.max_ttl.as_secs().to_string())?;
    store.set_meta("crl_validity", &settings.crl_validity.as_secs().to_string())?;
    store.ensure_first_generation(&pair.describe(now, sealed))?;

    let mut sans = default_sans();
    sans.extend(opts.extra_sans.iter().cloned());
    store.add_replica(INITIAL_REPLICA, &sans, now.unix_timestamp())?;
    let spec = CredentialSpec {
        td,
        sans: &sans,
        ttl: opts.intermediate_ttl,
        bundle_pem: &bundle_pem,
        chain_tail: &pair.chain_tail(),
    };
    for cert in issue_credentials(tmp, &pair.intermediate, &spec, now, 1)? {
        store.record(&cert)?;
    }

    // CRL number 1, empty, so readers have a signed list from the first second.
    let validity = opts.settings.crl_validity;
    store.publish_crl(now, 1, |number, entries| -> Result<StoredCrl, CaError> {
        sign_crl(&pair.intermediate, 1, number, entries, now, validity)
    })?;
    // Last: a shared database counts as holding a CA only once everything above is in it.
    store.set_meta("trust_domain", td.as_str())?;
    Ok(())
}

/// Refuses to `init` into a database that already holds a CA, whole or half-made (a shared
/// PostgreSQL database is not removed with a failed init's temporary directory).
fn refuse_used_database(store: &mut Store, location: &Location) -> Result<(), CaError> {
    if let Some(existing) = store.meta("trust_domain")? {
        return Err(CaError::State(format!(
            "the database {location} already holds the CA for trust domain {existing}; to run \
             another replica of it, use `tether-ca replica add` from an existing state dir"
        )));
    }
    if !store.generations()?.is_empty() {
        return Err(CaError::State(format!(
            "the database {location} holds what an interrupted init left; drop and recreate it"
        )));
    }
    Ok(())
}

/// Signs CRL `number` with `signer` (of `generation`), valid for `validity` from `now`.
pub(crate) fn sign_crl(
    signer: &Signer,
    generation: u64,
    number: u64,
    entries: &[tether_certs::crl::CrlEntry],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<StoredCrl, CaError> {
    let next = now + validity;
    let der =
        tether_certs::crl::build(signer, number, now, next, entries).map_err(CaError::sign)?;
    Ok(StoredCrl {
        number,
        this_update: now.unix_timestamp(),
        next_update: next.unix_timestamp(),
        der,
        generation,
    })
}

/// Records generation 1 from `root/cert.pem` and `intermediate/` for a database made before
/// root rotation existed (a no-op when a generation is recorded).
pub(crate) fn adopt_first_generation(dir: &Path, store: &mut Store) -> Result<(), CaError> {
    if !store.generations()?.is_empty() {
        return Ok(());
    }
    // The root's key may have been moved offline, so the root is read as a certificate only.
    let root_pem = read(&dir.join("root/cert.pem"))?;
    let root = TrustBundle::from_pem(root_pem.as_bytes())
        .map_err(|e| CaError::State(format!("root/cert.pem: {e}")))?;
    let root = root
        .roots()
        .first()
        .ok_or_else(|| CaError::State("root/cert.pem holds no certificate".into()))?;
    let inter = load_signer(dir, 1)?;
    store.ensure_first_generation(&NewGeneration {
        root_der: root.der.to_vec(),
        root_not_after: root.not_after,
        intermediate_der: inter.cert().to_vec(),
        intermediate_not_after: inter.not_after(),
        cross: None,
        created_at: OffsetDateTime::now_utc(),
        sealed: Vec::new(),
    })?;
    Ok(())
}

pub(crate) fn load_signer(dir: &Path, generation: u64) -> Result<Signer, CaError> {
    let d = generation_dir(dir, generation).join("intermediate");
    Signer::from_pem(&read(&d.join("cert.pem"))?, &read(&d.join("key.pem"))?)
        .map_err(|e| CaError::State(format!("{}: {e}", d.display())))
}

/// What the database says a replica must trust and send: every unretired root, and what
/// follows a leaf of the current generation in a chain.
pub(crate) struct Trust {
    /// Every root not retired.
    pub bundle: TrustBundle,
    /// `bundle` as PEM.
    pub bundle_pem: String,
    /// What follows a leaf in every chain handed out (PEM): the current intermediate, then its
    /// cross-certificate from the previous root while that root is in the bundle.
    pub chain_tail: String,
}

impl Trust {
    /// The trust of `generations` with `current` signing.
    pub fn of(generations: &[Generation], current: &Generation) -> Result<Self, CaError> {
        let mut bundle = TrustBundle::default();
        for g in generations.iter().filter(|g| g.retired_at.is_none()) {
            bundle
                .push(g.root_der.clone().into())
                .map_err(|e| CaError::State(format!("root of generation {}: {e}", g.generation)))?;
        }
        let mut chain_tail = tether_certs::pem::encode("CERTIFICATE", &current.intermediate_der);
        let cross_trusted = current.cross_generation.is_some_and(|x| {
            generations
                .iter()
                .any(|g| g.generation == x && g.retired_at.is_none())
        });
        if let (Some(der), true) = (&current.cross_der, cross_trusted) {
            chain_tail.push_str(&tether_certs::pem::encode("CERTIFICATE", der));
        }
        Ok(Trust {
            bundle_pem: bundle.to_pem(),
            bundle,
            chain_tail,
        })
    }
}

/// Loads the current generation's signer and the bundle of every unretired root, as `ca.db`
/// says they are, and brings the published files in line. A replica that lacks the current
/// generation's files (another replica rotated, or it was just added) materializes them from the
/// sealed keys first; a replica that was removed loads nothing.
pub(crate) fn load_keys(dir: &Path, me: &Me, store: &mut Store) -> Result<Keys, CaError> {
    replica::ensure_active(store, me)?;
    let (generation, bundle_version, generations) = store.trust_state()?;
    let current = generations
        .iter()
        .find(|g| g.generation == generation)
        .ok_or_else(|| {
            CaError::State(format!(
                "ca.db names generation {generation}, which it does not record"
            ))
        })?;
    let trust = Trust::of(&generations, current)?;
    let materialize = !generation_dir(dir, generation)
        .join("intermediate/key.pem")
        .exists();
    if materialize {
        replica::materialize(dir, store, me, current, &trust)?;
    }
    let signer = load_signer(dir, generation)?;
    if signer.cert().as_ref() != current.intermediate_der.as_slice() {
        return Err(CaError::State(format!(
            "the intermediate on disk for generation {generation} is not the one ca.db records"
        )));
    }
    let verifier = SvidVerifier::new(&trust.bundle, Revocation::new(Default::default()));
    let keys = Keys {
        generation,
        bundle_version,
        signer,
        trust,
        verifier,
    };
    // Another replica may have rotated or retired: this dir's published copies follow at each
    // load, not only when a command of this dir changed them.
    if let Err(e) = publish_files(dir, &keys) {
        // The database is right and every reader of these copies tolerates a stale one for a
        // while; the next load tries again.
        tracing::warn!(
            "could not refresh the published files in {}: {e}",
            dir.display()
        );
    }
    Ok(keys)
}

/// Brings the published files in line with `keys`: `bundle.pem` and `admin/bundle.pem` hold the
/// current bundle, `server/` and `admin/` the current generation's credentials, their chains
/// ending in the current chain tail (the cross-certificate is dropped once its root is retired).
pub(crate) fn publish_files(dir: &Path, keys: &Keys) -> Result<(), CaError> {
    write_if_changed(
        &dir.join("bundle.pem"),
        keys.trust.bundle_pem.as_bytes(),
        PUBLIC_MODE,
    )?;
    let source = generation_dir(dir, keys.generation);
    for sub in ["server", "admin"] {
        create_private_dir(&dir.join(sub))?;
        let chain = with_tail(
            &read(&source.join(sub).join("chain.pem"))?,
            &keys.trust.chain_tail,
        )?;
        write_if_changed(
            &dir.join(sub).join("chain.pem"),
            chain.as_bytes(),
            PUBLIC_MODE,
        )?;
    }
    if keys.generation > 1 {
        for (sub, name, mode) in [
            ("server", "key.pem", SECRET_MODE),
            ("admin", "cert.pem", PUBLIC_MODE),
            ("admin", "key.pem", SECRET_MODE),
        ] {
            let from = source.join(sub).join(name);
            let bytes = fs::read(&from).map_err(|e| io_err(&from, e))?;
            write_if_changed(&dir.join(sub).join(name), &bytes, mode)?;
        }
    }
    write_if_changed(
        &dir.join("admin/bundle.pem"),
        keys.trust.bundle_pem.as_bytes(),
        PUBLIC_MODE,
    )
}

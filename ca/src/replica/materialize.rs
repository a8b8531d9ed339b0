//! Materializing a generation: how a replica that lacks the current generation's files (it was
//! just added, or another replica rotated the root) makes them from the database. It unseals the
//! generation's intermediate key (and root key, when sealed) with its `seal.key`, checks the key
//! is the one of the intermediate the `generations` table records, issues its own API server
//! certificate and admin credential, and moves everything into place in the transaction that
//! records those credentials and supersedes its older ones.
//!
//! Failure semantics: everything is staged in `generations/.materialize-*` first and moved into
//! the generation's directory under the database's write lock, intermediate last — its
//! `key.pem` marks the generation as materialized — so two processes of one replica never both
//! do it, and a failure at any step leaves no marker: the next load tries again.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use tether_certs::files::{PUBLIC_MODE, SECRET_MODE};
use tether_certs::issue::Signer;

use super::Me;
use crate::authority;
use crate::error::CaError;
use crate::state::{
    self, create_private_dir, generation_dir, io_err, write_file, CredentialSpec, SealKey,
    SealKind, Trust,
};
use crate::store::{Generation, Store};

/// The generation's subdirectories, in the order they are moved into place: the intermediate
/// last, since its key marks the generation as materialized.
const PARTS: [&str; 4] = ["root", "server", "admin", "intermediate"];

/// Makes `current`'s files in `dir` for replica `me` from the sealed keys (see the module docs).
pub(crate) fn materialize(
    dir: &Path,
    store: &mut Store,
    me: &Me,
    current: &Generation,
    trust: &Trust,
) -> Result<(), CaError> {
    let generation = current.generation;
    let seal = SealKey::load(dir)?;
    let unsealed = unseal_intermediate(&seal, store, current)?;
    let signer = &unsealed.0;
    let staging = dir.join("generations").join(format!(
        ".materialize-{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    create_private_dir(&staging)?;
    let target = generation_dir(dir, generation);
    let mut placed = false;
    let material = Material {
        current,
        trust,
        seal: &seal,
        signer,
        key_pem: &unsealed.1,
    };
    let result = stage(store, me, &material, &staging).and_then(|credentials| {
        let now = OffsetDateTime::now_utc();
        let validity = authority::seconds(store, "crl_validity")?;
        store.record_materialized(
            &me.id,
            generation,
            &credentials,
            now,
            || {
                if target.join("intermediate/key.pem").exists() {
                    return Ok(false);
                }
                placed = true;
                place(&staging, &target).map(|()| true)
            },
            |n, e| state::sign_crl(signer, generation, n, e, now, validity),
        )
    });
    let _ = fs::remove_dir_all(&staging);
    match result {
        Ok(Some(superseded)) => {
            tracing::info!(
                "replica {} materialized generation {generation} from the sealed keys ({} old \
                 credential(s) superseded)",
                me.id,
                superseded.len()
            );
            Ok(())
        }
        // Another process of this replica did it meanwhile: its files are in place.
        Ok(None) => Ok(()),
        Err(e) => {
            if placed {
                // Without the marker the next load materializes again.
                let _ = fs::remove_dir_all(target.join("intermediate"));
            }
            Err(e)
        }
    }
}

/// What a generation is materialized from.
struct Material<'a> {
    /// The generation, as the database records it.
    current: &'a Generation,
    /// The bundle and chain tail it is published with.
    trust: &'a Trust,
    /// The seal key (for the root key, if sealed).
    seal: &'a SealKey,
    /// The intermediate, with its unsealed key.
    signer: &'a Signer,
    /// That key, PEM.
    key_pem: &'a str,
}

/// Writes the generation's files to `staging` and returns the credentials to record.
fn stage(
    store: &mut Store,
    me: &Me,
    m: &Material<'_>,
    staging: &Path,
) -> Result<[crate::store::NewCert; 2], CaError> {
    let Material {
        current,
        trust,
        seal,
        signer,
        key_pem,
    } = *m;
    let generation = current.generation;
    let key_dir = staging.join("intermediate");
    create_private_dir(&key_dir)?;
    write_file(
        &key_dir.join("cert.pem"),
        signer.cert_pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    write_file(&key_dir.join("key.pem"), key_pem.as_bytes(), SECRET_MODE)?;
    if let Some(der) = &current.cross_der {
        let pem = tether_certs::pem::encode("CERTIFICATE", der);
        write_file(&key_dir.join("cross.pem"), pem.as_bytes(), PUBLIC_MODE)?;
    }
    let root_dir = staging.join("root");
    create_private_dir(&root_dir)?;
    let root_pem = tether_certs::pem::encode("CERTIFICATE", &current.root_der);
    write_file(&root_dir.join("cert.pem"), root_pem.as_bytes(), PUBLIC_MODE)?;
    // The root's key is sealed while rotation may still cross-sign with it.
    if let Some(sealed) = store.sealed_key(generation, SealKind::Root.as_str())? {
        let key = seal.unseal(generation, SealKind::Root, &sealed)?;
        write_file(&root_dir.join("key.pem"), &key, SECRET_MODE)?;
    }
    let td = authority::trust_domain(store)?;
    let sans = state::server_sans(me, store)?;
    let now = OffsetDateTime::now_utc();
    let ttl = (signer.not_after() - now)
        .try_into()
        .unwrap_or(Duration::ZERO);
    let spec = CredentialSpec {
        td: &td,
        sans: &sans,
        ttl,
        bundle_pem: &trust.bundle_pem,
        chain_tail: &trust.chain_tail,
    };
    state::issue_credentials(staging, signer, &spec, now, generation)
}

/// Moves the staged parts into `target` (0700), replacing what an earlier, failed attempt left.
fn place(staging: &Path, target: &Path) -> Result<(), CaError> {
    create_private_dir(target)?;
    for part in PARTS {
        let (from, to): (PathBuf, PathBuf) = (staging.join(part), target.join(part));
        if to.exists() {
            fs::remove_dir_all(&to).map_err(|e| io_err(&to, e))?;
        }
        fs::rename(&from, &to).map_err(|e| io_err(&to, e))?;
    }
    Ok(())
}

/// The current generation's intermediate and its unsealed key (PEM); refused unless the key is
/// the one of the certificate the `generations` table records.
fn unseal_intermediate(
    seal: &SealKey,
    store: &mut Store,
    current: &Generation,
) -> Result<(Signer, String), CaError> {
    let generation = current.generation;
    let key = unseal_required(seal, store, generation, SealKind::Intermediate)?;
    let key = String::from_utf8(key).map_err(|_| {
        CaError::State(format!(
            "the sealed intermediate key of generation {generation} is not PEM"
        ))
    })?;
    let cert = tether_certs::pem::encode("CERTIFICATE", &current.intermediate_der);
    let signer = Signer::from_pem(&cert, &key).map_err(|e| {
        CaError::State(format!(
            "the sealed intermediate key of generation {generation} is not the key of the \
             intermediate the database records: {e}"
        ))
    })?;
    Ok((signer, key))
}

/// The sealed key of `kind` for `generation`, unsealed; a clear error when none is sealed.
fn unseal_required(
    seal: &SealKey,
    store: &mut Store,
    generation: u64,
    kind: SealKind,
) -> Result<Vec<u8>, CaError> {
    let sealed = store
        .sealed_key(generation, kind.as_str())?
        .ok_or_else(|| {
            CaError::State(format!(
                "generation {generation}'s {} key is neither in this state dir nor sealed in the \
             database; run `tether-ca replica add` (which seals it) from the replica that has it",
                kind.as_str()
            ))
        })?;
    seal.unseal(generation, kind, &sealed)
}

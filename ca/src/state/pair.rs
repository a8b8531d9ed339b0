//! A generation's root + intermediate pair: making one (`init`, `root rotate`), writing it to a
//! state dir, sealing its keys for the other replicas, and loading a root back for
//! cross-signing.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use tether_certs::files::{PUBLIC_MODE, SECRET_MODE};
use tether_certs::issue::Signer;
use tether_certs::TrustDomain;

use super::{create_private_dir, generation_dir, io_err, write_file, SealKey, SealKind};
use crate::error::CaError;
use crate::store::NewGeneration;

/// Writes a CA certificate and its key (0600) to `dir/{cert,key}.pem`.
fn write_ca(dir: &Path, signer: &Signer, key: &rcgen::KeyPair) -> Result<(), CaError> {
    create_private_dir(dir)?;
    write_file(
        &dir.join("cert.pem"),
        signer.cert_pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    write_file(
        &dir.join("key.pem"),
        key.serialize_pem().as_bytes(),
        SECRET_MODE,
    )
}

/// A new root + intermediate pair.
pub(crate) struct Pair {
    /// The new root (with its key).
    pub root: Signer,
    /// The new issuing intermediate (with its key).
    pub intermediate: Signer,
    /// The intermediate certified by the previous root, and that root's generation.
    pub cross: Option<(CertificateDer<'static>, u64)>,
}

impl Pair {
    /// What the `generations` table records about it, with its keys `sealed` (see
    /// [`seal_pair`]).
    pub fn describe(
        &self,
        now: OffsetDateTime,
        sealed: Vec<(&'static str, Vec<u8>)>,
    ) -> NewGeneration {
        NewGeneration {
            root_der: self.root.cert().to_vec(),
            root_not_after: self.root.not_after(),
            intermediate_der: self.intermediate.cert().to_vec(),
            intermediate_not_after: self.intermediate.not_after(),
            cross: self.cross.as_ref().map(|(der, g)| (der.to_vec(), *g)),
            created_at: now,
            sealed,
        }
    }

    /// What follows a leaf in a chain: the intermediate, then the cross-certificate if any.
    pub fn chain_tail(&self) -> String {
        let mut tail = self.intermediate.cert_pem();
        if let Some((der, _)) = &self.cross {
            tail.push_str(&tether_certs::pem::encode("CERTIFICATE", der));
        }
        tail
    }
}

/// A new root + intermediate for `td`, written to `out/root/` and `out/intermediate/`; with
/// `cross_by` (the previous root and its generation) the intermediate is also certified by that
/// root, written to `out/intermediate/cross.pem`.
pub(crate) fn new_pair(
    out: &Path,
    td: &TrustDomain,
    root_ttl: Duration,
    intermediate_ttl: Duration,
    now: OffsetDateTime,
    cross_by: Option<(&Signer, u64)>,
) -> Result<Pair, CaError> {
    let (root, root_key) =
        tether_certs::issue::new_root(td, root_ttl, now).map_err(CaError::sign)?;
    let (intermediate, inter_key, cross) = match cross_by {
        Some((previous, generation)) => {
            let (inter, key, cross) = root
                .issue_intermediate_cross_signed(td, intermediate_ttl, now, previous)
                .map_err(CaError::sign)?;
            (inter, key, Some((cross, generation)))
        }
        None => {
            let (inter, key) = root
                .issue_intermediate(td, intermediate_ttl, now)
                .map_err(CaError::sign)?;
            (inter, key, None)
        }
    };
    write_ca(&out.join("root"), &root, &root_key)?;
    write_ca(&out.join("intermediate"), &intermediate, &inter_key)?;
    if let Some((der, _)) = &cross {
        write_file(
            &out.join("intermediate/cross.pem"),
            tether_certs::pem::encode("CERTIFICATE", der).as_bytes(),
            PUBLIC_MODE,
        )?;
    }
    Ok(Pair {
        root,
        intermediate,
        cross,
    })
}

/// The keys of the pair `new_pair` wrote to `out`, sealed with `seal` for `generation`: the
/// intermediate's, and the root's if it is there (`sealed_keys` rows).
pub(crate) fn seal_pair(
    out: &Path,
    seal: &SealKey,
    generation: u64,
) -> Result<Vec<(&'static str, Vec<u8>)>, CaError> {
    let mut sealed = Vec::new();
    for (kind, sub) in [
        (SealKind::Intermediate, "intermediate"),
        (SealKind::Root, "root"),
    ] {
        let path = out.join(sub).join("key.pem");
        match fs::read(&path) {
            Ok(pem) => sealed.push((kind.as_str(), seal.seal(generation, kind, &pem)?)),
            // The root's key may have been moved offline; the intermediate's is required.
            Err(e) if kind == SealKind::Root && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
    }
    Ok(sealed)
}

/// The root of `generation` with its key, if the key is on disk (it may have been moved
/// offline).
pub(crate) fn load_root(dir: &Path, generation: u64) -> Option<Signer> {
    let d = generation_dir(dir, generation).join("root");
    let cert = fs::read_to_string(d.join("cert.pem")).ok()?;
    let key = fs::read_to_string(d.join("key.pem")).ok()?;
    Signer::from_pem(&cert, &key).ok()
}

//! The CA's own credentials, issued by `init`, by every root rotation and by every replica when
//! it materializes a generation: the API's TLS server certificate (`server/`) and the admin
//! client credential (`admin/`), and how each replica's API names are remembered between
//! rotations.

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;

use tether_certs::files::{PUBLIC_MODE, SECRET_MODE};
use tether_certs::issue::{IssuedLeaf, Signer};
use tether_certs::keys::generate_key;
use tether_certs::{SpiffeId, TrustDomain};

use super::{create_private_dir, write_file};
use crate::error::CaError;
use crate::metrics::IssueMethod;
use crate::replica::Me;
use crate::settings::ADMIN_PATH;
use crate::store::{NewCert, Store};

/// What the CA's own credentials (API server certificate, admin client credential) are made of.
pub(crate) struct CredentialSpec<'a> {
    /// The trust domain (the admin identity is `spiffe://TD/tether/admin`).
    pub td: &'a TrustDomain,
    /// DNS names and IPs of the API's certificate.
    pub sans: &'a [String],
    /// Lifetime of both, capped at the issuing intermediate's.
    pub ttl: Duration,
    /// The bundle written next to the admin credential.
    pub bundle_pem: &'a str,
    /// What follows each leaf in its chain (see [`Pair::chain_tail`]).
    pub chain_tail: &'a str,
}

/// The API's server certificate and the admin client credential, issued by `inter` and written
/// to `out/server/{chain,key}.pem` and `out/admin/{cert,chain,key,bundle}.pem`. Returns the
/// records to store, tagged `generation`.
pub(crate) fn issue_credentials(
    out: &Path,
    inter: &Signer,
    spec: &CredentialSpec<'_>,
    now: OffsetDateTime,
    generation: u64,
) -> Result<[NewCert; 2], CaError> {
    let CredentialSpec {
        td,
        sans,
        ttl,
        bundle_pem,
        chain_tail,
    } = *spec;
    let server_key = generate_key().map_err(CaError::sign)?;
    let server = inter
        .issue_server(&server_key, sans, ttl, now)
        .map_err(CaError::sign)?;
    // The server's directory has no separate cert.pem: TLS presents the chain.
    write_credential(&out.join("server"), &server, &server_key, chain_tail, None)?;

    let admin_id = SpiffeId::from_parts(td, ADMIN_PATH)
        .map_err(|e| CaError::State(format!("admin identity: {e}")))?;
    let admin_key = generate_key().map_err(CaError::sign)?;
    let admin = inter
        .issue_leaf(&admin_id, &admin_key, ttl, ttl, now)
        .map_err(CaError::sign)?;
    write_credential(
        &out.join("admin"),
        &admin,
        &admin_key,
        chain_tail,
        Some(bundle_pem),
    )?;
    let record = |leaf: &IssuedLeaf, spiffe_id: String, method: IssueMethod| NewCert {
        serial: leaf.serial.clone(),
        spiffe_id,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        issued_at: now,
        method: method.as_str(),
        der: leaf.der.to_vec(),
        generation,
    };
    Ok([
        record(&server, server_label(sans), IssueMethod::Server),
        record(&admin, admin_id.to_string(), IssueMethod::Admin),
    ])
}

/// Writes one credential to `dir` (0700): `chain.pem` (the leaf, then `chain_tail`) and
/// `key.pem` (0600); with `bundle_pem` also `cert.pem` (the leaf alone) and `bundle.pem`, which
/// is what a client credential (the admin's) carries.
fn write_credential(
    dir: &Path,
    leaf: &IssuedLeaf,
    key: &rcgen::KeyPair,
    chain_tail: &str,
    bundle_pem: Option<&str>,
) -> Result<(), CaError> {
    create_private_dir(dir)?;
    let leaf_pem = tether_certs::pem::encode("CERTIFICATE", &leaf.der);
    let chain = format!("{leaf_pem}{chain_tail}");
    write_file(&dir.join("chain.pem"), chain.as_bytes(), PUBLIC_MODE)?;
    write_file(
        &dir.join("key.pem"),
        key.serialize_pem().as_bytes(),
        SECRET_MODE,
    )?;
    if let Some(bundle_pem) = bundle_pem {
        write_file(&dir.join("cert.pem"), leaf_pem.as_bytes(), PUBLIC_MODE)?;
        write_file(&dir.join("bundle.pem"), bundle_pem.as_bytes(), PUBLIC_MODE)?;
    }
    Ok(())
}

/// How the API's server certificate is labelled in the `certificates` table (it has no SPIFFE
/// ID): `dns:` and its names, comma-separated — also how a rotation recovers the names.
fn server_label(sans: &[String]) -> String {
    format!("dns:{}", sans.join(","))
}

/// The API names of replica `me`: what its `replica.json` says, or for the replica `init` made,
/// the names of its newest API server certificate, from its label.
pub(crate) fn server_sans(me: &Me, store: &mut Store) -> Result<Vec<String>, CaError> {
    if let Some(sans) = &me.sans {
        return Ok(sans.clone());
    }
    let label = store.newest_server_label(&me.id)?;
    Ok(
        match label.as_deref().and_then(|l| l.strip_prefix("dns:")) {
            Some(names) => names.split(',').map(str::to_string).collect(),
            None => default_sans(),
        },
    )
}

/// The API certificate always covers the local names.
pub(crate) fn default_sans() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

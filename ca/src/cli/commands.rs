//! The commands that work straight on the state directory and print a line or two: `init`,
//! `enroll`, `issue`, `revoke`, `crl`, `list` and `replica add | remove | list`. The lifecycle
//! reports (fleet, root, check, `revoke --wait`) are in `report.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use tether_certs::crl::Reason;
use tether_certs::files::PUBLIC_MODE;
use tether_certs::{Serial, SpiffeId};

use super::args::{InitArgs, ReplicaCommand};
use super::{print_json, report, CliError};
use crate::authority::Authority;
use crate::replica::AddReplica;
use crate::state::{write_file, SEAL_FILE};
use crate::timefmt::{add_secs, unix_rfc3339};

/// `init`.
pub(super) fn init(dir: &Path, args: &InitArgs) -> Result<(), CliError> {
    let opts = args.options().map_err(CliError::Other)?;
    Authority::init(dir, &opts)?;
    println!(
        "initialized CA for trust domain {} in {}",
        opts.trust_domain,
        dir.display()
    );
    println!("  trust bundle:     {}", dir.join("bundle.pem").display());
    println!("  admin credential: {}", dir.join("admin").display());
    println!(
        "next: tether-ca --state-dir {} serve --listen 127.0.0.1:8443",
        dir.display()
    );
    Ok(())
}

/// `enroll SPIFFE_ID`: the token on stdout, what it is for on stderr.
pub(super) fn enroll(ca: &Authority, id: &SpiffeId, token_ttl: Duration) -> Result<(), CliError> {
    let token = ca.create_token(id, token_ttl)?;
    let until = add_secs(OffsetDateTime::now_utc().unix_timestamp(), token_ttl);
    eprintln!(
        "one-time enrollment token for {id}, usable once until {}",
        unix_rfc3339(until)
    );
    println!("{token}");
    Ok(())
}

/// `issue SPIFFE_ID --out DIR`.
pub(super) fn issue(
    ca: &Authority,
    id: &SpiffeId,
    ttl: Duration,
    out: &Path,
) -> Result<(), CliError> {
    let issued = ca.issue_to_dir(id, ttl, out)?;
    println!(
        "issued {} serial {} not after {}",
        issued.spiffe_id, issued.serial, issued.not_after
    );
    if let Some(note) = &issued.note {
        println!("note: {note}");
    }
    for f in ["key.pem", "cert.pem", "chain.pem", "bundle.pem"] {
        println!("  {}", out.join(f).display());
    }
    Ok(())
}

/// What `revoke` names: a serial, or an identity with an optional cut-off.
pub(super) enum RevokeTarget<'a> {
    /// `revoke SERIAL`.
    Serial(&'a Serial),
    /// `revoke --id ID [--before T]`.
    Identity(&'a SpiffeId, Option<OffsetDateTime>),
}

/// `revoke`, then with `wait` (`Some(timeout)`) `--wait`.
pub(super) fn revoke(
    ca: &Authority,
    target: RevokeTarget<'_>,
    reason: Option<Reason>,
    wait: Option<Duration>,
) -> Result<(), CliError> {
    let published = match target {
        RevokeTarget::Serial(serial) => report::revoke_serial(ca, serial, reason)?,
        RevokeTarget::Identity(id, before) => report::revoke_identity(ca, id, before, reason)?,
    };
    if let Some(timeout) = wait {
        // Nothing new published (already revoked, nothing matched): the newest CRL lists
        // everything revoked, so that is the one to wait for.
        let number = match published {
            Some(n) => n,
            None => ca.latest_crl_number()?,
        };
        report::wait(ca, number, timeout)?;
    }
    Ok(())
}

/// `crl [--out FILE]`.
pub(super) fn crl(ca: &Authority, out: Option<&PathBuf>) -> Result<(), CliError> {
    let crl = ca.current_crl(ca.settings().crl_validity / 2)?;
    let pem = tether_certs::pem::encode("X509 CRL", &crl.der);
    match out {
        Some(path) => {
            write_file(path, pem.as_bytes(), PUBLIC_MODE)?;
            eprintln!("wrote CRL number {} to {}", crl.number, path.display());
        }
        None => print!("{pem}"),
    }
    Ok(())
}

/// `list [--expiring-within D] [--json]`.
pub(super) fn list(
    ca: &Authority,
    expiring_within: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let records = ca.list(expiring_within)?;
    if json {
        print_json(&records);
        return Ok(());
    }
    println!(
        "{:<32}  {:<21}  {:<8}  {:<9}  IDENTITY",
        "SERIAL", "NOT AFTER", "METHOD", "REVOKED"
    );
    for r in &records {
        let revoked = if r.revoked_at.is_some() {
            "revoked"
        } else {
            "-"
        };
        println!(
            "{:<32}  {:<21}  {:<8}  {:<9}  {}",
            r.serial,
            unix_rfc3339(r.not_after),
            r.method,
            revoked,
            r.spiffe_id
        );
    }
    Ok(())
}

/// `replica add | remove | list`.
pub(super) fn replica(ca: &Authority, command: &ReplicaCommand) -> Result<(), CliError> {
    match command {
        ReplicaCommand::Add { out, sans, id } => {
            let added = ca.add_replica(&AddReplica {
                out: out.clone(),
                extra_sans: sans.clone(),
                id: id.clone(),
            })?;
            let dir = added.dir.display();
            println!("added replica {} in {dir}", added.id);
            println!("  database:         {} (shared)", added.database);
            println!("  API names:        {}", added.sans.join(", "));
            println!(
                "  seal key:         {}",
                added.dir.join(SEAL_FILE).display()
            );
            println!(
                "  trust bundle:     {}",
                added.dir.join("bundle.pem").display()
            );
            println!("  admin credential: {}", added.dir.join("admin").display());
            println!("next: tether-ca --state-dir {dir} serve --listen 127.0.0.1:8443");
        }
        ReplicaCommand::Remove { id } => {
            let removed = ca.remove_replica(id)?;
            println!(
                "removed replica {id}: it refuses to serve and to sign from now on; revoked {} \
                 of its certificates",
                removed.revoked.len()
            );
            if let Some(n) = removed.crl_number {
                println!("published CRL number {n}");
            }
        }
        ReplicaCommand::List { json } => {
            let replicas = ca.replicas()?;
            if *json {
                print_json(&replicas);
                return Ok(());
            }
            let me = ca.replica_id();
            println!(
                "{:<16}  {:<21}  {:<21}  API NAMES",
                "ID", "CREATED", "REMOVED"
            );
            for r in &replicas {
                let this = if r.id == me { " (this one)" } else { "" };
                let created = if r.created_at > 0 {
                    unix_rfc3339(r.created_at)
                } else {
                    "-".into()
                };
                let removed = r.removed_at.map_or_else(|| "-".into(), unix_rfc3339);
                println!(
                    "{:<16}  {created:<21}  {removed:<21}  {}{this}",
                    r.id,
                    r.sans.join(",")
                );
            }
        }
    }
    Ok(())
}

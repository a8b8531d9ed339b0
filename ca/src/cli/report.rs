//! The lifecycle commands' work and output: revoke (by serial or identity) and `--wait`, fleet,
//! root rotate / retire / list, check. Tables go to stdout; a refusal or a failed wait returns
//! an error (printed to stderr by `main`, exit status 1) after stdout has said what blocked it.

use std::time::Duration;

use time::OffsetDateTime;

use tether_certs::crl::Reason;
use tether_certs::{Serial, SpiffeId};

use super::{print_json, CliError};
use crate::authority::Authority;
use crate::rotation::RotateOptions;
use crate::store::{FleetMember, RetireOutcome, RevokeOutcome};
use crate::timefmt::{rfc3339, short_duration, unix_rfc3339};

/// Lines of a table: every column padded to its widest cell, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// How long ago `unix` was, in seconds.
fn ago(unix: i64) -> String {
    let secs = (OffsetDateTime::now_utc().unix_timestamp() - unix).max(0);
    format!("{secs}s ago")
}

/// `revoke SERIAL`; returns the CRL number published, if one was.
pub(super) fn revoke_serial(
    ca: &Authority,
    serial: &Serial,
    reason: Option<Reason>,
) -> Result<Option<u64>, CliError> {
    match ca.revoke(serial, reason)? {
        RevokeOutcome::Revoked { crl_number } => {
            println!("revoked {serial}; CRL number {crl_number} published");
            Ok(Some(crl_number))
        }
        RevokeOutcome::AlreadyRevoked(at) => {
            println!(
                "{serial} was already revoked at {}; nothing changed",
                unix_rfc3339(at)
            );
            Ok(None)
        }
        RevokeOutcome::Unknown => Err(CliError::Other(format!(
            "no certificate with serial {serial} was issued by this CA (see `tether-ca list`)"
        ))),
    }
}

/// `revoke --id ID [--before T]`; returns the CRL number published, if one was.
pub(super) fn revoke_identity(
    ca: &Authority,
    id: &SpiffeId,
    before: Option<OffsetDateTime>,
    reason: Option<Reason>,
) -> Result<Option<u64>, CliError> {
    let done = ca.revoke_identity(id, before, reason)?;
    let when = before.map_or("so far".to_string(), |t| format!("before {}", rfc3339(t)));
    match done.crl_number {
        Some(n) => {
            println!(
                "revoked {} certificate{} of {id} issued {when}; CRL number {n} published",
                done.serials.len(),
                if done.serials.len() == 1 { "" } else { "s" }
            );
            for serial in &done.serials {
                println!("  {serial}");
            }
        }
        None => println!(
            "revoked 0 certificates: {id} has no unrevoked, unexpired certificate issued {when}"
        ),
    }
    Ok(done.crl_number)
}

/// `revoke … --wait`: succeeds once every recently seen sidecar acknowledged `crl_number`,
/// leaving out (and listing) those whose certificate is revoked — they can no longer poll.
pub(super) fn wait(ca: &Authority, crl_number: u64, timeout: Duration) -> Result<(), CliError> {
    let ack = ca.wait_for_acknowledgement(crl_number, timeout)?;
    if !ack.revoked.is_empty() {
        let rows: Vec<Vec<String>> = ack
            .revoked
            .iter()
            .map(|m| {
                vec![
                    m.spiffe_id.clone(),
                    m.instance.clone(),
                    m.serial.clone(),
                    ago(m.last_seen),
                ]
            })
            .collect();
        println!(
            "not waited for: sidecars whose certificate is revoked, so they can no longer poll:"
        );
        print!(
            "{}",
            table(&["IDENTITY", "INSTANCE", "SERIAL", "LAST SEEN"], &rows)
        );
    }
    if ack.members == 0 {
        let other = if ack.revoked.is_empty() { "" } else { " other" };
        println!("no{other} sidecar polled the CA in the last minute; nothing to wait for");
        return Ok(());
    }
    if ack.lagging.is_empty() {
        println!(
            "all {} sidecar{} acknowledged CRL number {crl_number} in {:.2}s",
            ack.members,
            if ack.members == 1 { "" } else { "s" },
            ack.took.as_secs_f64()
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = ack
        .lagging
        .iter()
        .map(|m| {
            vec![
                m.spiffe_id.clone(),
                m.instance.clone(),
                m.crl_number.to_string(),
                ago(m.last_seen),
            ]
        })
        .collect();
    println!("sidecars that did not acknowledge CRL number {crl_number}:");
    print!(
        "{}",
        table(&["IDENTITY", "INSTANCE", "CRL HELD", "LAST SEEN"], &rows)
    );
    Err(CliError::Other(format!(
        "{} of {} sidecars did not acknowledge CRL number {crl_number} within {}",
        ack.lagging.len(),
        ack.members,
        short_duration(timeout)
    )))
}

/// `fleet`.
pub(super) fn fleet(ca: &Authority, within: Duration, json: bool) -> Result<(), CliError> {
    let members = ca.fleet(within)?;
    if json {
        print_json(&members);
        return Ok(());
    }
    let crl = ca.latest_crl_number()?;
    let version = ca.stored_bundle_version()?;
    println!(
        "CA: CRL number {crl}, bundle version {version}; {} sidecar{} seen within {}",
        members.len(),
        if members.len() == 1 { "" } else { "s" },
        short_duration(within)
    );
    print!("{}", fleet_table(&members));
    Ok(())
}

/// The fleet as `fleet` and a refused `root retire` print it.
fn fleet_table(members: &[FleetMember]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.instance.clone(),
                m.spiffe_id.clone(),
                if m.cert_revoked {
                    format!("{} (revoked)", m.serial)
                } else {
                    m.serial.clone()
                },
                unix_rfc3339(m.cert_not_after),
                m.crl_number.to_string(),
                m.bundle_version.map_or("-".into(), |v| v.to_string()),
                ago(m.last_seen),
            ]
        })
        .collect();
    let headers = [
        "INSTANCE",
        "IDENTITY",
        "SERIAL",
        "CERT NOT AFTER",
        "CRL",
        "BUNDLE",
        "LAST SEEN",
    ];
    table(&headers, &rows)
}

/// `root rotate`.
pub(super) fn rotate(ca: &Authority, opts: &RotateOptions) -> Result<(), CliError> {
    let previous = ca.roots()?;
    let r = ca.rotate_root(opts)?;
    let dir = ca.dir().display();
    println!(
        "rotated to generation {}: root {} (not after {}), intermediate not after {}",
        r.generation, r.root_fingerprint, r.root_not_after, r.intermediate_not_after
    );
    println!(
        "bundle version {} ({dir}/bundle.pem) holds {} roots; new certificates are signed by \
         the new intermediate; CRL number {} published",
        r.bundle_version,
        ca.bundle().len(),
        r.crl_number
    );
    println!("API server certificate and admin credential re-issued ({dir}/server, {dir}/admin)");
    match r.cross_signed_by {
        Some(g) => println!(
            "the generation {g} root also certified the new intermediate: sidecars still on the \
             old bundle keep trusting new certificates, CRLs and the API until they fetch the new \
             one"
        ),
        None => eprintln!(
            "warning: the previous root's key is not in {dir}, so the new intermediate is not \
             cross-certified: a sidecar that has not fetched bundle version {} cannot verify new \
             certificates or reach the API — give it {dir}/bundle.pem",
            r.bundle_version
        ),
    }
    let old: Vec<&str> = previous
        .iter()
        .filter(|p| p.status != "retired")
        .map(|p| p.fingerprint.as_str())
        .collect();
    println!(
        "next: wait until `tether-ca fleet` shows every sidecar on bundle version {} and the old \
         certificates have expired or been renewed, then `tether-ca root retire {}`",
        r.bundle_version,
        old.first().copied().unwrap_or("FINGERPRINT")
    );
    Ok(())
}

/// `root retire`.
pub(super) fn retire(ca: &Authority, fingerprint: &str, force: bool) -> Result<(), CliError> {
    let (target, outcome) = ca.retire_root(fingerprint, force)?;
    let blockers = match outcome {
        RetireOutcome::NotRetirable(why) => {
            return Err(CliError::Other(format!("refusing to retire: {why}")))
        }
        RetireOutcome::Retired {
            bundle_version,
            crl_number,
            overridden,
        } => {
            if !overridden.is_empty() {
                eprintln!(
                    "warning: --force: {} certificate(s) and {} sidecar(s) still depended on it \
                     and will now fail verification",
                    overridden.leaves.len(),
                    overridden.fleet.len()
                );
            }
            println!(
                "retired root {} (generation {}); bundle version {bundle_version} holds {} \
                 root(s); CRL number {crl_number} published",
                target.root_fingerprint,
                target.generation,
                ca.bundle().len()
            );
            return Ok(());
        }
        RetireOutcome::Blocked(blockers) => blockers,
    };
    if !blockers.leaves.is_empty() {
        println!("unexpired, unrevoked certificates that chain to it:");
        let rows: Vec<Vec<String>> = blockers
            .leaves
            .iter()
            .map(|r| {
                vec![
                    r.serial.clone(),
                    unix_rfc3339(r.not_after),
                    r.method.clone(),
                    r.spiffe_id.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["SERIAL", "NOT AFTER", "METHOD", "IDENTITY"], &rows)
        );
    }
    if !blockers.fleet.is_empty() {
        println!(
            "sidecars seen in the last minute without bundle version {} or newer:",
            blockers.required_bundle_version
        );
        print!("{}", fleet_table(&blockers.fleet));
    }
    Err(CliError::Other(format!(
        "refusing to retire root {}: {} certificate(s) and {} sidecar(s) still depend on it; \
         let the certificates expire or revoke them, let the sidecars fetch the bundle, or use \
         --force",
        target.root_fingerprint,
        blockers.leaves.len(),
        blockers.fleet.len()
    )))
}

/// `root list`.
pub(super) fn roots(ca: &Authority, json: bool) -> Result<(), CliError> {
    let roots = ca.roots()?;
    if json {
        print_json(&roots);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = roots
        .iter()
        .map(|r| {
            vec![
                r.generation.to_string(),
                r.fingerprint.clone(),
                r.trust_domain.clone(),
                r.not_after.clone(),
                r.status.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["GEN", "FINGERPRINT", "TRUST DOMAIN", "NOT AFTER", "STATUS"],
            &rows
        )
    );
    Ok(())
}

/// `check`.
pub(super) fn check(ca: &Authority, warn_within: Duration) -> Result<(), CliError> {
    let problems = ca.check(warn_within)?;
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    Err(CliError::Other(format!(
        "{} problem{} found",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    )))
}

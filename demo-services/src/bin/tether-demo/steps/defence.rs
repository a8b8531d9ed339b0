//! Steps 3 to 5: what the mesh lets through and what it stops. Users reach service-b through the
//! gateway and service-a, each hop seeing the verified caller; a valid member without a rule is
//! denied by policy; clients without a mesh certificate never get past the handshake.

use std::path::PathBuf;

use super::Demo;
use crate::mesh::{id, GATEWAY, INTRUDER, SERVICE_A, TRUST_DOMAIN};
use crate::probes::{addr, call, external_clients, sample, tls_get};

/// Step 3: ten user requests through the gateway, both replicas serving, callers verified.
pub(crate) async fn user_reaches_service_b(d: &mut Demo) {
    d.narrator.step("user → gateway → service-a → service-b");
    let s = sample(d.ports.gateway.outbound, 10).await;
    let last = &s.last;
    let chain_ok = last["caller"] == id(GATEWAY) && last["service_b"]["caller"] == id(SERVICE_A);
    d.narrator
        .check(s.ok == 10, "10 of 10 user requests answered 200", "");
    d.narrator.check(
        chain_ok,
        "each hop saw the verified caller",
        &format!(
            "service-a saw  {}\nservice-b saw  {}\nservice-b's x-forwarded-client-cert: {}",
            last["caller"], last["service_b"]["caller"], last["service_b"]["xfcc"]
        ),
    );
    d.narrator.check(
        s.replicas.len() == 2,
        "both replicas of service-a served",
        &format!("{:?}", s.replicas),
    );
}

/// Step 4: the intruder holds a valid certificate, but no rule lets it call service-b.
pub(crate) async fn policy_denies_the_intruder(d: &mut Demo) -> Result<(), String> {
    d.narrator
        .step("An intruder — a valid mesh member — calls service-b");
    let (status, _) = call(d.ports.intruder.outbound, "service-b", "/data")
        .await
        .unwrap_or((0, String::new()));
    d.narrator.check(
        status == 403,
        "intruder → service-b: 403 by policy (default deny)",
        &format!("status {status}"),
    );
    let policy = d.procs.path("b-policy.toml").display().to_string();
    let intruder = id(INTRUDER);
    let args: &[&str] = &[
        "authz", "check", "--policy", &policy, "--from", &intruder, "--method", "GET", "--path",
        "/data",
    ];
    let check = d.procs.run("tether-proxy", args)?;
    let explained = String::from_utf8_lossy(&check.stdout).to_string();
    d.narrator.check(
        check.status.code() == Some(1) && explained.contains("default deny"),
        "tether-proxy authz check explains why",
        &explained,
    );
    Ok(())
}

/// Step 5: no certificate, or one for service-a's own ID from a foreign CA: refused.
pub(crate) async fn handshake_refuses_outsiders(d: &mut Demo) -> Result<(), String> {
    d.narrator
        .step("Clients without a mesh certificate are refused at the handshake");
    let b_in = addr(d.ports.b.inbound);
    let no_cert = tls_get(b_in, None).await;
    d.narrator.check(
        no_cert.is_err(),
        "no client certificate → connection closed",
        &no_cert.err().unwrap_or_default(),
    );
    let evil_creds = foreign_credentials(d)?;
    let foreign = tls_get(b_in, Some(&evil_creds)).await;
    d.narrator.check(
        foreign.is_err(),
        "a certificate for service-a's very ID from another CA → refused",
        &foreign.err().unwrap_or_else(|| "it was accepted".into()),
    );
    if let Some(text) = external_clients(b_in, &evil_creds) {
        d.narrator.say(&text);
    }
    Ok(())
}

/// A second CA for the same trust domain issues service-a's ID: the dir of its credentials.
fn foreign_credentials(d: &Demo) -> Result<PathBuf, String> {
    let evil = d.procs.path("evil-ca").display().to_string();
    let evil_creds = d.procs.path("evil-creds");
    let init: &[&str] = &["--state-dir", &evil, "init", "--trust-domain", TRUST_DOMAIN];
    let out = d.procs.run("tether-ca", init)?;
    let service_a = id(SERVICE_A);
    let creds = evil_creds.display().to_string();
    let issue: &[&str] = &["--state-dir", &evil, "issue", &service_a, "--out", &creds];
    let out2 = d.procs.run("tether-ca", issue)?;
    if !out.status.success() || !out2.status.success() {
        return Err("could not make the foreign CA".into());
    }
    Ok(evil_creds)
}

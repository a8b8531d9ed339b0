//! Step 8, the seed's mitigation for "the auth service is down": two CA replicas share one
//! database, and when one is killed (SIGKILL) in the middle of user traffic, the sidecars move
//! their CRL long-poll and their renewals to the other within seconds, users see no failed
//! request, and a revocation made through the survivor is enforced within a second.

use std::time::{Duration, Instant};

use super::lifecycle::new_serial;
use super::{Demo, CA_REPLICAS};
use crate::probes::{
    admin, call, eventually, identity, keep_calling, post, serial, text, wait_port,
};

/// How long the sidecars get to notice the dead replica: the bound.
const FAIL_OVER_WITHIN: Duration = Duration::from_secs(2);
/// How long a revocation through the survivor may take to be enforced.
const ENFORCE_WITHIN: Duration = Duration::from_secs(1);

/// Step 8: replica 1 dies under traffic; replica 2 renews, serves CRLs and takes revocations.
pub(crate) async fn lose_a_ca_replica(d: &mut Demo) -> Result<(), String> {
    d.narrator
        .step("One CA replica is killed mid-traffic; the other takes over");
    let gw = d.ports.gateway.admin;
    let survivor = format!("https://127.0.0.1:{}", d.ports.ca2);
    let load = tokio::spawn(keep_calling(
        d.ports.gateway.outbound,
        Duration::from_secs(3),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    d.procs.kill(CA_REPLICAS[0].0);
    let on_survivor = || {
        let survivor = survivor.clone();
        async move { text(&identity(gw).await["ca_url"]) == survivor }
    };
    let moved = eventually(
        killed,
        FAIL_OVER_WITHIN * 3,
        Duration::from_millis(20),
        on_survivor,
    )
    .await;
    let old = serial(gw).await;
    post(gw, "/rotate").await;
    let renewed = new_serial(gw, &old).await;
    let (ok, failed) = load.await.unwrap_or((0, u32::MAX));
    d.narrator.check(
        failed == 0 && ok > 0,
        "users kept calling while replica 1 was killed: none failed",
        &format!("{ok} answered 200, {failed} failed"),
    );
    let (_, metrics) = admin(gw, "/metrics").await;
    let failovers = metrics
        .lines()
        .find(|l| l.starts_with("tether_ca_failovers_total"))
        .unwrap_or("tether_ca_failovers_total (missing)")
        .to_string();
    d.narrator.check(
        moved.is_some_and(|t| t <= FAIL_OVER_WITHIN),
        &format!(
            "the gateway's sidecar moved to replica 2 {} after the kill",
            moved
                .map(|t| format!("{} ms", t.as_millis()))
                .unwrap_or_else(|| "never".into())
        ),
        &format!("/identity ca_url = {survivor}; {failovers}"),
    );
    d.narrator.check(
        !renewed.is_empty() && renewed != old,
        "renewal goes through the survivor",
        &format!("gateway renewed: {old} → {renewed}"),
    );
    revoke_through_the_survivor(d).await;
    d.start_ca(0)?;
    let back = wait_port(d.ports.ca, Duration::from_secs(10)).await;
    d.narrator.check(back, "replica 1 restarts and rejoins", "");
    Ok(())
}

/// The intruder is revoked with the CLI on replica 2's state dir; service-b refuses it within
/// [`ENFORCE_WITHIN`].
async fn revoke_through_the_survivor(d: &mut Demo) {
    let intruder = d.ports.intruder.outbound;
    let victim = serial(d.ports.intruder.admin).await;
    let started = Instant::now();
    let revoked = d.ca_at(1, &["revoke", &victim, "--reason", "key-compromise"]);
    let refused = || async move {
        // Before: 403 from service-b's policy. After: no handshake at all (a 5xx from the
        // intruder's own sidecar).
        matches!(call(intruder, "service-b", "/data").await, Ok((s, _)) if s >= 500)
    };
    let within = ENFORCE_WITHIN * 3;
    let took = eventually(started, within, Duration::from_millis(10), refused).await;
    d.narrator.check(
        revoked.is_ok() && took.is_some_and(|t| t <= ENFORCE_WITHIN),
        &format!(
            "a revocation through replica 2 is enforced {} after `tether-ca revoke`",
            took.map(|t| format!("in {} ms", t.as_millis()))
                .unwrap_or_else(|| "never".into())
        ),
        &format!(
            "intruder (serial {victim}) now refused at service-b's handshake; {}",
            revoked.unwrap_or_else(|e| e)
        ),
    );
}

//! Steps 6 to 9: the life of a certificate while users keep calling. One replica's certificate
//! is revoked and service-b refuses it within milliseconds; every certificate rotates under load
//! without a failed request; the CA goes down and traffic flows on cached certificates and CRLs
//! until it is back; the sidecars' metrics count all of it.

use std::time::{Duration, Instant};

use super::{Demo, CA_REPLICAS};
use crate::probes::{
    admin, eventually, identity, keep_calling, post, sample, serial, service_a_ok, sum_by, text,
    wait_port,
};

/// How long service-b gets to refuse a revoked certificate; it takes milliseconds.
const REFUSE_WITHIN: Duration = Duration::from_secs(10);

/// Step 6: revoke replica 1; service-b refuses it, the gateway serves through replica 2.
pub(crate) async fn revoke_one_replica(d: &mut Demo) {
    d.narrator
        .step("Revoke one service-a replica's certificate");
    let serial = serial(d.ports.a[0].admin).await;
    let a1_app = d.ports.a[0].app;
    let ok_before = service_a_ok(a1_app).await;
    let t = Instant::now();
    let revoked = d.ca(&["revoke", &serial, "--reason", "key-compromise"]);
    let refused = || async move { !service_a_ok(a1_app).await };
    let refused_after = eventually(t, REFUSE_WITHIN, Duration::from_millis(10), refused).await;
    d.narrator.check(
        ok_before && revoked.is_ok() && refused_after.is_some(),
        &format!(
            "service-b refuses replica 1 {} after `tether-ca revoke`",
            refused_after
                .map(|e| format!("{} ms", e.as_millis()))
                .unwrap_or_else(|| "never".into())
        ),
        &format!("{} (serial {serial})", revoked.unwrap_or_else(|e| e)),
    );
    let s = sample(d.ports.gateway.outbound, 10).await;
    d.narrator.check(
        s.ok == 10 && s.replicas.iter().all(|r| r == "service-a-2"),
        "the gateway keeps serving users through the other replica",
        &format!("{}/10 answered 200, served by {:?}", s.ok, s.replicas),
    );
}

/// Step 7: every live sidecar rotates while users call for three seconds; none of them fails.
pub(crate) async fn rotate_under_traffic(d: &mut Demo) {
    d.narrator
        .step("Rotate every certificate while users keep calling");
    let p = &d.ports;
    let rotating = [
        ("gateway", p.gateway.admin),
        ("a2", p.a[1].admin),
        ("b", p.b.admin),
        ("intruder", p.intruder.admin),
    ];
    let mut before = Vec::new();
    for (_, port) in rotating {
        before.push(serial(port).await);
    }
    let load = tokio::spawn(keep_calling(p.gateway.outbound, Duration::from_secs(3)));
    // Let the load get going first, so the rotations land in the middle of it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, port) in rotating {
        post(port, "/rotate").await;
    }
    let (ok, failed) = load.await.unwrap_or((0, u32::MAX));
    let mut lines = String::new();
    let mut all_new = true;
    for ((name, port), old) in rotating.iter().zip(&before) {
        let new = serial(*port).await;
        all_new &= &new != old && !new.is_empty();
        lines.push_str(&format!("{name:<9} {old} → {new}\n"));
    }
    lines.push_str("(replica 1 stays revoked: the CA refuses to renew a revoked certificate)");
    d.narrator.check(
        all_new,
        "every live sidecar has a new certificate (fresh key, no restart)",
        &lines,
    );
    d.narrator.check(
        failed == 0 && ok > 0,
        &format!("{failed} failed requests during the rotation ({ok} succeeded)"),
        "",
    );
}

/// Step 9: with every CA replica stopped, traffic flows; once they are back, the gateway renews
/// again.
pub(crate) async fn survive_a_ca_outage(d: &mut Demo) -> Result<(), String> {
    d.narrator.step("Every CA replica goes down");
    for (name, _) in CA_REPLICAS {
        d.procs.kill(name);
    }
    let ok = sample(d.ports.gateway.outbound, 10).await.ok;
    d.narrator.check(
        ok == 10,
        "traffic keeps flowing on cached certificates and CRLs",
        &format!("{ok}/10 answered 200 with both replicas stopped"),
    );
    let gw_admin = d.ports.gateway.admin;
    let gw = identity(gw_admin).await;
    let outage = gw["seconds_until_outage"].as_i64().unwrap_or(0);
    d.narrator.check(
        outage > 0,
        &format!(
            "the gateway reports {} min until outage if the CA stays down",
            outage / 60
        ),
        "",
    );
    d.start_ca(0)?;
    d.start_ca(1)?;
    let back = wait_port(d.ports.ca, Duration::from_secs(10)).await
        && wait_port(d.ports.ca2, Duration::from_secs(10)).await;
    let old = text(&gw["serial"]);
    post(gw_admin, "/rotate").await;
    let renewed = new_serial(gw_admin, &old).await;
    d.narrator.check(
        back && renewed != old,
        "the replicas are back and issuing again",
        &format!("gateway renewed: {old} → {renewed}"),
    );
    Ok(())
}

/// The sidecar's serial once it differs from `old`, polled 100 times 50 ms apart; the last one
/// read if it never does.
pub(super) async fn new_serial(port: u16, old: &str) -> String {
    let mut renewed = String::new();
    for _ in 0..100 {
        renewed = serial(port).await;
        if renewed != old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    renewed
}

/// Step 9: service-b's and the gateway's counters show the denials, refusals and revocation.
pub(crate) async fn show_the_metrics(d: &mut Demo) {
    d.narrator
        .step("What the sidecars counted (Prometheus /metrics)");
    let (_, b_metrics) = admin(d.ports.b.admin, "/metrics").await;
    let (_, gw_metrics) = admin(d.ports.gateway.admin, "/metrics").await;
    let summary = format!(
        "service-b requests by code:        {}\nservice-b handshakes by result:     {}\nservice-b authz decisions:          {}\ngateway outbound handshakes:        {}",
        sum_by(&b_metrics, "tether_requests_total", "code"),
        sum_by(&b_metrics, "tether_tls_handshakes_total", "result"),
        sum_by(&b_metrics, "tether_authz_decisions_total", "decision"),
        sum_by(&gw_metrics, "tether_tls_handshakes_total", "result"),
    );
    let counted = b_metrics.contains("tether_authz_decisions_total{decision=\"deny\"")
        && (b_metrics.contains("result=\"revoked\"")
            || b_metrics.contains("tether_revoked_connections_closed_total 1"));
    d.narrator.check(
        counted,
        "denials, refused handshakes and revocations are all visible",
        &summary,
    );
}

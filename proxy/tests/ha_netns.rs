//! High availability end to end, across simulated hosts: PostgreSQL on host `db`, one
//! `tether-ca serve` replica on each of `ca1` and `ca2` (the second made with `tether-ca
//! replica add`, sharing the first's database), and on `app` the service-b app behind its
//! inbound sidecar, a client sidecar (service-a) whose outbound routes to it, and a load loop
//! through the pair.
//! Every part is a real process inside its host's network namespace; the test process only
//! drives them (`ip netns exec`) and looks through real clients (curl) run on `app`.
//!
//! Under load, `ca1`'s host is cut off (packets vanish, nothing is refused): not one request may
//! fail, both sidecars' CRL long-polls move to `ca2` within 2 s, renewals go through `ca2`
//! (new serials, `/identity` names `ca2`, `tether_ca_failovers_total` counts the move), and a
//! revocation made with the CLI on `ca2` is enforced by the inbound sidecar within 1 s. The
//! revoked identity is an "intruder" certificate used only for that check, so the load keeps
//! running through it. Needs root for the namespaces and a PostgreSQL server; skips with a
//! `SKIPPED` line otherwise (and fails under CI, where both are provided).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hosts::{binaries, curl, metric, run_on, Load, Procs};
use common::{eventually, id, Pki, SERVICE_A, SERVICE_B};
use tether_testkit::netns::{postgres_in, Host, Net};

const CA1_IP: &str = "10.78.0.11";
const CA2_IP: &str = "10.78.0.12";
const INTRUDER: &str = "ns/default/sa/intruder";
/// Ports on `app`'s own loopback (every host has its own network stack, so fixed ports do).
const APP_PORT: u16 = 8080;
const B_INBOUND: u16 = 15006;
const A_OUTBOUND: u16 = 15001;
const B_ADMIN: u16 = 15100;
const A_ADMIN: u16 = 15101;

/// service-b's policy: service-a (the load) and the intruder (the revocation check) may read.
const B_POLICY: &str = r#"
[[rule]]
name = "readers"
from = ["spiffe://demo.tether/ns/default/sa/service-a", "spiffe://demo.tether/ns/default/sa/intruder"]
methods = ["GET"]
paths = ["/data"]
"#;

/// A sidecar's `/identity` on `app`.
fn identity(app: &Host, admin: u16) -> serde_json::Value {
    let (_, body) = curl(app, &[&format!("http://127.0.0.1:{admin}/identity")]).unwrap();
    serde_json::from_str(&body).unwrap()
}

fn ca_url(ip: &str) -> String {
    format!("https://{ip}:8443")
}

fn ca_metrics(ip: &str) -> String {
    format!("http://{ip}:9090/metrics")
}

/// The two replicas, each a real `tether-ca serve` on its own host (`hosts[0]`, `hosts[1]`), on
/// one PostgreSQL database, up as seen from `hosts[2]`; returns the second one's state dir (the
/// CLI of the survivor).
async fn start_replicas(
    procs: &mut Procs,
    ca: &Path,
    hosts: [&Host; 3],
    database: &str,
) -> PathBuf {
    let (dir1, dir2) = (procs.dir.join("ca1"), procs.dir.join("ca2"));
    let (state1, state2) = (dir1.to_str().unwrap(), dir2.to_str().unwrap());
    let td = ["--trust-domain", "demo.tether", "--database", database];
    let init = [
        &["--state-dir", state1, "init"][..],
        &td,
        &["--san", CA1_IP],
    ];
    run_on(hosts[0], ca, &init.concat());
    // The second replica's state dir, with its own API certificate for its own address.
    let add = ["--state-dir", state1, "replica", "add", "--out", state2];
    run_on(
        hosts[0],
        ca,
        &[&add[..], &["--id", "ca2", "--san", CA2_IP]].concat(),
    );
    for (i, (host, (state, ip))) in hosts[..2]
        .iter()
        .zip([(state1, CA1_IP), (state2, CA2_IP)])
        .enumerate()
    {
        let (listen, metrics) = (format!("{ip}:8443"), format!("{ip}:9090"));
        let serve = ["--state-dir", state, "serve", "--listen", &listen];
        let args = [&serve[..], &["--metrics-listen", &metrics]].concat();
        procs.spawn(host, &format!("ca{}", i + 1), ca, &args);
    }
    for ip in [CA1_IP, CA2_IP] {
        let up = eventually(Duration::from_secs(30), || {
            metric(hosts[2], &ca_metrics(ip), "tether_ca_crl_waiters", &[]).is_some()
        });
        assert!(up.await, "the replica on {ip} never came up");
    }
    dir2
}

/// Writes sidecar `name`'s config (`sections` after its `[ca]` listing both replicas, an
/// enrollment token for `identity` made with the CLI on `ca1`) and starts it on `app`.
fn start_sidecar(
    procs: &mut Procs,
    hosts: (&Host, &Host),
    bins: [&Path; 2],
    name: &str,
    identity: &str,
    sections: &str,
) {
    let (ca1, app) = hosts;
    let dir = procs.dir.clone();
    let state1 = dir.join("ca1");
    let token = run_on(
        ca1,
        bins[0],
        &[
            "--state-dir",
            state1.to_str().unwrap(),
            "enroll",
            &id(identity),
        ],
    );
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token.trim()).unwrap();
    let config = format!(
        "[ca]\nurls = [{:?}, {:?}]\nbundle = {:?}\ntoken_file = {token_file:?}\nstate_dir = {:?}\n{sections}",
        ca_url(CA1_IP),
        ca_url(CA2_IP),
        state1.join("bundle.pem"),
        dir.join(format!("state-{name}")),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    procs.spawn(
        app,
        &format!("sidecar-{name}"),
        bins[1],
        &["run", "--config", path.to_str().unwrap()],
    );
}

/// Waits until every sidecar on `app` with one of `admins` says it is ready.
async fn wait_ready(app: &Host, admins: &[u16]) {
    for admin in admins {
        let url = format!("http://127.0.0.1:{admin}/ready");
        let ready = eventually(Duration::from_secs(60), || {
            curl(app, &[&url]).is_some_and(|(code, _)| code == 200)
        });
        assert!(
            ready.await,
            "the sidecar with admin port {admin} never became ready"
        );
    }
}

/// Cuts `ca1` off and checks that the sidecars carry on through `ca2`: both CRL long-polls held
/// there within 2 s, renewals (forced with `POST /rotate`) through it, `/identity` naming it and
/// the failover counted.
async fn cut_the_first_replica(ca1: &Host, app: &Host) {
    let serials = [B_ADMIN, A_ADMIN].map(|a| identity(app, a)["serial"].clone());
    let cut = Instant::now();
    ca1.cut();
    let waiters_at_ca2 = || {
        let waiters = metric(app, &ca_metrics(CA2_IP), "tether_ca_crl_waiters", &[]);
        waiters.unwrap_or(0.0) >= 2.0
    };
    let moved = eventually(Duration::from_secs(20), waiters_at_ca2).await;
    let took = cut.elapsed();
    assert!(moved, "the long-polls never moved to ca2");
    println!("both CRL long-polls held at ca2 {took:?} after ca1's host was cut off");
    assert!(
        took < Duration::from_secs(2),
        "the long-polls took {took:?} to fail over"
    );

    for (admin, before) in [B_ADMIN, A_ADMIN].into_iter().zip(serials) {
        let rotate = format!("http://127.0.0.1:{admin}/rotate");
        let answer = curl(app, &["-X", "POST", &rotate]).map(|(code, _)| code);
        assert_eq!(answer, Some(202), "POST /rotate on {admin}");
        let renewed = eventually(Duration::from_secs(30), || {
            identity(app, admin)["serial"] != before
        });
        assert!(
            renewed.await,
            "no renewal through ca2 for the sidecar on {admin}"
        );
        let now = identity(app, admin);
        assert_eq!(now["ca_url"], ca_url(CA2_IP), "{now}");
        let metrics = format!("http://127.0.0.1:{admin}/metrics");
        let failovers = metric(app, &metrics, "tether_ca_failovers_total", &[]);
        assert!(
            failovers.unwrap() >= 1.0,
            "failovers on {admin}: {failovers:?}"
        );
    }
    println!(
        "both sidecars renewed through ca2 {:?} after the cut",
        cut.elapsed()
    );
}

/// A certificate for the intruder issued with the CLI on `ca2`, accepted by service-b's
/// sidecar, then revoked there with the CLI: a new connection with it is refused within 1 s of
/// the CLI's return.
async fn revoke_through_the_survivor(ca2: &Host, app: &Host, ca: &Path, dir2: &Path) -> Duration {
    let state = dir2.to_str().unwrap();
    let out = dir2.parent().unwrap().join("intruder");
    let issue = [
        "--state-dir",
        state,
        "issue",
        "--out",
        out.to_str().unwrap(),
    ];
    run_on(ca2, ca, &[&issue[..], &[&id(INTRUDER)]].concat());
    let (chain, key) = (out.join("chain.pem"), out.join("key.pem"));
    let url = format!("https://127.0.0.1:{B_INBOUND}/data");
    let args = [
        "-k",
        "--cert",
        chain.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &url,
    ];
    let call = || curl(app, &args).map(|(code, _)| code);
    assert_eq!(
        call(),
        Some(200),
        "the intruder's certificate before its revocation"
    );

    let serial = Pki::serial(&out).to_string();
    run_on(ca2, ca, &["--state-dir", state, "revoke", &serial]);
    let revoked = Instant::now();
    let refused = eventually(Duration::from_secs(10), || call().is_none()).await;
    let took = revoked.elapsed();
    assert!(refused, "the revocation never reached service-b's sidecar");
    assert_eq!(call(), None, "the revoked certificate is refused for good");
    took
}

/// service-b on `app` behind its inbound sidecar, and service-a's client sidecar whose outbound
/// routes to it, both enrolled with tokens made on `ca1` and ready.
async fn start_pair(
    procs: &mut Procs,
    (ca1, app): (&Host, &Host),
    [ca, proxy, service_b]: [&Path; 3],
) {
    let listen = format!("127.0.0.1:{APP_PORT}");
    procs.spawn(app, "service-b", service_b, &["--listen", &listen]);
    let policy = common::write_policy(&procs.dir, "b-policy.toml", B_POLICY);
    let b = format!(
        "[inbound]\nlisten = \"127.0.0.1:{B_INBOUND}\"\napp = \"{listen}\"\npolicy = {policy:?}\n\
         [admin]\nlisten = \"127.0.0.1:{B_ADMIN}\"\n"
    );
    let a = format!(
        "[outbound]\nlisten = \"127.0.0.1:{A_OUTBOUND}\"\n[admin]\nlisten = \"127.0.0.1:{A_ADMIN}\"\n\
         [services.service-b]\naddress = [\"127.0.0.1:{B_INBOUND}\"]\nidentity = \"{}\"\n",
        id(SERVICE_B)
    );
    start_sidecar(procs, (ca1, app), [ca, proxy], "b", SERVICE_B, &b);
    start_sidecar(procs, (ca1, app), [ca, proxy], "a", SERVICE_A, &a);
    wait_ready(app, &[B_ADMIN, A_ADMIN]).await;
}

#[tokio::test]
async fn a_replica_host_cut_off_under_load_costs_no_request_and_revocations_still_arrive() {
    let Some(net) = Net::new("hanetns") else {
        return;
    };
    let db = net.host("db", "10.78.0.10");
    let (ca1, ca2) = (net.host("ca1", CA1_IP), net.host("ca2", CA2_IP));
    let app = net.host("app", "10.78.0.20");
    let Some(pg) = postgres_in(&db) else {
        return;
    };
    let [ca, proxy, service_b] = binaries();
    let tmp = tempfile::tempdir().unwrap();
    let mut procs = Procs::new(tmp.path());
    let dir2 = start_replicas(&mut procs, &ca, [&ca1, &ca2, &app], &pg.url()).await;
    start_pair(&mut procs, (&ca1, &app), [&ca, &proxy, &service_b]).await;

    // 1. All up: service-a reaches service-b through the pair, both sidecars use ca1.
    let through = format!("http://127.0.0.1:{A_OUTBOUND}/data");
    let answer = curl(&app, &["-H", "Host: service-b", &through]);
    let (code, body) = answer.expect("an answer through the pair");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&id(SERVICE_A)),
        "service-b saw its caller: {body}"
    );
    for admin in [B_ADMIN, A_ADMIN] {
        assert_eq!(identity(&app, admin)["ca_url"], ca_url(CA1_IP));
    }
    let held = eventually(Duration::from_secs(20), || {
        metric(&app, &ca_metrics(CA1_IP), "tether_ca_crl_waiters", &[]).unwrap_or(0.0) >= 2.0
    });
    assert!(
        held.await,
        "the sidecars' CRL long-polls are not held at ca1"
    );
    let mut load = Load::start(&app, A_OUTBOUND);
    let flowing = eventually(Duration::from_secs(20), || {
        load.counts()["ok"].as_u64() >= Some(50)
    });
    assert!(flowing.await, "the load never got going: {}", load.counts());

    // 2. ca1's host vanishes mid-traffic.
    cut_the_first_replica(&ca1, &app).await;
    let during = load.counts();
    println!("load so far: {during}");
    assert_eq!(during["failed"], 0, "{during}");

    // 3. A revocation through the survivor arrives within 1 s.
    let took = revoke_through_the_survivor(&ca2, &app, &ca, &dir2).await;
    println!("revocation through ca2 enforced {took:?} after the CLI returned");
    assert!(
        took < Duration::from_secs(1),
        "the revocation took {took:?}"
    );

    // 4. ca1 comes back; not one request failed over the whole run.
    ca1.restore();
    let back = eventually(Duration::from_secs(30), || {
        metric(&app, &ca_metrics(CA1_IP), "tether_ca_crl_waiters", &[]).is_some()
    });
    assert!(
        back.await,
        "ca1 did not answer again after its host was restored"
    );
    let total = load.finish();
    println!("load over the whole run: {total}");
    assert_eq!(total["failed"], 0, "failed requests: {total}");
    assert!(total["ok"].as_u64() > during["ok"].as_u64(), "{total}");
}

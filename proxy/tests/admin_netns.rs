//! The admin listener facing a network, as in a Kubernetes pod, where it listens on the pod IP
//! so the kubelet can probe `/ready` and `/live` and Prometheus can scrape `/metrics`: those
//! answer any host, but `POST /rotate`, the one endpoint that makes the sidecar act, answers
//! only its own host's loopback. The sidecar runs on simulated host `side` with its admin on
//! `0.0.0.0`; curl on a second host `other` plays the rest of the pod network. Needs root for
//! the namespaces; skips with a `SKIPPED` line otherwise (and fails under CI).

mod common;

use common::hosts::{curl, Procs};
use common::{eventually, identity_section, Pki, OUTBOUND_SECTION, SERVICE_B};
use tether_testkit::netns::Net;

const SIDE_IP: &str = "10.79.0.10";
const ADMIN_PORT: u16 = 15100;

#[tokio::test]
async fn rotate_answers_loopback_only_while_probes_and_metrics_answer_the_network() {
    let Some(net) = Net::new("adminns") else {
        return;
    };
    let (side, other) = (net.host("side", SIDE_IP), net.host("other", "10.79.0.11"));
    let pki = Pki::new();
    let dir = pki.issue(SERVICE_B);
    let toml = format!(
        "{}{OUTBOUND_SECTION}[admin]\nlisten = \"0.0.0.0:{ADMIN_PORT}\"\n",
        identity_section(&dir, None)
    );
    let config = dir.join("side.toml");
    std::fs::write(&config, toml).unwrap();
    let proxy = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tether-proxy"));
    let mut procs = Procs::new(&dir);
    procs.spawn(
        &side,
        "sidecar",
        &proxy,
        &["run", "--config", config.to_str().unwrap()],
    );
    let remote = |path: &str| format!("http://{SIDE_IP}:{ADMIN_PORT}{path}");
    let ready = eventually(std::time::Duration::from_secs(20), || {
        curl(&other, &[&remote("/ready")]).is_some_and(|(code, _)| code == 200)
    })
    .await;
    assert!(ready, "/ready answers the network with 200");
    let (code, body) = curl(&other, &[&remote("/metrics")]).expect("metrics answer");
    assert_eq!(code, 200);
    assert!(body.contains("tether_"), "{body}");

    let (code, body) = curl(&other, &["-X", "POST", &remote("/rotate")]).expect("an answer");
    assert_eq!(code, 403, "POST /rotate from another host: {body}");
    assert!(body.contains("loopback"), "{body}");
    // The same request from the sidecar's own host goes through to the rotate logic (this
    // sidecar reads files, so it answers 409 rather than starting a renewal).
    let local = format!("http://127.0.0.1:{ADMIN_PORT}/rotate");
    let (code, body) = curl(&side, &["-X", "POST", &local]).expect("an answer");
    assert_eq!(code, 409, "POST /rotate from loopback: {body}");
}

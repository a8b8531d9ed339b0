//! Steps 1 and 2: the CA starts and enrols every sidecar with a one-time token, then the apps and
//! their sidecars start and enrol. Both end the story early if what they start does not come up.

use std::time::Duration;

use super::{Demo, CA_REPLICAS};
use crate::mesh::{id, Sidecar, A_POLICY, B_POLICY, MEMBERS, TRUST_DOMAIN};
use crate::probes::{identity, wait_port, wait_ready};

/// How long the CA and each sidecar get to come up: generous, for a loaded CI machine.
const CA_START: Duration = Duration::from_secs(10);
/// Each sidecar enrols with the CA before it reports ready, hence longer than the CA's start.
const SIDECAR_READY: Duration = Duration::from_secs(15);

/// Step 1: the CA serves the trust domain and enrols the five sidecars.
pub(crate) async fn start_ca_and_enrol(d: &mut Demo) -> Result<(), String> {
    d.narrator
        .step("A certificate authority issues every identity from one-time tokens");
    d.ca(&["init", "--trust-domain", TRUST_DOMAIN])?;
    let second = d.procs.path(CA_REPLICAS[1].1).display().to_string();
    d.ca(&["replica", "add", "--out", &second, "--id", "replica-2"])?;
    let mut up = true;
    for (i, port) in [d.ports.ca, d.ports.ca2].into_iter().enumerate() {
        d.start_ca(i)?;
        up &= wait_port(port, CA_START).await;
    }
    if up {
        // Long enough for a failed bind to have ended the process.
        tokio::time::sleep(Duration::from_millis(200)).await;
        up = CA_REPLICAS.iter().all(|(name, _)| d.procs.running(name));
    }
    let (ca, ca2) = (d.ports.ca, d.ports.ca2);
    d.narrator.check(
        up,
        &format!(
            "two tether-ca replicas serve trust domain {TRUST_DOMAIN}, sharing one SQLite file"
        ),
        &format!("https://127.0.0.1:{ca} (init) and https://127.0.0.1:{ca2} (replica add)"),
    );
    if !up {
        return Err("the CA replicas did not start; see tether-ca.log and tether-ca-2.log".into());
    }
    for (name, path) in MEMBERS {
        let token = d.ca(&["enroll", &id(path)])?;
        write(d, &format!("{name}.token"), &token)?;
    }
    d.narrator.check(
        true,
        "enrolled 5 sidecars with single-use tokens (stored at the CA only as hashes)",
        "gateway, service-a ×2, service-b, intruder",
    );
    Ok(())
}

/// Step 2: service-b, two replicas of service-a, and the five sidecars, all enrolled and ready.
pub(crate) async fn start_apps_and_sidecars(d: &mut Demo) -> Result<(), String> {
    d.narrator.step("Start the apps and their sidecars");
    write(d, "b-policy.toml", B_POLICY)?;
    write(d, "a-policy.toml", A_POLICY)?;
    let sidecars = d.ports.sidecars(d.procs.dir());
    start_apps(d)?;
    for s in &sidecars {
        let path = d.procs.path(&format!("{}.toml", s.name));
        std::fs::write(&path, &s.config).map_err(|e| e.to_string())?;
        let config = path.display().to_string();
        let args = ["run", "--config", config.as_str(), "--workers", "1"].map(String::from);
        d.procs.spawn(&s.process(), "tether-proxy", &args)?;
    }
    let all_ready = wait_all_ready(d, &sidecars).await;
    let gw = identity(d.ports.gateway.admin).await;
    d.narrator.check(
        all_ready,
        "all 5 sidecars enrolled and report /ready",
        &format!(
            "gateway is {} (serial {}, expires {})",
            gw["spiffe_id"], gw["serial"], gw["not_after"]
        ),
    );
    if !all_ready {
        return Err("sidecars did not become ready".into());
    }
    Ok(())
}

/// The mesh-unaware apps: service-b, and service-a's replicas calling it via their sidecars.
fn start_apps(d: &mut Demo) -> Result<(), String> {
    let b = [
        "--listen".to_string(),
        format!("127.0.0.1:{}", d.ports.b.app),
    ];
    d.procs.spawn("service-b", "service-b", &b)?;
    for (i, r) in d.ports.a.iter().enumerate() {
        let name = format!("service-a-{}", i + 1);
        let args = [
            "--listen".to_string(),
            format!("127.0.0.1:{}", r.app),
            "--name".into(),
            name.clone(),
            "--sidecar".into(),
            format!("127.0.0.1:{}", r.outbound),
        ];
        d.procs.spawn(&name, "service-a", &args)?;
    }
    Ok(())
}

/// Waits for every sidecar's `/ready`, recording a failed claim (with its log) for each one that
/// is not.
async fn wait_all_ready(d: &mut Demo, sidecars: &[Sidecar]) -> bool {
    let mut all_ready = true;
    for s in sidecars {
        let ready = wait_ready(s.admin, SIDECAR_READY).await;
        all_ready &= ready;
        if !ready {
            let exited = if d.procs.running(&s.process()) {
                ""
            } else {
                " (the process exited)"
            };
            let log = d.procs.path(&format!("{}.log", s.process()));
            d.narrator.check(
                false,
                &format!("sidecar {} ready", s.name),
                &format!("see {}{exited}", log.display()),
            );
        }
    }
    all_ready
}

/// Writes `text` to `file` in the temp dir.
fn write(d: &Demo, file: &str, text: &str) -> Result<(), String> {
    std::fs::write(d.procs.path(file), text).map_err(|e| e.to_string())
}

//! `tether-demo`: the whole Tether mesh on one machine, narrated and checked.
//!
//! ```sh
//! make demo                                  # builds release binaries, then runs this
//! target/release/tether-demo                 # the same, once built
//! KEEP=1 target/release/tether-demo          # keep the temp dir also when every step passes
//! TETHER_DEMO_BASE_PORT=20000 target/release/tether-demo   # fixed ports instead of free ones
//! ```
//!
//! user → gateway sidecar → (two replicas of) service-a behind their sidecars → service-b behind
//! its sidecar, with a CA issuing every identity from one-time tokens. Every claim printed is
//! checked; the exit status is 0 only if every step passed. Every process started is stopped on
//! every exit path, Ctrl-C included.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use demo_services::http::get_via;

const TD: &str = "demo.tether";

fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

/// Children by name; all killed on drop, so no exit path leaves a process behind.
#[derive(Default)]
struct Procs(Vec<(String, Child)>);

impl Procs {
    /// Whether the process started as `name` is still running (a port someone else holds makes
    /// a server exit at once, while a plain connect to that port still succeeds).
    fn running(&mut self, name: &str) -> bool {
        self.0
            .iter_mut()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    fn kill(&mut self, name: &str) {
        if let Some(i) = self.0.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.0.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Demo {
    bin: PathBuf,
    dir: PathBuf,
    procs: Procs,
    color: bool,
    failures: Vec<String>,
    next_port: Option<u16>,
}

/// Ports of everything the demo starts.
struct Ports {
    ca: u16,
    b_app: u16,
    b_in: u16,
    b_admin: u16,
    a: [(u16, u16, u16, u16); 2], // app, inbound, outbound, admin
    gw_out: u16,
    gw_admin: u16,
    intr_out: u16,
    intr_admin: u16,
}

impl Demo {
    fn port(&mut self) -> u16 {
        if let Some(p) = self.next_port.as_mut() {
            *p += 1;
            return *p - 1;
        }
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0)
    }

    fn say(&self, text: &str) {
        println!("{text}");
    }

    fn step(&mut self, n: u32, title: &str) {
        let t = format!("── {n}. {title}");
        if self.color {
            println!("\n\x1b[1m{t}\x1b[0m");
        } else {
            println!("\n{t}");
        }
    }

    /// Records one checked claim with its evidence.
    fn check(&mut self, ok: bool, claim: &str, evidence: &str) {
        let (mark, color) = if ok {
            ("✔", "\x1b[32m")
        } else {
            ("✘", "\x1b[31m")
        };
        if self.color {
            println!("  {color}{mark}\x1b[0m {claim}");
        } else {
            println!("  {mark} {claim}");
        }
        for line in evidence.lines().filter(|l| !l.trim().is_empty()) {
            println!("      {line}");
        }
        if !ok {
            self.failures.push(claim.to_string());
        }
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[String]) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(self.bin.join(program))
            .args(args)
            .env("TETHER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        self.procs.0.push((name.to_string(), child));
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<std::process::Output, String> {
        Command::new(self.bin.join(program))
            .args(args)
            .output()
            .map_err(|e| format!("running {program}: {e}"))
    }

    fn ca(&self, args: &[&str]) -> Result<String, String> {
        let state = self.dir.join("ca");
        let mut all = vec!["--state-dir", state.to_str().unwrap_or("ca")];
        all.extend_from_slice(args);
        let out = self.run("tether-ca", &all)?;
        if !out.status.success() {
            return Err(format!(
                "tether-ca {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr(port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

async fn admin(port: u16, path: &str) -> (u16, String) {
    get_via(addr(port), "admin", path)
        .await
        .unwrap_or((0, String::new()))
}

async fn post(port: u16, path: &str) -> u16 {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr(port)).await else {
        return 0;
    };
    let Ok((mut s, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
    else {
        return 0;
    };
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("static request");
    s.send_request(req)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn identity(port: u16) -> serde_json::Value {
    let (_, body) = admin(port, "/identity").await;
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

async fn wait_ready(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if admin(port, "/ready").await.0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn sidecar_config(d: &Demo, p: &Ports, name: &str, body: &str) -> String {
    format!(
        "[ca]\nurls = [\"https://127.0.0.1:{}\"]\nbundle = {:?}\ntoken_file = {:?}\nstate_dir = {:?}\n\n{body}",
        p.ca,
        d.dir.join("ca/bundle.pem"),
        d.dir.join(format!("{name}.token")),
        d.dir.join(format!("state-{name}")),
    )
}

async fn scenario(d: &mut Demo) -> Result<(), String> {
    let p = Ports {
        ca: d.port(),
        b_app: d.port(),
        b_in: d.port(),
        b_admin: d.port(),
        a: [
            (d.port(), d.port(), d.port(), d.port()),
            (d.port(), d.port(), d.port(), d.port()),
        ],
        gw_out: d.port(),
        gw_admin: d.port(),
        intr_out: d.port(),
        intr_admin: d.port(),
    };
    let started = Instant::now();

    // 1. CA ---------------------------------------------------------------------------------
    d.step(
        1,
        "A certificate authority issues every identity from one-time tokens",
    );
    d.ca(&["init", "--trust-domain", TD])?;
    let ca_args = vec![
        "--state-dir".to_string(),
        d.dir.join("ca").display().to_string(),
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{}", p.ca),
    ];
    d.spawn("tether-ca", "tether-ca", &ca_args)?;
    let mut up = wait_port(p.ca, Duration::from_secs(10)).await;
    if up {
        // Long enough for a failed bind to have ended the process.
        tokio::time::sleep(Duration::from_millis(200)).await;
        up = d.procs.running("tether-ca");
    }
    d.check(
        up,
        &format!(
            "tether-ca serves trust domain {TD} on https://127.0.0.1:{}",
            p.ca
        ),
        "",
    );
    if !up {
        return Err("the CA did not start; see tether-ca.log".into());
    }
    let members = [
        ("gateway", "ns/edge/sa/gateway"),
        ("a1", "ns/default/sa/service-a"),
        ("a2", "ns/default/sa/service-a"),
        ("b", "ns/default/sa/service-b"),
        ("intruder", "ns/default/sa/intruder"),
    ];
    for (name, path) in members {
        let token = d.ca(&["enroll", &id(path)])?;
        std::fs::write(d.dir.join(format!("{name}.token")), token).map_err(|e| e.to_string())?;
    }
    d.check(
        true,
        "enrolled 5 sidecars with single-use tokens (stored at the CA only as hashes)",
        "gateway, service-a ×2, service-b, intruder",
    );

    // 2. Apps and sidecars --------------------------------------------------------------------
    d.step(2, "Start the apps and their sidecars");
    std::fs::write(
        d.dir.join("b-policy.toml"),
        "[[rule]]\nname = \"a-reads-data\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\nmethods = [\"GET\"]\npaths = [\"/data\", \"/data/*\"]\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        d.dir.join("a-policy.toml"),
        "[[rule]]\nname = \"gateway-reads\"\nfrom = [\"spiffe://demo.tether/ns/edge/sa/gateway\"]\nmethods = [\"GET\"]\n",
    )
    .map_err(|e| e.to_string())?;
    let b_cfg = sidecar_config(
        d,
        &p,
        "b",
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:{}\"\napp = \"127.0.0.1:{}\"\npolicy = {:?}\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
            p.b_in, p.b_app, d.dir.join("b-policy.toml"), p.b_admin
        ),
    );
    let mut configs = vec![("b".to_string(), b_cfg)];
    for (i, (app, inb, out, adm)) in p.a.iter().enumerate() {
        let name = format!("a{}", i + 1);
        let cfg = sidecar_config(
            d,
            &p,
            &name,
            &format!(
                "[inbound]\nlisten = \"127.0.0.1:{inb}\"\napp = \"127.0.0.1:{app}\"\npolicy = {:?}\n\
                 [outbound]\nlisten = \"127.0.0.1:{out}\"\n\
                 [services.service-b]\naddress = [\"127.0.0.1:{}\"]\nidentity = \"{}\"\n\
                 [admin]\nlisten = \"127.0.0.1:{adm}\"\n",
                d.dir.join("a-policy.toml"),
                p.b_in,
                id("ns/default/sa/service-b")
            ),
        );
        configs.push((name, cfg));
    }
    configs.push((
        "gateway".into(),
        sidecar_config(
            d,
            &p,
            "gateway",
            &format!(
                "[outbound]\nlisten = \"127.0.0.1:{}\"\n[services.service-a]\naddress = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nidentity = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
                p.gw_out, p.a[0].1, p.a[1].1, id("ns/default/sa/service-a"), p.gw_admin
            ),
        ),
    ));
    configs.push((
        "intruder".into(),
        sidecar_config(
            d,
            &p,
            "intruder",
            &format!(
                "[outbound]\nlisten = \"127.0.0.1:{}\"\n[services.service-b]\naddress = [\"127.0.0.1:{}\"]\nidentity = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
                p.intr_out, p.b_in, id("ns/default/sa/service-b"), p.intr_admin
            ),
        ),
    ));
    d.spawn(
        "service-b",
        "service-b",
        &["--listen".into(), format!("127.0.0.1:{}", p.b_app)],
    )?;
    for (i, (app, _, out, _)) in p.a.iter().enumerate() {
        let args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{app}"),
            "--name".into(),
            format!("service-a-{}", i + 1),
            "--sidecar".into(),
            format!("127.0.0.1:{out}"),
        ];
        d.spawn(&format!("service-a-{}", i + 1), "service-a", &args)?;
    }
    for (name, cfg) in &configs {
        let path = d.dir.join(format!("{name}.toml"));
        std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
        d.spawn(
            &format!("sidecar-{name}"),
            "tether-proxy",
            &[
                "run".into(),
                "--config".into(),
                path.display().to_string(),
                "--workers".into(),
                "1".into(),
            ],
        )?;
    }
    let admins = [
        ("b", p.b_admin),
        ("a1", p.a[0].3),
        ("a2", p.a[1].3),
        ("gateway", p.gw_admin),
        ("intruder", p.intr_admin),
    ];
    let mut all_ready = true;
    for (name, port) in admins {
        let r = wait_ready(port, Duration::from_secs(15)).await;
        all_ready &= r;
        if !r {
            let exited = if d.procs.running(&format!("sidecar-{name}")) {
                ""
            } else {
                " (the process exited)"
            };
            d.check(
                false,
                &format!("sidecar {name} ready"),
                &format!(
                    "see {}{exited}",
                    d.dir.join(format!("sidecar-{name}.log")).display()
                ),
            );
        }
    }
    let gw = identity(p.gw_admin).await;
    d.check(
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

    // 3. The allowed path -----------------------------------------------------------------------
    d.step(3, "user → gateway → service-a → service-b");
    let mut replicas = BTreeSet::new();
    let mut last = serde_json::Value::Null;
    let mut all_ok = true;
    for _ in 0..10 {
        match get_via(addr(p.gw_out), "service-a", "/").await {
            Ok((200, body)) => {
                let j = json(&body);
                replicas.insert(j["replica"].as_str().unwrap_or("").to_string());
                last = j;
            }
            other => {
                all_ok = false;
                last = serde_json::json!(format!("{other:?}"));
            }
        }
    }
    let chain_ok = last["caller"] == id("ns/edge/sa/gateway")
        && last["service_b"]["caller"] == id("ns/default/sa/service-a");
    d.check(all_ok, "10 of 10 user requests answered 200", "");
    d.check(
        chain_ok,
        "each hop saw the verified caller",
        &format!(
            "service-a saw  {}\nservice-b saw  {}\nservice-b's x-forwarded-client-cert: {}",
            last["caller"], last["service_b"]["caller"], last["service_b"]["xfcc"]
        ),
    );
    d.check(
        replicas.len() == 2,
        "both replicas of service-a served",
        &format!("{replicas:?}"),
    );

    // 4. Denied by policy -----------------------------------------------------------------------
    d.step(4, "An intruder — a valid mesh member — calls service-b");
    let (status, _) = get_via(addr(p.intr_out), "service-b", "/data")
        .await
        .unwrap_or((0, String::new()));
    d.check(
        status == 403,
        "intruder → service-b: 403 by policy (default deny)",
        &format!("status {status}"),
    );
    let check = d.run(
        "tether-proxy",
        &[
            "authz",
            "check",
            "--policy",
            &d.dir.join("b-policy.toml").display().to_string(),
            "--from",
            &id("ns/default/sa/intruder"),
            "--method",
            "GET",
            "--path",
            "/data",
        ],
    )?;
    let explained = String::from_utf8_lossy(&check.stdout).to_string();
    d.check(
        check.status.code() == Some(1) && explained.contains("default deny"),
        "tether-proxy authz check explains why",
        &explained,
    );

    // 5. Refused at the handshake ---------------------------------------------------------------
    d.step(
        5,
        "Clients without a mesh certificate are refused at the handshake",
    );
    let b_in = addr(p.b_in);
    let no_cert = tls_get(b_in, None).await;
    d.check(
        no_cert.is_err(),
        "no client certificate → connection closed",
        &no_cert.err().unwrap_or_default(),
    );
    let evil = d.dir.join("evil-ca");
    let out = d.run(
        "tether-ca",
        &[
            "--state-dir",
            &evil.display().to_string(),
            "init",
            "--trust-domain",
            TD,
        ],
    )?;
    let evil_creds = d.dir.join("evil-creds");
    let out2 = d.run(
        "tether-ca",
        &[
            "--state-dir",
            &evil.display().to_string(),
            "issue",
            &id("ns/default/sa/service-a"),
            "--out",
            &evil_creds.display().to_string(),
        ],
    )?;
    if !out.status.success() || !out2.status.success() {
        return Err("could not make the foreign CA".into());
    }
    let foreign = tls_get(b_in, Some(&evil_creds)).await;
    d.check(
        foreign.is_err(),
        "a certificate for service-a's very ID from another CA → refused",
        &foreign.err().unwrap_or_else(|| "it was accepted".into()),
    );
    if let Some(text) = external_clients(b_in, &evil_creds) {
        d.say(&text);
    }

    // 6. Revocation -------------------------------------------------------------------------------
    d.step(6, "Revoke one service-a replica's certificate");
    let serial = identity(p.a[0].3).await["serial"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let a1_app = addr(p.a[0].0);
    let ok_before = matches!(get_via(a1_app, "service-a", "/").await, Ok((200, _)));
    let t = Instant::now();
    let revoked = d.ca(&["revoke", &serial, "--reason", "key-compromise"]);
    let mut refused_after = None;
    while t.elapsed() < Duration::from_secs(10) {
        if !matches!(get_via(a1_app, "service-a", "/").await, Ok((200, _))) {
            refused_after = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.check(
        ok_before && revoked.is_ok() && refused_after.is_some(),
        &format!(
            "service-b refuses replica 1 {} after `tether-ca revoke`",
            refused_after
                .map(|e| format!("{} ms", e.as_millis()))
                .unwrap_or_else(|| "never".into())
        ),
        &format!("{} (serial {serial})", revoked.unwrap_or_else(|e| e)),
    );
    let mut served = BTreeSet::new();
    let mut ok = 0;
    for _ in 0..10 {
        if let Ok((200, body)) = get_via(addr(p.gw_out), "service-a", "/").await {
            ok += 1;
            served.insert(json(&body)["replica"].as_str().unwrap_or("").to_string());
        }
    }
    d.check(
        ok == 10 && served.iter().all(|r| r == "service-a-2"),
        "the gateway keeps serving users through the other replica",
        &format!("{ok}/10 answered 200, served by {served:?}"),
    );

    // 7. Rotation under traffic ---------------------------------------------------------------
    d.step(7, "Rotate every certificate while users keep calling");
    let rotating = [
        ("gateway", p.gw_admin),
        ("a2", p.a[1].3),
        ("b", p.b_admin),
        ("intruder", p.intr_admin),
    ];
    let mut before = Vec::new();
    for (_, port) in rotating {
        before.push(
            identity(port).await["serial"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    let gw_out = addr(p.gw_out);
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, 0u32);
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match get_via(gw_out, "service-a", "/").await {
                Ok((200, _)) => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, port) in rotating {
        post(port, "/rotate").await;
    }
    let (ok, failed) = load.await.unwrap_or((0, u32::MAX));
    let mut lines = String::new();
    let mut all_new = true;
    for ((name, port), old) in rotating.iter().zip(&before) {
        let new = identity(*port).await["serial"]
            .as_str()
            .unwrap_or("")
            .to_string();
        all_new &= &new != old && !new.is_empty();
        lines.push_str(&format!("{name:<9} {old} → {new}\n"));
    }
    lines.push_str("(replica 1 stays revoked: the CA refuses to renew a revoked certificate)");
    d.check(
        all_new,
        "every live sidecar has a new certificate (fresh key, no restart)",
        &lines,
    );
    d.check(
        failed == 0 && ok > 0,
        &format!("{failed} failed requests during the rotation ({ok} succeeded)"),
        "",
    );

    // 8. CA outage --------------------------------------------------------------------------------
    d.step(8, "The CA goes down");
    d.procs.kill("tether-ca");
    let mut ok = 0;
    for _ in 0..10 {
        if matches!(get_via(gw_out, "service-a", "/").await, Ok((200, _))) {
            ok += 1;
        }
    }
    d.check(
        ok == 10,
        "traffic keeps flowing on cached certificates and CRLs",
        &format!("{ok}/10 answered 200 with the CA stopped"),
    );
    let gw = identity(p.gw_admin).await;
    let outage = gw["seconds_until_outage"].as_i64().unwrap_or(0);
    d.check(
        outage > 0,
        &format!(
            "the gateway reports {} min until outage if the CA stays down",
            outage / 60
        ),
        "",
    );
    d.spawn("tether-ca", "tether-ca", &ca_args)?;
    let back = wait_port(p.ca, Duration::from_secs(10)).await;
    let old = gw["serial"].as_str().unwrap_or("").to_string();
    post(p.gw_admin, "/rotate").await;
    let mut renewed = String::new();
    for _ in 0..100 {
        renewed = identity(p.gw_admin).await["serial"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if renewed != old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.check(
        back && renewed != old,
        "the CA is back and issuing again",
        &format!("gateway renewed: {old} → {renewed}"),
    );

    // 9. Metrics ----------------------------------------------------------------------------------
    d.step(9, "What the sidecars counted (Prometheus /metrics)");
    let (_, b_metrics) = admin(p.b_admin, "/metrics").await;
    let (_, gw_metrics) = admin(p.gw_admin, "/metrics").await;
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
    d.check(
        counted,
        "denials, refused handshakes and revocations are all visible",
        &summary,
    );

    d.say(&format!(
        "\nscenario finished in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Sums the samples of `metric` by the value of `label` from Prometheus text.
fn sum_by(text: &str, metric: &str, label: &str) -> String {
    let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
    for line in text
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
    {
        let Some((labels, value)) = line[metric.len()..].rsplit_once(' ') else {
            continue;
        };
        let key = labels
            .split(&['{', '}', ','][..])
            .find_map(|kv| kv.strip_prefix(&format!("{label}=\"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_default();
        *sums.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    sums.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// An mTLS GET straight at a sidecar's inbound with `creds` (a dir with cert/chain/key.pem) or no
/// certificate. Ok(status) if the server answered HTTP; Err(why) if it refused the connection.
async fn tls_get(to: SocketAddr, creds: Option<&Path>) -> Result<u16, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer));
    let mut config = match creds {
        Some(dir) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(dir.join("chain.pem"))
                    .map_err(|e| e.to_string())?
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
            let key =
                PrivateKeyDer::from_pem_file(dir.join("key.pem")).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("service-b").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/data")
        .header("host", "service-b")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    // TLS 1.3: a refused client certificate shows up on the first read, i.e. here.
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("server closed the connection: {e}"))?;
    Ok(resp.status().as_u16())
}

/// The same two refusals seen by curl and openssl s_client, when they are installed.
fn external_clients(to: SocketAddr, foreign: &Path) -> Option<String> {
    let mut out = String::new();
    if let Ok(o) = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "5"])
        .arg(format!("https://{to}/data"))
        .output()
    {
        let err = String::from_utf8_lossy(&o.stderr);
        out.push_str(&format!(
            "      curl (no certificate): exit {} {}\n",
            o.status.code().unwrap_or(-1),
            err.trim()
        ));
    }
    let child = Command::new("openssl")
        .args(["s_client", "-connect", &to.to_string(), "-tls1_3", "-quiet"])
        .arg("-cert")
        .arg(foreign.join("cert.pem"))
        .arg("-cert_chain")
        .arg(foreign.join("chain.pem"))
        .arg("-key")
        .arg(foreign.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    if let Ok(mut child) = child {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin
                .write_all(b"GET /data HTTP/1.1\r\nHost: service-b\r\nConnection: close\r\n\r\n");
        }
        if let Ok(o) = child.wait_with_output() {
            let err = String::from_utf8_lossy(&o.stderr);
            let alert = err
                .lines()
                .find(|l| l.contains("alert"))
                .unwrap_or("connection closed")
                .trim()
                .to_string();
            out.push_str(&format!("      openssl s_client (foreign CA): {alert}\n"));
        }
    }
    (!out.is_empty()).then(|| out.trim_end().to_string())
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // These probes test what the *server* refuses; they never send anything secret.
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"));
    for needed in ["tether-ca", "tether-proxy", "service-a", "service-b"] {
        if !bin.join(needed).exists() {
            eprintln!(
                "tether-demo: {} is missing; run `make demo` (it builds everything first)",
                bin.join(needed).display()
            );
            return std::process::ExitCode::from(2);
        }
    }
    let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("tether-demo: cannot create {}: {e}", dir.display());
        return std::process::ExitCode::from(2);
    }
    let next_port = std::env::var("TETHER_DEMO_BASE_PORT")
        .ok()
        .and_then(|p| p.parse().ok());
    let mut demo = Demo {
        bin,
        dir: dir.clone(),
        procs: Procs::default(),
        color: std::io::stdout().is_terminal(),
        failures: Vec::new(),
        next_port,
    };
    println!("Tether demo — state, configs and logs in {}", dir.display());
    let outcome = tokio::select! {
        r = scenario(&mut demo) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    // Stop everything before reporting, on every path.
    demo.procs = Procs::default();
    let keep = std::env::var("KEEP").is_ok_and(|v| v == "1");
    let passed = outcome.is_ok() && demo.failures.is_empty();
    // A failed run keeps its directory and prints its logs' last lines: on CI that output is all
    // there is to diagnose it with.
    if !passed {
        print_log_tails(&dir);
    } else if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match (outcome, demo.failures.is_empty()) {
        (Ok(()), true) => {
            println!(
                "\nAll steps passed.{}",
                if keep {
                    format!(" Kept {}", dir.display())
                } else {
                    String::new()
                }
            );
            std::process::ExitCode::SUCCESS
        }
        (outcome, _) => {
            if let Err(e) = outcome {
                println!("\nstopped: {e}");
            }
            for f in &demo.failures {
                println!("failed: {f}");
            }
            println!("(logs, configs and state kept in {})", dir.display());
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints the last lines of every log the demo wrote, for a failed run.
fn print_log_tails(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!("\n── last lines of {}", log.display());
        for line in &lines[lines.len().saturating_sub(12)..] {
            println!("   {line}");
        }
    }
}

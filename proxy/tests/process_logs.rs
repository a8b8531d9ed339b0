//! The `tether-proxy` binary's logs as an operator runs it: `--log-format json` (and
//! `TETHER_LOG_FORMAT`) makes every process log line a JSON object whose spans name the caller
//! and the request id; the access log follows logrotate, by SIGHUP or by noticing the rename;
//! and a log that cannot be opened, or an unknown format, is refused at start.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tether-proxy");

/// Starts a sidecar process on `config` (in `dir`) with its stderr in `dir/<name>.stderr`.
fn spawn(dir: &Path, name: &str, config: &str, flags: &[&str], env: &[(&str, &str)]) -> Child {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let stderr = std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .args(flags)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Child(child)
}

/// Whether the file at `path` has a line containing `needle`.
fn has_line(path: &Path, needle: &str) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().any(|l| l.contains(needle))
}

/// GET `path` through the outbound on `port` with request id `id`; returns the status.
async fn get_with_id(port: u16, path: &str, id: &str) -> u16 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    get(addr, "service-b", path, &[("x-request-id", id)])
        .await
        .0
        .as_u16()
}

/// Waits until `path` has a line containing `needle`.
async fn wait_for_line(path: &Path, needle: &str) -> bool {
    eventually(Duration::from_secs(10), || has_line(path, needle)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_process_logs_and_an_access_log_that_follows_logrotate() {
    let pki = Pki::new();
    let d = pki.dir.path().to_path_buf();
    let app = start_app().await;
    let (b_dir, a_dir) = (pki.issue(SERVICE_B), pki.issue(SERVICE_A));
    let pol = write_policy(&d, "policy.toml", DATA_POLICY);
    let (b_port, a_port) = (free_port(), free_port());
    let b_cfg = format!(
        "{}[inbound]\nlisten = \"127.0.0.1:{b_port}\"\napp = \"{app}\"\npolicy = {pol:?}\n",
        identity_section(&b_dir, None)
    );
    let a_log = d.join("a.log");
    let a_cfg = format!(
        "{}[outbound]\nlisten = \"127.0.0.1:{a_port}\"\n{}\n[access_log]\npath = {:?}\n",
        identity_section(&a_dir, None),
        service_section("service-b", &["127.0.0.1:0".parse().unwrap()], SERVICE_B)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{b_port}")),
        a_log.display().to_string()
    );
    // b logs its requests' debug lines too: each inside the request's span.
    let b_env = [("TETHER_LOG", "info,tether_proxy=debug")];
    let b = spawn(&d, "b", &b_cfg, &["--log-format", "json"], &b_env);
    let a = spawn(&d, "a", &a_cfg, &[], &[("TETHER_LOG_FORMAT", "json")]);
    wait_for_port(b_port);
    wait_for_port(a_port);

    assert_eq!(get_with_id(a_port, "/data/1", "first").await, 200);
    assert_eq!(get_with_id(a_port, "/secret", "denied-one").await, 403);
    assert!(
        wait_for_line(&a_log, "\"first\"").await,
        "no access-log line"
    );

    // JSON process logs: every line of both sidecars parses; the deny names caller and id.
    let b_err = d.join("b.stderr");
    assert!(wait_for_line(&b_err, "denied").await, "no deny line");
    for name in ["a.stderr", "b.stderr"] {
        let text = std::fs::read_to_string(d.join(name)).unwrap();
        assert!(!text.is_empty(), "{name} is empty");
        for line in text.lines() {
            let _: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
        }
    }
    let text = std::fs::read_to_string(&b_err).unwrap();
    let deny = text.lines().find(|l| l.contains("denied")).unwrap();
    let deny: Value = serde_json::from_str(deny).unwrap();
    // At debug, a request's lines run inside its span, which carries its id.
    let in_span = text.lines().any(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        spans
            .iter()
            .any(|s| s["name"] == "request" && s["request_id"] == "denied-one")
    });
    assert!(
        in_span,
        "no line inside the request span of \"denied-one\": {text}"
    );
    // The request's id is a field of the line; the connection's span names the caller.
    assert_eq!(deny["request_id"], "denied-one", "{deny}");
    let spans = deny["spans"].to_string();
    assert!(
        spans.contains(&id(SERVICE_A)),
        "the caller's identity: {deny}"
    );

    // logrotate with `postrotate kill -HUP`: the next line goes to a new file at the path.
    std::fs::rename(&a_log, d.join("a.log.1")).unwrap();
    let pid = a.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    // SIGHUP is handled, not the default (terminate): the sidecar still serves.
    assert!(
        eventually(Duration::from_secs(10), || std::fs::metadata(&a_log)
            .is_ok())
        .await,
        "SIGHUP did not reopen the access log"
    );
    // A sidecar with no access log ignores SIGHUP too, rather than dying of it.
    let b_pid = b.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &b_pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(get_with_id(a_port, "/data/2", "after-hup").await, 200);
    assert!(wait_for_line(&a_log, "\"after-hup\"").await);
    assert!(!has_line(&d.join("a.log.1"), "after-hup"));

    // Renamed with no signal at all: noticed within about a second.
    std::fs::rename(&a_log, d.join("a.log.2")).unwrap();
    let mut n = 0;
    let moved = loop {
        n += 1;
        assert_eq!(
            get_with_id(a_port, "/data/3", &format!("renamed-{n}")).await,
            200
        );
        if has_line(&a_log, "renamed-") || n == 40 {
            break has_line(&a_log, "renamed-");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        moved,
        "lines still go to the renamed file after {n} requests"
    );
}

#[test]
fn an_access_log_that_cannot_be_opened_or_an_unknown_log_format_is_refused_at_start() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let dir = pki.issue(SERVICE_A);
    let base = format!(
        "{}[outbound]\nlisten = \"127.0.0.1:0\"\n",
        identity_section(&dir, None)
    );
    let missing = d.join("no-such-dir").join("access.log");
    let config = d.join("a.toml");
    std::fs::write(
        &config,
        format!(
            "{base}[access_log]\npath = {:?}\n",
            missing.display().to_string()
        ),
    )
    .unwrap();
    let out = run_until_exit(Command::new(BIN).args(["run", "--config"]).arg(&config));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    std::fs::write(&config, &base).unwrap();
    let out = run_until_exit(
        Command::new(BIN)
            .args(["run", "--log-format", "yaml", "--config"])
            .arg(&config),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"text\" or \"json\""), "{err}");
}

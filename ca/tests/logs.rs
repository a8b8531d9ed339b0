//! `tether-ca serve`'s process log as a log pipeline reads it: with `--log-format json` (or
//! `TETHER_LOG_FORMAT=json`) every line, from the first to the last, is one JSON object; the
//! default stays human-readable; an unknown format is refused before anything starts.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Runs `serve` on a fresh CA with `format` (by flag, or by env when `by_env`) until it has
/// said where it serves, then stops it with SIGTERM; returns its stderr.
fn serve_and_stop(format: &str, by_env: bool) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let out = ca_cli(&dir, &["init", "--trust-domain", "test.tether"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = tmp.path().join("serve.log");
    let mut cmd = bin();
    cmd.arg("--state-dir").arg(&dir);
    if by_env {
        cmd.env("TETHER_LOG_FORMAT", format);
    } else {
        cmd.args(["--log-format", format]);
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        read().contains("serving trust domain")
    });
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = child.wait().unwrap();
    assert!(started, "serve never said where it serves: {}", read());
    assert!(status.success(), "{status}: {}", read());
    read()
}

#[test]
fn json_logs_are_one_object_per_line_from_start_to_stop() {
    for by_env in [false, true] {
        let text = serve_and_stop("json", by_env);
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        }
        assert!(text.contains("\"message\":\"tether-ca stopped\""), "{text}");
    }
    // The default is text, for people.
    let text = serve_and_stop("text", false);
    assert!(text.contains("tether-ca stopped"), "{text}");
    assert!(!text.trim_start().starts_with('{'), "{text}");
}

#[test]
fn an_unknown_log_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ca_cli(tmp.path(), &["--log-format", "xml", "serve"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"text\" or \"json\""), "{err}");
}

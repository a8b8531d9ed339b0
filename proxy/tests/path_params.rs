//! `;` path parameters at a real inbound over mTLS, in each `[inbound] path_params` mode: the
//! default refuses the dot segments that Tomcat, Spring and Jetty resolve after stripping
//! parameters (`/data/..;/admin` is their `/admin`) and the app never sees them; `strip` matches
//! and forwards what those backends would serve; `keep` forwards parameters verbatim for a
//! backend that reads `;` as a plain character. `authz check` and the config say the same.

mod common;

use std::process::{Command, Output};

use http::StatusCode;
use tether_testkit::tools::have;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_tether-proxy");

/// A GET of `target` for [`raw_to_inbound`]: the bytes go out exactly as written.
fn get_head(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: service-b\r\n")
}

/// What the recording app has received so far.
fn seen(app: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
    app.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[tokio::test]
async fn by_default_dot_segments_with_params_are_400_and_never_reach_the_app() {
    let (app, received) = start_recording_app().await;
    let (pki, b, a, _) = file_pair_with(app, DATA_POLICY, "", "").await;
    // Tomcat/Spring, Jetty (escaped dots) and an escaped `;` for backends that decode first.
    for target in [
        "/data/..;/admin",
        "/data/.;/x",
        "/data/..;jsessionid=1/admin",
        "/data/%2e%2e;/admin",
        "/data/..%3B/admin",
        "/..;/admin",
    ] {
        let (status, body) = raw_to_inbound(&pki, &b, &get_head(target), "").await;
        assert_eq!(status, 400, "{target}: {body}");
    }
    // The same refusal through the mesh, from the calling app's side.
    let (status, _) = get(a.outbound.unwrap(), "service-b", "/data/..;/admin", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Ordinary matrix parameters still pass, as they were sent.
    let (status, body) = raw_to_inbound(&pki, &b, &get_head("/data/x;v=1"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo(&body)["path"], "/data/x;v=1");
    assert_eq!(seen(&received), ["/data/x;v=1"]);
}

#[tokio::test]
async fn curl_gets_400_for_a_dot_segment_with_params() {
    if !have("curl") {
        return;
    }
    let (app, received) = start_recording_app().await;
    let (pki, b, _a, _) = file_pair_with(app, DATA_POLICY, "", "").await;
    let cred = pki.issue(SERVICE_A);
    let inbound = b.inbound.unwrap();
    let curl = move |target: &'static str| {
        let (cred, url) = (cred.clone(), format!("https://{inbound}{target}"));
        // -k: the sidecar's certificate names a SPIFFE ID, not 127.0.0.1; the server's checks
        // of the client are what is under test. --path-as-is: send the dots as written.
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args([
                    "-sk",
                    "--path-as-is",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg("--cert")
                .arg(cred.join("chain.pem"))
                .arg("--key")
                .arg(cred.join("key.pem"))
                .arg(url)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    assert_eq!(curl("/data/..;/admin").await.unwrap(), "400");
    assert_eq!(curl("/data/x;v=1").await.unwrap(), "200");
    assert_eq!(seen(&received), ["/data/x;v=1"]);
}

#[tokio::test]
async fn strip_matches_and_forwards_the_path_a_servlet_container_would_serve() {
    let (app, received) = start_recording_app().await;
    let (pki, b, _a, _) = file_pair_with(app, DATA_POLICY, "path_params = \"strip\"\n", "").await;
    for (target, forwarded) in [
        ("/data/x;v=1", "/data/x"),
        ("/data/;/y", "/data/y"),
        ("/other/..;/data/z", "/data/z"),
        ("/data/x;v=1?q=1", "/data/x?q=1"),
    ] {
        let (status, body) = raw_to_inbound(&pki, &b, &get_head(target), "").await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(echo(&body)["path"], forwarded, "{target}");
    }
    // Stripped, this is /admin: not under /data, so denied, and the app never sees it.
    let (status, _) = raw_to_inbound(&pki, &b, &get_head("/data/..;/admin"), "").await;
    assert_eq!(status, 403);
    // An escaped `;` is not a separator, so which side is the name is ambiguous: refused.
    let (status, _) = raw_to_inbound(&pki, &b, &get_head("/data/..%3B/admin"), "").await;
    assert_eq!(status, 400);
    let want = ["/data/x", "/data/y", "/data/z", "/data/x?q=1"];
    assert_eq!(seen(&received), want);
}

#[tokio::test]
async fn keep_forwards_params_verbatim_for_a_backend_that_does_not_strip_them() {
    let (app, received) = start_recording_app().await;
    let (pki, b, _a, _) = file_pair_with(app, DATA_POLICY, "path_params = \"keep\"\n", "").await;
    for target in ["/data/a;b", "/data/..;/admin"] {
        let (status, body) = raw_to_inbound(&pki, &b, &get_head(target), "").await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(echo(&body)["path"], target);
    }
    assert_eq!(seen(&received), ["/data/a;b", "/data/..;/admin"]);
}

/// `tether-proxy authz check` on `path` with the extra `flags`.
fn check(dir: &std::path::Path, path: &str, flags: &[&str]) -> Output {
    let policy = write_policy(dir, "policy.toml", DATA_POLICY);
    Command::new(BIN)
        .args(["authz", "check", "--policy"])
        .arg(policy)
        .args(["--from", &id(SERVICE_A), "--path", path])
        .args(flags)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn authz_check_reads_params_as_the_sidecar_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The default, like the sidecar's: refused as the sidecar would (400), exit 2.
    let o = check(d, "/data/..;/admin", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(
        err.contains("--path") && err.contains("parameters"),
        "{err}"
    );
    let o = check(d, "/data/x;v=1", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("GET /data/x;v=1"));
    // strip: judged as /admin, so denied.
    let o = check(d, "/data/..;/admin", &["--path-params", "strip"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("GET /admin"),
        "{}",
        text(&o.stdout)
    );
    // keep: a name under /data, so allowed.
    let o = check(d, "/data/..;/admin", &["--path-params", "keep"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("GET /data/..;/admin"));
    // A bad value names the allowed ones.
    let o = check(d, "/data", &["--path-params", "sometimes"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("\"reject\" (the default), \"strip\" or \"keep\""),
        "{err}"
    );
}

#[test]
fn a_bad_path_params_value_exits_64_naming_the_key_and_the_allowed_values() {
    let pki = Pki::new();
    let dir = pki.issue(SERVICE_B);
    let policy = pki.policy(DATA_POLICY);
    let config = pki.dir.path().join("bad.toml");
    // The bad `[limits]` after it keeps a sidecar that wrongly took the value from starting
    // (and the test from hanging): it would exit 64 naming the limit instead.
    let toml = format!(
        "{}{}path_params = \"sometimes\"\n[limits]\nmax_connections = 0\n",
        identity_section(&dir, None),
        inbound_section("127.0.0.1:1".parse().unwrap(), &policy)
    );
    std::fs::write(&config, toml).unwrap();
    let o = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    let err = text(&o.stderr);
    assert!(
        err.contains("inbound.path_params")
            && err.contains("\"sometimes\" is not \"reject\" (the default), \"strip\" or \"keep\""),
        "{err}"
    );
}

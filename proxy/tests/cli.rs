//! The `tether-proxy` binary as an operator meets it: `authz check` exit codes and explanations,
//! config errors (and overrides with nothing to override) that exit 64 naming the file, key and
//! problem, `check` judging a config and its policy without starting anything, and a real run
//! of two sidecar processes carrying a request from curl to an app, with `openssl s_client` as
//! an outside mTLS client (accepted with a mesh certificate, refused without one).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_tether-proxy");

const POLICY: &str = r#"
[[rule]]
name = "a-reads-data"
from = ["spiffe://demo.tether/ns/default/sa/service-a"]
methods = ["GET"]
paths = ["/data", "/data/*"]
expires = "2030-01-01T00:00:00Z"
"#;

fn check(policy: &Path, from: &str, method: &str, path: &str, at: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.args(["authz", "check", "--policy"])
        .arg(policy)
        .args(["--from", from, "--method", method, "--path", path]);
    if let Some(at) = at {
        c.args(["--at", at]);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn authz_check_explains_and_exits_0_1_2() {
    let dir = tempfile::tempdir().unwrap();
    let pol = write_policy(dir.path(), "policy.toml", POLICY);
    let a = id("ns/default/sa/service-a");

    let o = check(&pol, &a, "GET", "/data/../data/x", None);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("ALLOW") && stdout(&o).contains("a-reads-data"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("/data/x"),
        "prints the normalized path: {}",
        stdout(&o)
    );

    let o = check(&pol, &a, "POST", "/data", None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("no rule matched: default deny"),
        "{}",
        stdout(&o)
    );

    let o = check(&pol, &id("ns/default/sa/intruder"), "GET", "/data", None);
    assert_eq!(o.status.code(), Some(1));

    // The rule expires in 2030.
    assert_eq!(
        check(&pol, &a, "GET", "/data", Some("2029-12-31T23:59:59Z"))
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        check(&pol, &a, "GET", "/data", Some("2030-01-01T00:00:01Z"))
            .status
            .code(),
        Some(1)
    );

    // Bad input: exit 2 with a message naming what is wrong.
    for (from, path, at, needle) in [
        ("not-a-spiffe-id", "/data", None, "--from"),
        (a.as_str(), "/data/%2e%2e/%2e%2e/x", None, "--path"),
        (a.as_str(), "/a%2fb", None, "--path"),
        (a.as_str(), "/data", Some("yesterday"), "--at"),
    ] {
        let o = check(&pol, from, "GET", path, at);
        assert_eq!(o.status.code(), Some(2), "{from} {path}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let missing = check(&dir.path().join("nope.toml"), &a, "GET", "/", None);
    assert_eq!(missing.status.code(), Some(2));
}

/// Runs `tether-proxy run` on `config`; a sidecar that starts instead of failing is killed after
/// 10 s and the test fails on its exit status.
fn run_with(config: &str, dir: &Path) -> Output {
    run_with_flags(config, dir, &[], &[])
}

/// [`run_with`], with extra command-line `flags` and environment variables `env`.
fn run_with_flags(config: &str, dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> Output {
    invoke("run", dir, "bad.toml", config, flags, env)
}

/// `tether-proxy SUBCOMMAND --config DIR/NAME FLAGS…` with `config` written to `DIR/NAME` and
/// `env` set, run to its exit.
fn invoke(
    subcommand: &str,
    dir: &Path,
    name: &str,
    config: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let p = dir.join(name);
    std::fs::write(&p, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([subcommand, "--config"]).arg(&p).args(flags);
    run_until_exit(cmd.envs(env.iter().copied()))
}

#[test]
fn config_errors_exit_64_naming_file_key_and_problem() {
    let pki = Pki::new();
    let b = pki.issue("ns/default/sa/service-b");
    let other = pki.issue("ns/default/sa/other");
    let d = pki.dir.path();
    let pol = write_policy(d, "policy.toml", POLICY);
    let ident = identity_section(&b, None);
    let inbound =
        format!("[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:1\"\npolicy = {pol:?}\n");
    let cases: Vec<(String, &str)> = vec![
        (format!("{ident}{inbound}bogus = 1\n"), "bogus"),
        (format!("{ident}[inbound]\nlisten = \"localhost\"\napp = \"127.0.0.1:1\"\npolicy = {pol:?}\n"), "inbound.listen"),
        (format!("{ident}{inbound}[services.x]\naddress = [\"127.0.0.1:1\"]\nidentity = \"spiffe://Bad/x\"\n"), "services.x.identity"),
        (format!("{ident}{inbound}[services.x]\naddress = []\nidentity = \"spiffe://demo.tether/x\"\n"), "services.x.address"),
        (format!("{ident}{inbound}[services.x]\naddress = [\"127.0.0.1:1\"]\nidentity = \"spiffe://demo.tether/x\"\npeer_protocol = \"h3\"\n"), "unknown variant `h3`"),
        (format!("{ident}{inbound}[services.x]\naddress = [\"127.0.0.1:1\"]\nidentity = \"spiffe://demo.tether/x\"\nmode = \"tcp\"\nlisten = \"127.0.0.1:0\"\npeer_protocol = \"h2\"\n"), "services.x.peer_protocol"),
        (
            format!("[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n{inbound}", b.join("chain.pem"), other.join("key.pem"), b.join("bundle.pem")),
            "key does not match",
        ),
        (
            format!("[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n{inbound}", d.join("missing.pem"), b.join("key.pem"), b.join("bundle.pem")),
            "missing.pem",
        ),
        (
            format!("[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n{inbound}", b.join("key.pem"), b.join("key.pem"), b.join("bundle.pem")),
            "no CERTIFICATE",
        ),
        (format!("{ident}[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:1\"\npolicy = {:?}\n", d.join("nope.toml")), "nope.toml"),
        ("this is not toml".into(), "bad.toml"),
        (format!("{ident}{inbound}[limits]\nmax_header_bytes = 4096\n"), "bad.toml: limits.max_header_bytes: 4096 is too small"),
    ];
    for (config, needle) in cases {
        let o = run_with(&config, d);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(64),
            "config:\n{config}\nstderr: {err}"
        );
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}

#[test]
fn an_override_for_a_section_the_file_lacks_exits_64_naming_the_flag() {
    let pki = Pki::new();
    let b = pki.issue("ns/default/sa/service-b");
    let d = pki.dir.path();
    // An outbound-only sidecar: no [inbound] for --inbound-app to change.
    let config = format!(
        "{}[outbound]\nlisten = \"127.0.0.1:0\"\n",
        identity_section(&b, None)
    );
    let by_flag = run_with_flags(&config, d, &["--inbound-app", "127.0.0.1:1"], &[]);
    let by_env = run_with_flags(
        &config,
        d,
        &[],
        &[("TETHER_PROXY_INBOUND_APP", "127.0.0.1:1")],
    );
    for o in [by_flag, by_env] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "stderr: {err}");
        assert!(
            err.contains("<flags>: --inbound-app: ") && err.contains("has no [inbound] section"),
            "{err}"
        );
    }
    // [identity] files, so nothing for the [ca] mode's token either; the secret is not echoed.
    let o = run_with_flags(&config, d, &[], &[("TETHER_PROXY_TOKEN", "s3cret")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "stderr: {err}");
    assert!(err.contains("--token") && err.contains("[ca]"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// Runs `tether-proxy check --config NAME` on `config` (written to `dir/NAME`) with the
/// environment `env`.
fn check_config(dir: &Path, name: &str, config: &str, env: &[(&str, &str)]) -> Output {
    invoke("check", dir, name, config, &[], env)
}

#[test]
fn check_validates_a_config_and_its_policy_exiting_0_or_64() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pol = write_policy(d, "policy.toml", POLICY);
    // A pod's config before the pod runs: no bundle, token or state dir exists yet, and
    // nothing is bound (port 1 would need root).
    let ca = "[ca]\nurls = [\"https://tether-ca.tether-system.svc:8443\"]\n\
              bundle = \"/etc/tether/bundle/bundle.pem\"\nstate_dir = \"/var/lib/tether\"\n\
              k8s_token_file = \"/var/run/secrets/tether/token\"\n";
    let inbound = |policy: &Path| {
        format!("[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:1\"\npolicy = {policy:?}\n")
    };
    let good = format!("{ca}{}", inbound(&pol));
    let o = check_config(d, "good.toml", &good, &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        stdout(&o),
        format!("ok: {}\n", d.join("good.toml").display())
    );

    let broken = write_policy(
        d,
        "broken.toml",
        "[[rule]]\nname = \"x\"\nfrom = [\"not an id\"]\n",
    );
    // (config, TETHER_PROXY_TOKEN, what the error must name)
    let cases = [
        // Bad config: two enrollment credentials, or one from the file and one from the env.
        (
            format!("{ca}token_file = \"t\"\n{}", inbound(&pol)),
            None,
            "ca.token_file / ca.k8s_token_file",
        ),
        (good.clone(), Some("s3cret"), "ca.k8s_token_file"),
        (format!("{ca}{}", inbound(&broken)), None, "broken.toml"),
        (
            format!("{ca}{}", inbound(&d.join("nope.toml"))),
            None,
            "nope.toml",
        ),
        ("not toml".into(), None, "bad.toml"),
    ];
    for (config, token, needle) in cases {
        let env: Vec<_> = token
            .map(|t| ("TETHER_PROXY_TOKEN", t))
            .into_iter()
            .collect();
        let o = check_config(d, "bad.toml", &config, &env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(64),
            "config:\n{config}\nstderr: {err}"
        );
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        assert!(!err.contains("s3cret") && stdout(&o).is_empty(), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecar_processes_carry_curl_and_gate_openssl() {
    if !have("curl") || !have("openssl") {
        eprintln!("skipping: curl and openssl are needed (apt-get install curl openssl)");
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path().to_path_buf();
    let app = start_app().await;
    let b = pki.issue("ns/default/sa/service-b");
    let a = pki.issue("ns/default/sa/service-a");
    let pol = write_policy(&d, "policy.toml", POLICY);
    let (bin, aout) = (free_port(), free_port());
    std::fs::write(
        d.join("b.toml"),
        format!(
            "{}[inbound]\nlisten = \"127.0.0.1:{bin}\"\napp = \"{app}\"\npolicy = {pol:?}\n",
            identity_section(&b, None)
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("a.toml"),
        format!(
            "workers = 1\n{}[outbound]\nlisten = \"127.0.0.1:{aout}\"\n[services.service-b]\naddress = [\"127.0.0.1:{bin}\"]\nidentity = \"{}\"\n",
            identity_section(&a, None),
            id("ns/default/sa/service-b")
        ),
    )
    .unwrap();
    let spawn = |cfg: &str| {
        Child(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(d.join(cfg))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _b = spawn("b.toml");
    let _a = spawn("a.toml");
    wait_for_port(bin);
    wait_for_port(aout);

    let curl = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H", "Host: service-b"])
            .arg(format!("http://127.0.0.1:{aout}/data/hello"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let out = stdout(&curl);
    assert!(out.ends_with("\n200"), "{out}");
    assert!(
        out.contains(&format!("URI={}", id("ns/default/sa/service-a"))),
        "{out}"
    );

    // openssl s_client with a mesh certificate: the inbound answers (policy denies this path: 403).
    let s_client = move |cert: Option<&Path>| {
        let mut c = Command::new("openssl");
        c.args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{bin}"),
            "-tls1_3",
            "-quiet",
        ]);
        if let Some(dir) = cert {
            // -cert sends only the leaf; -cert_chain adds the intermediate the verifier needs.
            c.arg("-cert")
                .arg(dir.join("cert.pem"))
                .arg("-cert_chain")
                .arg(dir.join("chain.pem"));
            c.arg("-key").arg(dir.join("key.pem"));
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /secret HTTP/1.1\r\nHost: service-b\r\nConnection: close\r\n\r\n");
        child.wait_with_output().unwrap()
    };
    let with = tokio::task::spawn_blocking({
        let a = a.clone();
        move || s_client(Some(&a))
    })
    .await
    .unwrap();
    assert!(
        stdout(&with).starts_with("HTTP/1.1 403"),
        "stdout: {} stderr: {}",
        stdout(&with),
        String::from_utf8_lossy(&with.stderr)
    );
    let without = tokio::task::spawn_blocking(move || s_client(None))
        .await
        .unwrap();
    assert!(
        !stdout(&without).contains("HTTP/1.1"),
        "no certificate must get no HTTP answer: {}",
        stdout(&without)
    );
    let err = String::from_utf8_lossy(&without.stderr).to_lowercase();
    assert!(
        err.contains("alert") || err.contains("certificate"),
        "openssl should report the refusal: {err}"
    );
}

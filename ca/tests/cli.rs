//! The operator's `tether-ca` binary, run as a real process: `init` lays out a state dir with
//! 0600 keys and refuses to touch a non-empty one; the state dir can be named before or after the
//! subcommand or through `TETHER_CA_STATE_DIR`; `enroll` prints a usable one-time token; `issue`
//! writes a key and a chain that openssl verifies, capped at the max TTL; `revoke`, `list` and
//! `crl` agree with each other and with openssl; bad arguments exit 2 naming the argument, and
//! operational failures exit 1 with a message that says what to do.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use tether_ca::Authority;

/// `tether-ca --state-dir DIR init --trust-domain test.tether`, asserting success.
fn cli_init(dir: &Path) {
    let out = ca_cli(dir, &["init", "--trust-domain", TD]);
    assert_ok(&out, "init");
}

/// Issues `path` for `ttl` into `out` with the CLI and returns the serial.
fn cli_issue(dir: &Path, path: &str, ttl: &str, out: &Path) -> String {
    let o = ca_issue(dir, id(path).as_str(), out, &["--ttl", ttl]);
    assert_ok(&o, "issue");
    cert_facts(&read(out.join("cert.pem"))).serial.to_string()
}

fn list_json(dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(extra);
    let o = ca_cli(dir, &args);
    assert_ok(&o, "list --json");
    serde_json::from_str::<Vec<serde_json::Value>>(&stdout(&o))
        .unwrap_or_else(|e| panic!("list --json is not a JSON array ({e}): {}", stdout(&o)))
}

fn assert_usage_error(o: &std::process::Output, names: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "a usage error exits 2; stderr: {}",
        stderr(o)
    );
    for n in names {
        assert!(
            stderr(o).contains(n),
            "stderr does not name {n}: {}",
            stderr(o)
        );
    }
}

#[test]
fn init_writes_the_state_dir_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let out = ca_cli(&dir, &["init", "--trust-domain", TD]);
    assert_ok(&out, "init");
    assert!(
        stdout(&out).contains(dir.to_str().unwrap()),
        "{}",
        stdout(&out)
    );

    assert_private_generation(&dir);
    for key in GENERATION_KEYS {
        assert!(read(dir.join(key)).contains("PRIVATE KEY"));
    }
    for f in [
        "ca.db",
        "bundle.pem",
        "root/cert.pem",
        "intermediate/cert.pem",
        "server/chain.pem",
        "admin/cert.pem",
        "admin/chain.pem",
        "admin/bundle.pem",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        read(dir.join("bundle.pem")),
        read(dir.join("root/cert.pem"))
    );
    // The admin credential names the admin identity and the state dir opens.
    let admin = cert_facts(&read(dir.join("admin/cert.pem")));
    assert_eq!(admin.uris, vec![id("/tether/admin").to_string()]);
    let ca = Authority::open(&dir).expect("the new state dir opens");
    assert_eq!(ca.trust_domain().as_str(), TD);
    // Nothing was left behind next to it.
    let siblings: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("ca")]);
}

#[test]
fn init_refuses_an_existing_non_empty_dir_and_leaves_it_alone() {
    let tmp = tempfile::tempdir().unwrap();

    // Someone else's directory.
    let other = tmp.path().join("notes");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("todo.txt"), "keep me").unwrap();
    let out = ca_cli(&other, &["init", "--trust-domain", TD]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(other.to_str().unwrap()),
        "names the dir: {}",
        stderr(&out)
    );
    let left: Vec<_> = fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("todo.txt")]);
    assert_eq!(read(other.join("todo.txt")), "keep me");

    // An existing CA: a second init must not replace its keys.
    let dir = tmp.path().join("ca");
    cli_init(&dir);
    let root_key = read(dir.join("root/key.pem"));
    let bundle = read(dir.join("bundle.pem"));
    let db = fs::read(dir.join("ca.db")).unwrap();
    let out = ca_cli(&dir, &["init", "--trust-domain", "other.tether"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(dir.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert_eq!(read(dir.join("root/key.pem")), root_key);
    assert_eq!(read(dir.join("bundle.pem")), bundle);
    assert_eq!(fs::read(dir.join("ca.db")).unwrap(), db);
    assert_eq!(Authority::open(&dir).unwrap().trust_domain().as_str(), TD);
}

#[test]
fn init_accepts_an_existing_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    fs::create_dir(&dir).unwrap();
    cli_init(&dir);
    assert_eq!(mode(&dir.join("root/key.pem")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    Authority::open(&dir).expect("opens");
}

/// Runs `cmd` and returns its output, killing it if it runs longer than `limit`.
fn output_within(
    mut cmd: std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("still running after {limit:?}; stderr: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

#[test]
fn serve_fails_fast_with_a_message_on_a_busy_port_or_a_missing_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut cmd = bin();
    cmd.arg("--state-dir")
        .arg(&dir)
        .args(["serve", "--listen", &addr]);
    let out = output_within(cmd, std::time::Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&addr),
        "names the address: {}",
        stderr(&out)
    );

    let missing = tmp.path().join("missing");
    let mut cmd = bin();
    cmd.arg("--state-dir")
        .arg(&missing)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let out = output_within(cmd, std::time::Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("tether-ca init"), "{}", stderr(&out));
    drop(busy);
}

#[test]
fn state_dir_is_taken_before_or_after_the_subcommand_and_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    let dir = tmp.path().join("ca");
    let web = id("/ns/default/sa/web");

    // init through the environment only.
    let out = bin()
        .current_dir(&cwd)
        .env("TETHER_CA_STATE_DIR", &dir)
        .args(["init", "--trust-domain", TD])
        .output()
        .unwrap();
    assert_ok(&out, "init with TETHER_CA_STATE_DIR");
    assert!(dir.join("ca.db").is_file());

    let before = bin()
        .current_dir(&cwd)
        .arg("--state-dir")
        .arg(&dir)
        .args(["enroll", web.as_str()])
        .output()
        .unwrap();
    let after = bin()
        .current_dir(&cwd)
        .args(["enroll", web.as_str(), "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let from_env = bin()
        .current_dir(&cwd)
        .env("TETHER_CA_STATE_DIR", &dir)
        .args(["enroll", web.as_str()])
        .output()
        .unwrap();
    // The flag wins over the environment.
    let flag_wins = bin()
        .current_dir(&cwd)
        .env("TETHER_CA_STATE_DIR", tmp.path().join("nowhere"))
        .args(["enroll", web.as_str(), "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();

    let ca = Authority::open(&dir).unwrap();
    for (what, out) in [
        ("--state-dir before", &before),
        ("--state-dir after", &after),
        ("TETHER_CA_STATE_DIR", &from_env),
        ("flag over env", &flag_wins),
    ] {
        assert_ok(out, what);
        // Each token was stored in *this* state dir: it enrolls here.
        let token = stdout(out).trim().to_string();
        let key = tether_certs::keys::generate_key().unwrap();
        let csr = tether_certs::keys::generate_csr(&key, &web).unwrap();
        let issued = ca
            .enroll(&token, csr.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: token does not enroll here: {e}"));
        assert_eq!(issued.spiffe_id, web.as_str());
    }
    assert!(
        !cwd.join(".tether").exists(),
        "nothing fell back to the default state dir"
    );
}

#[test]
fn enroll_prints_a_one_time_token_on_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let web = id("/ns/default/sa/web");
    let out = ca_cli(&dir, &["enroll", web.as_str(), "--token-ttl", "5m"]);
    assert_ok(&out, "enroll");
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is the token alone: {printed:?}");
    let token = lines[0];
    assert!(token.starts_with("tether-") && token.len() > 40, "{token}");
    assert!(stderr(&out).contains(web.as_str()), "{}", stderr(&out));

    let ca = Authority::open(&dir).unwrap();
    let key = tether_certs::keys::generate_key().unwrap();
    let csr = tether_certs::keys::generate_csr(&key, &web).unwrap();
    assert_eq!(
        ca.enroll(token, csr.as_bytes()).unwrap().spiffe_id,
        web.as_str()
    );
    assert!(
        matches!(
            ca.enroll(token, csr.as_bytes()),
            Err(tether_ca::CaError::Unauthorized(_))
        ),
        "the token is single-use"
    );

    // Only identities of this trust domain.
    let out = ca_cli(&dir, &["enroll", "spiffe://elsewhere.test/ns/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("trust domain"), "{}", stderr(&out));
}

#[test]
fn issue_writes_a_private_key_and_a_chain_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let out_dir = tmp.path().join("svc");
    let web = id("/ns/default/sa/web");
    let serial = cli_issue(&dir, "/ns/default/sa/web", "2h", &out_dir);

    assert_eq!(mode(&out_dir.join("key.pem")), 0o600);
    assert_eq!(mode(&out_dir), 0o700);
    let cert = read(out_dir.join("cert.pem"));
    let facts = cert_facts(&cert);
    assert_eq!(facts.uris, vec![web.to_string()]);
    assert_eq!(facts.basic_constraints_ca, Some(false));
    let key = tether_certs::keys::key_from_pem(&read(out_dir.join("key.pem"))).unwrap();
    assert_eq!(
        facts.public_key,
        key.public_key_raw(),
        "key.pem matches cert.pem"
    );
    let lifetime = facts.not_after - now_unix();
    assert!(
        (7100..=7260).contains(&lifetime),
        "--ttl 2h gave {lifetime}s"
    );
    assert_eq!(
        read(out_dir.join("chain.pem")),
        format!("{cert}{}", read(dir.join("intermediate/cert.pem")))
    );
    assert_eq!(
        read(out_dir.join("bundle.pem")),
        read(dir.join("bundle.pem"))
    );

    // Recorded, with the serial the certificate carries.
    let listed = list_json(&dir, &[]);
    let rec = listed
        .iter()
        .find(|r| r["serial"] == serial.as_str())
        .expect("issued certificate is listed");
    assert_eq!(rec["method"], "cli");
    assert_eq!(rec["spiffe_id"], web.as_str());

    if have("openssl") {
        let (bundle, chain) = (out_dir.join("bundle.pem"), out_dir.join("chain.pem"));
        let cert = out_dir.join("cert.pem");
        let o = openssl_ok(
            "openssl verify",
            &[&"verify", &"-CAfile", &bundle, &"-untrusted", &chain, &cert],
        );
        assert!(stdout(&o).contains("OK"), "{}", stdout(&o));
    }
}

#[test]
fn issue_caps_the_lifetime_at_the_max_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let out_dir = tmp.path().join("svc");
    cli_issue(&dir, "/ns/default/sa/long", "48h", &out_dir);
    let lifetime = cert_facts(&read(out_dir.join("cert.pem"))).not_after - now_unix();
    let day = 24 * 3600;
    assert!(
        (day - 120..=day + 60).contains(&lifetime),
        "--ttl 48h gave {lifetime}s; the max TTL is 24h"
    );
}

#[test]
fn revoke_list_and_crl_agree_with_each_other_and_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let bad = cli_issue(&dir, "/ns/default/sa/bad", "1h", &tmp.path().join("bad"));
    let good = cli_issue(&dir, "/ns/default/sa/good", "1h", &tmp.path().join("good"));

    let out = ca_cli(&dir, &["revoke", &bad, "--reason", "superseded"]);
    assert_ok(&out, "revoke");
    assert!(stdout(&out).contains("CRL number"), "{}", stdout(&out));
    let again = ca_cli(&dir, &["revoke", &bad]);
    assert_ok(&again, "revoke again");
    assert!(
        stdout(&again).contains("already revoked"),
        "{}",
        stdout(&again)
    );

    let listed = list_json(&dir, &[]);
    let find = |s: &str| {
        listed
            .iter()
            .find(|r| r["serial"] == s)
            .unwrap_or_else(|| panic!("{s} not listed"))
    };
    assert!(find(&bad)["revoked_at"].is_i64());
    assert_eq!(find(&bad)["reason"], "superseded");
    assert!(find(&good)["revoked_at"].is_null());
    for method in ["admin", "server"] {
        assert!(
            listed.iter().any(|r| r["method"] == method),
            "{method} listed"
        );
    }
    // The table marks it too.
    let table = stdout(&ca_cli(&dir, &["list"]));
    let bad_line = table.lines().find(|l| l.starts_with(&bad)).expect("row");
    assert!(bad_line.contains("revoked"), "{bad_line}");
    let good_line = table.lines().find(|l| l.starts_with(&good)).expect("row");
    assert!(!good_line.contains("revoked"), "{good_line}");

    let crl_file = tmp.path().join("crl.pem");
    let out = ca_cli(&dir, &["crl", "--out", crl_file.to_str().unwrap()]);
    assert_ok(&out, "crl --out");
    let crl = verify_crl_in(&dir, read(&crl_file).as_bytes());
    assert!(crl.revoked().contains(&bad.parse().unwrap()));
    assert!(!crl.revoked().contains(&good.parse().unwrap()));
    // stdout carries the same list.
    let printed = ca_cli(&dir, &["crl"]);
    assert_ok(&printed, "crl");
    let printed = verify_crl_in(&dir, &printed.stdout);
    assert!(printed.revoked().contains(&bad.parse().unwrap()));

    if have("openssl") {
        let o = openssl_ok(
            "openssl crl",
            &[&"crl", &"-text", &"-noout", &"-in", &crl_file],
        );
        let text = stdout(&o);
        assert!(text.contains(&bad.to_uppercase()), "{text}");
        assert!(!text.contains(&good.to_uppercase()), "{text}");
        assert!(text.contains("Superseded"), "{text}");
        // Signed by the intermediate.
        let issuer = dir.join("intermediate/cert.pem");
        let o = openssl_ok(
            "openssl crl -CAfile",
            &[&"crl", &"-noout", &"-in", &crl_file, &"-CAfile", &issuer],
        );
        assert!(stderr(&o).contains("verify OK"), "{}", stderr(&o));
    }
}

#[test]
fn list_expiring_within_shows_short_lived_certificates_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let short = cli_issue(&dir, "/ns/default/sa/short", "1h", &tmp.path().join("a"));
    let revoked = cli_issue(&dir, "/ns/default/sa/gone", "1h", &tmp.path().join("b"));
    assert_ok(&ca_cli(&dir, &["revoke", &revoked]), "revoke");
    let admin = list_json(&dir, &[])
        .into_iter()
        .find(|r| r["method"] == "admin")
        .expect("admin certificate listed");
    let admin_serial = admin["serial"].as_str().unwrap().to_string();

    let out = ca_cli(&dir, &["list", "--expiring-within", "2h"]);
    assert_ok(&out, "list --expiring-within");
    let text = stdout(&out);
    assert!(text.contains(&short), "{text}");
    assert!(
        !text.contains(&admin_serial),
        "the 30-day admin cert is listed: {text}"
    );
    assert!(!text.contains(&revoked), "a revoked cert is listed: {text}");

    let serials: Vec<String> = list_json(&dir, &["--expiring-within", "2h"])
        .iter()
        .map(|r| r["serial"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(serials, vec![short]);
}

#[test]
fn revoke_errors_exit_1_or_2_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());

    let out = ca_cli(&dir, &["revoke", "0123456789abcdef"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no certificate with serial 0123456789abcdef"),
        "{}",
        stderr(&out)
    );

    let out = ca_cli(&dir, &["revoke", "xyz!"]);
    assert_usage_error(&out, &["SERIAL", "xyz!"]);

    let serial = cli_issue(&dir, "/ns/default/sa/web", "1h", &tmp.path().join("w"));
    let out = ca_cli(&dir, &["revoke", &serial, "--reason", "bored"]);
    assert_usage_error(&out, &["--reason", "bored"]);
    assert!(
        list_json(&dir, &[])
            .iter()
            .all(|r| r["revoked_at"].is_null()),
        "nothing was revoked"
    );
}

#[test]
fn bad_identities_and_durations_exit_2_naming_the_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let out_dir = tmp.path().join("svc");

    assert_usage_error(
        &ca_cli(&dir, &["enroll", "http://test.tether/web"]),
        &["<SPIFFE_ID>"],
    );
    assert_usage_error(
        &ca_issue(&dir, "spiffe://test.tether/a/../b", &out_dir, &[]),
        &["<SPIFFE_ID>"],
    );
    assert_usage_error(
        &ca_issue(
            &dir,
            id("/ns/default/sa/web").as_str(),
            &out_dir,
            &["--ttl", "5parsecs"],
        ),
        &["--ttl", "5parsecs"],
    );
    assert!(!out_dir.exists(), "a refused command wrote files");
    assert_usage_error(
        &ca_cli(&dir, &["enroll", id("/x").as_str(), "--token-ttl", "0s"]),
        &["--token-ttl"],
    );
    assert_usage_error(
        &ca_cli(&dir, &["list", "--expiring-within", "soon"]),
        &["--expiring-within"],
    );
    assert_usage_error(
        &ca_cli(
            &tmp.path().join("new"),
            &["init", "--trust-domain", "Not A Domain"],
        ),
        &["--trust-domain"],
    );
    assert!(!tmp.path().join("new").exists());
    // Only the admin and server certificates exist: nothing was issued.
    assert_eq!(list_json(&dir, &[]).len(), 2);
}

#[test]
fn commands_on_a_missing_state_dir_point_at_init() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-ca");
    let web = id("/ns/default/sa/web");
    let out_dir = tmp.path().join("svc");
    for args in [
        vec!["list"],
        vec!["enroll", web.as_str()],
        vec!["issue", web.as_str(), "--out", out_dir.to_str().unwrap()],
        vec!["revoke", "01"],
        vec!["crl"],
    ] {
        let out = ca_cli(&missing, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("tether-ca init"), "{args:?}: {err}");
        assert!(err.contains(missing.to_str().unwrap()), "{args:?}: {err}");
    }
    assert!(!missing.exists(), "a failed command created the state dir");
    assert!(!out_dir.exists());
}

#[test]
fn absurdly_long_durations_do_not_wrap_around() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_state(tmp.path());
    let web = id("/ns/default/sa/web");
    // Past what a signed 64-bit count of seconds holds.
    let forever = "500000000000y";

    // A token the CLI hands out must be usable, not born expired.
    let out = ca_cli(&dir, &["enroll", web.as_str(), "--token-ttl", forever]);
    if out.status.success() {
        let key = tether_certs::keys::generate_key().unwrap();
        let csr = tether_certs::keys::generate_csr(&key, &web).unwrap();
        Authority::open(&dir)
            .unwrap()
            .enroll(stdout(&out).trim(), csr.as_bytes())
            .expect("the printed token enrolls");
    } else {
        assert!(stderr(&out).contains("--token-ttl"), "{}", stderr(&out));
    }

    // A window that long contains every unexpired certificate.
    let short = cli_issue(&dir, "/ns/default/sa/short", "1h", &tmp.path().join("a"));
    let out = ca_cli(&dir, &["list", "--json", "--expiring-within", forever]);
    if out.status.success() {
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            listed.iter().any(|r| r["serial"] == short.as_str()),
            "{}",
            stdout(&out)
        );
    } else {
        assert!(
            stderr(&out).contains("--expiring-within"),
            "{}",
            stderr(&out)
        );
    }
}

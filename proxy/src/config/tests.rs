//! Tests of the config: every override lands in its field or names its flag when the file lacks
//! the section, the `[ca]` enrollment credential is one of a kind, the limits refuse what they
//! used to repair, `[access_log]` names its key when wrong, and parsing logs nothing.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use super::overrides::flag_of;
use super::*;

mod enrollment;

const IDENTITY: &str = "[identity]\ncert = \"c.pem\"\nkey = \"k.pem\"\nbundle = \"b.pem\"\n";
const CA: &str =
    "[ca]\nurls = [\"https://ca.test:8443\"]\nbundle = \"b.pem\"\nstate_dir = \"st\"\n";
const INBOUND: &str = "[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:8080\"\n\
                       policy = \"policy.toml\"\n";
const OUTBOUND: &str = "[outbound]\nlisten = \"127.0.0.1:15001\"\n";

fn parse(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    Config::parse(text, "s.toml", Path::new("/etc/tether"), overrides)
}

fn ok(text: &str, overrides: &Overrides) -> Config {
    parse(text, overrides).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn files(cfg: &Config) -> &IdentityFiles {
    match &cfg.identity {
        IdentitySource::Files(f) => f,
        IdentitySource::Ca(_) => panic!("expected [identity]"),
    }
}

fn ca(cfg: &Config) -> &CaSettings {
    match &cfg.identity {
        IdentitySource::Ca(c) => c,
        IdentitySource::Files(_) => panic!("expected [ca]"),
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[test]
fn every_override_lands_in_its_field() {
    let o = Overrides {
        workers: Some(3),
        inbound_listen: some("127.0.0.1:25006"),
        inbound_app: some("127.0.0.1:9090"),
        inbound_policy: some("other.toml"),
        outbound_listen: some("127.0.0.1:25001"),
        admin_listen: some("127.0.0.1:25000"),
        identity_cert: some("/abs/cert.pem"),
        identity_key: some("key2.pem"),
        identity_bundle: some("bundle2.pem"),
        identity_crl: some("crl.pem"),
        token: None,
    };
    let cfg = ok(&format!("workers = 1\n{IDENTITY}{INBOUND}{OUTBOUND}"), &o);
    assert_eq!(cfg.workers, 3);
    let inbound = cfg.inbound.as_ref().expect("inbound");
    assert_eq!(inbound.listen.to_string(), "127.0.0.1:25006");
    assert_eq!(inbound.app.to_string(), "127.0.0.1:9090");
    // An overriding path is relative to the config file's folder, as the file's own are.
    assert_eq!(inbound.policy, Path::new("/etc/tether/other.toml"));
    assert_eq!(cfg.outbound.map(|a| a.to_string()), some("127.0.0.1:25001"));
    assert_eq!(cfg.admin.map(|a| a.to_string()), some("127.0.0.1:25000"));
    let f = files(&cfg);
    assert_eq!(f.cert, Path::new("/abs/cert.pem"));
    assert_eq!(f.key, Path::new("/etc/tether/key2.pem"));
    assert_eq!(f.bundle, Path::new("/etc/tether/bundle2.pem"));
    assert_eq!(f.crl.as_deref(), Some(Path::new("/etc/tether/crl.pem")));
}

#[test]
fn without_overrides_the_file_decides() {
    let cfg = ok(
        &format!("workers = 2\n{IDENTITY}{INBOUND}"),
        &Overrides::default(),
    );
    assert_eq!(cfg.workers, 2);
    let inbound = cfg.inbound.as_ref().expect("inbound");
    assert_eq!(inbound.listen.to_string(), "127.0.0.1:15006");
    assert_eq!(inbound.policy, Path::new("/etc/tether/policy.toml"));
    assert_eq!(files(&cfg).cert, Path::new("/etc/tether/c.pem"));
    assert!(files(&cfg).crl.is_none());
    assert!(cfg.outbound.is_none() && cfg.admin.is_none());
}

/// The override with only `field` set to `value`.
fn only(field: &str, value: &str) -> Overrides {
    let mut o = Overrides::default();
    let slot = match field {
        "inbound_listen" => &mut o.inbound_listen,
        "inbound_app" => &mut o.inbound_app,
        "inbound_policy" => &mut o.inbound_policy,
        "identity_cert" => &mut o.identity_cert,
        "identity_key" => &mut o.identity_key,
        "identity_bundle" => &mut o.identity_bundle,
        "identity_crl" => &mut o.identity_crl,
        "token" => &mut o.token,
        other => panic!("no override {other}"),
    };
    *slot = some(value);
    o
}

#[test]
fn an_override_for_an_absent_section_is_an_error_naming_the_flag() {
    // The file has [ca] (so no [identity]) and [outbound] (so no [inbound]).
    let text = format!("{CA}{OUTBOUND}");
    for (field, flag, env, section) in [
        (
            "inbound_listen",
            "--inbound-listen",
            "TETHER_PROXY_INBOUND_LISTEN",
            "[inbound]",
        ),
        (
            "inbound_app",
            "--inbound-app",
            "TETHER_PROXY_INBOUND_APP",
            "[inbound]",
        ),
        (
            "inbound_policy",
            "--inbound-policy",
            "TETHER_PROXY_INBOUND_POLICY",
            "[inbound]",
        ),
        (
            "identity_cert",
            "--identity-cert",
            "TETHER_PROXY_IDENTITY_CERT",
            "[identity]",
        ),
        (
            "identity_key",
            "--identity-key",
            "TETHER_PROXY_IDENTITY_KEY",
            "[identity]",
        ),
        (
            "identity_bundle",
            "--identity-bundle",
            "TETHER_PROXY_IDENTITY_BUNDLE",
            "[identity]",
        ),
        (
            "identity_crl",
            "--identity-crl",
            "TETHER_PROXY_IDENTITY_CRL",
            "[identity]",
        ),
    ] {
        let e = parse(&text, &only(field, "127.0.0.1:1")).expect_err(field);
        assert_eq!((e.file.as_str(), e.key.as_str()), ("<flags>", flag));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("<flags>: {flag}: s.toml has no {section}")),
            "{msg}"
        );
        assert!(msg.contains(env), "{msg}");
    }
    // The token is for [ca] mode; a file with [identity] has no use for it.
    let e = parse(&format!("{IDENTITY}{INBOUND}"), &only("token", "t0k3n")).expect_err("token");
    assert_eq!((e.file.as_str(), e.key.as_str()), ("<flags>", "--token"));
    assert!(e.problem.contains("no [ca] section"), "{e}");
    assert!(
        !e.to_string().contains("t0k3n"),
        "a secret is never echoed: {e}"
    );
}

#[test]
fn outbound_and_admin_listen_overrides_create_their_section() {
    let o = Overrides {
        outbound_listen: some("127.0.0.1:25001"),
        admin_listen: some("127.0.0.1:25000"),
        ..Overrides::default()
    };
    // Without the override this file has nothing to do.
    let e = parse(IDENTITY, &Overrides::default()).expect_err("nothing to do");
    assert!(e.problem.starts_with("nothing to do"), "{e}");
    let cfg = ok(IDENTITY, &o);
    assert_eq!(cfg.outbound.map(|a| a.to_string()), some("127.0.0.1:25001"));
    assert_eq!(cfg.admin.map(|a| a.to_string()), some("127.0.0.1:25000"));
    // A created section's value is still validated, against its key.
    let bad = Overrides {
        admin_listen: some("localhost"),
        ..o
    };
    assert_eq!(parse(IDENTITY, &bad).expect_err("bad").key, "admin.listen");
}

#[test]
fn flags_and_env_vars_come_from_the_clap_definition() {
    let command = <Overrides as clap::Args>::augment_args(clap::Command::new("t"));
    let ids: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    assert_eq!(ids.len(), 11, "{ids:?}");
    for id in &ids {
        let (flag, env) = flag_of(id);
        assert_eq!(flag, format!("--{}", id.replace('_', "-")));
        assert_eq!(env, format!("TETHER_PROXY_{}", id.to_ascii_uppercase()));
    }
}

#[test]
fn max_header_bytes_below_8_kib_is_an_error_naming_the_key() {
    let with = |n: usize| format!("{IDENTITY}{INBOUND}[limits]\nmax_header_bytes = {n}\n");
    let e = parse(&with(4096), &Overrides::default()).expect_err("4096");
    assert_eq!(
        (e.file.as_str(), e.key.as_str()),
        ("s.toml", "limits.max_header_bytes")
    );
    assert!(
        e.problem.contains("4096") && e.problem.contains("8192"),
        "{e}"
    );
    let exact = ok(&with(8192), &Overrides::default());
    assert_eq!(exact.limits.max_header_bytes, 8192);
    let bigger = ok(&with(100_000), &Overrides::default());
    assert_eq!(bigger.limits.max_header_bytes, 100_000);
    let default = ok(&format!("{IDENTITY}{INBOUND}"), &Overrides::default());
    assert_eq!(default.limits.max_header_bytes, 64 * 1024);
}

#[test]
fn limits_are_read_and_checked_per_key() {
    let text = format!(
        "{IDENTITY}{INBOUND}[limits]\nhandshake_timeout = \"2s\"\nmax_connections = 5\n\
         drain_timeout = \"1m\"\n"
    );
    let l = ok(&text, &Overrides::default()).limits;
    assert_eq!(l.handshake_timeout, Duration::from_secs(2));
    assert_eq!(l.max_connections, 5);
    assert_eq!(l.drain_timeout, Duration::from_secs(60));
    assert_eq!(l.request_timeout, Limits::default().request_timeout);
    for (limit, key) in [
        ("idle_timeout = \"soon\"", "limits.idle_timeout"),
        ("max_connections = 0", "limits.max_connections"),
    ] {
        let e = parse(
            &format!("{IDENTITY}{INBOUND}[limits]\n{limit}\n"),
            &Overrides::default(),
        );
        assert_eq!(e.expect_err(limit).key, key);
    }
}

#[test]
fn service_is_tcp_follows_its_mode() {
    let text = format!(
        "{IDENTITY}{OUTBOUND}[services.web]\naddress = [\"127.0.0.1:1\"]\n\
         identity = \"spiffe://td/web\"\n[services.db]\nmode = \"tcp\"\n\
         listen = \"127.0.0.1:5432\"\naddress = [\"127.0.0.1:2\"]\nidentity = \"spiffe://td/db\"\n"
    );
    let cfg = ok(&text, &Overrides::default());
    let tcp: Vec<(&str, bool)> = cfg
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.is_tcp()))
        .collect();
    assert_eq!(tcp, [("db", true), ("web", false)]);
}

#[test]
fn path_params_defaults_to_reject_and_a_bad_value_names_the_allowed_ones() {
    let inbound = |extra: &str| format!("{IDENTITY}{INBOUND}{extra}");
    let path_params = |text: &str| ok(text, &Overrides::default()).inbound.unwrap().path_params;
    assert_eq!(path_params(&inbound("")), PathParams::Reject);
    assert_eq!(
        path_params(&inbound("path_params = \"strip\"\n")),
        PathParams::Strip
    );
    assert_eq!(
        path_params(&inbound("path_params = \"keep\"\n")),
        PathParams::Keep
    );
    let e = parse(
        &inbound("path_params = \"sometimes\"\n"),
        &Overrides::default(),
    )
    .expect_err("a bad value");
    assert_eq!(
        e.to_string(),
        "s.toml: inbound.path_params: \"sometimes\" is not \"reject\" (the default), \"strip\" \
         or \"keep\""
    );
    // A TCP inbound has no paths, so the setting there is a mistake, not a no-op.
    let e = parse(
        &inbound("mode = \"tcp\"\npath_params = \"keep\"\n"),
        &Overrides::default(),
    )
    .expect_err("path_params in TCP mode");
    assert_eq!(e.key, "inbound.path_params");
    assert!(e.problem.contains("TCP"), "{e}");
}

#[test]
fn a_syntax_error_names_its_line() {
    let e = parse(&format!("{IDENTITY}\n\nbogus = [\n"), &Overrides::default());
    let e = e.expect_err("syntax");
    assert_eq!(e.key, "(syntax)");
    assert!(e.problem.contains("(line "), "{e}");
}

/// Collects everything a subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn parsing_logs_nothing_even_without_a_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let cfg = tracing::subscriber::with_default(subscriber, || {
        tracing::trace!("probe");
        ok(&format!("{CA}{OUTBOUND}"), &Overrides::default())
    });
    assert!(!ca(&cfg).has_enrollment_token());
    let out = captured.0.lock().unwrap_or_else(PoisonError::into_inner);
    let out = String::from_utf8_lossy(&out);
    // Only the probe, which shows the subscriber was listening.
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("probe"), "{out}");
}

#[test]
fn the_access_log_section_is_a_file_or_stdout_and_off_when_absent() {
    let with = |section: &str| format!("{IDENTITY}{INBOUND}{section}");
    let target = |text: &str| ok(text, &Overrides::default()).access_log;
    assert_eq!(target(&with("")), None);
    assert_eq!(
        target(&with("[access_log]\npath = \"log/access.log\"\n")),
        Some(AccessLogTarget::File("/etc/tether/log/access.log".into()))
    );
    assert_eq!(
        target(&with("[access_log]\npath = \"/var/log/a.log\"\n")),
        Some(AccessLogTarget::File("/var/log/a.log".into()))
    );
    assert_eq!(
        target(&with("[access_log]\npath = \"-\"\n")),
        Some(AccessLogTarget::Stdout)
    );
}

#[test]
fn a_bad_access_log_section_is_an_error_naming_the_key() {
    let parse_section = |section: &str| {
        parse(
            &format!("{IDENTITY}{INBOUND}[access_log]\n{section}"),
            &Overrides::default(),
        )
    };
    for (section, problem) in [
        ("path = \"\"\n", "is empty"),
        ("path = \"  \"\n", "is empty"),
        ("path = 5\n", "must be a string"),
        ("path = [\"a.log\"]\n", "must be a string"),
        ("", "missing"),
    ] {
        let e = parse_section(section).expect_err(section);
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("s.toml", "access_log.path"),
            "{section}"
        );
        assert!(e.problem.starts_with(problem), "{section}: {e}");
    }
    let e = parse_section("path = \"a.log\"\nformat = \"json\"\n").expect_err("unknown key");
    assert!(e.problem.contains("unknown field `format`"), "{e}");
    assert!(e.problem.contains("(line "), "{e}");
}

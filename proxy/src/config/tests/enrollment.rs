//! The `[ca]` enrollment credential: a one-time token (from `token_file` or the `--token` /
//! `TETHER_PROXY_TOKEN` override) or a Kubernetes service-account token file, exactly one of
//! them, and never printed.

use super::*;

/// The enrollment credential of `cfg`'s `[ca]`, as its Debug shows it (which hides a token).
fn enrollment(cfg: &Config) -> String {
    format!("{:?}", ca(cfg).enrollment)
}

#[test]
fn the_token_override_is_the_enrollment_token() {
    let text = format!("{CA}{OUTBOUND}");
    let cfg = ok(&text, &only("token", "t0k3n"));
    assert!(matches!(&ca(&cfg).enrollment, Some(Enrollment::Token(t)) if t == "t0k3n"));
    assert!(ca(&cfg).has_enrollment_token());
    // Printing the config never prints the secret.
    assert!(!format!("{cfg:?}").contains("t0k3n"));
    assert_eq!(enrollment(&cfg), "Some(Token(<redacted>))");
    // Neither a token nor a token file: still starts (from the cache), and says so later.
    let cfg = ok(&text, &Overrides::default());
    assert!(ca(&cfg).enrollment.is_none() && !ca(&cfg).has_enrollment_token());
    // A blank token is no token, in either mode.
    assert!(ca(&ok(&text, &only("token", "  "))).enrollment.is_none());
    ok(&format!("{IDENTITY}{INBOUND}"), &only("token", ""));
    // A token file counts too, and the override beats it.
    let with_file = text.replace("[ca]\n", "[ca]\ntoken_file = \"t.token\"\n");
    let cfg = ok(&with_file, &Overrides::default());
    assert_eq!(
        enrollment(&cfg),
        r#"Some(TokenFile("/etc/tether/t.token"))"#
    );
    assert!(ca(&cfg).has_enrollment_token());
    let cfg = ok(&with_file, &only("token", "t0k3n"));
    assert_eq!(enrollment(&cfg), "Some(Token(<redacted>))");
    // The file cannot carry the secret itself.
    let e = parse(
        &text.replace("[ca]\n", "[ca]\ntoken = \"x\"\n"),
        &Overrides::default(),
    );
    assert!(e
        .expect_err("token key")
        .problem
        .contains("unknown field `token`"));
}

#[test]
fn a_k8s_token_file_is_the_one_credential_or_an_error_naming_both() {
    let text = format!("{CA}{OUTBOUND}");
    let k8s = text.replace("[ca]\n", "[ca]\nk8s_token_file = \"sa/token\"\n");
    // Alone it parses, relative to the config's folder like every other path.
    let cfg = ok(&k8s, &Overrides::default());
    assert_eq!(
        enrollment(&cfg),
        r#"Some(K8sTokenFile("/etc/tether/sa/token"))"#
    );
    assert!(ca(&cfg).has_enrollment_token());
    // With a token file: which credential counts is not guessed.
    let both = k8s.replace("[ca]\n", "[ca]\ntoken_file = \"t.token\"\n");
    let e = parse(&both, &Overrides::default()).expect_err("both files");
    assert_eq!(e.key, "ca.token_file / ca.k8s_token_file");
    assert!(e.problem.contains("give one"), "{e}");
    // With the token override, the error names the key, the flag and the variable, not the token.
    let e = parse(&k8s, &only("token", "t0k3n")).expect_err("file and override");
    assert_eq!(e.key, "ca.k8s_token_file");
    let shown = e.to_string();
    assert!(shown.contains("--token / TETHER_PROXY_TOKEN"), "{shown}");
    assert!(!shown.contains("t0k3n"), "{shown}");
    // An empty path is refused rather than read as the config's folder.
    let empty = text.replace("[ca]\n", "[ca]\nk8s_token_file = \" \"\n");
    let e = parse(&empty, &Overrides::default()).expect_err("empty path");
    assert_eq!(e.key, "ca.k8s_token_file");
}

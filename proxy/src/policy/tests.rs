//! Tests of the policy engine: parsing and its errors, decisions, normalization (with
//! proptests) and hot reload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proptest::prelude::*;
use tether_certs::SpiffeId;
use time::macros::datetime;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use super::normalize::{hex_value, is_unreserved};
use super::*;

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn policy(text: &str) -> Policy {
    Policy::parse(text, "policy.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    match Policy::parse(text, "policy.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// The error for `text`, which must start with `start`.
fn err_starting(text: &str, start: &str) -> String {
    let msg = parse_err(text);
    assert!(msg.starts_with(start), "expected {start:?} first in: {msg}");
    msg
}

/// The error for `text`, which must contain `needle`.
fn err_containing(text: &str, needle: &str) -> String {
    let msg = parse_err(text);
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    msg
}

fn http<'a>(p: &'a Policy, caller: &str, method: &str, path: &str) -> Decision<'a> {
    p.decide(&id(caller), Some(method), Some(path), NOW)
}

fn allow(rule: &str) -> Decision<'_> {
    Decision::Allow { rule }
}

const A: &str = "spiffe://demo.tether/ns/default/sa/service-a";

const SAMPLE: &str = r#"
    [[rule]]
    name = "a-reads-data"
    from = ["spiffe://demo.tether/ns/default/sa/service-a", "spiffe://demo.tether/ns/ops/*"]
    methods = ["GET", "HEAD"]
    paths = ["/data", "/data/*"]

    [[rule]]
    name = "a-posts-submit"
    from = ["spiffe://demo.tether/ns/default/sa/service-a"]
    methods = ["POST"]
    paths = ["/submit"]
"#;

// ---- parse errors ----

#[test]
fn unknown_key_in_rule_names_rule_and_key() {
    err_starting(
        "[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\ncolour = \"red\"\n",
        "policy.toml: rule 1 (\"r\"): colour: unknown key",
    );
}

#[test]
fn unknown_top_level_key_is_rejected_with_location() {
    let msg = parse_err("modes = \"audit\"\n");
    assert!(msg.starts_with("policy.toml: "), "{msg}");
    assert!(
        msg.contains("unknown field `modes`") && msg.contains("line 1"),
        "{msg}"
    );
    let msg = parse_err("[[rules]]\nname = \"r\"\n");
    assert!(msg.contains("unknown field `rules`"), "{msg}");
}

#[test]
fn missing_name() {
    let msg = parse_err("[[rule]]\nfrom = [\"spiffe://td/a\"]\n");
    assert_eq!(
        msg,
        "policy.toml: rule 1 (unnamed): name: missing (every rule needs a unique name)"
    );
    err_starting(
        "[[rule]]\nname = \" \"\nfrom = [\"spiffe://td/a\"]\n",
        "policy.toml: rule 1 (unnamed): name: ",
    );
    err_containing(
        "[[rule]]\nname = 3\nfrom = [\"spiffe://td/a\"]\n",
        "rule 1 (unnamed): name: expected a string, got integer",
    );
}

#[test]
fn duplicate_name_points_at_first_use() {
    let msg = parse_err(
        "[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\n[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/b\"]\n",
    );
    assert_eq!(
        msg,
        "policy.toml: rule 2 (\"r\"): name: \"r\" is already the name of rule 1"
    );
}

#[test]
fn missing_or_empty_from() {
    err_starting(
        "[[rule]]\nname = \"r\"\n",
        "policy.toml: rule 1 (\"r\"): from: missing",
    );
    err_starting(
        "[[rule]]\nname = \"r\"\nfrom = []\n",
        "policy.toml: rule 1 (\"r\"): from: must not be empty",
    );
    err_containing(
        "[[rule]]\nname = \"r\"\nfrom = \"spiffe://td/a\"\n",
        "from: expected an array of strings, got string",
    );
    err_containing(
        "[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\", 7]\n",
        "from[1]: expected a string, got integer",
    );
}

#[test]
fn bad_spiffe_id() {
    let msg = err_starting(
        "[[rule]]\nname = \"a\"\nfrom = [\"spiffe://td/a\"]\n\
         [[rule]]\nname = \"b-writes\"\nfrom = [\"spiffe://td/a\", \"spiffe://X/y\"]\n",
        "policy.toml: rule 2 (\"b-writes\"): from[1]: \"spiffe://X/y\" is not a valid SPIFFE ID: ",
    );
    assert!(msg.contains("lowercase"), "{msg}");
}

#[test]
fn bad_prefix() {
    for bad in ["spiffe://td/a*", "spiffe://td/*/b", "*"] {
        let msg = err_starting(
            &format!("[[rule]]\nname = \"r\"\nfrom = [\"{bad}\"]\n"),
            "policy.toml: rule 1 (\"r\"): from[0]: ",
        );
        assert!(
            msg.contains("only allowed as a final \"/*\""),
            "{bad}: {msg}"
        );
    }
    for bad in ["spiffe://td/a//*", "spiffe://*", "spiffe://TD/*"] {
        err_containing(
            &format!("[[rule]]\nname = \"r\"\nfrom = [\"{bad}\"]\n"),
            &format!("from[0]: \"{bad}\" is not a valid SPIFFE ID prefix"),
        );
    }
}

#[test]
fn bad_method_token() {
    let rule = |m: &str| {
        format!("[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\nmethods = [\"GET\", {m:?}]\n")
    };
    let msg = err_starting(
        &rule("get"),
        "policy.toml: rule 1 (\"r\"): methods[1]: \"get\" must be upper-case",
    );
    assert!(msg.contains("write \"GET\""), "{msg}");
    for bad in ["GE T", "", "GET\n", "(GET)"] {
        let msg = err_containing(&rule(bad), "not a valid HTTP method token");
        assert!(msg.contains("methods[1]: "), "{msg}");
    }
    assert!(parse_err(&rule("*")).contains("omit `methods`"));
    err_containing(
        "[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\nmethods = []\n",
        "rule 1 (\"r\"): methods: must not be empty",
    );
    // Extension methods are fine.
    policy(&rule("PROPFIND"));
}

#[test]
fn method_tokens_are_tchars_in_any_case() {
    for good in ["GET", "get", "PROPFIND", "M-SEARCH", "!#$%&'*+-.^_`|~09az"] {
        assert!(is_method_token(good), "{good}");
    }
    for bad in ["", "GE T", "GET\n", "(GET)", "GET/", "G\u{e9}T", "\"GET\""] {
        assert!(!is_method_token(bad), "{bad:?}");
    }
}

#[test]
fn non_normalized_rule_paths() {
    let rule = |p: &str| {
        format!("[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\npaths = [\"/ok\", {p:?}]\n")
    };
    let cases = [
        ("/a//b", "is not normalized; write \"/a/b\""),
        ("/a/./b", "write \"/a/b\""),
        ("/a/../b", "write \"/b\""),
        ("/%7e", "write \"/~\""),
        ("/a%2fb", "is not a valid path: percent-escape %2F"),
        ("data", "is not a valid path: path must start with"),
        ("/data//*", "write \"/data/*\""),
        ("/data*", "only allowed as a final \"/*\""),
        ("/a/*/b", "only allowed as a final \"/*\""),
        ("/..", "climbs above the root"),
    ];
    for (path, want) in cases {
        let msg = parse_err(&rule(path));
        assert!(
            msg.starts_with("policy.toml: rule 1 (\"r\"): paths[1]: "),
            "{path}: {msg}"
        );
        assert!(msg.contains(want), "{path}: {msg}");
    }
}

#[test]
fn bad_expires() {
    let rule =
        |e: &str| format!("[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\nexpires = {e}\n");
    for bad in [
        "\"tomorrow\"",
        "\"2026-12-31\"",
        "\"2026-12-31T00:00:00\"",
        "2026-12-31T00:00:00",
        "5",
    ] {
        let msg = parse_err(&rule(bad));
        assert!(
            msg.starts_with("policy.toml: rule 1 (\"r\"): expires: "),
            "{bad}: {msg}"
        );
    }
    // Both the quoted form and a native TOML offset date-time are accepted.
    policy(&rule("\"2026-12-31T00:00:00Z\""));
    policy(&rule("2026-12-31T00:00:00+02:00"));
}

#[test]
fn bad_mode() {
    assert_eq!(
        parse_err("mode = \"Audit\"\n"),
        "policy.toml: mode: \"Audit\" is not \"enforce\" or \"audit\""
    );
    assert!(parse_err("mode = 1\n").contains("policy.toml: "));
}

#[test]
fn rule_that_is_not_a_table() {
    err_starting(
        "rule = [1]\n",
        "policy.toml: rule 1 (unnamed): rule: expected a table",
    );
}

#[test]
fn read_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("missing.toml");
    let msg = Policy::load(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("missing.toml: cannot read policy file"),
        "{msg}"
    );
}

// ---- decisions ----

#[test]
fn exact_allow_and_first_match_wins() {
    let p = policy(SAMPLE);
    assert_eq!(p.len(), 2);
    assert_eq!(p.mode(), Mode::Enforce);
    assert_eq!(http(&p, A, "GET", "/data"), allow("a-reads-data"));
    assert_eq!(http(&p, A, "POST", "/submit"), allow("a-posts-submit"));
    let both = policy(
        "[[rule]]\nname = \"first\"\nfrom = [\"spiffe://td/ns/*\"]\n\
         [[rule]]\nname = \"second\"\nfrom = [\"spiffe://td/ns/a\"]\n\
         [[rule]]\nname = \"third\"\nfrom = [\"spiffe://td/ns/a\"]\n",
    );
    assert_eq!(http(&both, "spiffe://td/ns/a", "GET", "/"), allow("first"));
    let reversed = policy(
        "[[rule]]\nname = \"exact\"\nfrom = [\"spiffe://td/ns/a\"]\n\
         [[rule]]\nname = \"prefix\"\nfrom = [\"spiffe://td/*\"]\n",
    );
    assert_eq!(
        http(&reversed, "spiffe://td/ns/a", "GET", "/"),
        allow("exact")
    );
    assert_eq!(
        http(&reversed, "spiffe://td/ns/b", "GET", "/"),
        allow("prefix")
    );
}

#[test]
fn later_rule_matches_when_earlier_does_not() {
    let p = policy(
        "[[rule]]\nname = \"get\"\nfrom = [\"spiffe://td/*\"]\nmethods = [\"GET\"]\n\
         [[rule]]\nname = \"post\"\nfrom = [\"spiffe://td/a\"]\nmethods = [\"POST\"]\n",
    );
    assert_eq!(http(&p, "spiffe://td/a", "POST", "/"), allow("post"));
    assert_eq!(http(&p, "spiffe://td/a", "GET", "/"), allow("get"));
    assert_eq!(http(&p, "spiffe://td/b", "POST", "/"), Decision::Deny);
}

#[test]
fn prefix_allow() {
    let p = policy(SAMPLE);
    let ok = [
        "spiffe://demo.tether/ns/ops/x",
        "spiffe://demo.tether/ns/ops/x/y",
    ];
    for caller in ok {
        assert_eq!(
            http(&p, caller, "GET", "/data"),
            allow("a-reads-data"),
            "{caller}"
        );
    }
    let not = [
        "spiffe://demo.tether/ns/opsx",
        "spiffe://demo.tether/ns/ops",
        "spiffe://demo.tether/ns",
        "spiffe://other.tether/ns/ops/x",
        "spiffe://demo.tether.evil/ns/ops/x",
    ];
    for caller in not {
        assert_eq!(http(&p, caller, "GET", "/data"), Decision::Deny, "{caller}");
    }
}

#[test]
fn trust_domain_prefix_matches_every_workload_of_that_domain_only() {
    let p = policy("[[rule]]\nname = \"td\"\nfrom = [\"spiffe://td/*\"]\n");
    assert_eq!(http(&p, "spiffe://td/a", "GET", "/"), allow("td"));
    assert_eq!(http(&p, "spiffe://td/a/b/c", "GET", "/"), allow("td"));
    assert_eq!(http(&p, "spiffe://td", "GET", "/"), Decision::Deny);
    assert_eq!(http(&p, "spiffe://tdx/a", "GET", "/"), Decision::Deny);
}

#[test]
fn method_deny() {
    let p = policy(SAMPLE);
    assert_eq!(http(&p, A, "HEAD", "/data"), allow("a-reads-data"));
    assert_eq!(http(&p, A, "DELETE", "/data"), Decision::Deny);
    // Methods are case-sensitive on the wire too.
    assert_eq!(http(&p, A, "get", "/data"), Decision::Deny);
}

#[test]
fn path_deny_and_prefix_vs_exact() {
    let p = policy(SAMPLE);
    for path in ["/data", "/data/", "/data/x", "/data/x/y"] {
        assert_eq!(http(&p, A, "GET", path), allow("a-reads-data"), "{path}");
    }
    for path in ["/", "/database", "/dat", "/other/data", "/Data"] {
        assert_eq!(http(&p, A, "GET", path), Decision::Deny, "{path}");
    }
    assert_eq!(http(&p, A, "POST", "/submit/x"), Decision::Deny);
    assert_eq!(http(&p, A, "POST", "/submit/"), Decision::Deny);
    let only_prefix =
        policy("[[rule]]\nname = \"p\"\nfrom = [\"spiffe://td/a\"]\npaths = [\"/data/*\"]\n");
    assert_eq!(
        http(&only_prefix, "spiffe://td/a", "GET", "/data/x"),
        allow("p")
    );
    assert_eq!(
        http(&only_prefix, "spiffe://td/a", "GET", "/data"),
        Decision::Deny
    );
}

#[test]
fn expired_rule() {
    let p = policy(
        "[[rule]]\nname = \"temp\"\nfrom = [\"spiffe://td/a\"]\nexpires = \"2026-12-31T00:00:00Z\"\n",
    );
    let caller = id("spiffe://td/a");
    let before = datetime!(2026-12-30 23:59:59 UTC);
    let at = datetime!(2026-12-31 00:00 UTC);
    let after = datetime!(2027-01-01 00:00 UTC);
    assert_eq!(
        p.decide(&caller, Some("GET"), Some("/"), before),
        allow("temp")
    );
    assert_eq!(
        p.decide(&caller, Some("GET"), Some("/"), at),
        Decision::Deny
    );
    assert_eq!(
        p.decide(&caller, Some("GET"), Some("/"), after),
        Decision::Deny
    );
    // Offsets are honoured: 02:00+02:00 is midnight UTC.
    let p = policy(
        "[[rule]]\nname = \"t\"\nfrom = [\"spiffe://td/a\"]\nexpires = 2026-12-31T02:00:00+02:00\n",
    );
    assert_eq!(p.decide(&caller, None, None, before), allow("t"));
    assert_eq!(p.decide(&caller, None, None, at), Decision::Deny);
}

#[test]
fn audit_mode_parsed() {
    let mut text = String::from("mode = \"audit\"\n");
    text.push_str(SAMPLE);
    let p = policy(&text);
    assert_eq!(p.mode(), Mode::Audit);
    assert_eq!(p.mode().to_string(), "audit");
    // The decision itself does not change; the caller applies the mode.
    assert_eq!(http(&p, A, "DELETE", "/data"), Decision::Deny);
    assert_eq!(policy("mode = \"enforce\"").mode(), Mode::Enforce);
}

#[test]
fn default_deny_with_empty_policy() {
    for p in [policy(""), Policy::deny_all()] {
        assert!(p.is_empty());
        assert_eq!(p.mode(), Mode::Enforce);
        assert_eq!(http(&p, A, "GET", "/"), Decision::Deny);
        assert_eq!(p.decide(&id(A), None, None, NOW), Decision::Deny);
    }
}

#[test]
fn tcp_only_matches_rules_without_methods_or_paths() {
    let p = policy(
        "[[rule]]\nname = \"http-only\"\nfrom = [\"spiffe://td/a\"]\nmethods = [\"GET\"]\n\
         [[rule]]\nname = \"paths-only\"\nfrom = [\"spiffe://td/a\", \"spiffe://td/b\"]\npaths = [\"/*\"]\n\
         [[rule]]\nname = \"any\"\nfrom = [\"spiffe://td/a\"]\n",
    );
    assert_eq!(
        p.decide(&id("spiffe://td/a"), None, None, NOW),
        allow("any")
    );
    assert_eq!(
        p.decide(&id("spiffe://td/b"), None, None, NOW),
        Decision::Deny
    );
    assert_eq!(http(&p, "spiffe://td/a", "GET", "/x"), allow("http-only"));
    assert_eq!(http(&p, "spiffe://td/b", "PUT", "/x"), allow("paths-only"));
}

#[test]
fn ten_thousand_rules_still_decide_right() {
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\nfrom = [\"spiffe://td/ns/n{}/sa/s{i}\", \"spiffe://td/group/g{i}/*\"]\n\
             methods = [\"GET\"]\npaths = [\"/svc/{i}/*\"]\n",
            i % 100
        ));
    }
    text.push_str("[[rule]]\nname = \"ops\"\nfrom = [\"spiffe://td/ops/*\"]\n");
    let p = policy(&text);
    assert_eq!(p.len(), 10_001);
    let s9942 = "spiffe://td/ns/n42/sa/s9942";
    for (caller, method, path, want) in [
        (s9942, "GET", "/svc/9942/x", allow("r9942")),
        (s9942, "GET", "/svc/9941/x", Decision::Deny),
        (s9942, "POST", "/svc/9942/x", Decision::Deny),
        ("spiffe://td/group/g7/x/y", "GET", "/svc/7/z", allow("r7")),
        ("spiffe://td/group/g7", "GET", "/svc/7/z", Decision::Deny),
        (
            "spiffe://td/ns/n1/sa/unknown",
            "GET",
            "/svc/1/x",
            Decision::Deny,
        ),
    ] {
        assert_eq!(
            http(&p, caller, method, path),
            want,
            "{caller} {method} {path}"
        );
    }
    assert_eq!(
        p.decide(&id("spiffe://td/ops/a/b"), None, None, NOW),
        allow("ops")
    );
}

// ---- normalization ----

#[test]
fn normalization_table() {
    let ok = [
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/%61", "/a"),
        ("/a/%2e%2e/b", "/b"),
        ("/a%20b", "/a%20b"),
        ("/a%7e", "/a~"),
        ("/a/b/", "/a/b/"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/a%3f", "/a%3F"),
        ("/%2E", "/"),
        ("/a/b/c/../../d/", "/a/d/"),
        ("/.a/..b/...", "/.a/..b/..."),
        ("/a:b@c;d=e", "/a:b@c;d=e"),
    ];
    for (raw, want) in ok {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
    }
    let err = [
        (
            "/a%2fb",
            PathError::ForbiddenEscape {
                byte: b'/',
                index: 2,
            },
        ),
        (
            "/a%2Fb",
            PathError::ForbiddenEscape {
                byte: b'/',
                index: 2,
            },
        ),
        (
            "/a%5Cb",
            PathError::ForbiddenEscape {
                byte: b'\\',
                index: 2,
            },
        ),
        ("/a\\b", PathError::ForbiddenChar { ch: '\\', index: 2 }),
        ("/..", PathError::AboveRoot),
        ("/a/../..", PathError::AboveRoot),
        ("/%2e%2e/x", PathError::AboveRoot),
        ("/%00", PathError::ForbiddenEscape { byte: 0, index: 1 }),
        ("/a\0", PathError::ForbiddenChar { ch: '\0', index: 2 }),
        ("/a\tb", PathError::ForbiddenChar { ch: '\t', index: 2 }),
        ("/a b", PathError::ForbiddenChar { ch: ' ', index: 2 }),
        ("/a?b", PathError::ForbiddenChar { ch: '?', index: 2 }),
        ("/a#b", PathError::ForbiddenChar { ch: '#', index: 2 }),
        ("/é", PathError::ForbiddenChar { ch: 'é', index: 1 }),
        ("/a%", PathError::MalformedEscape { index: 2 }),
        ("/a%4", PathError::MalformedEscape { index: 2 }),
        ("/a%zz", PathError::MalformedEscape { index: 2 }),
        ("", PathError::Empty),
        ("a/b", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
    ];
    for (raw, want) in err {
        assert_eq!(normalize_path(raw), Err(want), "{raw:?}");
    }
}

#[test]
fn path_error_messages() {
    assert_eq!(
        PathError::ForbiddenEscape {
            byte: b'/',
            index: 2
        }
        .to_string(),
        "percent-escape %2F at byte 2 is not allowed (encoded \"/\", \"\\\" and NUL are refused)"
    );
    assert_eq!(
        PathError::AboveRoot.to_string(),
        "\"..\" climbs above the root"
    );
}

/// Checks the invariants every accepted path must have.
fn check_normal(raw: &str) -> Result<(), TestCaseError> {
    if let Ok(out) = normalize_path(raw) {
        prop_assert_eq!(
            normalize_path(&out),
            Ok(out.clone()),
            "not idempotent for {:?}",
            raw
        );
        prop_assert!(out.starts_with('/'));
        for bad in ["//", "/./", "/../", "\\", "\0"] {
            prop_assert!(
                !out.contains(bad),
                "{:?} -> {:?} contains {:?}",
                raw,
                out,
                bad
            );
        }
        prop_assert!(
            !out.ends_with("/.") && !out.ends_with("/.."),
            "{:?} -> {:?}",
            raw,
            out
        );
        if raw.ends_with('/') {
            prop_assert!(out.ends_with('/'), "{:?} -> {:?}", raw, out);
        }
        prop_assert!(
            out.bytes()
                .all(|b| b > b' ' && b < 0x7f && !b"\\?#".contains(&b)),
            "{:?} -> {:?}",
            raw,
            out
        );
        // Every escape left is upper-case and stands for a character that needs one.
        let bytes = out.as_bytes();
        for (i, _) in out.match_indices('%') {
            let hex = |j: usize| bytes.get(j).copied().filter(|b| !b.is_ascii_lowercase());
            let decoded = hex(i + 1)
                .and_then(hex_value)
                .zip(hex(i + 2).and_then(hex_value))
                .map(|(hi, lo)| hi << 4 | lo);
            prop_assert!(
                decoded.is_some_and(|b| !is_unreserved(b)),
                "{:?} -> {:?}",
                raw,
                out
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn normalize_never_panics_on_arbitrary_strings(s in any::<String>()) {
        check_normal(&s)?;
        check_normal(&format!("/{s}"))?;
    }

    // Drawn from the characters that matter so most inputs are accepted and the
    // invariants are really exercised.
    #[test]
    fn normalize_is_idempotent(s in "/[/a.%25eEfF0~_ \\\\?]{0,40}") {
        check_normal(&s)?;
    }

    #[test]
    fn normalize_segments_idempotent(segs in prop::collection::vec(prop::sample::select(vec![
        "", ".", "..", "%2e", "%2E%2e", "a", "b%20", "%41", "%7E", "x.y", "%3a", ":", "@",
    ]), 0..8), trailing in any::<bool>()) {
        let mut s = String::new();
        for seg in segs {
            s.push('/');
            s.push_str(seg);
        }
        if trailing || s.is_empty() {
            s.push('/');
        }
        check_normal(&s)?;
    }
}

// ---- `;` path parameters, in each mode and backend style ----

mod path_params;

// ---- handle and reloader ----

#[test]
fn handle_replace_swaps_for_new_readers_only() {
    let handle = PolicyHandle::new(Policy::deny_all());
    let old = handle.current();
    handle.replace(policy(SAMPLE));
    assert_eq!(old.len(), 0);
    assert_eq!(handle.current().len(), 2);
    assert_eq!(
        http(&handle.current(), A, "GET", "/data"),
        allow("a-reads-data")
    );
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{e}"));
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 2 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rules(n: usize) -> String {
    (0..n)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\nfrom = [\"spiffe://td/a\"]\n"))
        .collect()
}

#[derive(Default)]
struct Reloads {
    ok: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Reloads {
    fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn spawn(path: &Path, handle: &Arc<PolicyHandle>) -> (Arc<Reloads>, JoinHandle<()>) {
    let seen = Arc::new(Reloads::default());
    let s = seen.clone();
    let task = spawn_reloader(
        path.to_owned(),
        handle.clone(),
        Duration::from_millis(20),
        move |r| match r {
            Ok(_) => {
                s.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => s
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(e.to_string()),
        },
    );
    (seen, task)
}

#[tokio::test]
async fn reloader_picks_up_changes_and_keeps_old_policy_on_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("policy.toml");
    write_atomic(&path, &rules(1));
    let handle = PolicyHandle::new(Policy::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let (seen, task) = spawn(&path, &handle);

    write_atomic(&path, &rules(2));
    eventually("good policy loaded", || handle.current().len() == 2).await;
    // The file the handle started with was not reloaded: one reload in all.
    assert_eq!(seen.ok.load(Ordering::SeqCst), 1);

    write_atomic(&path, "[[rule]]\nname = \"broken\"\n");
    eventually("error reported", || !seen.errors().is_empty()).await;
    assert_eq!(handle.current().len(), 2, "old policy kept");
    let errors = seen.errors();
    assert!(
        errors[0].contains("policy.toml: rule 1 (\"broken\"): from: missing"),
        "{errors:?}"
    );

    write_atomic(&path, &rules(3));
    eventually("fixed policy loaded", || handle.current().len() == 3).await;
    assert_eq!(seen.ok.load(Ordering::SeqCst), 2);
    assert_eq!(seen.errors().len(), 1, "the broken file is reported once");
    task.abort();
}

#[tokio::test]
async fn reloader_starts_from_deny_all_and_reports_missing_file_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("policy.toml");
    let handle = PolicyHandle::new(Policy::deny_all());
    let (seen, task) = spawn(&path, &handle);
    eventually("missing file reported", || !seen.errors().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let errors = seen.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("cannot read policy file"), "{errors:?}");
    assert!(handle.current().is_empty());

    write_atomic(&path, &format!("mode = \"audit\"\n{}", rules(1)));
    eventually("policy loaded", || handle.current().len() == 1).await;
    assert_eq!(handle.current().mode(), Mode::Audit);
    task.abort();
}

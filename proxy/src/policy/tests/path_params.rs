//! `;` path parameters in each [`PathParams`] mode, against each backend style: servlet
//! containers and Spring (strip `;params`, then resolve dot segments), Jetty (the same, seen
//! through `%2e` escapes) and a plain backend that treats `;` as an ordinary character.

use proptest::prelude::*;

use super::super::*;
use super::{allow, http, policy, A};

use PathParams::{Keep, Reject, Strip};

/// A policy letting service-a reach `/data` and everything under it, and nothing else.
const DATA: &str = r#"
    [[rule]]
    name = "a-data"
    from = ["spiffe://demo.tether/ns/default/sa/service-a"]
    paths = ["/data", "/data/*"]
"#;

fn dot_params(index: usize) -> PathError {
    PathError::DotSegmentParams { index }
}

/// Paths that Tomcat and Spring resolve differently from a plain backend, with the offset of
/// the segment they disagree on.
const TOMCAT_SPRING: [(&str, usize); 5] = [
    ("/data/..;/admin", 6),
    ("/data/.;/x", 6),
    ("/data/..;jsessionid=1/admin", 6),
    ("/..;/admin", 1),
    ("/data/x/..;", 8),
];

/// The same through escapes, as Jetty decodes them (and `%3B`, for backends that decode a
/// `;` before they strip parameters).
const JETTY: [(&str, usize); 7] = [
    ("/data/%2e%2e;/admin", 6),
    ("/data/%2E.;x/admin", 6),
    ("/data/.%2e;/admin", 6),
    ("/data/%2e;/x", 6),
    ("/data/..%3b/admin", 6),
    ("/data/..%3Bx/admin", 6),
    ("/data/.%3B/x", 6),
];

#[test]
fn reject_is_the_default() {
    assert_eq!(PathParams::default(), Reject);
    assert_eq!(
        normalize_path("/data/..;/admin"),
        normalize_path_with("/data/..;/admin", Reject)
    );
}

#[test]
fn reject_refuses_dot_segments_with_params_for_tomcat_and_spring() {
    for (raw, index) in TOMCAT_SPRING {
        assert_eq!(
            normalize_path_with(raw, Reject),
            Err(dot_params(index)),
            "{raw}"
        );
    }
}

#[test]
fn reject_refuses_escaped_dot_segments_with_params_for_jetty() {
    for (raw, index) in JETTY {
        assert_eq!(
            normalize_path_with(raw, Reject),
            Err(dot_params(index)),
            "{raw}"
        );
    }
}

#[test]
fn reject_keeps_every_other_parameter_as_it_is() {
    for (raw, want) in [
        ("/data/x;v=1", "/data/x;v=1"),
        ("/data/x;v=1/y;w=2", "/data/x;v=1/y;w=2"),
        ("/data/x;", "/data/x;"),
        // A segment of parameters only: a stripping backend drops one segment, which cannot
        // climb out of the prefix that matched.
        ("/data/;/x", "/data/;/x"),
        ("/data/;..", "/data/;.."),
        ("/data/...;x", "/data/...;x"),
        ("/data/.x;y", "/data/.x;y"),
        // Dot segments without parameters are resolved as always.
        ("/data/x;v=1/../y", "/data/y"),
        ("/data/;x/./y", "/data/;x/y"),
        // An escaped `;` is data, kept escaped.
        ("/data/x%3bv", "/data/x%3Bv"),
    ] {
        assert_eq!(
            normalize_path_with(raw, Reject).as_deref(),
            Ok(want),
            "{raw}"
        );
    }
    let p = policy(DATA);
    assert_eq!(http(&p, A, "GET", "/data/x;v=1"), allow("a-data"));
}

#[test]
fn strip_matches_what_a_servlet_container_resolves() {
    for (raw, want) in [
        ("/data/..;/admin", "/admin"),
        ("/data/.;/x", "/data/x"),
        ("/data/..;jsessionid=1/admin", "/admin"),
        ("/data/%2e%2e;/admin", "/admin"),
        ("/data/.%2e;x/admin", "/admin"),
        ("/data/x;v=1", "/data/x"),
        ("/data;v=1/x;w=2", "/data/x"),
        ("/data/;/x", "/data/x"),
        ("/data/x;", "/data/x"),
        ("/data/;", "/data/"),
        ("/data/x%3Bv", "/data/x%3Bv"),
    ] {
        assert_eq!(
            normalize_path_with(raw, Strip).as_deref(),
            Ok(want),
            "{raw}"
        );
    }
    // What the policy sees is what Tomcat would serve: /admin is not under /data.
    let p = policy(DATA);
    let admin = normalize_path_with("/data/..;/admin", Strip).unwrap();
    assert_eq!(http(&p, A, "GET", &admin), Decision::Deny);
}

#[test]
fn strip_still_checks_the_parameters_it_drops() {
    for (raw, want) in [
        ("/..;/admin", PathError::AboveRoot),
        ("/data/..;/..;/..", PathError::AboveRoot),
        // An escaped `;` is not a separator: which side of it is the name is ambiguous.
        ("/data/..%3B/admin", dot_params(6)),
        (
            "/data/x;%2f",
            PathError::ForbiddenEscape {
                byte: b'/',
                index: 8,
            },
        ),
        (
            "/data/x;a b",
            PathError::ForbiddenChar { ch: ' ', index: 9 },
        ),
        ("/data/x;%zz", PathError::MalformedEscape { index: 8 }),
    ] {
        assert_eq!(normalize_path_with(raw, Strip), Err(want), "{raw}");
    }
}

#[test]
fn keep_treats_a_semicolon_as_an_ordinary_character() {
    for (raw, want) in [
        ("/data/a;b", "/data/a;b"),
        ("/data/..;/admin", "/data/..;/admin"),
        ("/data/%2e%2e;/x", "/data/..;/x"),
        ("/data/..%3b/x", "/data/..%3B/x"),
    ] {
        assert_eq!(normalize_path_with(raw, Keep).as_deref(), Ok(want), "{raw}");
    }
    // For a backend that reads `..;` as a name, this is a path under /data.
    let p = policy(DATA);
    assert_eq!(http(&p, A, "GET", "/data/..;/admin"), allow("a-data"));
}

#[test]
fn path_params_parse_and_print_their_config_spelling() {
    for mode in [Keep, Reject, Strip] {
        assert_eq!(mode.to_string().parse(), Ok(mode));
    }
    let err = "sometimes".parse::<PathParams>().unwrap_err();
    assert_eq!(
        err,
        "\"sometimes\" is not \"reject\" (the default), \"strip\" or \"keep\""
    );
    // Spelled exactly, like every other setting.
    assert!("Reject".parse::<PathParams>().is_err());
}

#[test]
fn dot_segment_params_message_names_the_segment() {
    assert_eq!(
        dot_params(6).to_string(),
        "segment at byte 6 is \".\" or \"..\" with \";\" parameters, which Tomcat, Spring and \
         Jetty resolve as a dot segment"
    );
}

/// The guarantee of `reject`: whatever it forwards, a backend that strips parameters resolves
/// under every prefix the forwarded path was matched under.
fn check_reject_survives_stripping(raw: &str) -> Result<(), TestCaseError> {
    let Ok(out) = normalize_path_with(raw, Reject) else {
        return Ok(());
    };
    prop_assert_eq!(normalize_path_with(&out, Reject), Ok(out.clone()));
    let stripped = normalize_path_with(&out, Strip);
    prop_assert!(stripped.is_ok(), "{:?} -> {:?} -> {:?}", raw, out, stripped);
    let stripped = stripped.unwrap_or_default();
    for (i, _) in out.match_indices('/') {
        let prefix = &out[..=i];
        if !prefix.contains(';') {
            prop_assert!(
                stripped.starts_with(prefix),
                "{:?} -> {:?} matches {:?}*, but a stripping backend reads {:?}",
                raw,
                out,
                prefix,
                stripped
            );
        }
    }
    Ok(())
}

/// Paths built from the segments that matter here, so most are accepted and the properties
/// are really exercised.
fn param_paths() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "", "a", "b", ".", "..", "%2e", "%2E%2e", ";", ";..", "a;b", "x;v=1", ".;", "..;", "..;x",
        ".%2e;", "..%3b", "a%3Bb", "...;", ".a;",
    ]);
    (prop::collection::vec(segment, 0..8), any::<bool>()).prop_map(|(segments, trailing)| {
        let mut s: String = segments.into_iter().flat_map(|seg| ["/", seg]).collect();
        if trailing || s.is_empty() {
            s.push('/');
        }
        s
    })
}

proptest! {
    #[test]
    fn reject_output_stays_under_its_prefixes_once_stripped(s in param_paths()) {
        check_reject_survives_stripping(&s)?;
    }

    #[test]
    fn every_mode_is_idempotent(s in param_paths()) {
        for mode in [Keep, Reject, Strip] {
            if let Ok(out) = normalize_path_with(&s, mode) {
                prop_assert_eq!(normalize_path_with(&out, mode), Ok(out.clone()), "{:?}", mode);
                if mode == Strip {
                    prop_assert!(!out.contains(';'), "{:?} -> {:?}", s, out);
                }
            }
        }
    }
}

//! SPIFFE identities: strict parsing and printing of trust domains and SPIFFE IDs.
//!
//! A SPIFFE ID names a workload, e.g. `spiffe://demo.tether/ns/default/sa/web`.
//! This module follows the SPIFFE-ID standard
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>) and is
//! deliberately strict: it parses identities that arrive over the network (URI SANs
//! of peer certificates), so input that is not already in canonical form is
//! **rejected, never repaired**. Silently lowercasing or normalising would let two
//! different strings name the same workload, which breaks authorization that compares
//! IDs as strings.
//!
//! The rules enforced:
//!
//! * The scheme is exactly `spiffe://` (lowercase, two slashes).
//! * The trust domain is non-empty, at most 255 bytes, and uses only `a-z 0-9 . - _`.
//!   Uppercase is an error (not folded), and so are a port (`:`) and userinfo (`@`).
//! * The path is either empty or one or more segments, each a `/` followed by one or
//!   more of `A-Z a-z 0-9 . - _`. Empty segments (`//`, a trailing `/`), the segments
//!   `.` and `..`, percent-encoding, a query (`?`), a fragment (`#`) and every other
//!   character are rejected. (A segment such as `...` or `a.b` is fine.)
//! * The whole ID is at most 2048 bytes.
//! * `spiffe://<trust domain>` with no path is itself a valid ID: the trust domain's
//!   own identity (see [`SpiffeId::is_trust_domain_id`]).
//!
//! Every value of [`TrustDomain`] and [`SpiffeId`] is valid by construction, so code
//! that receives one never has to re-check it.

mod rules;

use std::fmt;
use std::str::FromStr;

pub use rules::SpiffeIdError;
use rules::{validate_path, validate_trust_domain};

/// The URI scheme every SPIFFE ID starts with, exactly as it must appear.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// A SPIFFE trust domain name such as `demo.tether`: the authority part of a SPIFFE ID.
///
/// Always valid: non-empty, at most [`TrustDomain::MAX_LEN`] bytes, only `a-z 0-9 . - _`.
/// `Display` prints the bare name, without `spiffe://`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Longest trust domain name accepted, in bytes (the DNS name limit the spec adopts).
    pub const MAX_LEN: usize = rules::MAX_TRUST_DOMAIN_LEN;

    /// Validates a bare trust domain name, e.g. `"demo.tether"` (no scheme, no port).
    ///
    /// Uppercase, `:`, `@` and anything outside `a-z 0-9 . - _` are rejected, not fixed.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name, 0)?;
        Ok(Self(name.to_owned()))
    }

    /// The bare name, e.g. `"demo.tether"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>` (empty path).
    pub fn id(&self) -> SpiffeId {
        // A valid name is at most 255 bytes, so the result is always within
        // SpiffeId::MAX_LEN and needs no further checks.
        let mut id = String::with_capacity(SPIFFE_SCHEME.len() + self.0.len());
        id.push_str(SPIFFE_SCHEME);
        id.push_str(&self.0);
        let path_start = id.len();
        SpiffeId { id, path_start }
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    /// Same as [`TrustDomain::new`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    /// Prints the bare name, e.g. `demo.tether`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    /// Prints the quoted name, e.g. `"demo.tether"`, to keep logs short.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl AsRef<str> for TrustDomain {
    /// The bare name.
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated SPIFFE ID such as `spiffe://demo.tether/ns/default/sa/web`.
///
/// Stored as the one canonical string plus the byte offset where the path starts, so
/// the accessors are slices and never allocate. Equality, ordering and hashing are
/// those of the canonical string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The full canonical ID, e.g. `spiffe://td/a/b`.
    id: String,
    /// Byte offset in `id` where the path (`""` or `/a/b`) begins; also the end of the
    /// trust domain. Field order matters: derived `Ord` must compare `id` first.
    path_start: usize,
}

impl SpiffeId {
    /// Longest SPIFFE ID accepted, in bytes (the spec's limit for URI SANs).
    pub const MAX_LEN: usize = rules::MAX_ID_LEN;

    /// Parses a SPIFFE ID, accepting only the canonical form described in the module docs.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let Some(rest) = s.strip_prefix(SPIFFE_SCHEME) else {
            return Err(SpiffeIdError::MissingScheme);
        };
        if s.len() > Self::MAX_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        // The trust domain runs to the first '/', which starts the path. `find`
        // returns a char boundary, so the split cannot panic.
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        let path_start = SPIFFE_SCHEME.len() + td_len;
        validate_trust_domain(td, SPIFFE_SCHEME.len())?;
        validate_path(path, path_start)?;
        // Only now, once valid, allocate the single owned copy.
        Ok(Self {
            id: s.to_owned(),
            path_start,
        })
    }

    /// Builds an ID from a trust domain and a path (`""` or `"/a/b"`), applying the same
    /// path and length rules as [`SpiffeId::parse`].
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        // `path` is arbitrary caller input; saturate rather than trust it to be small.
        let len = (SPIFFE_SCHEME.len() + td.as_str().len()).saturating_add(path.len());
        if len > Self::MAX_LEN {
            return Err(SpiffeIdError::TooLong { len });
        }
        validate_path(path, 0)?;
        let mut id = String::with_capacity(len);
        id.push_str(SPIFFE_SCHEME);
        id.push_str(td.as_str());
        let path_start = id.len();
        id.push_str(path);
        Ok(Self { id, path_start })
    }

    /// The canonical string, e.g. `"spiffe://td/a/b"`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// Consumes the ID and returns the canonical string without copying.
    pub fn into_string(self) -> String {
        self.id
    }

    /// The trust domain as an owned [`TrustDomain`] (allocates; see
    /// [`SpiffeId::trust_domain_name`] for a borrowed view).
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The trust domain name, e.g. `"td"` for `spiffe://td/a`.
    pub fn trust_domain_name(&self) -> &str {
        // The offsets were computed from this very string when it was validated, so
        // the slice always exists; `get` just keeps this free of panic paths.
        self.id
            .get(SPIFFE_SCHEME.len()..self.path_start)
            .unwrap_or_default()
    }

    /// The path: `""` for a trust domain ID, otherwise e.g. `"/a/b"`.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// The path segments without their slashes, e.g. `["ns", "default"]` for
    /// `spiffe://td/ns/default`; empty for a trust domain ID.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        // A valid path is "" or starts with '/', so skipping the first (empty)
        // piece of the split yields exactly the segments.
        self.path().split('/').skip(1)
    }

    /// True when the path is empty, i.e. this is the trust domain's own ID.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path_start == self.id.len()
    }

    /// True when this ID belongs to trust domain `td` (exact, case-sensitive match).
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    /// Same as [`SpiffeId::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    /// Prints the canonical string, which [`SpiffeId::parse`] accepts unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    /// Prints the quoted canonical string, e.g. `"spiffe://td/a"`, to keep logs short.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.id.as_str(), f)
    }
}

impl AsRef<str> for SpiffeId {
    /// The canonical string.
    fn as_ref(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::SpiffeIdError as E;
    use super::*;
    use proptest::prelude::*;

    fn err(s: &str) -> SpiffeIdError {
        match SpiffeId::parse(s) {
            Ok(id) => panic!("{s:?} should be rejected but parsed as {id:?}"),
            Err(e) => e,
        }
    }

    fn ok(s: &str) -> SpiffeId {
        match SpiffeId::parse(s) {
            Ok(id) => id,
            Err(e) => panic!("{s:?} should parse but failed: {e}"),
        }
    }

    fn td(name: &str) -> TrustDomain {
        match TrustDomain::new(name) {
            Ok(td) => td,
            Err(e) => panic!("{name:?} should be a valid trust domain: {e}"),
        }
    }

    /// A syntactically valid ID of exactly `len` bytes (len >= 21).
    fn id_of_len(len: usize) -> String {
        let prefix = "spiffe://example.org/";
        format!("{prefix}{}", "a".repeat(len - prefix.len()))
    }

    /// One `#[test]` per rejected input, named as the case: parsing the input fails with exactly
    /// the given error.
    macro_rules! rejects {
        ($($name:ident: $input:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(err($input), $want);
            }
        )*};
    }

    // ---- accepts ----

    #[test]
    fn accepts_trust_domain_id() {
        let id = ok("spiffe://example.org");
        assert_eq!(id.as_str(), "spiffe://example.org");
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "");
        assert!(id.is_trust_domain_id());
    }

    #[test]
    fn accepts_workload_id() {
        let id = ok("spiffe://example.org/ns/default/sa/service-a");
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/default/sa/service-a");
        assert!(!id.is_trust_domain_id());
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "default", "sa", "service-a"]
        );
    }

    #[test]
    fn accepts_dots_inside_segments() {
        ok("spiffe://td/a.b");
        ok("spiffe://td/.a");
        ok("spiffe://td/a.");
        ok("spiffe://td/...");
        ok("spiffe://td/.../x");
        ok("spiffe://td/..a");
    }

    #[test]
    fn accepts_mixed_case_path() {
        assert_eq!(ok("spiffe://td/Ns/DEFAULT/sA").path(), "/Ns/DEFAULT/sA");
    }

    #[test]
    fn accepts_underscore_and_dash_in_domain() {
        assert_eq!(
            ok("spiffe://my_trust-domain.local/x").trust_domain_name(),
            "my_trust-domain.local"
        );
    }

    #[test]
    fn accepts_exactly_max_len() {
        let s = id_of_len(SpiffeId::MAX_LEN);
        assert_eq!(s.len(), 2048);
        assert_eq!(ok(&s).as_str(), s);
    }

    #[test]
    fn accepts_max_len_trust_domain() {
        let name = "a".repeat(TrustDomain::MAX_LEN);
        assert_eq!(td(&name).as_str(), name);
        assert_eq!(ok(&format!("spiffe://{name}/x")).trust_domain_name(), name);
    }

    // ---- rejects ----

    rejects! {
        rejects_empty: "" => E::Empty;
        rejects_other_scheme: "http://x/y" => E::MissingScheme;
        rejects_uppercase_scheme: "SPIFFE://x" => E::MissingScheme;
        rejects_single_slash_scheme: "spiffe:/x" => E::MissingScheme;
        rejects_missing_scheme: "example.org/x" => E::MissingScheme;
        rejects_scheme_only: "spiffe://" => E::EmptyTrustDomain;
        rejects_empty_trust_domain_with_path: "spiffe:///path" => E::EmptyTrustDomain;
        rejects_uppercase_trust_domain:
            "spiffe://Example.org" => E::InvalidTrustDomainChar { ch: 'E', index: 9 };
        rejects_space_in_trust_domain:
            "spiffe://ex ample" => E::InvalidTrustDomainChar { ch: ' ', index: 11 };
        rejects_port: "spiffe://host:8080/x" => E::InvalidTrustDomainChar { ch: ':', index: 13 };
        rejects_userinfo:
            "spiffe://user@host/x" => E::InvalidTrustDomainChar { ch: '@', index: 13 };
        rejects_query_in_trust_domain:
            "spiffe://td?x" => E::InvalidTrustDomainChar { ch: '?', index: 11 };
        rejects_trailing_slash_only: "spiffe://td/" => E::EmptySegment { segment: 1 };
        rejects_double_slash: "spiffe://td//x" => E::EmptySegment { segment: 1 };
        rejects_trailing_slash: "spiffe://td/a/" => E::EmptySegment { segment: 2 };
        rejects_dot_segment: "spiffe://td/./x" => E::DotSegment { segment: 1, value: "." };
        rejects_dot_dot_segment: "spiffe://td/a/.." => E::DotSegment { segment: 2, value: ".." };
        rejects_percent_encoding: "spiffe://td/a%2Fb" => E::InvalidPathChar { ch: '%', index: 13 };
        rejects_query: "spiffe://td/a?b=c" => E::InvalidPathChar { ch: '?', index: 13 };
        rejects_fragment: "spiffe://td/a#frag" => E::InvalidPathChar { ch: '#', index: 13 };
        rejects_space_in_path: "spiffe://td/a b" => E::InvalidPathChar { ch: ' ', index: 13 };
        rejects_non_ascii_path: "spiffe://td/é" => E::InvalidPathChar { ch: 'é', index: 12 };
    }

    #[test]
    fn rejects_non_ascii_after_multibyte_offsets() {
        // Offsets are bytes, so a later error after valid segments stays exact.
        assert_eq!(
            err("spiffe://td/ab/cé"),
            E::InvalidPathChar {
                ch: 'é', index: 16
            }
        );
    }

    rejects! {
        rejects_too_long: &id_of_len(SpiffeId::MAX_LEN + 1) => E::TooLong { len: 2049 };
        rejects_nul_byte: "spiffe://td/a\0b" => E::InvalidPathChar { ch: '\0', index: 13 };
    }

    #[test]
    fn rejects_trust_domain_too_long() {
        let name = "a".repeat(TrustDomain::MAX_LEN + 1);
        assert_eq!(
            err(&format!("spiffe://{name}/x")),
            E::TrustDomainTooLong { len: 256 }
        );
    }

    #[test]
    fn rejects_surrounding_whitespace() {
        assert_eq!(err(" spiffe://td/a"), E::MissingScheme);
        assert_eq!(
            err("spiffe://td/a\n"),
            E::InvalidPathChar {
                ch: '\n',
                index: 13
            }
        );
    }

    // ---- messages ----

    #[test]
    fn messages_are_actionable() {
        let msg = |s: &str| err(s).to_string();
        assert_eq!(
            msg("http://x"),
            "SPIFFE ID must start with \"spiffe://\" (lowercase, two slashes)"
        );
        assert_eq!(
            msg(&id_of_len(3000)),
            "SPIFFE ID is 3000 bytes; the limit is 2048"
        );
        assert!(msg("spiffe://Example.org").starts_with(
            "trust domain contains invalid character 'E' at byte 9 (allowed: a-z 0-9 . - _)"
        ));
        assert!(msg("spiffe://Example.org").contains("lowercase"));
        assert!(msg("spiffe://host:8080").contains("port is not allowed"));
        assert!(msg("spiffe://u@host").contains("userinfo is not allowed"));
        assert_eq!(
            msg("spiffe://td/a/"),
            "path segment 2 is empty (\"//\" or trailing \"/\")"
        );
        assert_eq!(
            msg("spiffe://td/.."),
            "path segment 1 is \"..\"; \".\" and \"..\" segments are not allowed"
        );
        assert!(msg("spiffe://td/a%20").contains("percent-encoding is not allowed"));
        assert!(msg("spiffe://td/a#x").contains("query or fragment is not allowed"));
        assert_eq!(
            msg("spiffe://td/a\0"),
            "path contains invalid character '\\0' at byte 13 (allowed: A-Z a-z 0-9 . - _)"
        );
    }

    // ---- accessors and constructors ----

    #[test]
    fn trust_domain_accessors() {
        let id = ok("spiffe://demo.tether/ns/a");
        assert_eq!(id.trust_domain(), td("demo.tether"));
        assert_eq!(id.trust_domain().as_str(), "demo.tether");
        assert_eq!(id.trust_domain_name(), "demo.tether");
        assert_eq!(id.path(), "/ns/a");
    }

    #[test]
    fn is_member_of_matches_exact_trust_domain() {
        let id = ok("spiffe://demo.tether/ns/a");
        assert!(id.is_member_of(&td("demo.tether")));
        assert!(!id.is_member_of(&td("demo.tether2")));
        assert!(!id.is_member_of(&td("demo")));
        assert!(!id.is_member_of(&td("other.tether")));
        assert!(ok("spiffe://demo.tether").is_member_of(&td("demo.tether")));
    }

    #[test]
    fn trust_domain_id_roundtrip() {
        let t = td("demo.tether");
        let id = t.id();
        assert_eq!(id.as_str(), "spiffe://demo.tether");
        assert!(id.is_trust_domain_id());
        assert_eq!(id.trust_domain(), t);
        assert_eq!(id.segments().count(), 0);
        assert_eq!(id, ok("spiffe://demo.tether"));
    }

    #[test]
    fn from_parts_valid() {
        let t = td("demo.tether");
        let id = SpiffeId::from_parts(&t, "/ns/default/sa/web").map_err(|e| e.to_string());
        assert_eq!(
            id.as_ref().map(|i| i.as_str()),
            Ok("spiffe://demo.tether/ns/default/sa/web")
        );
        assert_eq!(id, Ok(ok("spiffe://demo.tether/ns/default/sa/web")));
        assert_eq!(SpiffeId::from_parts(&t, ""), Ok(t.id()));
    }

    #[test]
    fn from_parts_invalid_path() {
        let t = td("td");
        assert_eq!(SpiffeId::from_parts(&t, "a/b"), Err(E::PathNotAbsolute));
        assert_eq!(
            SpiffeId::from_parts(&t, "/"),
            Err(E::EmptySegment { segment: 1 })
        );
        assert_eq!(
            SpiffeId::from_parts(&t, "/a/../b"),
            Err(E::DotSegment {
                segment: 2,
                value: ".."
            })
        );
        // Offsets are relative to the path that was passed in.
        assert_eq!(
            SpiffeId::from_parts(&t, "/a%2F"),
            Err(E::InvalidPathChar { ch: '%', index: 2 })
        );
        let long = format!("/{}", "a".repeat(SpiffeId::MAX_LEN));
        assert_eq!(
            SpiffeId::from_parts(&t, &long),
            Err(E::TooLong {
                len: "spiffe://td".len() + long.len()
            })
        );
    }

    #[test]
    fn trust_domain_new_rejects_bad_names() {
        assert_eq!(TrustDomain::new(""), Err(E::EmptyTrustDomain));
        assert_eq!(
            TrustDomain::new("Demo"),
            Err(E::InvalidTrustDomainChar { ch: 'D', index: 0 })
        );
        assert_eq!(
            TrustDomain::new("spiffe://demo"),
            Err(E::InvalidTrustDomainChar { ch: ':', index: 6 })
        );
        assert_eq!(
            TrustDomain::new("demo:443"),
            Err(E::InvalidTrustDomainChar { ch: ':', index: 4 })
        );
        assert_eq!(
            TrustDomain::new("demo/x"),
            Err(E::InvalidTrustDomainChar { ch: '/', index: 4 })
        );
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)),
            Err(E::TrustDomainTooLong { len: 256 })
        );
    }

    #[test]
    fn from_str_display_debug() {
        let id: SpiffeId = "spiffe://td/a".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.to_string(), "spiffe://td/a");
        assert_eq!(format!("{id:?}"), "\"spiffe://td/a\"");
        assert_eq!(AsRef::<str>::as_ref(&id), "spiffe://td/a");
        assert_eq!("bad".parse::<SpiffeId>(), Err(E::MissingScheme));

        let t: TrustDomain = "td".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.to_string(), "td");
        assert_eq!(format!("{t:?}"), "\"td\"");
        assert!("TD".parse::<TrustDomain>().is_err());

        assert_eq!(id.into_string(), "spiffe://td/a");
    }

    #[test]
    fn ordering_and_equality_follow_the_string() {
        let a = ok("spiffe://a/z");
        let b = ok("spiffe://b/a");
        assert!(a < b);
        assert_eq!(a, ok("spiffe://a/z"));
        assert_ne!(a, ok("spiffe://a/Z"));
    }

    // ---- property tests ----

    /// A valid path segment: 1..10 allowed chars, but never exactly "." or "..".
    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,10}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
    }

    fn valid_id() -> impl Strategy<Value = String> {
        ("[a-z0-9._-]{1,20}", prop::collection::vec(segment(), 0..5)).prop_map(|(td, segs)| {
            let mut s = format!("spiffe://{td}");
            for seg in segs {
                s.push('/');
                s.push_str(&seg);
            }
            s
        })
    }

    /// Checks that an accepted ID is self-consistent and prints back unchanged.
    fn check_accepted(s: &str, id: &SpiffeId) -> Result<(), TestCaseError> {
        // Round-trip through Display specifically, since that is what gets logged
        // and written into certificates.
        let printed = id.to_string();
        prop_assert_eq!(&printed, s);
        prop_assert_eq!(SpiffeId::parse(&printed), Ok(id.clone()));
        let t = TrustDomain::new(id.trust_domain_name());
        prop_assert_eq!(t.as_ref(), Ok(&id.trust_domain()));
        prop_assert_eq!(
            SpiffeId::from_parts(&id.trust_domain(), id.path()),
            Ok(id.clone())
        );
        prop_assert_eq!(id.is_trust_domain_id(), id.path().is_empty());
        prop_assert!(id.is_member_of(&id.trust_domain()));
        prop_assert!(s.len() <= SpiffeId::MAX_LEN);
        Ok(())
    }

    proptest! {
        #[test]
        fn valid_ids_roundtrip(s in valid_id()) {
            let id = SpiffeId::parse(&s);
            prop_assert!(id.is_ok(), "{:?} rejected: {:?}", s, id);
            let id = id.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let printed = id.to_string();
            prop_assert_eq!(&printed, &s);
            prop_assert_eq!(SpiffeId::parse(&printed), SpiffeId::parse(&s));
            check_accepted(&s, &id)?;
            let segs: Vec<&str> = id.segments().collect();
            let rebuilt = if segs.is_empty() { String::new() } else { format!("/{}", segs.join("/")) };
            prop_assert_eq!(rebuilt, id.path());
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC*") {
            if let Ok(id) = SpiffeId::parse(&s) {
                check_accepted(&s, &id)?;
            }
            let _ = TrustDomain::new(&s);
        }

        #[test]
        fn arbitrary_after_scheme_never_panics(rest in "\\PC*") {
            let s = format!("spiffe://{rest}");
            if let Ok(id) = SpiffeId::parse(&s) {
                check_accepted(&s, &id)?;
            }
        }

        // Near-miss inputs drawn mostly from the interesting characters, checked
        // against the independent oracle so both verdicts are exercised.
        #[test]
        fn near_miss_strings_match_oracle(rest in "[a-z0-9A./:@%?# é_-]{0,20}") {
            let s = format!("spiffe://{rest}");
            let parsed = SpiffeId::parse(&s);
            prop_assert_eq!(parsed.is_ok(), oracle(&s), "{:?} -> {:?}", s, parsed);
            if let Ok(id) = parsed {
                check_accepted(&s, &id)?;
            }
        }

        // A valid ID with one character inserted somewhere: the verdict must match the
        // oracle, and anything accepted must still print back unchanged.
        #[test]
        fn mutated_valid_ids_match_oracle(
            s in valid_id(),
            pos in any::<prop::sample::Index>(),
            ch in prop::sample::select(vec!['/', '.', ':', '@', '%', '?', '#', ' ', 'A', 'é', '\0', 'a']),
        ) {
            let mut s = s;
            let mut at = pos.index(s.len() + 1);
            // valid_id() is ASCII, so every index is a char boundary; stay defensive.
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.insert(at, ch);
            let parsed = SpiffeId::parse(&s);
            prop_assert_eq!(parsed.is_ok(), oracle(&s), "{:?} -> {:?}", s, parsed);
            if let Ok(id) = parsed {
                check_accepted(&s, &id)?;
            }
        }
    }

    /// An independent, deliberately naive restatement of the spec rules (split on '/'
    /// and check each piece), used as an oracle for the parser.
    fn oracle(s: &str) -> bool {
        let Some(rest) = s.strip_prefix("spiffe://") else {
            return false;
        };
        if s.len() > 2048 {
            return false;
        }
        let mut pieces = rest.split('/');
        let domain = pieces.next().unwrap_or("");
        let domain_ok = !domain.is_empty()
            && domain.len() <= 255
            && domain
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        domain_ok
            && pieces.all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            })
    }
}

//! Which service accounts may enroll: [`AllowList`], globs over `namespace/serviceaccount`
//! (`--k8s-allow`). `*` matches any run of characters within one segment (never the `/`), `?`
//! exactly one; everything else matches itself. No pattern at all allows every service account.

/// The `--k8s-allow` patterns. Empty: everyone the cluster issued a token to may enroll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Each pattern as its namespace and service-account globs.
    patterns: Vec<(String, String)>,
}

impl AllowList {
    /// Parses `NS/SA` patterns; an error names the first bad one. A pattern has exactly one
    /// `/`, two non-empty segments, and only characters a Kubernetes name can hold
    /// (`a-z 0-9 - .`, lower case: a token naming an upper-case account is refused anyway)
    /// besides `*` and `?`, so a typo cannot silently match nothing.
    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        let mut parsed = Vec::with_capacity(patterns.len());
        for p in patterns {
            let bad = |why: &str| {
                format!("--k8s-allow {p:?}: {why}; write NAMESPACE/SERVICEACCOUNT, e.g. payments/* or */api")
            };
            let (ns, sa) = p.split_once('/').ok_or_else(|| bad("no '/'"))?;
            if sa.contains('/') {
                return Err(bad("more than one '/'"));
            }
            for segment in [ns, sa] {
                if segment.is_empty() {
                    return Err(bad("an empty segment"));
                }
                if !segment
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*?".contains(c))
                {
                    return Err(bad(
                        "only lower-case letters, digits, '-', '.', '*' and '?' are allowed",
                    ));
                }
            }
            parsed.push((ns.to_string(), sa.to_string()));
        }
        Ok(AllowList { patterns: parsed })
    }

    /// Whether service account `sa` of namespace `ns` may enroll.
    pub fn allows(&self, ns: &str, sa: &str) -> bool {
        self.patterns.is_empty()
            || self.patterns.iter().any(|(n, s)| {
                glob(n.as_bytes(), ns.as_bytes()) && glob(s.as_bytes(), sa.as_bytes())
            })
    }

    /// The patterns as given, for the startup log (`everyone` when there are none).
    pub fn describe(&self) -> String {
        if self.patterns.is_empty() {
            return "every namespace and service account".into();
        }
        let each: Vec<String> = self
            .patterns
            .iter()
            .map(|(ns, sa)| format!("{ns}/{sa}"))
            .collect();
        each.join(", ")
    }
}

/// Whether `text` matches `pattern` (`*`: any run, `?`: one byte). Iterative with one
/// backtrack point, so a hostile pattern cannot make it exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more byte and try again from there.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> AllowList {
        AllowList::parse(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("valid patterns")
    }

    #[test]
    fn globs_match_within_one_segment() {
        let allow = list(&["payments/*", "*/api", "team-?/web", "exact/one"]);
        for (ns, sa) in [
            ("payments", "api"),
            ("payments", "anything"),
            ("shop", "api"),
            ("team-a", "web"),
            ("exact", "one"),
        ] {
            assert!(allow.allows(ns, sa), "{ns}/{sa} should be allowed");
        }
        for (ns, sa) in [
            ("payment", "x"),
            ("payments-x", "x"),
            ("shop", "apis"),
            ("shop", "my-api"),
            ("team-ab", "web"),
            ("team-", "web"),
            ("exact", "ones"),
            ("kube-system", "default"),
        ] {
            assert!(!allow.allows(ns, sa), "{ns}/{sa} should be refused");
        }
    }

    #[test]
    fn stars_backtrack_and_an_empty_list_allows_everyone() {
        let allow = list(&["a*b*c/x*"]);
        assert!(allow.allows("abc", "x"));
        assert!(allow.allows("aXbYbZc", "xyz"));
        assert!(!allow.allows("aXbYbZ", "x"));
        assert!(!allow.allows("abc", "y"));
        assert!(AllowList::default().allows("any", "one"));
        assert!(list(&["*/*"]).allows("kube-system", "default"));
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_pattern() {
        for bad in [
            "payments",
            "a/b/c",
            "/api",
            "ns/",
            "ns/sa!",
            "n s/sa",
            "Payments/*",
        ] {
            let err = AllowList::parse(&[bad.to_string()]).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}

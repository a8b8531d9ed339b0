//! Matching one request: a rule against the method, path and time ([`Rule`]), and the
//! policy's lookup of the candidate rules for a caller ([`Policy::decide`]).

use tether_certs::SpiffeId;
use time::OffsetDateTime;

use super::{Decision, Policy};

/// One validated rule.
#[derive(Debug)]
pub(super) struct Rule {
    pub(super) name: String,
    /// `None` = any method, including none at all (opaque TCP).
    pub(super) methods: Option<Vec<String>>,
    /// `None` = any path, including none at all (opaque TCP).
    pub(super) paths: Option<Vec<PathPattern>>,
    pub(super) expires: Option<OffsetDateTime>,
}

/// A rule's path: exact, or everything under a prefix.
#[derive(Debug)]
pub(super) enum PathPattern {
    Exact(String),
    /// The pattern without its `*`, so it ends in `/`.
    Prefix(String),
}

impl PathPattern {
    /// Whether `path` (normalized) is this one or under it.
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

impl Rule {
    /// Whether this rule allows the request at `now`.
    fn matches(&self, method: Option<&str>, path: Option<&str>, now: OffsetDateTime) -> bool {
        if self.expires.is_some_and(|at| now >= at) {
            return false;
        }
        if let Some(methods) = &self.methods {
            match method {
                Some(m) if methods.iter().any(|x| x == m) => {}
                _ => return false,
            }
        }
        if let Some(paths) = &self.paths {
            match path {
                Some(p) if paths.iter().any(|pat| pat.matches(p)) => {}
                _ => return false,
            }
        }
        true
    }
}

impl Policy {
    /// Finds the first rule, in file order, that allows `caller` to make this request at `now`.
    ///
    /// `path` must be the output of [`normalize_path_with`](super::normalize_path_with) (and is
    /// what gets forwarded). `method` and `path` are `None` for opaque TCP traffic: then only
    /// rules with neither `methods` nor `paths` can match. More generally a rule with `methods`
    /// needs a method and a rule with `paths` needs a path. Does not allocate: candidates come
    /// from a hash lookup of the exact ID plus one lookup per ancestor path of the ID that some
    /// prefix rule could name.
    pub fn decide(
        &self,
        caller: &SpiffeId,
        method: Option<&str>,
        path: Option<&str>,
        now: OffsetDateTime,
    ) -> Decision<'_> {
        let mut best: Option<usize> = None;
        // Each candidate list is ascending, so its first match is its earliest; the overall
        // answer is the earliest across lists, and a list stops once it passes the best so far.
        let mut consider = |list: &[usize]| {
            for &i in list {
                if best.is_some_and(|b| i >= b) {
                    return;
                }
                if self
                    .rules
                    .get(i)
                    .is_some_and(|r| r.matches(method, path, now))
                {
                    best = Some(i);
                    return;
                }
            }
        };
        let id = caller.as_str();
        if let Some(list) = self.exact.get(id) {
            consider(list);
        }
        if !self.prefixes.is_empty() {
            // Every `/` after the scheme ends an ancestor (`spiffe://td/`, `spiffe://td/ns/`, …);
            // the ID itself never ends in `/`, so only strict ancestors are looked up.
            let scheme = tether_certs::spiffe::SPIFFE_SCHEME.len();
            let limit = id.len().min(self.max_prefix_len);
            for (i, b) in id.bytes().enumerate().take(limit).skip(scheme) {
                if b != b'/' {
                    continue;
                }
                if let Some(list) = id.get(..=i).and_then(|key| self.prefixes.get(key)) {
                    consider(list);
                }
            }
        }
        match best.and_then(|i| self.rules.get(i)) {
            Some(rule) => Decision::Allow { rule: &rule.name },
            None => Decision::Deny,
        }
    }
}

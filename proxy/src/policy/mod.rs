//! Authorization policy: which callers may reach the local app, with which methods and paths.
//!
//! A policy is a TOML file of named rules and is **default deny**: a request is allowed only when
//! some rule matches its verified caller identity, its method and its normalized path, and the
//! first matching rule in file order is the one reported. In `audit` mode the caller logs and
//! counts a would-deny and lets the request through, so a new policy can be tried on live
//! traffic before it is enforced; [`Policy::decide`] itself never looks at the mode.
//!
//! ```toml
//! mode = "enforce"                     # or "audit"; absent = enforce
//! [[rule]]
//! name    = "a-reads-data"             # required, unique
//! from    = ["spiffe://demo.tether/ns/default/sa/service-a", "spiffe://demo.tether/ns/ops/*"]
//! methods = ["GET", "HEAD"]            # absent = any method
//! paths   = ["/data", "/data/*"]       # absent = any path
//! expires = "2026-12-31T00:00:00Z"     # optional; the rule stops matching at this instant
//! ```
//!
//! Callers in `from` are exact SPIFFE IDs or `spiffe://td/some/path/*`, which matches IDs strictly
//! under that path in that trust domain (`spiffe://td/*` is every workload of `td`). Paths are
//! exact or end in `/*`, which matches every path starting with the part before the `*`
//! (`/data/*` matches `/data/`, `/data/x` and `/data/x/y`, never `/data`). Rule paths must already
//! be in the form [`normalize_path`] produces, because requests are matched only after being
//! normalized and the normalized path is what gets forwarded: the app sees exactly what the policy
//! judged. A file that breaks any rule is rejected as a whole, with a message naming the file, the
//! rule (1-based number and name), the field (with a 0-based index into lists) and the problem.
//!
//! [`PolicyHandle`] holds the current policy for all connections and [`spawn_reloader`] swaps in a
//! new one when the file changes; a file that fails to load keeps the previous policy.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tether_certs::SpiffeId;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What the sidecar does with a request no rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Log and count the would-deny, then allow the request anyway.
    Audit,
    /// Refuse the request (the default).
    #[default]
    Enforce,
}

impl fmt::Display for Mode {
    /// The spelling used in the policy file: `audit` or `enforce`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        })
    }
}

/// The outcome of [`Policy::decide`], before the [`Mode`] is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision<'a> {
    /// The rule with this name was the first to match.
    Allow {
        /// Name of the matching rule, for logs and metrics.
        rule: &'a str,
    },
    /// No rule matched (default deny).
    Deny,
}

/// Why a policy file could not be loaded. `Display` names the file, and for rule problems the
/// rule (1-based number and name) and the field, so it can be shown to an operator as is.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read (missing, unreadable, or not UTF-8).
    #[error("{}: cannot read policy file: {error}", path.display())]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },

    /// The file is not valid TOML, or its top level has the wrong shape (an unknown key, or
    /// `rule` that is not an array of tables). The TOML message carries the line and column.
    // toml's message is multi-line and ends in a newline; trimmed so log lines stay tidy.
    #[error("{file}: {}", .error.to_string().trim_end())]
    Syntax {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// The parser's message.
        error: toml::de::Error,
    },

    /// `mode` is neither `"enforce"` nor `"audit"`.
    #[error("{file}: mode: {value:?} is not \"enforce\" or \"audit\"")]
    Mode {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// The rejected value.
        value: String,
    },

    /// One rule is invalid.
    #[error("{file}: rule {number} ({}): {field}: {problem}", rule_label(.name.as_deref()))]
    Rule {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// 1-based position of the rule in the file.
        number: usize,
        /// The rule's name, when it has a usable one.
        name: Option<String>,
        /// The offending field, with a 0-based index for list entries, e.g. `from[1]`.
        field: String,
        /// What is wrong and, where possible, how to fix it.
        problem: String,
    },
}

/// How a rule is named in errors: its quoted name, or a note that it has none.
fn rule_label(name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{name:?}"),
        None => "unnamed".to_owned(),
    }
}

/// One validated rule.
#[derive(Debug)]
struct Rule {
    name: String,
    /// `None` = any method, including none at all (opaque TCP).
    methods: Option<Vec<String>>,
    /// `None` = any path, including none at all (opaque TCP).
    paths: Option<Vec<PathPattern>>,
    expires: Option<OffsetDateTime>,
}

#[derive(Debug)]
enum PathPattern {
    Exact(String),
    /// The pattern without its `*`, so it ends in `/`.
    Prefix(String),
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

impl Rule {
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

/// A validated, indexed set of rules. Build one with [`Policy::parse`] or [`Policy::load`].
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    rules: Vec<Rule>,
    /// Exact caller ID → indices of the rules naming it, ascending (file order).
    exact: HashMap<String, Vec<usize>>,
    /// Prefix including its final `/` (e.g. `spiffe://td/ns/`) → rule indices, ascending.
    prefixes: HashMap<String, Vec<usize>>,
    /// Length of the longest key in `prefixes`; an ID is never scanned past it.
    max_prefix_len: usize,
    /// Hash of the text this policy was parsed from, so the reloader can tell whether the file
    /// on disk is the one already in force.
    digest: Option<u64>,
}

/// Top level of the file. `rule` entries stay raw so each can be checked on its own and its
/// errors can name it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Option<String>,
    #[serde(default)]
    rule: Vec<toml::Value>,
}

/// One `[[rule]]` table. Values stay raw so a wrong type is reported against its field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<toml::Value>,
    from: Option<toml::Value>,
    methods: Option<toml::Value>,
    paths: Option<toml::Value>,
    expires: Option<toml::Value>,
}

const RULE_KEYS: [&str; 5] = ["name", "from", "methods", "paths", "expires"];

/// Collects rule errors with the file, rule number and name filled in.
struct RuleContext<'a> {
    file: &'a str,
    number: usize,
    name: Option<String>,
}

impl RuleContext<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
        PolicyError::Rule {
            file: self.file.to_owned(),
            number: self.number,
            name: self.name.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A non-empty array of strings, or an error naming `field`.
    fn strings(&self, field: &str, value: toml::Value) -> Result<Vec<String>, PolicyError> {
        let toml::Value::Array(items) = value else {
            return Err(self.err(
                field,
                format!("expected an array of strings, got {}", value.type_str()),
            ));
        };
        if items.is_empty() {
            // An empty list would match nothing, which is never what was meant.
            let hint = if field == "from" {
                "list at least one caller"
            } else {
                "omit the key to allow any"
            };
            return Err(self.err(field, format!("must not be empty ({hint})")));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                toml::Value::String(s) => Ok(s),
                other => Err(self.err(
                    format!("{field}[{i}]"),
                    format!("expected a string, got {}", other.type_str()),
                )),
            })
            .collect()
    }
}

impl Policy {
    /// Parses and validates a policy; `source` is the file name used in error messages.
    ///
    /// The whole text is rejected if any part of it is invalid: a partly applied policy could
    /// allow or deny what nobody wrote.
    pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|error| PolicyError::Syntax {
            file: source.to_owned(),
            error,
        })?;
        let mode = match raw.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("audit") => Mode::Audit,
            Some(other) => {
                return Err(PolicyError::Mode {
                    file: source.to_owned(),
                    value: other.to_owned(),
                })
            }
        };
        let mut policy = Policy {
            mode,
            rules: Vec::with_capacity(raw.rule.len()),
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            max_prefix_len: 0,
            digest: Some(digest(text.as_bytes())),
        };
        // Name → 1-based rule number, to point a duplicate at the first use.
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, value) in raw.rule.into_iter().enumerate() {
            let ctx = RuleContext {
                file: source,
                number: i + 1,
                name: value
                    .get("name")
                    .and_then(toml::Value::as_str)
                    .filter(|n| valid_name(n))
                    .map(str::to_owned),
            };
            let (rule, callers) = parse_rule(&ctx, value)?;
            match names.entry(rule.name.clone()) {
                Entry::Occupied(first) => {
                    return Err(ctx.err(
                        "name",
                        format!(
                            "{:?} is already the name of rule {}",
                            rule.name,
                            first.get()
                        ),
                    ));
                }
                Entry::Vacant(slot) => {
                    slot.insert(ctx.number);
                }
            }
            for caller in callers {
                let (map, key) = match caller {
                    Caller::Exact(id) => (&mut policy.exact, id.into_string()),
                    Caller::Prefix(prefix) => {
                        policy.max_prefix_len = policy.max_prefix_len.max(prefix.len());
                        (&mut policy.prefixes, prefix)
                    }
                };
                let list = map.entry(key).or_default();
                // The same caller listed twice in one rule needs only one entry.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
            policy.rules.push(rule);
        }
        Ok(policy)
    }

    /// Reads and parses the policy file at `path` (its path is the source in error messages).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = std::fs::read(path).map_err(|error| PolicyError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_bytes(path, &bytes)
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Policy, PolicyError> {
        let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Read {
            path: path.to_owned(),
            error: io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8: {e}")),
        })?;
        Self::parse(text, &path.display().to_string())
    }

    /// A policy with no rules in enforce mode: every request is denied. What a sidecar runs
    /// before it has a policy, so that it fails closed.
    pub fn deny_all() -> Policy {
        Policy {
            mode: Mode::Enforce,
            rules: Vec::new(),
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            max_prefix_len: 0,
            digest: None,
        }
    }

    /// Whether a [`Decision::Deny`] is enforced or only audited.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules, so everything is denied.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Finds the first rule, in file order, that allows `caller` to make this request at `now`.
    ///
    /// `path` must be the output of [`normalize_path`] (and is what gets forwarded). `method`
    /// and `path` are `None` for opaque TCP traffic: then only rules with neither `methods` nor
    /// `paths` can match. More generally a rule with `methods` needs a method and a rule with
    /// `paths` needs a path. Does not allocate: candidates come from a hash lookup of the exact
    /// ID plus one lookup per ancestor path of the ID that some prefix rule could name.
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

/// A rule name must be printable in logs and metric labels.
fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.chars().any(char::is_control)
}

enum Caller {
    Exact(SpiffeId),
    /// The ID prefix including its final `/`.
    Prefix(String),
}

fn parse_rule(
    ctx: &RuleContext<'_>,
    value: toml::Value,
) -> Result<(Rule, Vec<Caller>), PolicyError> {
    let Some(table) = value.as_table() else {
        return Err(ctx.err(
            "rule",
            format!(
                "expected a table (write it as [[rule]]), got {}",
                value.type_str()
            ),
        ));
    };
    if let Some(key) = table.keys().find(|k| !RULE_KEYS.contains(&k.as_str())) {
        return Err(ctx.err(
            key.as_str(),
            format!("unknown key (expected one of: {})", RULE_KEYS.join(", ")),
        ));
    }
    // The check above already covers unknown keys; serde's deny_unknown_fields stays as the
    // guard should the two lists ever drift apart.
    let raw: RawRule = value
        .try_into()
        .map_err(|e| ctx.err("rule", e.message().to_owned()))?;

    let name = match raw.name {
        None => return Err(ctx.err("name", "missing (every rule needs a unique name)")),
        Some(toml::Value::String(name)) if valid_name(&name) => name,
        Some(toml::Value::String(name)) => {
            return Err(ctx.err(
                "name",
                format!("{name:?} must be non-blank and free of control characters"),
            ))
        }
        Some(other) => {
            return Err(ctx.err(
                "name",
                format!("expected a string, got {}", other.type_str()),
            ))
        }
    };

    let from = raw
        .from
        .ok_or_else(|| ctx.err("from", "missing (list the callers this rule allows)"))?;
    let callers = ctx
        .strings("from", from)?
        .iter()
        .enumerate()
        .map(|(i, s)| parse_caller(s).map_err(|p| ctx.err(format!("from[{i}]"), p)))
        .collect::<Result<Vec<_>, _>>()?;

    let methods = match raw.methods {
        None => None,
        Some(v) => {
            let methods = ctx.strings("methods", v)?;
            for (i, m) in methods.iter().enumerate() {
                check_method(m).map_err(|p| ctx.err(format!("methods[{i}]"), p))?;
            }
            Some(methods)
        }
    };

    let paths = match raw.paths {
        None => None,
        Some(v) => {
            let mut patterns = Vec::new();
            for (i, p) in ctx.strings("paths", v)?.iter().enumerate() {
                let pattern =
                    parse_path_pattern(p).map_err(|e| ctx.err(format!("paths[{i}]"), e))?;
                patterns.push(pattern);
            }
            Some(patterns)
        }
    };

    let expires = match raw.expires {
        None => None,
        Some(v) => Some(parse_expiry(&v).map_err(|p| ctx.err("expires", p))?),
    };

    Ok((
        Rule {
            name,
            methods,
            paths,
            expires,
        },
        callers,
    ))
}

fn parse_caller(s: &str) -> Result<Caller, String> {
    if let Some(base) = s.strip_suffix("/*") {
        if base.contains('*') {
            return Err(format!("{s:?}: '*' is only allowed as a final \"/*\""));
        }
        let id = SpiffeId::parse(base)
            .map_err(|e| format!("{s:?} is not a valid SPIFFE ID prefix: {e}"))?;
        return Ok(Caller::Prefix(format!("{}/", id.as_str())));
    }
    if s.contains('*') {
        return Err(format!(
            "{s:?}: '*' is only allowed as a final \"/*\" (e.g. \"spiffe://td/ns/ops/*\")"
        ));
    }
    SpiffeId::parse(s)
        .map(Caller::Exact)
        .map_err(|e| format!("{s:?} is not a valid SPIFFE ID: {e}"))
}

/// HTTP `tchar` (RFC 9110) minus lower-case letters: methods are case-sensitive, and every
/// method in use is upper-case, so `get` is almost certainly a typo for `GET`.
fn check_method(m: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if m == "*" {
        return Err("\"*\" is not a method; omit `methods` to allow any method".to_owned());
    }
    if m.is_empty() || !m.bytes().all(tchar) {
        return Err(format!("{m:?} is not a valid HTTP method token"));
    }
    if m.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "{m:?} must be upper-case (methods are case-sensitive): write {:?}",
            m.to_ascii_uppercase()
        ));
    }
    Ok(())
}

fn parse_path_pattern(p: &str) -> Result<PathPattern, String> {
    // Keep the trailing `/` of a prefix so `/data/*` cannot match `/database`.
    let (base, prefix) = match p.strip_suffix('*') {
        Some(base) if base.ends_with('/') => (base, true),
        _ => (p, false),
    };
    if base.contains('*') {
        return Err(format!("{p:?}: '*' is only allowed as a final \"/*\""));
    }
    let normal = normalize_path(base).map_err(|e| format!("{p:?} is not a valid path: {e}"))?;
    if normal != base {
        let star = if prefix { "*" } else { "" };
        return Err(format!("{p:?} is not normalized; write \"{normal}{star}\""));
    }
    Ok(if prefix {
        PathPattern::Prefix(normal)
    } else {
        PathPattern::Exact(normal)
    })
}

/// Accepts an RFC 3339 string or a TOML offset date-time (`expires = 2026-12-31T00:00:00Z`).
fn parse_expiry(v: &toml::Value) -> Result<OffsetDateTime, String> {
    let text = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(dt) => dt.to_string(),
        other => {
            return Err(format!(
                "expected an RFC 3339 timestamp string, got {}",
                other.type_str()
            ))
        }
    };
    OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
        format!("{text:?} is not an RFC 3339 timestamp with a UTC offset (e.g. \"2026-12-31T00:00:00Z\"): {e}")
    })
}

mod normalize;
mod reload;
#[cfg(test)]
mod tests;

pub use normalize::{normalize_path, PathError};
use reload::digest;
pub use reload::{spawn_reloader, PolicyHandle};

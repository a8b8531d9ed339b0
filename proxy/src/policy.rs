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
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tether_certs::SpiffeId;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

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

/// Why a request path was refused by [`normalize_path`]. Byte offsets count from the start of
/// the raw input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,

    /// The path does not start with `/` (e.g. `*` or an absolute URI was passed in).
    #[error("path must start with \"/\"")]
    NotAbsolute,

    /// A character that has no place in a request path: a control character (including NUL),
    /// space, `\`, `?`, `#` or anything outside ASCII.
    #[error("path contains forbidden character {ch:?} at byte {index}")]
    ForbiddenChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },

    /// A `%` not followed by two hex digits.
    #[error("malformed percent-escape at byte {index} (\"%\" must be followed by two hex digits)")]
    MalformedEscape {
        /// Byte offset of the `%`.
        index: usize,
    },

    /// An escape of `/` or `\` (which would hide a separator inside a segment) or of NUL.
    #[error("percent-escape %{byte:02X} at byte {index} is not allowed (encoded \"/\", \"\\\" and NUL are refused)")]
    ForbiddenEscape {
        /// The byte the escape decodes to.
        byte: u8,
        /// Byte offset of the `%`.
        index: usize,
    },

    /// A `..` segment would climb above the root.
    #[error("\"..\" climbs above the root")]
    AboveRoot,
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

/// Hash identifying a policy text. Not cryptographic: whoever can write the file already
/// controls the policy, so this only has to notice edits.
fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// Characters kept as they are after `%XX`: RFC 3986 `unreserved`. Decoding exactly these and
/// nothing else gives every path one spelling without changing what it means.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a request path (without its query) into the one spelling that is both matched
/// against the policy and forwarded to the app, so the two can never disagree.
///
/// Decodes `%XX` escapes of unreserved characters and upper-cases the hex of all others;
/// collapses repeated `/`; resolves `.` and `..` (after decoding, so `%2e%2e` is `..`); keeps
/// a trailing `/`. Refuses what could make the app read a different path than the one judged:
/// escaped `/` or `\`, NUL, control characters, space, literal `\`, `?` or `#`, non-ASCII,
/// malformed escapes and `..` above the root. The result is a fixed point:
/// `normalize_path(&normalize_path(x)?) == normalize_path(x)`.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    match bytes.first() {
        None => return Err(PathError::Empty),
        Some(b'/') => {}
        Some(_) => return Err(PathError::NotAbsolute),
    }
    // Invariant: `out` always ends with '/' between segments.
    let mut out = String::with_capacity(raw.len());
    out.push('/');
    let mut trailing_slash = false;
    let mut i = 1;
    while i <= bytes.len() {
        let seg_start = out.len();
        // Decode one raw segment (up to the next '/' or the end) onto `out`.
        while let Some(&b) = bytes.get(i) {
            if b == b'/' {
                break;
            }
            if b == b'%' {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::MalformedEscape { index: i });
                };
                let byte = hi << 4 | lo;
                if matches!(byte, b'/' | b'\\' | 0) {
                    return Err(PathError::ForbiddenEscape { byte, index: i });
                }
                if is_unreserved(byte) {
                    out.push(char::from(byte));
                } else {
                    out.push('%');
                    out.push(char::from(HEX_UPPER[usize::from(hi)]));
                    out.push(char::from(HEX_UPPER[usize::from(lo)]));
                }
                i += 3;
                continue;
            }
            if b <= b' ' || b >= 0x7f || matches!(b, b'\\' | b'?' | b'#') {
                let ch = raw
                    .get(i..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or(char::REPLACEMENT_CHARACTER);
                return Err(PathError::ForbiddenChar { ch, index: i });
            }
            out.push(char::from(b));
            i += 1;
        }
        let is_last = i >= bytes.len();
        match out.get(seg_start..) {
            // Empty segment ("//" or a trailing '/'): nothing to keep.
            Some("") => trailing_slash = is_last,
            Some(".") => {
                out.truncate(seg_start);
                trailing_slash = is_last;
            }
            Some("..") => {
                out.truncate(seg_start);
                if out.len() == 1 {
                    return Err(PathError::AboveRoot);
                }
                // Drop the previous segment: cut the '/' that ends it, then back to the one
                // before it.
                out.pop();
                let keep = out.rfind('/').map_or(1, |p| p + 1);
                out.truncate(keep);
                trailing_slash = is_last;
            }
            _ => {
                out.push('/');
                trailing_slash = false;
            }
        }
        i += 1; // Skip the '/' that ended the segment (or step past the end).
    }
    if !trailing_slash && out.len() > 1 {
        out.pop();
    }
    Ok(out)
}

const HEX_UPPER: [u8; 16] = *b"0123456789ABCDEF";

/// The policy in force, shared by every connection and swapped whole on reload.
///
/// Readers take an `Arc` snapshot, so a request is judged by one policy from start to end even
/// if a reload lands meanwhile.
#[derive(Debug)]
pub struct PolicyHandle {
    current: RwLock<Arc<Policy>>,
}

impl PolicyHandle {
    /// Wraps the initial policy (use [`Policy::deny_all`] to fail closed until one is loaded).
    pub fn new(policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(policy)),
        })
    }

    /// A snapshot of the current policy: a read lock held only for an `Arc` clone.
    pub fn current(&self) -> Arc<Policy> {
        // The lock only ever guards an `Arc` assignment, which cannot be left half done, so a
        // writer that panicked leaves a consistent value and poisoning can be ignored.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `policy` the current one for every later [`PolicyHandle::current`].
    pub fn replace(&self, policy: Policy) {
        let new = Arc::new(policy);
        // Swap under the lock but drop the old policy after releasing it, so freeing a large
        // policy never holds up readers.
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            new,
        );
        drop(old);
    }
}

/// What the reloader last saw at the path: enough to notice any edit, or the read error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    File {
        /// Changes on `touch` even when the content does not, so touching forces a reload.
        modified: Option<SystemTime>,
        len: u64,
        /// Catches same-length edits within the file system's mtime granularity.
        digest: u64,
    },
    Unreadable(io::ErrorKind),
}

/// Reads the file and, if it differs from `last` (or, on the first poll, from the text the
/// current policy was parsed from), loads it. Blocking; runs on the blocking pool.
fn poll_file(
    path: &Path,
    last: Option<Seen>,
    held: Option<u64>,
) -> (Seen, Option<Result<Policy, PolicyError>>) {
    // Metadata and content from one open file, so a rename in between cannot pair the
    // content of one version with the timestamp of another.
    let read = std::fs::File::open(path).and_then(|mut file| {
        let meta = file.metadata()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok((meta, bytes))
    });
    let (meta, bytes) = match read {
        Ok(ok) => ok,
        Err(error) => {
            let seen = Seen::Unreadable(error.kind());
            if last == Some(seen) {
                return (seen, None);
            }
            let path = path.to_owned();
            return (seen, Some(Err(PolicyError::Read { path, error })));
        }
    };
    let file_digest = digest(&bytes);
    let seen = Seen::File {
        modified: meta.modified().ok(),
        len: meta.len(),
        digest: file_digest,
    };
    let unchanged = match last {
        Some(last) => last == seen,
        None => held == Some(file_digest),
    };
    if unchanged {
        return (seen, None);
    }
    (seen, Some(Policy::from_bytes(path, &bytes)))
}

/// Keeps `handle` in step with the policy file at `path`, polling every `interval`.
///
/// A change of modification time, length or content hash triggers a reload (so `touch` forces
/// one). The first poll happens at once and loads the file unless its text is the one the current
/// policy was parsed from. On success the new policy replaces the old and `on_reload(Ok(rules))`
/// is called. **If the file cannot be read or is invalid, the old policy is kept**, the reason is
/// logged with `tracing::warn!` and `on_reload(Err(..))` is called once per distinct failure (not
/// on every poll). Writers should replace the file atomically (write, then rename); a half-written
/// file is rejected and picked up once complete. Intervals under 10 ms are raised to 10 ms.
/// Must be called within a tokio runtime; the task runs until the returned handle is aborted.
pub fn spawn_reloader(
    path: PathBuf,
    handle: Arc<PolicyHandle>,
    interval: Duration,
    on_reload: impl Fn(Result<usize, &PolicyError>) + Send + Sync + 'static,
) -> JoinHandle<()> {
    // A zero period would make tokio's interval panic, and polling faster than this only burns
    // CPU re-reading an unchanged file.
    let interval = interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Seen> = None;
        loop {
            ticker.tick().await;
            let held = handle.current().digest;
            let p = path.clone();
            let (seen, loaded) =
                match tokio::task::spawn_blocking(move || poll_file(&p, last, held)).await {
                    Ok(result) => result,
                    Err(e) => {
                        // Only reachable if the runtime is shutting down; try again next tick.
                        tracing::warn!(
                            path = %path.display(),
                            error = %e,
                            "policy reload check did not run"
                        );
                        continue;
                    }
                };
            last = Some(seen);
            match loaded {
                None => {}
                Some(Ok(policy)) => {
                    let rules = policy.len();
                    let mode = policy.mode();
                    handle.replace(policy);
                    tracing::info!(path = %path.display(), rules, %mode, "policy reloaded");
                    on_reload(Ok(rules));
                }
                Some(Err(err)) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %err,
                        "policy reload failed; keeping the previous policy"
                    );
                    on_reload(Err(&err));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use proptest::prelude::*;
    use time::macros::datetime;

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
        let msg =
            parse_err("[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\ncolour = \"red\"\n");
        assert!(
            msg.starts_with("policy.toml: rule 1 (\"r\"): colour: unknown key"),
            "{msg}"
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
        let msg = parse_err("[[rule]]\nname = \" \"\nfrom = [\"spiffe://td/a\"]\n");
        assert!(
            msg.starts_with("policy.toml: rule 1 (unnamed): name: "),
            "{msg}"
        );
        let msg = parse_err("[[rule]]\nname = 3\nfrom = [\"spiffe://td/a\"]\n");
        assert!(
            msg.contains("rule 1 (unnamed): name: expected a string, got integer"),
            "{msg}"
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
        let msg = parse_err("[[rule]]\nname = \"r\"\n");
        assert!(
            msg.starts_with("policy.toml: rule 1 (\"r\"): from: missing"),
            "{msg}"
        );
        let msg = parse_err("[[rule]]\nname = \"r\"\nfrom = []\n");
        assert!(
            msg.starts_with("policy.toml: rule 1 (\"r\"): from: must not be empty"),
            "{msg}"
        );
        let msg = parse_err("[[rule]]\nname = \"r\"\nfrom = \"spiffe://td/a\"\n");
        assert!(
            msg.contains("from: expected an array of strings, got string"),
            "{msg}"
        );
        let msg = parse_err("[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\", 7]\n");
        assert!(
            msg.contains("from[1]: expected a string, got integer"),
            "{msg}"
        );
    }

    #[test]
    fn bad_spiffe_id() {
        let msg = parse_err(
            "[[rule]]\nname = \"a\"\nfrom = [\"spiffe://td/a\"]\n\
             [[rule]]\nname = \"b-writes\"\nfrom = [\"spiffe://td/a\", \"spiffe://X/y\"]\n",
        );
        assert!(
            msg.starts_with("policy.toml: rule 2 (\"b-writes\"): from[1]: \"spiffe://X/y\" is not a valid SPIFFE ID: "),
            "{msg}"
        );
        assert!(msg.contains("lowercase"), "{msg}");
    }

    #[test]
    fn bad_prefix() {
        for bad in ["spiffe://td/a*", "spiffe://td/*/b", "*"] {
            let msg = parse_err(&format!("[[rule]]\nname = \"r\"\nfrom = [\"{bad}\"]\n"));
            assert!(
                msg.starts_with("policy.toml: rule 1 (\"r\"): from[0]: "),
                "{msg}"
            );
            assert!(
                msg.contains("only allowed as a final \"/*\""),
                "{bad}: {msg}"
            );
        }
        for bad in ["spiffe://td/a//*", "spiffe://*", "spiffe://TD/*"] {
            let msg = parse_err(&format!("[[rule]]\nname = \"r\"\nfrom = [\"{bad}\"]\n"));
            assert!(
                msg.contains(&format!(
                    "from[0]: \"{bad}\" is not a valid SPIFFE ID prefix"
                )),
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_method_token() {
        let rule = |m: &str| {
            format!(
                "[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\nmethods = [\"GET\", {m:?}]\n"
            )
        };
        let msg = parse_err(&rule("get"));
        assert!(
            msg.starts_with("policy.toml: rule 1 (\"r\"): methods[1]: \"get\" must be upper-case"),
            "{msg}"
        );
        assert!(msg.contains("write \"GET\""), "{msg}");
        for bad in ["GE T", "", "GET\n", "(GET)"] {
            let msg = parse_err(&rule(bad));
            assert!(
                msg.contains("methods[1]: ") && msg.contains("not a valid HTTP method token"),
                "{msg}"
            );
        }
        assert!(parse_err(&rule("*")).contains("omit `methods`"));
        let msg = parse_err("[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\nmethods = []\n");
        assert!(
            msg.contains("rule 1 (\"r\"): methods: must not be empty"),
            "{msg}"
        );
        // Extension methods are fine.
        policy(&rule("PROPFIND"));
    }

    #[test]
    fn non_normalized_rule_paths() {
        let rule = |p: &str| {
            format!(
                "[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\npaths = [\"/ok\", {p:?}]\n"
            )
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
        let rule = |e: &str| {
            format!("[[rule]]\nname = \"r\"\nfrom = [\"spiffe://td/a\"]\nexpires = {e}\n")
        };
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
        let msg = parse_err("rule = [1]\n");
        assert!(
            msg.starts_with("policy.toml: rule 1 (unnamed): rule: expected a table"),
            "{msg}"
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
        let p = policy("[[rule]]\nname = \"t\"\nfrom = [\"spiffe://td/a\"]\nexpires = 2026-12-31T02:00:00+02:00\n");
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
        assert_eq!(
            http(&p, "spiffe://td/ns/n42/sa/s9942", "GET", "/svc/9942/x"),
            allow("r9942")
        );
        assert_eq!(
            http(&p, "spiffe://td/ns/n42/sa/s9942", "GET", "/svc/9941/x"),
            Decision::Deny
        );
        assert_eq!(
            http(&p, "spiffe://td/ns/n42/sa/s9942", "POST", "/svc/9942/x"),
            Decision::Deny
        );
        assert_eq!(
            http(&p, "spiffe://td/group/g7/x/y", "GET", "/svc/7/z"),
            allow("r7")
        );
        assert_eq!(
            http(&p, "spiffe://td/group/g7", "GET", "/svc/7/z"),
            Decision::Deny
        );
        assert_eq!(
            p.decide(&id("spiffe://td/ops/a/b"), None, None, NOW),
            allow("ops")
        );
        assert_eq!(
            http(&p, "spiffe://td/ns/n1/sa/unknown", "GET", "/svc/1/x"),
            Decision::Deny
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
            PathError::ForbiddenEscape { byte: b'/', index: 2 }.to_string(),
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
}

//! A policy file → validated rules and the caller index: the file's shape, each rule's fields,
//! and the errors naming the file, the rule and the field.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use serde::Deserialize;
use tether_certs::SpiffeId;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::decide::{PathPattern, Rule};
use super::{digest, normalize_path, Mode, Policy, PolicyError};

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
}

/// A rule name must be printable in logs and metric labels.
fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.chars().any(char::is_control)
}

/// One entry of a rule's `from`, as the index files it.
enum Caller {
    Exact(SpiffeId),
    /// The ID prefix including its final `/`.
    Prefix(String),
}

/// One `[[rule]]` → the rule and the callers it names (for the index).
fn parse_rule(
    ctx: &RuleContext<'_>,
    value: toml::Value,
) -> Result<(Rule, Vec<Caller>), PolicyError> {
    let raw = raw_rule(ctx, value)?;
    let name = parse_name(ctx, raw.name)?;

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

/// The table of one rule, with every key known.
fn raw_rule(ctx: &RuleContext<'_>, value: toml::Value) -> Result<RawRule, PolicyError> {
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
    value
        .try_into()
        .map_err(|e| ctx.err("rule", e.message().to_owned()))
}

/// `name`: required, a string that [`valid_name`] accepts.
fn parse_name(ctx: &RuleContext<'_>, name: Option<toml::Value>) -> Result<String, PolicyError> {
    match name {
        None => Err(ctx.err("name", "missing (every rule needs a unique name)")),
        Some(toml::Value::String(name)) if valid_name(&name) => Ok(name),
        Some(toml::Value::String(name)) => Err(ctx.err(
            "name",
            format!("{name:?} must be non-blank and free of control characters"),
        )),
        Some(other) => Err(ctx.err(
            "name",
            format!("expected a string, got {}", other.type_str()),
        )),
    }
}

/// `spiffe://td/path` (exact) or `spiffe://td/path/*` (strictly under it).
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

/// Whether `method` is an HTTP method token: one or more `tchar`s (RFC 9110 §5.6.2), in any
/// case. What `authz check --method` accepts and what a rule's `methods` are first checked for.
pub fn is_method_token(method: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !method.is_empty() && method.bytes().all(tchar)
}

/// HTTP `tchar` (RFC 9110) minus lower-case letters: methods are case-sensitive, and every
/// method in use is upper-case, so `get` is almost certainly a typo for `GET`.
fn check_method(m: &str) -> Result<(), String> {
    if m == "*" {
        return Err("\"*\" is not a method; omit `methods` to allow any method".to_owned());
    }
    if !is_method_token(m) {
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

/// A rule path: exact, or ending in `/*`; either way already normalized.
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

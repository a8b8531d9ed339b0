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
//! judged. How `;` parameters are read ([`PathParams`]) is the sidecar's setting, not the file's,
//! because it depends on the app behind the sidecar. A file that breaks any rule is rejected as a whole, with a message naming the file, the
//! rule (1-based number and name), the field (with a 0-based index into lists) and the problem.
//!
//! [`PolicyHandle`] holds the current policy for all connections and [`spawn_reloader`] swaps in a
//! new one when the file changes; a file that fails to load keeps the previous policy.
//!
//! - `parse`: the file → validated rules and the caller index, with errors naming the rule.
//! - `decide`: matching one request against the rules ([`Policy::decide`]).
//! - `normalize`: [`normalize_path_with`], the one spelling of a path that rules and apps see,
//!   and [`PathParams`], what `;` means in it.
//! - `reload`: [`PolicyHandle`] and [`spawn_reloader`].

mod decide;
mod normalize;
mod parse;
mod reload;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use decide::Rule;
pub use normalize::{normalize_path, normalize_path_with, PathError, PathParams};
pub use parse::is_method_token;
use reload::digest;
pub use reload::{spawn_reloader, PolicyHandle};

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

impl Policy {
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
}

#[cfg(test)]
mod tests;

//! Request-path normalization: the one spelling of a path that the policy matches and the app
//! receives, and the paths refused because no safe spelling exists.
//!
//! [`PathParams`] says how `;` path parameters are read. Servlet containers (Tomcat, Jetty) and
//! Spring remove `;params` from every segment before they resolve `.` and `..`, so to them
//! `/data/..;/admin` is `/admin`; a plain backend sees a segment named `..;`. The default
//! refuses exactly the segments on which the two readings disagree.

use std::fmt;
use std::str::FromStr;

/// Why a request path was refused by [`normalize_path_with`]. Byte offsets count from the start
/// of the raw input.
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

    /// A segment that is `.` or `..` once its `;` parameters are removed (`..;x`, `%2e%2e;`,
    /// `.%3B`): a backend that strips parameters would resolve it where the policy did not.
    #[error(
        "segment at byte {index} is \".\" or \"..\" with \";\" parameters, which Tomcat, Spring \
         and Jetty resolve as a dot segment"
    )]
    DotSegmentParams {
        /// Byte offset of the segment.
        index: usize,
    },
}

/// How `;` path parameters ("matrix parameters", RFC 3986 §3.3) are treated before matching:
/// `[inbound] path_params` in the sidecar config, `--path-params` of `authz check`.
///
/// An escaped `%3B` is never a separator (Tomcat, Spring and Jetty decode it only after
/// removing parameters, into a literal `;` in the segment name), except that `.%3B` and
/// `..%3B` are refused in `reject` and `strip` mode, for backends that decode first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathParams {
    /// `;` is an ordinary character: `/data/..;/admin` is matched and forwarded as it is. Only
    /// for backends that do not strip parameters.
    Keep,
    /// Keep parameters, but refuse (400) a segment that is `.` or `..` once they are removed.
    /// `/data/x;v=1` is matched and forwarded as it is. The default: it closes the
    /// Tomcat/Spring/Jetty bypass and keeps legitimate matrix parameters working.
    #[default]
    Reject,
    /// Remove every segment's parameters, then resolve `.` and `..`: `/data/..;/admin` is
    /// matched and forwarded as `/admin`, `/data/x;v=1` as `/data/x`, just as a servlet
    /// container reads them. The app never receives a parameter.
    Strip,
}

impl PathParams {
    /// The spelling in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PathParams::Keep => "keep",
            PathParams::Reject => "reject",
            PathParams::Strip => "strip",
        }
    }
}

impl fmt::Display for PathParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PathParams {
    /// A message naming the allowed values, ready to show an operator.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keep" => Ok(PathParams::Keep),
            "reject" => Ok(PathParams::Reject),
            "strip" => Ok(PathParams::Strip),
            _ => Err(format!(
                "{s:?} is not \"reject\" (the default), \"strip\" or \"keep\""
            )),
        }
    }
}

/// Characters kept as they are after `%XX`: RFC 3986 `unreserved`. Decoding exactly these and
/// nothing else gives every path one spelling without changing what it means.
pub(super) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub(super) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// [`normalize_path_with`] in the default mode, [`PathParams::Reject`]: the form rule paths
/// are written in.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    normalize_path_with(raw, PathParams::default())
}

/// Normalizes a request path (without its query) into the one spelling that is both matched
/// against the policy and forwarded to the app, so the two can never disagree.
///
/// Decodes `%XX` escapes of unreserved characters and upper-cases the hex of all others;
/// collapses repeated `/`; resolves `.` and `..` (after decoding, so `%2e%2e` is `..`); keeps
/// a trailing `/`. Refuses what could make the app read a different path than the one judged:
/// escaped `/` or `\`, NUL, control characters, space, literal `\`, `?` or `#`, non-ASCII,
/// malformed escapes and `..` above the root. `params` decides what `;` means (see
/// [`PathParams`]); the bytes of stripped parameters are still checked. The result is a fixed
/// point: normalizing it again in the same mode gives it back. Allocates only the result.
pub fn normalize_path_with(raw: &str, params: PathParams) -> Result<String, PathError> {
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
        let (seg_start, raw_start) = (out.len(), i);
        i = decode_segment(raw, i, params, &mut out)?;
        if params != PathParams::Keep && out.get(seg_start..).is_some_and(is_dot_with_params) {
            return Err(PathError::DotSegmentParams { index: raw_start });
        }
        trailing_slash = resolve_segment(&mut out, seg_start, i >= bytes.len())?;
        i += 1; // Skip the '/' that ended the segment (or step past the end).
    }
    if !trailing_slash && out.len() > 1 {
        out.pop();
    }
    Ok(out)
}

/// Decodes the raw segment starting at byte `i` (up to the next '/' or the end) onto `out`, and
/// returns the index where it ended. In strip mode everything from a `;` on is checked but
/// not kept.
#[inline]
fn decode_segment(
    raw: &str,
    mut i: usize,
    params: PathParams,
    out: &mut String,
) -> Result<usize, PathError> {
    let bytes = raw.as_bytes();
    let mut in_params = false;
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
            if in_params {
                // Checked above like any escape, then dropped with its parameter.
            } else if is_unreserved(byte) {
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
        in_params |= b == b';' && params == PathParams::Strip;
        if !in_params {
            out.push(char::from(b));
        }
        i += 1;
    }
    Ok(i)
}

/// Resolves the segment just decoded at `out[seg_start..]`: an empty one or `.` is dropped,
/// `..` also drops the one before it, any other is closed with '/'. Returns whether the path
/// now ends in a slash that must be kept (the segment was the `last` and was dropped).
#[inline]
fn resolve_segment(out: &mut String, seg_start: usize, last: bool) -> Result<bool, PathError> {
    match out.get(seg_start..) {
        // Empty segment ("//" or a trailing '/'): nothing to keep.
        Some("") => Ok(last),
        Some(".") => {
            out.truncate(seg_start);
            Ok(last)
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
            Ok(last)
        }
        _ => {
            out.push('/');
            Ok(false)
        }
    }
}

/// Whether a decoded `segment` is `.` or `..` followed by parameters: `;`, or `%3B` (the one
/// spelling of an escaped `;` after hex upper-casing) for backends that decode before they
/// strip. `...;` is not: `...` is an ordinary name everywhere.
fn is_dot_with_params(segment: &str) -> bool {
    let rest = segment
        .strip_prefix("..")
        .or_else(|| segment.strip_prefix('.'));
    rest.is_some_and(|r| r.starts_with(';') || r.starts_with("%3B"))
}

const HEX_UPPER: [u8; 16] = *b"0123456789ABCDEF";

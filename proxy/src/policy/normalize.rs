//! Request-path normalization: the one spelling of a path that the policy matches and the app
//! receives, and the paths refused because no safe spelling exists.

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

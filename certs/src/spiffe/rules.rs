//! The rules of the SPIFFE-ID standard as checks on bytes: what may appear in a trust domain
//! and in a path, and the error that says which rule a string broke and where.

/// Longest trust domain name accepted, in bytes (the DNS name limit the spec adopts).
pub(super) const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Longest SPIFFE ID accepted, in bytes (the spec's limit for URI SANs).
pub(super) const MAX_ID_LEN: usize = 2048;

/// Why a string is not a valid trust domain name or SPIFFE ID.
///
/// Byte offsets (`index`) count from the start of the string that was passed to the
/// function that failed: the whole ID for [`SpiffeId::parse`](super::SpiffeId::parse), the
/// bare name for [`TrustDomain::new`](super::TrustDomain::new), and the path for
/// [`SpiffeId::from_parts`](super::SpiffeId::from_parts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was the empty string (often an identity that was never configured).
    #[error("SPIFFE ID is empty")]
    Empty,

    /// The input does not begin with the exact, lowercase `spiffe://`.
    #[error("SPIFFE ID must start with \"spiffe://\" (lowercase, two slashes)")]
    MissingScheme,

    /// The whole ID is longer than [`SpiffeId::MAX_LEN`](super::SpiffeId::MAX_LEN) bytes.
    #[error("SPIFFE ID is {len} bytes; the limit is {max}", max = MAX_ID_LEN)]
    TooLong {
        /// Length of the rejected ID in bytes.
        len: usize,
    },

    /// Nothing between `spiffe://` and the path (or an empty name).
    #[error("trust domain is empty")]
    EmptyTrustDomain,

    /// The trust domain is longer than [`TrustDomain::MAX_LEN`](super::TrustDomain::MAX_LEN) bytes.
    #[error("trust domain is {len} bytes; the limit is {max}", max = MAX_TRUST_DOMAIN_LEN)]
    TrustDomainTooLong {
        /// Length of the rejected trust domain in bytes.
        len: usize,
    },

    /// The trust domain contains a character outside `a-z 0-9 . - _`
    /// (this covers ports, userinfo, uppercase, percent-encoding, query and fragment).
    #[error(
        "trust domain contains invalid character {ch:?} at byte {index} (allowed: a-z 0-9 . - _){}",
        trust_domain_hint(.ch)
    )]
    InvalidTrustDomainChar {
        /// The offending character.
        ch: char,
        /// Byte offset of `ch` in the input.
        index: usize,
    },

    /// A non-empty path given to [`SpiffeId::from_parts`](super::SpiffeId::from_parts) does not
    /// start with `/`.
    #[error("path must be empty or start with \"/\"")]
    PathNotAbsolute,

    /// A path segment has no characters: `//` inside the path, or a trailing `/`.
    #[error("path segment {segment} is empty (\"//\" or trailing \"/\")")]
    EmptySegment {
        /// 1-based number of the empty segment.
        segment: usize,
    },

    /// A path segment is exactly `.` or `..`, which the spec forbids because URI
    /// normalisation would remove them and change the identity.
    #[error("path segment {segment} is {value:?}; \".\" and \"..\" segments are not allowed")]
    DotSegment {
        /// 1-based number of the offending segment.
        segment: usize,
        /// Either `"."` or `".."`.
        value: &'static str,
    },

    /// The path contains a character outside `A-Z a-z 0-9 . - _` (this covers
    /// percent-encoding, query, fragment, spaces and non-ASCII).
    #[error(
        "path contains invalid character {ch:?} at byte {index} (allowed: A-Z a-z 0-9 . - _){}",
        path_hint(.ch)
    )]
    InvalidPathChar {
        /// The offending character.
        ch: char,
        /// Byte offset of `ch` in the input.
        index: usize,
    },
}

/// Extra advice for the most common ways a trust domain goes wrong, so the message
/// says what to change rather than only what is allowed.
fn trust_domain_hint(ch: &char) -> &'static str {
    match ch {
        ':' => "; a port is not allowed (the trust domain is a bare name such as \"example.org\")",
        '@' => "; userinfo is not allowed in the trust domain",
        'A'..='Z' => "; trust domains must be lowercase",
        '%' => "; percent-encoding is not allowed",
        '?' | '#' => "; query or fragment is not allowed",
        _ => "",
    }
}

/// Extra advice for the path characters people most often try to use.
fn path_hint(ch: &char) -> &'static str {
    match ch {
        '%' => "; percent-encoding is not allowed",
        '?' | '#' => "; query or fragment is not allowed",
        _ => "",
    }
}

/// Trust domain alphabet from the spec: lowercase letters, digits, `.`, `-`, `_`.
fn is_trust_domain_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

/// Path segment alphabet from the spec: letters of either case, digits, `.`, `-`, `_`.
fn is_path_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

/// The character starting at byte `i` of `s`, for error messages.
///
/// Both alphabets are pure ASCII, so the first rejected byte always starts a character;
/// the fallback exists only so that this can never panic.
fn char_at(s: &str, i: usize) -> char {
    s.get(i..)
        .and_then(|rest| rest.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Checks a bare trust domain name; `base` is its byte offset in the caller's input.
pub(super) fn validate_trust_domain(name: &str, base: usize) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    // Length first: it is the cheapest check and bounds the scan below.
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: name.len() });
    }
    match name.bytes().position(|b| !is_trust_domain_byte(b)) {
        Some(i) => Err(SpiffeIdError::InvalidTrustDomainChar {
            ch: char_at(name, i),
            index: base + i,
        }),
        None => Ok(()),
    }
}

/// Checks a path (`""` or `/seg/seg...`); `base` is its byte offset in the caller's input.
pub(super) fn validate_path(path: &str, base: usize) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::PathNotAbsolute);
    };
    // Byte offset of the current segment's first character in the caller's input.
    let mut offset = base + 1;
    for (n, seg) in rest.split('/').enumerate() {
        let segment = n + 1;
        if seg.is_empty() {
            return Err(SpiffeIdError::EmptySegment { segment });
        }
        if let Some(i) = seg.bytes().position(|b| !is_path_byte(b)) {
            return Err(SpiffeIdError::InvalidPathChar {
                ch: char_at(seg, i),
                index: offset + i,
            });
        }
        match seg {
            "." => {
                return Err(SpiffeIdError::DotSegment {
                    segment,
                    value: ".",
                })
            }
            ".." => {
                return Err(SpiffeIdError::DotSegment {
                    segment,
                    value: "..",
                })
            }
            _ => {}
        }
        offset += seg.len() + 1;
    }
    Ok(())
}

//! Certificate serial numbers.
//!
//! x509-parser returns serials in shortest form while rcgen may pad them, so a serial is kept
//! normalized (big-endian magnitude, no leading zero bytes) and compared as a number, never as raw
//! DER bytes. It prints as lowercase hex, which is also what the CLI accepts.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

/// A positive certificate serial number, normalized.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Box<[u8]>);

/// Why a serial could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Not hex, empty, or longer than the 20 octets RFC 5280 allows.
    #[error("serial {0:?} is not a hex number of 1 to 20 bytes (colons allowed)")]
    Invalid(String),
}

impl Serial {
    /// A fresh random serial: 16 bytes, the first in 0x40..=0x7f.
    ///
    /// The high bit stays clear so the DER INTEGER is positive without a padding byte, and the
    /// next bit is set so every serial has the same length; that leaves 126 random bits, well
    /// over the 64 that CA/B rules ask for to make serials unpredictable.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        bytes[0] = (bytes[0] & 0x3f) | 0x40;
        Serial(bytes.into())
    }

    /// A serial from big-endian bytes as found in a certificate or CRL (leading zeros dropped).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Serial(normalize(bytes).into())
    }

    /// The normalized big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `bytes` without leading zero octets: the form every serial comparison uses.
pub fn normalize(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

impl FromStr for Serial {
    type Err = SerialError;

    /// Hex, upper or lower case, optionally with `:` separators (as `openssl x509` prints them).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.trim().chars().filter(|c| *c != ':').collect();
        let bad = || SerialError::Invalid(s.to_string());
        if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let padded = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        };
        let bytes = (0..padded.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(Serial::from_bytes(&bytes))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("00");
        }
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_positive_fixed_length_and_distinct() {
        let a = Serial::random();
        let b = Serial::random();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 16);
        assert!(a.as_bytes()[0] & 0x80 == 0 && a.as_bytes()[0] >= 0x40);
    }

    #[test]
    fn padded_and_shortest_forms_compare_equal() {
        assert_eq!(
            Serial::from_bytes(&[0, 0, 0x12, 0x34]),
            Serial::from_bytes(&[0x12, 0x34])
        );
        assert_eq!(
            "00:12:34".parse::<Serial>().unwrap(),
            Serial::from_bytes(&[0x12, 0x34])
        );
        assert_eq!("ABC".parse::<Serial>().unwrap().to_string(), "0abc");
    }

    #[test]
    fn hex_round_trips() {
        let s = Serial::random();
        assert_eq!(s.to_string().parse::<Serial>().unwrap(), s);
    }

    #[test]
    fn rejects_non_hex_and_oversized() {
        for bad in ["", "xyz", "12 34", &"ab".repeat(21)] {
            assert!(bad.parse::<Serial>().is_err(), "{bad:?} was accepted");
        }
    }
}

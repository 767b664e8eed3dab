//! The two ids everything else refers to: a block's (its git commit's
//! SHA-1) and a transaction's (the BLAKE3 of its signed line).
//!
//! Both print and parse as lowercase hex and travel in JSON as hex
//! strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A block's id: its git commit id (SHA-1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId([u8; 20]);

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a {what} id ({digits} hex digits)")]
pub struct IdError {
    /// The text given (at most 80 characters of it).
    pub text: String,
    /// "block" or "transaction".
    pub what: &'static str,
    /// How many hex digits such an id has.
    pub digits: usize,
}

fn parse_hex<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], IdError> {
    let mut out = [0u8; N];
    let lower = s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match hex::decode_to_slice(s, &mut out) {
        Ok(()) if lower => Ok(out),
        _ => Err(IdError {
            text: s.chars().take(80).collect(),
            what,
            digits: N * 2,
        }),
    }
}

impl BlockId {
    /// The id whose SHA-1 bytes are `bytes`.
    pub const fn from_sha1(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// The SHA-1 bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({self})")
    }
}

impl FromStr for BlockId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s, "block").map(Self)
    }
}

/// A transaction's id: BLAKE3-256 of its signed line (the canonical JSON
/// `{"sig","tx"}`, without a newline). [`TxId::of_line`] is the one place
/// that computes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId([u8; 32]);

impl TxId {
    /// The id of a transaction line (a trailing newline is not part of it).
    pub fn of_line(line: impl AsRef<[u8]>) -> Self {
        let line = line.as_ref();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        Self(*blake3::hash(line).as_bytes())
    }

    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The BLAKE3 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxId({})", self.short())
    }
}

impl FromStr for TxId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s, "transaction").map(Self)
    }
}

macro_rules! hex_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_serde!(BlockId);
hex_serde!(TxId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_parse_and_travel_as_hex() {
        let id: BlockId = "bb0112d2a905f35fb1254f1df7ee31867db764cc".parse().unwrap();
        assert_eq!(id.to_string(), "bb0112d2a905f35fb1254f1df7ee31867db764cc");
        assert_eq!(id.short(), "bb0112d2a905");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"bb0112d2a905f35fb1254f1df7ee31867db764cc\""
        );
        for bad in [
            "",
            "bb01",
            "BB0112D2A905F35FB1254F1DF7EE31867DB764CC",
            "zb0112d2a905f35fb1254f1df7ee31867db764cc",
            "bb0112d2a905f35fb1254f1df7ee31867db764cc00",
        ] {
            assert!(bad.parse::<BlockId>().is_err(), "{bad:?}");
        }
        let tx = TxId::of_line("{\"sig\":\"s\",\"tx\":{}}\n");
        assert_eq!(tx, TxId::of_line("{\"sig\":\"s\",\"tx\":{}}"));
        assert_eq!(
            tx.to_string(),
            blake3::hash(b"{\"sig\":\"s\",\"tx\":{}}").to_hex().as_str()
        );
        let back: TxId = serde_json::from_str(&serde_json::to_string(&tx).unwrap()).unwrap();
        assert_eq!(back, tx);
        assert!(serde_json::from_str::<TxId>("\"abc\"").is_err());
    }
}

//! BLAKE3-256 names for chunks and manifests.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a 64-digit hex id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an id: expected 64 hex digits (a BLAKE3-256 hash)")]
pub struct ParseIdError {
    input: String,
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The BLAKE3-256 hash of `bytes`.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Reads an id from exactly 32 bytes, `None` for any other length.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; 64];
                hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseIdError {
                    input: s.to_owned(),
                })?;
                Ok(Self(out))
            }
        }
    };
}

hash_id!(
    /// A chunk's name: the BLAKE3-256 hash of its plain (uncompressed) bytes.
    ChunkId
);
hash_id!(
    /// A manifest's name: the BLAKE3-256 hash of its canonical encoding.
    ManifestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
    }

    #[test]
    fn rejects_bad_hex() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            let err = bad.parse::<ManifestId>().unwrap_err();
            assert!(err.to_string().contains("64 hex digits"), "{err}");
        }
    }
}

//! Pointer blobs: the small git blob that stands in a state tree for a large
//! value whose bytes live in the chunkstore.
//!
//! ```text
//! utter-chunks v1
//! manifest <64 hex digits>
//! size <decimal>
//! ```
//!
//! Each line ends with `\n`; there is exactly one spelling of a pointer, so
//! a blob either is a pointer (byte-for-byte this form) or is the value
//! itself. Writers keep that unambiguous: a value whose bytes happen to read
//! as a pointer is stored in the chunkstore too (see
//! [`crate::Ledger::store_value`]).

use std::fmt::Write as _;

use utter_chunkstore::ManifestId;

const MAGIC: &str = "utter-chunks v1\n";
/// Pointer blobs are at most this long; longer blobs are plain values.
pub const MAX_POINTER_LEN: usize = 128;

/// A large value: its manifest in the chunkstore and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// The manifest naming the value's chunks.
    pub manifest: ManifestId,
    /// The value's length in bytes.
    pub size: u64,
}

impl Pointer {
    /// The pointer blob's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(MAX_POINTER_LEN);
        s.push_str(MAGIC);
        // Writing to a String cannot fail.
        let _ = write!(s, "manifest {}\nsize {}\n", self.manifest, self.size);
        s.into_bytes()
    }

    /// Reads a pointer; `None` when `blob` is not exactly a pointer's
    /// encoding (then it is a plain value).
    pub fn decode(blob: &[u8]) -> Option<Self> {
        if blob.len() > MAX_POINTER_LEN {
            return None;
        }
        let text = std::str::from_utf8(blob).ok()?;
        let rest = text.strip_prefix(MAGIC)?;
        let rest = rest.strip_prefix("manifest ")?;
        let (hex, rest) = rest.split_once('\n')?;
        let size = rest.strip_prefix("size ")?.strip_suffix('\n')?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        // One spelling: no sign, no leading zeros.
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return None;
        }
        let pointer = Self {
            manifest: hex.parse().ok()?,
            size: size.parse().ok()?,
        };
        (pointer.encode() == blob).then_some(pointer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_spelling() {
        let p = Pointer {
            manifest: ManifestId::of(b"x"),
            size: 1234,
        };
        let bytes = p.encode();
        assert_eq!(Pointer::decode(&bytes), Some(p));
        let text = String::from_utf8(bytes.clone()).expect("ascii");
        assert!(text.starts_with("utter-chunks v1\nmanifest "));
        assert!(text.ends_with("\nsize 1234\n"));
        for variant in [
            text.replace("size 1234", "size 01234"),
            text.replace("size 1234", "size +1234"),
            text.replace("size 1234\n", "size 1234"),
            text.replace("v1", "v2"),
            text.to_uppercase(),
            format!("{text}\n"),
            text.replace("size 1234", "size 99999999999999999999999"),
        ] {
            assert_eq!(Pointer::decode(variant.as_bytes()), None, "{variant:?}");
        }
        assert_eq!(Pointer::decode(b""), None);
        assert_eq!(Pointer::decode(&[0xff; 200]), None);
    }
}

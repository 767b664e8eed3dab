//! Manifests: the ordered list of chunks that make up one blob.
//!
//! Canonical encoding (what the manifest id hashes):
//!
//! ```text
//! "utter-manifest-v1\n"              18 bytes
//! entry count                        u64, little endian
//! per entry: chunk id, length        32 bytes, u32 little endian
//! ```
//!
//! Chunk lengths are 1..=16 MiB (FastCDC's largest maximum), so decoding a
//! hostile manifest can never promise a reader an unbounded chunk.

use crate::id::{ChunkId, ManifestId};

const MAGIC: &[u8; 18] = b"utter-manifest-v1\n";
const ENTRY: usize = 36;
/// The largest chunk any manifest may name: FastCDC 2020's largest maximum.
pub const MAX_CHUNK_LEN: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;

/// One chunk of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The chunk's id.
    pub id: ChunkId,
    /// Its plain length in bytes.
    pub len: u32,
}

/// The ordered chunks of one blob.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    entries: Vec<Entry>,
    size: u64,
}

/// Why bytes are not a canonical manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Does not start with the magic line.
    #[error("not a manifest: missing the `utter-manifest-v1` header")]
    Magic,
    /// The entry count disagrees with the length.
    #[error("manifest is {len} bytes, which does not hold the {count} entries it announces")]
    Length {
        /// Bytes given.
        len: usize,
        /// Entries announced.
        count: u64,
    },
    /// An entry has length 0 or above 16 MiB.
    #[error("manifest entry {index} names chunk {id} with impossible length {len}")]
    ChunkLength {
        /// Position in the manifest.
        index: usize,
        /// The chunk.
        id: ChunkId,
        /// The claimed length.
        len: u32,
    },
}

impl Manifest {
    /// A manifest of `entries`, in order.
    ///
    /// # Panics
    /// If an entry has length 0 or above [`MAX_CHUNK_LEN`]; chunkers never make those.
    pub fn new(entries: Vec<Entry>) -> Self {
        assert!(
            entries.iter().all(|e| e.len > 0 && e.len <= MAX_CHUNK_LEN),
            "chunk lengths are 1..=16 MiB"
        );
        let size = entries.iter().map(|e| u64::from(e.len)).sum();
        Self { entries, size }
    }

    /// The chunks, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + self.entries.len() * ENTRY);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(e.id.as_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
        }
        out
    }

    /// The manifest's id: BLAKE3 of [`Manifest::encode`].
    pub fn id(&self) -> ManifestId {
        ManifestId::of(&self.encode())
    }

    /// Parses a canonical encoding; anything else is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(DecodeError::Magic)?;
        let (count, body) = rest.split_at_checked(8).ok_or(DecodeError::Length {
            len: bytes.len(),
            count: 0,
        })?;
        let count = u64::from_le_bytes(count.try_into().expect("split at 8"));
        if body.len() as u64 != count.saturating_mul(ENTRY as u64) {
            return Err(DecodeError::Length {
                len: bytes.len(),
                count,
            });
        }
        let mut entries = Vec::with_capacity(body.len() / ENTRY);
        for (index, raw) in body.chunks_exact(ENTRY).enumerate() {
            let id = ChunkId::from_slice(&raw[..32]).expect("32 bytes");
            let len = u32::from_le_bytes(raw[32..].try_into().expect("4 bytes"));
            if len == 0 || len > MAX_CHUNK_LEN {
                return Err(DecodeError::ChunkLength { index, id, len });
            }
            entries.push(Entry { id, len });
        }
        Ok(Self::new(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::new(vec![
            Entry {
                id: ChunkId::of(b"a"),
                len: 1,
            },
            Entry {
                id: ChunkId::of(b"bc"),
                len: 2,
            },
        ])
    }

    #[test]
    fn round_trip_and_size() {
        let m = sample();
        assert_eq!(m.size(), 3);
        let bytes = m.encode();
        assert_eq!(bytes.len(), 18 + 8 + 2 * 36);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.id(), ManifestId::of(&bytes));
    }

    #[test]
    fn empty_manifest_is_valid() {
        let m = Manifest::new(Vec::new());
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.size(), 0);
    }

    #[test]
    fn rejects_hostile_encodings() {
        let good = sample().encode();
        assert_eq!(Manifest::decode(b"nope"), Err(DecodeError::Magic));
        assert!(matches!(
            Manifest::decode(&good[..good.len() - 1]),
            Err(DecodeError::Length { .. })
        ));
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            Manifest::decode(&extra),
            Err(DecodeError::Length { .. })
        ));
        let mut huge_count = good.clone();
        huge_count[18..26].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&huge_count),
            Err(DecodeError::Length { .. })
        ));
        let mut zero_len = good.clone();
        zero_len[26 + 32..26 + 36].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&zero_len),
            Err(DecodeError::ChunkLength {
                index: 0,
                len: 0,
                ..
            })
        ));
        let mut too_long = good;
        too_long[26 + 36 + 32..].copy_from_slice(&(MAX_CHUNK_LEN + 1).to_le_bytes());
        assert!(matches!(
            Manifest::decode(&too_long),
            Err(DecodeError::ChunkLength { index: 1, .. })
        ));
    }
}

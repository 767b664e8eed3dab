//! Content-defined chunk storage: FastCDC 2020 cuts, BLAKE3-256 ids, zstd
//! when it saves space, RocksDB underneath.
//!
//! A blob is stored as chunks plus a [`Manifest`] (the ordered chunk ids and
//! lengths) whose id is the BLAKE3 of its canonical encoding. Storing a blob
//! that shares content with stored blobs stores only the chunks that differ.
//!
//! This crate owns its RocksDB column families (all named `chunkstore.*`)
//! and knows nothing of git, the ledger, images or the network: other crates
//! name blobs by [`ManifestId`] and hand chunks in and out by [`ChunkId`].
//!
//! Every read re-hashes what it returns: a damaged chunk is an error naming
//! it, never wrong bytes.

mod cut;
mod error;
mod id;
mod manifest;
mod params;
mod reader;
mod store;

pub use error::{Error, OpenError};
pub use id::{ChunkId, ManifestId, ParseIdError};
pub use manifest::{DecodeError, Entry, MAX_CHUNK_LEN, Manifest};
pub use params::{Chunking, ChunkingError};
pub use reader::BlobReader;
pub use store::{
    GcReport, OpenOptions, Put, PutOptions, Record, Stats, Store, StoredChunk, VerifyReport,
};

#[cfg(test)]
mod tests;

//! Error types, one per kind of operation.

use std::io;
use std::path::PathBuf;

use crate::{ChunkId, Chunking, ManifestId};

/// Opening (or creating) a store failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing at the path and creation was not asked for.
    #[error(
        "no chunk store at {path}: store something first (`utter chunks put FILE`) or pass the right --data-dir"
    )]
    NotFound {
        /// Where the store was expected.
        path: PathBuf,
    },
    /// Another process has the database open.
    #[error(
        "the chunk store at {path} is in use by another process (RocksDB holds its LOCK file); stop that process or use another --data-dir"
    )]
    Locked {
        /// The store.
        path: PathBuf,
    },
    /// The store was created with other chunking parameters.
    #[error(
        "the chunk store at {path} was created with chunk sizes {stored}, not {requested}; chunk sizes cannot change after creation, so drop the option or use another --data-dir"
    )]
    ChunkingMismatch {
        /// The store.
        path: PathBuf,
        /// Recorded at creation.
        stored: Chunking,
        /// Asked for now.
        requested: Chunking,
    },
    /// Written by a newer utter, or its metadata is damaged.
    #[error("the chunk store at {path} cannot be used: {reason}")]
    Unusable {
        /// The store.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Creating the directory failed.
    #[error("cannot create the chunk store directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// RocksDB refused.
    #[error("cannot open the chunk store at {path}")]
    Db {
        /// The store.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
}

/// A store operation failed. Corruption is always reported with the id of the
/// damaged object; no operation returns bytes whose hash does not match.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input could not be read.
    #[error("reading the input failed after {offset} bytes")]
    Input {
        /// Bytes read before the failure.
        offset: u64,
        /// Why.
        source: io::Error,
    },
    /// RocksDB failed.
    #[error("chunk store database error while {doing}")]
    Db {
        /// What the store was doing.
        doing: &'static str,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// No manifest with this id.
    #[error("manifest {0} is not in the store")]
    MissingManifest(ManifestId),
    /// A manifest names a chunk the store does not have.
    #[error("chunk {0} is missing from the store")]
    MissingChunk(ChunkId),
    /// A stored chunk does not decode to bytes with its id.
    #[error("chunk {id} is corrupt: {reason}; run `utter chunks verify` to list all damage")]
    CorruptChunk {
        /// The damaged chunk.
        id: ChunkId,
        /// What was found.
        reason: String,
    },
    /// A stored manifest does not hash to its id or does not decode.
    #[error("manifest {id} is corrupt: {reason}")]
    CorruptManifest {
        /// The damaged manifest.
        id: ManifestId,
        /// What was found.
        reason: String,
    },
    /// `put_chunk` got bytes that do not hash to the claimed id.
    #[error("chunk claimed to be {claimed} hashes to {actual}; refusing it")]
    HashMismatch {
        /// The id it arrived under.
        claimed: ChunkId,
        /// The hash of the bytes.
        actual: ChunkId,
    },
    /// `put_chunk` got an empty or oversized chunk.
    #[error("chunk {id} is {len} bytes; chunks are 1 byte to 16 MiB")]
    ChunkSize {
        /// The id it arrived under.
        id: ChunkId,
        /// Its length.
        len: usize,
    },
    /// `put_manifest` got bytes that are not a canonical manifest.
    #[error("not a valid manifest")]
    BadManifest(#[from] crate::manifest::DecodeError),
    /// `unpin` of a manifest that has no pins.
    #[error("manifest {0} is not pinned")]
    NotPinned(ManifestId),
    /// zstd could not set up a compression or decompression context.
    #[error("cannot set up zstd (out of memory?)")]
    Zstd(#[source] io::Error),
    /// A pipeline thread panicked (a bug).
    #[error("an ingest thread panicked; nothing was committed for this input")]
    Panicked,
}

impl Error {
    pub(crate) fn db(doing: &'static str) -> impl FnOnce(rocksdb::Error) -> Self {
        move |source| Error::Db { doing, source }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Input { source, .. } => source,
            e => io::Error::other(e),
        }
    }
}

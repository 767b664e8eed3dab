//! Error types, one per kind of operation.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// The image store itself failed (opening, reading its index, a reference).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the store could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The chunk store failed.
    #[error(transparent)]
    Chunks(#[from] utter_chunkstore::Error),
    /// The index is damaged or from a newer utter.
    #[error("the image index {path} cannot be used: {reason}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No image has this tag, digest or digest prefix.
    #[error("no image `{0}`: `utter image ls` lists tags and digests")]
    UnknownRef(String),
    /// A digest prefix matches several images.
    #[error("`{reference}` matches {count} images; give more digits of the digest")]
    AmbiguousRef {
        /// What was asked for.
        reference: String,
        /// How many images match.
        count: usize,
    },
    /// A tag that cannot be used.
    #[error("`{tag}` cannot be a tag: {reason}")]
    BadTag {
        /// The tag.
        tag: String,
        /// Why.
        reason: &'static str,
    },
    /// A document the index names is missing or does not match its digest.
    #[error("the stored {what} {digest} is missing or damaged; re-import the image")]
    Damaged {
        /// Manifest or config.
        what: &'static str,
        /// Its digest.
        digest: Digest,
    },
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

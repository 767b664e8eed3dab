//! OCI images: import from the transports skopeo names, reproducible builds
//! from a directory, export to an OCI layout and unpack to a rootfs.
//!
//! Layers are stored as their **uncompressed** tar streams in the chunkstore
//! (compressed bytes do not dedupe), keyed by diffID; manifests and configs
//! are kept as documents named by digest. An image's identity is the digest
//! of its OCI manifest as utter stores it: layers uncompressed and named by
//! their diffIDs, so the same image imported gzip'd, zstd'd or from a
//! docker archive has one id, and `export` writes exactly that manifest.
//!
//! May use `utter-chunkstore`; must not know about the ledger or containers.
//! Layer tars are treated as hostile: [`tar`] caps every header, and
//! [`unpack`] never writes outside its target.

mod adopt;
mod build;
mod digest;
mod error;
mod export;
mod import;
mod pipe;
mod store;
pub mod tar;
pub mod unpack;

pub use adopt::{AdoptError, ImageDocs};
pub use build::{BuildError, BuildInput, BuildOptions, Built};
pub use digest::{Digest, ParseDigestError};
pub use error::Error;
pub use export::{ExportError, parse_target};
pub use import::{ImportError, ImportOptions, Imported, ParseSourceError, Progress, Source, media};
pub use store::{Catalog, Image, Images, Layer, Removed, check_tag};
pub use unpack::{UnpackError, UnpackOptions, UnpackReport};

#[cfg(test)]
mod tests;

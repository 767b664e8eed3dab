//! OCI images: import from the transports skopeo names, reproducible builds
//! from a directory, export to an OCI layout and unpack to a rootfs. Layers
//! are stored as uncompressed tar streams in the chunkstore.
//!
//! May use `utter-chunkstore`; must not know about the ledger or containers.
//!
//! Not built yet: this crate is filled by the images issue.

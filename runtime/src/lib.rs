//! The runtime: runs an image's entrypoint in a fresh, isolated youki
//! (libcontainer) container and returns its outcome as a value.
//!
//! May use `utter-images`; must not know about the ledger, consensus or the
//! network.
//!
//! Not built yet: this crate is filled by the runtime issue.

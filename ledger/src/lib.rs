//! The ledger: a bare git repository of SSH-signed blocks whose trees hold the
//! whole chain state, the canonical signed transaction format, and pointer
//! blobs whose bytes live in the chunkstore.
//!
//! May use `utter-chunkstore`; must not know about containers, consensus or
//! the network.
//!
//! Not built yet: this crate is filled by the ledger issue.

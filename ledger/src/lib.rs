//! The ledger: a bare git repository of SSH-signed blocks whose trees hold the
//! whole chain state, the canonical signed transaction format, and pointer
//! blobs whose bytes live in the chunkstore.
//!
//! May use `utter-chunkstore`; must not know about containers, consensus or
//! the network.
//!
//! Built so far: keys and SSH signatures ([`key`]) and transactions
//! ([`tx`]). The git DAG of blocks, state trees, pointer blobs and the
//! `utter init/key/log/show/verify` commands are still to come (ledger
//! issue).

pub mod key;
pub mod tx;

#[cfg(test)]
mod tests;

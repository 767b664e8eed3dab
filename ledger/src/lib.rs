//! The ledger: a bare git repository of SSH-signed blocks whose trees hold the
//! whole chain state, the canonical signed transaction format, and pointer
//! blobs whose bytes live in the chunkstore.
//!
//! - [`key`], [`tx`]: keys and signed transactions (re-exported from
//!   `utter-formats`, where a light client can sign without this crate).
//! - [`block`]: a block's commit message; [`BlockId`] and the results line
//!   are `utter-formats`' too.
//! - [`layout`]: the tree layout and the rules names and configs follow.
//! - [`governance`]: the `chain set` transaction that changes `chain.toml`,
//!   approved by a quorum of the validators.
//! - [`pointer`]: pointer blobs for values kept in the chunkstore.
//! - [`Ledger`]: the repository: write blocks, read state, branches and DAG
//!   queries, and [`Ledger::verify`] over the whole DAG.
//!
//! May use `utter-chunkstore`; must not know about containers, consensus or
//! the network.

pub mod block;
pub mod cert;
mod dag;
mod diff;
pub mod governance;
pub mod layout;
mod pack;
pub mod pointer;
mod precheck;
mod repo;
pub mod sync;
mod verify;

pub use utter_formats::{TxId, key, tx};

pub use block::{BlockId, Status, TxResult};
pub use diff::FileChange;
pub use repo::{
    Block, Change, Changes, DirEntry, Draft, GENESIS_REF, INLINE_MAX, Ledger, LedgerError, MAIN,
    ValueReader,
};
pub use verify::{BlockChecker, BlockError, BlockReport, Verification};

/// Git object ids (trees, blobs, commits), as gix spells them.
pub use gix::ObjectId;

#[cfg(test)]
mod tests;

//! utter's public formats, the ones every other part and every outside
//! tool agrees on: block and transaction ids, OpenSSH ed25519 keys and SSH
//! signatures, signed transactions, the results line, and the two
//! configuration files a block's tree holds (`chain.toml`, `dapp.toml`).
//!
//! - [`id`]: [`BlockId`] (a git commit's SHA-1) and [`TxId`] (BLAKE3 of a
//!   transaction line; [`TxId::of_line`] is the one place it is computed).
//! - [`key`]: [`Keypair`] and [`Signer`], SSHSIG signatures `ssh-keygen -Y
//!   verify` accepts.
//! - [`tx`]: transactions, canonical JSON signed in namespace `utter-tx`,
//!   and [`tx::sign_requests`], which signs on a client.
//! - [`result`]: a transaction's [`TxResult`].
//! - [`config`]: [`ChainConfig`], [`DappConfig`] and the name rules.
//!
//! Deliberately light: it links no RocksDB, no git library and no
//! container runtime, so the light client (a door controller on a
//! Raspberry Pi) and the consensus state machine can use it. Knows nothing
//! of how blocks are stored, run or sent.

pub mod config;
pub mod id;
pub mod jcs;
pub mod key;
pub mod result;
pub mod tx;

pub use config::{ChainConfig, DappConfig, Member};
pub use id::{BlockId, IdError, TxId};
pub use key::{Keypair, Signer};
pub use result::{Status, TxResult};
pub use tx::{Request, SignedTx, Tx, TxError};

/// The current time, Unix seconds (0 if the clock is before 1970). Block
/// and transaction times are Unix seconds too.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;

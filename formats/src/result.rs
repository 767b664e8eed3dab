//! The outcome of a transaction in a block: one canonical JSON line of
//! `block/results.jsonl` per line of `block/txs.jsonl`.

use serde::{Deserialize, Serialize};

use crate::id::TxId;

/// A transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Applied to the state.
    Accepted,
    /// Recorded but not applied; `reason` says why.
    Rejected,
}

/// One line of `block/results.jsonl`, for the transaction on the same line
/// of `block/txs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxResult {
    /// The transaction's id (BLAKE3 of its line).
    pub tx: TxId,
    /// Accepted or rejected.
    pub status: Status,
    /// Why it was rejected, or a dapp's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the dapp returned for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

impl TxResult {
    /// An accepted transaction.
    pub fn accepted(tx: TxId) -> Self {
        Self {
            tx,
            status: Status::Accepted,
            reason: None,
            output: None,
        }
    }

    /// A rejected transaction and why.
    pub fn rejected(tx: TxId, reason: impl Into<String>) -> Self {
        Self {
            tx,
            status: Status::Rejected,
            reason: Some(reason.into()),
            output: None,
        }
    }

    /// The canonical JSON line (no newline).
    pub fn to_line(&self) -> String {
        String::from_utf8(crate::jcs::to_vec(self)).expect("canonical JSON is UTF-8")
    }
}

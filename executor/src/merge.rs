//! What a merge block re-executes: the transactions only its later parents
//! reach, on top of the first parent's state (ARCHITECTURE.md's merge
//! semantics).

use std::collections::HashSet;

use utter_ledger::tx::TxError;
use utter_ledger::{BlockId, Ledger, TxId};

use crate::ExecError;

/// Why a merge cannot be made over the parents given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// No parent at all.
    #[error("a block needs a parent")]
    NoParent,
    /// Parents out of id order, or one named twice.
    #[error("a merge's parents must be sorted by id, each named once")]
    Unsorted,
    /// One parent is an ancestor of another: nothing of it would be merged.
    #[error("{} and {} are on one line; merge only their tips", .0.short(), .1.short())]
    OneLine(BlockId, BlockId),
    /// A transaction of a merged branch no longer verifies: the ledger is
    /// damaged, and no validator could agree with the merge.
    #[error("a merged transaction does not verify: {0}")]
    Refused(TxError),
}

/// A block's parents: at least one, and a merge's sorted by id with none
/// named twice.
pub(crate) fn check_parents(parents: &[BlockId]) -> Result<(), MergeError> {
    if parents.is_empty() {
        return Err(MergeError::NoParent);
    }
    if parents.windows(2).any(|w| w[0] >= w[1]) {
        return Err(MergeError::Unsorted);
    }
    Ok(())
}

/// What a merge over `parents` re-executes before its own transactions:
/// for each parent after the first (parents sorted by id), the lines of
/// the blocks only it reaches, parents before children, on top of
/// everything merged before it. A line already applied on the merged side
/// (the same transaction in both branches, as when two sibling proposals
/// carried it) is not applied twice; a different transaction reusing a
/// nonce is re-executed and rejected as a replay, so nothing is dropped.
/// Rejected lines are re-executed too: on the merged state they may apply.
pub fn merge_lines(ledger: &Ledger, parents: &[BlockId]) -> Result<Vec<String>, ExecError> {
    check_parents(parents)?;
    let mut applied: HashSet<TxId> = HashSet::new();
    let mut out = Vec::new();
    for i in 1..parents.len() {
        let (merged, next) = (&parents[..i], parents[i]);
        // What the merged side applied since it diverged from `next`
        // (earlier branches' lines are in `applied` already).
        for b in ledger.only_in(merged, &[next])? {
            for line in ledger.tx_lines(&ledger.block(b)?)? {
                applied.insert(TxId::of_line(&line));
            }
        }
        for b in ledger.only_in(&[next], merged)? {
            for line in ledger.tx_lines(&ledger.block(b)?)? {
                if applied.insert(TxId::of_line(&line)) {
                    out.push(line);
                }
            }
        }
    }
    Ok(out)
}

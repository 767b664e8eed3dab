//! Which nonces each signer used on a line of blocks.

use std::collections::{BTreeMap, HashMap};

use utter_ledger::tx::SignedTx;
use utter_ledger::{Block, BlockId, Ledger};

use crate::ExecError;

/// Used nonces of every signer on one line of blocks, as ranges (signers
/// mostly count up, so this stays small).
#[derive(Debug, Default, Clone)]
pub struct Nonces {
    by_signer: HashMap<String, BTreeMap<u64, u64>>,
}

impl Nonces {
    /// The nonces used on the line ending at `tip` (reads every block's
    /// transactions once).
    pub fn of_line(ledger: &Ledger, tip: BlockId) -> Result<Self, ExecError> {
        let mut n = Self::default();
        for id in ledger.ancestors(&[tip])? {
            n.add_block(ledger, &ledger.block(id)?)?;
        }
        Ok(n)
    }

    /// Adds the nonces of `block`'s transactions.
    pub fn add_block(&mut self, ledger: &Ledger, block: &Block) -> Result<(), ExecError> {
        for line in ledger.tx_lines(block)? {
            if let Some((signer, nonce)) = signer_nonce(&line) {
                self.insert(&signer, nonce);
            }
        }
        Ok(())
    }

    /// `signer` used `nonce`.
    pub fn contains(&self, signer: &str, nonce: u64) -> bool {
        self.by_signer.get(signer).is_some_and(|ranges| {
            ranges
                .range(..=nonce)
                .next_back()
                .is_some_and(|(_, end)| nonce <= *end)
        })
    }

    /// Records that `signer` used `nonce`.
    pub fn insert(&mut self, signer: &str, nonce: u64) {
        if self.contains(signer, nonce) {
            return;
        }
        let ranges = self.by_signer.entry(signer.to_string()).or_default();
        let below = ranges
            .range(..nonce)
            .next_back()
            .filter(|(_, end)| **end + 1 == nonce)
            .map(|(start, _)| *start);
        let above = nonce
            .checked_add(1)
            .and_then(|n| ranges.get(&n).map(|end| (n, *end)));
        let start = below.unwrap_or(nonce);
        let end = match above {
            Some((n, end)) => {
                ranges.remove(&n);
                end
            }
            None => nonce,
        };
        ranges.insert(start, end);
    }

    /// The smallest nonce above every nonce `signer` used.
    pub fn next(&self, signer: &str) -> u64 {
        self.by_signer
            .get(signer)
            .and_then(|r| r.last_key_value())
            .map_or(1, |(_, end)| end + 1)
    }
}

/// Pulls signer and nonce out of a transaction line already in a block
/// (checked when it was written; a line that does not parse adds nothing).
pub fn signer_nonce(line: &str) -> Option<(String, u64)> {
    let stx: SignedTx = serde_json::from_str(line).ok()?;
    Some((stx.tx.signer, stx.tx.nonce))
}

/// The nonce `signer` should use next on the line ending at `tip`: one
/// above the highest it used there. Reads every block's transactions
/// (a node answers from the executor's index instead).
pub fn next_nonce(ledger: &Ledger, tip: BlockId, signer: &str) -> Result<u64, ExecError> {
    let mut highest = 0;
    for id in ledger.ancestors(&[tip])? {
        for line in ledger.tx_lines(&ledger.block(id)?)? {
            if let Some((s, nonce)) = signer_nonce(&line)
                && s == signer
            {
                highest = highest.max(nonce);
            }
        }
    }
    Ok(highest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_ranges_merge_and_answer() {
        let mut n = Nonces::default();
        for x in [1, 2, 3, 7, 5, 6] {
            n.insert("a", x);
        }
        assert!(n.contains("a", 1) && n.contains("a", 3) && n.contains("a", 5));
        assert!(!n.contains("a", 4) && !n.contains("a", 8) && !n.contains("b", 1));
        assert_eq!(n.by_signer["a"].len(), 2, "{:?}", n.by_signer);
        n.insert("a", 4);
        assert_eq!(n.by_signer["a"].len(), 1, "{:?}", n.by_signer);
        assert_eq!(n.next("a"), 8);
        assert_eq!(n.next("b"), 1);
        n.insert("a", u64::MAX);
        assert!(n.contains("a", u64::MAX));
    }
}

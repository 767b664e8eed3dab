//! The machine's mempool: transaction ids in the order they arrived.
//!
//! Arrival order is what a node passes on (to a peer that connects, in a
//! proposal), so a signer's transactions admitted together at one node
//! keep their order on every node they reach. A `BTreeSet` of ids would
//! hand them on sorted by hash, and a block built from that order runs
//! a signer's later transaction before the earlier one it depends on.

use std::collections::{BTreeMap, HashMap};

use utter_formats::TxId;

/// Transaction ids, each once, in arrival order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Mempool {
    order: BTreeMap<u64, TxId>,
    seq: HashMap<TxId, u64>,
    next: u64,
}

impl Mempool {
    /// Adds `tx` at the end; false if it was already there.
    pub(crate) fn insert(&mut self, tx: TxId) -> bool {
        if self.seq.contains_key(&tx) {
            return false;
        }
        self.seq.insert(tx, self.next);
        self.order.insert(self.next, tx);
        self.next += 1;
        true
    }

    /// Takes `tx` out; false if it was not there.
    pub(crate) fn remove(&mut self, tx: &TxId) -> bool {
        match self.seq.remove(tx) {
            Some(s) => {
                self.order.remove(&s);
                true
            }
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &TxId> + '_ {
        self.order.values()
    }
}

impl FromIterator<TxId> for Mempool {
    fn from_iter<I: IntoIterator<Item = TxId>>(iter: I) -> Self {
        let mut m = Mempool::default();
        for tx in iter {
            m.insert(tx);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TxId {
        TxId::from_bytes([n; 32])
    }

    #[test]
    fn keeps_arrival_order_not_id_order() {
        let mut m: Mempool = [id(9), id(1), id(5)].into_iter().collect();
        assert!(!m.insert(id(1)), "a second insert of one id is refused");
        assert!(m.insert(id(3)));
        assert!(m.remove(&id(1)));
        assert!(!m.remove(&id(1)));
        assert_eq!(
            m.iter().copied().collect::<Vec<_>>(),
            vec![id(9), id(5), id(3)]
        );
        assert_eq!(m.len(), 3);
    }
}

//! The mempool's rules, without IO: which signed transactions wait for a
//! block, in arrival order, and which are refused at the door (a nonce
//! already used on the chain or already waiting, a full pool). The node
//! persists what this admits before it may go into a block.

use std::collections::{BTreeMap, HashMap};

use utter_executor::Nonces;
use utter_ledger::TxId;
use utter_ledger::tx::SignedTx;

/// A transaction waiting for a block.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Arrival order; also its record key.
    pub seq: u64,
    /// The transaction's id (the hash of its line).
    pub id: TxId,
    /// The signed line.
    pub line: String,
    /// The line, parsed and checked.
    pub tx: SignedTx,
    /// Written to disk: only durable transactions go into blocks.
    pub durable: bool,
}

/// Why a transaction is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The signer used this nonce in a committed block.
    Replayed,
    /// Another waiting transaction has this signer and nonce.
    NonceTaken,
    /// The pool holds its maximum.
    Full(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Replayed => f.write_str(
                "the signer already used this nonce in a committed block (a replay); sign it again with a new nonce",
            ),
            Refusal::NonceTaken => f.write_str(
                "another waiting transaction of this signer has this nonce; sign it again with a new nonce",
            ),
            Refusal::Full(n) => write!(
                f,
                "the mempool is full ({n} transactions wait); try again when blocks have taken some"
            ),
        }
    }
}

/// What `admit` did with one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Waiting (not yet durable).
    New(u64),
    /// The same line was already waiting.
    Duplicate,
}

/// The waiting transactions.
#[derive(Debug)]
pub struct Pool {
    queue: BTreeMap<u64, Pending>,
    ids: HashMap<TxId, u64>,
    /// Waiting transactions by signer and nonce.
    nonces: HashMap<(String, u64), u64>,
    committed: Nonces,
    next_seq: u64,
    max: usize,
}

impl Pool {
    /// An empty pool over the chain's used nonces, holding at most `max`.
    pub fn new(committed: Nonces, max: usize, next_seq: u64) -> Self {
        Self {
            queue: BTreeMap::new(),
            ids: HashMap::new(),
            nonces: HashMap::new(),
            committed,
            next_seq,
            max,
        }
    }

    /// Waiting transactions.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The ids of the durable transactions, in arrival order.
    pub fn ids(&self) -> Vec<TxId> {
        self.queue
            .values()
            .filter(|p| p.durable)
            .map(|p| p.id)
            .collect()
    }

    /// Takes these out of the pool; returns their seqs.
    pub fn remove_ids(&mut self, ids: &[TxId]) -> Vec<u64> {
        let seqs: Vec<u64> = ids
            .iter()
            .filter_map(|id| self.ids.get(id).copied())
            .collect();
        self.forget(&seqs);
        seqs
    }

    /// The transaction with this id, if it waits.
    pub fn get(&self, id: &TxId) -> Option<&Pending> {
        self.ids.get(id).and_then(|seq| self.queue.get(seq))
    }

    /// The next nonce for `signer`: above every nonce it used on the chain
    /// or has waiting.
    pub fn next_nonce(&self, signer: &str) -> u64 {
        let waiting = self
            .queue
            .values()
            .filter(|p| p.tx.tx.signer == signer)
            .map(|p| p.tx.tx.nonce + 1)
            .max()
            .unwrap_or(1);
        self.committed.next(signer).max(waiting)
    }

    /// Admits a checked transaction (not durable until [`Pool::made_durable`]).
    pub fn admit(&mut self, id: TxId, line: String, tx: SignedTx) -> Result<Admitted, Refusal> {
        if self.ids.contains_key(&id) {
            return Ok(Admitted::Duplicate);
        }
        let (signer, nonce) = (&tx.tx.signer, tx.tx.nonce);
        if self.committed.contains(signer, nonce) {
            return Err(Refusal::Replayed);
        }
        if self.nonces.contains_key(&(signer.clone(), nonce)) {
            return Err(Refusal::NonceTaken);
        }
        if self.queue.len() >= self.max {
            return Err(Refusal::Full(self.queue.len()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.nonces.insert((signer.clone(), nonce), seq);
        self.ids.insert(id, seq);
        self.queue.insert(
            seq,
            Pending {
                seq,
                id,
                line,
                tx,
                durable: false,
            },
        );
        Ok(Admitted::New(seq))
    }

    /// These were written to disk: blocks may take them.
    pub fn made_durable(&mut self, seqs: &[u64]) {
        for seq in seqs {
            if let Some(p) = self.queue.get_mut(seq) {
                p.durable = true;
            }
        }
    }

    /// Drops transactions that never became durable (their write failed).
    pub fn forget(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.remove(*seq);
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Pending> {
        let mut p = self.queue.remove(&seq)?;
        self.ids.remove(&p.id);
        let key = (std::mem::take(&mut p.tx.tx.signer), p.tx.tx.nonce);
        self.nonces.remove(&key);
        p.tx.tx.signer = key.0;
        Some(p)
    }

    /// Durable transactions waiting, in arrival order up to the first one
    /// that is not durable.
    pub fn ready(&self) -> usize {
        self.queue.values().take_while(|p| p.durable).count()
    }

    /// Copies of the first `n` durable transactions, in arrival order.
    pub fn take(&self, n: usize) -> Vec<Pending> {
        let picked: Vec<&Pending> = self
            .queue
            .values()
            .take_while(|p| p.durable)
            .take(n)
            .collect();
        block_order(picked).into_iter().cloned().collect()
    }

    /// Settles a committed block: `txs` are its transactions' ids with
    /// their signers and nonces. Those waiting here leave; every nonce is
    /// now used; a waiting transaction with a nonce the block used (a
    /// different transaction of the same signer) can never commit and
    /// leaves too. Returns what left: the seqs (for their records) and the
    /// ids of those that left without being in the block.
    pub fn settle(&mut self, txs: &[(TxId, String, u64)]) -> (Vec<u64>, Vec<TxId>) {
        let mut seqs = Vec::new();
        let mut dropped = Vec::new();
        for (id, signer, nonce) in txs {
            self.committed.insert(signer, *nonce);
            // Most are here as they are in the block: found by id, without
            // building a (signer, nonce) key.
            let seq = match self.ids.get(id) {
                Some(&seq) => Some(seq),
                None => self.nonces.get(&(signer.clone(), *nonce)).copied(),
            };
            if let Some(seq) = seq
                && let Some(p) = self.remove(seq)
            {
                seqs.push(seq);
                if p.id != *id {
                    dropped.push(p.id);
                }
            }
        }
        (seqs, dropped)
    }

    /// These went into a committed block: they no longer wait, and their
    /// nonces are used.
    pub fn committed(&mut self, seqs: &[u64]) {
        for seq in seqs {
            if let Some(p) = self.remove(*seq) {
                self.committed.insert(&p.tx.tx.signer, p.tx.tx.nonce);
            }
        }
    }
}

/// The order transactions picked in arrival order go into a block: each
/// signer's in nonce order, in the places its transactions hold. A signer
/// numbers what it means to run in order (`sign_and_submit` gives a batch
/// rising nonces); arrival at a node that heard them from several peers
/// may have mixed them up, and a block that ran a later one first would
/// reject what depends on the earlier.
pub fn block_order(mut picked: Vec<&Pending>) -> Vec<&Pending> {
    let mut by_signer: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in picked.iter().enumerate() {
        by_signer
            .entry(p.tx.tx.signer.as_str())
            .or_default()
            .push(i);
    }
    for places in by_signer.into_values().filter(|v| v.len() > 1) {
        let mut txs: Vec<&Pending> = places.iter().map(|i| picked[*i]).collect();
        txs.sort_by_key(|p| p.tx.tx.nonce);
        for (i, p) in places.into_iter().zip(txs) {
            picked[i] = p;
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use utter_ledger::key::Keypair;
    use utter_ledger::tx::{Tx, VERSION};

    fn signed(key: &Keypair, nonce: u64) -> (TxId, String, SignedTx) {
        let tx = Tx {
            v: VERSION,
            chain: "c".into(),
            dapp: "d".into(),
            action: "a".into(),
            args: serde_json::json!({}),
            signer: key.public().to_openssh(),
            nonce,
            time: 1,
        };
        let stx = tx.sign(key).expect("sign");
        let line = stx.to_line();
        (TxId::of_line(&line), line, stx)
    }

    #[test]
    fn admits_in_order_and_refuses_replays_and_taken_nonces() {
        let key = Keypair::generate("test").expect("key");
        let mut committed = Nonces::default();
        committed.insert(&key.public().to_openssh(), 1);
        let mut pool = Pool::new(committed, 3, 0);
        let signer = key.public().to_openssh();
        assert_eq!(pool.next_nonce(&signer), 2);
        let (id1, l1, t1) = signed(&key, 1);
        assert_eq!(pool.admit(id1, l1, t1), Err(Refusal::Replayed));
        let (id2, l2, t2) = signed(&key, 2);
        assert_eq!(
            pool.admit(id2, l2.clone(), t2.clone()),
            Ok(Admitted::New(0))
        );
        assert_eq!(pool.admit(id2, l2, t2), Ok(Admitted::Duplicate));
        let mut other = signed(&key, 2);
        other.2.tx.time = 2;
        other.0 = TxId::of_line("different");
        assert_eq!(
            pool.admit(other.0, other.1, other.2),
            Err(Refusal::NonceTaken)
        );
        assert_eq!(pool.next_nonce(&signer), 3);
        let (id3, l3, t3) = signed(&key, 3);
        assert_eq!(pool.admit(id3, l3, t3), Ok(Admitted::New(1)));
        assert_eq!(pool.ready(), 0, "nothing is durable yet");
        pool.made_durable(&[0]);
        assert_eq!(pool.ready(), 1);
        assert_eq!(pool.take(10).len(), 1, "blocks take only durable ones");
        let (id4, l4, t4) = signed(&key, 4);
        assert_eq!(pool.admit(id4, l4, t4), Ok(Admitted::New(2)));
        let (id5, l5, t5) = signed(&key, 5);
        assert_eq!(pool.admit(id5, l5, t5), Err(Refusal::Full(3)));
        pool.committed(&[0]);
        assert!(pool.get(&id2).is_none());
        let (id2b, l2b, t2b) = signed(&key, 2);
        assert_eq!(pool.admit(id2b, l2b, t2b), Err(Refusal::Replayed));
        pool.forget(&[1, 2]);
        assert_eq!(pool.len(), 0);
        assert_eq!(pool.next_nonce(&signer), 3);
    }

    #[test]
    fn a_block_takes_each_signers_transactions_in_nonce_order() {
        let (a, b) = (
            Keypair::generate("a").expect("key"),
            Keypair::generate("b").expect("key"),
        );
        let mut pool = Pool::new(Nonces::default(), 10, 0);
        // Arrival: a5, b2, a3, b1, a4.
        for (key, nonce) in [(&a, 5), (&b, 2), (&a, 3), (&b, 1), (&a, 4)] {
            let (id, line, tx) = signed(key, nonce);
            pool.admit(id, line, tx).expect("admitted");
        }
        pool.made_durable(&[0, 1, 2, 3, 4]);
        let order: Vec<(bool, u64)> = pool
            .take(10)
            .iter()
            .map(|p| (p.tx.tx.signer == a.public().to_openssh(), p.tx.tx.nonce))
            .collect();
        // Each signer keeps its places; within them, nonces rise.
        assert_eq!(
            order,
            vec![(true, 3), (false, 1), (true, 4), (false, 2), (true, 5)]
        );
    }

    #[test]
    fn a_block_settles_what_it_carries_and_drops_what_its_nonces_took() {
        let key = Keypair::generate("test").expect("key");
        let signer = key.public().to_openssh();
        let mut pool = Pool::new(Nonces::default(), 10, 0);
        let (id1, l1, t1) = signed(&key, 1);
        let (id2, l2, t2) = signed(&key, 2);
        let (id3, l3, t3) = signed(&key, 3);
        for (id, line, tx) in [(id1, l1, t1), (id2, l2, t2), (id3, l3, t3)] {
            pool.admit(id, line, tx).expect("admitted");
        }
        // The block carries 1 as it is here, and another transaction of
        // the same signer with nonce 2 (it reached a proposer elsewhere).
        let other = TxId::of_line("another transaction with nonce 2");
        let (seqs, dropped) = pool.settle(&[(id1, signer.clone(), 1), (other, signer.clone(), 2)]);
        assert_eq!(seqs, vec![0, 1], "1 settled and 2 can never commit");
        assert_eq!(dropped, vec![id2], "only 2 left without being in the block");
        assert!(pool.get(&id1).is_none() && pool.get(&id2).is_none());
        assert!(pool.get(&id3).is_some(), "3 still waits");
        assert_eq!(pool.next_nonce(&signer), 4);
        let (again, l, t) = signed(&key, 2);
        assert_eq!(pool.admit(again, l, t), Err(Refusal::Replayed));
    }
}

//! A device's node (a door controller's, named under `devices` in
//! `chain.toml`): what its API admits goes into blocks it signs itself on
//! its own branch, `refs/heads/<its name>`, which the validators merge
//! into main (DESIGN.md §Proof of merge, 5). Cut off from them it goes on
//! recording: the branch grows, and on reconnection the announcement of
//! its head brings the validators to pull and merge all of it. Main
//! itself moves only by sync passes, to certified blocks.
//!
//! Every [`SIDE_EVERY`] the thread looks at the pool: the durable
//! transactions not yet on the unmerged part of the branch go into one
//! block over the branch's head (or main, once main holds the head), in
//! arrival order with each signer's by nonce (`pool::block_order`). The
//! head is announced to every validator when it is made, when a channel
//! opens, and every [`ANNOUNCE_EVERY`] until main holds it. The pool
//! keeps each transaction (durably) until main holds it: a block on the
//! branch is a record, not a commit.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use utter_executor::Executor;
use utter_ledger::key::Keypair;
use utter_ledger::{BlockId, Ledger, MAIN, TxId};
use utter_net::wire::Message;

use crate::gossip::{Input, Outbound};
use crate::home::{Home, Opened};
use crate::pool::{Pending, block_order};
use crate::run::{NodeError, Shared, lock};

/// How often the pool is cut into a block on the branch.
pub const SIDE_EVERY: Duration = Duration::from_secs(1);

/// How often an unmerged head is announced again.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);

/// The unmerged part of a device's branch.
#[derive(Debug, Default)]
struct Branch {
    /// The head, while main does not hold it.
    head: Option<BlockId>,
    /// The transactions on the unmerged blocks.
    carried: HashSet<TxId>,
}

impl Branch {
    /// The branch `name` as the ledger has it, against main.
    fn load(ledger: &Ledger, name: &str) -> Result<Self, NodeError> {
        let mut branch = Branch::default();
        let Some(head) = ledger.branch(name)? else {
            return Ok(branch);
        };
        let main = ledger.resolve(MAIN)?;
        let mut at = head;
        // Its blocks down to the first main holds (each has one parent).
        while at != main && !ledger.is_ancestor(at, main)? {
            let block = ledger.block(at)?;
            for line in ledger.tx_lines(&block)? {
                branch.carried.insert(TxId::of_line(&line));
            }
            branch.head = Some(head);
            match block.parents.first() {
                Some(p) => at = *p,
                None => break,
            }
        }
        Ok(branch)
    }

    /// Main moved to `main`: a head it holds is merged.
    fn settle(&mut self, ledger: &Ledger, main: BlockId) -> Result<(), NodeError> {
        if let Some(head) = self.head
            && (head == main || ledger.is_ancestor(head, main)?)
        {
            *self = Branch::default();
        }
        Ok(())
    }

    /// What the next block on the branch carries: the waiting (durable)
    /// transactions not on it yet, oldest first, at most `max`.
    fn next<'p>(&self, mut waiting: Vec<&'p Pending>, max: usize) -> Vec<&'p Pending> {
        waiting.retain(|p| p.durable && !self.carried.contains(&p.id));
        waiting.sort_unstable_by_key(|p| p.seq);
        waiting.truncate(max);
        block_order(waiting)
    }
}

/// Runs a device's branch until the node stops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    home: &Home,
    opened: &Opened,
    key: &Keypair,
    name: &str,
    shared: &Shared,
    out: &Outbound,
    inputs: &Receiver<Input>,
    block_txs: usize,
    verbose: bool,
) -> Result<(), NodeError> {
    let ledger = &opened.ledger;
    let mut executor = Executor::new(ledger, &home.checkouts())?;
    // The pool checked every signature at admission.
    executor.set_known(Box::new(|id| {
        lock(&shared.pool)
            .get(id)
            .filter(|p| p.durable)
            .map(|p| p.tx.clone())
    }));
    let mut helper = home.spawn_helper()?;
    let mut images = home.node_images(&opened.store)?;
    let mut branch = Branch::load(ledger, name)?;
    let mut peers: HashMap<String, SocketAddr> = HashMap::new();
    let mut next_cut = Instant::now();
    let mut announced = Instant::now();
    let mut made = 0u64;
    if verbose {
        eprintln!(
            "device {name}: its transactions go on branch {name}{}",
            branch
                .head
                .map(|h| format!(", unmerged head {}", h.short()))
                .unwrap_or_default()
        );
    }
    loop {
        crate::validator::report_follower(shared, out, peers.len());
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        match inputs.recv_timeout(next_cut.saturating_duration_since(Instant::now())) {
            Ok(Input::Connected { key, addr }) => {
                peers.insert(key, addr);
                if let Some(head) = branch.head {
                    out.send(addr, Message::Announce(head));
                }
                continue;
            }
            Ok(Input::Disconnected { key }) => {
                peers.remove(&key);
                continue;
            }
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        next_cut = Instant::now() + SIDE_EVERY;
        let main = ledger.resolve(MAIN)?;
        ledger.refresh(main);
        branch.settle(ledger, main)?;
        let lines: Vec<String> = {
            let pool = lock(&shared.pool);
            let ids = pool.ids();
            let waiting: Vec<&Pending> = ids.iter().filter_map(|id| pool.get(id)).collect();
            branch
                .next(waiting, block_txs)
                .into_iter()
                .map(|p| p.line.clone())
                .collect()
        };
        if lines.is_empty() {
            if let Some(head) = branch.head
                && announced.elapsed() >= ANNOUNCE_EVERY
            {
                out.broadcast(&Message::Announce(head));
                announced = Instant::now();
            }
            continue;
        }
        let parent = branch.head.unwrap_or(main);
        let mut time = i64::try_from(utter_formats::now()).unwrap_or(i64::MAX);
        time = time.max(ledger.block(parent)?.time);
        let (proposed, _refused) = crate::validator::build(
            home,
            shared,
            &mut executor,
            &mut helper,
            &mut images,
            crate::validator::Build {
                parents: &[parent],
                lines: &lines,
                round: None,
                time,
                key,
            },
        )?;
        let id = proposed.block.id;
        match ledger.branch(name)? {
            Some(old) => ledger.advance(name, old, id)?,
            None => ledger.create_branch(name, id)?,
        }
        for r in &proposed.results {
            branch.carried.insert(r.tx);
        }
        branch.head = Some(id);
        made += 1;
        lock(&shared.head).blocks_made = made;
        out.broadcast(&Message::Announce(id));
        announced = Instant::now();
        if verbose {
            eprintln!(
                "device {name}: block {} at height {} on its branch, {} transactions ({} validators connected)",
                id.short(),
                proposed.block.height,
                proposed.results.len(),
                peers.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utter_executor::Nonces;
    use utter_ledger::tx::{Tx, VERSION};

    #[test]
    fn the_next_block_carries_what_is_durable_and_not_on_the_branch() {
        let key = Keypair::generate("d").expect("key");
        let mut pool = crate::pool::Pool::new(Nonces::default(), 10, 0);
        let mut ids = Vec::new();
        for nonce in [3, 1, 2] {
            let tx = Tx {
                v: VERSION,
                chain: "c".into(),
                dapp: "doors".into(),
                action: "log".into(),
                args: serde_json::json!({}),
                signer: key.public().to_openssh(),
                nonce,
                time: 1,
            };
            let stx = tx.sign(&key).expect("sign");
            let line = stx.to_line();
            let id = TxId::of_line(&line);
            pool.admit(id, line, stx).expect("admitted");
            ids.push(id);
        }
        pool.made_durable(&[0, 1]);
        let mut branch = Branch::default();
        let all: Vec<&Pending> = ids.iter().filter_map(|id| pool.get(id)).collect();
        let next: Vec<u64> = branch
            .next(all.clone(), 10)
            .iter()
            .map(|p| p.tx.tx.nonce)
            .collect();
        assert_eq!(next, vec![1, 3], "durable only, in nonce order");
        branch.carried.insert(ids[1]);
        let next: Vec<TxId> = branch.next(all, 10).iter().map(|p| p.id).collect();
        assert_eq!(
            next,
            vec![ids[0]],
            "what the branch carries is not cut again"
        );
    }
}

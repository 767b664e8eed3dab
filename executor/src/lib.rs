//! The block executor: turns a parent block and an ordered batch of
//! transactions into the next block, and re-executes a received block to
//! check it.
//!
//! For a block it verifies every transaction (signature, chain, nonce, a
//! deployed dapp with its image here), applies `chain set` transactions
//! natively, groups the rest by dapp, runs each touched dapp **once**
//! (`apply`, in name order) through a [`Host`] — a helper process that
//! creates the containers — collects results and changed paths, runs the
//! chain's test dapps over the new state, and writes the tree (and, for a
//! proposal, the signed commit).
//!
//! Every dapp runs on a *checkout* of its state (a plain directory,
//! `<checkouts>/<dapp>/`) that the executor keeps in step with the parent
//! block by applying tree diffs, so the cost of a block follows what
//! changed, not the size of the state. The whole checkouts directory is
//! also mounted read-only at `/chain`: a dapp reads other dapps' state as
//! of the parent block.
//!
//! What a transaction's fate can be, as values: included and accepted,
//! included and rejected (with the reason: unknown dapp, missing image,
//! replayed nonce, the dapp said no, the dapp failed, a test dapp failed),
//! or refused (not included at all: it would make the block invalid —
//! a bad signature, another chain, a malformed line).
//!
//! Uses `utter-ledger` (reads and writes blocks) and `utter-runtime` (the
//! dapp protocol's types); never creates a container itself and knows
//! nothing of consensus or the network.

mod checkouts;
mod deploy;
mod host;
mod merge;
mod nonces;
mod run;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use utter_ledger::governance::CHAIN_DAPP;
use utter_ledger::key::Keypair;
use utter_ledger::layout::{ChainConfig, DAPPS, LayoutError, STATE};
use utter_ledger::tx::{SignedTx, TxError, verify_line};
use utter_ledger::{
    Block, BlockId, Changes, Draft, Ledger, LedgerError, ObjectId, Status, TxId, TxResult,
};
use utter_runtime::dapp::{Context, Entry, Invocation};
use utter_runtime::{HelperError, Limits, Ran};

use checkouts::{Checkouts, write_checkout};
pub use host::{Host, ImageError, Images};
use merge::check_parents;
pub use merge::{MergeError, merge_lines};
pub use nonces::{Nonces, next_nonce, signer_nonce};
use run::{read_dapp_config, stderr_tail, take_run};

/// Why the executor could not do its job at all (as opposed to rejecting
/// a transaction or a block, which are values).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Reading or writing the ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The parent's `chain.toml` or a `dapp.toml` is unreadable.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Keeping the state checkouts failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The container helper is gone; the caller starts a new one and
    /// tries again (nothing was written).
    #[error(transparent)]
    Host(HelperError),
    /// Nothing to put in a block: every transaction was refused.
    #[error("no transaction can go into a block: {0}")]
    NothingToDo(String),
    /// A merge cannot be made over these parents.
    #[error("cannot merge: {0}")]
    Merge(#[from] MergeError),
}

/// A transaction left out of a block, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The line as submitted.
    pub line: String,
    /// Why it cannot be in any block.
    pub error: TxError,
}

/// Where the time of one block went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Checking the transactions' signatures and form.
    pub verify: Duration,
    /// Inside the dapp runs (container start to exit, as the helper saw it,
    /// plus the round trip to the helper).
    pub dapps: Duration,
    /// Writing the tree and the signed commit, and syncing them.
    pub write: Duration,
    /// The whole block, those included (the rest: checkouts, grouping,
    /// results).
    pub total: Duration,
}

/// A block the executor made.
#[derive(Debug)]
pub struct Proposed {
    /// The written, signed block (no branch moved).
    pub block: Block,
    /// One result per included transaction, in block order.
    pub results: Vec<TxResult>,
    /// Transactions that could not be included.
    pub refused: Vec<Refused>,
    /// Where the time went.
    pub timings: Timings,
}

/// What re-executing a block found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Re-executing it on its parent gives exactly its tree.
    Valid,
    /// It is not what its transactions make; the reason says where it
    /// differs.
    Invalid(String),
    /// Not re-executed: genesis (its state is given, not made).
    Skipped(&'static str),
}

/// `verify_line` of every line except the nonce check, spread over the
/// machine's cores (a signature check is most of a transaction's cost).
pub fn verify_all(lines: &[String], chain: &str) -> Vec<Result<SignedTx, TxError>> {
    let check = |line: &String| verify_line(line.as_bytes(), chain, |_, _| false);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || lines.len() < 64 {
        return lines.iter().map(check).collect();
    }
    let per = lines.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verifying a transaction does not panic"))
            .collect()
    })
}

/// The block one execution makes or checks: everything about it but its
/// transactions' fates.
struct Batch<'a> {
    /// Its parents (sorted by id); the first one's state is the base.
    parents: &'a [BlockId],
    /// The first parent.
    parent: &'a Block,
    /// One above the highest parent.
    height: u64,
    /// Its transaction lines, in block order.
    lines: &'a [String],
    /// Block time, Unix seconds.
    time: i64,
    /// The signer, `ssh-ed25519 …`.
    proposer: &'a str,
    /// Making a block (refused lines are left out) rather than checking
    /// one (a refused line makes it invalid).
    proposing: bool,
}

impl Batch<'_> {
    /// What `/block/context.json` says to `dapp`.
    fn context(&self, chain: &str, dapp: &str, entry: Entry) -> Context {
        Context {
            chain: chain.to_string(),
            dapp: dapp.to_string(),
            entry,
            height: self.height,
            time: u64::try_from(self.time).unwrap_or(0),
            parent: self.parent.id.to_string(),
            proposer: self.proposer.to_string(),
        }
    }
}

/// What `changes` changes, as a test dapp is told it: `<dapp>/<path>`
/// for a state file, `<dapp>/` for a dapp deployed, upgraded or removed;
/// `None` when the chain's configuration changes (every rule may be new).
fn changed_paths(changes: &Changes) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for (path, _) in changes.iter() {
        let rest = path.strip_prefix(DAPPS).and_then(|p| p.strip_prefix('/'))?;
        let (dapp, within) = rest.split_once('/').unwrap_or((rest, ""));
        match within.strip_prefix(STATE).and_then(|p| p.strip_prefix('/')) {
            Some(state) => out.push(format!("{dapp}/{state}")),
            None => out.push(format!("{dapp}/")),
        }
    }
    Some(out)
}

/// The parent state an execution starts from.
struct Base {
    chain: String,
    config: ChainConfig,
    /// The dapps deployed at the parent, by name.
    dapps: Vec<String>,
}

/// One transaction on its way into a block.
struct Slot {
    line: String,
    id: TxId,
    dapp: String,
    result: Option<TxResult>,
    /// A `chain` transaction (`set`, `deploy`, `upgrade`, `remove`).
    native: Option<deploy::Native>,
}

impl Slot {
    fn reject(&mut self, reason: impl Into<String>) {
        self.result = Some(TxResult::rejected(self.id, reason));
    }
}

/// What executing a batch on a parent produced.
struct Outcome {
    changes: Changes,
    txs: Vec<String>,
    results: Vec<TxResult>,
    refused: Vec<Refused>,
    dapps_time: Duration,
    verify_time: Duration,
}

/// A dapp run that could not happen: the image is missing, or the helper
/// could not start it. Every transaction it was for is rejected with this.
struct NotRun(String);

/// The executor of one ledger.
pub struct Executor<'l> {
    ledger: &'l Ledger,
    checkouts: Checkouts,
    /// Used nonces on the line ending at `nonces_at`.
    nonces: Nonces,
    nonces_at: Option<BlockId>,
    limits: Limits,
    scratch: u64,
    /// Transactions whose signatures this node checked already (its
    /// mempool's), by id: not checked again.
    known: Option<Known<'l>>,
}

/// What [`Executor::set_known`] takes: a transaction already checked, by id.
pub type Known<'l> = Box<dyn Fn(&TxId) -> Option<SignedTx> + 'l>;

impl std::fmt::Debug for Executor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("checkouts", &self.checkouts.root)
            .finish_non_exhaustive()
    }
}

impl<'l> Executor<'l> {
    /// An executor for `ledger` keeping state checkouts in `checkouts`
    /// (emptied first: checkouts are rebuilt from the ledger).
    pub fn new(ledger: &'l Ledger, checkouts: &Path) -> Result<Self, ExecError> {
        Ok(Self {
            ledger,
            checkouts: Checkouts::open(checkouts)?,
            nonces: Nonces::default(),
            nonces_at: None,
            limits: Limits::default(),
            scratch: 64 << 20,
            known: None,
        })
    }

    /// Where to find transactions this node checked already (a running
    /// node's mempool checked each signature at admission): a block's line
    /// found there is not verified again. Everything but the signature
    /// (nonces, the dapp's rules) still is.
    pub fn set_known(&mut self, known: Known<'l>) {
        self.known = Some(known);
    }

    /// The limits every dapp runs under.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The nonce `signer` should use next on the line ending at `tip`.
    pub fn next_nonce(&mut self, tip: BlockId, signer: &str) -> Result<u64, ExecError> {
        self.nonces_for(tip)?;
        Ok(self.nonces.next(signer))
    }

    /// Makes `self.nonces` the used nonces of `tip` and its ancestors.
    fn nonces_for(&mut self, tip: BlockId) -> Result<(), ExecError> {
        if self.nonces_at == Some(tip) {
            return Ok(());
        }
        // One block on from the line we have: add that block only.
        let block = self.ledger.block(tip)?;
        if block.parents.len() == 1 && self.nonces_at == Some(block.parents[0]) {
            self.nonces.add_block(self.ledger, &block)?;
        } else {
            self.nonces = Nonces::of_line(self.ledger, tip)?;
        }
        self.nonces_at = Some(tip);
        Ok(())
    }

    /// Executes `lines` (in this order) on `parent`, signs the block with
    /// `key` at `time` (Unix seconds), writes it, and returns it. Moves no
    /// branch. Lines that would make the block invalid are left out
    /// ([`Proposed::refused`]); with none left, nothing is written.
    pub fn propose(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        parent: BlockId,
        lines: &[String],
        time: i64,
        key: &Keypair,
    ) -> Result<Proposed, ExecError> {
        self.build(
            host,
            images,
            &[parent],
            lines,
            0,
            None,
            None,
            time,
            key,
            false,
        )
    }

    /// [`Executor::propose`] for lines this node already checked with
    /// `verify_line` (on the same chain) when it admitted them: `checked`
    /// holds the parsed transaction of each line, and no signature is
    /// checked again. Nonces still are, in block order.
    #[allow(clippy::too_many_arguments)]
    pub fn propose_verified(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        parent: BlockId,
        lines: &[String],
        checked: Vec<SignedTx>,
        time: i64,
        key: &Keypair,
    ) -> Result<Proposed, ExecError> {
        assert_eq!(lines.len(), checked.len(), "one checked tx per line");
        self.build(
            host,
            images,
            &[parent],
            lines,
            0,
            Some(checked),
            None,
            time,
            key,
            false,
        )
    }

    /// A consensus proposal over `parents` (sorted by id; more than one
    /// makes a merge): re-executes the later branches' transactions on the
    /// first parent's state ([`merge_lines`]), then `lines`. `round` is the
    /// consensus round it is proposed in, written into the signed commit
    /// (`Round:`); `None` for a merge outside consensus. Unlike
    /// [`Executor::propose`] the block may carry no transaction: a merge
    /// heals a split even when both sides carried the same ones, and a
    /// round's leader may extend a voted block to have it committed.
    #[allow(clippy::too_many_arguments)]
    pub fn propose_on(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        parents: &[BlockId],
        lines: &[String],
        round: Option<u64>,
        time: i64,
        key: &Keypair,
    ) -> Result<Proposed, ExecError> {
        check_parents(parents)?;
        for (i, a) in parents.iter().enumerate() {
            for b in &parents[i + 1..] {
                if self.ledger.is_ancestor(*a, *b)? || self.ledger.is_ancestor(*b, *a)? {
                    return Err(MergeError::OneLine(*a, *b).into());
                }
            }
        }
        let mut all = merge_lines(self.ledger, parents)?;
        let merged = all.len();
        all.extend_from_slice(lines);
        self.build(
            host, images, parents, &all, merged, None, round, time, key, true,
        )
    }

    /// One above the highest of `parents`.
    fn height_over(&self, parents: &[BlockId], first: &Block) -> Result<u64, ExecError> {
        let mut height = first.height + 1;
        for p in &parents[1..] {
            height = height.max(self.ledger.height(*p)? + 1);
        }
        Ok(height)
    }

    /// Executes `lines` (the first `merged` of them re-executed from the
    /// merged branches) on `parents[0]`'s state and writes the block.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        parents: &[BlockId],
        lines: &[String],
        merged: usize,
        checked: Option<Vec<SignedTx>>,
        round: Option<u64>,
        time: i64,
        key: &Keypair,
        may_be_empty: bool,
    ) -> Result<Proposed, ExecError> {
        let start = Instant::now();
        let parent = self.ledger.block(parents[0])?;
        let height = self.height_over(parents, &parent)?;
        let proposer = key.public().to_openssh();
        let batch = Batch {
            parents,
            parent: &parent,
            height,
            lines,
            time,
            proposer: &proposer,
            proposing: true,
        };
        let out = self.execute(host, images, &batch, checked)?;
        if let Some(r) = out
            .refused
            .iter()
            .find(|r| lines[..merged].contains(&r.line))
        {
            return Err(MergeError::Refused(r.error.clone()).into());
        }
        if out.txs.is_empty() && !may_be_empty {
            let why = out
                .refused
                .first()
                .map_or_else(|| "none were given".to_string(), |r| r.error.to_string());
            return Err(ExecError::NothingToDo(why));
        }
        let accepted = out
            .results
            .iter()
            .filter(|r| r.status == Status::Accepted)
            .count();
        let total = out.results.len();
        let merge_note = if parents.len() > 1 {
            format!(
                " (merge of {} branches, {merged} re-executed)",
                parents.len()
            )
        } else {
            String::new()
        };
        let draft = Draft {
            parents: parents.to_vec(),
            changes: out.changes,
            txs: out.txs,
            results: out.results,
            text: format!(
                "block {height}: {total} transaction{}, {accepted} accepted{merge_note}",
                if total == 1 { "" } else { "s" }
            ),
            time,
            round,
        };
        let writing = Instant::now();
        let block = self.ledger.write_block(&draft, key)?;
        let write = writing.elapsed();
        self.after_block(&block, &draft)?;
        Ok(Proposed {
            block,
            results: draft.results,
            refused: out.refused,
            timings: Timings {
                verify: out.verify_time,
                dapps: out.dapps_time,
                write,
                total: start.elapsed(),
            },
        })
    }

    /// Re-executes `block`'s transactions on its parent and compares the
    /// tree with the block's own.
    pub fn reexecute(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        block: &Block,
    ) -> Result<Verdict, ExecError> {
        let Some(&first) = block.parents.first() else {
            return Ok(Verdict::Skipped("genesis"));
        };
        let parent = self.ledger.block(first)?;
        let lines = self.ledger.tx_lines(block)?;
        if block.parents.len() > 1 {
            // A merge: it must re-execute exactly the merged branches'
            // transactions first (so nothing recorded on them is dropped).
            if let Err(e) = check_parents(&block.parents) {
                return Ok(Verdict::Invalid(e.to_string()));
            }
            let merged = merge_lines(self.ledger, &block.parents)?;
            if let Some(i) = (0..merged.len()).find(|&i| lines.get(i) != Some(&merged[i])) {
                return Ok(Verdict::Invalid(format!(
                    "a merge must re-execute the {} transactions of the branches it merges first; \
                     transaction {} is not the one expected",
                    merged.len(),
                    i + 1
                )));
            }
        }
        let height = self.height_over(&block.parents, &parent)?;
        if block.height != height {
            return Ok(Verdict::Invalid(format!(
                "its height is {} but its parents make it {height}",
                block.height
            )));
        }
        let Some(proposer) = block.signer.as_ref().map(|s| s.to_openssh()) else {
            return Ok(Verdict::Invalid("it is not signed".into()));
        };
        let batch = Batch {
            parents: &block.parents,
            parent: &parent,
            height,
            lines: &lines,
            time: block.time,
            proposer: &proposer,
            proposing: false,
        };
        let out = self.execute(host, images, &batch, None)?;
        if let Some(r) = out.refused.first() {
            return Ok(Verdict::Invalid(format!(
                "it carries a transaction no block may carry: {}",
                r.error
            )));
        }
        let draft = Draft {
            parents: block.parents.clone(),
            changes: out.changes,
            txs: out.txs,
            results: out.results,
            text: block.summary.clone(),
            time: block.time,
            round: block.round,
        };
        let (tree, _, _) = self.ledger.write_tree(&draft)?;
        if tree == block.tree {
            self.after_block(block, &draft)?;
            return Ok(Verdict::Valid);
        }
        // The checkouts ran ahead of the parent; they are rebuilt on the
        // next sync.
        self.checkouts.pending.clear();
        self.first_difference(block, tree, &draft.results)
            .map(Verdict::Invalid)
    }

    /// Where a re-executed block differs from the recorded one, named so a
    /// person can act on it: the first result line, else the first paths.
    fn first_difference(
        &self,
        block: &Block,
        tree: ObjectId,
        results: &[TxResult],
    ) -> Result<String, ExecError> {
        let recorded = self.ledger.result_lines(block)?;
        for (i, (want, got)) in recorded.iter().zip(results).enumerate() {
            let got = got.to_line();
            if *want != got {
                return Ok(format!(
                    "transaction {} has result {want} in the block but {got} when re-executed",
                    i + 1
                ));
            }
        }
        let diff = self.ledger.diff_trees(Some(tree), block.tree)?;
        let paths: Vec<String> = diff.iter().take(5).map(|(p, _)| p.clone()).collect();
        Ok(format!(
            "its state differs from what its transactions make, at {}",
            paths.join(", ")
        ))
    }

    /// After a block is written (or found valid): its nonces are used and
    /// the checkouts hold its state.
    fn after_block(&mut self, block: &Block, draft: &Draft) -> Result<(), ExecError> {
        if self.nonces_at == block.parents.first().copied() && block.parents.len() == 1 {
            for line in &draft.txs {
                if let Some((signer, nonce)) = signer_nonce(line) {
                    self.nonces.insert(&signer, nonce);
                }
            }
            self.nonces_at = Some(block.id);
        }
        // The checkouts of the dapps that ran already hold the new state;
        // record which trees those are.
        for dapp in std::mem::take(&mut self.checkouts.pending) {
            let id = self
                .ledger
                .subtree(block.tree, &format!("{DAPPS}/{dapp}/{STATE}"))?;
            self.checkouts.at.insert(dapp, id);
        }
        Ok(())
    }

    fn dapp_names(&self, tree: ObjectId) -> Result<Vec<String>, ExecError> {
        let Some(dapps) = self.ledger.subtree(tree, DAPPS)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for entry in self.ledger.list_tree(dapps)? {
            if entry.is_dir {
                names.push(entry.name);
            }
        }
        Ok(names)
    }

    /// Runs `batch`: admits each line, applies `chain set`, runs each
    /// touched dapp once, then the test dapps over the new state.
    fn execute(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        batch: &Batch<'_>,
        checked: Option<Vec<SignedTx>>,
    ) -> Result<Outcome, ExecError> {
        let base = self.prepare(batch.parent)?;
        let verifying = Instant::now();
        let checked = match (checked, &self.known) {
            (Some(txs), _) => txs.into_iter().map(Ok).collect(),
            (None, None) => verify_all(batch.lines, &base.chain),
            (None, Some(known)) => {
                let found: Vec<Option<SignedTx>> = batch
                    .lines
                    .iter()
                    .map(|l| known(&TxId::of_line(l)))
                    .collect();
                let rest: Vec<String> = batch
                    .lines
                    .iter()
                    .zip(&found)
                    .filter(|(_, f)| f.is_none())
                    .map(|(l, _)| l.clone())
                    .collect();
                let mut rest = verify_all(&rest, &base.chain).into_iter();
                found
                    .into_iter()
                    .map(|f| match f {
                        Some(stx) => Ok(stx),
                        None => rest.next().expect("one verdict per line not found"),
                    })
                    .collect()
            }
        };
        let verify_time = verifying.elapsed();
        let (mut slots, mut refused) = self.admit(batch.lines, checked, &base);
        let refuse_all = |refused| Outcome {
            changes: Changes::new(),
            txs: Vec::new(),
            results: Vec::new(),
            refused,
            dapps_time: Duration::ZERO,
            verify_time,
        };
        if !batch.proposing && !refused.is_empty() {
            return Ok(refuse_all(refused));
        }
        let mut changes = Changes::new();
        let applied = self.apply_native(host, images, batch, &base, &mut slots, &mut changes)?;
        if !applied.unavailable.is_empty() {
            // Not judged here: left out of a proposal, fatal to a check.
            for (i, error) in applied.unavailable.into_iter().rev() {
                let slot = slots.remove(i);
                refused.push(Refused {
                    line: slot.line,
                    error,
                });
            }
            if !batch.proposing {
                return Ok(refuse_all(refused));
            }
        }
        for slot in &mut slots {
            if slot.result.is_none() && applied.removed.contains(&slot.dapp) {
                let why = format!("dapp {:?} is removed by this block", slot.dapp);
                slot.reject(why);
            }
        }
        let (mut dapps_time, ran_any) =
            self.run_dapps(host, images, batch, &base, &mut slots, &mut changes)?;
        if ran_any
            && let Some(reason) =
                self.run_tests(host, images, batch, &base, &changes, &mut dapps_time)?
        {
            // The whole batch is rejected and the state stays the parent's.
            changes = Changes::new();
            for slot in &mut slots {
                if slot
                    .result
                    .as_ref()
                    .is_none_or(|r| r.status == Status::Accepted)
                {
                    slot.reject(reason.clone());
                }
            }
            self.checkouts.pending.clear();
        }
        let mut txs = Vec::with_capacity(slots.len());
        let mut results = Vec::with_capacity(slots.len());
        for slot in slots {
            txs.push(slot.line);
            results.push(
                slot.result
                    .expect("every included transaction has a result"),
            );
        }
        Ok(Outcome {
            changes,
            txs,
            results,
            refused,
            dapps_time,
            verify_time,
        })
    }

    /// Brings the nonces and checkouts to `parent` and reads what it has.
    fn prepare(&mut self, parent: &Block) -> Result<Base, ExecError> {
        let chain = self.ledger.chain().to_string();
        let config = self.ledger.chain_config(parent)?;
        self.nonces_for(parent.id)?;
        let dapps = self.dapp_names(parent.tree)?;
        // Checkouts a failed block left ahead of its parent were forgotten.
        self.checkouts.pending.clear();
        self.checkouts.sync(self.ledger, parent.tree, &dapps)?;
        Ok(Base {
            chain,
            config,
            dapps,
        })
    }

    /// Each checked line becomes a slot, or is refused (it may not be in
    /// any block). A replayed nonce or an unknown dapp is decided here as a
    /// rejection; the rest wait for their dapp. Nonces are checked in block
    /// order.
    fn admit(
        &self,
        lines: &[String],
        checked: Vec<Result<SignedTx, TxError>>,
        base: &Base,
    ) -> (Vec<Slot>, Vec<Refused>) {
        let mut slots: Vec<Slot> = Vec::with_capacity(lines.len());
        let mut refused = Vec::new();
        // Nonces used by earlier lines of this block (the line's own index
        // is `self.nonces`, not copied per block).
        let mut in_block: HashSet<(String, u64)> = HashSet::new();
        for (line, checked) in lines.iter().zip(checked) {
            let stx = match checked {
                Ok(stx) => stx,
                Err(error) => {
                    refused.push(Refused {
                        line: line.clone(),
                        error,
                    });
                    continue;
                }
            };
            let tx = stx.tx;
            // A replay is included as rejected: the block records the attempt.
            let replayed = self.nonces.contains(&tx.signer, tx.nonce)
                || !in_block.insert((tx.signer.clone(), tx.nonce));
            let reason = if replayed {
                Some(
                    TxError::Replayed {
                        signer: tx.signer.clone(),
                        nonce: tx.nonce,
                    }
                    .to_string(),
                )
            } else if tx.dapp != CHAIN_DAPP && !base.dapps.contains(&tx.dapp) {
                Some(format!(
                    "there is no dapp {:?} on this chain (deployed: {})",
                    tx.dapp,
                    if base.dapps.is_empty() {
                        "none".to_string()
                    } else {
                        base.dapps.join(", ")
                    }
                ))
            } else {
                None
            };
            let id = TxId::of_line(line);
            let native = (tx.dapp == CHAIN_DAPP).then_some(deploy::Native {
                action: tx.action,
                args: tx.args,
                signer: tx.signer,
            });
            slots.push(Slot {
                result: reason.map(|r| TxResult::rejected(id, r)),
                line: line.clone(),
                id,
                dapp: tx.dapp,
                native,
            });
        }
        (slots, refused)
    }

    /// Runs each dapp with waiting transactions once, in name order, and
    /// keeps its checkout in step with what it changed. Returns the time
    /// spent in dapps and whether any dapp changed state.
    fn run_dapps(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        batch: &Batch<'_>,
        base: &Base,
        slots: &mut [Slot],
        changes: &mut Changes,
    ) -> Result<(Duration, bool), ExecError> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, slot) in slots.iter().enumerate() {
            if slot.result.is_none() {
                groups.entry(slot.dapp.clone()).or_default().push(i);
            }
        }
        let mut dapps_time = Duration::ZERO;
        let mut ran_any = false;
        for (dapp, members) in &groups {
            let fail_all = |slots: &mut [Slot], reason: String| {
                for &i in members {
                    slots[i].reject(reason.clone());
                }
            };
            let mut txs =
                Vec::with_capacity(members.iter().map(|&i| slots[i].line.len() + 1).sum());
            for &i in members {
                txs.extend_from_slice(slots[i].line.as_bytes());
                txs.push(b'\n');
            }
            let context = batch.context(&base.chain, dapp, Entry::Apply);
            let image = read_dapp_config(self.ledger, batch.parent, dapp)?.image;
            let ran = match self.run(
                host,
                images,
                &image,
                "dapp",
                dapp,
                context,
                txs,
                &mut dapps_time,
                None,
            )? {
                Ok(ran) => ran,
                Err(NotRun(reason)) => {
                    fail_all(slots, reason);
                    continue;
                }
            };
            let taken = take_run(&ran, dapp, members.len());
            let verdict = match taken {
                Ok((results, dapp_changes)) => {
                    for (&i, r) in members.iter().zip(results) {
                        slots[i].result = Some(r.into_result(slots[i].id));
                    }
                    // Keep the checkout in step: it now holds the new state.
                    // Files are rewritten in place (no new inodes).
                    self.checkouts.forget(dapp);
                    let dir = self.checkouts.dir(dapp);
                    for (path, change) in &dapp_changes {
                        write_checkout(&dir, path.as_str(), change)?;
                    }
                    for (path, change) in dapp_changes {
                        changes.state(dapp, &path, change)?;
                    }
                    ran_any = true;
                    self.checkouts.pending.push(dapp.clone());
                    None
                }
                Err(reason) => Some(reason),
            };
            host.release(ran);
            if let Some(reason) = verdict {
                fail_all(slots, reason);
            }
        }
        Ok((dapps_time, ran_any))
    }

    /// Runs the chain's test dapps over the new state (read-only: what
    /// they write is thrown away); the first failure's reason, if any.
    fn run_tests(
        &self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        batch: &Batch<'_>,
        base: &Base,
        changes: &Changes,
        dapps_time: &mut Duration,
    ) -> Result<Option<String>, ExecError> {
        let changed = changed_paths(changes);
        for test in &base.config.test_dapps {
            if !base.dapps.contains(test) {
                continue;
            }
            let context = batch.context(&base.chain, test, Entry::Test);
            let image = read_dapp_config(self.ledger, batch.parent, test)?.image;
            let ran = match self.run(
                host,
                images,
                &image,
                "test dapp",
                test,
                context,
                Vec::new(),
                dapps_time,
                changed.clone(),
            )? {
                Ok(ran) => ran,
                Err(NotRun(reason)) => return Ok(Some(reason)),
            };
            let failed = (!ran.finished.outcome.success()).then(|| {
                format!(
                    "the block would break test dapp {test}, which {}{}",
                    ran.finished.outcome,
                    stderr_tail(&ran.finished.stderr)
                )
            });
            host.release(ran);
            if failed.is_some() {
                return Ok(failed);
            }
        }
        Ok(None)
    }

    /// Runs `image` on `dapp`'s checkout, with every dapp's state at
    /// `/chain`; `role` names it in reasons ("dapp", "test dapp"). The
    /// time in the helper is added to `spent`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        image: &str,
        role: &str,
        dapp: &str,
        context: Context,
        txs: Vec<u8>,
        spent: &mut Duration,
        changed: Option<Vec<String>>,
    ) -> Result<Result<Ran, NotRun>, ExecError> {
        let (rootfs, process) = match images.rootfs(image) {
            Ok(found) => found,
            Err(why) => {
                return Ok(Err(NotRun(format!(
                    "{role} {dapp}'s image {image} is not available on this node: {why}"
                ))));
            }
        };
        let invocation = Invocation {
            rootfs,
            command: process.command,
            env: process.env,
            cwd: process.cwd,
            state: self.checkouts.dir(dapp),
            chain: Some(self.checkouts.root.clone()),
            context,
            txs,
            limits: self.limits.clone(),
            scratch: self.scratch,
            changed,
        };
        let started = Instant::now();
        let ran = host.invoke(&invocation);
        *spent += started.elapsed();
        match ran {
            Ok(ran) => Ok(Ok(ran)),
            Err(HelperError::Invoke(why)) => {
                Ok(Err(NotRun(format!("{role} {dapp} could not run: {why}"))))
            }
            Err(e) => Err(ExecError::Host(e)),
        }
    }
}

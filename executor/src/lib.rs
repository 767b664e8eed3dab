//! The block executor: turns a parent block and an ordered batch of
//! transactions into the next block, and re-executes a received block to
//! check it.
//!
//! For a block it verifies every transaction (signature, chain, nonce, a
//! deployed dapp with its image here), groups them by dapp, runs each
//! touched dapp **once** (`apply`, in name order) through a [`Host`] — a
//! helper process that creates the containers — collects results and
//! changed paths, runs the chain's test dapps over the new state, and
//! writes the tree (and, for a proposal, the signed commit).
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

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use utter_ledger::governance::{CHAIN_DAPP, SET_ACTION};
use utter_ledger::key::Keypair;
use utter_ledger::layout::{DAPP_TOML, DAPPS, DappConfig, LayoutError, STATE, StatePath};
use utter_ledger::tx::{SignedTx, TxError, verify_line};
use utter_ledger::{
    Block, BlockId, Change, Changes, Draft, FileChange, Ledger, LedgerError, ObjectId, Status,
    TxResult,
};
use utter_runtime::dapp::{ChangeKind, Context, Entry, Invocation};
use utter_runtime::{Helper, HelperError, ImageProcess, Limits, Ran};

/// Runs dapp invocations: the seam between the executor and containers.
/// The real one is [`Helper`], a process that never opened RocksDB.
pub trait Host {
    /// Runs one invocation to its end.
    fn invoke(&mut self, invocation: &Invocation) -> Result<Ran, HelperError>;
    /// Frees a finished run's scratch once its files are read.
    fn release(&mut self, ran: Ran);
}

impl Host for Helper {
    fn invoke(&mut self, invocation: &Invocation) -> Result<Ran, HelperError> {
        Helper::invoke(self, invocation)
    }

    fn release(&mut self, ran: Ran) {
        // A helper that is gone has dropped its runs already.
        let _ = Helper::release(self, ran);
    }
}

/// Where dapp images come from: the node's image store.
pub trait Images {
    /// The unpacked rootfs and process of image `digest`
    /// (`sha256:…`), or why it cannot be had (not imported, damaged).
    fn rootfs(&mut self, digest: &str) -> Result<(PathBuf, ImageProcess), String>;
}

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
    Merge(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
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
fn signer_nonce(line: &str) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let tx = v.get("tx")?;
    Some((
        tx.get("signer")?.as_str()?.to_string(),
        tx.get("nonce")?.as_u64()?,
    ))
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
    let id = |line: &str| *blake3::hash(line.as_bytes()).as_bytes();
    let mut applied: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
    let mut out = Vec::new();
    for i in 1..parents.len() {
        let (merged, next) = (&parents[..i], parents[i]);
        // What the merged side applied since it diverged from `next`
        // (earlier branches' lines are in `applied` already).
        for b in ledger.only_in(merged, &[next])? {
            for line in ledger.tx_lines(&ledger.block(b)?)? {
                applied.insert(id(&line));
            }
        }
        for b in ledger.only_in(&[next], merged)? {
            for line in ledger.tx_lines(&ledger.block(b)?)? {
                if applied.insert(id(&line)) {
                    out.push(line);
                }
            }
        }
    }
    Ok(out)
}

/// A merge's parents: two or more, sorted by id, none an ancestor of
/// another (that would merge nothing in).
fn check_parents(parents: &[BlockId]) -> Result<(), ExecError> {
    if parents.is_empty() {
        return Err(ExecError::Merge("a block needs a parent".into()));
    }
    if parents.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ExecError::Merge(
            "a merge's parents must be sorted by id, each named once".into(),
        ));
    }
    Ok(())
}

/// The per-dapp state checkouts.
#[derive(Debug)]
struct Checkouts {
    root: PathBuf,
    /// Which state tree each dapp's directory holds (`None`: empty).
    at: BTreeMap<String, Option<ObjectId>>,
    /// Dapps whose directory holds the state of the block being made
    /// (recorded in `at` once that block is written).
    pending: Vec<String>,
}

impl Checkouts {
    fn open(root: &Path) -> Result<Self, ExecError> {
        // What a previous process left is not trusted: start empty.
        match fs::remove_dir_all(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("clear", root)(e)),
        }
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        let root = root.canonicalize().map_err(io_err("resolve", root))?;
        Ok(Self {
            root,
            at: BTreeMap::new(),
            pending: Vec::new(),
        })
    }

    fn dir(&self, dapp: &str) -> PathBuf {
        self.root.join(dapp)
    }

    /// Brings every dapp's checkout to its state in `tree`.
    fn sync(&mut self, ledger: &Ledger, tree: ObjectId, dapps: &[String]) -> Result<(), ExecError> {
        let gone: Vec<String> = self
            .at
            .keys()
            .filter(|d| !dapps.contains(d))
            .cloned()
            .collect();
        for dapp in gone {
            let dir = self.dir(&dapp);
            remove_any(&dir)?;
            self.at.remove(&dapp);
        }
        for dapp in dapps {
            let want = ledger.subtree(tree, &format!("{DAPPS}/{dapp}/{STATE}"))?;
            let have = self.at.get(dapp).copied();
            if have == Some(want) {
                continue;
            }
            let dir = self.dir(dapp);
            let from = match have {
                Some(from) => from,
                None => {
                    remove_any(&dir)?;
                    None
                }
            };
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            // Mark unknown while changing, so a failure half-way makes the
            // next sync start over.
            self.at.remove(dapp);
            if let Some(want) = want {
                for (path, change) in ledger.diff_trees(from, want)? {
                    let target = dir.join(&path);
                    match change {
                        FileChange::Removed => {
                            remove_any(&target)?;
                            prune_empty(&dir, &target)?;
                        }
                        FileChange::Added | FileChange::Modified => {
                            let bytes = ledger.read_value_in(want, &path)?.unwrap_or_default();
                            if let Some(parent) = target.parent() {
                                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                            }
                            overwrite(&target, &bytes)?;
                        }
                    }
                }
            } else {
                remove_any(&dir)?;
                fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            }
            self.at.insert(dapp.clone(), want);
        }
        Ok(())
    }

    fn forget(&mut self, dapp: &str) {
        self.at.remove(dapp);
    }
}

fn remove_any(path: &Path) -> Result<(), ExecError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Removes empty directories from `path`'s parent up to (not including)
/// `root`: git keeps no empty trees, so neither may a checkout.
fn prune_empty(root: &Path, path: &Path) -> Result<(), ExecError> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        match fs::remove_dir(d) {
            Ok(()) => dir = d.parent(),
            Err(e)
                if e.kind() == io::ErrorKind::DirectoryNotEmpty
                    || e.kind() == io::ErrorKind::NotFound =>
            {
                break;
            }
            Err(e) => return Err(io_err("remove", d)(e)),
        }
    }
    Ok(())
}

/// Writes `bytes` as the whole of file `path`, reusing the file when it
/// exists. Not `O_TRUNC`: ext4 forces out the data of a file truncated to
/// zero and rewritten (`auto_da_alloc`): rewriting a hundred small state
/// files that way took 24–30 ms per block here, and overwriting them cut
/// the executor's own work per block (`utter-bench executor`, "the rest")
/// from ~31 ms to ~13 ms. Checkouts are rebuilt from the ledger after a
/// crash, so they need no such care.
fn overwrite(path: &Path, bytes: &[u8]) -> Result<(), ExecError> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open", path))?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.set_len(bytes.len() as u64)
        .map_err(io_err("write", path))
}

/// Applies one state change to a checkout directory.
fn write_checkout(dir: &Path, path: &str, change: &Change) -> Result<(), ExecError> {
    let target = dir.join(path);
    match change {
        Change::Put(bytes) => {
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                remove_any(&target)?;
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            overwrite(&target, bytes)
        }
        Change::Remove => {
            remove_any(&target)?;
            prune_empty(dir, &target)
        }
        Change::Pointer(_) => Err(io_err("write", &target)(io::Error::other(
            "a dapp's change is never a pointer",
        ))),
    }
}

/// One transaction on its way into a block.
struct Slot {
    line: String,
    id: String,
    dapp: String,
    result: Option<TxResult>,
    /// A `chain set` transaction's action and arguments.
    governance: Option<(String, serde_json::Value)>,
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

/// The executor of one ledger.
pub struct Executor<'l> {
    ledger: &'l Ledger,
    checkouts: Checkouts,
    /// Used nonces on the line ending at `nonces_at`.
    nonces: Nonces,
    nonces_at: Option<BlockId>,
    limits: Limits,
    scratch: u64,
}

impl std::fmt::Debug for Executor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("checkouts", &self.checkouts.root)
            .finish_non_exhaustive()
    }
}

/// The longest a dapp's stderr is quoted in a rejection reason.
const REASON_STDERR: usize = 400;

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
        })
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
        self.propose_lines(host, images, parent, lines, None, time, key)
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
        self.propose_lines(host, images, parent, lines, Some(checked), time, key)
    }

    /// A consensus proposal over `parents` (sorted by id; more than one
    /// makes a merge): re-executes the later branches' transactions on the
    /// first parent's state ([`merge_lines`]), then `lines`. Unlike
    /// [`Executor::propose`] the block may carry no transaction: a merge
    /// heals a split even when both sides carried the same ones, and a
    /// round's leader may extend a voted block to have it committed.
    pub fn propose_on(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        parents: &[BlockId],
        lines: &[String],
        time: i64,
        key: &Keypair,
    ) -> Result<Proposed, ExecError> {
        check_parents(parents)?;
        for (i, a) in parents.iter().enumerate() {
            for b in &parents[i + 1..] {
                if self.ledger.is_ancestor(*a, *b)? || self.ledger.is_ancestor(*b, *a)? {
                    return Err(ExecError::Merge(format!(
                        "{} and {} are on one line; merge only their tips",
                        a.short(),
                        b.short()
                    )));
                }
            }
        }
        let mut all = merge_lines(self.ledger, parents)?;
        let merged = all.len();
        all.extend_from_slice(lines);
        self.build(host, images, parents, &all, merged, None, time, key, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn propose_lines(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        parent: BlockId,
        lines: &[String],
        checked: Option<Vec<SignedTx>>,
        time: i64,
        key: &Keypair,
    ) -> Result<Proposed, ExecError> {
        self.build(host, images, &[parent], lines, 0, checked, time, key, false)
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
        time: i64,
        key: &Keypair,
        may_be_empty: bool,
    ) -> Result<Proposed, ExecError> {
        let start = Instant::now();
        let parent_block = self.ledger.block(parents[0])?;
        let mut height = parent_block.height + 1;
        for p in &parents[1..] {
            height = height.max(self.ledger.height(*p)? + 1);
        }
        let proposer = key.public().to_openssh();
        let out = self.execute(
            host,
            images,
            parents,
            &parent_block,
            height,
            lines,
            checked,
            time,
            &proposer,
            true,
        )?;
        if let Some(r) = out
            .refused
            .iter()
            .find(|r| lines[..merged].contains(&r.line))
        {
            // A line from a valid block no longer verifies: the ledger is
            // damaged, and no validator could agree with this merge.
            return Err(ExecError::Merge(format!(
                "a merged transaction does not verify: {}",
                r.error
            )));
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
        let Some(&parent) = block.parents.first() else {
            return Ok(Verdict::Skipped("genesis"));
        };
        let parent_block = self.ledger.block(parent)?;
        let lines = self.ledger.tx_lines(block)?;
        let mut height = parent_block.height + 1;
        if block.parents.len() > 1 {
            // A merge: it must re-execute exactly the merged branches'
            // transactions first (so nothing recorded on them is dropped).
            if let Err(ExecError::Merge(why)) = check_parents(&block.parents) {
                return Ok(Verdict::Invalid(why));
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
            for p in &block.parents[1..] {
                height = height.max(self.ledger.height(*p)? + 1);
            }
        }
        if block.height != height {
            return Ok(Verdict::Invalid(format!(
                "its height is {} but its parents make it {height}",
                block.height
            )));
        }
        let proposer = match &block.signer {
            Some(s) => s.to_openssh(),
            None => return Ok(Verdict::Invalid("it is not signed".into())),
        };
        let out = self.execute(
            host,
            images,
            &block.parents,
            &parent_block,
            height,
            &lines,
            None,
            block.time,
            &proposer,
            false,
        )?;
        if let Some(r) = out.refused.first() {
            return Ok(Verdict::Invalid(format!(
                "it carries a transaction no block may carry: {}",
                r.error
            )));
        }
        let recorded = self.ledger.result_lines(block)?;
        let draft = Draft {
            parents: block.parents.clone(),
            changes: out.changes,
            txs: out.txs,
            results: out.results,
            text: block.summary.clone(),
            time: block.time,
        };
        let (tree, _, _) = self.ledger.write_tree(&draft)?;
        if tree == block.tree {
            self.after_block(block, &draft)?;
            return Ok(Verdict::Valid);
        }
        // Name the first difference a person can act on.
        for (i, (want, got)) in recorded.iter().zip(&draft.results).enumerate() {
            let got = got.to_line();
            if *want != got {
                return Ok(Verdict::Invalid(format!(
                    "transaction {} has result {want} in the block but {got} when re-executed",
                    i + 1
                )));
            }
        }
        let diff = self.ledger.diff_trees(Some(tree), block.tree)?;
        let paths: Vec<String> = diff.iter().take(5).map(|(p, _)| p.clone()).collect();
        // The checkouts ran ahead of the parent; they are rebuilt on the
        // next sync.
        self.checkouts.pending.clear();
        Ok(Verdict::Invalid(format!(
            "its state differs from what its transactions make, at {}",
            paths.join(", ")
        )))
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

    /// A run of `dapp` on its checkout, with every dapp's state at `/chain`.
    fn invocation(
        &self,
        dapp: &str,
        rootfs: PathBuf,
        process: ImageProcess,
        context: Context,
        txs: Vec<u8>,
    ) -> Invocation {
        Invocation {
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
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn execute(
        &mut self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        parents: &[BlockId],
        parent: &Block,
        height: u64,
        lines: &[String],
        checked: Option<Vec<SignedTx>>,
        time: i64,
        proposer: &str,
        proposing: bool,
    ) -> Result<Outcome, ExecError> {
        let ledger = self.ledger;
        let chain = ledger.chain().to_string();
        let config = ledger.chain_config(parent)?;
        self.nonces_for(parent.id)?;
        let dapps = self.dapp_names(parent.tree)?;
        // Checkouts a failed block left ahead of its parent were forgotten.
        self.checkouts.pending.clear();
        self.checkouts.sync(ledger, parent.tree, &dapps)?;

        // Verify each line (signatures on every core); keep the ones a
        // block may carry. Nonces are checked after, in block order.
        let verifying = Instant::now();
        let checked = match checked {
            Some(txs) => txs.into_iter().map(Ok).collect(),
            None => verify_all(lines, &chain),
        };
        let verify_time = verifying.elapsed();
        let mut slots: Vec<Slot> = Vec::with_capacity(lines.len());
        let mut refused = Vec::new();
        // Nonces used by earlier lines of this block (the line's own index
        // is `self.nonces`, not copied per block).
        let mut in_block: std::collections::HashSet<(String, u64)> =
            std::collections::HashSet::new();
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
            // A replay is included as rejected: the block records the attempt.
            let replayed = self.nonces.contains(&stx.tx.signer, stx.tx.nonce)
                || !in_block.insert((stx.tx.signer.clone(), stx.tx.nonce));
            let result = replayed.then(|| {
                TxError::Replayed {
                    signer: stx.tx.signer.clone(),
                    nonce: stx.tx.nonce,
                }
                .to_string()
            });
            let id = blake3::hash(line.as_bytes()).to_hex().to_string();
            let result = result.or_else(|| {
                (stx.tx.dapp != CHAIN_DAPP && !dapps.contains(&stx.tx.dapp)).then(|| {
                    format!(
                        "there is no dapp {:?} on this chain (deployed: {})",
                        stx.tx.dapp,
                        if dapps.is_empty() {
                            "none".to_string()
                        } else {
                            dapps.join(", ")
                        }
                    )
                })
            });
            let governance =
                (stx.tx.dapp == CHAIN_DAPP).then(|| (stx.tx.action.clone(), stx.tx.args.clone()));
            slots.push(Slot {
                result: result.map(|r| TxResult::rejected(id.clone(), r)),
                line: line.clone(),
                id,
                dapp: stx.tx.dapp,
                governance,
            });
        }
        if !proposing && !refused.is_empty() {
            return Ok(Outcome {
                changes: Changes::new(),
                txs: Vec::new(),
                results: Vec::new(),
                refused,
                dapps_time: Duration::ZERO,
                verify_time,
            });
        }

        let mut changes = Changes::new();
        // `chain set` transactions, in block order, before any dapp runs:
        // each is checked against chain.toml as the ones before left it.
        let mut chain_config = config.clone();
        for slot in &mut slots {
            let Some((action, args)) = slot.governance.take() else {
                continue;
            };
            if slot.result.is_some() {
                continue;
            }
            let verdict = if action == SET_ACTION {
                self.ledger
                    .check_chain_set(parents, &chain_config, &args)?
                    .map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "the {CHAIN_DAPP} dapp has one action, {SET_ACTION:?}, not {action:?}"
                ))
            };
            slot.result = Some(match verdict {
                Ok((next, _)) => {
                    changes.set_chain(&next)?;
                    chain_config = next;
                    TxResult::accepted(slot.id.clone())
                }
                Err(reason) => TxResult::rejected(slot.id.clone(), reason),
            });
        }

        // Group by dapp, in name order; run each touched dapp once.
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, slot) in slots.iter().enumerate() {
            if slot.result.is_none() {
                groups.entry(slot.dapp.clone()).or_default().push(i);
            }
        }
        let context = |dapp: &str, entry| Context {
            chain: chain.clone(),
            dapp: dapp.to_string(),
            entry,
            height,
            time: u64::try_from(time).unwrap_or(0),
            parent: parent.id.to_string(),
            proposer: proposer.to_string(),
        };
        let mut dapps_time = Duration::ZERO;
        let mut ran_dapps = Vec::new();
        for (dapp, members) in &groups {
            let dapp_config = read_dapp_config(ledger, parent, dapp)?;
            let fail_all = |slots: &mut Vec<Slot>, reason: String| {
                for &i in members {
                    slots[i].result = Some(TxResult::rejected(slots[i].id.clone(), reason.clone()));
                }
            };
            let (rootfs, process) = match images.rootfs(&dapp_config.image) {
                Ok(found) => found,
                Err(why) => {
                    fail_all(
                        &mut slots,
                        format!(
                            "dapp {dapp}'s image {} is not available on this node: {why}",
                            dapp_config.image
                        ),
                    );
                    continue;
                }
            };
            let mut txs =
                Vec::with_capacity(members.iter().map(|&i| slots[i].line.len() + 1).sum());
            for &i in members {
                txs.extend_from_slice(slots[i].line.as_bytes());
                txs.push(b'\n');
            }
            let invocation =
                self.invocation(dapp, rootfs, process, context(dapp, Entry::Apply), txs);
            let started = Instant::now();
            let ran = match host.invoke(&invocation) {
                Ok(ran) => ran,
                Err(HelperError::Invoke(why)) => {
                    dapps_time += started.elapsed();
                    fail_all(&mut slots, format!("dapp {dapp} could not run: {why}"));
                    continue;
                }
                Err(e) => return Err(ExecError::Host(e)),
            };
            dapps_time += started.elapsed();
            let taken = take_run(&ran, dapp, members.len());
            let verdict = match taken {
                Ok((results, dapp_changes)) => {
                    for (&i, r) in members.iter().zip(results) {
                        slots[i].result = Some(r.into_result(slots[i].id.clone()));
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
                    ran_dapps.push(dapp.clone());
                    self.checkouts.pending.push(dapp.clone());
                    None
                }
                Err(reason) => Some(reason),
            };
            host.release(ran);
            if let Some(reason) = verdict {
                fail_all(&mut slots, reason);
            }
        }

        // Test dapps over the new state (read-only: what they write is
        // thrown away).
        let mut broken = None;
        if !ran_dapps.is_empty() {
            for test in &config.test_dapps {
                if !dapps.contains(test) {
                    continue;
                }
                let dapp_config = read_dapp_config(ledger, parent, test)?;
                let (rootfs, process) = match images.rootfs(&dapp_config.image) {
                    Ok(found) => found,
                    Err(why) => {
                        broken = Some(format!(
                            "test dapp {test}'s image {} is not available on this node: {why}",
                            dapp_config.image
                        ));
                        break;
                    }
                };
                let invocation = self.invocation(
                    test,
                    rootfs,
                    process,
                    context(test, Entry::Test),
                    Vec::new(),
                );
                let started = Instant::now();
                let ran = match host.invoke(&invocation) {
                    Ok(ran) => ran,
                    Err(HelperError::Invoke(why)) => {
                        broken = Some(format!("test dapp {test} could not run: {why}"));
                        break;
                    }
                    Err(e) => return Err(ExecError::Host(e)),
                };
                dapps_time += started.elapsed();
                let failed = (!ran.finished.outcome.success()).then(|| {
                    format!(
                        "the block would break test dapp {test}, which {}{}",
                        ran.finished.outcome,
                        stderr_tail(&ran.finished.stderr)
                    )
                });
                host.release(ran);
                if failed.is_some() {
                    broken = failed;
                    break;
                }
            }
        }
        if let Some(reason) = broken {
            // The whole batch is rejected and the state stays the parent's.
            changes = Changes::new();
            for slot in &mut slots {
                if slot
                    .result
                    .as_ref()
                    .is_none_or(|r| r.status == Status::Accepted)
                {
                    slot.result = Some(TxResult::rejected(slot.id.clone(), reason.clone()));
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

fn read_dapp_config(ledger: &Ledger, parent: &Block, dapp: &str) -> Result<DappConfig, ExecError> {
    let path = format!("{DAPPS}/{dapp}/{DAPP_TOML}");
    let bytes = ledger
        .read_value(parent, &path)?
        .ok_or_else(|| LedgerError::Malformed {
            id: parent.id,
            why: format!("dapp {dapp} has no {DAPP_TOML}"),
        })?;
    Ok(DappConfig::parse(dapp, &bytes)?)
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text.len().saturating_sub(REASON_STDERR);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    format!(": {}", &text[start..])
}

/// One line of a dapp's `results.jsonl`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DappResult {
    status: Status,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    output: Option<serde_json::Value>,
}

impl DappResult {
    fn into_result(self, tx: String) -> TxResult {
        match self.status {
            Status::Accepted => TxResult {
                tx,
                status: Status::Accepted,
                reason: self.reason,
                output: self.output,
            },
            Status::Rejected => TxResult {
                tx,
                status: Status::Rejected,
                reason: Some(self.reason.unwrap_or_else(|| "rejected by the dapp".into())),
                output: self.output,
            },
        }
    }
}

type DappChanges = Vec<(StatePath, Change)>;

/// Reads a finished run: `n` results and the state changes, or the reason
/// every transaction of the dapp is rejected.
fn take_run(ran: &Ran, dapp: &str, n: usize) -> Result<(Vec<DappResult>, DappChanges), String> {
    if !ran.finished.outcome.success() {
        return Err(format!(
            "dapp {dapp} failed: it {}{}",
            ran.finished.outcome,
            stderr_tail(&ran.finished.stderr)
        ));
    }
    let bytes = ran
        .read_results()
        .map_err(|e| format!("dapp {dapp}'s results cannot be read: {e}"))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("dapp {dapp} wrote results that are not UTF-8"))?;
    let mut results = Vec::with_capacity(n);
    for (i, line) in text.lines().enumerate() {
        let r: DappResult = serde_json::from_str(line).map_err(|e| {
            format!(
                "dapp {dapp} wrote result line {} that is not a result ({e}); \
                 each line is {{\"status\":\"accepted\"|\"rejected\",\"reason\"?,\"output\"?}}",
                i + 1
            )
        })?;
        results.push(r);
    }
    if results.len() != n {
        return Err(format!(
            "dapp {dapp} wrote {} results for {n} transactions; it must write one line per transaction",
            results.len()
        ));
    }
    let mut changes = Vec::new();
    for change in &ran.changes {
        let bad_path = |e: LayoutError| format!("dapp {dapp} wrote a state path it may not: {e}");
        match &change.kind {
            ChangeKind::File { .. } => {
                let path = StatePath::new(&change.path).map_err(bad_path)?;
                let bytes = ran
                    .file(&change.path)
                    .map_err(|e| format!("dapp {dapp}'s state change cannot be read: {e}"))?;
                changes.push((path, Change::Put(bytes)));
            }
            ChangeKind::Removed => {
                changes.push((
                    StatePath::new(&change.path).map_err(bad_path)?,
                    Change::Remove,
                ));
            }
            ChangeKind::Dir { opaque: true } => {
                // Everything that was under it is gone; what is in it now
                // follows as its own changes.
                changes.push((
                    StatePath::new(&change.path).map_err(bad_path)?,
                    Change::Remove,
                ));
            }
            ChangeKind::Dir { opaque: false } => {
                StatePath::new(&change.path).map_err(bad_path)?;
            }
            ChangeKind::Symlink { .. } => {
                return Err(format!(
                    "dapp {dapp} made a symlink at {} in its state; state holds only files and directories",
                    change.path
                ));
            }
        }
    }
    Ok((results, changes))
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

    #[test]
    fn stderr_is_quoted_from_its_end() {
        assert_eq!(stderr_tail(b""), "");
        assert_eq!(stderr_tail(b" oops\n"), ": oops");
        let long = "é".repeat(500);
        let tail = stderr_tail(long.as_bytes());
        assert!(tail.len() <= REASON_STDERR + 2);
    }
}

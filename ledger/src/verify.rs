//! Verification of the whole DAG: every block's signature, signer, parent
//! links, height, chain, tree layout, transactions and results. Problems are
//! [`BlockError`] values in a [`BlockReport`] per block; only failures to
//! read the repository at all are errors.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::objs::FindHeader;

use crate::TxId;
use crate::block::{self, BlockId, GIT_NAMESPACE, SIGNATURE_HEADER, Status, TxResult};
use crate::key::{SignatureError, Signer};
use crate::layout::{
    self, BLOCK, CHAIN_TOML, ChainConfig, DAPP_TOML, DAPPS, DappConfig, RESULTS, STATE, TXS,
};
use crate::pointer::{MAX_POINTER_LEN, Pointer};
use crate::precheck::{self, Prechecked, Verdicts};
use crate::repo::{Ledger, LedgerError};
use crate::tx::{self, TxError};

/// Why a block is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The object is missing or is not a commit.
    #[error("cannot be read: {0}")]
    Unreadable(String),
    /// Headers a block never has (encoding, a second signature, …).
    #[error("unexpected commit header {0:?}")]
    Header(String),
    /// No `gpgsig` header.
    #[error("is not signed (no gpgsig header); blocks are signed by a validator or device key")]
    NotSigned,
    /// The signature is malformed or does not verify.
    #[error("has a bad signature: {0}")]
    Signature(SignatureError),
    /// Signed by a key that `chain.toml` of its parent does not list.
    #[error("is signed by {0}, which is not a validator or device in chain.toml")]
    UnknownSigner(String),
    /// Its `chain.toml` goes back an epoch, changes without a new epoch,
    /// or its parents disagree on one.
    #[error("has an inconsistent chain.toml: {0}")]
    Epoch(String),
    /// The message is not a summary plus `Height:` and `Chain:` trailers.
    #[error("has a malformed message: {0}")]
    Message(String),
    /// The `Height:` trailer is not one more than the highest parent.
    #[error("claims height {claimed}, but its parents put it at {expected}")]
    Height {
        /// The trailer.
        claimed: u64,
        /// One more than the highest parent.
        expected: u64,
    },
    /// The `Chain:` trailer (or `chain.toml`) names another chain.
    #[error("is for chain {found:?}, this ledger is {expected:?}")]
    Chain {
        /// This ledger's chain.
        expected: String,
        /// What the block says.
        found: String,
    },
    /// Dated before one of its parents: chain time never goes back.
    #[error("is dated {time}, before its parent {parent} ({parent_time})")]
    Time {
        /// The block's time, Unix seconds.
        time: i64,
        /// The later parent.
        parent: String,
        /// That parent's time.
        parent_time: i64,
    },
    /// A block without parents that is not the genesis block.
    #[error("has no parents but is not the genesis block {0}")]
    SecondGenesis(String),
    /// Descends from a block that failed verification.
    #[error("descends from invalid block {0}")]
    BadParent(String),
    /// The tree breaks the layout rules.
    #[error("has {path:?} in its tree: {why}")]
    Layout {
        /// The tree path.
        path: String,
        /// Why it is not allowed.
        why: String,
    },
    /// A pointer blob names a manifest the chunkstore lacks.
    #[error("points {path:?} to manifest {manifest}, which is not in the chunk store")]
    MissingValue {
        /// The tree path.
        path: String,
        /// The missing manifest.
        manifest: String,
    },
    /// A transaction in `block/txs.jsonl` is invalid.
    #[error("has an invalid transaction on line {line} of block/txs.jsonl: {error}")]
    Tx {
        /// 1-based line number.
        line: usize,
        /// Why.
        error: TxError,
    },
    /// A replayed transaction recorded as accepted.
    #[error(
        "accepts a replayed transaction on line {line} (nonce {nonce} of {signer} was already used)"
    )]
    Replayed {
        /// 1-based line number.
        line: usize,
        /// The signer.
        signer: String,
        /// The nonce.
        nonce: u64,
    },
    /// `block/results.jsonl` does not match the transactions.
    #[error("has invalid results: {0}")]
    Results(String),
}

/// What verification found about one block.
#[derive(Debug, Clone)]
pub struct BlockReport {
    /// The block.
    pub id: BlockId,
    /// Its height (as computed from its parents).
    pub height: u64,
    /// Its parents.
    pub parents: Vec<BlockId>,
    /// The signer's name in `chain.toml`, else its key, if the signature
    /// could be read.
    pub signer: Option<String>,
    /// Its summary line, if readable.
    pub summary: Option<String>,
    /// The proposer's time, Unix seconds, if readable.
    pub time: Option<i64>,
    /// How many transactions it carries.
    pub txs: usize,
    /// Valid, or the first thing wrong with it.
    pub verdict: Result<(), BlockError>,
}

/// The outcome of walking the DAG.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// One report per block reached, parents before children (height, then
    /// id).
    pub blocks: Vec<BlockReport>,
}

impl Verification {
    /// The first invalid block, in that order.
    pub fn first_bad(&self) -> Option<&BlockReport> {
        self.blocks.iter().find(|b| b.verdict.is_err())
    }

    /// Transactions in all blocks.
    pub fn txs(&self) -> usize {
        self.blocks.iter().map(|b| b.txs).sum()
    }
}

/// What the checks of later blocks need from an earlier one.
struct Checked {
    ok: bool,
    height: u64,
    time: i64,
    first_parent: Option<BlockId>,
    config: Option<Arc<ChainConfig>>,
}

struct Walk<'l> {
    ledger: &'l Ledger,
    configs: HashMap<ObjectId, Arc<ChainConfig>>,
    seen_trees: HashSet<ObjectId>,
    seen_blobs: HashSet<ObjectId>,
    done: HashMap<BlockId, Checked>,
    nonces: HashMap<(String, u64), Vec<BlockId>>,
    /// Signature checks made ahead on another thread, when there are
    /// enough blocks.
    pre: Option<Prechecked>,
    /// Those of the block being checked.
    pre_now: Option<Verdicts>,
    /// The caller re-executes each block before it uses it, which writes
    /// `txs.jsonl` and `results.jsonl` again from the transactions it
    /// checks itself and compares the trees: those two files are not
    /// checked here.
    txs_by_reexecution: bool,
}

fn layout_err(path: &str, why: impl Into<String>) -> BlockError {
    BlockError::Layout {
        path: path.to_string(),
        why: why.into(),
    }
}

impl Ledger {
    /// Every block reachable from a branch or the genesis ref.
    pub fn tips(&self) -> Result<Vec<BlockId>, LedgerError> {
        let mut tips: Vec<BlockId> = self.branches()?.into_iter().map(|(_, id)| id).collect();
        tips.push(self.genesis());
        tips.sort();
        tips.dedup();
        Ok(tips)
    }

    /// Verifies every block reachable from `tips` (all branches when
    /// `None`). With `stop_at_first`, stops after the first invalid block.
    /// `progress(done, total)` is called as blocks are checked.
    pub fn verify(
        &self,
        tips: Option<&[BlockId]>,
        stop_at_first: bool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Verification, LedgerError> {
        // Its worker threads open the repository without this ledger's
        // memory: what was written goes to disk first.
        self.flush_objects()?;
        let tips = match tips {
            Some(t) => t.to_vec(),
            None => self.tips()?,
        };
        // Pass 1: the graph, from the commits' parent lines only.
        let mut parents: HashMap<BlockId, Vec<BlockId>> = HashMap::new();
        let mut unreadable: HashMap<BlockId, String> = HashMap::new();
        let mut stack = tips.clone();
        while let Some(id) = stack.pop() {
            if parents.contains_key(&id) || unreadable.contains_key(&id) {
                continue;
            }
            match self.commit_parents(id)? {
                Ok(ps) => {
                    stack.extend(ps.iter().copied());
                    parents.insert(id, ps);
                }
                Err(why) => {
                    unreadable.insert(id, why);
                }
            }
        }
        // Pass 2: topological order, lowest height first, ties by id.
        let mut children: HashMap<BlockId, Vec<BlockId>> = HashMap::new();
        let mut waiting: HashMap<BlockId, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for id in unreadable.keys() {
            ready.push(Reverse((0, *id)));
        }
        for (id, ps) in &parents {
            let distinct: BTreeSet<_> = ps.iter().collect();
            waiting.insert(*id, distinct.len());
            for p in distinct {
                children.entry(*p).or_default().push(*id);
            }
            if ps.is_empty() {
                ready.push(Reverse((0, *id)));
            }
        }
        let order = walk_order(ready, &children, waiting);
        let ahead = parents.len() >= precheck::MIN_BLOCKS
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        std::thread::scope(|scope| {
            let pre = ahead.then(|| {
                Prechecked::start(
                    scope,
                    self.repo().clone().into_sync(),
                    order.iter().map(|(_, id)| *id).collect(),
                    self.chain().to_string(),
                )
            });
            let mut walk = Walk {
                ledger: self,
                configs: HashMap::new(),
                seen_trees: HashSet::new(),
                seen_blobs: HashSet::new(),
                done: HashMap::new(),
                nonces: HashMap::new(),
                pre,
                pre_now: None,
                txs_by_reexecution: false,
            };
            walk.run(&order, &parents, &unreadable, stop_at_first, &mut progress)
        })
    }
}

/// What [`Ledger::check_block`] remembers between blocks: parsed
/// `chain.toml`s and the trees and blobs already found well formed, so a
/// block costs what it changed, not the size of the state.
#[derive(Default)]
pub struct BlockChecker {
    configs: HashMap<ObjectId, Arc<ChainConfig>>,
    seen_trees: HashSet<ObjectId>,
    seen_blobs: HashSet<ObjectId>,
}

/// Trees and blobs a [`BlockChecker`] remembers before it starts over.
const CHECKER_MEMORY: usize = 1 << 20;

impl Ledger {
    /// Checks one block whose parents are here and valid (a block a peer
    /// announced, before anything uses it): lineage, signature and signer,
    /// message, height, chain and tree layout (the values it names are
    /// here), as [`Ledger::verify`] checks each block.
    ///
    /// Its transactions and results are left to the caller's
    /// re-execution (`Executor::reexecute`), which checks every line
    /// (form, signature, nonce), makes `results.jsonl` again and compares
    /// the whole tree: a consensus node re-executes every block before it
    /// counts it valid, so checking the lines here as well was the same
    /// work twice.
    pub fn check_block(
        &self,
        id: BlockId,
        checker: &mut BlockChecker,
    ) -> Result<Result<(), BlockError>, LedgerError> {
        let parents = match self.commit_parents(id)? {
            Ok(p) => p,
            Err(why) => return Ok(Err(BlockError::Unreadable(why))),
        };
        if checker.seen_trees.len() + checker.seen_blobs.len() > CHECKER_MEMORY {
            *checker = BlockChecker::default();
        }
        let mut done = HashMap::new();
        let mut height = 0;
        for p in &parents {
            let block = self.block(*p)?;
            height = height.max(block.height + 1);
            done.insert(
                *p,
                Checked {
                    ok: true,
                    height: block.height,
                    time: block.time,
                    first_parent: block.parents.first().copied(),
                    config: Some(Arc::new(self.chain_config(&block)?)),
                },
            );
        }
        let mut walk = Walk {
            ledger: self,
            configs: std::mem::take(&mut checker.configs),
            seen_trees: std::mem::take(&mut checker.seen_trees),
            seen_blobs: std::mem::take(&mut checker.seen_blobs),
            done,
            nonces: HashMap::new(),
            pre: None,
            pre_now: None,
            txs_by_reexecution: true,
        };
        let report = walk.check(id, height, &parents);
        checker.configs = walk.configs;
        checker.seen_trees = walk.seen_trees;
        checker.seen_blobs = walk.seen_blobs;
        Ok(report?.verdict)
    }
}

/// The order in which blocks are checked, each with its height: a block
/// after all its parents, lowest height first, ties by id.
fn walk_order(
    mut ready: BinaryHeap<Reverse<(u64, BlockId)>>,
    children: &HashMap<BlockId, Vec<BlockId>>,
    mut waiting: HashMap<BlockId, usize>,
) -> Vec<(u64, BlockId)> {
    let mut heights: HashMap<BlockId, u64> = HashMap::new();
    let mut order = Vec::with_capacity(waiting.len() + ready.len());
    while let Some(Reverse((height, id))) = ready.pop() {
        order.push((height, id));
        for child in children.get(&id).map(Vec::as_slice).unwrap_or_default() {
            let h = heights.entry(*child).or_default();
            *h = (*h).max(height + 1);
            if let Some(left) = waiting.get_mut(child) {
                *left -= 1;
                if *left == 0 {
                    ready.push(Reverse((*h, *child)));
                }
            }
        }
    }
    order
}

impl Walk<'_> {
    /// Checks every block in `order` (see [`walk_order`]).
    fn run(
        &mut self,
        order: &[(u64, BlockId)],
        parents: &HashMap<BlockId, Vec<BlockId>>,
        unreadable: &HashMap<BlockId, String>,
        stop_at_first: bool,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<Verification, LedgerError> {
        let walk = self;
        let total = order.len() as u64;
        let mut out = Verification::default();
        for &(height, id) in order {
            let report = match unreadable.get(&id) {
                Some(why) => BlockReport {
                    id,
                    height,
                    parents: Vec::new(),
                    signer: None,
                    summary: None,
                    time: None,
                    txs: 0,
                    verdict: Err(BlockError::Unreadable(why.clone())),
                },
                None => {
                    walk.pre_now = walk.pre.as_mut().and_then(|p| p.take(id));
                    walk.check(id, height, &parents[&id])?
                }
            };
            let bad = report.verdict.is_err();
            out.blocks.push(report);
            progress(out.blocks.len() as u64, total);
            if bad && stop_at_first {
                break;
            }
        }
        Ok(out)
    }
}

impl Ledger {
    /// A commit's parents, or why it cannot be read as a commit.
    pub(crate) fn commit_parents(
        &self,
        id: BlockId,
    ) -> Result<Result<Vec<BlockId>, String>, LedgerError> {
        let repo = self.repo();
        let object = match repo.try_find_object(block::oid(id)) {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(Err("the object is missing from the repository".into())),
            Err(e) => return Ok(Err(format!("the object cannot be read: {e}"))),
        };
        if object.kind != gix::objs::Kind::Commit {
            return Ok(Err(format!("it is a {}, not a commit", object.kind)));
        }
        let parsed = gix::objs::CommitRef::from_bytes(&object.data, gix::hash::Kind::Sha1);
        Ok(match parsed {
            Ok(commit) => Ok(commit.parents().map(|p| block::block_id(&p)).collect()),
            Err(e) => Err(format!("not a valid commit: {e}")),
        })
    }
}

impl Walk<'_> {
    fn check(
        &mut self,
        id: BlockId,
        height: u64,
        parents: &[BlockId],
    ) -> Result<BlockReport, LedgerError> {
        let mut report = BlockReport {
            id,
            height,
            parents: parents.to_vec(),
            signer: None,
            summary: None,
            time: None,
            txs: 0,
            verdict: Ok(()),
        };
        let mut config = None;
        report.verdict = self.check_block(&mut report, &mut config)?;
        self.done.insert(
            id,
            Checked {
                ok: report.verdict.is_ok(),
                height,
                time: report.time.unwrap_or(i64::MIN),
                first_parent: parents.first().copied(),
                config,
            },
        );
        Ok(report)
    }

    /// The checks, in the order a reader would want the first failure:
    /// lineage, signature, message, height, chain, tree, transactions.
    fn check_block(
        &mut self,
        report: &mut BlockReport,
        own_config: &mut Option<Arc<ChainConfig>>,
    ) -> Result<Result<(), BlockError>, LedgerError> {
        let ledger = self.ledger;
        let id = report.id;
        let repo = ledger.repo();
        let object = repo
            .find_object(block::oid(id))
            .map_err(|source| LedgerError::Git {
                doing: format!("reading block {id}"),
                source,
            })?;
        let data = &object.data;
        let commit = match gix::objs::CommitRef::from_bytes(data, gix::hash::Kind::Sha1) {
            Ok(c) => c,
            Err(e) => return Ok(Err(BlockError::Unreadable(e.to_string()))),
        };
        report.time = commit.time().ok().map(|t| t.seconds);
        report.summary = block::parse_message(commit.message).ok().map(|m| m.summary);

        // Lineage.
        if report.parents.is_empty() && id != ledger.genesis() {
            return Ok(Err(BlockError::SecondGenesis(ledger.genesis().to_string())));
        }
        for parent in &report.parents {
            let Some(checked) = self.done.get(parent).filter(|c| c.ok) else {
                return Ok(Err(BlockError::BadParent(parent.to_string())));
            };
            let time = report.time.unwrap_or(i64::MIN);
            if time < checked.time {
                return Ok(Err(BlockError::Time {
                    time,
                    parent: parent.to_string(),
                    parent_time: checked.time,
                }));
            }
        }

        // Headers and signature.
        if let Some(enc) = commit.encoding {
            return Ok(Err(BlockError::Header(format!("encoding {enc}"))));
        }
        let mut signatures = 0;
        for (name, _) in &commit.extra_headers {
            if *name == SIGNATURE_HEADER {
                signatures += 1;
            } else {
                return Ok(Err(BlockError::Header(name.to_string())));
            }
        }
        if signatures > 1 {
            return Ok(Err(BlockError::Header("gpgsig (twice)".into())));
        }
        let (sig, signed) = match gix::objs::CommitRefIter::signature(data, gix::hash::Kind::Sha1) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Err(BlockError::NotSigned)),
            Err(e) => return Ok(Err(BlockError::Unreadable(e.to_string()))),
        };
        let sig = sig.to_str_lossy();
        let signer = match Signer::of_signature(&sig) {
            Ok(s) => s,
            Err(e) => return Ok(Err(BlockError::Signature(e))),
        };
        report.signer = Some(signer.to_openssh());

        // The tree's root: needed for the signer set of genesis.
        let root = match self.root_entries(commit.tree()) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let config = match self.config(root.chain_toml) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        *own_config = Some(config.clone());
        // The parents' config with the highest epoch lists the signers
        // (genesis: its own); the block's own may only be that one or a
        // later epoch (a `chain set` transaction, which re-execution
        // checks).
        let signers = if report.parents.is_empty() {
            config.clone()
        } else {
            let parents: Vec<&ChainConfig> = report
                .parents
                .iter()
                .map(|p| {
                    &**self.done[p]
                        .config
                        .as_ref()
                        .expect("a valid block has a config")
                })
                .collect();
            let top = match ChainConfig::certifying(parents) {
                Ok(top) => top.clone(),
                Err(why) => return Ok(Err(BlockError::Epoch(why))),
            };
            if config.epoch < top.epoch {
                return Ok(Err(BlockError::Epoch(format!(
                    "epoch {} after its parent's epoch {}",
                    config.epoch, top.epoch
                ))));
            }
            if config.epoch == top.epoch && *config != top {
                return Ok(Err(BlockError::Epoch(format!(
                    "it changes chain.toml but keeps epoch {}",
                    config.epoch
                ))));
            }
            Arc::new(top)
        };
        let Some(member) = signers.member(&signer) else {
            return Ok(Err(BlockError::UnknownSigner(signer.to_openssh())));
        };
        report.signer = Some(member.name.clone());
        let prechecked = self.pre_now.as_ref().is_some_and(|v| v.commit);
        if !prechecked && let Err(e) = signer.verify(GIT_NAMESPACE, &signed.to_bstring(), &sig) {
            return Ok(Err(BlockError::Signature(e)));
        }

        // Message, height, chain.
        let message = match block::parse_message(commit.message) {
            Ok(m) => m,
            Err(e) => return Ok(Err(BlockError::Message(e))),
        };
        if message.height != report.height {
            return Ok(Err(BlockError::Height {
                claimed: message.height,
                expected: report.height,
            }));
        }
        for found in [&message.chain, &config.chain] {
            if *found != ledger.chain() {
                return Ok(Err(BlockError::Chain {
                    expected: ledger.chain().to_string(),
                    found: found.clone(),
                }));
            }
        }

        // The rest of the tree.
        if let Some(dapps) = root.dapps
            && let Err(e) = self.check_dapps(dapps)
        {
            return Ok(Err(e));
        }

        // Transactions and results.
        if self.txs_by_reexecution {
            return Ok(Ok(()));
        }
        Ok(self.check_txs(report, root.txs, root.results))
    }

    fn read(&self, id: ObjectId, path: &str) -> Result<Vec<u8>, BlockError> {
        match self.ledger.repo().try_find_object(id) {
            Ok(Some(o)) => Ok(o.detach().data),
            Ok(None) => Err(layout_err(path, "the object is missing")),
            Err(e) => Err(layout_err(path, format!("cannot be read: {e}"))),
        }
    }

    fn tree_entries(
        &self,
        id: ObjectId,
        path: &str,
    ) -> Result<Vec<(String, u16, ObjectId)>, BlockError> {
        let data = self.read(id, path)?;
        let tree = gix::objs::TreeRef::from_bytes(&data, gix::hash::Kind::Sha1)
            .map_err(|e| layout_err(path, format!("not a tree: {e}")))?;
        let mut out = Vec::with_capacity(tree.entries.len());
        for e in tree.entries {
            let name = layout::check_component(e.filename)
                .map_err(|why| layout_err(&format!("{path}{}", e.filename), why))?;
            out.push((name.to_string(), e.mode.value(), e.oid.to_owned()));
        }
        Ok(out)
    }

    fn root_entries(&mut self, tree: ObjectId) -> Result<Root, BlockError> {
        let mut root = Root::default();
        for (name, mode, id) in self.tree_entries(tree, "")? {
            match (name.as_str(), mode) {
                (CHAIN_TOML, BLOB) => root.chain_toml = Some(id),
                (DAPPS, TREE) => root.dapps = Some(id),
                (BLOCK, TREE) => {
                    for (name, mode, id) in self.tree_entries(id, "block/")? {
                        match (name.as_str(), mode) {
                            (TXS, BLOB) => root.txs = Some(id),
                            (RESULTS, BLOB) => root.results = Some(id),
                            _ => {
                                return Err(layout_err(
                                    &format!("{BLOCK}/{name}"),
                                    "block/ holds only txs.jsonl and results.jsonl",
                                ));
                            }
                        }
                    }
                }
                _ => {
                    return Err(layout_err(
                        &name,
                        "the root holds only chain.toml, dapps/ and block/ (files where files belong, directories where directories belong)",
                    ));
                }
            }
        }
        for (what, found) in [
            (CHAIN_TOML, root.chain_toml.is_some()),
            ("block/txs.jsonl", root.txs.is_some()),
            ("block/results.jsonl", root.results.is_some()),
        ] {
            if !found {
                return Err(layout_err(what, "is missing"));
            }
        }
        Ok(root)
    }

    fn config(&mut self, blob: Option<ObjectId>) -> Result<Arc<ChainConfig>, BlockError> {
        let blob = blob.expect("root_entries requires chain.toml");
        if let Some(c) = self.configs.get(&blob) {
            return Ok(c.clone());
        }
        let bytes = self.read(blob, CHAIN_TOML)?;
        let config =
            ChainConfig::parse(&bytes).map_err(|e| layout_err(CHAIN_TOML, e.to_string()))?;
        let config = Arc::new(config);
        self.configs.insert(blob, config.clone());
        Ok(config)
    }

    fn check_dapps(&mut self, dapps: ObjectId) -> Result<(), BlockError> {
        if !self.seen_trees.insert(dapps) {
            return Ok(());
        }
        for (name, mode, id) in self.tree_entries(dapps, "dapps/")? {
            let path = format!("{DAPPS}/{name}");
            layout::check_name("dapp", &name).map_err(|e| layout_err(&path, e.to_string()))?;
            if mode != TREE {
                return Err(layout_err(&path, "a dapp is a directory"));
            }
            if !self.seen_trees.insert(id) {
                continue;
            }
            let mut has_toml = false;
            for (entry, mode, eid) in self.tree_entries(id, &format!("{path}/"))? {
                let epath = format!("{path}/{entry}");
                match (entry.as_str(), mode) {
                    (DAPP_TOML, BLOB) => {
                        let bytes = self.read(eid, &epath)?;
                        DappConfig::parse(&name, &bytes)
                            .map_err(|e| layout_err(&epath, e.to_string()))?;
                        has_toml = true;
                    }
                    (STATE, TREE) => self.check_state(eid, &epath)?,
                    _ => {
                        return Err(layout_err(
                            &epath,
                            "a dapp directory holds only dapp.toml and state/",
                        ));
                    }
                }
            }
            if !has_toml {
                return Err(layout_err(&format!("{path}/{DAPP_TOML}"), "is missing"));
            }
        }
        Ok(())
    }

    fn check_state(&mut self, tree: ObjectId, path: &str) -> Result<(), BlockError> {
        if !self.seen_trees.insert(tree) {
            return Ok(());
        }
        for (name, mode, id) in self.tree_entries(tree, &format!("{path}/"))? {
            let epath = format!("{path}/{name}");
            match mode {
                TREE => self.check_state(id, &epath)?,
                BLOB => {
                    if !self.seen_blobs.insert(id) {
                        continue;
                    }
                    let header = self
                        .ledger
                        .repo()
                        .try_header(&id)
                        .map_err(|e| layout_err(&epath, format!("cannot be read: {e}")))?
                        .ok_or_else(|| layout_err(&epath, "the object is missing"))?;
                    if header.kind != gix::objs::Kind::Blob {
                        return Err(layout_err(&epath, "is not a file"));
                    }
                    if header.size as usize <= MAX_POINTER_LEN
                        && let Some(pointer) = Pointer::decode(&self.read(id, &epath)?)
                    {
                        let present = self
                            .ledger
                            .chunks()
                            .has_manifest(&pointer.manifest)
                            .unwrap_or(false);
                        if !present {
                            return Err(BlockError::MissingValue {
                                path: epath,
                                manifest: pointer.manifest.to_string(),
                            });
                        }
                    }
                }
                other => {
                    return Err(layout_err(
                        &epath,
                        format!(
                            "mode {other:o} is not allowed: state holds regular files (100644) and directories only"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `used_in` lies on the first-parent line of a block whose
    /// first parent is `from`.
    fn on_first_parent_line(&self, mut from: Option<BlockId>, used_in: BlockId) -> bool {
        let floor = self.done.get(&used_in).map_or(0, |c| c.height);
        while let Some(id) = from {
            if id == used_in {
                return true;
            }
            let Some(c) = self.done.get(&id) else {
                return false;
            };
            if c.height <= floor {
                return false;
            }
            from = c.first_parent;
        }
        false
    }

    fn check_txs(
        &mut self,
        report: &mut BlockReport,
        txs: Option<ObjectId>,
        results: Option<ObjectId>,
    ) -> Result<(), BlockError> {
        let txs = self.read(txs.expect("checked by root_entries"), "block/txs.jsonl")?;
        let results = self.read(
            results.expect("checked by root_entries"),
            "block/results.jsonl",
        )?;
        let tx_lines = split_lines(&txs, "block/txs.jsonl")?;
        let result_lines = split_lines(&results, "block/results.jsonl")?;
        report.txs = tx_lines.len();
        if tx_lines.len() != result_lines.len() {
            return Err(BlockError::Results(format!(
                "{} transactions but {} results",
                tx_lines.len(),
                result_lines.len()
            )));
        }
        let first_parent = report.parents.first().copied();
        let mut in_block: HashSet<(String, u64)> = HashSet::new();
        let mut used = Vec::new();
        for (i, (line, result_line)) in tx_lines.iter().zip(&result_lines).enumerate() {
            let n = i + 1;
            let result: TxResult = serde_json::from_slice(result_line)
                .map_err(|e| BlockError::Results(format!("line {n}: {e}")))?;
            if TxResult::to_line(&result).as_bytes() != *result_line {
                return Err(BlockError::Results(format!(
                    "line {n} is not canonical JSON"
                )));
            }
            let tx_id = TxId::of_line(line);
            if result.tx != tx_id {
                return Err(BlockError::Results(format!(
                    "line {n} is for transaction {}, but line {n} of txs.jsonl is {tx_id}",
                    result.tx
                )));
            }
            let prechecked = self
                .pre_now
                .as_ref()
                .is_some_and(|v| v.lines.contains(&tx_id));
            let nonce_used = |signer: &str, nonce| {
                let key = (signer.to_string(), nonce);
                in_block.contains(&key)
                    || self.nonces.get(&key).is_some_and(|blocks| {
                        blocks
                            .iter()
                            .any(|b| self.on_first_parent_line(first_parent, *b))
                    })
            };
            let checked =
                tx::verify_line_prechecked(line, self.ledger.chain(), nonce_used, prechecked);
            match checked {
                Ok(stx) => {
                    let key = (stx.tx.signer, stx.tx.nonce);
                    in_block.insert(key.clone());
                    used.push(key);
                }
                Err(TxError::Replayed { signer, nonce }) if result.status == Status::Accepted => {
                    return Err(BlockError::Replayed {
                        line: n,
                        signer,
                        nonce,
                    });
                }
                Err(TxError::Replayed { .. }) => {}
                Err(error) => return Err(BlockError::Tx { line: n, error }),
            }
        }
        for key in used {
            self.nonces.entry(key).or_default().push(report.id);
        }
        Ok(())
    }
}

fn split_lines<'a>(bytes: &'a [u8], path: &str) -> Result<Vec<&'a [u8]>, BlockError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return Err(layout_err(path, "the last line has no newline"));
    };
    Ok(body.split(|b| *b == b'\n').collect())
}

const BLOB: u16 = 0o100644;
const TREE: u16 = 0o040000;

#[derive(Default)]
struct Root {
    chain_toml: Option<ObjectId>,
    dapps: Option<ObjectId>,
    txs: Option<ObjectId>,
    results: Option<ObjectId>,
}

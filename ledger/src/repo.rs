//! The ledger repository: a bare git repository of blocks, read and written
//! with `gix`, whose large values live in the chunkstore.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gix::ObjectId;
use gix::bstr::{BString, ByteSlice};
use gix::objs::tree::EntryKind;
use gix::refs::transaction::PreviousValue;
use utter_chunkstore::{BlobReader, PutOptions, Store};

use crate::block::{self, BlockId, GIT_NAMESPACE, SIGNATURE_HEADER, TxResult};
use crate::key::{KeyError, Keypair, Signer};
use crate::layout::{
    self, BLOCK, CHAIN_TOML, ChainConfig, DAPP_TOML, DAPPS, DappConfig, LayoutError, RESULTS,
    STATE, StatePath, TXS,
};
use crate::pointer::{MAX_POINTER_LEN, Pointer};

/// State values longer than this go to the chunkstore behind a pointer.
pub const INLINE_MAX: usize = 64 * 1024;
/// The ref naming the genesis block.
pub const GENESIS_REF: &str = "refs/utter/genesis";
/// The main branch.
pub const MAIN: &str = "main";

/// What can go wrong reading or writing the ledger. Problems *in* a block
/// are [`crate::BlockError`] values from verification instead.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// git (gix) failed.
    #[error("ledger repository error while {doing}")]
    Git {
        /// What the ledger was doing.
        doing: String,
        /// gix's error.
        source: gix::Error,
    },
    /// A filesystem operation failed.
    #[error("{doing} {}", path.display())]
    Io {
        /// What the ledger was doing.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The chunkstore failed.
    #[error(transparent)]
    Chunks(#[from] utter_chunkstore::Error),
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A name, path or configuration breaks the layout rules.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// There is already a ledger here.
    #[error(
        "{} already holds a ledger; use another --data-dir, or remove it to start over",
        .0.display()
    )]
    Exists(PathBuf),
    /// There is no ledger here.
    #[error("no ledger at {}; create one with `utter init`", .0.display())]
    NoLedger(PathBuf),
    /// No block with this id (or not a block).
    #[error("block {0} is not in the ledger")]
    NoBlock(String),
    /// A block's commit cannot be read as a block.
    #[error("block {id} is malformed: {why}; run `utter verify`")]
    Malformed {
        /// The block.
        id: BlockId,
        /// What is wrong.
        why: String,
    },
    /// No branch with this name.
    #[error("branch {0} does not exist")]
    NoBranch(String),
    /// A branch moved while we were updating it, or would move backwards.
    #[error("branch {branch} is at {found}, not {expected}: {why}")]
    Branch {
        /// The branch.
        branch: String,
        /// What the caller expected.
        expected: String,
        /// What it is.
        found: String,
        /// Why this refused the update.
        why: &'static str,
    },
    /// A draft block that cannot be written.
    #[error("cannot write this block: {0}")]
    Draft(String),
}

pub(crate) fn git(doing: impl Into<String>) -> impl FnOnce(gix::Error) -> LedgerError {
    let doing = doing.into();
    move |source| LedgerError::Git { doing, source }
}

/// A block's header, read from its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The commit id.
    pub id: BlockId,
    /// The state tree after the block.
    pub tree: ObjectId,
    /// Previous blocks; several for a merge, none for genesis.
    pub parents: Vec<BlockId>,
    /// The `Height:` trailer.
    pub height: u64,
    /// The `Chain:` trailer.
    pub chain: String,
    /// The first line of the message.
    pub summary: String,
    /// The proposer's time (committer time), Unix seconds.
    pub time: i64,
    /// The key the signature claims (checked by verification, not here).
    pub signer: Option<Signer>,
    /// The `Round:` trailer: the consensus round a proposal was made in
    /// (absent on other blocks). Inside the signed commit, so no relay can
    /// change it without changing the block's id.
    pub round: Option<u64>,
}

/// One change to a state tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file's bytes (stored inline in git).
    Put(Vec<u8>),
    /// A large value already in the chunkstore.
    Pointer(Pointer),
    /// Removes a file or a whole directory.
    Remove,
}

/// Changes to apply to the parent's tree, by full tree path. Build them with
/// the methods, which check the layout rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    paths: BTreeMap<String, Change>,
}

impl Changes {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `chain.toml`.
    pub fn set_chain(&mut self, config: &ChainConfig) -> Result<&mut Self, LayoutError> {
        config.check()?;
        self.paths.insert(
            CHAIN_TOML.into(),
            Change::Put(config.to_toml().into_bytes()),
        );
        Ok(self)
    }

    /// Sets `dapps/<name>/dapp.toml`.
    pub fn set_dapp(&mut self, name: &str, config: &DappConfig) -> Result<&mut Self, LayoutError> {
        layout::check_name("dapp", name)?;
        let text = config.to_toml();
        DappConfig::parse(name, text.as_bytes())?;
        self.paths.insert(
            format!("{DAPPS}/{name}/{DAPP_TOML}"),
            Change::Put(text.into_bytes()),
        );
        Ok(self)
    }

    /// Removes a dapp with its state.
    pub fn remove_dapp(&mut self, name: &str) -> Result<&mut Self, LayoutError> {
        layout::check_name("dapp", name)?;
        self.paths.insert(format!("{DAPPS}/{name}"), Change::Remove);
        Ok(self)
    }

    /// Sets, replaces or removes `dapps/<dapp>/state/<path>`.
    pub fn state(
        &mut self,
        dapp: &str,
        path: &StatePath,
        change: Change,
    ) -> Result<&mut Self, LayoutError> {
        layout::check_name("dapp", dapp)?;
        self.paths
            .insert(format!("{DAPPS}/{dapp}/{STATE}/{path}"), change);
        Ok(self)
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The changes by tree path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Change)> {
        self.paths.iter().map(|(p, c)| (p.as_str(), c))
    }
}

/// A block to write.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Previous blocks (the first one's tree is the base); empty for genesis.
    pub parents: Vec<BlockId>,
    /// Changes to the first parent's tree.
    pub changes: Changes,
    /// The block's transaction lines ([`crate::tx::SignedTx::to_line`], or the lines
    /// [`crate::tx::verify_line`] accepted), verified by the caller.
    pub txs: Vec<String>,
    /// One result per transaction, in the same order.
    pub results: Vec<TxResult>,
    /// The summary line (and optional body).
    pub text: String,
    /// The proposer's time, Unix seconds.
    pub time: i64,
    /// The consensus round, for a proposal (the `Round:` trailer).
    pub round: Option<u64>,
}

/// A value read from a state tree: inline bytes, or a chunkstore stream.
pub enum ValueReader {
    /// Bytes stored in git.
    Inline(io::Cursor<Vec<u8>>),
    /// Bytes stored in the chunkstore.
    Chunked(Box<BlobReader>),
}

impl ValueReader {
    /// The value's length.
    pub fn size(&self) -> u64 {
        match self {
            Self::Inline(c) => c.get_ref().len() as u64,
            Self::Chunked(r) => r.size(),
        }
    }
}

impl Read for ValueReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Inline(c) => c.read(buf),
            Self::Chunked(r) => r.read(buf),
        }
    }
}

/// An entry of a state directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The file or directory name.
    pub name: String,
    /// True for a directory.
    pub is_dir: bool,
}

/// Per-block facts the DAG queries need, cached after the first read.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) parents: Vec<BlockId>,
    pub(crate) height: u64,
}

const NODE_CACHE_MAX: usize = 200_000;

/// The ledger of one data directory.
pub struct Ledger {
    /// Replaced when gix's store lost sight of a pack (`Ledger::reading`).
    repo: RefCell<gix::Repository>,
    /// When the pack directory had last changed as `repo` was opened.
    pub(crate) packs_seen: Cell<Option<std::time::SystemTime>>,
    path: PathBuf,
    chunks: Arc<Store>,
    chain: String,
    genesis: BlockId,
    durable: bool,
    nodes: RefCell<HashMap<BlockId, Node>>,
}

impl Drop for Ledger {
    /// Objects still in memory (written without a block or ref after
    /// them) go to disk rather than vanish; nothing names them yet, so a
    /// failure here loses nothing a reader could miss.
    fn drop(&mut self) {
        let _ = self.flush_objects();
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

/// Pack index slots gix keeps. It cannot see packs beyond its slots; the
/// ledger merges its own packs by tier (`crate::pack`), so they stay far
/// fewer, and the slots leave room for the packs peers send.
#[cfg(not(test))]
const PACK_SLOTS: usize = 4096;
/// Few slots in tests, so gix reuses them within a test's few hundred
/// blocks (the case `Ledger::reading` is for).
#[cfg(test)]
const PACK_SLOTS: usize = 64;

/// Opens the repository isolated from the user's and system git
/// configuration (a ledger's behaviour must not depend on `~/.gitconfig`).
pub(crate) fn open_repo(path: &Path) -> Result<gix::Repository, LedgerError> {
    let options = gix::open::Options::isolated().object_store_slots(
        gix::odb::store::init::Slots::AsNeededByDiskState {
            multiplier: 2.0,
            minimum: PACK_SLOTS,
        },
    );
    gix::open_opts(path, options).map_err(git(format!("opening {}", path.display())))
}

/// What every handle of the ledger's repository is set up with.
fn prepare_repo(repo: &mut gix::Repository) {
    repo.object_cache_size_if_unset(16 * 1024 * 1024);
    // Objects written go to memory and then to disk as one pack per
    // block (`crate::pack`), not as a file each.
    repo.objects.enable_object_memory();
}

fn is_ledger(path: &Path) -> bool {
    path.join("HEAD").is_file() && path.join("objects").is_dir()
}

impl Ledger {
    /// Creates a bare repository at `path` with a genesis block holding
    /// `config` (and `changes`, such as built-in dapps), signed by `key`,
    /// and points `main` at it.
    pub fn create(
        path: &Path,
        chunks: Arc<Store>,
        config: &ChainConfig,
        changes: Changes,
        key: &Keypair,
        time: i64,
    ) -> Result<(Self, Block), LedgerError> {
        config.check()?;
        if is_ledger(path) {
            return Err(LedgerError::Exists(path.to_path_buf()));
        }
        gix::init_bare(path).map_err(git(format!("creating {}", path.display())))?;
        let repo = open_repo(path)?;
        let mut ledger = Self::with_repo(repo, path, chunks, config.chain.clone(), None);
        let mut changes = changes;
        changes.set_chain(config)?;
        let draft = Draft {
            parents: Vec::new(),
            changes,
            txs: Vec::new(),
            results: Vec::new(),
            text: format!("genesis of chain {}", config.chain),
            time,
            round: None,
        };
        let genesis = ledger.write_block(&draft, key)?;
        ledger.genesis = genesis.id;
        ledger.set_ref(GENESIS_REF, genesis.id, None)?;
        ledger.set_ref(&format!("refs/heads/{MAIN}"), genesis.id, None)?;
        // HEAD of a fresh repository names `master` in some git setups.
        std::fs::write(path.join("HEAD"), format!("ref: refs/heads/{MAIN}\n")).map_err(
            |source| LedgerError::Io {
                doing: "writing",
                path: path.join("HEAD"),
                source,
            },
        )?;
        Ok((ledger, genesis))
    }

    /// Opens the ledger at `path`.
    pub fn open(path: &Path, chunks: Arc<Store>) -> Result<Self, LedgerError> {
        if !is_ledger(path) {
            return Err(LedgerError::NoLedger(path.to_path_buf()));
        }
        let repo = open_repo(path)?;
        let mut ledger = Self::with_repo(repo, path, chunks, String::new(), None);
        let genesis = ledger
            .ref_target(GENESIS_REF)?
            .ok_or_else(|| LedgerError::NoLedger(path.to_path_buf()))?;
        let block = ledger.block(genesis)?;
        ledger.genesis = genesis;
        ledger.chain = block.chain;
        Ok(ledger)
    }

    pub(crate) fn with_repo(
        mut repo: gix::Repository,
        path: &Path,
        chunks: Arc<Store>,
        chain: String,
        genesis: Option<BlockId>,
    ) -> Self {
        prepare_repo(&mut repo);
        Self {
            packs_seen: Cell::new(crate::pack::packs_changed_at(path)),
            repo: RefCell::new(repo),
            path: path.to_path_buf(),
            chunks,
            chain,
            genesis: genesis.unwrap_or(BlockId::from_sha1([0; 20])),
            durable: true,
            nodes: RefCell::new(HashMap::new()),
        }
    }

    /// Turns off the syncs that make each written block durable before its
    /// branch moves (for tests and throwaway ledgers only).
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chain id.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The genesis block.
    pub fn genesis(&self) -> BlockId {
        self.genesis
    }

    /// The chunkstore large values live in.
    pub fn chunks(&self) -> &Arc<Store> {
        &self.chunks
    }

    pub(crate) fn repo(&self) -> std::cell::Ref<'_, gix::Repository> {
        self.repo.borrow()
    }

    /// Opens the repository again, with a new gix object store, unless it
    /// is being read right now. Returns whether it did.
    pub(crate) fn reopen(&self) -> bool {
        if self.flush_objects().is_err() {
            return false;
        }
        let Ok(mut repo) = open_repo(&self.path) else {
            return false;
        };
        prepare_repo(&mut repo);
        match self.repo.try_borrow_mut() {
            Ok(mut current) => {
                *current = repo;
                true
            }
            Err(_) => false,
        }
    }

    // ---- blocks -------------------------------------------------------

    /// Reads a block's header.
    pub fn block(&self, id: BlockId) -> Result<Block, LedgerError> {
        let data = self.reading(|| {
            let repo = self.repo();
            let object = repo
                .try_find_object(block::oid(id))
                .map_err(git(format!("reading block {id}")))?
                .ok_or_else(|| LedgerError::NoBlock(id.to_string()))?;
            if object.kind != gix::objs::Kind::Commit {
                return Err(LedgerError::NoBlock(id.to_string()));
            }
            Ok(object.detach().data)
        })?;
        let block = parse_block(id, &data).map_err(|why| LedgerError::Malformed { id, why })?;
        self.remember(&block);
        Ok(block)
    }

    fn remember(&self, block: &Block) {
        let mut nodes = self.nodes.borrow_mut();
        if nodes.len() >= NODE_CACHE_MAX {
            nodes.clear();
        }
        nodes.insert(
            block.id,
            Node {
                parents: block.parents.clone(),
                height: block.height,
            },
        );
    }

    pub(crate) fn node(&self, id: BlockId) -> Result<Node, LedgerError> {
        if let Some(node) = self.nodes.borrow().get(&id) {
            return Ok(node.clone());
        }
        let block = self.block(id)?;
        Ok(Node {
            parents: block.parents,
            height: block.height,
        })
    }

    /// Resolves what a user typed: a branch name, a full block id, or a
    /// unique prefix of at least 4 hex digits.
    pub fn resolve(&self, name: &str) -> Result<BlockId, LedgerError> {
        if let Some(id) = self.branch(name)? {
            return Ok(id);
        }
        if let Ok(id) = name.parse::<BlockId>() {
            self.block(id)?;
            return Ok(id);
        }
        if name.len() >= 4 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let prefix = gix::hash::Prefix::from_hex(name)
                .map_err(|_| LedgerError::NoBlock(name.to_string()))?;
            if let Ok(Some(Ok(id))) = self.repo().objects.lookup_prefix(prefix, None) {
                let id = block::block_id(&id);
                self.block(id)?;
                return Ok(id);
            }
        }
        Err(LedgerError::NoBlock(name.to_string()))
    }

    /// Writes a block: applies `draft.changes` to the first parent's tree
    /// (only the changed subtrees are rewritten), records its transactions
    /// and results, signs the commit as `git commit -S` with
    /// `gpg.format=ssh` would, and makes it durable. Moves no branch.
    pub fn write_block(&self, draft: &Draft, key: &Keypair) -> Result<Block, LedgerError> {
        // Chain time never goes back (`BlockError::Time`).
        for p in &draft.parents {
            let parent = self.block(*p)?;
            if draft.time < parent.time {
                return Err(LedgerError::Draft(format!(
                    "its time {} is before its parent {}'s {}; a block's time is at least its parents'",
                    draft.time,
                    p.short(),
                    parent.time
                )));
            }
        }
        let (tree, height, chain) = self.build_tree(draft)?;
        let message = block::message_in_round(&draft.text, height, &chain, draft.round);
        let id = self.write_commit(tree, &draft.parents, &message, draft.time, Some(key))?;
        self.sync_all()?;
        let block = Block {
            id,
            tree,
            parents: draft.parents.clone(),
            height,
            chain,
            summary: draft.text.lines().next().unwrap_or_default().to_string(),
            time: draft.time,
            signer: Some(key.public()),
            round: draft.round,
        };
        self.remember(&block);
        Ok(block)
    }

    /// Writes the state tree `draft` makes (its changes applied to the
    /// first parent's tree, with its transactions and results) without a
    /// commit, and returns it with the block's height and chain: what a
    /// validator compares with a proposed block's tree after re-executing
    /// it. Checks what [`Self::write_block`] checks.
    pub fn write_tree(&self, draft: &Draft) -> Result<(ObjectId, u64, String), LedgerError> {
        let built = self.build_tree(draft)?;
        self.flush_objects()?;
        Ok(built)
    }

    /// [`Self::write_tree`], leaving its objects in memory for the pack
    /// the block's commit joins.
    fn build_tree(&self, draft: &Draft) -> Result<(ObjectId, u64, String), LedgerError> {
        let (base, height, chain) = self.check_draft(draft)?;
        let base = base.unwrap_or_else(|| ObjectId::empty_tree(gix::hash::Kind::Sha1));
        let repo = self.repo();
        let mut editor = repo
            .edit_tree(base)
            .map_err(git("loading the parent tree"))?;
        self.apply_changes(&mut editor, draft)?;
        // Every dapp whose state changes must have its dapp.toml.
        for path in draft.changes.paths.keys() {
            if let Some(rest) = path.strip_prefix(&format!("{DAPPS}/"))
                && let Some((dapp, _)) = rest.split_once(&format!("/{STATE}/"))
            {
                let toml = format!("{DAPPS}/{dapp}/{DAPP_TOML}");
                if editor.get(toml.as_str()).is_none() {
                    return Err(LedgerError::Draft(format!(
                        "dapp {dapp} has state but no {DAPP_TOML}; set it with Changes::set_dapp"
                    )));
                }
            }
        }
        let txs = self.write_blob(&jsonl(draft.txs.iter().map(String::as_str)))?;
        let result_lines: Vec<String> = draft.results.iter().map(TxResult::to_line).collect();
        let results = self.write_blob(&jsonl(result_lines.iter().map(String::as_str)))?;
        for (name, id) in [(TXS, txs), (RESULTS, results)] {
            editor
                .upsert(format!("{BLOCK}/{name}").as_str(), EntryKind::Blob, id)
                .map_err(git("writing the block directory"))?;
        }
        let tree = editor
            .write()
            .map_err(git("writing the state tree"))?
            .detach();
        Ok((tree, height, chain))
    }

    /// Checks a draft before anything is written: one result per
    /// transaction line, distinct parents, `chain.toml` for genesis and
    /// this chain's name in it, a summary line. Returns the first parent's
    /// tree, the height and the chain.
    fn check_draft(&self, draft: &Draft) -> Result<(Option<ObjectId>, u64, String), LedgerError> {
        if draft.txs.len() != draft.results.len() {
            return Err(LedgerError::Draft(format!(
                "{} transactions but {} results",
                draft.txs.len(),
                draft.results.len()
            )));
        }
        if let Some(i) = draft
            .txs
            .iter()
            .position(|l| l.is_empty() || l.contains('\n'))
        {
            return Err(LedgerError::Draft(format!(
                "transaction {} is not one line",
                i + 1
            )));
        }
        let mut height = 0;
        let mut base = None;
        for (i, parent) in draft.parents.iter().enumerate() {
            let node = self.node(*parent)?;
            height = height.max(node.height + 1);
            if i == 0 {
                base = Some(self.block(*parent)?.tree);
            }
            if draft.parents[..i].contains(parent) {
                return Err(LedgerError::Draft(format!(
                    "parent {parent} is named twice"
                )));
            }
        }
        if base.is_none() && !draft.changes.paths.contains_key(CHAIN_TOML) {
            return Err(LedgerError::Draft(
                "a genesis block needs chain.toml".into(),
            ));
        }
        let chain = match draft.changes.paths.get(CHAIN_TOML) {
            Some(Change::Put(bytes)) => ChainConfig::parse(bytes)?.chain,
            _ => self.chain.clone(),
        };
        if !self.chain.is_empty() && chain != self.chain {
            return Err(LedgerError::Draft(format!(
                "chain.toml names chain {chain}, this ledger is {}",
                self.chain
            )));
        }
        let summary_ok = draft
            .text
            .lines()
            .next()
            .is_some_and(|l| !l.is_empty() && l.len() <= block::MAX_SUMMARY);
        if !summary_ok || draft.text.ends_with('\n') {
            return Err(LedgerError::Draft(format!(
                "the summary must be one line of 1 to {} characters",
                block::MAX_SUMMARY
            )));
        }
        Ok((base, height, chain))
    }

    /// Writes each changed path into the tree being edited: large state
    /// values go to the chunk store behind a pointer.
    fn apply_changes(
        &self,
        editor: &mut gix::object::tree::Editor<'_>,
        draft: &Draft,
    ) -> Result<(), LedgerError> {
        for (path, change) in &draft.changes.paths {
            let blob = match change {
                Change::Put(bytes) => {
                    if path.starts_with(DAPPS)
                        && path.contains(&format!("/{STATE}/"))
                        && must_chunk(bytes)
                    {
                        self.store_value(&bytes[..])?.encode()
                    } else {
                        bytes.clone()
                    }
                }
                Change::Pointer(pointer) => {
                    if !self.chunks.has_manifest(&pointer.manifest)? {
                        return Err(LedgerError::Draft(format!(
                            "{path} points to manifest {}, which is not in the chunk store",
                            pointer.manifest
                        )));
                    }
                    pointer.encode()
                }
                Change::Remove => {
                    editor
                        .remove(path.as_str())
                        .map_err(git(format!("removing {path}")))?;
                    continue;
                }
            };
            let id = self.write_blob(&blob)?;
            editor
                .upsert(path.as_str(), EntryKind::Blob, id)
                .map_err(git(format!("setting {path}")))?;
        }
        Ok(())
    }

    /// Writes a commit as `git commit -S` with `gpg.format=ssh` does: the
    /// SSH signature (namespace `git`) over the unsigned commit goes into
    /// the `gpgsig` header. Unsigned when `key` is `None` (tests forge such
    /// blocks).
    pub(crate) fn write_commit(
        &self,
        tree: ObjectId,
        parents: &[BlockId],
        message: &str,
        time: i64,
        key: Option<&Keypair>,
    ) -> Result<BlockId, LedgerError> {
        let email = key.map_or_else(String::new, |k| k.public().fingerprint());
        let ident = gix::actor::Signature {
            name: "utter".into(),
            email: email.into(),
            time: gix::date::Time {
                seconds: time,
                offset: 0,
            },
        };
        let mut commit = gix::objs::Commit {
            tree,
            parents: parents.iter().map(|p| block::oid(*p)).collect(),
            author: ident.clone(),
            committer: ident,
            encoding: None,
            message: message.into(),
            extra_headers: Vec::new(),
        };
        if let Some(key) = key {
            let mut unsigned = Vec::with_capacity(512);
            gix::objs::WriteTo::write_to(&commit, &mut unsigned).map_err(|source| {
                LedgerError::Io {
                    doing: "encoding a commit for",
                    path: self.path.clone(),
                    source,
                }
            })?;
            let sig = key.sign(GIT_NAMESPACE, &unsigned)?;
            commit
                .extra_headers
                .push((SIGNATURE_HEADER.into(), BString::from(sig)));
        }
        Ok(block::block_id(
            &self
                .repo()
                .write_object(&commit)
                .map_err(git("writing the block commit"))?
                .detach(),
        ))
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<ObjectId, LedgerError> {
        Ok(self
            .repo()
            .write_blob(bytes)
            .map_err(git("writing a blob"))?
            .detach())
    }

    /// Stores a large value in the chunkstore (pinned) and returns the
    /// pointer to put in a state tree.
    pub fn store_value(&self, reader: impl Read) -> Result<Pointer, LedgerError> {
        let put = self
            .chunks
            .put_observed(reader, PutOptions { pin: true }, |_| {})?;
        Ok(Pointer {
            manifest: put.id,
            size: put.manifest.size(),
        })
    }

    /// Writes the objects held in memory as a pack, and makes every object
    /// written so far durable (one `syncfs` of the repository's
    /// filesystem) when the ledger is durable.
    pub(crate) fn sync_all(&self) -> Result<(), LedgerError> {
        self.flush_objects()?;
        if !self.durable {
            return Ok(());
        }
        sync_objects(&self.path.join("objects"))
    }

    /// Whether writes are synced to disk (see [`Ledger::set_durable`]).
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    // ---- branches ---------------------------------------------------------

    pub(crate) fn ref_target(&self, name: &str) -> Result<Option<BlockId>, LedgerError> {
        // The ledger's refs name commits directly: their id needs no object
        // read. Anything else is peeled, through `reading`.
        self.reading(|| {
            let repo = self.repo();
            let reference = repo
                .try_find_reference(name)
                .map_err(git(format!("reading {name}")))?;
            match reference {
                None => Ok(None),
                Some(mut r) => {
                    if let Some(id) = r.target().try_id() {
                        return Ok(Some(block::block_id(id)));
                    }
                    Ok(Some(block::block_id(
                        &r.peel_to_id()
                            .map_err(git(format!("reading {name}")))?
                            .detach(),
                    )))
                }
            }
        })
    }

    pub(crate) fn set_ref(
        &self,
        name: &str,
        id: BlockId,
        expected: Option<BlockId>,
    ) -> Result<(), LedgerError> {
        let constraint = match expected {
            None => PreviousValue::MustNotExist,
            Some(old) => {
                PreviousValue::MustExistAndMatch(gix::refs::Target::Object(block::oid(old)))
            }
        };
        // What a ref names is on disk before the ref moves (other readers
        // of the repository do not see this ledger's memory).
        self.flush_objects()?;
        self.repo()
            .reference(name, block::oid(id), constraint, "utter")
            .map_err(git(format!("updating {name}")))?;
        if self.durable {
            let file = self.path.join(name);
            for path in [file.as_path(), file.parent().unwrap_or(&self.path)] {
                std::fs::File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(|source| LedgerError::Io {
                        doing: "syncing",
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Removes the lock files a process killed in the middle of a ref
    /// update leaves (`refs/**/*.lock`, `packed-refs.lock`, `HEAD.lock`);
    /// with one left, every later update of that ref fails. Also removes
    /// the temporary files of a pack write it interrupted
    /// (`objects/pack/*.tmp`), which no reader ever looks at. The caller
    /// must be the repository's only writer: `utter-node` calls it once the
    /// data dir's store is open for writing, which RocksDB's own lock makes
    /// exclusive. A ref update is a rename of its lock file, so a lock left
    /// behind never holds anything the ref does not: removing it loses
    /// nothing. Returns how many were removed.
    pub fn clear_stale_locks(&self) -> Result<usize, LedgerError> {
        let mut removed = 0;
        let mut dirs = vec![self.path.join("refs")];
        let mut files = vec![
            self.path.join("packed-refs.lock"),
            self.path.join("HEAD.lock"),
        ];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(LedgerError::Io {
                        doing: "listing",
                        path: dir,
                        source,
                    });
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "lock") {
                    files.push(path);
                }
            }
        }
        // Packs and indexes a killed writer left half-written (`crate::pack`).
        if let Ok(entries) = std::fs::read_dir(self.path.join("objects/pack")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == crate::pack::TMP) {
                    files.push(path);
                }
            }
        }
        for path in files {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LedgerError::Io {
                        doing: "removing a stale lock",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }

    /// Where branch `name` points, if it exists.
    pub fn branch(&self, name: &str) -> Result<Option<BlockId>, LedgerError> {
        if gix::validate::reference::name_partial(name.as_bytes().as_bstr()).is_err() {
            return Ok(None);
        }
        self.ref_target(&format!("refs/heads/{name}"))
    }

    /// Creates branch `name` at `id`; refuses if it exists.
    pub fn create_branch(&self, name: &str, id: BlockId) -> Result<(), LedgerError> {
        layout::check_name("branch", name)?;
        self.block(id)?;
        self.set_ref(&format!("refs/heads/{name}"), id, None)
    }

    /// Moves branch `name` from `expected` to `id`, which must descend from
    /// it: branches only move forward. Refuses if the branch moved since
    /// the caller read it.
    pub fn advance(&self, name: &str, expected: BlockId, id: BlockId) -> Result<(), LedgerError> {
        let current = self
            .branch(name)?
            .ok_or_else(|| LedgerError::NoBranch(name.to_string()))?;
        let refuse = |found: BlockId, why| LedgerError::Branch {
            branch: name.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
            why,
        };
        if current != expected {
            return Err(refuse(current, "it moved since it was read"));
        }
        if !self.is_ancestor(expected, id)? {
            return Err(refuse(current, "the new block does not descend from it"));
        }
        self.set_ref(&format!("refs/heads/{name}"), id, Some(expected))
    }

    /// All branches and where they point, sorted by name.
    pub fn branches(&self) -> Result<Vec<(String, BlockId)>, LedgerError> {
        let repo = self.repo();
        let platform = repo.references().map_err(git("listing branches"))?;
        let mut out = Vec::new();
        for reference in platform.local_branches().map_err(git("listing branches"))? {
            let mut reference = reference.map_err(|e| LedgerError::Git {
                doing: "listing branches".into(),
                source: gix::Error::from_error(e),
            })?;
            let name = reference.name().shorten().to_string();
            let id = reference
                .peel_to_id()
                .map_err(git(format!("reading branch {name}")))?;
            out.push((name, block::block_id(&id)));
        }
        out.sort();
        Ok(out)
    }

    // ---- state --------------------------------------------------------

    /// The id of the tree at `path` inside `tree` (`None` when there is
    /// no directory there): a dapp's state subtree, for instance.
    pub fn subtree(&self, tree: ObjectId, path: &str) -> Result<Option<ObjectId>, LedgerError> {
        Ok(match self.entry_at(tree, path)? {
            Some((EntryKind::Tree, id)) => Some(id),
            _ => None,
        })
    }

    fn entry_at(
        &self,
        tree: ObjectId,
        path: &str,
    ) -> Result<Option<(EntryKind, ObjectId)>, LedgerError> {
        self.reading(|| {
            let repo = self.repo();
            let tree = repo.find_tree(tree).map_err(git("reading a state tree"))?;
            let entry = tree
                .lookup_entry_by_path(path)
                .map_err(git(format!("looking up {path}")))?;
            Ok(entry.map(|e| (e.mode().kind(), e.object_id())))
        })
    }

    /// Opens the value at tree `path` (like `dapps/doors/state/front`) in
    /// `block`, resolving a pointer blob to its chunkstore bytes. `None`
    /// when there is no file there.
    pub fn open_value(
        &self,
        block: &Block,
        path: &str,
    ) -> Result<Option<ValueReader>, LedgerError> {
        self.open_value_in(block.tree, path)
    }

    /// [`Self::open_value`] in any tree (a state subtree, for instance).
    pub fn open_value_in(
        &self,
        tree: ObjectId,
        path: &str,
    ) -> Result<Option<ValueReader>, LedgerError> {
        let Some((kind, id)) = self.entry_at(tree, path)? else {
            return Ok(None);
        };
        if kind != EntryKind::Blob {
            return Ok(None);
        }
        let blob = self.reading(|| {
            Ok(self
                .repo()
                .find_blob(id)
                .map_err(git(format!("reading {path}")))?
                .take_data())
        })?;
        match Pointer::decode(&blob) {
            Some(pointer) => Ok(Some(ValueReader::Chunked(Box::new(
                self.chunks.get(&pointer.manifest)?,
            )))),
            None => Ok(Some(ValueReader::Inline(io::Cursor::new(blob)))),
        }
    }

    /// Reads the whole value at tree `path` in `block` (see
    /// [`Self::open_value`]).
    pub fn read_value(&self, block: &Block, path: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        self.read_value_in(block.tree, path)
    }

    /// [`Self::read_value`] in any tree.
    pub fn read_value_in(
        &self,
        tree: ObjectId,
        path: &str,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        let Some(mut reader) = self.open_value_in(tree, path)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(usize::try_from(reader.size()).unwrap_or(0));
        reader
            .read_to_end(&mut out)
            .map_err(|source| LedgerError::Io {
                doing: "reading a chunked value of",
                path: PathBuf::from(path),
                source,
            })?;
        Ok(Some(out))
    }

    /// Reads `dapps/<dapp>/state/<path>`.
    pub fn read_state(
        &self,
        block: &Block,
        dapp: &str,
        path: &StatePath,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        self.read_value(block, &format!("{DAPPS}/{dapp}/{STATE}/{path}"))
    }

    /// Lists the directory at tree `path` (`""` for the root).
    pub fn list(&self, block: &Block, path: &str) -> Result<Option<Vec<DirEntry>>, LedgerError> {
        let tree_id = if path.is_empty() {
            block.tree
        } else {
            match self.entry_at(block.tree, path)? {
                Some((EntryKind::Tree, id)) => id,
                _ => return Ok(None),
            }
        };
        self.list_tree(tree_id).map(Some)
    }

    /// Lists the entries of tree `tree_id`.
    pub fn list_tree(&self, tree_id: ObjectId) -> Result<Vec<DirEntry>, LedgerError> {
        self.reading(|| {
            let repo = self.repo();
            let tree = repo
                .find_tree(tree_id)
                .map_err(git(format!("reading tree {tree_id}")))?;
            let decoded = tree
                .decode()
                .map_err(git(format!("decoding tree {tree_id}")))?;
            Ok(decoded
                .entries
                .iter()
                .map(|e| DirEntry {
                    name: e.filename.to_str_lossy().into_owned(),
                    is_dir: e.mode.is_tree(),
                })
                .collect())
        })
    }

    /// The block's `chain.toml`.
    pub fn chain_config(&self, block: &Block) -> Result<ChainConfig, LedgerError> {
        let bytes = self
            .read_value(block, CHAIN_TOML)?
            .ok_or_else(|| LedgerError::Malformed {
                id: block.id,
                why: "it has no chain.toml".into(),
            })?;
        Ok(ChainConfig::parse(&bytes)?)
    }

    fn block_lines(&self, block: &Block, file: &str) -> Result<Vec<String>, LedgerError> {
        let bytes = self
            .read_value(block, &format!("{BLOCK}/{file}"))?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The transaction lines of a block (`block/txs.jsonl`).
    pub fn tx_lines(&self, block: &Block) -> Result<Vec<String>, LedgerError> {
        self.block_lines(block, TXS)
    }

    /// The result lines of a block (`block/results.jsonl`).
    pub fn result_lines(&self, block: &Block) -> Result<Vec<String>, LedgerError> {
        self.block_lines(block, RESULTS)
    }
}

/// Syncs the filesystem that holds `objects` (one syncfs for every file
/// written there).
pub(crate) fn sync_objects(objects: &Path) -> Result<(), LedgerError> {
    let dir = std::fs::File::open(objects).map_err(|source| LedgerError::Io {
        doing: "opening",
        path: objects.to_path_buf(),
        source,
    })?;
    rustix::fs::syncfs(&dir).map_err(|e| LedgerError::Io {
        doing: "syncing",
        path: objects.to_path_buf(),
        source: e.into(),
    })
}

/// Values longer than [`INLINE_MAX`], or whose bytes read as a pointer, go
/// to the chunkstore: so a stored blob that reads as a pointer always is one.
fn must_chunk(bytes: &[u8]) -> bool {
    bytes.len() > INLINE_MAX || (bytes.len() <= MAX_POINTER_LEN && Pointer::decode(bytes).is_some())
}

fn jsonl<'a>(lines: impl Iterator<Item = &'a str> + Clone) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.clone().map(|l| l.len() + 1).sum());
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Parses a block's commit (not its signature's validity).
pub(crate) fn parse_block(id: BlockId, data: &[u8]) -> Result<Block, String> {
    let commit = gix::objs::CommitRef::from_bytes(data, gix::hash::Kind::Sha1)
        .map_err(|e| format!("not a commit: {e}"))?;
    let message = block::parse_message(commit.message)?;
    let time = commit
        .time()
        .map_err(|e| format!("bad committer time: {e}"))?
        .seconds;
    let signer = commit
        .extra_headers
        .iter()
        .find(|(name, _)| *name == SIGNATURE_HEADER)
        .and_then(|(_, sig)| Signer::of_signature(&sig.to_str_lossy()).ok());
    Ok(Block {
        id,
        tree: commit.tree(),
        parents: commit.parents().map(|p| block::block_id(&p)).collect(),
        height: message.height,
        chain: message.chain,
        summary: message.summary,
        time,
        signer,
        round: message.round,
    })
}

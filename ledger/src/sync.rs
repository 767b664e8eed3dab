//! What another node needs to bring its ledger up to this one's, and what
//! arrives from one: packs of the commits a peer lacks, written and indexed
//! as git does, and the values and images new trees name.
//!
//! A pack holds, for each commit a peer lacks (parents first), the commit
//! and every tree and blob of its tree that no parent has at the same path
//! — the same walk git's pack-objects does against the peer's haves, here
//! cut short by the state trees' structure: an unchanged subtree is one
//! object id compare. Packs carry no deltas (each object zlib-compressed);
//! received packs are indexed by gix-pack, which checks every object's
//! hash, and kept (`.keep`) until the refs that name their objects move.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::objs::Kind;
use utter_chunkstore::{ManifestId, Store};

use crate::block::{self, BlockId};
use crate::cert::NOTES_REF;
use crate::layout::{DAPP_TOML, DAPPS, DappConfig, STATE};
use crate::pointer::{MAX_POINTER_LEN, Pointer};
use crate::repo::{GENESIS_REF, Ledger, LedgerError, MAIN, git};

/// Refs under which a sync keeps commits it fetched but has not yet
/// verified (so an interrupted sync does not fetch them again).
pub const FETCHED_PREFIX: &str = "refs/utter/fetched/";

/// What a pack for a peer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackPlan {
    /// The commits, parents first.
    pub commits: Vec<BlockId>,
    /// Every object, commits and their new trees and blobs, each once.
    pub objects: Vec<ObjectId>,
    /// More commits wait beyond this pack's size.
    pub more: bool,
    /// The objects' uncompressed bytes.
    pub bytes: u64,
    /// The bodies the walk read, beside `objects` (up to [`PLAN_BODIES`]
    /// bytes): the pack is written from them without reading each object
    /// a second time.
    bodies: Vec<Option<(Kind, Vec<u8>)>>,
    kept_bytes: u64,
}

/// The most object bytes a plan keeps to write its pack from; objects
/// past it are read again while the pack is written.
pub const PLAN_BODIES: u64 = 32 << 20;

/// A pack that arrived and was indexed.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// The pack file.
    pub pack: PathBuf,
    /// Its index.
    pub index: PathBuf,
    /// The `.keep` that guards it until refs name its objects.
    pub keep: Option<PathBuf>,
    /// Objects it holds.
    pub objects: u32,
}

/// The largest object a peer's pack may hold, decompressed: state values
/// above [`crate::INLINE_MAX`] live in the chunk store behind pointers, so
/// only a tree or a block's transactions come near it. A pack entry that
/// declares more (a zlib bomb: a few MiB that inflate to many GiB) is
/// refused before anything is allocated for it.
pub const MAX_OBJECT: usize = 64 << 20;

impl PackPlan {
    /// Adds an object the walk read; its body is kept while the plan's
    /// kept bodies stay under [`PLAN_BODIES`].
    fn push(&mut self, oid: ObjectId, kind: Kind, data: &[u8]) {
        let keep = self.kept_bytes + data.len() as u64 <= PLAN_BODIES;
        self.objects.push(oid);
        self.bodies.push(keep.then(|| (kind, data.to_vec())));
        if keep {
            self.kept_bytes += data.len() as u64;
        }
        self.bytes += data.len() as u64;
    }
}

/// The visitor of [`Ledger::new_objects`]: `(oid, path, len, body)`.
type Visit<'v> = &'v mut dyn FnMut(ObjectId, &[u8], u64, Option<(Kind, &[u8])>);

/// What a walk for new objects carries down the trees.
struct NewObjects<'s, 'v> {
    seen: &'s mut HashSet<ObjectId>,
    walking: Walking,
    visit: Visit<'v>,
}

/// What a walk for new objects is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walking {
    /// A pack: every object, read whole (`visit` gets its bytes).
    Pack,
    /// What lives outside git: only `dapps/NAME/dapp.toml` and what is
    /// under `dapps/NAME/state/`, lengths only.
    Content,
}

/// Whether a content walk goes to `path`.
fn content_path(path: &[u8], is_tree: bool) -> bool {
    let parts: Vec<&[u8]> = if path.is_empty() {
        Vec::new()
    } else {
        path.split(|b| *b == b'/').collect()
    };
    match parts.as_slice() {
        [] => true,
        [dapps] | [dapps, _] => is_tree && *dapps == DAPPS.as_bytes(),
        [dapps, _, toml] if *toml == DAPP_TOML.as_bytes() => !is_tree && *dapps == DAPPS.as_bytes(),
        [dapps, _, state, ..] => *dapps == DAPPS.as_bytes() && *state == STATE.as_bytes(),
    }
}

/// Indexes packs into one repository; see [`Ledger::pack_indexer`].
#[derive(Debug, Clone)]
pub struct PackIndexer {
    objects: PathBuf,
    durable: bool,
}

impl PackIndexer {
    /// Indexes a pack a peer sends, as it arrives from `pack`: gix-pack
    /// reads it whole, hashes every object and checks the trailer, and
    /// writes the pack and its index with a `.keep` into the repository.
    /// A pack that does not read, or holds an object over [`MAX_OBJECT`],
    /// is refused with nothing kept.
    pub fn index(&self, pack: &mut dyn std::io::BufRead) -> Result<Indexed, LedgerError> {
        let pack_dir = self.objects.join("pack");
        std::fs::create_dir_all(&pack_dir).map_err(io("creating", &pack_dir))?;
        let outcome = gix_pack::Bundle::write_to_directory(
            pack,
            Some(&pack_dir),
            &mut gix::progress::Discard,
            &AtomicBool::new(false),
            None::<gix::objs::find::Never>,
            gix::hash::Kind::Sha1,
            gix_pack::bundle::write::Options {
                alloc_limit_bytes: Some(MAX_OBJECT),
                ..Default::default()
            },
        )
        .map_err(|source| LedgerError::Git {
            doing: "indexing a pack a peer sent".into(),
            source: gix::Error::from_error(source),
        })?;
        let (Some(data), Some(index)) = (outcome.data_path, outcome.index_path) else {
            return Err(LedgerError::Draft(
                "the indexed pack was not written".into(),
            ));
        };
        if self.durable {
            crate::repo::sync_objects(&self.objects)?;
        }
        Ok(Indexed {
            pack: data,
            index,
            keep: outcome.keep_path,
            objects: outcome.index.num_objects,
        })
    }
}

/// What new trees name that lives outside git.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    /// Chunkstore manifests of large state values (pointer blobs).
    pub manifests: BTreeSet<ManifestId>,
    /// Image digests `dapp.toml` files name (`sha256:…`).
    pub images: BTreeSet<String>,
}

fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LedgerError + 'a {
    move |source| LedgerError::Io {
        doing,
        path: path.to_path_buf(),
        source,
    }
}

impl Ledger {
    /// Makes a bare repository at `path` for a ledger that will arrive from
    /// a peer: chain `chain` with genesis block `genesis` (both as the peer
    /// claims them; [`Ledger::verify`] checks the blocks once they are
    /// here). [`Ledger::finish_clone`] records the genesis.
    pub fn init_for_clone(
        path: &Path,
        chunks: Arc<Store>,
        chain: &str,
        genesis: BlockId,
    ) -> Result<Self, LedgerError> {
        if path.exists() {
            return Err(LedgerError::Exists(path.to_path_buf()));
        }
        gix::init_bare(path).map_err(git(format!("creating {}", path.display())))?;
        std::fs::write(path.join("HEAD"), format!("ref: refs/heads/{MAIN}\n"))
            .map_err(io("writing", &path.join("HEAD")))?;
        Self::reopen_for_clone(path, chunks, chain, genesis)
    }

    /// Opens a repository [`Ledger::init_for_clone`] made.
    pub fn reopen_for_clone(
        path: &Path,
        chunks: Arc<Store>,
        chain: &str,
        genesis: BlockId,
    ) -> Result<Self, LedgerError> {
        let repo = crate::repo::open_repo(path)?;
        Ok(Self::with_repo(
            repo,
            path,
            chunks,
            chain.to_string(),
            Some(genesis),
        ))
    }

    /// Records the genesis of a cloned ledger (once its blocks verified).
    pub fn finish_clone(&self) -> Result<(), LedgerError> {
        match self.ref_target(GENESIS_REF)? {
            Some(g) if g == self.genesis() => Ok(()),
            Some(g) => Err(LedgerError::Draft(format!(
                "this ledger's genesis is {g}, not {}",
                self.genesis()
            ))),
            None => self.set_ref(GENESIS_REF, self.genesis(), None),
        }
    }

    /// The refs a node shares with peers: its branches and its certificate
    /// notes.
    pub fn shared_refs(&self) -> Result<Vec<(String, BlockId)>, LedgerError> {
        let mut refs: Vec<(String, BlockId)> = self
            .branches()?
            .into_iter()
            .map(|(name, id)| (format!("refs/heads/{name}"), id))
            .collect();
        if let Some(notes) = self.ref_target(NOTES_REF)? {
            refs.push((NOTES_REF.to_string(), notes));
        }
        Ok(refs)
    }

    /// Where any ref points (`refs/heads/…`, the notes, fetched refs).
    pub fn ref_id(&self, name: &str) -> Result<Option<BlockId>, LedgerError> {
        self.ref_target(name)
    }

    /// Moves (or creates, with `expected` `None`) a ref a sync keeps:
    /// `refs/notes/utter-certificates` or one under [`FETCHED_PREFIX`].
    /// Branches move only through [`Ledger::advance`] and
    /// [`Ledger::create_branch`].
    pub fn set_sync_ref(
        &self,
        name: &str,
        id: BlockId,
        expected: Option<BlockId>,
    ) -> Result<(), LedgerError> {
        if name != NOTES_REF && !name.starts_with(FETCHED_PREFIX) {
            return Err(LedgerError::Draft(format!(
                "{name} is not a ref a sync moves"
            )));
        }
        self.set_ref(name, id, expected)
    }

    /// The refs under [`FETCHED_PREFIX`].
    pub fn fetched(&self) -> Result<Vec<(String, BlockId)>, LedgerError> {
        let repo = self.repo();
        let platform = repo.references().map_err(git("listing refs"))?;
        let mut out = Vec::new();
        let refs = platform
            .prefixed(FETCHED_PREFIX.trim_end_matches('/'))
            .map_err(git("listing fetched refs"))?;
        for reference in refs {
            let mut reference = reference.map_err(|e| LedgerError::Git {
                doing: "listing fetched refs".into(),
                source: gix::Error::from_error(e),
            })?;
            let name = reference.name().as_bstr().to_str_lossy().into_owned();
            // Its target as written, without reading the object: a fetched
            // ref whose pack was dropped must still list, so that
            // `clear_fetched` can remove it.
            let id = match reference.target().try_id() {
                Some(id) => id.to_owned(),
                None => reference
                    .peel_to_id()
                    .map_err(git(format!("reading {name}")))?
                    .detach(),
            };
            out.push((name, block::block_id(&id)));
        }
        Ok(out)
    }

    /// Removes the refs under [`FETCHED_PREFIX`] (their commits are now
    /// named by branches, or were refused).
    pub fn clear_fetched(&self) -> Result<(), LedgerError> {
        for (name, _) in self.fetched()? {
            let path = self.path().join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &path)(e)),
            }
        }
        let _ = std::fs::remove_dir(self.path().join(FETCHED_PREFIX.trim_end_matches('/')));
        Ok(())
    }

    /// Removes the fetched refs of `tips` (a pull whose blocks the caller
    /// checks one by one, with no ref to move at the end).
    pub fn unfetch(&self, tips: &[BlockId]) -> Result<(), LedgerError> {
        for tip in tips {
            let path = self.path().join(format!("{FETCHED_PREFIX}{tip}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &path)(e)),
            }
        }
        Ok(())
    }

    /// Whether the object is here as this handle last saw the repository:
    /// no look at the pack directory on a miss, so a block another handle
    /// (a pull) wrote since may read as absent. For hot paths where a
    /// false "absent" costs only a redundant pull; a miss in [`Ledger::has`]
    /// lists the packs and may reopen the repository.
    pub fn has_here(&self, id: BlockId) -> bool {
        self.repo().objects.exists_without_refresh(&block::oid(id))
    }

    /// Whether the object is here.
    pub fn has(&self, id: BlockId) -> bool {
        self.reading(|| {
            if self.repo().has_object(block::oid(id)) {
                Ok(())
            } else {
                Err(LedgerError::NoBlock(id.to_string()))
            }
        })
        .is_ok()
    }

    /// The blocks a peer with `haves` lacks of `wants` (ancestors of wants,
    /// not of any have this ledger knows), parents first, and their
    /// objects, cut after about `max_bytes` (at least one commit).
    pub fn plan_blocks(
        &self,
        wants: &[BlockId],
        haves: &[BlockId],
        max_bytes: u64,
    ) -> Result<PackPlan, LedgerError> {
        self.reading(|| self.plan_blocks_once(wants, haves, max_bytes))
    }

    fn plan_blocks_once(
        &self,
        wants: &[BlockId],
        haves: &[BlockId],
        max_bytes: u64,
    ) -> Result<PackPlan, LedgerError> {
        let wants: Vec<BlockId> = wants.iter().copied().filter(|id| self.has(*id)).collect();
        let haves: Vec<BlockId> = haves
            .iter()
            .copied()
            .filter(|id| self.has(*id) && self.block(*id).is_ok())
            .collect();
        let commits = self.only_in(&wants, &haves)?;
        let parents =
            |id: BlockId| -> Result<Vec<BlockId>, LedgerError> { Ok(self.node(id)?.parents) };
        self.plan(&commits, parents, max_bytes)
    }

    /// The certificate notes commits a peer with notes `haves` lacks of
    /// `want` (notes commits carry no heights: the walk follows parents
    /// until it meets a have).
    pub fn plan_notes(&self, want: BlockId, haves: &[BlockId]) -> Result<PackPlan, LedgerError> {
        self.reading(|| self.plan_notes_once(want, haves))
    }

    fn plan_notes_once(&self, want: BlockId, haves: &[BlockId]) -> Result<PackPlan, LedgerError> {
        if !self.has(want) {
            return Ok(PackPlan::default());
        }
        let stop: HashSet<BlockId> = haves.iter().copied().collect();
        let mut commits = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![want];
        while let Some(id) = stack.pop() {
            if stop.contains(&id) || !seen.insert(id) {
                continue;
            }
            commits.push(id);
            stack.extend(self.notes_parents(id)?);
        }
        // Parents first: the walk met children first.
        commits.reverse();
        self.plan(&commits, |id| self.notes_parents(id), u64::MAX)
    }

    fn notes_parents(&self, id: BlockId) -> Result<Vec<BlockId>, LedgerError> {
        self.commit_parents(id)?
            .map_err(|why| LedgerError::Malformed { id, why })
    }

    fn plan(
        &self,
        commits: &[BlockId],
        parents: impl Fn(BlockId) -> Result<Vec<BlockId>, LedgerError>,
        max_bytes: u64,
    ) -> Result<PackPlan, LedgerError> {
        let mut plan = PackPlan::default();
        let mut seen: HashSet<ObjectId> = HashSet::new();
        for (i, id) in commits.iter().enumerate() {
            if i > 0 && plan.bytes >= max_bytes {
                plan.more = true;
                break;
            }
            let oid = block::oid(*id);
            seen.insert(oid);
            let repo = self.repo();
            let commit = repo
                .find_object(oid)
                .map_err(git(format!("reading object {oid}")))?;
            // The tree from the bytes just read, not a second read.
            let tree = gix::objs::CommitRef::from_bytes(&commit.data, gix::hash::Kind::Sha1)
                .map_err(|e| LedgerError::Malformed {
                    id: *id,
                    why: e.to_string(),
                })?
                .tree();
            plan.push(oid, commit.kind, &commit.data);
            let parent_trees = self.parent_trees(parents(*id)?)?;
            self.new_objects(
                tree,
                true,
                &parent_trees,
                &mut seen,
                Walking::Pack,
                &mut |oid, _, len, body| match body {
                    Some((kind, data)) => plan.push(oid, kind, data),
                    None => {
                        plan.objects.push(oid);
                        plan.bodies.push(None);
                        plan.bytes += len;
                    }
                },
            )?;
            plan.commits.push(*id);
        }
        Ok(plan)
    }

    /// The trees of those of `parents` this ledger has: what a walk for
    /// new objects compares a commit's tree against.
    fn parent_trees(&self, parents: Vec<BlockId>) -> Result<Vec<ObjectId>, LedgerError> {
        parents
            .into_iter()
            .filter(|p| self.has(*p))
            .map(|p| self.commit_tree(p))
            .collect()
    }

    fn object_len(&self, oid: ObjectId) -> Result<u64, LedgerError> {
        let header = self
            .repo()
            .find_header(oid)
            .map_err(git(format!("reading object {oid}")))?;
        Ok(header.size())
    }

    /// Visits `id` and, for a tree, what under it no parent tree has at
    /// the same path (`parents` are the objects at this path in the
    /// parents), each object once (`seen`); `visit(oid, path, len)`, the
    /// path `/`-separated from the root tree; see [`Walking`].
    fn new_objects(
        &self,
        id: ObjectId,
        is_tree: bool,
        parents: &[ObjectId],
        seen: &mut HashSet<ObjectId>,
        walking: Walking,
        visit: Visit<'_>,
    ) -> Result<(), LedgerError> {
        let mut path = Vec::new();
        let mut walk = NewObjects {
            seen,
            walking,
            visit,
        };
        self.new_objects_at(id, is_tree, parents, &mut path, &mut walk)
    }

    fn new_objects_at(
        &self,
        id: ObjectId,
        is_tree: bool,
        parents: &[ObjectId],
        path: &mut Vec<u8>,
        walk: &mut NewObjects<'_, '_>,
    ) -> Result<(), LedgerError> {
        if walk.walking == Walking::Content && !content_path(path, is_tree) {
            return Ok(());
        }
        if parents.contains(&id) || !walk.seen.insert(id) {
            return Ok(());
        }
        if !is_tree {
            if walk.walking == Walking::Pack {
                let repo = self.repo();
                let blob = repo
                    .find_object(id)
                    .map_err(git(format!("reading object {id}")))?;
                (walk.visit)(
                    id,
                    path,
                    blob.data.len() as u64,
                    Some((blob.kind, &blob.data)),
                );
            } else {
                (walk.visit)(id, path, self.object_len(id)?, None);
            }
            return Ok(());
        }
        let repo = self.repo();
        let tree = repo
            .find_tree(id)
            .map_err(git(format!("reading tree {id}")))?;
        (walk.visit)(
            id,
            path,
            tree.data.len() as u64,
            Some((Kind::Tree, &tree.data)),
        );
        let decoded = tree.decode().map_err(git(format!("decoding tree {id}")))?;
        // The parents' trees at this path, their entries borrowed by name.
        let repo = self.repo();
        let parent_trees: Vec<gix::Tree<'_>> = parents
            .iter()
            .filter_map(|p| repo.find_tree(*p).ok())
            .collect();
        let mut parent_entries: Vec<HashMap<&[u8], ObjectId>> =
            Vec::with_capacity(parent_trees.len());
        for t in &parent_trees {
            if let Ok(d) = gix::objs::TreeRef::from_bytes(&t.data, gix::hash::Kind::Sha1) {
                parent_entries.push(
                    d.entries
                        .iter()
                        .map(|e| (e.filename.as_bytes(), e.oid.to_owned()))
                        .collect(),
                );
            }
        }
        let mut at = Vec::with_capacity(parent_entries.len());
        for entry in &decoded.entries {
            let name: &[u8] = entry.filename.as_bytes();
            at.clear();
            at.extend(parent_entries.iter().filter_map(|m| m.get(name).copied()));
            let len = path.len();
            if len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            let walked =
                self.new_objects_at(entry.oid.to_owned(), entry.mode.is_tree(), &at, path, walk);
            path.truncate(len);
            walked?;
        }
        Ok(())
    }

    /// Writes `objects` as a pack (version 2, no deltas) to `out`; returns
    /// its length.
    pub fn write_pack(
        &self,
        objects: &[ObjectId],
        out: &mut dyn Write,
    ) -> Result<u64, LedgerError> {
        self.write_entries(objects, &[], out)
    }

    /// Writes a plan's objects as a pack, from the bodies its walk kept
    /// where it kept them; see [`Ledger::write_pack`].
    pub fn write_planned(&self, plan: &PackPlan, out: &mut dyn Write) -> Result<u64, LedgerError> {
        self.write_entries(&plan.objects, &plan.bodies, out)
    }

    fn write_entries(
        &self,
        objects: &[ObjectId],
        bodies: &[Option<(Kind, Vec<u8>)>],
        out: &mut dyn Write,
    ) -> Result<u64, LedgerError> {
        let count = u32::try_from(objects.len())
            .map_err(|_| LedgerError::Draft("too many objects for one pack".into()))?;
        let mut hashing = HashingWriter {
            inner: out,
            hasher: gix::hash::hasher(gix::hash::Kind::Sha1),
            len: 0,
        };
        let wire = |e: std::io::Error| LedgerError::Io {
            doing: "sending a pack from",
            path: self.path().to_path_buf(),
            source: e,
        };
        let mut head = Vec::with_capacity(12);
        head.extend_from_slice(b"PACK");
        head.extend_from_slice(&2u32.to_be_bytes());
        head.extend_from_slice(&count.to_be_bytes());
        hashing.write_all(&head).map_err(wire)?;
        let mut entry = Vec::new();
        let mut entries = crate::pack::EntryWriter::new();
        for (i, id) in objects.iter().enumerate() {
            entry.clear();
            if let Some(Some((kind, data))) = bodies.get(i) {
                entries.entry(*kind, data, &mut entry).map_err(wire)?;
            } else {
                let repo = self.repo();
                let object = repo.find_object(*id).map_err(|source| LedgerError::Git {
                    doing: format!("reading object {id} for a pack"),
                    source,
                })?;
                entries
                    .entry(object.kind, &object.data, &mut entry)
                    .map_err(wire)?;
            }
            hashing.write_all(&entry).map_err(wire)?;
        }
        let trailer = hashing.hasher.try_finalize().map_err(|e| LedgerError::Io {
            doing: "hashing a pack of",
            path: self.path().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let len = hashing.len + trailer.as_bytes().len() as u64;
        hashing.inner.write_all(trailer.as_bytes()).map_err(wire)?;
        Ok(len)
    }

    /// Indexes a pack a peer sent (the file at `pack`); see
    /// [`PackIndexer::index`].
    pub fn index_pack(&self, pack: &Path) -> Result<Indexed, LedgerError> {
        let file = std::fs::File::open(pack).map_err(io("opening", pack))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        self.pack_indexer().index(&mut reader)
    }

    /// What indexes packs into this repository, apart from it: it can
    /// index on another thread while the pack is still arriving.
    pub fn pack_indexer(&self) -> PackIndexer {
        PackIndexer {
            objects: self.path().join("objects"),
            durable: self.is_durable(),
        }
    }

    /// Makes objects of packs indexed since the repository was opened
    /// visible (gix refreshes its pack list on a miss).
    pub fn refresh(&self, any_new: BlockId) -> bool {
        self.has(any_new)
    }

    /// Drops a pack that was refused: its objects are named by no ref.
    pub fn drop_pack(&self, pack: &Indexed) {
        for path in [Some(&pack.pack), Some(&pack.index), pack.keep.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Lets a pack's objects be collected like any others once refs name
    /// them.
    pub fn release_pack(&self, pack: &Indexed) {
        if let Some(keep) = &pack.keep {
            let _ = std::fs::remove_file(keep);
        }
    }

    /// What the trees of `commits` name outside git that their parents'
    /// trees did not: pointer blobs' manifests and the images of changed
    /// `dapp.toml` files.
    pub fn new_content(&self, commits: &[BlockId]) -> Result<Content, LedgerError> {
        self.reading(|| self.new_content_once(commits))
    }

    fn new_content_once(&self, commits: &[BlockId]) -> Result<Content, LedgerError> {
        let mut content = Content::default();
        let mut seen = HashSet::new();
        let mut blobs: Vec<(ObjectId, Option<String>)> = Vec::new();
        for id in commits {
            let parents = self
                .commit_parents(*id)?
                .map_err(|why| LedgerError::Malformed { id: *id, why })?;
            let parent_trees = self.parent_trees(parents)?;
            let tree = self.commit_tree(*id)?;
            self.new_objects(
                tree,
                true,
                &parent_trees,
                &mut seen,
                Walking::Content,
                &mut |oid, path, len, _| {
                    // dapps/NAME/dapp.toml, or a small blob under
                    // dapps/NAME/state/.
                    let mut parts = path.split(|b| *b == b'/');
                    if parts.next() != Some(DAPPS.as_bytes()) {
                        return;
                    }
                    let Some(dapp) = parts.next() else {
                        return;
                    };
                    let third = parts.next();
                    let is_dapp_toml =
                        third == Some(DAPP_TOML.as_bytes()) && parts.next().is_none();
                    let is_state = third == Some(STATE.as_bytes()) && parts.next().is_some();
                    if (is_state && len <= MAX_POINTER_LEN as u64) || is_dapp_toml {
                        // The dapp's name for its dapp.toml; None for a value.
                        let config_of = is_dapp_toml.then(|| dapp.to_str_lossy().into_owned());
                        blobs.push((oid, config_of));
                    }
                },
            )?;
        }
        for (oid, config_of) in blobs {
            let repo = self.repo();
            let Ok(object) = repo.find_object(oid) else {
                continue;
            };
            if object.kind != Kind::Blob {
                continue;
            }
            if let Some(dapp) = config_of {
                if let Ok(config) = DappConfig::parse(&dapp, &object.data) {
                    content.images.insert(config.image);
                }
            } else if let Some(pointer) = Pointer::decode(&object.data) {
                content.manifests.insert(pointer.manifest);
            }
        }
        Ok(content)
    }

    /// The image every dapp at `block` names.
    pub fn images_at(&self, block: BlockId) -> Result<Vec<String>, LedgerError> {
        self.reading(|| self.images_at_once(block))
    }

    fn images_at_once(&self, block: BlockId) -> Result<Vec<String>, LedgerError> {
        let block = self.block(block)?;
        let mut out = Vec::new();
        for entry in self.list(&block, DAPPS)?.unwrap_or_default() {
            if !entry.is_dir {
                continue;
            }
            let path = format!("{DAPPS}/{}/{DAPP_TOML}", entry.name);
            if let Some(bytes) = self.read_value(&block, &path)?
                && let Ok(config) = DappConfig::parse(&entry.name, &bytes)
            {
                out.push(config.image);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: gix::hash::Hasher,
    len: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

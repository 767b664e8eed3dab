//! Proposals pushed whole: what a proposer sends beside its block so the
//! validators have it at once instead of pulling it (two connections and
//! four round trips on the sync and content protocols), and what a
//! receiver does with what it was sent.
//!
//! Both ends are plain functions over the ledger and the chunk store: the
//! caller moves the [`Proposal`] over the consensus channel. A receiver
//! trusts nothing in it: every manifest and chunk is hashed against its
//! id, only what the block's own tree names is stored, and the pack is
//! indexed by gix-pack (every object hashed). The block itself is then
//! checked by its caller like a pulled one. Anything a push cannot
//! deliver (a block whose parents are not here, one that names an image)
//! is pulled instead.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use utter_chunkstore::{ChunkId, Manifest, ManifestId, Store, StoredChunk};
use utter_formats::BlockId;
use utter_images::Images;
use utter_ledger::Ledger;

use crate::fetch::{PassError, chunk_err, store_err, with_causes};
use crate::sync::Fault;
use crate::wire::{MAX_IDS, Proposal, PushedChunk};

/// The most bytes one push carries (pack, manifests and chunks); a larger
/// block is announced and pulled.
pub const MAX_PUSH: usize = 8 << 20;

/// What to push beside `block`: the objects new under its parents and
/// the values its tree names that theirs do not. `None` when it is
/// better pulled: it names an image (images go over the content
/// protocol), it is over [`MAX_PUSH`], or its values are not all here.
pub fn proposal(
    ledger: &Ledger,
    store: &Store,
    block: BlockId,
) -> Result<Option<Proposal>, PassError> {
    let parents = ledger.block(block)?.parents;
    let plan = ledger.plan_blocks(&[block], &parents, MAX_PUSH as u64)?;
    if plan.commits != [block] || plan.more || plan.bytes > MAX_PUSH as u64 {
        return Ok(None);
    }
    let Ok(objects) = u32::try_from(plan.objects.len()) else {
        return Ok(None);
    };
    let content = ledger.new_content(&[block])?;
    if !content.images.is_empty() || content.manifests.len() > MAX_IDS {
        return Ok(None);
    }
    let mut manifests = Vec::with_capacity(content.manifests.len());
    let mut chunks = Vec::new();
    let mut bytes = 0usize;
    for id in &content.manifests {
        let Ok(manifest) = store.manifest(id) else {
            return Ok(None);
        };
        let encoded = manifest.encode();
        bytes += encoded.len();
        let ids: Vec<ChunkId> = manifest.entries().iter().map(|e| e.id).collect();
        for read in store.chunks_stored(&ids) {
            let Ok(c) = read else {
                return Ok(None);
            };
            bytes += c.stored.len();
            chunks.push(PushedChunk {
                id: c.id.0,
                len: c.len,
                stored: c.stored,
            });
        }
        if bytes > MAX_PUSH || chunks.len() > MAX_IDS {
            return Ok(None);
        }
        manifests.push((id.0, encoded));
    }
    let mut pack = Vec::with_capacity(plan.bytes as usize / 2);
    ledger.write_planned(&plan, &mut pack)?;
    if bytes + pack.len() > MAX_PUSH {
        return Ok(None);
    }
    Ok(Some(Proposal {
        block,
        objects,
        pack,
        manifests,
        chunks,
    }))
}

/// Takes in a pushed proposal: its pack into the ledger, its values into
/// the store. Returns the commits that arrived (none if the block was
/// here). A push that lies (a pack that does not read or lacks its block,
/// a manifest or chunk that is not its id, a value the block does not
/// name) is a [`Fault::Protocol`] and leaves nothing behind; one that is
/// merely not enough (the block's parents or an image are not here) is a
/// [`Fault::Driver`]: the caller pulls the block instead.
pub fn receive(
    ledger: &Ledger,
    store: &Store,
    images: &Images,
    p: &Proposal,
) -> Result<Vec<BlockId>, PassError> {
    if ledger.has(p.block) {
        return Ok(Vec::new());
    }
    let lie = |why: String| PassError::Fault(Fault::Protocol(why));
    // Manifests are hashed before anything is written.
    let mut manifests: BTreeMap<ManifestId, Manifest> = BTreeMap::new();
    for (id, encoded) in &p.manifests {
        let id = ManifestId(*id);
        if ManifestId::of(encoded) != id {
            return Err(lie(format!("manifest {id} arrived with other bytes")));
        }
        let m = Manifest::decode(encoded)
            .map_err(|e| lie(format!("manifest {id} does not decode: {e}")))?;
        manifests.insert(id, m);
    }
    let named: BTreeMap<ChunkId, u32> = manifests
        .values()
        .flat_map(|m| m.entries().iter().map(|e| (e.id, e.len)))
        .collect();
    for c in &p.chunks {
        match named.get(&ChunkId(c.id)) {
            Some(len) if *len == c.len => {}
            _ => {
                return Err(lie(format!(
                    "chunk {} is not one its manifests name",
                    ChunkId(c.id)
                )));
            }
        }
    }
    let indexed = ledger
        .pack_indexer()
        .index(&mut &p.pack[..])
        .map_err(|e| lie(format!("the pack does not read: {}", with_causes(&e))))?;
    let fail = |e: PassError| {
        if e.untrustworthy() {
            ledger.drop_pack(&indexed);
        } else {
            ledger.release_pack(&indexed);
        }
        e
    };
    if indexed.objects != p.objects {
        return Err(fail(lie(format!(
            "the pack holds {} objects, the push said {}",
            indexed.objects, p.objects
        ))));
    }
    if !ledger.refresh(p.block) {
        return Err(fail(lie(format!("the pack lacks block {}", p.block))));
    }
    let block = ledger.block(p.block).map_err(|e| fail(e.into()))?;
    if let Some(parent) = block.parents.iter().find(|q| !ledger.has(**q)) {
        return Err(fail(PassError::Fault(Fault::Driver(format!(
            "its parent {parent} is not here"
        )))));
    }
    let content = ledger.new_content(&[p.block]).map_err(|e| fail(e.into()))?;
    if let Some(extra) = manifests.keys().find(|m| !content.manifests.contains(m)) {
        return Err(fail(lie(format!(
            "manifest {extra} is not one the block names"
        ))));
    }
    if let Some(image) = content.images.iter().find(|d| images.get(d).is_err()) {
        return Err(fail(PassError::Fault(Fault::Driver(format!(
            "it names image {image}, which is not here"
        )))));
    }
    let stored = store_values(store, &content.manifests, &manifests, &p.chunks);
    stored.map_err(fail)?;
    ledger.release_pack(&indexed);
    Ok(vec![p.block])
}

/// Stores the pushed values the block names and does not have here yet,
/// each manifest pinned first (as a pull does). Every value it names must
/// be here or pushed whole, which is checked before anything is written.
fn store_values(
    store: &Store,
    names: &BTreeSet<ManifestId>,
    pushed: &BTreeMap<ManifestId, Manifest>,
    chunks: &[PushedChunk],
) -> Result<(), PassError> {
    let short = |why: String| PassError::Fault(Fault::Driver(why));
    let mut new = Vec::new();
    for id in names {
        if store.has_manifest(id).map_err(store_err)? {
            continue;
        }
        if !pushed.contains_key(id) {
            return Err(short(format!("value {id} was not pushed")));
        }
        new.push(*id);
    }
    if new.is_empty() {
        return Ok(());
    }
    let wanted: BTreeSet<ChunkId> = new
        .iter()
        .flat_map(|id| pushed[id].entries().iter().map(|e| e.id))
        .collect();
    let sent: HashSet<ChunkId> = chunks.iter().map(|c| ChunkId(c.id)).collect();
    let unsent: Vec<ChunkId> = wanted
        .iter()
        .filter(|c| !sent.contains(c))
        .copied()
        .collect();
    if let Some(c) = store.missing(&unsent).map_err(store_err)?.first() {
        return Err(short(format!("chunk {c} of a new value was not pushed")));
    }
    for id in &new {
        store.pin(id).map_err(store_err)?;
    }
    let mut seen = HashSet::new();
    let stored: Vec<StoredChunk> = chunks
        .iter()
        .filter(|c| wanted.contains(&ChunkId(c.id)) && seen.insert(c.id))
        .map(|c| StoredChunk {
            id: ChunkId(c.id),
            len: c.len,
            stored: c.stored.clone(),
        })
        .collect();
    let written = store
        .put_chunks_stored(stored)
        .map_err(chunk_err)
        .and_then(|_| {
            for id in &new {
                store
                    .put_manifest(&pushed[id].encode())
                    .map_err(store_err)?;
            }
            Ok(())
        });
    if written.is_err() {
        for id in &new {
            let _ = store.unpin(id);
        }
    }
    written
}

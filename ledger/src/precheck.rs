//! Signature checks ahead of the verification walk, on a thread of their
//! own: the walk is one thread (each block needs its parents' verdicts),
//! but the cryptography in it needs nothing but the bytes. A verdict is
//! for exact bytes — a commit by its id, a transaction line by its
//! [`TxId`] — so the walk skips only a check that already passed on the
//! same bytes, and makes every other (and any failed one, for its error)
//! itself.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use gix::bstr::ByteSlice;

use crate::TxId;
use crate::block::{self, BlockId, GIT_NAMESPACE};
use crate::key::Signer;
use crate::tx;

/// Fewer blocks than this are not worth a thread.
pub(crate) const MIN_BLOCKS: usize = 64;
/// Verdicts computed ahead of the walk, at most.
const AHEAD: usize = 256;

/// What passed for one block.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    /// The commit's signature verifies with the key it names.
    pub commit: bool,
    /// Lines of `block/txs.jsonl` that pass [`tx::verify_line`] for the
    /// chain (every check but the nonce).
    pub lines: HashSet<TxId>,
}

/// The walk's end of the checks.
pub(crate) struct Prechecked {
    rx: Receiver<(BlockId, Verdicts)>,
    got: HashMap<BlockId, Verdicts>,
}

impl Prechecked {
    /// Starts checking `order` (the walk's order, or near it) on a thread
    /// of `scope`, reading through its own handle on `repo`.
    pub(crate) fn start<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        repo: gix::ThreadSafeRepository,
        order: Vec<BlockId>,
        chain: String,
    ) -> Self {
        let (tx, rx) = sync_channel(AHEAD);
        scope.spawn(move || run(repo.to_thread_local(), order, &chain, tx));
        Self {
            rx,
            got: HashMap::new(),
        }
    }

    /// The verdicts for `id`, waiting for them if they are still coming;
    /// `None` when the thread will not bring them (the walk then checks
    /// everything itself).
    pub(crate) fn take(&mut self, id: BlockId) -> Option<Verdicts> {
        loop {
            if let Some(v) = self.got.remove(&id) {
                return Some(v);
            }
            match self.rx.recv() {
                Ok((got, v)) if got == id => return Some(v),
                Ok((got, v)) => {
                    self.got.insert(got, v);
                }
                Err(_) => return None,
            }
        }
    }
}

fn run(
    repo: gix::Repository,
    order: Vec<BlockId>,
    chain: &str,
    tx: SyncSender<(BlockId, Verdicts)>,
) {
    for id in order {
        let verdicts = check(&repo, id, chain);
        if tx.send((id, verdicts)).is_err() {
            // The walk stopped.
            return;
        }
    }
}

fn check(repo: &gix::Repository, id: BlockId, chain: &str) -> Verdicts {
    let mut out = Verdicts::default();
    let Ok(object) = repo.find_object(block::oid(id)) else {
        return out;
    };
    if object.kind != gix::objs::Kind::Commit {
        return out;
    }
    if let Ok(Some((sig, signed))) =
        gix::objs::CommitRefIter::signature(&object.data, gix::hash::Kind::Sha1)
    {
        let sig = sig.to_str_lossy();
        if let Ok(signer) = Signer::of_signature(&sig) {
            out.commit = signer
                .verify(GIT_NAMESPACE, &signed.to_bstring(), &sig)
                .is_ok();
        }
    }
    let Ok(commit) = gix::objs::CommitRef::from_bytes(&object.data, gix::hash::Kind::Sha1) else {
        return out;
    };
    let Ok(tree) = repo.find_tree(commit.tree()) else {
        return out;
    };
    let Ok(Some(entry)) = tree.lookup_entry_by_path("block/txs.jsonl") else {
        return out;
    };
    let Ok(blob) = entry.object() else {
        return out;
    };
    for line in blob.data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if tx::verify_line(line, chain, |_, _| false).is_ok() {
            out.lines.insert(TxId::of_line(line));
        }
    }
    out
}

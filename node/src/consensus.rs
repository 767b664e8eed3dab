//! The node's side of proof of merge, the part that touches disk: what the
//! machine is told about a block comes from the ledger alone, and what it
//! gets back after a restart is rebuilt from the ledger and the persisted
//! vote tip, never from memory.
//!
//! - [`header`]: a block's [`Header`] from its signed commit: the round
//!   from the `Round:` trailer (none: a side block), the proposer from the
//!   signature, the transactions from `block/txs.jsonl`, a new validator set
//!   from a `chain.toml` that changed. Nothing a peer states beside the
//!   block is used, so no relay can alter a header without changing its id.
//! - [`VoteTip`]: the vote tip file, written through a rename and synced
//!   before a vote may leave ([`Action::PersistVoteTip`]).
//! - [`restore`]: the machine's [`Persisted`] from the ledger: main, the
//!   vote tip, every block reachable from main, the vote tip and the given
//!   branches (all stored blocks were verified before they were kept), and
//!   the durable mempool's ids.
//!
//! [`Action::PersistVoteTip`]: utter_consensus::Action::PersistVoteTip

use std::path::{Path, PathBuf};
use std::sync::Arc;

use utter_consensus::{Header, Kind, NodeId, Persisted, TxId, Validators};
use utter_ledger::{Block, BlockId, Ledger, LedgerError, MAIN};

/// Why the consensus state could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The vote tip file.
    #[error("cannot {what} the vote tip {}: {source}", path.display())]
    Io {
        /// Reading or writing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The vote tip file holds something that is not a block id, or a
    /// block this ledger does not have: the node must not vote until an
    /// operator looks (voting against a lost tip could fork the chain).
    #[error(
        "the vote tip {} is damaged ({why}); this validator must not vote until it is restored",
        path.display()
    )]
    DamagedTip {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The machine's header of `block`, read from the signed commit alone.
/// `id_of` numbers keys (`ssh-ed25519 …`); `None` when the signer has no
/// number (a key no validator set or device list names).
pub fn header(
    ledger: &Ledger,
    block: &Block,
    id_of: impl Fn(&str) -> Option<NodeId>,
) -> Result<Option<Header>, ConsensusError> {
    let Some(signer) = block.signer.as_ref() else {
        return Ok(None);
    };
    let Some(proposer) = id_of(&signer.to_openssh()) else {
        return Ok(None);
    };
    let validators = ledger
        .set_change(block)?
        .map(|config| Arc::new(Validators::from_config(&config, &id_of)));
    let txs = ledger.tx_lines(block)?.iter().map(TxId::of_line).collect();
    Ok(Some(Header {
        id: block.id,
        parents: block.parents.clone(),
        round: block.round.unwrap_or(0),
        proposer,
        kind: if block.round.is_some() {
            Kind::Proposal
        } else {
            Kind::Side
        },
        txs,
        validators,
    }))
}

/// A validator's vote tip on disk: the last block it voted for.
#[derive(Debug, Clone)]
pub struct VoteTip {
    path: PathBuf,
}

impl VoteTip {
    /// The vote tip kept at `path` (a data dir's `vote-tip`).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `block` as the tip through a rename and syncs the file and
    /// its directory: when this returns, a crash keeps this tip or a later
    /// one, never an earlier one.
    pub fn persist(&self, block: BlockId) -> Result<(), ConsensusError> {
        let io = |what, source| ConsensusError::Io {
            what,
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{block}\n")).map_err(|e| io("write", e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("sync", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))
    }

    /// The persisted tip; `None` when this validator never voted.
    pub fn load(&self, ledger: &Ledger) -> Result<Option<BlockId>, ConsensusError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ConsensusError::Io {
                    what: "read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let damaged = |why: String| ConsensusError::DamagedTip {
            path: self.path.clone(),
            why,
        };
        let id: BlockId = text.trim().parse().map_err(|e| damaged(format!("{e}")))?;
        if ledger.block(id).is_err() {
            return Err(damaged(format!("block {id} is not in the ledger")));
        }
        Ok(Some(id))
    }
}

/// What the machine gets back after a restart, from the ledger: main, the
/// vote tip, every block reachable from main, the tip and `branches`
/// (parents first, all valid: a node keeps only blocks it verified), and
/// `mempool` (the durable pool's ids).
pub fn restore(
    ledger: &Ledger,
    tip: &VoteTip,
    branches: &[BlockId],
    mempool: Vec<TxId>,
    id_of: impl Fn(&str) -> Option<NodeId>,
) -> Result<Persisted, ConsensusError> {
    let genesis = ledger.genesis();
    let main = ledger.resolve(MAIN)?;
    let vote_tip = tip.load(ledger)?;
    let mut tips = vec![main];
    tips.extend(vote_tip);
    tips.extend_from_slice(branches);
    let mut blocks = Vec::new();
    for id in ledger.ancestors(&tips)? {
        if id == genesis {
            continue;
        }
        let block = ledger.block(id)?;
        if let Some(h) = header(ledger, &block, &id_of)? {
            blocks.push((h, true));
        }
    }
    Ok(Persisted {
        genesis,
        main,
        vote_tip,
        blocks,
        mempool,
    })
}

//! The node API's requests and answers (version 1), shared by the server
//! (`utter-node`) and this crate's client so the two cannot drift.
//!
//! ```text
//! GET  /v1/status                         → Status
//! GET  /v1/nonce?signer=KEY               → Nonce
//! POST /v1/txs          signed lines      → Submitted (one TxState per line)
//! GET  /v1/txs/ID[?wait=SECS]             → TxState (pending or committed)
//! GET  /v1/state/DAPP/PATH[?at=BLOCK]     → the file's bytes (header utter-block)
//! GET  /v1/doors/rules                    → RulesBundle
//! GET  /v1/blocks[?after=ID][&wait=SECS][&max=N] → Blocks (main, oldest first)
//! ```
//!
//! Every error is an [`ErrorBody`]: `{"code": "...", "message": "..."}`
//! with a 4xx or 5xx status; `code` is for programs, `message` for people.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utter_formats::{BlockId, TxId, TxResult};

/// The API version in every path.
pub const VERSION: &str = "v1";
/// The longest `?wait=` a node honours, seconds.
pub const MAX_WAIT: u64 = 300;
/// The most lines one `POST /v1/txs` takes.
pub const MAX_LINES: usize = 10_000;
/// The largest request body a node reads.
pub const MAX_BODY: usize = 32 << 20;
/// The most blocks one `GET /v1/blocks` answers with.
pub const MAX_BLOCKS: usize = 1_000;
/// The header of a state read that names the block it was read at.
pub const BLOCK_HEADER: &str = "utter-block";

/// The largest image archive `POST /v1/images` takes.
pub const MAX_IMAGE: u64 = 4 << 30;

/// An image on the node: `POST /v1/images` answers with it, and
/// `GET /v1/images/DIGEST` finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The manifest digest, `sha256:…`: what a deploy names.
    pub digest: String,
    /// Its layers' uncompressed size, bytes.
    pub size: u64,
    /// Bytes the upload added to the node's chunk store (0: it had every
    /// chunk already).
    #[serde(default)]
    pub new_bytes: u64,
}

/// One deployed dapp, as `GET /v1/dapps` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DappInfo {
    /// Its name on the chain.
    pub name: String,
    /// The image it runs, `sha256:…`.
    pub image: String,
    /// Keys that may upgrade or remove it (none: installed at genesis).
    pub owners: Vec<String>,
    /// The height of the block that deployed it (0: genesis).
    pub deployed_at: u64,
    /// The height of the block that last upgraded it.
    pub upgraded_at: Option<u64>,
}

/// `GET /v1/dapps`: main's dapps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dapps {
    /// The block read (main).
    pub at: BlockId,
    /// Its height.
    pub height: u64,
    /// By name.
    pub dapps: Vec<DappInfo>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The chain's name.
    pub chain: String,
    /// The node's public key, `ssh-ed25519 AAAA…`.
    pub node: String,
    /// Main's height.
    pub height: u64,
    /// Main.
    pub head: BlockId,
    /// Transactions waiting in the mempool.
    pub mempool: usize,
    /// Blocks this node made since it started.
    pub blocks_made: u64,
    /// Proof of merge on this node, when its chain has several validators
    /// and it runs with `--p2p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<ConsensusStatus>,
}

/// Proof of merge as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusStatus {
    /// Whether this node votes (else it forwards and follows).
    pub validator: bool,
    /// The machine's round (0 on a follower).
    pub round: u64,
    /// Whether this node has nothing under way: no transaction waiting,
    /// no proposal or merge left to make. A follower proposes nothing: it
    /// is always idle.
    #[serde(default)]
    pub idle: bool,
    /// Peers with an open consensus channel from this node.
    pub peers: usize,
    /// The last block this node committed, with the votes of its
    /// certificate.
    pub certified: Option<Certified>,
    /// Consensus frames this node sent since it started.
    #[serde(default)]
    pub frames_sent: u64,
    /// Their bytes.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Bytes of blocks and content it pulled from peers.
    #[serde(default)]
    pub bytes_pulled: u64,
    /// Proposals that arrived pushed whole and were taken in.
    #[serde(default)]
    pub pushes_taken: u64,
    /// Pushed proposals refused or not enough, and pulled instead.
    #[serde(default)]
    pub pushes_pulled: u64,
}

/// A committed block and how many votes certify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certified {
    /// The block.
    pub block: BlockId,
    /// Its height.
    pub height: u64,
    /// Votes in its certificate.
    pub votes: usize,
}

/// The query of `GET /v1/nonce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceQuery {
    /// The signer's public key.
    pub signer: String,
}

/// `GET /v1/nonce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nonce {
    /// The signer asked about.
    pub signer: String,
    /// The nonce its next transaction should use: above every one it used
    /// on main or has waiting in the mempool.
    pub next: u64,
}

/// Where a transaction is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum TxState {
    /// On disk in the mempool, waiting for a block.
    Pending {
        /// The transaction.
        id: TxId,
    },
    /// In a block on main.
    Committed {
        /// The transaction.
        id: TxId,
        /// The block that holds it.
        block: BlockId,
        /// That block's height.
        height: u64,
        /// What the block recorded for it.
        result: TxResult,
    },
    /// Not admitted: no block may carry it (bad signature, another chain,
    /// a used nonce, a full mempool).
    Refused {
        /// The transaction (the hash of the line as sent).
        id: TxId,
        /// Why, for people.
        error: String,
    },
}

impl TxState {
    /// The transaction's id.
    pub fn id(&self) -> TxId {
        match self {
            TxState::Pending { id }
            | TxState::Committed { id, .. }
            | TxState::Refused { id, .. } => *id,
        }
    }

    /// Its result, once committed.
    pub fn result(&self) -> Option<&TxResult> {
        match self {
            TxState::Committed { result, .. } => Some(result),
            _ => None,
        }
    }
}

/// `POST /v1/txs`: one state per line sent, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// The lines' states.
    pub txs: Vec<TxState>,
}

/// The query of `GET /v1/txs/ID`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitQuery {
    /// Wait up to this many seconds for the transaction to be committed.
    #[serde(default)]
    pub wait: u64,
}

/// The query of `GET /v1/state/DAPP/PATH`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateQuery {
    /// A block id or branch name (default: main).
    #[serde(default)]
    pub at: Option<String>,
}

/// `GET /v1/doors/rules`: what `doors::may_open` reads, as of one block of
/// main: the doors, the members and their badge hashes, the
/// certifications and the dues paid (no logs, no balances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesBundle {
    /// The block the rules are from.
    pub block: BlockId,
    /// Its height.
    pub height: u64,
    /// Its time, Unix seconds: how old the rules are.
    pub time: i64,
    /// `<dapp>/<path>` → the file's text, e.g. `doors/doors/front.json`.
    pub files: BTreeMap<String, String>,
}

/// The query of `GET /v1/blocks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksQuery {
    /// Only blocks after this one on main's first-parent line (default:
    /// the head alone).
    #[serde(default)]
    pub after: Option<BlockId>,
    /// When there are none yet, wait up to this many seconds for one.
    #[serde(default)]
    pub wait: u64,
    /// At most this many (default and cap [`MAX_BLOCKS`]); the oldest come
    /// first, so a follower asks again after the last one.
    #[serde(default)]
    pub max: Option<usize>,
}

/// One block of main, as a follower sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// The block.
    pub id: BlockId,
    /// Its height.
    pub height: u64,
    /// Its parents (more than one: a merge).
    pub parents: Vec<BlockId>,
    /// Block time, Unix seconds.
    pub time: i64,
    /// Transactions it carries.
    pub txs: usize,
    /// Its summary line.
    pub summary: String,
}

/// `GET /v1/blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    /// Blocks after `after`, oldest first.
    pub blocks: Vec<BlockInfo>,
    /// Main when the answer was made.
    pub head: BlockId,
}

/// What kind of error a node answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: a query or body that does not parse.
    BadRequest,
    /// No such endpoint.
    NotFound,
    /// The endpoint exists but not with this method.
    MethodNotAllowed,
    /// The body is larger than [`MAX_BODY`] or has more than [`MAX_LINES`]
    /// lines.
    TooLarge,
    /// No transaction with this id waits or is in a recent block.
    UnknownTx,
    /// No state file at this path.
    NoFile,
    /// No such block or branch.
    UnknownBlock,
    /// No such image on this node.
    UnknownImage,
    /// An uploaded image archive that cannot be imported.
    BadImage,
    /// `after` is not a block of main (main moved elsewhere): start again
    /// from the head.
    NotOnMain,
    /// The node could not store what was sent; nothing was kept, send again.
    Unavailable,
    /// Something failed inside the node.
    Internal,
    /// A code this client does not know (a newer node).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The HTTP status a node answers this code with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::NotFound
            | ErrorCode::UnknownTx
            | ErrorCode::NoFile
            | ErrorCode::UnknownBlock
            | ErrorCode::UnknownImage => 404,
            ErrorCode::BadImage => 422,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::NotOnMain => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal | ErrorCode::Other => 500,
        }
    }
}

/// The body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// For programs.
    pub code: ErrorCode,
    /// For people: what went wrong and what to do.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_of_states_and_errors() {
        let id = TxId::of_line("x");
        let pending = serde_json::to_string(&TxState::Pending { id }).unwrap();
        assert_eq!(pending, format!(r#"{{"status":"pending","id":"{id}"}}"#));
        let refused: TxState = serde_json::from_str(&format!(
            r#"{{"id":"{id}","status":"refused","error":"bad signature"}}"#
        ))
        .unwrap();
        assert_eq!(refused.id(), id);
        let body: ErrorBody =
            serde_json::from_str(r#"{"code":"something_new","message":"m"}"#).unwrap();
        assert_eq!(body.code, ErrorCode::Other);
        assert_eq!(
            serde_json::to_string(&ErrorBody {
                code: ErrorCode::MethodNotAllowed,
                message: "m".into()
            })
            .unwrap(),
            r#"{"code":"method_not_allowed","message":"m"}"#
        );
    }
}

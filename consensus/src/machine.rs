//! The proof-of-merge state machine: events in, actions out, `now` passed
//! in. No IO, clock, randomness or thread.
//!
//! One [`Machine`] per node. Validators vote and propose; other nodes (door
//! controllers) follow commits, forward transactions and keep their own
//! events on a side branch that proposers merge into main.
//!
//! The rules (DESIGN.md §Proof of merge):
//! - **Vote rule**: a validator votes only for a valid proposal that
//!   descends from every block it voted for before (its votes form a
//!   chain, so descending from the last one is enough), at most once per
//!   round, and asks for its vote tip to be persisted *before* the vote is
//!   sent ([`Action::PersistVoteTip`] comes first).
//! - **Commit rule**: a block with q = ⌊2n/3⌋+1 votes from distinct
//!   validators is committed; main only moves forward to a descendant.
//! - **Merges heal splits**: a round's leader proposes over the maximal
//!   blocks among main, every validator's latest vote and the side branches
//!   not yet merged; when there is more than one, the proposal is a merge
//!   block, which descends from all of them, so every honest validator may
//!   vote for it.
//! - **Rounds**: leader(r) = validators\[r mod n\]; a round that does not
//!   commit times out (the timeout doubles per failed round, capped), so
//!   progress never depends on one node. A commit of a block proposed in
//!   round r moves everyone to round r+1; so does a validator's own vote
//!   for it (pipelining: the next leader builds over the voted block while
//!   its votes arrive), while rounds are in step and no set change is
//!   under way.
//! - **Validator-set changes**: a block is certified by the [`Validators`]
//!   of its parents' state with the highest epoch. A governance
//!   transaction moves the state to a *joint* set (the new validators, and
//!   the old ones as `outgoing`, each needing its own quorum); a second one,
//!   approved once the first is committed, drops the outgoing set. Every
//!   two sets that follow each other share a set, so their quorums share an
//!   honest validator (ARCHITECTURE.md has the argument).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::mempool::Mempool;

pub use utter_formats::{BlockId, TxId};

/// A node: validators and other nodes share one numbering.
pub type NodeId = u32;

/// What kind of block a header is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A round's proposal by its leader: the only kind validators vote for.
    Proposal,
    /// A block on a node's own branch (a door controller's events), signed
    /// by its device key; merged into main by a proposal.
    Side,
}

/// Who certifies blocks: the validators a block's state names
/// (`chain.toml`), numbered by the epoch every change bumps.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Validators {
    /// 0 at genesis; each change adds one.
    pub epoch: u64,
    /// The validators, in leader order (see [`Validators::leader`]).
    pub members: Vec<NodeId>,
    /// Votes of members a block needs.
    pub quorum: usize,
    /// While a change is under way, the set before it; a block then needs
    /// `outgoing_quorum` of these as well. Empty otherwise.
    pub outgoing: Vec<NodeId>,
    /// Votes of outgoing validators a block needs (0 when none).
    pub outgoing_quorum: usize,
}

impl Validators {
    /// A set with q = ⌊2n/3⌋ + 1 and no change under way.
    pub fn new(members: Vec<NodeId>) -> Self {
        Self {
            epoch: 0,
            quorum: 2 * members.len() / 3 + 1,
            members,
            outgoing: Vec::new(),
            outgoing_quorum: 0,
        }
    }

    /// The set a governance transaction moves this state to: `members`
    /// certify together with the current members as `outgoing`, unless
    /// `members` are the current members (that completes a change).
    pub fn changed_to(&self, members: Vec<NodeId>) -> Self {
        let mut next = Self::new(members);
        next.epoch = self.epoch + 1;
        let (mut a, mut b) = (next.members.clone(), self.members.clone());
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            next.outgoing = self.members.clone();
            next.outgoing_quorum = self.quorum;
        }
        next
    }

    /// The set a `chain.toml` names, each key numbered by `id_of` (a key
    /// without a number is left out; its votes could not arrive).
    pub fn from_config(
        config: &utter_formats::ChainConfig,
        id_of: impl Fn(&str) -> Option<NodeId>,
    ) -> Self {
        let ids = |ms: &[utter_formats::Member]| -> Vec<NodeId> {
            ms.iter().filter_map(|m| id_of(&m.key)).collect()
        };
        Self {
            epoch: config.epoch,
            members: ids(&config.validators),
            quorum: config.quorum as usize,
            outgoing: ids(&config.outgoing),
            outgoing_quorum: config.outgoing_quorum as usize,
        }
    }

    /// Whether `node` votes under this set (a member or an outgoing one).
    pub fn includes(&self, node: NodeId) -> bool {
        self.members.contains(&node) || self.outgoing.contains(&node)
    }

    /// Whether these voters certify a block: the quorum of the members,
    /// and of the outgoing set while a change is under way.
    pub fn certified_by(&self, voters: &BTreeSet<NodeId>) -> bool {
        let count = |set: &[NodeId]| set.iter().filter(|v| voters.contains(v)).count();
        count(&self.members) >= self.quorum.max(1) && count(&self.outgoing) >= self.outgoing_quorum
    }

    /// The round's leader: members then outgoing ones take turns, so every
    /// validator whose vote counts also leads rounds (a validator ahead in
    /// rounds brings the others up by proposing in its own).
    pub fn leader(&self, round: u64) -> Option<NodeId> {
        let extra = self.outgoing.iter().filter(|o| !self.members.contains(o));
        let n = (self.members.len() + extra.clone().count()) as u64;
        let i = (round % n.max(1)) as usize;
        self.members.iter().chain(extra).nth(i).copied()
    }
}

/// What consensus needs of a block. The block's content (its tree, the
/// transactions themselves) is the executor's business.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Header {
    /// The block's id.
    pub id: BlockId,
    /// Its parents, in the order the merge re-executes them (sorted by id).
    pub parents: Vec<BlockId>,
    /// The round it was proposed in (side blocks: 0).
    pub round: u64,
    /// Who signed it.
    pub proposer: NodeId,
    /// Proposal or side block.
    pub kind: Kind,
    /// The transactions it carries.
    pub txs: Vec<TxId>,
    /// The validator set its state names, when that is a newer epoch than
    /// every parent's (it carries a governance transaction); `None` when it
    /// keeps its parents' set. The driver reads it from the block's
    /// `chain.toml`.
    pub validators: Option<Arc<Validators>>,
}

impl Header {
    /// The header of a block taken as given, with no parents and no
    /// proposer: the genesis, or an [`Anchor`].
    pub fn root(id: BlockId) -> Self {
        Header {
            id,
            parents: Vec::new(),
            round: 0,
            proposer: NodeId::MAX,
            kind: Kind::Proposal,
            txs: Vec::new(),
            validators: None,
        }
    }
}

/// A validator's vote for a block (an SSH signature over chain, block and
/// height; the driver checks the signature before the machine sees it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Vote {
    /// The voter.
    pub voter: NodeId,
    /// The block voted for.
    pub block: BlockId,
}

/// What nodes send each other.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// A block (a proposal, a side block, or an answer to a fetch).
    Block(Header),
    /// A vote.
    Vote(Vote),
    /// A transaction for the mempools.
    Tx(TxId),
    /// "Send me this block."
    Fetch(BlockId),
}

/// An input.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A message from a peer.
    Received {
        /// The peer.
        from: NodeId,
        /// What it sent.
        message: Message,
    },
    /// The executor finished validating a block (re-execution on its
    /// parents gave the same tree, signatures and test dapps hold).
    Validated {
        /// The block.
        block: BlockId,
        /// Whether it is valid.
        valid: bool,
    },
    /// The executor built the block asked for by [`Action::Propose`].
    Proposed(Header),
    /// A transaction submitted to this node.
    LocalTx(TxId),
    /// A peer (re)connected: bring it up to date.
    PeerConnected(NodeId),
    /// These transactions left the node's pool without a block (another
    /// transaction with the same signer and nonce was committed): they
    /// are no longer work to propose.
    Dropped(Vec<TxId>),
    /// The answer to a [`Action::Fetch`] for a block the driver's ledger
    /// holds under main: committed, perhaps long ago and pruned here. It
    /// comes back as a committed entry without parents, so a late block
    /// over it (a device's branch from an old main) needs nothing older.
    Anchored(Anchor),
    /// A peer's connection ended. Nothing it said is forgotten; what it
    /// is sent meanwhile is lost, and its `PeerConnected` catches it up.
    PeerDisconnected(NodeId),
}

/// A committed block as the driver's ledger knows it ([`Event::Anchored`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Anchor {
    /// The block.
    pub block: BlockId,
    /// Its height.
    pub height: u64,
    /// The validator set its state names (`chain.toml` at the block).
    pub validators: Arc<Validators>,
}

/// An output, for the driver to carry out in order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// Send to every peer.
    Broadcast(Message),
    /// Send to one peer.
    Send {
        /// The peer.
        to: NodeId,
        /// What to send.
        message: Message,
    },
    /// Ask every peer for a block this node is missing.
    Fetch(BlockId),
    /// Validate a block whose parents are all valid (re-execute it).
    Validate(BlockId),
    /// Build and sign a block over `parents` carrying `txs`; answer with
    /// [`Event::Proposed`].
    Propose {
        /// Its parents, sorted by id (more than one: a merge).
        parents: Vec<BlockId>,
        /// The round (side blocks: 0).
        round: u64,
        /// Proposal or side block.
        kind: Kind,
        /// Transactions to execute on top of the merged state.
        txs: Vec<TxId>,
    },
    /// Persist (fsync) this validator's vote tip; the vote that follows
    /// must not leave before this is done.
    PersistVoteTip(BlockId),
    /// `block` is committed with these voters' signatures as its
    /// certificate; main moves to it.
    Commit {
        /// The new main.
        block: BlockId,
        /// The q (or more) validators whose votes certify it.
        voters: Vec<NodeId>,
    },
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub me: NodeId,
    /// The genesis validators; leader(r) = validators\[r mod n\]. Blocks
    /// whose state names another set carry it in [`Header::validators`].
    pub validators: Vec<NodeId>,
    /// The first round's timeout; it doubles per round without a commit.
    pub round_timeout: Duration,
    /// The longest round timeout.
    pub max_round_timeout: Duration,
    /// How often a non-validator cuts a side block of its events.
    pub side_interval: Duration,
    /// Heights of main's history kept in memory; what lies further below
    /// main is pruned ([`Machine::footprint`] stays flat however long the
    /// chain grows) and comes back as an [`Anchor`] when a block names it.
    pub keep: u64,
    /// Test-only weakening: vote for any valid proposal, ignoring the vote
    /// rule. Exists to show the simulator catches the safety violation
    /// this causes; not reachable from the product.
    #[cfg(test)]
    pub unsafe_ignore_vote_rule: bool,
}

impl Config {
    /// The default [`Config::keep`].
    pub const KEEP: u64 = 64;

    /// A config with utter's default timings.
    pub fn new(me: NodeId, validators: Vec<NodeId>) -> Self {
        Self {
            me,
            validators,
            round_timeout: Duration::from_millis(500),
            max_round_timeout: Duration::from_secs(8),
            side_interval: Duration::from_millis(200),
            keep: Self::KEEP,
            #[cfg(test)]
            unsafe_ignore_vote_rule: false,
        }
    }

    /// q = ⌊2n/3⌋ + 1 of the genesis validators.
    pub fn quorum(&self) -> usize {
        Validators::new(self.validators.clone()).quorum
    }
}

/// What a node keeps on disk and gets back after a crash: the blocks
/// (in the ledger), main, its vote tip, its mempool and its side branch.
#[derive(Clone, Debug)]
pub struct Persisted {
    /// The genesis block, valid and committed by definition.
    pub genesis: BlockId,
    /// Main as last committed.
    pub main: BlockId,
    /// This validator's last vote, persisted before it was sent.
    pub vote_tip: Option<BlockId>,
    /// Every block stored, with whether it was found valid.
    pub blocks: Vec<(Header, bool)>,
    /// Transactions accepted but not yet committed.
    pub mempool: Vec<TxId>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    /// Some parents are not here yet.
    Waiting,
    /// Validation requested.
    Validating,
    Valid,
    Invalid,
}

struct Entry {
    header: Header,
    height: u64,
    status: Status,
    /// Main or one of its ancestors (a downward-closed set).
    committed: bool,
    /// The set that certifies it and the set its state names; known once
    /// its parents are valid.
    sets: Option<(Arc<Validators>, Arc<Validators>)>,
}

/// What a machine holds in memory ([`Machine::footprint`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Footprint {
    /// Blocks it knows.
    pub blocks: usize,
    /// Transaction ids in their headers.
    pub header_txs: usize,
    /// Blocks it holds votes for.
    pub voted_blocks: usize,
}

/// How many round timeouts re-fetch a missing block before it is given up.
pub const MAX_FETCHES: u32 = 3;

/// One node's consensus state.
pub struct Machine {
    cfg: Config,
    genesis: BlockId,
    blocks: BTreeMap<BlockId, Entry>,
    /// Missing block → blocks waiting for it.
    waiting: BTreeMap<BlockId, Vec<BlockId>>,
    /// Missing blocks only votes named → how many round timeouts asked
    /// for them again. After [`MAX_FETCHES`] the block and its votes are
    /// forgotten: a Byzantine vote for a block it withholds would
    /// otherwise count as work and keep every round timing out.
    fetches: BTreeMap<BlockId, u32>,
    votes: BTreeMap<BlockId, BTreeSet<NodeId>>,
    /// Each validator's highest vote seen (by height).
    latest_vote: BTreeMap<NodeId, BlockId>,
    vote_tip: Option<BlockId>,
    voted_round: Option<u64>,
    main: BlockId,
    round: u64,
    failed_rounds: u32,
    deadline: Option<Duration>,
    proposed_round: Option<u64>,
    /// The round this validator entered by voting for the one before
    /// (pipelining; see [`Machine::maybe_vote`]).
    pipelined: Option<u64>,
    proposing: bool,
    mempool: Mempool,
    /// Valid side blocks not yet under main, without a known child.
    side_heads: BTreeSet<BlockId>,
    /// This node's own side branch head (non-validators).
    my_side: Option<BlockId>,
    side_deadline: Option<Duration>,
    /// Sets named by valid blocks newer than main's (a change under way):
    /// their members act as validators before the change commits.
    later: BTreeMap<u64, Arc<Validators>>,
    /// Every node some block has named a validator; votes from others are
    /// dropped.
    known_voters: BTreeSet<NodeId>,
    /// Peers whose connection is up (as the driver last said).
    connected: BTreeSet<NodeId>,
    outbox: VecDeque<Action>,
}

impl Machine {
    /// A node starting from what it persisted (a new node: genesis only).
    pub fn new(cfg: Config, persisted: Persisted, now: Duration) -> Self {
        let genesis_header = Header::root(persisted.genesis);
        let genesis_set = Arc::new(Validators::new(cfg.validators.clone()));
        let mut m = Self {
            cfg,
            genesis: persisted.genesis,
            blocks: BTreeMap::new(),
            waiting: BTreeMap::new(),
            fetches: BTreeMap::new(),
            votes: BTreeMap::new(),
            latest_vote: BTreeMap::new(),
            vote_tip: persisted.vote_tip,
            voted_round: None,
            main: persisted.genesis,
            round: 0,
            failed_rounds: 0,
            deadline: None,
            proposed_round: None,
            pipelined: None,
            proposing: false,
            mempool: persisted.mempool.into_iter().collect(),
            side_heads: BTreeSet::new(),
            my_side: None,
            side_deadline: None,
            later: BTreeMap::new(),
            known_voters: genesis_set.members.iter().copied().collect(),
            connected: BTreeSet::new(),
            outbox: VecDeque::new(),
        };
        m.blocks.insert(
            m.genesis,
            Entry {
                header: genesis_header,
                height: 0,
                status: Status::Valid,
                committed: true,
                sets: Some((genesis_set.clone(), genesis_set)),
            },
        );
        // Stored blocks come back in an order where parents precede
        // children (the ledger is a DAG); validity was decided before.
        for (header, valid) in persisted.blocks {
            if m.blocks.contains_key(&header.id) {
                continue;
            }
            let height = m.height_over(&header.parents).unwrap_or(0);
            let id = header.id;
            let status = if valid {
                Status::Valid
            } else {
                Status::Invalid
            };
            let sets = if valid { m.sets_over(&header) } else { None };
            m.learn_voters(&header);
            m.blocks.insert(
                id,
                Entry {
                    header,
                    height,
                    status,
                    committed: false,
                    sets,
                },
            );
            if valid {
                m.note_valid_side(id);
            }
        }
        if m.blocks.contains_key(&persisted.main) {
            m.main = persisted.main;
            m.mark_committed(persisted.main);
        }
        let valid: Vec<BlockId> = m
            .blocks
            .iter()
            .filter(|(_, e)| e.status == Status::Valid)
            .map(|(id, _)| *id)
            .collect();
        for id in valid {
            m.note_set(id);
        }
        if let Some(tip) = m.vote_tip {
            m.voted_round = m.blocks.get(&tip).map(|e| e.header.round);
            m.round = m.voted_round.unwrap_or(0);
            // Its own vote counts towards the tip's certificate (the others'
            // come again with their re-announcements).
            m.votes.entry(tip).or_default().insert(m.cfg.me);
            m.latest_vote.insert(m.cfg.me, tip);
        }
        let merged: Vec<BlockId> = m
            .side_heads
            .iter()
            .filter(|h| m.is_committed(**h))
            .copied()
            .collect();
        for h in merged {
            m.side_heads.remove(&h);
        }
        if !m.is_validator() {
            m.my_side = m
                .blocks
                .values()
                .filter(|e| e.header.kind == Kind::Side && e.header.proposer == m.cfg.me)
                .max_by_key(|e| e.height)
                .map(|e| e.header.id);
        }
        m.prune();
        m.arm(now);
        m
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.me
    }

    /// Whether this node is a validator: a member (or outgoing member) of
    /// the set main's state names, or of a newer one a valid block names.
    pub fn is_validator(&self) -> bool {
        let me = self.cfg.me;
        self.current().includes(me) || self.later.values().any(|v| v.includes(me))
    }

    /// The validator set main's state names: it certifies the blocks built
    /// on main that carry no change.
    pub fn validators(&self) -> &Validators {
        self.blocks
            .get(&self.main)
            .and_then(|e| e.sets.as_ref())
            .map(|(_, state)| &**state)
            .expect("main is a valid block, so its sets are known")
    }

    fn current(&self) -> &Validators {
        self.validators()
    }

    /// The state set with the highest epoch among `parents` (all valid):
    /// it certifies a block over them. `None` when a parent's sets are not
    /// known or two parents name different sets at that epoch (two changes
    /// approved over one state: a Byzantine quorum of approvals).
    fn top_set(&self, parents: &[BlockId]) -> Option<Arc<Validators>> {
        let mut top: Option<&Arc<Validators>> = None;
        for p in parents {
            let (_, state) = self.blocks.get(p)?.sets.as_ref()?;
            match top {
                Some(t) if t.epoch > state.epoch => {}
                Some(t) if t.epoch == state.epoch => {
                    if **t != **state {
                        return None;
                    }
                }
                _ => top = Some(state),
            }
        }
        top.cloned()
    }

    /// A block's certifying set and the set its state names; `None` when
    /// [`Machine::top_set`] is, or when the header names a set that is not
    /// newer than its parents'.
    fn sets_over(&self, header: &Header) -> Option<(Arc<Validators>, Arc<Validators>)> {
        let certifiers = self.top_set(&header.parents)?;
        let state = match &header.validators {
            None => certifiers.clone(),
            Some(v) if v.epoch > certifiers.epoch => v.clone(),
            Some(_) => return None,
        };
        Some((certifiers, state))
    }

    fn learn_voters(&mut self, header: &Header) {
        if let Some(v) = &header.validators {
            self.known_voters
                .extend(v.members.iter().chain(&v.outgoing));
        }
    }

    /// A valid block naming a set newer than main's: its members start
    /// acting as validators (arming round timers) before it commits.
    fn note_set(&mut self, id: BlockId) {
        let Some((_, state)) = self.blocks.get(&id).and_then(|e| e.sets.clone()) else {
            return;
        };
        if state.epoch > self.current().epoch {
            self.later.entry(state.epoch).or_insert(state);
        }
    }

    /// The committed head.
    pub fn main(&self) -> BlockId {
        self.main
    }

    /// The current round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// This validator's last vote.
    pub fn vote_tip(&self) -> Option<BlockId> {
        self.vote_tip
    }

    /// Whether this machine has nothing under way: no transaction
    /// waiting, no proposal being built, no vote or side branch left to
    /// merge and no block missing. With no new input an idle machine
    /// proposes nothing.
    pub fn idle(&self) -> bool {
        !self.proposing && !self.has_work()
    }

    /// Transactions waiting for a block.
    pub fn mempool_len(&self) -> usize {
        self.mempool.len()
    }

    /// What this machine holds in memory: blocks, transaction ids in their
    /// headers (committed blocks keep none), and blocks with votes.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            blocks: self.blocks.len(),
            header_txs: self.blocks.values().map(|e| e.header.txs.len()).sum(),
            voted_blocks: self.votes.len(),
        }
    }

    /// This node's side-branch head, if it keeps one.
    pub fn side_head(&self) -> Option<BlockId> {
        self.my_side
    }

    /// Whether `a` is `b` or descends from it, as far as this node knows.
    pub fn descends(&self, a: BlockId, b: BlockId) -> bool {
        if a == b {
            return true;
        }
        let Some(target) = self.blocks.get(&b) else {
            return false;
        };
        let floor = target.height;
        let mut stack = vec![a];
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            let Some(e) = self.blocks.get(&x) else {
                continue;
            };
            for p in &e.header.parents {
                if *p == b {
                    return true;
                }
                if self.blocks.get(p).is_some_and(|pe| pe.height > floor) && seen.insert(*p) {
                    stack.push(*p);
                }
            }
        }
        false
    }

    /// The vote rule's "descends from `tip`": a committed tip lies under
    /// main, so a block over main descends from it however far below the
    /// kept history it is.
    fn descends_voted(&self, id: BlockId, tip: BlockId) -> bool {
        self.descends(id, tip) || (self.is_committed(tip) && self.descends(id, self.main))
    }

    /// Whether `id` is main or an ancestor of it.
    pub fn is_committed(&self, id: BlockId) -> bool {
        self.blocks.get(&id).is_some_and(|e| e.committed)
    }

    /// Marks `id` and its not yet committed ancestors committed; returns
    /// their transactions.
    fn mark_committed(&mut self, id: BlockId) -> Vec<TxId> {
        let mut txs = Vec::new();
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            let Some(e) = self.blocks.get_mut(&x) else {
                continue;
            };
            if e.committed {
                continue;
            }
            e.committed = true;
            // A committed block's transactions are never read again (what
            // is proposed looks only at uncommitted ancestry): memory per
            // committed block stays a header without them. A peer asking
            // for the block gets it from the ledger, not from here.
            txs.append(&mut e.header.txs);
            e.header.txs.shrink_to_fit();
            stack.extend(e.header.parents.iter().copied());
        }
        txs
    }

    /// A committed block from the driver's ledger, for a block that names
    /// it: a committed, valid entry without parents.
    fn on_anchored(&mut self, now: Duration, a: Anchor) {
        if self.blocks.contains_key(&a.block) {
            return;
        }
        self.blocks.insert(
            a.block,
            Entry {
                header: Header::root(a.block),
                height: a.height,
                status: Status::Valid,
                committed: true,
                sets: Some((a.validators.clone(), a.validators)),
            },
        );
        self.fetches.remove(&a.block);
        self.wake_children(now, a.block);
    }

    /// Forgets what lies more than `keep` heights below main: committed
    /// blocks, and proposals beside main that no one's latest vote or
    /// this node's vote tip names (a block still named stays, so a merge
    /// can bring its voter back). Side blocks stay until they are merged,
    /// however low: a device's branch built on an old main is low and
    /// still to be merged. A block that later names a forgotten committed
    /// one gets it back as an [`Anchor`].
    fn prune(&mut self) {
        let Some(floor) = self
            .blocks
            .get(&self.main)
            .map(|e| e.height.saturating_sub(self.cfg.keep))
        else {
            return;
        };
        let named: BTreeSet<BlockId> = self
            .latest_vote
            .values()
            .chain(self.vote_tip.iter())
            .chain(self.side_heads.iter())
            .chain([&self.main, &self.genesis])
            .copied()
            .collect();
        let gone: BTreeSet<BlockId> = self
            .blocks
            .iter()
            .filter(|(id, e)| {
                e.height < floor
                    && !named.contains(id)
                    && (e.committed || e.header.kind == Kind::Proposal)
            })
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return;
        }
        self.blocks.retain(|id, _| !gone.contains(id));
        self.votes.retain(|id, _| !gone.contains(id));
        for children in self.waiting.values_mut() {
            children.retain(|c| !gone.contains(c));
        }
        self.waiting.retain(|_, children| !children.is_empty());
        if self.my_side.is_some_and(|s| gone.contains(&s)) {
            self.my_side = None;
        }
    }

    /// When [`Machine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match (self.deadline, self.side_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next action, in the order they must be carried out.
    pub fn poll(&mut self) -> Option<Action> {
        self.outbox.pop_front()
    }

    /// Every pending action, in order.
    pub fn drain(&mut self) -> std::collections::vec_deque::Drain<'_, Action> {
        self.outbox.drain(..)
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Duration, event: Event) {
        match event {
            Event::Received { from, message } => self.on_message(now, from, message),
            Event::Validated { block, valid } => self.on_validated(now, block, valid),
            Event::Proposed(header) => self.on_proposed(now, header),
            Event::LocalTx(tx) => {
                if self.mempool.insert(tx) {
                    if self.is_validator() {
                        self.outbox.push_back(Action::Broadcast(Message::Tx(tx)));
                        self.maybe_propose(now);
                    } else if self.side_deadline.is_none() {
                        self.side_deadline = Some(now + self.cfg.side_interval);
                    }
                }
            }
            Event::PeerConnected(peer) => {
                self.connected.insert(peer);
                self.on_connected(peer);
            }
            Event::PeerDisconnected(peer) => {
                self.connected.remove(&peer);
            }
            Event::Anchored(anchor) => self.on_anchored(now, anchor),
            Event::Dropped(txs) => {
                for tx in txs {
                    self.mempool.remove(&tx);
                }
            }
        }
    }

    /// Fires the timers that are due.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.side_deadline.is_some_and(|d| d <= now) {
            self.side_deadline = None;
            self.cut_side_block(now);
        }
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            self.on_round_timeout(now);
        }
    }

    /// This validator's last vote, to announce again.
    fn own_vote(&self) -> Option<Vote> {
        self.vote_tip.map(|block| Vote {
            voter: self.cfg.me,
            block,
        })
    }

    /// Blocks asked for (as a parent or by a vote) that have not arrived.
    fn missing(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.waiting
            .keys()
            .filter(|b| !self.blocks.contains_key(b))
            .copied()
    }

    fn on_connected(&mut self, peer: NodeId) {
        let send = |m: &mut Self, message| m.outbox.push_back(Action::Send { to: peer, message });
        // Main, so a peer that was away fetches what it missed (votes from
        // validators it does not know yet would not bring it there).
        if self.main != self.genesis {
            let header = self.blocks[&self.main].header.clone();
            send(self, Message::Block(header));
        }
        if let Some(v) = self.own_vote() {
            send(self, Message::Vote(v));
        }
        if let Some(head) = self.my_side.filter(|h| !self.is_committed(*h)) {
            let header = self.blocks[&head].header.clone();
            send(self, Message::Block(header));
        }
        let txs: Vec<TxId> = self.mempool.iter().copied().collect();
        for tx in txs {
            send(self, Message::Tx(tx));
        }
    }

    fn on_message(&mut self, now: Duration, from: NodeId, message: Message) {
        match message {
            Message::Block(header) => self.on_block(now, from, header),
            Message::Vote(vote) => self.on_vote(now, from, vote),
            Message::Tx(tx) => {
                if !self.is_validator() {
                    return;
                }
                if self.mempool.insert(tx) {
                    self.maybe_propose(now);
                }
            }
            Message::Fetch(id) => {
                if let Some(e) = self.blocks.get(&id) {
                    self.outbox.push_back(Action::Send {
                        to: from,
                        message: Message::Block(e.header.clone()),
                    });
                }
            }
        }
    }

    fn height_over(&self, parents: &[BlockId]) -> Option<u64> {
        let mut h = 0;
        for p in parents {
            h = h.max(self.blocks.get(p)?.height + 1);
        }
        Some(h)
    }

    fn on_block(&mut self, now: Duration, _from: NodeId, header: Header) {
        if self.blocks.contains_key(&header.id) {
            return;
        }
        // Whether the proposer led its round is known once the parents are
        // (their sets say who leads).
        let malformed =
            header.parents.is_empty() || header.parents.windows(2).any(|w| w[0] >= w[1]);
        self.learn_voters(&header);
        let id = header.id;
        let missing: Vec<BlockId> = header
            .parents
            .iter()
            .filter(|p| !self.blocks.contains_key(p))
            .copied()
            .collect();
        let height = self.height_over(&header.parents).unwrap_or(0);
        self.blocks.insert(
            id,
            Entry {
                header,
                height,
                status: Status::Waiting,
                committed: false,
                sets: None,
            },
        );
        if malformed {
            self.set_status(now, id, false);
            return;
        }
        if missing.is_empty() {
            self.parents_ready(now, id);
        } else {
            for p in missing {
                let first = !self.waiting.contains_key(&p);
                self.waiting.entry(p).or_default().push(id);
                self.fetches.remove(&p);
                if first {
                    self.outbox.push_back(Action::Fetch(p));
                }
            }
            if self.deadline.is_none() {
                self.arm(now);
            }
        }
        // Blocks that were waiting for this one to arrive.
        self.wake_children(now, id);
    }

    /// Re-examines the blocks waiting on `id` (to arrive or be judged).
    fn wake_children(&mut self, now: Duration, id: BlockId) {
        self.fetches.remove(&id);
        let Some(children) = self.waiting.remove(&id) else {
            return;
        };
        for child in children {
            let Some(c) = self.blocks.get(&child) else {
                continue;
            };
            if c.status != Status::Waiting {
                continue;
            }
            let parents = c.header.parents.clone();
            if parents.iter().all(|p| self.blocks.contains_key(p)) {
                let h = self.height_over(&parents).unwrap_or(0);
                if let Some(e) = self.blocks.get_mut(&child) {
                    e.height = h;
                }
                self.parents_ready(now, child);
            }
        }
    }

    /// All parents are present: invalid if one is invalid, else validate
    /// once they are all valid (children of validating blocks wait).
    fn parents_ready(&mut self, now: Duration, id: BlockId) {
        let parents = self.blocks[&id].header.parents.clone();
        let statuses: Vec<Status> = parents.iter().map(|p| self.blocks[p].status).collect();
        if statuses.contains(&Status::Invalid) {
            self.set_status(now, id, false);
        } else if statuses.iter().all(|s| *s == Status::Valid) {
            // A proposal must come from its round's leader under the set
            // that certifies it.
            let header = &self.blocks[&id].header;
            let sets = self.sets_over(header).filter(|(certifiers, _)| {
                header.kind != Kind::Proposal
                    || certifiers.leader(header.round) == Some(header.proposer)
            });
            let Some(sets) = sets else {
                self.set_status(now, id, false);
                return;
            };
            if let Some(e) = self.blocks.get_mut(&id) {
                e.status = Status::Validating;
                e.sets = Some(sets);
            }
            self.outbox.push_back(Action::Validate(id));
        } else {
            // A parent is still waiting or validating; its verdict wakes
            // this block.
            for (p, st) in parents.iter().zip(statuses) {
                if st != Status::Valid {
                    self.waiting.entry(*p).or_default().push(id);
                }
            }
        }
    }

    fn on_validated(&mut self, now: Duration, id: BlockId, valid: bool) {
        if self.blocks.get(&id).map(|e| e.status) != Some(Status::Validating) {
            return;
        }
        self.set_status(now, id, valid);
    }

    fn set_status(&mut self, now: Duration, id: BlockId, valid: bool) {
        let Some(e) = self.blocks.get_mut(&id) else {
            return;
        };
        e.status = if valid {
            Status::Valid
        } else {
            Status::Invalid
        };
        if valid {
            self.note_valid_side(id);
            self.note_latest_votes(id);
            let was_validator = self.is_validator();
            self.note_set(id);
            let (kind, round) = (self.blocks[&id].header.kind, self.blocks[&id].header.round);
            if kind == Kind::Proposal && round > self.round {
                self.round = round;
                self.arm(now);
            } else if !was_validator && self.is_validator() {
                // A change under way names this node: it starts taking part.
                self.arm(now);
            }
            self.maybe_vote(now, id);
            self.check_commit(now, id);
        }
        self.wake_children(now, id);
        if valid && self.is_validator() {
            self.maybe_propose(now);
        }
    }

    /// A vote that arrived before its block could not be placed by
    /// height; now it can (otherwise a leader would not merge over it).
    fn note_latest_votes(&mut self, id: BlockId) {
        let Some(voters) = self.votes.get(&id) else {
            return;
        };
        let height = self.blocks[&id].height;
        for v in voters.clone() {
            let newer = self
                .latest_vote
                .get(&v)
                .is_none_or(|old| self.blocks.get(old).is_none_or(|e| e.height < height));
            if newer {
                self.latest_vote.insert(v, id);
            }
        }
    }

    fn note_valid_side(&mut self, id: BlockId) {
        let e = &self.blocks[&id];
        if e.header.kind != Kind::Side {
            return;
        }
        for p in e.header.parents.clone() {
            self.side_heads.remove(&p);
        }
        if !self.is_committed(id) {
            self.side_heads.insert(id);
        }
    }

    fn maybe_vote(&mut self, now: Duration, id: BlockId) {
        let e = &self.blocks[&id];
        // Only a validator of the set certifying this block votes for it.
        if !e
            .sets
            .as_ref()
            .is_some_and(|(certifiers, _)| certifiers.includes(self.cfg.me))
        {
            return;
        }
        if e.header.kind != Kind::Proposal || e.header.round < self.round {
            return;
        }
        let round = e.header.round;
        if self.voted_round.is_some_and(|r| r >= round) {
            return;
        }
        #[cfg(test)]
        let ignore_rule = self.cfg.unsafe_ignore_vote_rule;
        #[cfg(not(test))]
        let ignore_rule = false;
        if !ignore_rule
            && let Some(tip) = self.vote_tip
            && (id == tip || !self.descends_voted(id, tip))
        {
            return;
        }
        if round > self.round {
            self.enter_round(now, round);
        }
        self.vote_tip = Some(id);
        self.voted_round = Some(round);
        self.outbox.push_back(Action::PersistVoteTip(id));
        let vote = Vote {
            voter: self.cfg.me,
            block: id,
        };
        self.outbox
            .push_back(Action::Broadcast(Message::Vote(vote)));
        self.count_vote(now, vote);
        // Pipelining: the next round starts at this vote, not at the
        // commit, so its leader builds over this block while its votes
        // are still arriving. Every validator that voted for it may vote
        // for a child (the vote rule is about descent, not commits), and a
        // child's certificate commits it too.
        // While a validator-set change is under way rounds move as they
        // did before (at commits and timeouts): leaders are then decided
        // under more than one set, and the joint phase's liveness was
        // shown for that.
        let steady = self.failed_rounds == 0
            && self.later.is_empty()
            && self.blocks[&id]
                .sets
                .as_ref()
                .is_some_and(|(certifiers, state)| {
                    certifiers.epoch == state.epoch && certifiers.epoch == self.current().epoch
                });
        if steady && self.round <= round {
            self.pipelined = Some(round.saturating_add(1));
            self.enter_round(now, round.saturating_add(1));
        }
    }

    fn on_vote(&mut self, now: Duration, from: NodeId, vote: Vote) {
        if !self.known_voters.contains(&vote.voter) {
            return;
        }
        if !self.blocks.contains_key(&vote.block) {
            // Keep the vote; fetch the block from whoever sent it.
            if let std::collections::btree_map::Entry::Vacant(slot) = self.waiting.entry(vote.block)
            {
                slot.insert(Vec::new());
                self.outbox.push_back(Action::Send {
                    to: from,
                    message: Message::Fetch(vote.block),
                });
                if self.deadline.is_none() {
                    self.arm(now);
                }
            }
        }
        self.count_vote(now, vote);
    }

    fn count_vote(&mut self, now: Duration, vote: Vote) {
        if !self.votes.entry(vote.block).or_default().insert(vote.voter) {
            return;
        }
        let newer = match self.latest_vote.get(&vote.voter) {
            None => true,
            Some(old) => {
                let old_h = self.blocks.get(old).map_or(0, |e| e.height);
                let new_h = self.blocks.get(&vote.block).map_or(0, |e| e.height);
                new_h > old_h || !self.blocks.contains_key(old)
            }
        };
        if newer {
            self.latest_vote.insert(vote.voter, vote.block);
        }
        self.check_commit(now, vote.block);
    }

    fn check_commit(&mut self, now: Duration, id: BlockId) {
        let Some(voters) = self.votes.get(&id) else {
            return;
        };
        // Only a block this node has and found valid can become main, and
        // only with the votes its certifying set requires.
        let Some(e) = self.blocks.get(&id) else {
            return;
        };
        if e.status != Status::Valid {
            return;
        }
        let Some((certifiers, _)) = e.sets.clone() else {
            return;
        };
        if !certifiers.certified_by(voters) {
            return;
        }
        if id == self.main || !self.descends(id, self.main) {
            // An ancestor of main (already committed), or a certified
            // block on another chain, which safety says cannot exist.
            return;
        }
        let voters: Vec<NodeId> = voters
            .iter()
            .filter(|v| certifiers.includes(**v))
            .copied()
            .collect();
        self.main = id;
        self.outbox.push_back(Action::Commit { block: id, voters });
        // Votes for blocks under main count for nothing any more.
        let blocks = &self.blocks;
        self.votes
            .retain(|b, _| *b == id || !blocks.get(b).is_some_and(|e| e.committed));
        // Mark the newly committed blocks and drop their transactions.
        for tx in self.mark_committed(id) {
            self.mempool.remove(&tx);
        }
        let epoch = self.current().epoch;
        self.later.retain(|e, _| *e > epoch);
        if !self.is_validator() && !self.mempool.is_empty() && self.side_deadline.is_none() {
            // A change dropped this validator: what waits in its mempool
            // goes on a side branch, as on any other node.
            self.side_deadline = Some(now + self.cfg.side_interval);
        }
        let heads: Vec<BlockId> = self.side_heads.iter().copied().collect();
        for h in heads {
            if self.is_committed(h) {
                self.side_heads.remove(&h);
            }
        }
        self.prune();
        let round = self.blocks[&id].header.round.saturating_add(1);
        self.failed_rounds = 0;
        if round > self.round {
            self.enter_round(now, round);
        } else {
            self.arm(now);
        }
    }

    /// Blocks with work on them: a round should run.
    fn has_work(&self) -> bool {
        if !self.mempool.is_empty() || !self.side_heads.is_empty() {
            return true;
        }
        // A block still missing (its fetch may have been lost).
        if self.missing().next().is_some() {
            return true;
        }
        let main = self.main;
        self.latest_vote
            .values()
            .chain(self.vote_tip.iter())
            .any(|b| {
                *b != main
                    && self
                        .blocks
                        .get(b)
                        .is_some_and(|e| e.status == Status::Valid)
            })
    }

    fn arm(&mut self, now: Duration) {
        // Other nodes keep a timer only to fetch again what they miss (a
        // node a change names must catch up before it can vote).
        if !self.is_validator() && self.missing().next().is_none() {
            return;
        }
        let backoff = self
            .cfg
            .round_timeout
            .saturating_mul(1 << self.failed_rounds.min(16));
        self.deadline = Some(now + backoff.min(self.cfg.max_round_timeout));
    }

    fn enter_round(&mut self, now: Duration, round: u64) {
        self.round = round;
        self.arm(now);
        self.maybe_propose(now);
    }

    fn on_round_timeout(&mut self, now: Duration) {
        if !self.is_validator() {
            self.fetch_missing_again();
            self.arm(now);
            return;
        }
        if !self.has_work() {
            self.arm(now);
            return;
        }
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        // Tell everyone where this validator's votes stand (a lost vote
        // would otherwise keep a leader from merging over it).
        if let Some(v) = self.own_vote() {
            self.outbox.push_back(Action::Broadcast(Message::Vote(v)));
        }
        self.fetch_missing_again();
        let next = self.round.saturating_add(1);
        self.enter_round(now, next);
    }

    /// Asks again for anything still missing, a few times.
    fn fetch_missing_again(&mut self) {
        let missing: Vec<BlockId> = self.missing().collect();
        for b in missing {
            let asked = self.fetches.entry(b).or_default();
            *asked += 1;
            if *asked > MAX_FETCHES && self.waiting.get(&b).is_some_and(|c| c.is_empty()) {
                // Only votes named it: forget it and them (a vote for it
                // that comes again asks again). A missing parent is asked
                // for as long as a block waits on it.
                self.fetches.remove(&b);
                self.waiting.remove(&b);
                self.votes.remove(&b);
            } else {
                self.outbox.push_back(Action::Fetch(b));
            }
        }
    }

    fn maybe_propose(&mut self, now: Duration) {
        let _ = now;
        let me = self.cfg.me;
        if !self.is_validator()
            || self.proposing
            || self.proposed_round.is_some_and(|r| r >= self.round)
            || (self.later.is_empty() && self.current().leader(self.round) != Some(me))
            || !self.has_work()
        {
            // With no change under way every proposal over main's
            // descendants is certified by main's set, so its leader is
            // known before the parents are chosen.
            return;
        }
        // The maximal valid blocks among main, every latest vote, this
        // validator's own tip and the side heads.
        let mut candidates: BTreeSet<BlockId> = BTreeSet::new();
        candidates.insert(self.main);
        for b in self.latest_vote.values().chain(self.vote_tip.iter()) {
            if self
                .blocks
                .get(b)
                .is_some_and(|e| e.status == Status::Valid)
                && !self.is_committed(*b)
            {
                // Main's descendants, and blocks beside main (a vote
                // left on a losing branch): the merge brings that validator
                // back, since it descends from its vote.
                candidates.insert(*b);
            }
        }
        for h in &self.side_heads {
            candidates.insert(*h);
        }
        let all: Vec<BlockId> = candidates.iter().copied().collect();
        let parents: Vec<BlockId> = all
            .iter()
            .filter(|c| !all.iter().any(|d| d != *c && self.descends(*d, **c)))
            .copied()
            .collect();
        // Transactions already in the uncommitted part of the ancestry are
        // not proposed again.
        let mut included = BTreeSet::new();
        let mut stack = parents.clone();
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            if self.is_committed(x) {
                continue;
            }
            let Some(e) = self.blocks.get(&x) else {
                continue;
            };
            included.extend(e.header.txs.iter().copied());
            for p in &e.header.parents {
                if seen.insert(*p) {
                    stack.push(*p);
                }
            }
        }
        let txs = self.mempool_except(&included);
        if parents.len() == 1
            && txs.is_empty()
            && (parents[0] == self.main
                || (self.pipelined == Some(self.round) && self.vote_tip == Some(parents[0])))
        {
            // Nothing to carry: main, or (in a round this validator entered
            // by voting) the block it voted for, whose votes are under way:
            // it commits on its own. Had they been lost, the round times out
            // and the next one carries it as before.
            return;
        }
        if self
            .top_set(&parents)
            .is_none_or(|certifiers| certifiers.leader(self.round) != Some(me))
        {
            return;
        }
        self.proposing = true;
        self.proposed_round = Some(self.round);
        self.outbox.push_back(Action::Propose {
            parents,
            round: self.round,
            kind: Kind::Proposal,
            txs,
        });
    }

    /// The mempool's transactions that are not in `included`, in order.
    fn mempool_except(&self, included: &BTreeSet<TxId>) -> Vec<TxId> {
        self.mempool
            .iter()
            .filter(|t| !included.contains(t))
            .copied()
            .collect()
    }

    fn cut_side_block(&mut self, now: Duration) {
        if self.is_validator() {
            return;
        }
        // Events go on this device's branch; re-announce an unmerged head.
        let mut included = BTreeSet::new();
        let mut cur = self.my_side;
        while let Some(x) = cur {
            let Some(e) = self.blocks.get(&x) else { break };
            if e.header.kind != Kind::Side || e.header.proposer != self.cfg.me {
                break;
            }
            included.extend(e.header.txs.iter().copied());
            cur = e.header.parents.iter().copied().find(|p| {
                self.blocks
                    .get(p)
                    .is_some_and(|pe| pe.header.kind == Kind::Side)
            });
        }
        let txs = self.mempool_except(&included);
        if !txs.is_empty() && !self.proposing {
            let parent = self.my_side.unwrap_or(self.main);
            self.proposing = true;
            self.outbox.push_back(Action::Propose {
                parents: vec![parent],
                round: 0,
                kind: Kind::Side,
                txs,
            });
        } else if let Some(head) = self.my_side.filter(|h| !self.is_committed(*h)) {
            let header = self.blocks[&head].header.clone();
            self.outbox
                .push_back(Action::Broadcast(Message::Block(header)));
        }
        if !self.mempool.is_empty() || self.my_side.is_some_and(|h| !self.is_committed(h)) {
            self.side_deadline = Some(now + self.cfg.side_interval);
        }
    }

    fn on_proposed(&mut self, now: Duration, header: Header) {
        self.proposing = false;
        let id = header.id;
        if header.kind == Kind::Side {
            self.my_side = Some(id);
            if self.side_deadline.is_none() {
                self.side_deadline = Some(now + self.cfg.side_interval);
            }
        }
        self.outbox
            .push_back(Action::Broadcast(Message::Block(header.clone())));
        self.on_block(now, self.cfg.me, header);
    }
}

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
//!   round r moves everyone to round r+1.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use utter_ledger::BlockId;

/// A node: validators and other nodes share one numbering.
pub type NodeId = u32;

/// A transaction's id (the hash of its signed JSON in the ledger).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TxId(pub [u8; 32]);

/// What kind of block a header is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A round's proposal by its leader: the only kind validators vote for.
    Proposal,
    /// A block on a node's own branch (a door controller's events), signed
    /// by its device key; merged into main by a proposal.
    Side,
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
    /// The validators; leader(r) = validators\[r mod n\].
    pub validators: Vec<NodeId>,
    /// The first round's timeout; it doubles per round without a commit.
    pub round_timeout: Duration,
    /// The longest round timeout.
    pub max_round_timeout: Duration,
    /// How often a non-validator cuts a side block of its events.
    pub side_interval: Duration,
    /// Test-only weakening: vote for any valid proposal, ignoring the vote
    /// rule. Exists to show the simulator catches the safety violation
    /// this causes; not reachable from the product.
    #[cfg(test)]
    pub unsafe_ignore_vote_rule: bool,
}

impl Config {
    /// A config with utter's default timings.
    pub fn new(me: NodeId, validators: Vec<NodeId>) -> Self {
        Self {
            me,
            validators,
            round_timeout: Duration::from_millis(500),
            max_round_timeout: Duration::from_secs(8),
            side_interval: Duration::from_millis(200),
            #[cfg(test)]
            unsafe_ignore_vote_rule: false,
        }
    }

    /// q = ⌊2n/3⌋ + 1.
    pub fn quorum(&self) -> usize {
        2 * self.validators.len() / 3 + 1
    }

    fn leader(&self, round: u64) -> NodeId {
        self.validators[(round % self.validators.len() as u64) as usize]
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
    proposing: bool,
    mempool: BTreeSet<TxId>,
    /// Valid side blocks not yet under main, without a known child.
    side_heads: BTreeSet<BlockId>,
    /// This node's own side branch head (non-validators).
    my_side: Option<BlockId>,
    side_deadline: Option<Duration>,
    outbox: VecDeque<Action>,
}

impl Machine {
    /// A node starting from what it persisted (a new node: genesis only).
    pub fn new(cfg: Config, persisted: Persisted, now: Duration) -> Self {
        let genesis_header = Header {
            id: persisted.genesis,
            parents: Vec::new(),
            round: 0,
            proposer: NodeId::MAX,
            kind: Kind::Proposal,
            txs: Vec::new(),
        };
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
            proposing: false,
            mempool: persisted.mempool.into_iter().collect(),
            side_heads: BTreeSet::new(),
            my_side: None,
            side_deadline: None,
            outbox: VecDeque::new(),
        };
        m.blocks.insert(
            m.genesis,
            Entry {
                header: genesis_header,
                height: 0,
                status: Status::Valid,
                committed: true,
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
            m.blocks.insert(
                id,
                Entry {
                    header,
                    height,
                    status,
                    committed: false,
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
        if let Some(tip) = m.vote_tip {
            m.voted_round = m.blocks.get(&tip).map(|e| e.header.round);
            m.round = m.voted_round.unwrap_or(0);
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
        m.arm(now);
        m
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.me
    }

    /// Whether this node is a validator.
    pub fn is_validator(&self) -> bool {
        self.cfg.validators.contains(&self.cfg.me)
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

    /// Transactions waiting for a block.
    pub fn mempool_len(&self) -> usize {
        self.mempool.len()
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
            txs.extend(e.header.txs.iter().copied());
            stack.extend(e.header.parents.iter().copied());
        }
        txs
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
            Event::PeerConnected(peer) => self.on_connected(peer),
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
        let malformed = header.parents.is_empty()
            || header.parents.windows(2).any(|w| w[0] >= w[1])
            || (header.kind == Kind::Proposal
                && (self.cfg.validators.is_empty()
                    || header.proposer != self.cfg.leader(header.round)));
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
            if let Some(e) = self.blocks.get_mut(&id) {
                e.status = Status::Validating;
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
            let (kind, round) = (self.blocks[&id].header.kind, self.blocks[&id].header.round);
            if kind == Kind::Proposal && round > self.round && self.is_validator() {
                self.round = round;
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
        if !self.is_validator() {
            return;
        }
        let e = &self.blocks[&id];
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
            && (id == tip || !self.descends(id, tip))
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
    }

    fn on_vote(&mut self, now: Duration, from: NodeId, vote: Vote) {
        if !self.cfg.validators.contains(&vote.voter) {
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
        if voters.len() < self.cfg.quorum() {
            return;
        }
        // Only a block this node has and found valid can become main.
        if self.blocks.get(&id).map(|e| e.status) != Some(Status::Valid) {
            return;
        }
        if id == self.main || !self.descends(id, self.main) {
            // An ancestor of main (already committed), or a certified
            // block on another chain, which safety says cannot exist.
            return;
        }
        let voters: Vec<NodeId> = voters.iter().copied().collect();
        self.main = id;
        self.outbox.push_back(Action::Commit { block: id, voters });
        // Mark the newly committed blocks and drop their transactions.
        for tx in self.mark_committed(id) {
            self.mempool.remove(&tx);
        }
        let heads: Vec<BlockId> = self.side_heads.iter().copied().collect();
        for h in heads {
            if self.is_committed(h) {
                self.side_heads.remove(&h);
            }
        }
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
        if !self.is_validator() {
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
        // Ask again for anything still missing, a few times.
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
        let next = self.round.saturating_add(1);
        self.enter_round(now, next);
    }

    fn maybe_propose(&mut self, now: Duration) {
        let _ = now;
        if !self.is_validator()
            || self.proposing
            || self.cfg.leader(self.round) != self.cfg.me
            || self.proposed_round.is_some_and(|r| r >= self.round)
            || !self.has_work()
        {
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
                && self.descends(*b, self.main)
            {
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
        if parents.len() == 1 && txs.is_empty() && parents[0] == self.main {
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

//! The driver of proof of merge on a running node: one thread owns the
//! [`Machine`], the executor and the container helper, and turns the
//! machine's actions into IO (DESIGN.md §Proof of merge; the machine is
//! `utter-consensus`, the network [`crate::gossip`]).
//!
//! | action              | what the driver does                                        |
//! |---------------------|-------------------------------------------------------------|
//! | `Broadcast`/`Send`  | a block → `Announce`; a vote → its signature; a tx → its line |
//! | `Fetch`             | feeds the block if the ledger has it, else pulls it          |
//! | `Validate`          | re-executes the block in containers (`Executor::reexecute`)  |
//! | `Propose`           | builds and signs the block from the pool's lines             |
//! | `PersistVoteTip`    | writes and syncs the vote tip, then signs the vote           |
//! | `Commit`            | writes the certificate note, moves main, settles the pool   |
//!
//! A block reaches the machine only after it is in the ledger and
//! [`Ledger::check_block`] passed (signature, signer, height, layout), and
//! its header is read from the signed commit ([`crate::consensus::header`]);
//! a vote only after its signature verified, numbered by the key that
//! signed it. The machine's mempool is an index into the node's pool
//! (ARCHITECTURE.md §One mempool).
//!
//! A node that is not a validator of a chain of several runs the same
//! thread as a forwarder: it sends its API's transactions to the
//! validators (and its whole pool again when a channel opens) and follows
//! main through sync passes, which move main only to certified blocks.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use utter_client::api::{Certified, ConsensusStatus};
use utter_consensus::{
    Action, Anchor, Config, Event, Kind, Machine, Message as Said, NodeId, Validators, Vote,
};
use utter_executor::{ExecError, Executor, Verdict};
use utter_ledger::cert::{Certificate, SignedVote};
use utter_ledger::key::Keypair;
use utter_ledger::{BlockChecker, BlockError, BlockId, Ledger, MAIN, TxId};
use utter_net::wire::{Message, Proposal};

use crate::consensus::{self, VoteTip};
use crate::gossip::{Input, Outbound, Pull, TXS_PER_FRAME};
use crate::home::{Home, Opened};
use crate::pool::{Pending, block_order};
use crate::run::{NodeError, Shared, lock};

/// Keys numbered for the machine: the genesis validators first, in
/// `chain.toml` order, then every other key as it is first seen.
#[derive(Default)]
struct Keys {
    ids: HashMap<String, NodeId>,
    keys: Vec<String>,
}

impl Keys {
    fn id(&mut self, key: &str) -> NodeId {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.keys.len() as NodeId;
        self.ids.insert(key.to_string(), id);
        self.keys.push(key.to_string());
        id
    }
}

/// Whether `key` is a validator of main's chain of several (or of a set
/// being changed to); `None` when main's chain has one validator (the
/// producer makes its blocks).
pub(crate) fn role(ledger: &Ledger, key: &Keypair) -> Result<Option<bool>, NodeError> {
    let main = ledger.block(ledger.resolve(MAIN)?)?;
    let config = ledger.chain_config(&main)?;
    if config.validators.len() <= 1 && config.outgoing.is_empty() {
        return Ok(None);
    }
    let me = key.public().to_openssh();
    let named = |m: &utter_formats::Member| {
        utter_ledger::key::Signer::parse(&m.key).map(|k| k.to_openssh()) == Some(me.clone())
    };
    Ok(Some(
        config.validators.iter().chain(&config.outgoing).any(named),
    ))
}

/// What to build: a proposal (`round`) or a side block (`None`).
pub(crate) struct Build<'a> {
    pub parents: &'a [BlockId],
    pub lines: &'a [String],
    pub round: Option<u64>,
    pub time: i64,
    pub key: &'a Keypair,
}

/// Builds and signs a block over `b.parents` (a failed sandbox helper is
/// started again, twice at most); lines no block may carry leave the
/// pool, and their ids are returned beside the block.
pub(crate) fn build(
    home: &Home,
    shared: &Shared,
    executor: &mut Executor<'_>,
    helper: &mut utter_runtime::Helper,
    images: &mut crate::NodeImages,
    b: Build<'_>,
) -> Result<(utter_executor::Proposed, Vec<TxId>), NodeError> {
    let mut tries = 0;
    let proposed = loop {
        match executor.propose_on(helper, images, b.parents, b.lines, b.round, b.time, b.key) {
            Ok(p) => break p,
            Err(ExecError::Host(e)) if tries < 2 => {
                eprintln!("the sandbox helper failed ({e}); starting a new one");
                *helper = home.spawn_helper()?;
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let refused: Vec<TxId> = proposed
        .refused
        .iter()
        .map(|r| TxId::of_line(&r.line))
        .collect();
    if !refused.is_empty() {
        crate::run::forget(shared, &refused)?;
    }
    Ok((proposed, refused))
}

/// The name main's `chain.toml` gives `key` as a device, if it does.
pub(crate) fn device(ledger: &Ledger, key: &Keypair) -> Result<Option<String>, NodeError> {
    let main = ledger.block(ledger.resolve(MAIN)?)?;
    let config = ledger.chain_config(&main)?;
    let me = key.public().to_openssh();
    Ok(config
        .devices
        .iter()
        .find(|m| {
            utter_ledger::key::Signer::parse(&m.key).map(|k| k.to_openssh()) == Some(me.clone())
        })
        .map(|m| m.name.clone()))
}

struct Driver<'l> {
    home: &'l Home,
    ledger: &'l Ledger,
    store: &'l utter_chunkstore::Store,
    key: &'l Keypair,
    shared: &'l Shared,
    out: &'l Outbound,
    /// What the network, the API and the pull thread tell this thread.
    inputs: &'l Receiver<Input>,
    executor: Executor<'l>,
    helper: utter_runtime::Helper,
    images: crate::NodeImages,
    machine: Machine,
    keys: RefCell<Keys>,
    vote_tip: VoteTip,
    checker: BlockChecker,
    /// Vote signatures by block and voter, with the height they sign.
    votes: HashMap<(BlockId, NodeId), (u64, SignedVote)>,
    /// Votes for blocks not here yet: only the block says which height
    /// a vote for it must sign, so they reach the machine once it is fed.
    early: EarlyVotes,
    /// Blocks the machine was told of, with their heights; those far
    /// under main are let go as the machine prunes them.
    fed: HashMap<BlockId, u64>,
    /// Blocks in the ledger whose values are not in the chunk store yet:
    /// pulled again (a pull fetches what a block lacks) before they are
    /// fed.
    lacking: HashSet<BlockId>,
    /// This node's own proposals not yet validated: building one executed
    /// it, so its validation is that execution's verdict.
    own: HashSet<BlockId>,
    /// This node's last proposal as it is pushed whole (`None` when it is
    /// better pulled); an older block is announced.
    pushed: Option<Message>,
    /// Blocks asked of the pull thread, and who announced them.
    pulling: HashMap<BlockId, NodeId>,
    /// Where each connected peer serves.
    addrs: HashMap<NodeId, SocketAddr>,
    /// Transaction lines to send: to everyone, and to one peer.
    txs_out: Vec<Vec<u8>>,
    txs_to: HashMap<SocketAddr, Vec<Vec<u8>>>,
    started: Instant,
    /// The last commit, for the status.
    certified: Option<Certified>,
    /// The most transactions one proposal carries.
    block_txs: usize,
    verbose: bool,
    /// Test-only Byzantine behaviour (the `byzantine` feature).
    #[cfg(feature = "byzantine")]
    equivocate: bool,
    /// Test-only: this node's votes leave signed for the wrong height
    /// (`UTTER_TEST_WRONG_VOTE_HEIGHT`).
    #[cfg(feature = "byzantine")]
    wrong_heights: bool,
    /// Test-only: this node's pushed proposals leave with a byte of their
    /// pack flipped (`UTTER_TEST_BAD_PUSH`).
    #[cfg(feature = "byzantine")]
    bad_push: bool,
    /// Test-only: seconds this node's clock is set ahead (the `byzantine`
    /// feature, `UTTER_TEST_CLOCK_AHEAD`).
    #[cfg(feature = "byzantine")]
    clock_ahead: i64,
}

/// How far after a validator's clock a block may be dated: one dated
/// later is refused (its proposer's clock is wrong, and chain time, which
/// dapps and lease billing read, would jump ahead with it).
pub const MAX_AHEAD_SECS: i64 = 10;

/// Runs the driver until the node stops; on an error, stops the API too.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    home: &Home,
    opened: Opened,
    key: Keypair,
    shared: Arc<Shared>,
    out: Outbound,
    inputs: Receiver<Input>,
    validator: bool,
    block_txs: usize,
    round_timeout: Duration,
    verbose: bool,
) -> Result<(), NodeError> {
    let result = if validator {
        drive(
            home,
            &opened,
            &key,
            &shared,
            &out,
            &inputs,
            block_txs,
            round_timeout,
            verbose,
        )
    } else if let Some(name) = device(&opened.ledger, &key)? {
        crate::side::run(
            home, &opened, &key, &name, &shared, &out, &inputs, block_txs, verbose,
        )
    } else {
        forward(&shared, &out, &inputs)
    };
    if let Err(e) = &result {
        eprintln!("error: consensus stopped: {e}");
        shared.failed.notify_one();
    }
    result
}

fn now_since(started: Instant) -> Duration {
    started.elapsed()
}

#[allow(clippy::too_many_arguments)]
fn drive(
    home: &Home,
    opened: &Opened,
    key: &Keypair,
    shared: &Shared,
    out: &Outbound,
    inputs: &Receiver<Input>,
    block_txs: usize,
    round_timeout: Duration,
    verbose: bool,
) -> Result<(), NodeError> {
    let ledger = &opened.ledger;
    let genesis = ledger.block(ledger.genesis())?;
    let mut keys = Keys::default();
    let genesis_set: Vec<NodeId> = ledger
        .chain_config(&genesis)?
        .validators
        .iter()
        .filter_map(|m| utter_ledger::key::Signer::parse(&m.key))
        .map(|k| keys.id(&k.to_openssh()))
        .collect();
    let me = keys.id(&key.public().to_openssh());
    let keys = RefCell::new(keys);
    let vote_tip = VoteTip::at(home.vote_tip_file());
    let mempool: Vec<TxId> = lock(&shared.pool).ids();
    let persisted = consensus::restore(ledger, &vote_tip, &[], mempool, |k| {
        Some(keys.borrow_mut().id(k))
    })
    .map_err(|e| NodeError::Consensus(e.to_string()))?;
    let mut fed: HashMap<BlockId, u64> = HashMap::new();
    for id in persisted
        .blocks
        .iter()
        .map(|(h, _)| h.id)
        .chain([persisted.genesis])
    {
        fed.insert(id, ledger.height(id)?);
    }
    let started = Instant::now();
    let mut config = Config::new(me, genesis_set);
    config.round_timeout = round_timeout;
    config.max_round_timeout = config.max_round_timeout.max(round_timeout * 4);
    let machine = Machine::new(config, persisted, Duration::ZERO);
    let mut executor = Executor::new(ledger, &home.checkouts())?;
    // The pool checked every signature at admission.
    executor.set_known(Box::new(|id| {
        lock(&shared.pool)
            .get(id)
            .filter(|p| p.durable)
            .map(|p| p.tx.clone())
    }));
    let mut d = Driver {
        home,
        ledger,
        store: &opened.store,
        key,
        shared,
        out,
        inputs,
        executor,
        helper: home.spawn_helper()?,
        images: home.node_images(&opened.store)?,
        machine,
        keys,
        vote_tip,
        checker: BlockChecker::default(),
        votes: HashMap::new(),
        early: EarlyVotes::default(),
        fed,
        own: HashSet::new(),
        pushed: None,
        lacking: HashSet::new(),
        pulling: HashMap::new(),
        addrs: HashMap::new(),
        txs_out: Vec::new(),
        txs_to: HashMap::new(),
        started,
        certified: None,
        block_txs,
        verbose,
        #[cfg(feature = "byzantine")]
        equivocate: std::env::var_os("UTTER_TEST_EQUIVOCATE").is_some(),
        #[cfg(feature = "byzantine")]
        wrong_heights: std::env::var_os("UTTER_TEST_WRONG_VOTE_HEIGHT").is_some(),
        #[cfg(feature = "byzantine")]
        bad_push: std::env::var_os("UTTER_TEST_BAD_PUSH").is_some(),
        #[cfg(feature = "byzantine")]
        clock_ahead: std::env::var("UTTER_TEST_CLOCK_AHEAD")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    };
    if verbose {
        eprintln!(
            "validator {me} of {}: main at {}, round {}",
            d.machine.validators().members.len(),
            d.machine.main().short(),
            d.machine.round()
        );
    }
    loop {
        d.act()?;
        d.flush();
        d.report();
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let now = d.now();
        let wait = d
            .machine
            .poll_timeout()
            .map_or(Duration::from_millis(500), |t| t.saturating_sub(now))
            .min(Duration::from_millis(500));
        match inputs.recv_timeout(wait) {
            Ok(input) => {
                d.input(input)?;
                // Whatever else arrived meanwhile, before acting.
                while let Ok(input) = inputs.try_recv() {
                    d.input(input)?;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        let now = d.now();
        if d.machine.poll_timeout().is_some_and(|t| t <= now) {
            let round = d.machine.round();
            d.machine.handle_timeout(now);
            if d.machine.round() > round {
                // A round went by without a commit: whatever this node
                // missed (a vote dropped while a channel reopened), the
                // others send it again.
                d.out.broadcast(&Message::Behind);
                // Blocks only early votes name, a few times (a pull that
                // failed is not asked again by the machine, which has
                // not heard of them).
                for block in d.early.again() {
                    d.want(block, NodeId::MAX, None);
                }
            }
        }
    }
}

/// Held votes for one block: each voter's relayer, signed height and
/// signature.
type HeldVotes = HashMap<NodeId, (NodeId, u64, SignedVote)>;

/// Votes for blocks this node does not have yet, bounded: a voter's
/// oldest held vote goes when it holds [`EarlyVotes::PER_VOTER`], and a
/// block is asked for again [`EarlyVotes::PULLS`] times at most.
#[derive(Default)]
struct EarlyVotes {
    /// By block: each voter's relayer, signed height and signature, and
    /// how often the block was asked for again.
    blocks: HashMap<BlockId, (HeldVotes, u32)>,
    /// Each voter's held blocks, oldest first.
    by_voter: HashMap<NodeId, std::collections::VecDeque<BlockId>>,
}

impl EarlyVotes {
    const PER_VOTER: usize = 16;
    const PULLS: u32 = 3;
    /// Votes of keys outside the current set (a set being changed to) are
    /// held while fewer blocks than this are.
    const OTHERS: usize = 1024;

    fn hold(&mut self, block: BlockId, voter: NodeId, from: NodeId, height: u64, vote: SignedVote) {
        let (votes, _) = self.blocks.entry(block).or_default();
        if votes.insert(voter, (from, height, vote)).is_some() {
            return;
        }
        let held = self.by_voter.entry(voter).or_default();
        held.push_back(block);
        if held.len() > Self::PER_VOTER
            && let Some(old) = held.pop_front()
            && let Some((votes, _)) = self.blocks.get_mut(&old)
        {
            votes.remove(&voter);
            if votes.is_empty() {
                self.blocks.remove(&old);
            }
        }
    }

    /// The votes held for `block`, by voter, let go.
    fn release(&mut self, block: BlockId) -> HeldVotes {
        let votes = self
            .blocks
            .remove(&block)
            .map(|(v, _)| v)
            .unwrap_or_default();
        for voter in votes.keys() {
            if let Some(held) = self.by_voter.get_mut(voter) {
                held.retain(|b| *b != block);
            }
        }
        votes
    }

    /// The blocks to ask for again; those asked for too often are let go
    /// with their votes (a vote that comes again is held again).
    fn again(&mut self) -> Vec<BlockId> {
        let mut asked = Vec::new();
        let mut gone = Vec::new();
        for (block, (_, pulls)) in &mut self.blocks {
            *pulls += 1;
            if *pulls > Self::PULLS {
                gone.push(*block);
            } else {
                asked.push(*block);
            }
        }
        for block in gone {
            self.release(block);
        }
        asked
    }

    /// Lets go of votes that sign a height under `height` (main's): they
    /// count for nothing any more.
    fn prune_below(&mut self, height: u64) {
        let low: Vec<BlockId> = self
            .blocks
            .iter()
            .filter(|(_, (votes, _))| votes.values().all(|(_, h, _)| *h < height))
            .map(|(b, _)| *b)
            .collect();
        for block in low {
            self.release(block);
        }
    }
}

/// What `/v1/status` shows of a node that is not a validator.
pub(crate) fn report_follower(shared: &Shared, out: &Outbound, peers: usize) {
    *lock(&shared.consensus) = Some(ConsensusStatus {
        validator: false,
        round: 0,
        idle: true,
        peers,
        certified: None,
        frames_sent: out.counters.frames.load(Ordering::Relaxed),
        bytes_sent: out.counters.bytes.load(Ordering::Relaxed),
        bytes_pulled: 0,
        pushes_taken: 0,
        pushes_pulled: 0,
    });
}

/// A non-validator's thread: sends its transactions to the validators.
fn forward(shared: &Shared, out: &Outbound, inputs: &Receiver<Input>) -> Result<(), NodeError> {
    let mut peers = HashSet::new();
    loop {
        report_follower(shared, out, peers.len());
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let input = match inputs.recv_timeout(Duration::from_millis(500)) {
            Ok(i) => i,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match input {
            Input::Admitted { from: None, ids } => {
                let lines = lines_of(shared, &ids);
                for frame in frames(lines) {
                    out.broadcast(&frame);
                }
            }
            Input::Disconnected { key } => {
                peers.remove(&key);
            }
            Input::Connected { addr, key } => {
                peers.insert(key);
                let lines: Vec<Vec<u8>> = lock(&shared.pool)
                    .take(usize::MAX)
                    .into_iter()
                    .map(|p| p.line.into_bytes())
                    .collect();
                for frame in frames(lines) {
                    out.send(addr, frame);
                }
            }
            _ => {}
        }
    }
}

/// The pool's durable lines of `ids` (an id it no longer has is skipped).
fn lines_of(shared: &Shared, ids: &[TxId]) -> Vec<Vec<u8>> {
    let pool = lock(&shared.pool);
    ids.iter()
        .filter_map(|id| pool.get(id).filter(|p| p.durable))
        .map(|p| p.line.clone().into_bytes())
        .collect()
}

/// `Txs` frames of at most [`TXS_PER_FRAME`] lines.
fn frames(lines: Vec<Vec<u8>>) -> Vec<Message> {
    lines
        .chunks(TXS_PER_FRAME)
        .map(|c| Message::Txs(c.to_vec()))
        .collect()
}

impl Driver<'_> {
    fn now(&self) -> Duration {
        now_since(self.started)
    }

    /// This node's wall clock, Unix seconds: what it dates its blocks
    /// with and bounds others' by.
    fn clock(&self) -> i64 {
        let now = i64::try_from(utter_formats::now()).unwrap_or(i64::MAX);
        #[cfg(feature = "byzantine")]
        let now = now.saturating_add(self.clock_ahead);
        now
    }

    /// What `/v1/status` shows.
    fn report(&self) {
        let mut status = lock(&self.shared.consensus);
        let certified = status.as_ref().and_then(|s| s.certified.clone());
        *status = Some(ConsensusStatus {
            validator: self.machine.is_validator(),
            round: self.machine.round(),
            idle: self.machine.idle(),
            peers: self.addrs.len(),
            certified: self.certified.clone().or(certified),
            frames_sent: self.out.counters.frames.load(Ordering::Relaxed),
            bytes_sent: self.out.counters.bytes.load(Ordering::Relaxed),
            bytes_pulled: self.out.counters.pulled.load(Ordering::Relaxed),
            pushes_taken: self.out.counters.pushes_taken.load(Ordering::Relaxed),
            pushes_pulled: self.out.counters.pushes_pulled.load(Ordering::Relaxed),
        });
    }

    fn id_of(&self, key: &str) -> NodeId {
        self.keys.borrow_mut().id(key)
    }

    fn handle(&mut self, event: Event) {
        let now = self.now();
        self.machine.handle(now, event);
    }

    /// Takes in what arrived while this thread re-executed a block or
    /// built one (transactions, votes, pulls) and sends the transaction
    /// lines gathered so far. Called before a verdict goes to the machine,
    /// whose vote may start the next round at once: the proposal then
    /// carries what arrived meanwhile, and this node's transactions reach
    /// the next leader before it builds, rather than one block later.
    fn catch_up(&mut self) -> Result<(), NodeError> {
        while let Ok(input) = self.inputs.try_recv() {
            self.input(input)?;
        }
        self.flush();
        Ok(())
    }

    /// Sends the transaction lines gathered while acting.
    fn flush(&mut self) {
        for frame in frames(std::mem::take(&mut self.txs_out)) {
            self.out.broadcast(&frame);
        }
        for (addr, lines) in std::mem::take(&mut self.txs_to) {
            for frame in frames(lines) {
                self.out.send(addr, frame);
            }
        }
    }

    fn input(&mut self, input: Input) -> Result<(), NodeError> {
        match input {
            Input::Admitted { from, ids } => {
                let from = from.map(|k| self.id_of(&k));
                for id in ids {
                    match from {
                        None => self.handle(Event::LocalTx(id)),
                        Some(from) => self.handle(Event::Received {
                            from,
                            message: Said::Tx(id),
                        }),
                    }
                }
            }
            Input::Announced { from, addr, block } => {
                let from = self.id_of(&from);
                self.addrs.entry(from).or_insert(addr);
                self.want(block, from, Some(addr));
            }
            Input::Proposed {
                from,
                addr,
                proposal,
            } => {
                let from = self.id_of(&from);
                self.addrs.entry(from).or_insert(addr);
                // Taken whole only from a validator: anyone else's block
                // is pulled, as an announcement's is.
                let block = proposal.block;
                let pushed = self.machine.validators().includes(from).then_some(proposal);
                self.want_pushed(block, from, Some(addr), pushed);
            }
            Input::Vote {
                from,
                voter,
                block,
                height,
                vote,
            } => {
                let from = self.id_of(&from);
                let voter = self.id_of(&voter);
                let known = match self.fed.get(&block) {
                    Some(h) => Some(*h),
                    None if self.ledger.has_here(block) => Some(self.ledger.height(block)?),
                    None => None,
                };
                match known {
                    Some(h) => self.count(from, voter, block, h, height, vote),
                    None if self.machine.validators().includes(voter)
                        || self.early.blocks.len() < EarlyVotes::OTHERS =>
                    {
                        // Counted once the block is here and its height
                        // agrees; pulled from whoever relayed the vote.
                        self.early.hold(block, voter, from, height, vote);
                        let addr = self.addrs.get(&from).copied();
                        self.want(block, from, addr);
                    }
                    None => {}
                }
            }
            Input::Behind { from } => {
                let peer = self.id_of(&from);
                self.handle(Event::PeerConnected(peer));
            }
            Input::Connected { key, addr } => {
                let peer = self.id_of(&key);
                self.addrs.insert(peer, addr);
                self.handle(Event::PeerConnected(peer));
            }
            Input::Disconnected { key } => {
                let peer = self.id_of(&key);
                self.addrs.remove(&peer);
                self.handle(Event::PeerDisconnected(peer));
            }
            Input::Pulled { wants, got } => {
                let from = wants
                    .iter()
                    .find_map(|w| self.pulling.get(w).copied())
                    .unwrap_or(NodeId::MAX);
                for w in &wants {
                    self.pulling.remove(w);
                }
                match got {
                    Ok(blocks) => {
                        if let Some(first) = blocks.first() {
                            self.ledger.refresh(*first);
                        }
                        for b in blocks.iter().chain(&wants) {
                            self.feed(*b, from)?;
                        }
                    }
                    Err(why) => {
                        if self.verbose {
                            eprintln!("pull of {} failed: {why}", wants[0].short());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The machine wants `block` (announced by `from`): fed from the ledger
    /// if it is here, else pulled.
    fn want(&mut self, block: BlockId, from: NodeId, addr: Option<SocketAddr>) {
        self.want_pushed(block, from, addr, None);
    }

    /// [`Driver::want`], with what `from` pushed of the block: the pull
    /// thread takes that in first (and pulls if it is not enough).
    fn want_pushed(
        &mut self,
        block: BlockId,
        from: NodeId,
        addr: Option<SocketAddr>,
        pushed: Option<Box<Proposal>>,
    ) {
        // Under main here: committed, perhaps pruned from the machine.
        match self.committed_here(block) {
            Ok(true) => {
                if let Err(e) = self.anchor(block) {
                    eprintln!("block {}: {e}", block.short());
                }
                return;
            }
            Ok(false) => {}
            Err(e) => eprintln!("block {}: {e}", block.short()),
        }
        if self.fed.contains_key(&block) {
            return;
        }
        if self.ledger.has_here(block) && !self.lacking.contains(&block) {
            if let Err(e) = self.feed(block, from) {
                eprintln!("block {}: {e}", block.short());
            }
            return;
        }
        if self.pulling.contains_key(&block) {
            return;
        }
        self.pulling.insert(block, from);
        let mut peers: Vec<SocketAddr> = addr.into_iter().collect();
        peers.extend(self.out.addrs().into_iter().filter(|a| Some(*a) != addr));
        let mut haves = vec![self.machine.main()];
        haves.extend(self.machine.vote_tip());
        self.out.pull(Pull {
            wants: vec![block],
            haves,
            from: peers,
            pushed,
        });
    }

    /// Whether the ledger's main is `block` or descends from it.
    fn committed_here(&self, block: BlockId) -> Result<bool, NodeError> {
        // Every block under main was fed to the machine, which read it
        // through this handle: no need to look for new packs.
        if !self.ledger.has_here(block) {
            return Ok(false);
        }
        let main = self.machine.main();
        if block == main {
            return Ok(true);
        }
        if self.ledger.height(block)? >= self.ledger.height(main)? {
            return Ok(false);
        }
        Ok(self.ledger.is_ancestor(block, main)?)
    }

    /// Tells the machine of a committed block as an anchor: its height and
    /// the validator set its `chain.toml` names.
    fn anchor(&mut self, block: BlockId) -> Result<(), NodeError> {
        let b = self.ledger.block(block)?;
        let config = self.ledger.chain_config(&b)?;
        let validators = Validators::from_config(&config, |k| Some(self.id_of(k)));
        self.handle(Event::Anchored(Anchor {
            block,
            height: b.height,
            validators: Arc::new(validators),
        }));
        Ok(())
    }

    /// Checks a block that is in the ledger and tells the machine of it
    /// (its parents first, if the machine has not heard of them).
    fn feed(&mut self, block: BlockId, from: NodeId) -> Result<(), NodeError> {
        let mut stack = vec![block];
        while let Some(id) = stack.last().copied() {
            if self.fed.contains_key(&id) || !self.ledger.has(id) {
                stack.pop();
                continue;
            }
            let b = self.ledger.block(id)?;
            let unfed: Vec<BlockId> = b
                .parents
                .iter()
                .filter(|p| {
                    !self.fed.contains_key(p)
                        && self.ledger.has(**p)
                        && !self.committed_here(**p).unwrap_or(true)
                })
                .copied()
                .collect();
            if !unfed.is_empty() {
                stack.extend(unfed);
                continue;
            }
            stack.pop();
            self.fed.insert(id, b.height);
            // Its transactions are checked by re-execution, before the
            // machine counts it valid.
            match self.ledger.check_block(id, &mut self.checker)? {
                Ok(()) => {
                    self.lacking.remove(&id);
                }
                Err(BlockError::MissingValue { .. }) => {
                    // Its pack is indexed but the values it names are
                    // not here yet (another pull's content fetch is under
                    // way, or failed): not refused, pulled with content.
                    self.fed.remove(&id);
                    if self.lacking.insert(id) {
                        self.want(id, from, None);
                    }
                    continue;
                }
                Err(e) => {
                    eprintln!("block {} from a peer is refused: {e}", id.short());
                    self.early.release(id);
                    continue;
                }
            }
            let header = consensus::header(self.ledger, &b, |k| Some(self.id_of(k)))
                .map_err(|e| NodeError::Consensus(e.to_string()))?;
            if let Some(header) = header {
                self.handle(Event::Received {
                    from,
                    message: Said::Block(header),
                });
            }
            for (voter, (by, height, vote)) in self.early.release(id) {
                self.count(by, voter, id, b.height, height, vote);
            }
        }
        Ok(())
    }

    /// Gives the machine a vote for `block` (at height `at`) if it signs
    /// that height; a vote signed for another height is not a vote for
    /// this block, and a certificate holding it would not verify.
    fn count(
        &mut self,
        from: NodeId,
        voter: NodeId,
        block: BlockId,
        at: u64,
        height: u64,
        vote: SignedVote,
    ) {
        if height != at {
            eprintln!(
                "a vote by {} for block {} signs height {height}, not the block's {at}: not counted",
                self.keys
                    .borrow()
                    .keys
                    .get(voter as usize)
                    .map_or("?", |k| k.as_str()),
                block.short()
            );
            return;
        }
        self.votes.insert((block, voter), (height, vote));
        self.handle(Event::Received {
            from,
            message: Said::Vote(Vote { voter, block }),
        });
    }

    /// Carries out the machine's actions, in order.
    fn act(&mut self) -> Result<(), NodeError> {
        while let Some(action) = self.machine.poll() {
            match action {
                Action::Broadcast(m) => self.say(None, m),
                Action::Send { to, message } => self.say(Some(to), message),
                Action::Fetch(block) => self.want(block, NodeId::MAX, None),
                Action::Validate(block) => self.validate(block)?,
                Action::Propose {
                    parents,
                    round,
                    kind,
                    txs,
                } => self.propose(&parents, round, kind, &txs)?,
                Action::PersistVoteTip(block) => {
                    // Durable before the vote can leave (the vote is the
                    // next action); a tip that cannot be written stops the
                    // node rather than vote against a lost one.
                    self.vote_tip
                        .persist(block)
                        .map_err(|e| NodeError::Consensus(e.to_string()))?;
                    let height = self.ledger.height(block)?;
                    let vote = SignedVote::sign(self.key, &self.shared.chain, block, height)
                        .map_err(|e| NodeError::Consensus(e.to_string()))?;
                    let me = self.machine.id();
                    self.votes.insert((block, me), (height, vote));
                }
                Action::Commit { block, voters } => self.commit(block, &voters)?,
            }
        }
        Ok(())
    }

    fn say(&mut self, to: Option<NodeId>, m: Said) {
        let addr = match to {
            Some(peer) => match self.addrs.get(&peer) {
                Some(a) => Some(*a),
                None => return,
            },
            None => None,
        };
        let frame = match m {
            Said::Block(h) => match &self.pushed {
                Some(p @ Message::Proposal(pushed)) if pushed.block == h.id => p.clone(),
                _ => Message::Announce(h.id),
            },
            #[cfg(feature = "byzantine")]
            Said::Vote(v) if self.wrong_heights && v.voter == self.machine.id() => {
                // Test-only: its own votes signed for the next height.
                let Some((height, _)) = self.votes.get(&(v.block, v.voter)) else {
                    return;
                };
                let height = height + 1;
                let Ok(vote) = SignedVote::sign(self.key, &self.shared.chain, v.block, height)
                else {
                    return;
                };
                Message::Vote {
                    block: v.block,
                    height,
                    signature: vote.signature,
                }
            }
            Said::Vote(v) => match self.votes.get(&(v.block, v.voter)) {
                Some((height, vote)) => Message::Vote {
                    block: v.block,
                    height: *height,
                    signature: vote.signature.clone(),
                },
                None => return, // a vote it cannot prove is not sent
            },
            Said::Tx(id) => {
                for line in lines_of(self.shared, &[id]) {
                    match addr {
                        Some(a) => self.txs_to.entry(a).or_default().push(line),
                        None => self.txs_out.push(line),
                    }
                }
                return;
            }
            Said::Fetch(block) => {
                self.want(block, to.unwrap_or(NodeId::MAX), addr);
                return;
            }
        };
        match addr {
            Some(a) => self.out.send(a, frame),
            None => self.out.broadcast(&frame),
        }
    }

    fn validate(&mut self, block: BlockId) -> Result<(), NodeError> {
        if self.own.remove(&block) {
            self.handle(Event::Validated { block, valid: true });
            return Ok(());
        }
        let b = self.ledger.block(block)?;
        let started = Instant::now();
        let mut tries = 0;
        let ahead = b.time.saturating_sub(self.clock());
        let verdict = loop {
            if ahead > MAX_AHEAD_SECS {
                break Verdict::Invalid(format!(
                    "it is dated {ahead} s after this node's clock (at most {MAX_AHEAD_SECS} s): its proposer's clock is ahead, or this node's is behind"
                ));
            }
            match self
                .executor
                .reexecute(&mut self.helper, &mut self.images, &b)
            {
                Ok(v) => break v,
                Err(ExecError::Host(e)) if tries < 2 => {
                    eprintln!("the sandbox helper failed ({e}); starting a new one");
                    self.helper = self.home.spawn_helper()?;
                    tries += 1;
                }
                Err(e) => break Verdict::Invalid(format!("it cannot be re-executed here: {e}")),
            }
        };
        let valid = verdict == Verdict::Valid;
        self.catch_up()?;
        if !valid || self.verbose {
            eprintln!(
                "block {} at height {}: {verdict:?} ({:.1} ms)",
                block.short(),
                b.height,
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        self.handle(Event::Validated { block, valid });
        Ok(())
    }

    fn propose(
        &mut self,
        parents: &[BlockId],
        round: u64,
        kind: Kind,
        txs: &[TxId],
    ) -> Result<(), NodeError> {
        // What was gathered to send goes before the build, not after it.
        self.flush();
        // Oldest first, as they arrived here; the rest stay in the
        // mempools for the next round.
        let lines: Vec<String> = {
            let pool = lock(&self.shared.pool);
            let mut waiting: Vec<&Pending> = txs
                .iter()
                .filter_map(|id| pool.get(id).filter(|p| p.durable))
                .collect();
            waiting.sort_unstable_by_key(|p| p.seq);
            waiting.truncate(self.block_txs);
            block_order(waiting)
                .into_iter()
                .map(|p| p.line.clone())
                .collect()
        };
        let mut time = self.clock();
        for p in parents {
            time = time.max(self.ledger.block(*p)?.time);
        }
        let round = (kind == Kind::Proposal).then_some(round);
        let (proposed, refused) = build(
            self.home,
            self.shared,
            &mut self.executor,
            &mut self.helper,
            &mut self.images,
            Build {
                parents,
                lines: &lines,
                round,
                time,
                key: self.key,
            },
        )?;
        if !refused.is_empty() {
            // Not proposed again.
            self.handle(Event::Dropped(refused));
        }
        self.fed.insert(proposed.block.id, proposed.block.height);
        self.own.insert(proposed.block.id);
        // Pushed whole to the validators: they need not pull it.
        let pushing = Instant::now();
        self.pushed = match utter_net::push::proposal(self.ledger, self.store, proposed.block.id) {
            Ok(p) => p.map(|p| Message::Proposal(Box::new(p))),
            Err(e) => {
                eprintln!(
                    "block {} is announced, not pushed: {e}",
                    proposed.block.id.short()
                );
                None
            }
        };
        lock(&self.shared.head).blocks_made += 1;
        let header = consensus::header(self.ledger, &proposed.block, |k| Some(self.id_of(k)))
            .map_err(|e| NodeError::Consensus(e.to_string()))?
            .expect("this node signed it");
        if self.verbose {
            let t = &proposed.timings;
            eprintln!(
                "proposed {} at height {} in round {}: {} transactions over {} parents ({:.1} ms, {:.1} in dapps, {:.1} writing, {:.1} verifying)",
                proposed.block.id.short(),
                proposed.block.height,
                header.round,
                lines.len(),
                parents.len(),
                t.total.as_secs_f64() * 1e3,
                t.dapps.as_secs_f64() * 1e3,
                t.write.as_secs_f64() * 1e3,
                t.verify.as_secs_f64() * 1e3,
            );
            match &self.pushed {
                Some(Message::Proposal(p)) => eprintln!(
                    "pushing it whole: {} bytes ({} objects, {} chunks), made in {:.1} ms",
                    p.bytes(),
                    p.objects,
                    p.chunks.len(),
                    pushing.elapsed().as_secs_f64() * 1e3
                ),
                _ => eprintln!("announcing it (it is pulled)"),
            }
        }
        #[cfg(feature = "byzantine")]
        if let (true, Some(Message::Proposal(p))) = (self.bad_push, &mut self.pushed) {
            let mid = p.pack.len() / 2;
            p.pack[mid] ^= 0xff;
        }
        #[cfg(feature = "byzantine")]
        if self.equivocate && kind == Kind::Proposal {
            self.equivocate(parents, &lines, round, time + 1, proposed.block.id)?;
        }
        self.handle(Event::Proposed(header));
        Ok(())
    }

    /// Test-only: a second proposal for the same round over the same
    /// parents (another time, so another block), announced to every peer,
    /// and a vote for it beside the vote for the first.
    #[cfg(feature = "byzantine")]
    fn equivocate(
        &mut self,
        parents: &[BlockId],
        lines: &[String],
        round: Option<u64>,
        time: i64,
        first: BlockId,
    ) -> Result<(), NodeError> {
        let other = self.executor.propose_on(
            &mut self.helper,
            &mut self.images,
            parents,
            lines,
            round,
            time,
            self.key,
        )?;
        let id = other.block.id;
        let height = other.block.height;
        let vote = SignedVote::sign(self.key, &self.shared.chain, id, height)
            .map_err(|e| NodeError::Consensus(e.to_string()))?;
        self.out.broadcast(&Message::Announce(id));
        self.out.broadcast(&Message::Vote {
            block: id,
            height,
            signature: vote.signature,
        });
        eprintln!(
            "equivocating in round {}: {first} and {id}",
            round.unwrap_or(0)
        );
        Ok(())
    }

    fn commit(&mut self, block: BlockId, voters: &[NodeId]) -> Result<(), NodeError> {
        let height = self.ledger.height(block)?;
        let votes = voters
            .iter()
            .filter_map(|v| self.votes.get(&(block, *v)))
            .filter(|(h, _)| *h == height)
            .map(|(_, vote)| vote.clone())
            .collect();
        let cert = Certificate {
            chain: self.shared.chain.clone(),
            block,
            height,
            votes,
        };
        self.ledger.write_certificate(&cert)?;
        let old = self.ledger.resolve(MAIN)?;
        if old != block {
            self.ledger.advance(MAIN, old, block)?;
        }
        let dropped = crate::run::settle(self.shared, self.ledger, old, block)?;
        if !dropped.is_empty() {
            self.handle(Event::Dropped(dropped));
        }
        self.certified = Some(Certified {
            block,
            height,
            votes: voters.len(),
        });
        self.votes.retain(|_, (h, _)| *h >= height);
        self.early.prune_below(height);
        // What the machine pruned (and more) need not be remembered here:
        // asked for again, a block under main comes back as an anchor.
        let floor = height.saturating_sub(2 * Config::KEEP);
        self.fed.retain(|_, h| *h >= floor);
        if self.verbose {
            eprintln!(
                "committed {} at height {height} with {} votes",
                block.short(),
                voters.len()
            );
        }
        Ok(())
    }
}

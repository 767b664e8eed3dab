//! A deterministic simulator: validators (some Byzantine) and door
//! controllers on a network with random delays, drops, reordering,
//! partitions and heals, crash-restarts, in virtual time, all from one
//! seed. It checks safety on every commit and liveness at the end.
//!
//! A failing seed reproduces exactly: the same seed gives the same run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use utter_formats::BlockId;

use crate::machine::{
    Action, Anchor, Config, Event, Header, Kind, Machine, Message, NodeId, Persisted, TxId,
    Validators, Vote,
};

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.below(span + 1))
    }
}

/// One simulated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// Validators.
    pub validators: u32,
    /// Byzantine validators among them (at most ⌊(n−1)/3⌋ for the
    /// guarantees to hold).
    pub byzantine: u32,
    /// Door controllers (non-validators keeping side branches).
    pub controllers: u32,
    /// Honest nodes that start as non-validators and may be made
    /// validators by a set change.
    pub spares: u32,
    /// Validator-set changes to carry out (each a governance transaction
    /// to a joint set, then one completing it), drawn among validators and
    /// spares with at most ⌊(n−1)/3⌋ Byzantine in every set.
    pub set_changes: u32,
    /// Link delay range.
    pub delay: (Duration, Duration),
    /// Probability that a message is lost before the heal.
    pub drop: f64,
    /// Whether the network may be split in two until the heal.
    pub partitions: bool,
    /// Partitions and crashes happen before this; afterwards the network
    /// is reliable.
    pub heal_at: Duration,
    /// Transactions submitted to honest nodes, spread over `[0, heal_at]`.
    pub txs: u32,
    /// Crash-restarts of honest nodes before the heal.
    pub crashes: u32,
    /// After the heal, everything must commit within this.
    pub liveness_bound: Duration,
    /// Test-only: honest validators ignore the vote rule.
    #[cfg(test)]
    pub weaken_vote_rule: bool,
    /// Test-only: honest nodes take a relayed header's round, kind and
    /// proposer as they come, instead of only from the signed block its id
    /// names (the rule before they were in the signed commit).
    #[cfg(test)]
    pub trust_relayed_headers: bool,
    /// Test-only: a change switches straight to the new set, without the
    /// joint phase in which the outgoing set must also reach its quorum.
    #[cfg(test)]
    pub weaken_set_change: bool,
}

impl Scenario {
    /// A steady network for measuring: `validators` honest validators,
    /// fixed `link` delay, no drops, partitions or crashes, `txs`
    /// transactions spread over `over`.
    pub fn steady(validators: u32, txs: u32, link: Duration, over: Duration) -> Self {
        Self {
            seed: 1,
            validators,
            byzantine: 0,
            controllers: 0,
            delay: (link, link),
            drop: 0.0,
            partitions: false,
            heal_at: over,
            txs,
            crashes: 0,
            liveness_bound: Duration::from_secs(60),
            spares: 0,
            set_changes: 0,
            #[cfg(test)]
            weaken_vote_rule: false,
            #[cfg(test)]
            trust_relayed_headers: false,
            #[cfg(test)]
            weaken_set_change: false,
        }
    }

    /// A random scenario for `seed`: n ∈ {1, 3, 4, 7}, up to f Byzantine,
    /// 0–2 controllers, drops, partitions and crashes; in about one in
    /// three, 0–2 spare nodes and one or two validator-set changes.
    pub fn random(seed: u64) -> Self {
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        let validators = [1, 3, 4, 7][rng.below(4) as usize];
        let f = (validators - 1) / 3;
        Self {
            seed,
            validators,
            byzantine: rng.below(u64::from(f) + 1) as u32,
            controllers: rng.below(3) as u32,
            delay: (
                Duration::from_millis(1),
                Duration::from_millis(1 + rng.below(60)),
            ),
            drop: [0.0, 0.05, 0.2][rng.below(3) as usize],
            partitions: true,
            heal_at: Duration::from_millis(500 + rng.below(4000)),
            txs: 1 + rng.below(12) as u32,
            crashes: rng.below(3) as u32,
            liveness_bound: Duration::from_secs(60),
            spares: rng.below(3) as u32,
            set_changes: if rng.chance(0.35) {
                1 + rng.below(2) as u32
            } else {
                0
            },
            #[cfg(test)]
            weaken_vote_rule: false,
            #[cfg(test)]
            trust_relayed_headers: false,
            #[cfg(test)]
            weaken_set_change: false,
        }
    }
}

/// What went wrong in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Two committed blocks on different chains.
    Fork(String),
    /// A committed block that is not valid.
    InvalidCommit(String),
    /// An honest validator voted for a block not descending from its
    /// previous vote.
    HonestVoteFork(String),
    /// Something did not commit (or a side branch was not merged, or a
    /// validator-set change did not take effect) within the bound after
    /// the heal.
    Liveness(String),
}

impl Failure {
    /// Whether this is a safety violation (as opposed to liveness).
    pub fn is_safety(&self) -> bool {
        !matches!(self, Failure::Liveness(_))
    }
}

/// Figures from one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Events fed to machines.
    pub events: u64,
    /// Commits made by honest validators (each node's own).
    pub commits: u64,
    /// Blocks created.
    pub blocks: u64,
    /// Simulated time of the run.
    pub simulated: Duration,
    /// Submit → first honest commit containing it, per transaction.
    pub commit_latencies: Vec<Duration>,
    /// Real (not simulated) time spent inside the machines.
    pub machine_time: Duration,
    /// Relayed headers that were not what their block's signed commit
    /// says (a Byzantine relay changed the round, kind or proposer),
    /// dropped before a machine saw them.
    pub forged_dropped: u64,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: NodeId,
        from: NodeId,
        message: Message,
    },
    Timer {
        node: NodeId,
    },
    Validated {
        node: NodeId,
        life: u32,
        block: BlockId,
    },
    Proposed {
        node: NodeId,
        life: u32,
        header: Header,
    },
    /// The node's ledger answers a fetch for a block under its main.
    Anchored {
        node: NodeId,
        life: u32,
        block: BlockId,
    },
    LocalTx {
        node: NodeId,
        tx: TxId,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    ByzantineTick {
        node: NodeId,
    },
    /// The operators look at the committed set and submit the next
    /// governance transaction of the plan.
    GovTick,
}

struct Global {
    header: Header,
    valid: bool,
    height: u64,
    /// The set certifying the block, and the set its state names.
    sets: (Arc<Validators>, Arc<Validators>),
}

/// Governance transactions' ids start here (Byzantine ones below).
const GOV_TXS: u64 = 3_000_000;

struct Node {
    machine: Option<Machine>,
    life: u32,
    timer: Option<Duration>,
    persisted_tip: Option<BlockId>,
    persisted_main: BlockId,
    last_vote: Option<BlockId>,
    group: u32,
    /// Blocks in its ledger (everything it received or made): what its
    /// driver serves to a fetch, whatever its machine pruned.
    ledger: BTreeSet<BlockId>,
}

/// A simulation in progress.
pub struct Sim {
    sc: Scenario,
    rng: Rng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Ev>>,
    blocks: BTreeMap<BlockId, Global>,
    next_block: u64,
    genesis: BlockId,
    nodes: Vec<Node>,
    validators: Vec<NodeId>,
    genesis_set: Arc<Validators>,
    /// Every node some set of the plan names.
    ever: BTreeSet<NodeId>,
    /// The validator sets to change to, in order.
    gov_plan: Vec<Vec<NodeId>>,
    /// Governance transactions: the committed block the approvers read
    /// the set from, its epoch, and the members they name.
    gov: BTreeMap<TxId, (BlockId, u64, Vec<NodeId>)>,
    gov_pending: Option<TxId>,
    /// Draws for governance only, so scenarios without changes run as
    /// they did before changes existed.
    gov_rng: Rng,
    byzantine: BTreeSet<NodeId>,
    committed: BlockId,
    submitted: BTreeMap<TxId, Duration>,
    submitted_to: BTreeMap<TxId, NodeId>,
    pending_while_down: BTreeMap<NodeId, Vec<TxId>>,
    healed: bool,
    committed_at: BTreeMap<TxId, Duration>,
    side_blocks: Vec<BlockId>,
    byz_seen: Vec<BlockId>,
    byz_votes: Vec<Vote>,
    failure: Option<Failure>,
    report: Report,
    trace: bool,
}

fn block_id(n: u64) -> BlockId {
    let mut b = [0u8; 20];
    // A bijection of the counter, so ids look like hashes and sort
    // unrelated to creation order.
    b[..8].copy_from_slice(&Rng::new(n).next_u64().to_be_bytes());
    b[8..16].copy_from_slice(&n.to_be_bytes());
    b[8] = 0xB1;
    BlockId::from_sha1(b)
}

fn tx_id(n: u64) -> TxId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    TxId::from_bytes(b)
}

impl Sim {
    /// Sets up `sc`.
    pub fn new(sc: Scenario) -> Self {
        let rng = Rng::new(sc.seed);
        let genesis = block_id(0);
        let total = sc.validators + sc.spares + sc.controllers;
        let validators: Vec<NodeId> = (0..sc.validators).collect();
        // The Byzantine ones are the last validators.
        let byzantine: BTreeSet<NodeId> =
            (sc.validators - sc.byzantine.min(sc.validators)..sc.validators).collect();
        let mut gov_rng = Rng::new(sc.seed ^ 0x6A09_E667_F3BC_C908);
        let gov_plan = plan_sets(&sc, &byzantine, &mut gov_rng);
        let genesis_set = Arc::new(Validators::new(validators.clone()));
        let ever: BTreeSet<NodeId> = validators
            .iter()
            .chain(gov_plan.iter().flatten())
            .copied()
            .collect();
        let mut blocks = BTreeMap::new();
        blocks.insert(
            genesis,
            Global {
                header: Header::root(genesis),
                valid: true,
                height: 0,
                sets: (genesis_set.clone(), genesis_set.clone()),
            },
        );
        let mut sim = Self {
            sc,
            rng,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            blocks,
            next_block: 1,
            genesis,
            nodes: Vec::new(),
            validators,
            genesis_set,
            ever,
            gov_plan,
            gov: BTreeMap::new(),
            gov_pending: None,
            gov_rng,
            byzantine,
            committed: genesis,
            submitted: BTreeMap::new(),
            submitted_to: BTreeMap::new(),
            pending_while_down: BTreeMap::new(),
            healed: false,
            committed_at: BTreeMap::new(),
            side_blocks: Vec::new(),
            byz_seen: Vec::new(),
            byz_votes: Vec::new(),
            failure: None,
            report: Report::default(),
            trace: false,
        };
        for id in 0..total {
            let machine = (!sim.byzantine.contains(&id))
                .then(|| sim.fresh_machine(id, None, genesis, Vec::new()));
            sim.nodes.push(Node {
                machine,
                life: 0,
                timer: None,
                persisted_tip: None,
                persisted_main: genesis,
                last_vote: None,
                group: 0,
                ledger: BTreeSet::new(),
            });
        }
        sim.plan();
        sim
    }

    fn fresh_machine(
        &self,
        id: NodeId,
        tip: Option<BlockId>,
        main: BlockId,
        blocks: Vec<(Header, bool)>,
    ) -> Machine {
        #[allow(unused_mut)]
        let mut cfg = Config::new(id, self.validators.clone());
        cfg.round_timeout = Duration::from_millis(200);
        cfg.max_round_timeout = Duration::from_secs(3);
        cfg.side_interval = Duration::from_millis(100);
        // Little history, so every run prunes and late blocks need anchors.
        cfg.keep = 6;
        #[cfg(test)]
        {
            cfg.unsafe_ignore_vote_rule = self.sc.weaken_vote_rule;
        }
        Machine::new(
            cfg,
            Persisted {
                genesis: self.genesis,
                main,
                vote_tip: tip,
                blocks,
                mempool: Vec::new(),
            },
            self.now,
        )
    }

    /// Prints every event and action to stderr (for one seed).
    pub fn traced(mut self) -> Self {
        self.trace = true;
        self
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    fn honest(&self, n: NodeId) -> bool {
        !self.byzantine.contains(&n)
    }

    /// Draws the scenario's schedule: transactions, partitions, crashes.
    fn plan(&mut self) {
        let total = self.nodes.len() as u32;
        let heal = self.sc.heal_at;
        let honest: Vec<NodeId> = (0..total).filter(|n| self.honest(*n)).collect();
        for i in 0..self.sc.txs {
            let node = honest[self.rng.below(honest.len() as u64) as usize];
            let at = self.rng.between(Duration::ZERO, heal);
            self.push(
                at,
                Ev::LocalTx {
                    node,
                    tx: tx_id(u64::from(i) + 1),
                },
            );
        }
        // One partition into two groups for a while (controllers are often
        // cut off alone, as a door controller would be).
        if self.sc.partitions && self.rng.chance(0.7) {
            for n in 0..total {
                self.nodes[n as usize].group = if n >= self.sc.validators {
                    self.rng.below(2) as u32
                } else {
                    u32::from(self.rng.chance(0.4))
                };
            }
        }
        let crashable: Vec<NodeId> = honest.clone();
        for _ in 0..self.sc.crashes {
            let node = crashable[self.rng.below(crashable.len() as u64) as usize];
            let at = self.rng.between(Duration::ZERO, heal);
            let down = self
                .rng
                .between(Duration::from_millis(10), Duration::from_millis(800));
            self.push(at, Ev::Crash { node });
            self.push(at + down, Ev::Restart { node });
        }
        for n in 0..total {
            if !self.honest(n) {
                self.push(Duration::from_millis(50), Ev::ByzantineTick { node: n });
            }
        }
        if !self.gov_plan.is_empty() {
            let at = self.gov_rng.between(Duration::ZERO, heal);
            self.push(at, Ev::GovTick);
        }
        for n in 0..total {
            self.schedule_timer(n);
        }
    }

    fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.now < self.sc.heal_at && self.nodes[a as usize].group != self.nodes[b as usize].group
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        if from == to {
            return;
        }
        if self.partitioned(from, to) {
            return;
        }
        if self.now < self.sc.heal_at && self.rng.chance(self.sc.drop) {
            return;
        }
        let delay = self.rng.between(self.sc.delay.0, self.sc.delay.1);
        let at = self.now + delay;
        self.push(at, Ev::Deliver { to, from, message });
    }

    fn broadcast(&mut self, from: NodeId, message: &Message) {
        for to in 0..self.nodes.len() as NodeId {
            self.send(from, to, message.clone());
        }
    }

    fn new_block(
        &mut self,
        parents: Vec<BlockId>,
        round: u64,
        proposer: NodeId,
        kind: Kind,
        txs: Vec<TxId>,
        own_valid: bool,
    ) -> Header {
        let id = block_id(self.next_block);
        self.next_block += 1;
        let valid = own_valid
            && parents
                .iter()
                .all(|p| self.blocks.get(p).is_some_and(|g| g.valid));
        let height = parents
            .iter()
            .filter_map(|p| self.blocks.get(p))
            .map(|g| g.height + 1)
            .max()
            .unwrap_or(1);
        // The executor's rule: the parents' state set with the highest
        // epoch certifies the block; its governance transactions approved
        // over that epoch, at a block it descends from, change its state's
        // set.
        let mut certifiers = self.genesis_set.clone();
        let mut agree = true;
        for (i, p) in parents.iter().enumerate() {
            let state = &self.blocks[p].sets.1;
            if i == 0 || state.epoch > certifiers.epoch {
                certifiers = state.clone();
            } else if state.epoch == certifiers.epoch && **state != *certifiers {
                agree = false;
            }
        }
        let mut state = certifiers.clone();
        for t in &txs {
            if let Some((at, from, members)) = self.gov.get(t)
                && *from == state.epoch
                && parents.iter().any(|p| self.descends(*p, *at))
            {
                #[allow(unused_mut)]
                let mut next = state.changed_to(members.clone());
                #[cfg(test)]
                if self.sc.weaken_set_change {
                    next.outgoing.clear();
                    next.outgoing_quorum = 0;
                }
                state = Arc::new(next);
            }
        }
        let header = Header {
            id,
            parents,
            round,
            proposer,
            kind,
            txs,
            validators: (state.epoch > certifiers.epoch).then(|| state.clone()),
        };
        self.blocks.insert(
            id,
            Global {
                header: header.clone(),
                valid: valid && agree,
                height,
                sets: (certifiers, state),
            },
        );
        self.report.blocks += 1;
        if kind == Kind::Side {
            self.side_blocks.push(id);
        }
        header
    }

    /// Whether `a` is `b` or descends from it, in the global DAG.
    fn descends(&self, a: BlockId, b: BlockId) -> bool {
        if a == b {
            return true;
        }
        let Some(floor) = self.blocks.get(&b).map(|g| g.height) else {
            return false;
        };
        let mut stack = vec![a];
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            let Some(g) = self.blocks.get(&x) else {
                continue;
            };
            for p in &g.header.parents {
                if *p == b {
                    return true;
                }
                if self.blocks.get(p).is_some_and(|pg| pg.height > floor) && seen.insert(*p) {
                    stack.push(*p);
                }
            }
        }
        false
    }

    fn fail(&mut self, f: Failure) {
        if self.failure.is_none() {
            self.failure = Some(f);
        }
    }

    fn schedule_timer(&mut self, node: NodeId) {
        let Some(m) = self.nodes[node as usize].machine.as_ref() else {
            return;
        };
        let Some(at) = m.poll_timeout() else {
            return;
        };
        let at = at.max(self.now);
        if self.nodes[node as usize].timer.is_some_and(|t| t <= at) {
            return;
        }
        self.nodes[node as usize].timer = Some(at);
        self.push(at, Ev::Timer { node });
    }

    fn feed(&mut self, node: NodeId, event: Event) {
        let now = self.now;
        let Some(m) = self.nodes[node as usize].machine.as_mut() else {
            return;
        };
        self.report.events += 1;
        if self.trace {
            eprintln!("{:>10.3?} {node} <- {event:?}", now);
        }
        let started = std::time::Instant::now();
        m.handle(now, event);
        self.report.machine_time += started.elapsed();
        self.run_actions(node);
    }

    fn run_actions(&mut self, node: NodeId) {
        loop {
            let Some(m) = self.nodes[node as usize].machine.as_mut() else {
                return;
            };
            let Some(action) = m.poll() else { break };
            self.act(node, action);
            // A crash may strike between any two actions.
            if self.now < self.sc.heal_at && self.crash_between_actions() {
                self.crash(node);
                let down = self
                    .rng
                    .between(Duration::from_millis(10), Duration::from_millis(300));
                self.push(self.now + down, Ev::Restart { node });
                return;
            }
        }
        self.schedule_timer(node);
    }

    fn crash_between_actions(&mut self) -> bool {
        self.sc.crashes > 0 && self.rng.chance(0.0005)
    }

    fn act(&mut self, node: NodeId, action: Action) {
        if self.trace {
            eprintln!("{:>10.3?} {node} -> {action:?}", self.now);
        }
        let life = self.nodes[node as usize].life;
        match action {
            Action::Broadcast(message) => {
                if let Message::Vote(v) = &message {
                    self.check_vote(node, *v);
                }
                let message = self.as_stored(message);
                self.broadcast(node, &message);
            }
            Action::Send { to, message } => {
                let message = self.as_stored(message);
                self.send(node, to, message);
            }
            Action::Fetch(id) => {
                // A block under what the node committed is in its ledger
                // (the driver answers from there; the machine may have
                // pruned it).
                let main = self.nodes[node as usize].persisted_main;
                if self.blocks.contains_key(&id) && self.descends(main, id) {
                    let at = self.now + Duration::from_micros(100);
                    self.push(
                        at,
                        Ev::Anchored {
                            node,
                            life,
                            block: id,
                        },
                    );
                } else {
                    self.broadcast(node, &Message::Fetch(id));
                }
            }
            Action::Validate(block) => {
                let at = self.now
                    + self
                        .rng
                        .between(Duration::from_micros(200), Duration::from_millis(3));
                self.push(at, Ev::Validated { node, life, block });
            }
            Action::Propose {
                parents,
                round,
                kind,
                txs,
            } => {
                let header = self.new_block(parents, round, node, kind, txs, true);
                let at = self.now
                    + self
                        .rng
                        .between(Duration::from_micros(200), Duration::from_millis(3));
                self.push(at, Ev::Proposed { node, life, header });
            }
            Action::PersistVoteTip(id) => self.nodes[node as usize].persisted_tip = Some(id),
            Action::Commit { block, voters } => {
                self.nodes[node as usize].persisted_main = block;
                self.check_commit(node, block, &voters);
            }
        }
    }

    fn check_vote(&mut self, node: NodeId, v: Vote) {
        if v.voter != node || !self.ever.contains(&node) {
            return;
        }
        if let Some(prev) = self.nodes[node as usize].last_vote {
            if prev == v.block {
                return; // a re-announcement
            }
            if !self.descends(v.block, prev) {
                self.fail(Failure::HonestVoteFork(format!(
                    "validator {node} voted for {} after {}, which it does not descend from",
                    v.block.short(),
                    prev.short()
                )));
            }
        }
        self.nodes[node as usize].last_vote = Some(v.block);
    }

    fn check_commit(&mut self, node: NodeId, block: BlockId, voters: &[NodeId]) {
        if self.ever.contains(&node) {
            self.report.commits += 1;
        }
        let distinct: BTreeSet<NodeId> = voters.iter().copied().collect();
        if let Some(g) = self.blocks.get(&block)
            && !g.sets.0.certified_by(&distinct)
        {
            let sets = g.sets.0.clone();
            self.fail(Failure::InvalidCommit(format!(
                "node {node} committed {} with the votes of {distinct:?}, which do not certify \
                 it under {sets:?}",
                block.short(),
            )));
        }
        if !self.blocks.get(&block).is_some_and(|g| g.valid) {
            self.fail(Failure::InvalidCommit(format!(
                "node {node} committed {}, which is not valid",
                block.short()
            )));
            return;
        }
        if self.descends(block, self.committed) {
            let old = self.committed;
            self.committed = block;
            // Record when each transaction first committed.
            let mut stack = vec![block];
            let mut seen = BTreeSet::new();
            while let Some(x) = stack.pop() {
                if self.descends(old, x) {
                    continue;
                }
                let g = &self.blocks[&x];
                let txs = g.header.txs.clone();
                let parents = g.header.parents.clone();
                for t in txs {
                    self.committed_at.entry(t).or_insert(self.now);
                }
                for p in parents {
                    if seen.insert(p) {
                        stack.push(p);
                    }
                }
            }
        } else if !self.descends(self.committed, block) {
            self.fail(Failure::Fork(format!(
                "node {node} committed {}, on another chain than {}",
                block.short(),
                self.committed.short()
            )));
        }
    }

    fn crash(&mut self, node: NodeId) {
        let n = &mut self.nodes[node as usize];
        n.machine = None;
        n.life += 1;
        n.timer = None;
        for peer in 0..self.nodes.len() as NodeId {
            if peer != node && self.honest(peer) {
                self.feed(peer, Event::PeerDisconnected(node));
            }
        }
    }

    fn restart(&mut self, node: NodeId, stored: Vec<(Header, bool)>, mempool: Vec<TxId>) {
        let (tip, main) = {
            let n = &self.nodes[node as usize];
            (n.persisted_tip, n.persisted_main)
        };
        let mut m = self.fresh_machine(node, tip, main, stored);
        for tx in mempool {
            m.handle(self.now, Event::LocalTx(tx));
        }
        self.nodes[node as usize].machine = Some(m);
        self.run_actions(node);
        // Both ends of each connection see it.
        for peer in 0..self.nodes.len() as NodeId {
            if peer != node {
                self.feed(node, Event::PeerConnected(peer));
                if self.honest(peer) {
                    self.feed(peer, Event::PeerConnected(node));
                }
            }
        }
    }

    /// What a node has on disk: the blocks it holds (the ledger) and its
    /// mempool (persisted on accept), in an order parents-first.
    fn stored(&self, node: NodeId) -> (Vec<(Header, bool)>, Vec<TxId>) {
        // The simulator knows the node's ledger as the blocks the global
        // DAG has that the node could have received; model it as the
        // blocks under its persisted main plus its own side blocks.
        let n = &self.nodes[node as usize];
        let mut out = Vec::new();
        let mut stack = vec![n.persisted_main];
        if let Some(t) = n.persisted_tip {
            stack.push(t);
        }
        for s in &self.side_blocks {
            if self.blocks[s].header.proposer == node {
                stack.push(*s);
            }
        }
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            if x == self.genesis || !seen.insert(x) {
                continue;
            }
            let g = &self.blocks[&x];
            out.push((g.height, g.header.clone(), g.valid));
            stack.extend(g.header.parents.iter().copied());
        }
        out.sort_by_key(|(h, hd, _)| (*h, hd.id));
        let blocks = out.into_iter().map(|(_, h, v)| (h, v)).collect();
        let mempool: Vec<TxId> = self
            .submitted
            .iter()
            .filter(|(t, _)| !self.committed_at.contains_key(t))
            .filter(|(t, _)| self.submitted_to.get(t) == Some(&node))
            .map(|(t, _)| *t)
            .collect();
        (blocks, mempool)
    }

    fn byzantine_tick(&mut self, node: NodeId) {
        let known = self.byz_seen.len() as u64;
        // Propose two conflicting blocks (one of them sometimes invalid)
        // in a round it leads, and show each to a different half.
        let base_round = self.rng.below(40);
        let parent = if known == 0 {
            self.genesis
        } else {
            self.byz_seen[self.rng.below(known) as usize]
        };
        let set = &self.blocks[&parent].sets.1.members;
        let n = set.len() as u64;
        let place = set.iter().position(|m| *m == node).unwrap_or(0) as u64;
        let round = base_round - base_round % n + place;
        let (ta, tb) = (self.rng.below(1000), self.rng.below(1000));
        let a = self.new_block(
            vec![parent],
            round,
            node,
            Kind::Proposal,
            vec![tx_id(1_000_000 + ta)],
            true,
        );
        let invalid = self.rng.chance(0.5);
        let b = self.new_block(
            vec![parent],
            round,
            node,
            Kind::Proposal,
            vec![tx_id(2_000_000 + tb)],
            !invalid,
        );
        let withhold = self.rng.chance(0.3);
        for to in 0..self.nodes.len() as NodeId {
            let header = if to % 2 == 0 { a.clone() } else { b.clone() };
            if !withhold {
                self.send(node, to, Message::Block(header));
            }
        }
        // Vote for both, and for something invalid.
        for h in [&a, &b] {
            let v = Vote {
                voter: node,
                block: h.id,
            };
            self.byz_votes.push(v);
            self.broadcast(node, &Message::Vote(v));
        }
        // Replay old votes (its own and others').
        for _ in 0..3 {
            if self.byz_votes.is_empty() {
                break;
            }
            let v = self.byz_votes[self.rng.below(self.byz_votes.len() as u64) as usize];
            self.broadcast(node, &Message::Vote(v));
        }
        if self.now < self.sc.heal_at + self.sc.liveness_bound {
            let next = self.now
                + self
                    .rng
                    .between(Duration::from_millis(50), Duration::from_millis(400));
            self.push(next, Ev::ByzantineTick { node });
        }
    }

    /// A block an honest node sends is the block as stored (a driver
    /// announces an id and the peer reads the block, not the machine's
    /// memory of it, which keeps no transactions of committed blocks).
    fn as_stored(&self, message: Message) -> Message {
        match message {
            Message::Block(h) => match self.blocks.get(&h.id) {
                Some(g) => Message::Block(g.header.clone()),
                None => Message::Block(h),
            },
            other => other,
        }
    }

    /// Whether a relayed block header differs from the block its id names.
    /// A real node derives the header from the block itself (the round from
    /// its signed `Round:` trailer, the proposer from its signature, the id
    /// from its bytes), so a changed field is a different, unsigned block;
    /// here the global registry plays the signed commit.
    fn forged(&self, message: &Message) -> bool {
        let Message::Block(h) = message else {
            return false;
        };
        #[cfg(test)]
        if self.sc.trust_relayed_headers {
            return false;
        }
        self.blocks.get(&h.id).is_none_or(|g| g.header != *h)
    }

    fn byzantine_receive(&mut self, node: NodeId, message: Message) {
        match message {
            Message::Block(h) => {
                // Relays an honest proposal with its round moved on (the
                // leader check then fails), racing the real one.
                if h.kind == Kind::Proposal && self.honest(h.proposer) {
                    let mut forged = h.clone();
                    forged.round += 1 + self.rng.below(3);
                    self.broadcast(node, &Message::Block(forged));
                }
                self.byz_seen.push(h.id);
                // Votes for whatever it sees, valid or not.
                let v = Vote {
                    voter: node,
                    block: h.id,
                };
                self.byz_votes.push(v);
                self.broadcast(node, &Message::Vote(v));
            }
            Message::Vote(v) => self.byz_votes.push(v),
            // Withholds every block it is asked for.
            Message::Fetch(_) | Message::Tx(_) => {}
        }
    }

    /// Runs to the end and checks liveness; `Err` on the first failure.
    pub fn run(mut self) -> Result<Report, (Failure, Report)> {
        let mut end = self.sc.heal_at + self.sc.liveness_bound;
        let mut settled = false;
        while let Some(Reverse((at, _, idx))) = self.queue.pop() {
            if at > end || self.failure.is_some() {
                break;
            }
            // Once everything has committed after the heal, run one more
            // simulated second for late forks, then stop; work that
            // appears in that second (a controller's new side block) puts
            // the full liveness bound back.
            if at >= self.sc.heal_at {
                let done = self.all_committed();
                if !settled && done {
                    settled = true;
                    end = end.min(at + Duration::from_secs(1));
                } else if settled && !done {
                    settled = false;
                    end = self.sc.heal_at + self.sc.liveness_bound;
                }
            }
            self.now = at;
            let Some(ev) = self.events[idx].take() else {
                continue;
            };
            match ev {
                Ev::Deliver { to, from, message } => {
                    if self.byzantine.contains(&to) {
                        self.byzantine_receive(to, message);
                    } else if self.forged(&message) {
                        self.report.forged_dropped += 1;
                    } else {
                        // A fetch is answered from the ledger too (a
                        // node's driver serves every block it stored;
                        // its machine may have pruned old ones).
                        match &message {
                            Message::Fetch(id)
                                if self.nodes[to as usize].machine.is_some()
                                    && self.nodes[to as usize].ledger.contains(id) =>
                            {
                                let header = self.blocks[id].header.clone();
                                self.send(to, from, Message::Block(header));
                            }
                            Message::Block(h) if self.nodes[to as usize].machine.is_some() => {
                                self.nodes[to as usize].ledger.insert(h.id);
                            }
                            _ => {}
                        }
                        self.feed(to, Event::Received { from, message });
                    }
                }
                Ev::Timer { node } => {
                    if self.nodes[node as usize].timer != Some(at) {
                        continue;
                    }
                    self.nodes[node as usize].timer = None;
                    if let Some(m) = self.nodes[node as usize].machine.as_mut() {
                        self.report.events += 1;
                        let started = std::time::Instant::now();
                        m.handle_timeout(at);
                        self.report.machine_time += started.elapsed();
                        self.run_actions(node);
                    }
                }
                Ev::Validated { node, life, block } => {
                    if self.nodes[node as usize].life == life {
                        let valid = self.blocks[&block].valid;
                        self.feed(node, Event::Validated { block, valid });
                    }
                }
                Ev::Proposed { node, life, header } => {
                    if self.nodes[node as usize].life == life {
                        self.nodes[node as usize].ledger.insert(header.id);
                        self.feed(node, Event::Proposed(header));
                    }
                }
                Ev::Anchored { node, life, block } => {
                    if self.nodes[node as usize].life == life {
                        let g = &self.blocks[&block];
                        let anchor = Anchor {
                            block,
                            height: g.height,
                            validators: g.sets.1.clone(),
                        };
                        self.feed(node, Event::Anchored(anchor));
                    }
                }
                Ev::LocalTx { node, tx } => {
                    self.submitted.insert(tx, self.now);
                    self.submitted_to.insert(tx, node);
                    if self.nodes[node as usize].machine.is_some() {
                        self.feed(node, Event::LocalTx(tx));
                    } else {
                        // The node is down: the client retries after restart.
                        self.pending_while_down.entry(node).or_default().push(tx);
                    }
                }
                Ev::Crash { node } => {
                    if self.nodes[node as usize].machine.is_some() {
                        self.crash(node);
                    }
                }
                Ev::Restart { node } => {
                    if self.nodes[node as usize].machine.is_none() {
                        let (stored, mut mempool) = self.stored(node);
                        mempool.extend(self.pending_while_down.remove(&node).unwrap_or_default());
                        self.restart(node, stored, mempool);
                    }
                }
                Ev::ByzantineTick { node } => self.byzantine_tick(node),
                Ev::GovTick => self.gov_tick(),
            }
            if at >= self.sc.heal_at && !self.healed {
                self.healed = true;
                // Reconnection: every node greets every other.
                for a in 0..self.nodes.len() as NodeId {
                    for b in 0..self.nodes.len() as NodeId {
                        if a != b && self.honest(a) {
                            self.feed(a, Event::PeerConnected(b));
                        }
                    }
                }
            }
        }
        self.now = self.now.max(end);
        self.report.simulated = self.now;
        if self.failure.is_none() {
            self.check_liveness();
        }
        for (t, at) in &self.submitted {
            if let Some(c) = self.committed_at.get(t) {
                self.report.commit_latencies.push(c.saturating_sub(*at));
            }
        }
        match self.failure.take() {
            Some(f) => Err((f, self.report)),
            None => Ok(self.report),
        }
    }

    /// The operators' side of a change: approvals are given over the
    /// committed set (an honest validator approves only what it saw
    /// committed), so the next step is submitted once the last one is in a
    /// committed block; a step rejected there is submitted again.
    fn gov_tick(&mut self) {
        let state = self.blocks[&self.committed].sets.1.clone();
        if self.gov_done(&state) {
            return;
        }
        let waiting = self
            .gov_pending
            .is_some_and(|t| !self.committed_at.contains_key(&t));
        if !waiting {
            let members = if state.outgoing.is_empty() {
                self.gov_plan[(state.epoch / 2) as usize].clone()
            } else {
                // Complete the change under way.
                state.members.clone()
            };
            let tx = tx_id(GOV_TXS + self.gov.len() as u64);
            self.gov.insert(tx, (self.committed, state.epoch, members));
            self.gov_pending = Some(tx);
            let to: Vec<NodeId> = state
                .members
                .iter()
                .chain(&state.outgoing)
                .filter(|n| self.honest(**n))
                .copied()
                .collect();
            let node = to[self.gov_rng.below(to.len() as u64) as usize];
            self.push(self.now, Ev::LocalTx { node, tx });
        }
        self.push(self.now + Duration::from_millis(100), Ev::GovTick);
    }

    /// Whether every planned change has taken effect and completed.
    fn gov_done(&self, state: &Validators) -> bool {
        state.epoch >= 2 * self.gov_plan.len() as u64
    }

    fn all_committed(&self) -> bool {
        self.gov_done(&self.blocks[&self.committed].sets.1)
            && self
                .submitted
                .keys()
                .all(|t| self.committed_at.contains_key(t))
            && self
                .side_blocks
                .iter()
                .all(|s| self.descends(self.committed, *s))
    }

    fn check_liveness(&mut self) {
        let main = self.committed;
        let state = self.blocks[&main].sets.1.clone();
        if !self.gov_done(&state) {
            self.fail(Failure::Liveness(format!(
                "the validator-set changes stopped at epoch {} of {} ({:?})",
                state.epoch,
                2 * self.gov_plan.len(),
                state
            )));
            return;
        }
        for t in self.submitted.keys() {
            if !self.committed_at.contains_key(t) {
                self.fail(Failure::Liveness(format!(
                    "a transaction submitted to node {} never committed",
                    self.submitted_to.get(t).copied().unwrap_or(NodeId::MAX)
                )));
                return;
            }
        }
        for s in self.side_blocks.clone() {
            if !self.descends(main, s) {
                self.fail(Failure::Liveness(format!(
                    "side block {} of controller {} was never merged into main",
                    s.short(),
                    self.blocks[&s].header.proposer
                )));
                return;
            }
        }
    }
}

/// Draws the sets a scenario changes to: each differs from the one before,
/// and has at most ⌊(n−1)/3⌋ Byzantine members.
fn plan_sets(sc: &Scenario, byzantine: &BTreeSet<NodeId>, rng: &mut Rng) -> Vec<Vec<NodeId>> {
    let pool: Vec<NodeId> = (0..sc.validators + sc.spares).collect();
    let mut prev: Vec<NodeId> = (0..sc.validators).collect();
    let mut plan = Vec::new();
    for _ in 0..sc.set_changes {
        for _ in 0..50 {
            let sizes: Vec<usize> = [1, 3, 4, 7]
                .into_iter()
                .filter(|s| *s <= pool.len())
                .collect();
            let size = sizes[rng.below(sizes.len() as u64) as usize];
            let mut left = pool.clone();
            let mut set = Vec::new();
            while set.len() < size {
                set.push(left.remove(rng.below(left.len() as u64) as usize));
            }
            let bad = set.iter().filter(|n| byzantine.contains(n)).count();
            let mut sorted = set.clone();
            sorted.sort_unstable();
            let mut before = prev.clone();
            before.sort_unstable();
            if bad <= (size - 1) / 3 && sorted != before {
                prev = set.clone();
                plan.push(set);
                break;
            }
        }
    }
    plan
}

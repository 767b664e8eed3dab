//! One sync pass against one peer, as a state machine without IO: fed what
//! the peer answered and what the driver found, it says what to ask, store,
//! fetch, check and move next (quinn-proto's style: [`Session::handle`],
//! [`Session::poll`]).
//!
//! The pass: ask the peer's heads; refuse another chain; ask the blocks we
//! lack as packs (in batches, each stored and remembered before the next is
//! asked); the certificate notes likewise; fetch what the new trees name
//! outside git (values, images); have every new block verified; then move
//! refs — main and side branches only forward, a head that does not
//! descend from ours kept as a branch of its own, never forced over ours.
//! Nothing moves unless every head verified.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use utter_formats::BlockId;

use crate::wire::Message;

/// The certificate notes ref.
pub const NOTES_REF: &str = "refs/notes/utter-certificates";
/// The prefix of branches.
pub const HEADS_PREFIX: &str = "refs/heads/";

/// What this node has, as the pass starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    /// The chain, when this node has one (a clone has none yet).
    pub chain: Option<String>,
    /// The genesis block, likewise.
    pub genesis: Option<BlockId>,
    /// Shared refs (`refs/heads/*`, the notes) and where they point.
    pub refs: BTreeMap<String, BlockId>,
    /// Commits fetched by an earlier, interrupted pass (not yet verified).
    pub fetched: Vec<BlockId>,
}

/// How a peer's head relates to this node's ref of the same name, once
/// its blocks are here and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// We have no such ref.
    New,
    /// The same block.
    Same,
    /// It descends from ours: ours can move forward to it.
    Ahead,
    /// Ours descends from it.
    Behind,
    /// Neither descends from the other.
    Diverged,
    /// It, or a block under it, is not valid.
    Invalid(String),
    /// Main only: it is valid but nothing certifies it (no certificate
    /// here or in the peer's notes, and its validators are more than one),
    /// and no certified block under it is ahead of ours: main stays where
    /// it is, since only a quorum's votes commit a block.
    Uncertified,
    /// Main only: it is valid but not certified; this block under it is
    /// the highest one that is, and it is ahead of ours (or we have no
    /// main): main moves there.
    UpTo(BlockId),
}

/// A ref move the pass ends with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefUpdate {
    /// Create `name` at `to`.
    Create {
        /// The ref.
        name: String,
        /// Its block.
        to: BlockId,
    },
    /// Move `name` forward from `from` to `to`.
    Forward {
        /// The ref.
        name: String,
        /// Where it is.
        from: BlockId,
        /// Where it goes.
        to: BlockId,
    },
    /// The peer's `name` diverged from ours: keep it as branch `as_name`.
    Keep {
        /// The peer's ref.
        name: String,
        /// The branch it is kept as (`refs/heads/<name>.from-<peer>`).
        as_name: String,
        /// Its block.
        to: BlockId,
    },
    /// The peer's notes diverged from ours: import the certificates they
    /// hold that ours lack.
    MergeNotes {
        /// The peer's notes head.
        theirs: BlockId,
    },
}

impl std::fmt::Display for RefUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefUpdate::Create { name, to } => write!(f, "{name} created at {}", to.short()),
            RefUpdate::Forward { name, from, to } => {
                write!(f, "{name} {}..{}", from.short(), to.short())
            }
            RefUpdate::Keep { name, as_name, to } => write!(
                f,
                "the peer's {name} does not descend from ours: kept as {as_name} at {}",
                to.short()
            ),
            RefUpdate::MergeNotes { theirs } => {
                write!(f, "certificates merged from the peer's {}", theirs.short())
            }
        }
    }
}

/// Why a pass failed, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The peer serves another chain.
    #[error("the peer serves chain {theirs:?} (genesis {genesis}), this node {ours:?}")]
    OtherChain {
        /// Its chain.
        theirs: String,
        /// Its genesis.
        genesis: BlockId,
        /// Ours.
        ours: String,
    },
    /// The peer broke the protocol (an answer out of place, malformed).
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    /// The peer refused the request.
    #[error("the peer refused: {0}")]
    Refused(String),
    /// A head the peer advertised is not valid.
    #[error("the peer's {name} ({id}) is not valid: {why}")]
    Invalid {
        /// The ref.
        name: String,
        /// Its block.
        id: BlockId,
        /// Why.
        why: String,
    },
    /// Something the driver did failed (IO, a bad pack, a bad chunk, a
    /// timeout); the driver says whose fault.
    #[error("{0}")]
    Driver(String),
}

impl Fault {
    /// Whether the peer is to blame (it is then disconnected and backed
    /// off), rather than this node.
    pub fn peer_is_at_fault(&self) -> bool {
        !matches!(self, Fault::Driver(_))
    }
}

/// What the driver is to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request on a new stream and feed its first answer frame
    /// back as [`Event::Answer`].
    Ask(Message),
    /// Which of these commits are not here? Answer [`Event::Missing`].
    Lookup(Vec<BlockId>),
    /// Read the pack that follows the `Pack` answer on the same stream and
    /// index it; answer [`Event::Stored`] with the batch's tips.
    ReceivePack {
        /// The commits it must hold.
        commits: Vec<BlockId>,
        /// How many objects it announced.
        objects: u32,
    },
    /// Fetch from the peer what the trees of `commits` name outside git,
    /// and the images `main` names; answer [`Event::Fetched`].
    FetchContent {
        /// The commits that arrived.
        commits: Vec<BlockId>,
        /// The peer's main (its images must be here to re-execute).
        main: Option<BlockId>,
    },
    /// Verify the blocks under these heads and say how each relates to
    /// ours; answer [`Event::Checked`].
    Check(Vec<(String, BlockId)>),
    /// Move these refs; answer [`Event::Updated`].
    Update(Vec<RefUpdate>),
    /// The pass is over.
    Done(Summary),
    /// The pass failed.
    Fail(Fault),
}

/// What the driver found or what arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request's first answer frame.
    Answer(Message),
    /// These of the ids looked up are not here.
    Missing(Vec<BlockId>),
    /// The pack is stored; these commits of it no other commit of it has
    /// as a parent.
    Stored {
        /// The batch's tips.
        tips: Vec<BlockId>,
    },
    /// The content is here.
    Fetched,
    /// Each head checked, by ref name.
    Checked(Vec<(String, Relation)>),
    /// The refs moved.
    Updated,
    /// The driver failed.
    Failed(Fault),
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Commits received (blocks and notes).
    pub commits: usize,
    /// Ref moves.
    pub updates: Vec<RefUpdate>,
    /// The peer's chain and genesis.
    pub chain: String,
    /// Its genesis block.
    pub genesis: Option<BlockId>,
    /// Its refs.
    pub remote: BTreeMap<String, BlockId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Start,
    Heads,
    Lookup,
    Blocks,
    BlockPack,
    Notes,
    NotesPack,
    Content,
    Check,
    Update,
    Over,
}

/// One pass against one peer.
#[derive(Debug)]
pub struct Session {
    local: Local,
    /// A short tag of the peer for branches kept from it.
    peer_tag: String,
    max_bytes: u64,
    phase: Phase,
    remote: BTreeMap<String, BlockId>,
    wants: Vec<BlockId>,
    haves: Vec<BlockId>,
    notes_missing: bool,
    /// The last pack said more commits wait.
    more: bool,
    received: Vec<BlockId>,
    /// The same, to look up.
    received_set: HashSet<BlockId>,
    notes_received: usize,
    updates: Vec<RefUpdate>,
    chain: String,
    genesis: Option<BlockId>,
    out: VecDeque<Action>,
}

/// Whether `name` is a ref a peer may advertise: a branch with a valid
/// name, or the notes.
pub fn is_shared_ref(name: &str) -> bool {
    if name == NOTES_REF {
        return true;
    }
    name.strip_prefix(HEADS_PREFIX)
        .is_some_and(|b| utter_formats::config::check_name("branch", b).is_ok())
}

impl Session {
    /// A pass for a node with `local`, against the peer `peer_tag` names,
    /// asking packs of about `max_bytes`.
    pub fn new(local: Local, peer_tag: &str, max_bytes: u64) -> Self {
        let mut s = Self {
            haves: local
                .refs
                .values()
                .copied()
                .chain(local.fetched.iter().copied())
                .collect(),
            local,
            peer_tag: peer_tag.to_string(),
            max_bytes,
            phase: Phase::Start,
            remote: BTreeMap::new(),
            wants: Vec::new(),
            notes_missing: false,
            more: false,
            received: Vec::new(),
            received_set: HashSet::new(),
            notes_received: 0,
            updates: Vec::new(),
            chain: String::new(),
            genesis: None,
            out: VecDeque::new(),
        };
        s.haves.sort();
        s.haves.dedup();
        s.out.push_back(Action::Ask(Message::Heads));
        s.phase = Phase::Heads;
        s
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    fn fail(&mut self, fault: Fault) {
        self.phase = Phase::Over;
        self.out.clear();
        self.out.push_back(Action::Fail(fault));
    }

    fn unexpected(&mut self, what: &str, m: &Message) {
        if let Message::Error { message, .. } = m {
            let message = message.clone();
            self.fail(Fault::Refused(message));
        } else {
            self.fail(Fault::Protocol(format!("{m:?} where {what} belongs")));
        }
    }

    /// Feeds what happened.
    pub fn handle(&mut self, event: Event) {
        if self.phase == Phase::Over {
            return;
        }
        if let Event::Failed(f) = event {
            self.fail(f);
            return;
        }
        match (self.phase.clone(), event) {
            (Phase::Heads, Event::Answer(m)) => self.heads(m),
            (Phase::Lookup, Event::Missing(missing)) => self.missing(missing),
            (Phase::Blocks, Event::Answer(m)) => self.pack(m, Phase::BlockPack),
            (Phase::Notes, Event::Answer(m)) => self.pack(m, Phase::NotesPack),
            (Phase::BlockPack, Event::Stored { tips }) => {
                self.haves.extend(tips);
                self.haves.sort();
                self.haves.dedup();
                if self.more {
                    self.phase = Phase::Blocks;
                    self.out.push_back(Action::Ask(self.blocks_request()));
                } else {
                    self.after_blocks();
                }
            }
            (Phase::NotesPack, Event::Stored { .. }) => self.content(),
            (Phase::Content, Event::Fetched) => self.check(),
            (Phase::Check, Event::Checked(relations)) => self.decide(relations),
            (Phase::Update, Event::Updated) => {
                self.phase = Phase::Over;
                self.out.push_back(Action::Done(Summary {
                    commits: self.received.len() + self.notes_received,
                    updates: std::mem::take(&mut self.updates),
                    chain: self.chain.clone(),
                    genesis: self.genesis,
                    remote: self.remote.clone(),
                }));
            }
            (phase, event) => self.fail(Fault::Driver(format!(
                "{event:?} arrived while the pass was at {phase:?}"
            ))),
        }
    }

    fn blocks_request(&self) -> Message {
        Message::Blocks {
            wants: self.wants.clone(),
            haves: self.haves.clone(),
            max_bytes: self.max_bytes,
        }
    }

    fn heads(&mut self, m: Message) {
        let Message::HeadsAre {
            chain,
            genesis,
            refs,
        } = m
        else {
            return self.unexpected("the heads", &m);
        };
        if let Some(ours) = &self.local.chain
            && (*ours != chain || self.local.genesis.is_some_and(|g| g != genesis))
        {
            let ours = ours.clone();
            return self.fail(Fault::OtherChain {
                theirs: chain,
                genesis,
                ours,
            });
        }
        self.chain = chain;
        self.genesis = Some(genesis);
        for (name, id) in refs {
            // Branches a peer kept from others are its own business.
            if is_shared_ref(&name) && !name.contains(".from-") {
                self.remote.insert(name, id);
            }
        }
        if !self.remote.contains_key(&format!("{HEADS_PREFIX}main")) {
            return self.fail(Fault::Protocol("the peer advertises no main".into()));
        }
        let lookup: Vec<BlockId> = self
            .remote
            .iter()
            .filter(|(name, id)| self.local.refs.get(*name) != Some(id))
            .map(|(_, id)| *id)
            .collect();
        self.phase = Phase::Lookup;
        self.out.push_back(Action::Lookup(lookup));
    }

    fn missing(&mut self, missing: Vec<BlockId>) {
        let missing: BTreeSet<BlockId> = missing.into_iter().collect();
        self.wants = self
            .remote
            .iter()
            .filter(|(name, id)| name.starts_with(HEADS_PREFIX) && missing.contains(id))
            .map(|(_, id)| *id)
            .collect();
        self.wants.sort();
        self.wants.dedup();
        self.notes_missing = self
            .remote
            .get(NOTES_REF)
            .is_some_and(|id| missing.contains(id));
        if self.wants.is_empty() {
            self.after_blocks();
        } else {
            self.phase = Phase::Blocks;
            self.out.push_back(Action::Ask(self.blocks_request()));
        }
    }

    fn pack(&mut self, m: Message, next: Phase) {
        let Message::Pack {
            commits,
            objects,
            more,
        } = m
        else {
            return self.unexpected("a pack", &m);
        };
        if commits.is_empty() || objects == 0 {
            return self.fail(Fault::Protocol(
                "an empty pack for commits that were asked for".into(),
            ));
        }
        if next == Phase::NotesPack && more {
            return self.fail(Fault::Protocol("notes come in one pack".into()));
        }
        if next == Phase::BlockPack {
            // Each batch must bring something: a peer that sends the same
            // commits again (with "more" forever) would keep the pass going.
            let fresh: Vec<BlockId> = commits
                .iter()
                .copied()
                .filter(|c| self.received_set.insert(*c))
                .collect();
            if fresh.is_empty() {
                return self.fail(Fault::Protocol(
                    "a pack of commits it had sent already in this pass".into(),
                ));
            }
            self.received.extend(fresh);
        } else {
            self.notes_received += commits.len();
        }
        self.more = more;
        self.phase = next;
        self.out.push_back(Action::ReceivePack { commits, objects });
    }

    fn after_blocks(&mut self) {
        match self.remote.get(NOTES_REF) {
            Some(want) if self.notes_missing => {
                let haves = self
                    .local
                    .refs
                    .get(NOTES_REF)
                    .copied()
                    .into_iter()
                    .collect();
                self.phase = Phase::Notes;
                self.out
                    .push_back(Action::Ask(Message::Notes { want: *want, haves }));
            }
            _ => self.content(),
        }
    }

    fn content(&mut self) {
        self.phase = Phase::Content;
        self.out.push_back(Action::FetchContent {
            commits: self.received.clone(),
            main: self.remote.get(&format!("{HEADS_PREFIX}main")).copied(),
        });
    }

    fn check(&mut self) {
        self.phase = Phase::Check;
        let heads = self
            .remote
            .iter()
            .filter(|(name, id)| self.local.refs.get(*name) != Some(id))
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        self.out.push_back(Action::Check(heads));
    }

    fn decide(&mut self, relations: Vec<(String, Relation)>) {
        let mut updates = Vec::new();
        for (name, relation) in relations {
            let Some(&to) = self.remote.get(&name) else {
                return self.fail(Fault::Driver(format!("{name} was checked but not asked")));
            };
            match relation {
                Relation::Invalid(why) => {
                    return self.fail(Fault::Invalid { name, id: to, why });
                }
                Relation::New => updates.push(RefUpdate::Create { name, to }),
                Relation::Ahead => {
                    let Some(&from) = self.local.refs.get(&name) else {
                        return self.fail(Fault::Driver(format!("{name} is ahead of nothing")));
                    };
                    updates.push(RefUpdate::Forward { name, from, to });
                }
                Relation::UpTo(to) => match self.local.refs.get(&name) {
                    None => updates.push(RefUpdate::Create { name, to }),
                    Some(&from) => updates.push(RefUpdate::Forward { name, from, to }),
                },
                Relation::Same | Relation::Behind | Relation::Uncertified => {}
                Relation::Diverged if name == NOTES_REF => {
                    updates.push(RefUpdate::MergeNotes { theirs: to });
                }
                Relation::Diverged => {
                    let branch = name.trim_start_matches(HEADS_PREFIX);
                    let as_name = format!("{HEADS_PREFIX}{branch}.from-{}", self.peer_tag);
                    updates.push(RefUpdate::Keep { name, as_name, to });
                }
            }
        }
        self.updates = updates.clone();
        self.phase = Phase::Update;
        self.out.push_back(Action::Update(updates));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlockId {
        BlockId::from_sha1([n; 20])
    }

    fn main() -> String {
        format!("{HEADS_PREFIX}main")
    }

    fn heads(refs: &[(&str, BlockId)]) -> Message {
        Message::HeadsAre {
            chain: "c".into(),
            genesis: id(1),
            refs: refs.iter().map(|(n, i)| (n.to_string(), *i)).collect(),
        }
    }

    fn local(refs: &[(&str, BlockId)]) -> Local {
        Local {
            chain: Some("c".into()),
            genesis: Some(id(1)),
            refs: refs.iter().map(|(n, i)| (n.to_string(), *i)).collect(),
            fetched: Vec::new(),
        }
    }

    fn drain(s: &mut Session) -> Vec<Action> {
        std::iter::from_fn(|| s.poll()).collect()
    }

    #[test]
    fn a_batch_that_brings_no_new_commit_ends_the_pass_as_the_peers_fault() {
        let main = main();
        let mut s = Session::new(local(&[(&main, id(2))]), "peer", 1000);
        drain(&mut s);
        s.handle(Event::Answer(heads(&[(&main, id(9))])));
        drain(&mut s);
        s.handle(Event::Missing(vec![id(9)]));
        drain(&mut s);
        let batch = || {
            Event::Answer(Message::Pack {
                commits: vec![id(4)],
                objects: 3,
                more: true,
            })
        };
        s.handle(batch());
        drain(&mut s);
        s.handle(Event::Stored { tips: vec![id(4)] });
        drain(&mut s);
        // The same commit again, "more" again.
        s.handle(batch());
        let actions = drain(&mut s);
        assert!(
            matches!(actions.as_slice(), [Action::Fail(Fault::Protocol(why))] if why.contains("already")),
            "{actions:?}"
        );
    }

    #[test]
    fn a_pass_asks_what_it_lacks_in_batches_then_checks_then_moves_forward() {
        let main = main();
        let mut s = Session::new(local(&[(&main, id(2))]), "peer", 1000);
        assert_eq!(drain(&mut s), vec![Action::Ask(Message::Heads)]);
        s.handle(Event::Answer(heads(&[
            (&main, id(9)),
            (NOTES_REF, id(7)),
            ("refs/x/junk", id(3)),
        ])));
        assert_eq!(drain(&mut s), vec![Action::Lookup(vec![id(9), id(7)])]);
        s.handle(Event::Missing(vec![id(9), id(7)]));
        assert_eq!(
            drain(&mut s),
            vec![Action::Ask(Message::Blocks {
                wants: vec![id(9)],
                haves: vec![id(2)],
                max_bytes: 1000
            })]
        );
        // First batch, with more to come: stored, then asked again with its
        // tips as haves.
        s.handle(Event::Answer(Message::Pack {
            commits: vec![id(4), id(5)],
            objects: 9,
            more: true,
        }));
        assert_eq!(
            drain(&mut s),
            vec![Action::ReceivePack {
                commits: vec![id(4), id(5)],
                objects: 9
            }]
        );
        s.handle(Event::Stored { tips: vec![id(5)] });
        assert_eq!(
            drain(&mut s),
            vec![Action::Ask(Message::Blocks {
                wants: vec![id(9)],
                haves: vec![id(2), id(5)],
                max_bytes: 1000
            })]
        );
        s.handle(Event::Answer(Message::Pack {
            commits: vec![id(9)],
            objects: 3,
            more: false,
        }));
        drain(&mut s);
        s.handle(Event::Stored { tips: vec![id(9)] });
        assert_eq!(
            drain(&mut s),
            vec![Action::Ask(Message::Notes {
                want: id(7),
                haves: vec![]
            })]
        );
        s.handle(Event::Answer(Message::Pack {
            commits: vec![id(7)],
            objects: 2,
            more: false,
        }));
        drain(&mut s);
        s.handle(Event::Stored { tips: vec![id(7)] });
        assert_eq!(
            drain(&mut s),
            vec![Action::FetchContent {
                commits: vec![id(4), id(5), id(9)],
                main: Some(id(9))
            }]
        );
        s.handle(Event::Fetched);
        assert_eq!(
            drain(&mut s),
            vec![Action::Check(vec![
                (main.clone(), id(9)),
                (NOTES_REF.to_string(), id(7))
            ])]
        );
        s.handle(Event::Checked(vec![
            (main.clone(), Relation::Ahead),
            (NOTES_REF.into(), Relation::New),
        ]));
        let updates = vec![
            RefUpdate::Forward {
                name: main.clone(),
                from: id(2),
                to: id(9),
            },
            RefUpdate::Create {
                name: NOTES_REF.into(),
                to: id(7),
            },
        ];
        assert_eq!(drain(&mut s), vec![Action::Update(updates.clone())]);
        s.handle(Event::Updated);
        let Some(Action::Done(summary)) = s.poll() else {
            panic!("the pass ends")
        };
        assert_eq!(summary.commits, 4);
        assert_eq!(summary.updates, updates);
    }

    #[test]
    fn a_main_that_diverged_is_kept_as_a_branch_and_an_invalid_one_moves_nothing() {
        let main = main();
        for (relation, expect) in [
            (
                Relation::Diverged,
                Some(RefUpdate::Keep {
                    name: main.clone(),
                    as_name: format!("{HEADS_PREFIX}main.from-ab12"),
                    to: id(9),
                }),
            ),
            (Relation::Behind, None),
            (Relation::Invalid("not signed".into()), None),
        ] {
            let mut s = Session::new(local(&[(&main, id(2))]), "ab12", 1000);
            drain(&mut s);
            s.handle(Event::Answer(heads(&[(&main, id(9))])));
            drain(&mut s);
            s.handle(Event::Missing(vec![]));
            assert_eq!(
                drain(&mut s),
                vec![Action::FetchContent {
                    commits: vec![],
                    main: Some(id(9))
                }]
            );
            s.handle(Event::Fetched);
            drain(&mut s);
            let invalid = matches!(relation, Relation::Invalid(_));
            s.handle(Event::Checked(vec![(main.clone(), relation)]));
            let next = s.poll();
            if invalid {
                assert!(
                    matches!(&next, Some(Action::Fail(f @ Fault::Invalid { .. })) if f.peer_is_at_fault()),
                    "{next:?}"
                );
                assert_eq!(s.poll(), None, "nothing moves");
            } else {
                assert_eq!(next, Some(Action::Update(expect.into_iter().collect())));
            }
        }
    }

    #[test]
    fn another_chain_or_a_bad_answer_fails_the_pass() {
        let main = main();
        let mut s = Session::new(local(&[(&main, id(2))]), "p", 1000);
        drain(&mut s);
        s.handle(Event::Answer(Message::HeadsAre {
            chain: "other".into(),
            genesis: id(1),
            refs: vec![(main.clone(), id(3))],
        }));
        assert!(matches!(
            s.poll(),
            Some(Action::Fail(Fault::OtherChain { .. }))
        ));
        let mut s = Session::new(local(&[(&main, id(2))]), "p", 1000);
        drain(&mut s);
        s.handle(Event::Answer(Message::Pack {
            commits: vec![id(3)],
            objects: 1,
            more: false,
        }));
        assert!(matches!(s.poll(), Some(Action::Fail(Fault::Protocol(_)))));
        let mut s = Session::new(local(&[(&main, id(2))]), "p", 1000);
        drain(&mut s);
        s.handle(Event::Answer(Message::Error {
            code: 4,
            message: "busy".into(),
        }));
        assert_eq!(s.poll(), Some(Action::Fail(Fault::Refused("busy".into()))));
        // A clone knows no chain yet and takes the peer's.
        let mut s = Session::new(Local::default(), "p", 1000);
        drain(&mut s);
        s.handle(Event::Answer(heads(&[(&main, id(3))])));
        assert_eq!(s.poll(), Some(Action::Lookup(vec![id(3)])));
    }
}

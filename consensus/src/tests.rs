//! The state machine's rules, and the simulator over many seeds.

use std::sync::Arc;
use std::time::Duration;

use crate::machine::*;
use crate::sim::{Failure, Scenario, Sim};

use utter_formats::BlockId;

fn id(n: u8) -> BlockId {
    BlockId::from_sha1([n; 20])
}

fn fresh(me: NodeId, n: u32) -> Machine {
    Machine::new(
        Config::new(me, (0..n).collect()),
        Persisted {
            genesis: id(0),
            main: id(0),
            vote_tip: None,
            blocks: Vec::new(),
            mempool: Vec::new(),
        },
        Duration::ZERO,
    )
}

fn proposal(block: u8, parents: &[u8], round: u64, n: u32) -> Header {
    Header {
        id: id(block),
        parents: parents.iter().map(|p| id(*p)).collect(),
        round,
        proposer: (round % u64::from(n)) as NodeId,
        kind: Kind::Proposal,
        txs: Vec::new(),
        validators: None,
    }
}

/// Delivers a block and validates it as `valid`; returns the actions.
fn deliver(m: &mut Machine, h: Header, valid: bool) -> Vec<Action> {
    let block = h.id;
    m.handle(
        Duration::ZERO,
        Event::Received {
            from: h.proposer,
            message: Message::Block(h),
        },
    );
    let mut out: Vec<Action> = m.drain().collect();
    if out.contains(&Action::Validate(block)) {
        m.handle(Duration::ZERO, Event::Validated { block, valid });
        out.extend(m.drain());
    }
    out
}

fn receive_vote(m: &mut Machine, voter: NodeId, block: BlockId) {
    m.handle(
        Duration::ZERO,
        Event::Received {
            from: voter,
            message: Message::Vote(Vote { voter, block }),
        },
    );
}

fn votes_for(actions: &[Action]) -> Vec<BlockId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(Message::Vote(v)) => Some(v.block),
            _ => None,
        })
        .collect()
}

#[test]
fn quorum_is_two_thirds_plus_one() {
    let q = |n: u32| Config::new(0, (0..n).collect()).quorum();
    assert_eq!([q(1), q(3), q(4), q(7), q(10)], [1, 3, 3, 5, 7]);
}

#[test]
fn a_validator_persists_its_vote_tip_before_the_vote_leaves() {
    let mut m = fresh(1, 4);
    let out = deliver(&mut m, proposal(1, &[0], 1, 4), true);
    let persist = out.iter().position(|a| *a == Action::PersistVoteTip(id(1)));
    let vote = out
        .iter()
        .position(|a| matches!(a, Action::Broadcast(Message::Vote(_))));
    assert!(persist.is_some() && vote.is_some(), "{out:?}");
    assert!(persist < vote, "the tip must be persisted first: {out:?}");
}

#[test]
fn a_validator_never_votes_for_a_sibling_of_its_vote() {
    let mut m = fresh(1, 4);
    assert_eq!(
        votes_for(&deliver(&mut m, proposal(1, &[0], 1, 4), true)),
        [id(1)]
    );
    // A competing proposal of a later round, on genesis: not a descendant.
    assert!(votes_for(&deliver(&mut m, proposal(2, &[0], 2, 4), true)).is_empty());
    // A merge over both descends from the vote: allowed.
    assert_eq!(
        votes_for(&deliver(&mut m, proposal(3, &[1, 2], 3, 4), true)),
        [id(3)]
    );
}

#[test]
fn invalid_blocks_and_their_children_get_no_vote() {
    let mut m = fresh(1, 4);
    assert!(votes_for(&deliver(&mut m, proposal(1, &[0], 1, 4), false)).is_empty());
    // The child is invalid without validation being asked.
    let out = deliver(&mut m, proposal(2, &[1], 2, 4), true);
    assert!(!out.contains(&Action::Validate(id(2))), "{out:?}");
    assert!(votes_for(&out).is_empty());
}

#[test]
fn a_proposal_from_the_wrong_leader_is_refused() {
    let mut m = fresh(1, 4);
    let mut h = proposal(1, &[0], 1, 4);
    h.proposer = 3;
    assert!(votes_for(&deliver(&mut m, h, true)).is_empty());
}

#[test]
fn q_votes_commit_and_main_moves_forward_only() {
    let mut m = fresh(3, 4);
    deliver(&mut m, proposal(1, &[0], 1, 4), true);
    for voter in [0, 1] {
        receive_vote(&mut m, voter, id(1));
    }
    // Two votes from others plus its own: 3 = q for n = 4.
    let commits: Vec<Action> = m
        .drain()
        .filter(|a| matches!(a, Action::Commit { .. }))
        .collect();
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(m.main(), id(1));
    // Votes from non-validators and duplicates count for nothing.
    deliver(&mut m, proposal(2, &[1], 2, 4), true);
    for voter in [9, 9, 2, 2] {
        receive_vote(&mut m, voter, id(2));
    }
    assert_eq!(m.main(), id(1), "two distinct validator votes are not q");
}

#[test]
fn a_restarted_validator_keeps_its_vote_rule() {
    let mut m = fresh(1, 4);
    deliver(&mut m, proposal(1, &[0], 1, 4), true);
    deliver(&mut m, proposal(2, &[0], 2, 4), true);
    let mut m = Machine::new(
        Config::new(1, (0..4).collect()),
        Persisted {
            genesis: id(0),
            main: id(0),
            vote_tip: Some(id(1)),
            blocks: vec![
                (proposal(1, &[0], 1, 4), true),
                (proposal(2, &[0], 2, 4), true),
            ],
            mempool: Vec::new(),
        },
        Duration::ZERO,
    );
    assert!(votes_for(&deliver(&mut m, proposal(4, &[2], 5, 4), true)).is_empty());
    assert_eq!(
        votes_for(&deliver(&mut m, proposal(5, &[1], 6, 4), true)),
        [id(5)]
    );
}

fn sweep(seeds: std::ops::Range<u64>, weaken: bool) -> (u64, u64, Vec<(u64, Failure)>) {
    sweep_with(seeds, |sc| {
        sc.weaken_vote_rule = weaken;
        if weaken {
            // The weakened rule is only unsafe under splits: make some.
            sc.byzantine = (sc.validators - 1) / 3;
        }
    })
}

fn sweep_with(
    seeds: std::ops::Range<u64>,
    adjust: impl Fn(&mut Scenario),
) -> (u64, u64, Vec<(u64, Failure)>) {
    let (mut safety, mut liveness, mut failures) = (0, 0, Vec::new());
    for seed in seeds {
        let mut sc = Scenario::random(seed);
        adjust(&mut sc);
        if let Err((f, _)) = Sim::new(sc).run() {
            if f.is_safety() {
                safety += 1;
            } else {
                liveness += 1;
            }
            failures.push((seed, f));
        }
    }
    (safety, liveness, failures)
}

#[test]
fn a_seed_reproduces_exactly() {
    for seed in [1, 17, 4242] {
        let a = Sim::new(Scenario::random(seed)).run().map_err(|e| e.0);
        let b = Sim::new(Scenario::random(seed)).run().map_err(|e| e.0);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    (a.events, a.blocks, a.commits),
                    (b.events, b.blocks, b.commits)
                );
                assert_eq!(a.commit_latencies, b.commit_latencies);
            }
            (a, b) => assert_eq!(a.err(), b.err()),
        }
    }
}

#[test]
fn the_checker_finds_the_fork_a_weakened_vote_rule_allows() {
    let (safety, _, failures) = sweep(0..2_000, true);
    eprintln!(
        "weakened vote rule: {safety} safety violations, e.g. {:?}",
        failures.first()
    );
    assert!(safety > 0, "the simulator must catch a weakened vote rule");
}

#[test]
fn a_vote_for_a_withheld_block_stops_being_work() {
    let mut m = fresh(0, 4);
    let phantom = id(9);
    receive_vote(&mut m, 3, phantom);
    let first: Vec<Action> = m.drain().collect();
    assert!(first.contains(&Action::Send {
        to: 3,
        message: Message::Fetch(phantom)
    }));
    // Each round timeout asks every peer again, a few times, then stops.
    let mut fetches = 0;
    let mut rounds = Vec::new();
    for _ in 0..20 {
        let at = m.poll_timeout().expect("a validator always has a timer");
        m.handle_timeout(at);
        fetches += m.drain().filter(|a| *a == Action::Fetch(phantom)).count();
        rounds.push(m.round());
    }
    assert_eq!(fetches, MAX_FETCHES as usize);
    // Rounds advance while it is asked for, then the node is idle.
    let idle = &rounds[MAX_FETCHES as usize + 1..];
    assert!(idle.windows(2).all(|w| w[0] == w[1]), "rounds {rounds:?}");
    // The vote comes again: it is asked for again.
    receive_vote(&mut m, 3, phantom);
    assert!(m.drain().any(|a| matches!(
        a,
        Action::Send {
            message: Message::Fetch(b),
            ..
        } if b == phantom
    )));
}

#[test]
fn a_missing_parent_is_asked_for_until_it_comes() {
    let mut m = fresh(0, 4);
    // Block 2 (round 1) names block 1, which nobody sends.
    let child = proposal(2, &[1], 1, 4);
    let out = deliver(&mut m, child, true);
    assert!(out.contains(&Action::Fetch(id(1))));
    let mut fetches = 0;
    for _ in 0..10 {
        let at = m.poll_timeout().unwrap();
        m.handle_timeout(at);
        fetches += m.drain().filter(|a| *a == Action::Fetch(id(1))).count();
    }
    assert_eq!(fetches, 10, "a block waits on it: it is never given up");
    // Block 1 turns up at last: block 2 is validated after it.
    let out = deliver(&mut m, proposal(1, &[0], 0, 4), true);
    assert!(out.contains(&Action::Validate(id(1))), "{out:?}");
    assert!(out.contains(&Action::Validate(id(2))), "{out:?}");
}

/// Validators 0..n, then a change to `members` carried by block 1.
fn change(block: u8, parents: &[u8], round: u64, proposer: NodeId, to: &Validators) -> Header {
    Header {
        id: id(block),
        parents: parents.iter().map(|p| id(*p)).collect(),
        round,
        proposer,
        kind: Kind::Proposal,
        txs: Vec::new(),
        validators: Some(Arc::new(to.clone())),
    }
}

fn commits(m: &mut Machine) -> Vec<BlockId> {
    m.drain()
        .filter_map(|a| match a {
            Action::Commit { block, .. } => Some(block),
            _ => None,
        })
        .collect()
}

#[test]
fn a_change_is_certified_by_both_sets_until_it_completes() {
    let genesis = Validators::new((0..4).collect());
    let joint = genesis.changed_to(vec![4, 5, 6]);
    assert_eq!(
        (joint.epoch, joint.quorum, joint.outgoing_quorum),
        (1, 3, 3)
    );
    // Members lead first, then the outgoing ones.
    let leaders: Vec<_> = (0..7).map(|r| joint.leader(r).unwrap()).collect();
    assert_eq!(leaders, [4, 5, 6, 0, 1, 2, 3]);

    let mut m = fresh(9, 4);
    // The change block is certified by the genesis set.
    deliver(&mut m, change(1, &[0], 1, 1, &joint), true);
    for voter in [0, 1, 2] {
        receive_vote(&mut m, voter, id(1));
    }
    assert_eq!(commits(&mut m), [id(1)]);
    assert_eq!(m.validators(), &joint);

    // Its child must come from the joint set's leader of the round.
    let mut wrong = proposal(2, &[1], 2, 4);
    wrong.proposer = 2;
    deliver(&mut m, wrong, true);
    for voter in [0, 1, 2, 3, 4, 5, 6] {
        receive_vote(&mut m, voter, id(2));
    }
    assert!(commits(&mut m).is_empty(), "round 2's leader is 6");

    let mut child = proposal(3, &[1], 2, 4);
    child.proposer = 6;
    deliver(&mut m, child, true);
    // The new set's quorum alone does not certify it, nor the old one's.
    for voter in [4, 5, 6] {
        receive_vote(&mut m, voter, id(3));
    }
    assert!(commits(&mut m).is_empty());
    for voter in [0, 1] {
        receive_vote(&mut m, voter, id(3));
    }
    assert!(
        commits(&mut m).is_empty(),
        "two of the outgoing four are not 3"
    );
    receive_vote(&mut m, 3, id(3));
    assert_eq!(commits(&mut m), [id(3)]);

    // Completing the change: from then on the new set alone certifies.
    let done = joint.changed_to(vec![4, 5, 6]);
    assert!(done.outgoing.is_empty());
    deliver(
        &mut m,
        change(4, &[3], 3, joint.leader(3).unwrap(), &done),
        true,
    );
    for voter in [4, 5, 6, 0, 1, 2] {
        receive_vote(&mut m, voter, id(4));
    }
    assert_eq!(commits(&mut m), [id(4)]);
    let mut next = proposal(5, &[4], 4, 4);
    next.proposer = 5;
    deliver(&mut m, next, true);
    for voter in [4, 5, 6] {
        receive_vote(&mut m, voter, id(5));
    }
    assert_eq!(commits(&mut m), [id(5)]);
}

#[test]
fn a_node_a_change_names_starts_voting_and_a_dropped_one_stops() {
    let genesis = Validators::new((0..4).collect());
    let joint = genesis.changed_to(vec![1, 2, 3, 4]);
    // Node 4 is not a validator of genesis: it does not vote.
    let mut m = fresh(4, 4);
    assert!(!m.is_validator());
    assert!(votes_for(&deliver(&mut m, change(1, &[0], 1, 1, &joint), true)).is_empty());
    // Once a valid block names it, it takes part before the change commits.
    assert!(m.is_validator());
    let mut child = proposal(2, &[1], 2, 4);
    child.proposer = joint.leader(2).unwrap();
    assert_eq!(votes_for(&deliver(&mut m, child, true)), [id(2)]);

    // Node 0 votes while outgoing, and stops once the change completes.
    let mut m = fresh(0, 4);
    assert!(m.is_validator());
    deliver(&mut m, change(1, &[0], 1, 1, &joint), true);
    for voter in [1, 2, 3] {
        receive_vote(&mut m, voter, id(1));
    }
    let done = joint.changed_to(vec![1, 2, 3, 4]);
    let mut finish = change(2, &[1], 2, 0, &done);
    finish.proposer = joint.leader(2).unwrap();
    assert_eq!(votes_for(&deliver(&mut m, finish, true)), [id(2)]);
    for voter in [1, 2, 3, 4] {
        receive_vote(&mut m, voter, id(2));
    }
    assert!(commits(&mut m).contains(&id(2)));
    assert!(!m.is_validator());
    let mut after = proposal(3, &[2], 3, 4);
    after.proposer = done.leader(3).unwrap();
    assert!(votes_for(&deliver(&mut m, after, true)).is_empty());
}

#[test]
fn validator_set_changes_keep_safety_and_liveness() {
    let (safety, liveness, failures) = sweep_with(0..1_500, |sc| {
        sc.set_changes = 1 + (sc.seed % 2) as u32;
        sc.spares = (sc.seed % 3) as u32;
    });
    assert_eq!((safety, liveness), (0, 0), "{failures:?}");
}

#[test]
fn the_checker_finds_the_fork_a_direct_set_switch_allows() {
    let (safety, _, failures) = sweep_with(0..3_000, |sc| {
        sc.set_changes = 2;
        sc.spares = 3;
        sc.weaken_set_change = true;
    });
    eprintln!(
        "switching sets without the joint phase: {safety} safety violations, e.g. {:?}",
        failures.iter().find(|(_, f)| f.is_safety())
    );
    assert!(safety > 0, "the simulator must catch a direct switch");
}

#[test]
fn a_relay_that_forges_a_proposals_round_poisons_it_only_under_the_old_rule() {
    let byzantine = |sc: &mut Scenario| {
        if sc.validators < 4 {
            sc.validators = 4;
        }
        sc.byzantine = (sc.validators - 1) / 3;
    };
    // Old rule: the first header seen for an id is kept, forged or not.
    let (_, liveness, failures) = sweep_with(0..40, |sc| {
        byzantine(sc);
        sc.trust_relayed_headers = true;
    });
    eprintln!(
        "trusting relayed headers: {liveness} runs stalled, e.g. {:?}",
        failures.first()
    );
    assert!(
        !failures.is_empty(),
        "forged rounds must break the old rule somewhere"
    );
    // New rule: a header is what its signed block says; forgeries drop.
    let mut dropped = 0;
    for seed in 0..150 {
        let mut sc = Scenario::random(seed);
        byzantine(&mut sc);
        match Sim::new(sc).run() {
            Ok(report) => dropped += report.forged_dropped,
            Err((f, _)) => panic!("seed {seed}: {f:?}"),
        }
    }
    assert!(dropped > 0, "the relays forged something");
}

#[test]
fn a_peer_that_connects_and_a_proposal_get_the_mempool_in_arrival_order() {
    // Ids whose hash order is not their arrival order: a signer's batch
    // handed on sorted by id would run its later transactions first.
    let txs: Vec<TxId> = (0..16).map(|i| TxId::of_line(format!("tx {i}"))).collect();
    let mut sorted = txs.clone();
    sorted.sort();
    assert_ne!(sorted, txs, "the ids are not already in hash order");
    // Validator 1 does not lead round 0: it only collects.
    let mut m = fresh(1, 4);
    for tx in &txs {
        m.handle(Duration::ZERO, Event::LocalTx(*tx));
    }
    m.drain().for_each(drop);
    m.handle(Duration::ZERO, Event::PeerConnected(2));
    let sent: Vec<TxId> = m
        .drain()
        .filter_map(|a| match a {
            Action::Send {
                to: 2,
                message: Message::Tx(tx),
            } => Some(tx),
            _ => None,
        })
        .collect();
    assert_eq!(sent, txs);
    // The leader of round 0, restarted with them waiting, proposes them in
    // the order they reached it once one more arrives.
    let mut m = Machine::new(
        Config::new(0, (0..4).collect()),
        Persisted {
            genesis: id(0),
            main: id(0),
            vote_tip: None,
            blocks: Vec::new(),
            mempool: txs[..15].to_vec(),
        },
        Duration::ZERO,
    );
    m.handle(
        Duration::ZERO,
        Event::Received {
            from: 1,
            message: Message::Tx(txs[15]),
        },
    );
    let proposed = m.drain().find_map(|a| match a {
        Action::Propose { txs, .. } => Some(txs),
        _ => None,
    });
    assert_eq!(proposed.expect("the leader proposes"), txs);
}

#[test]
fn a_dropped_transaction_is_no_longer_work_to_propose() {
    // Validator 0 leads round 0: a transaction makes it propose.
    let tx = TxId::of_line("a line");
    let mut m = fresh(0, 4);
    m.handle(Duration::ZERO, Event::LocalTx(tx));
    let proposes = |actions: &[Action]| {
        actions
            .iter()
            .any(|a| matches!(a, Action::Propose { txs, .. } if txs.contains(&tx)))
    };
    assert!(proposes(&m.drain().collect::<Vec<_>>()));
    // The pool dropped it (another transaction took its nonce): the next
    // leader has nothing to propose and does not.
    let mut m = fresh(1, 4);
    m.handle(Duration::ZERO, Event::LocalTx(tx));
    m.handle(Duration::ZERO, Event::Dropped(vec![tx]));
    assert_eq!(m.mempool_len(), 0);
    m.drain().for_each(drop);
    m.handle_timeout(Duration::from_secs(1));
    let after: Vec<Action> = m.drain().collect();
    assert!(
        !after.iter().any(|a| matches!(a, Action::Propose { .. })),
        "{after:?}"
    );
}

#[test]
fn committed_blocks_keep_no_transactions_and_their_votes_are_let_go() {
    // Validator 3 of 4 sees 50 blocks of 100 transactions proposed in turn
    // and committed by the votes of 0, 1 and 2.
    let mut m = fresh(3, 4);
    let mut parent = 0u8;
    for b in 1..=50u8 {
        let mut h = proposal(b, &[parent], u64::from(b - 1), 4);
        h.txs = (0..100u32)
            .map(|i| TxId::of_line(format!("{b}/{i}")))
            .collect();
        deliver(&mut m, h, true);
        for v in 0..3 {
            receive_vote(&mut m, v, id(b));
        }
        m.drain().for_each(drop);
        assert_eq!(m.main(), id(b), "block {b} committed");
        parent = b;
    }
    let f = m.footprint();
    assert_eq!(f.header_txs, 0, "{f:?}");
    assert!(f.voted_blocks <= 1, "{f:?}");
}

/// A block id from a number (`id` has only 256).
fn bid(n: u32) -> BlockId {
    let mut b = [0xb1u8; 20];
    b[..4].copy_from_slice(&n.to_be_bytes());
    BlockId::from_sha1(b)
}

#[test]
fn memory_stays_flat_over_20000_blocks_and_a_late_block_over_a_pruned_one_gets_an_anchor() {
    // Validator 0 of 4 sees 20,000 blocks committed by the votes of 1, 2
    // and 3, each proposed by its round's leader in the rounds 0 does not
    // lead (a leader whose proposal the script would not answer stalls).
    let n = 4;
    let mut m = fresh(0, n);
    let round_of = |b: u32| u64::from((b - 1) / 3 * 4 + (b - 1) % 3 + 1);
    let header = |b: u32, parent: BlockId| Header {
        id: bid(b),
        parents: vec![parent],
        round: round_of(b),
        proposer: (round_of(b) % u64::from(n)) as NodeId,
        kind: Kind::Proposal,
        txs: vec![TxId::of_line(format!("tx {b}"))],
        validators: None,
    };
    // The last block's round is 3 mod 4: the next is validator 0's.
    let last = 20_001u32;
    let mut parent = id(0);
    let mut at_1000 = None;
    for b in 1..=last {
        deliver(&mut m, header(b, parent), true);
        for v in 1..4 {
            receive_vote(&mut m, v, bid(b));
        }
        m.drain().for_each(drop);
        assert_eq!(m.main(), bid(b), "block {b} committed");
        parent = bid(b);
        if b == 1_000 {
            at_1000 = Some(m.footprint());
        }
    }
    let (early, late) = (at_1000.unwrap(), m.footprint());
    assert_eq!(early, late, "the footprint after 1,000 and 20,001 blocks");
    assert!(late.blocks <= 64 + 2, "{late:?}");

    // A device's block over block 10, pruned long ago: the machine asks
    // for it, the driver's ledger answers with an anchor, and the block is
    // validated and merged by the proposal of the round this validator
    // leads.
    let side = Header {
        id: bid(1_000_000),
        parents: vec![bid(10)],
        round: 0,
        proposer: 9,
        kind: Kind::Side,
        txs: vec![TxId::of_line("door event")],
        validators: None,
    };
    m.handle(
        Duration::ZERO,
        Event::Received {
            from: 9,
            message: Message::Block(side.clone()),
        },
    );
    let asked: Vec<Action> = m.drain().collect();
    assert!(asked.contains(&Action::Fetch(bid(10))), "{asked:?}");
    m.handle(
        Duration::ZERO,
        Event::Anchored(Anchor {
            block: bid(10),
            height: 10,
            validators: Arc::new(Validators::new((0..n).collect())),
        }),
    );
    let after: Vec<Action> = m.drain().collect();
    assert!(after.contains(&Action::Validate(side.id)), "{after:?}");
    m.handle(
        Duration::ZERO,
        Event::Validated {
            block: side.id,
            valid: true,
        },
    );
    let merge = m.drain().find_map(|a| match a {
        Action::Propose { parents, .. } => Some(parents),
        _ => None,
    });
    let mut both = vec![bid(last), side.id];
    both.sort();
    assert_eq!(
        merge,
        Some(both),
        "the next proposal merges the device's block"
    );
}

#[test]
fn the_next_leader_builds_over_the_block_it_voted_for_before_that_block_commits() {
    // Validator 2 of 4 leads round 2; block 1 is round 1's proposal.
    let tx = TxId::of_line("arrived while block 1 was checked");
    let mut m = fresh(2, 4);
    let mut b1 = proposal(1, &[0], 1, 4);
    b1.txs = vec![TxId::of_line("in block 1")];
    m.handle(Duration::ZERO, Event::LocalTx(b1.txs[0]));
    m.handle(Duration::ZERO, Event::LocalTx(tx));
    m.drain().for_each(drop);
    let actions = deliver(&mut m, b1, true);
    assert_eq!(votes_for(&actions), [id(1)]);
    assert_eq!(m.main(), id(0), "one vote commits nothing");
    assert_eq!(m.round(), 2, "its vote moved it to the next round");
    let proposed: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Propose {
                parents,
                round,
                txs,
                ..
            } => Some((parents.clone(), *round, txs.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        proposed,
        [(vec![id(1)], 2, vec![tx])],
        "over the voted block, without what that block carries"
    );
    // Its own proposal validates; block 1 then commits by its own votes,
    // and block 2 by its own.
    let header = Header {
        id: id(2),
        parents: vec![id(1)],
        round: 2,
        proposer: 2,
        kind: Kind::Proposal,
        txs: vec![tx],
        validators: None,
    };
    m.handle(Duration::ZERO, Event::Proposed(header));
    let mut actions: Vec<Action> = m.drain().collect();
    assert!(actions.contains(&Action::Validate(id(2))), "{actions:?}");
    m.handle(
        Duration::ZERO,
        Event::Validated {
            block: id(2),
            valid: true,
        },
    );
    actions.extend(m.drain());
    assert_eq!(votes_for(&actions), [id(2)]);
    for voter in [0, 1] {
        receive_vote(&mut m, voter, id(1));
    }
    assert_eq!(m.main(), id(1));
    for voter in [0, 3] {
        receive_vote(&mut m, voter, id(2));
    }
    assert_eq!(m.main(), id(2));
}

#[test]
fn a_leader_with_nothing_new_does_not_wrap_the_block_it_voted_for() {
    // Validator 2 leads round 2 and votes for round 1's block: with an
    // empty mempool it proposes nothing (block 1 commits by its own votes),
    // so an idle chain does not grow a tail of empty blocks.
    let mut m = fresh(2, 4);
    let actions = deliver(&mut m, proposal(1, &[0], 1, 4), true);
    assert_eq!(votes_for(&actions), [id(1)]);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Propose { .. })),
        "{actions:?}"
    );
    // Block 1's votes were lost: the round times out and the leader of the
    // next round carries it in an empty proposal, as before.
    let mut m = fresh(3, 4);
    deliver(&mut m, proposal(1, &[0], 1, 4), true);
    deliver(&mut m, proposal(2, &[1], 2, 4), true);
    m.drain().for_each(drop);
    assert_eq!(m.round(), 3);
    m.handle_timeout(Duration::from_secs(2));
    m.handle_timeout(Duration::from_secs(5));
    let after: Vec<Action> = m.drain().collect();
    let carried = after.iter().any(|a| {
        matches!(a, Action::Propose { parents, txs, .. } if parents == &vec![id(2)] && txs.is_empty())
    });
    assert!(carried || m.round() > 3, "{after:?}");
}

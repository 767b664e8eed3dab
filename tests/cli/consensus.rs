//! Proof of merge with everything real but the network: three validators
//! in one process, each with its own data directory (ledger, RocksDB,
//! images), its own executor and container helper, and its own
//! [`Machine`]. Messages go through an in-memory queue; a block's git
//! objects go from the proposer's repository to the others with
//! `git push` (the net issue replaces both). Votes are real SSH signatures,
//! checked on receipt; commits store the certificate as a git note; each
//! validator re-executes every block it votes for with the counter dapp in
//! containers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use utter_consensus::{Action, Config, Event, Header, Kind, Machine, Message, NodeId, TxId, Vote};
use utter_executor::{Executor, Verdict};
use utter_ledger::cert::{Certificate, SignedVote};
use utter_ledger::key::Keypair;
use utter_ledger::tx::{Tx, VERSION};
use utter_ledger::{BlockId, Ledger, MAIN};
use utter_node::{Home, NodeImages};
use utter_runtime::Helper;

use super::*;

const CHAIN: &str = "trio";
const T0: i64 = 1_790_000_000;

/// What travels between validators besides the machine's message.
enum Payload {
    None,
    /// A transaction's signed line.
    Line(String),
    /// A vote's SSH signature.
    Signature(SignedVote),
}

struct Validator {
    data: PathBuf,
    key: Keypair,
    ledger: &'static Ledger,
    executor: Executor<'static>,
    images: NodeImages,
    helper: Helper,
    machine: Machine,
    /// Transaction lines by id (its mempool's bodies).
    lines: HashMap<TxId, String>,
    /// Vote signatures received (and its own), by block and voter.
    votes: BTreeMap<(BlockId, NodeId), SignedVote>,
    vote_tip: utter_node::consensus::VoteTip,
    commits: Vec<BlockId>,
}

fn tx_id(line: &str) -> TxId {
    TxId::of_line(line)
}

/// The machine's header of a block: from the signed commit alone
/// (`utter_node::consensus::header`).
fn header(ledger: &Ledger, id: BlockId, keys: &[String]) -> Header {
    let block = ledger.block(id).unwrap();
    utter_node::consensus::header(ledger, &block, id_of(keys))
        .unwrap()
        .expect("a validator signed it")
}

/// Numbers a validator's key by its place in `keys`.
fn id_of(keys: &[String]) -> impl Fn(&str) -> Option<NodeId> + '_ {
    |key| keys.iter().position(|k| k == key).map(|i| i as NodeId)
}

fn public_key(data: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&ok(utter(data).args(["key", "show", "--json"]))).unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

#[test]
fn three_validators_commit_blocks_with_the_real_executor() {
    let dir = tempfile::tempdir().unwrap();
    let datas: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("v{i}"))).collect();
    let counter = utter_testkit::static_binary("utter-counter", "counter");
    for data in &datas {
        ok(utter(data).args(["key", "gen"]));
        // The same binary packages to the same image id everywhere.
        ok(utter(data)
            .args(["image", "build", "--binary"])
            .arg(&counter)
            .args(["--tag", "counter"]));
    }
    let mut init = utter(&datas[0]);
    init.args([
        "init",
        "--no-builtin",
        "--chain",
        CHAIN,
        "--name",
        "v0",
        "--dapp",
        "counter=counter",
    ]);
    for (i, data) in datas.iter().enumerate().skip(1) {
        init.args(["--validator", &format!("v{i}={}", public_key(data))]);
    }
    ok(&mut init);
    // The others start from the same genesis.
    for data in &datas[1..] {
        let status = Command::new("cp")
            .arg("-a")
            .arg(datas[0].join("ledger.git"))
            .arg(data.join("ledger.git"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    let mut vs: Vec<Validator> = datas
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let home = Home::new(data).with_helper(env!("CARGO_BIN_EXE_utter"));
            let opened = home.open().unwrap();
            let images = home.node_images(&opened.store).unwrap();
            let ledger: &'static Ledger = Box::leak(Box::new(opened.ledger));
            let genesis = ledger.genesis();
            Validator {
                data: data.clone(),
                key: Keypair::load(&data.join("keys/node")).unwrap(),
                ledger,
                executor: Executor::new(ledger, &data.join("checkouts")).unwrap(),
                images,
                helper: home.spawn_helper().unwrap(),
                machine: Machine::new(
                    Config::new(i as NodeId, vec![0, 1, 2]),
                    utter_consensus::Persisted {
                        genesis,
                        main: genesis,
                        vote_tip: None,
                        blocks: Vec::new(),
                        mempool: Vec::new(),
                    },
                    Duration::ZERO,
                ),
                lines: HashMap::new(),
                votes: BTreeMap::new(),
                vote_tip: utter_node::consensus::VoteTip::at(data.join("vote-tip")),
                commits: Vec::new(),
            }
        })
        .collect();
    let genesis = vs[0].ledger.genesis();
    assert!(vs.iter().all(|v| v.ledger.genesis() == genesis));

    // A user's transactions, submitted to different validators.
    let user = Keypair::generate("user").unwrap();
    let lines: Vec<String> = (1..=12u64)
        .map(|nonce| {
            Tx {
                v: VERSION,
                chain: CHAIN.into(),
                dapp: "counter".into(),
                action: "add".into(),
                args: serde_json::json!({"name": "visits", "by": nonce}),
                signer: user.public().to_openssh(),
                nonce,
                time: T0 as u64,
            }
            .sign(&user)
            .unwrap()
            .to_line()
        })
        .collect();

    // Transactions 1–6 go in from 0 ms, 7–12 from 1 s, while validator 0
    // is cut off (1 s to 4 s): with q = 3 nothing commits, v0 votes for
    // its own proposal and v1, v2 for theirs, and after the heal a merge
    // block brings both sides together.
    let submit_at =
        |k: usize| Duration::from_millis(if k < 6 { 100 * k } else { 1000 + 100 * (k - 6) } as u64);
    let cut = (Duration::from_secs(1), Duration::from_secs(4));
    let mut now = Duration::ZERO;
    let mut queue: VecDeque<(NodeId, NodeId, Message, Payload)> = VecDeque::new();
    // Rounds and proposers of blocks, as their headers carried them.
    let mut submitted = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 20_000, "no progress after {steps} steps");
        // Submit one transaction per simulated 100 ms, round-robin.
        if submitted < lines.len() && now >= submit_at(submitted) {
            let line = lines[submitted].clone();
            let v = &mut vs[submitted % 3];
            v.lines.insert(tx_id(&line), line.clone());
            v.machine.handle(now, Event::LocalTx(tx_id(&line)));
            submitted += 1;
        }
        // Carry out every validator's actions.
        for i in 0..vs.len() {
            while let Some(action) = vs[i].machine.poll() {
                act(&mut vs, i, action, now, &mut queue);
            }
        }
        if let Some((to, from, message, payload)) = queue.pop_front() {
            if now >= cut.0 && now < cut.1 && (to == 0 || from == 0) {
                continue; // lost in the partition
            }
            let v = &mut vs[to as usize];
            match (&message, payload) {
                (Message::Tx(id), Payload::Line(line)) => {
                    assert_eq!(*id, tx_id(&line));
                    v.lines.insert(*id, line);
                }
                (Message::Vote(vote), Payload::Signature(sig)) => {
                    // The driver checks the signature before the machine
                    // sees the vote.
                    let height = v.ledger.height(vote.block).unwrap();
                    let signer = sig.verify(CHAIN, vote.block, height).unwrap();
                    let expected = Keypair::load(&datas[vote.voter as usize].join("keys/node"))
                        .unwrap()
                        .public();
                    assert_eq!(signer.to_openssh(), expected.to_openssh());
                    v.votes.insert((vote.block, vote.voter), sig);
                }
                (Message::Block(h), _) => {
                    // The block's objects arrived with it (git push).
                    let block = v.ledger.block(h.id).unwrap();
                    assert_eq!(block.parents, h.parents);
                }
                _ => {}
            }
            v.machine.handle(now, Event::Received { from, message });
            continue;
        }
        let done = vs.iter().all(|v| {
            let main = v.ledger.resolve(MAIN).unwrap();
            let committed: BTreeSet<String> = v
                .ledger
                .ancestors(&[main])
                .unwrap()
                .iter()
                .flat_map(|b| v.ledger.tx_lines(&v.ledger.block(*b).unwrap()).unwrap())
                .collect();
            lines.iter().all(|l| committed.contains(l))
        });
        if done && submitted == lines.len() {
            break;
        }
        // Nothing in flight: advance to the next timer or submission.
        let next_tx = (submitted < lines.len()).then(|| submit_at(submitted));
        let next = vs
            .iter()
            .filter_map(|v| v.machine.poll_timeout())
            .chain(next_tx)
            .min()
            .expect("a validator always has a timer");
        now = now.max(next);
        for v in &mut vs {
            v.machine.handle_timeout(now);
        }
    }

    // Every validator holds the same main, certified by all three votes.
    let main = vs[0].ledger.resolve(MAIN).unwrap();
    for v in &vs {
        assert_eq!(v.ledger.resolve(MAIN).unwrap(), main);
        assert!(!v.commits.is_empty());
        for b in &v.commits {
            let cert = v
                .ledger
                .certificate(*b)
                .unwrap()
                .expect("a certificate note");
            let names = v
                .ledger
                .check_certificate(&v.ledger.block(*b).unwrap(), &cert)
                .unwrap()
                .unwrap();
            assert_eq!(names.len(), 3, "{names:?}");
        }
    }
    let blocks = vs[0].ledger.ancestors(&[main]).unwrap();
    let merges = blocks
        .iter()
        .filter(|b| vs[0].ledger.block(**b).unwrap().parents.len() > 1)
        .count();
    eprintln!(
        "3 validators: {} blocks on main ({merges} merges), {} commits, {steps} steps, {:?} simulated",
        blocks.len(),
        vs[0].commits.len(),
        now
    );
    assert!(merges >= 1, "the partition healed without a merge");
    let total: u64 = (1..=12).sum();
    for v in &vs {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(v.data.join("ledger.git"))
            .args(["show", "main:dapps/counter/state/counters/visits"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            total.to_string()
        );
    }
    // Each proposal carries its round inside the signed commit: git reads
    // the trailer, `utter show` the round.
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(vs[0].data.join("ledger.git"))
        .args([
            "log",
            "-1",
            "--format=%(trailers:key=Round,valueonly)",
            "main",
        ])
        .output()
        .unwrap();
    let round: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&ok(utter(&datas[0]).args(["show", "main", "--json"]))).unwrap();
    assert_eq!(shown["round"], round);
    // A restart rebuilds each machine from its ledger and persisted vote
    // tip alone: the same main and tip, every block back.
    let keys: Vec<String> = vs.iter().map(|v| v.key.public().to_openssh()).collect();
    for (i, v) in vs.iter().enumerate() {
        let persisted =
            utter_node::consensus::restore(v.ledger, &v.vote_tip, &[], Vec::new(), id_of(&keys))
                .unwrap();
        assert_eq!(persisted.main, v.machine.main(), "validator {i}");
        assert_eq!(persisted.vote_tip, v.machine.vote_tip(), "validator {i}");
        let restarted = Machine::new(
            Config::new(i as NodeId, vec![0, 1, 2]),
            persisted,
            Duration::ZERO,
        );
        assert_eq!(restarted.main(), v.machine.main(), "validator {i}");
        assert_eq!(restarted.vote_tip(), v.machine.vote_tip(), "validator {i}");
    }
    // A damaged tip keeps a validator from voting until someone looks.
    std::fs::write(vs[0].vote_tip.path(), "not a block\n").unwrap();
    let err = utter_node::consensus::restore(
        vs[0].ledger,
        &vs[0].vote_tip,
        &[],
        Vec::new(),
        id_of(&keys),
    )
    .unwrap_err();
    assert!(err.to_string().contains("must not vote"), "{err}");
    drop(vs);
    // The CLI agrees: structure, signatures, certificates and
    // re-execution.
    for data in &datas {
        let out = ok(utter(data).args(["verify", "--reexecute"]));
        assert!(out.contains("carry a commit certificate"), "{out}");
        assert!(out.contains("merges included"), "{out}");
    }
}

/// Carries out one action of validator `i`.
fn act(
    vs: &mut [Validator],
    i: usize,
    action: Action,
    now: Duration,
    queue: &mut VecDeque<(NodeId, NodeId, Message, Payload)>,
) {
    let me = i as NodeId;
    let peers: Vec<NodeId> = (0..vs.len() as NodeId).filter(|p| *p != me).collect();
    let mut send = |vs: &mut [Validator], to: NodeId, message: Message| {
        let payload = match &message {
            Message::Tx(id) => Payload::Line(vs[i].lines[id].clone()),
            Message::Vote(Vote { voter, block }) => match vs[i].votes.get(&(*block, *voter)) {
                Some(sig) => Payload::Signature(sig.clone()),
                None => return, // a vote it cannot prove: not sent
            },
            Message::Block(h) => {
                push_block(&vs[i].data, &vs[to as usize].data, h.id);
                Payload::None
            }
            Message::Fetch(_) => Payload::None,
        };
        queue.push_back((to, me, message, payload));
    };
    match action {
        Action::Broadcast(message) => {
            for p in &peers {
                send(vs, *p, message.clone());
            }
        }
        Action::Send { to, message } => send(vs, to, message),
        Action::Fetch(block) => {
            for p in &peers {
                send(vs, *p, Message::Fetch(block));
            }
        }
        Action::Validate(block) => {
            let v = &mut vs[i];
            let b = v.ledger.block(block).unwrap();
            let verdict = v
                .executor
                .reexecute(&mut v.helper, &mut v.images, &b)
                .unwrap();
            assert_eq!(verdict, Verdict::Valid, "validator {i} on {block}");
            v.machine.handle(
                now,
                Event::Validated {
                    block,
                    valid: verdict == Verdict::Valid,
                },
            );
        }
        Action::Propose {
            parents,
            round,
            kind,
            txs,
        } => {
            assert_eq!(kind, Kind::Proposal);
            let keys: Vec<String> = vs.iter().map(|v| v.key.public().to_openssh()).collect();
            let v = &mut vs[i];
            let lines: Vec<String> = txs.iter().map(|t| v.lines[t].clone()).collect();
            // Chain time: the genesis's (made now), on the machines' clock.
            let t0 = v.ledger.block(v.ledger.genesis()).unwrap().time;
            let time = t0 + now.as_secs() as i64;
            let proposed = v
                .executor
                .propose_on(
                    &mut v.helper,
                    &mut v.images,
                    &parents,
                    &lines,
                    Some(round),
                    time,
                    &v.key,
                )
                .unwrap();
            let h = header(v.ledger, proposed.block.id, &keys);
            assert_eq!((h.round, h.proposer), (round, me), "the commit says so");
            v.machine.handle(now, Event::Proposed(h));
        }
        Action::PersistVoteTip(block) => {
            // Durable before the vote leaves; the vote is signed here.
            let v = &mut vs[i];
            v.vote_tip.persist(block).unwrap();
            let height = v.ledger.height(block).unwrap();
            let sig = SignedVote::sign(&v.key, CHAIN, block, height).unwrap();
            v.votes.insert((block, me), sig);
        }
        Action::Commit { block, voters } => {
            let v = &mut vs[i];
            let height = v.ledger.height(block).unwrap();
            let cert = Certificate {
                chain: CHAIN.into(),
                block,
                height,
                votes: voters
                    .iter()
                    .map(|n| v.votes[&(block, *n)].clone())
                    .collect(),
            };
            v.ledger.write_certificate(&cert).unwrap();
            let old = v.ledger.resolve(MAIN).unwrap();
            v.ledger.advance(MAIN, old, block).unwrap();
            v.commits.push(block);
        }
    }
}

/// Copies a block's objects to a peer's repository with `git push`.
fn push_block(from: &Path, to: &Path, block: BlockId) {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(from.join("ledger.git"))
        .args(["push", "--quiet"])
        .arg(to.join("ledger.git"))
        .arg(format!("{block}:refs/utter/incoming/{block}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "git push: {out:?}");
}

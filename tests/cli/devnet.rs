//! Proof of merge over the network: `utter devnet up` starts four
//! validators and a follower as real `utter node run` processes on
//! loopback, each with its own data dir, talking QUIC. Signed
//! transactions go to every node's API while one validator is killed with
//! SIGKILL and started again. Every transaction a node accepted is then
//! committed exactly once on every node, all mains agree, each commit
//! carries a certificate of a quorum, and `utter verify --reexecute`
//! passes on every data dir.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use utter_client::Client;
use utter_client::api::TxState;
use utter_formats::Status;
use utter_formats::tx::{Request, sign_requests};
use utter_ledger::key::Keypair;
use utter_ledger::{BlockId, Ledger, MAIN, TxId};

use super::*;
use crate::net::{Lan, Node};

/// Stops the devnet however the test ends.
struct Devnet(PathBuf);

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_utter"))
            .args(["devnet", "down", "--dir"])
            .arg(&self.0)
            .output();
    }
}

pub(crate) fn devnet(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_utter"));
    c.arg("devnet").args(args);
    c.env_remove("UTTER_DATA_DIR");
    c
}

/// Each node's name and API, from `devnet up --json`.
fn up(dir: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut cmd = devnet(&["up", "--dir"]);
    cmd.arg(dir).arg("--json").args(extra);
    let v: serde_json::Value = serde_json::from_str(&ok(&mut cmd)).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["api"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pid(dir: &Path, node: &str) -> i32 {
    std::fs::read_to_string(dir.join(node).join("node.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `done` holds, at most `limit`, saying what it waited for.
pub(crate) fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Main's first-parent line, newest first: the blocks whose transactions
/// make main's state (a merge re-executes the other branches' ones).
fn first_parent_line(ledger: &Ledger) -> Vec<BlockId> {
    let mut out = Vec::new();
    let mut at = Some(ledger.resolve(MAIN).unwrap());
    while let Some(id) = at {
        out.push(id);
        at = ledger.block(id).unwrap().parents.first().copied();
    }
    out
}

#[test]
fn four_validators_and_a_follower_commit_every_accepted_transaction_once_across_a_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let nodes = up(&dir, &["--validators", "4", "--followers", "1"]);
    let _guard = Devnet(dir.clone());
    assert_eq!(
        nodes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["v1", "v2", "v3", "v4", "f1"]
    );
    let chain = Client::new(&nodes[0].1).status().unwrap().chain;
    // Four members-to-be, each signing its own transactions.
    let users: Vec<Keypair> = (0..4)
        .map(|i| Keypair::generate(&format!("user{i}")).unwrap())
        .collect();
    let mut nonces = [1u64; 4];
    let mut accepted: Vec<TxId> = Vec::new();
    let mut submit = |round: usize, to: &[&(String, String)]| {
        for (i, user) in users.iter().enumerate() {
            let (_, api) = to[(round + i) % to.len()];
            let request = Request {
                dapp: "membership".into(),
                action: "join".into(),
                args: serde_json::json!({
                    "name": format!("u{i}-{round}"),
                    "key": user.public().to_openssh(),
                }),
            };
            let lines =
                sign_requests(user, &chain, nonces[i], utter_formats::now(), [request]).unwrap();
            nonces[i] += 1;
            for state in Client::new(api).submit(&lines).unwrap() {
                match state {
                    TxState::Pending { id } | TxState::Committed { id, .. } => accepted.push(id),
                    TxState::Refused { id, error } => panic!("{id} refused by {api}: {error}"),
                }
            }
        }
    };
    let all: Vec<&(String, String)> = nodes.iter().collect();
    for round in 0..6 {
        submit(round, &all);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A validator dies in the middle of the load, with no warning.
    let v3 = pid(&dir, "v3");
    let status = Command::new("kill")
        .args(["-9", &v3.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // What it had persisted as its last vote when it died.
    let tip_at_kill: Option<BlockId> = std::fs::read_to_string(dir.join("v3/vote-tip"))
        .ok()
        .map(|t| t.trim().parse().unwrap());
    let others: Vec<&(String, String)> = nodes.iter().filter(|(n, _)| n != "v3").collect();
    for round in 6..12 {
        submit(round, &others);
        std::thread::sleep(Duration::from_millis(100));
    }
    // `up` on the same dir starts again only the node that is not running.
    let again = up(&dir, &[]);
    assert_ne!(pid(&dir, "v3"), v3, "v3 was started again");
    for round in 12..18 {
        submit(round, &again.iter().collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(accepted.len(), 18 * 4);

    // Every accepted transaction is answered committed by every node.
    for (name, api) in &again {
        let client = Client::new(api);
        for id in &accepted {
            match client.wait(*id, Duration::from_secs(60)).unwrap() {
                TxState::Committed { .. } => {}
                other => panic!("{name}: {id} is {other:?} after 60 s"),
            }
        }
    }
    // One main everywhere (the follower syncs it).
    // One main everywhere, and nothing left under way (a merge of a
    // vote v3 left beside main may still follow the last transaction's
    // block): seen twice in a row, so no block was committed between.
    let head_of = |api: &str| Client::new(api).status().unwrap().head;
    let settled = || -> Option<BlockId> {
        let statuses: Vec<_> = again
            .iter()
            .map(|(_, api)| Client::new(api).status().unwrap())
            .collect();
        let heads: HashSet<BlockId> = statuses.iter().map(|s| s.head).collect();
        let idle = statuses
            .iter()
            .all(|s| s.mempool == 0 && s.consensus.as_ref().is_some_and(|c| c.idle));
        (heads.len() == 1 && idle).then(|| statuses[0].head)
    };
    let mut last = None;
    wait_until(
        "every node idle on one main",
        Duration::from_secs(60),
        || {
            let now = settled();
            let done = now.is_some() && now == last;
            last = now;
            done
        },
    );
    let main = head_of(&again[0].1);
    let status = devnet(&["status", "--dir"]).arg(&dir).output().unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("last certificate"), "{shown}");
    drop(_guard);

    for (name, _) in &again {
        let data = dir.join(name);
        // Exactly once on the line that makes main's state: one result
        // per accepted transaction that is not a replay rejection.
        let (on_main, counts) = committed(&data);
        assert_eq!(on_main, main, "{name}'s main");
        for id in &accepted {
            assert_eq!(counts.get(id), Some(&1), "{name}: {id} on main's line");
        }
        let home = utter_node::Home::new(&data);
        let opened = home.open_read_only().unwrap();
        let ledger = &opened.ledger;
        // The validators certified main; the follower holds their
        // certificate.
        let cert = ledger
            .certificate(main)
            .unwrap()
            .expect("main is certified");
        let voters = ledger
            .check_certificate(&ledger.block(main).unwrap(), &cert)
            .unwrap()
            .unwrap();
        assert!(voters.len() >= 3, "{name}: {voters:?}");
        drop(opened);
        let out = ok(utter(&data).args(["verify", "--reexecute"]));
        assert!(out.contains("carry a commit certificate"), "{name}: {out}");
        let fsck = Command::new("git")
            .arg("--git-dir")
            .arg(data.join("ledger.git"))
            .args(["fsck", "--strict"])
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{name}: git fsck: {fsck:?}");
    }
    // v3 never voted against its persisted tip: its last vote now
    // descends from the one it had persisted when it was killed.
    let tip_now: BlockId = std::fs::read_to_string(dir.join("v3/vote-tip"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if let Some(before) = tip_at_kill {
        let home = utter_node::Home::new(dir.join("v3"));
        let opened = home.open_read_only().unwrap();
        assert!(
            before == tip_now || opened.ledger.is_ancestor(before, tip_now).unwrap(),
            "v3 voted for {tip_now}, which does not descend from its persisted tip {before}"
        );
    }
}

/// Whether process `pid` has ended (gone, or a zombie not yet reaped).
fn ended(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The transactions on the part of `branch` that main does not hold,
/// oldest first.
fn unmerged(data: &Path, branch: &str) -> Vec<TxId> {
    let home = utter_node::Home::new(data);
    let opened = home.open_read_only().unwrap();
    let ledger = &opened.ledger;
    let main = ledger.resolve(MAIN).unwrap();
    let mut blocks = Vec::new();
    let Some(mut at) = ledger.branch(branch).unwrap() else {
        return Vec::new();
    };
    while at != main && !ledger.is_ancestor(at, main).unwrap() {
        let block = ledger.block(at).unwrap();
        at = block.parents[0];
        blocks.push(block);
    }
    blocks
        .iter()
        .rev()
        .flat_map(|b| ledger.tx_lines(b).unwrap())
        .map(|line| TxId::of_line(&line))
        .collect()
}

/// A device's node (a follower `chain.toml` names under `devices`) with
/// every validator stopped goes on taking transactions: it signs them
/// into blocks on its own branch, `refs/heads/f1`, in the order they were
/// signed, while main stays where it was. When the validators are back
/// they pull the branch and merge it into main: each transaction
/// committed once on every node, git sees the branch under main, and
/// re-execution agrees.
#[test]
fn a_device_with_no_validator_records_on_its_branch_and_the_validators_merge_it_into_main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let nodes = up(&dir, &["--validators", "4", "--followers", "1"]);
    let _guard = Devnet(dir.clone());
    let f1 = Client::new(&nodes[4].1);
    let chain = f1.status().unwrap().chain;
    let door = Keypair::generate("door").unwrap();
    let admin = Request {
        dapp: "membership".into(),
        action: "add-member".into(),
        args: serde_json::json!({"name": "Ada", "key": door.public().to_openssh(),
                                 "roles": [], "salt": "ab".repeat(16)}),
    };
    // A new member each, added by the admin.
    let join = |n: usize| Request {
        dapp: "membership".into(),
        action: "add-member".into(),
        args: serde_json::json!({
            "name": format!("visitor {n}"),
            "key": Keypair::generate("visitor").unwrap().public().to_openssh(),
        }),
    };
    // Online first: the branch is merged as it grows.
    let lines = sign_requests(&door, &chain, 1, utter_formats::now(), [admin]).unwrap();
    let mut ids: Vec<TxId> = f1.submit(&lines).unwrap().iter().map(TxState::id).collect();
    match f1.wait(ids[0], Duration::from_secs(60)).unwrap() {
        TxState::Committed { result, .. } if result.status == Status::Accepted => {}
        other => panic!("the device's first transaction is {other:?} after 60 s"),
    }

    // Every validator stops.
    for v in ["v1", "v2", "v3", "v4"] {
        let p = pid(&dir, v);
        assert!(
            Command::new("kill")
                .arg(p.to_string())
                .status()
                .unwrap()
                .success()
        );
        wait_until(&format!("{v} stops"), Duration::from_secs(30), || ended(p));
    }
    let main_before = f1.status().unwrap().head;
    // One signer's batch, and then more: all on the branch, in order.
    let batch = sign_requests(
        &door,
        &chain,
        2,
        utter_formats::now(),
        [join(2), join(3), join(4)],
    )
    .unwrap();
    let more = sign_requests(&door, &chain, 5, utter_formats::now(), [join(5)]).unwrap();
    let offline: Vec<TxId> = f1
        .submit(&batch)
        .unwrap()
        .iter()
        .chain(f1.submit(&more).unwrap().iter())
        .map(TxState::id)
        .collect();
    wait_until(
        "the device's branch carries what it took offline",
        Duration::from_secs(30),
        || unmerged(&dir.join("f1"), "f1").len() == offline.len(),
    );
    assert_eq!(
        unmerged(&dir.join("f1"), "f1"),
        offline,
        "the branch keeps the order they were signed in"
    );
    assert_eq!(
        f1.status().unwrap().head,
        main_before,
        "main moved with no validator"
    );
    // Stock git: the branch's blocks are signed commits beside main.
    let git_dir = dir.join("f1/ledger.git");
    let ahead = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["rev-list", "--count", "main..f1"])
        .output()
        .unwrap();
    let ahead: usize = String::from_utf8_lossy(&ahead.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(ahead >= 1, "f1 is {ahead} blocks ahead of main");

    // The validators come back: the branch is merged into main.
    let again = up(&dir, &[]);
    ids.extend(&offline);
    for id in &offline {
        match f1.wait(*id, Duration::from_secs(90)).unwrap() {
            TxState::Committed { result, .. } if result.status == Status::Accepted => {}
            other => panic!("{id} is {other:?} 90 s after the validators came back"),
        }
    }
    let head_of = |api: &str| Client::new(api).status().unwrap().head;
    wait_until("every node on one main", Duration::from_secs(60), || {
        let heads: HashSet<BlockId> = again.iter().map(|(_, api)| head_of(api)).collect();
        heads.len() == 1
    });
    drop(_guard);
    for (name, _) in &again {
        let data = dir.join(name);
        assert!(
            unmerged(&data, "f1").is_empty(),
            "{name}: f1's branch is not all under main"
        );
        every_accepted_once_and_reexecuted(&data, name, &ids);
    }
    let merge = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["merge-base", "--is-ancestor", "f1", "main"])
        .status()
        .unwrap();
    assert!(merge.success(), "git: f1 is not an ancestor of main");
}

/// A stranger's QUIC client on a validator's consensus protocol: what it
/// sends is checked before anything trusts it. Another chain's `Hello`, a
/// vote whose signature does not verify and a frame out of place each get
/// the channel closed with the reason; unsigned or foreign transactions
/// are not admitted; an announcement of a block nobody has changes
/// nothing. The chain goes on committing afterwards.
#[test]
fn a_strangers_consensus_frames_are_checked_and_change_nothing() {
    use utter_net::wire::Message;
    use utter_net::{ALPN_CONSENSUS, Endpoint, Identity};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let nodes = up(&dir, &["--validators", "2"]);
    let _guard = Devnet(dir.clone());
    let devnet: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("devnet.json")).unwrap()).unwrap();
    let p2p: std::net::SocketAddr = devnet["nodes"][0]["p2p"].as_str().unwrap().parse().unwrap();
    let client = Client::new(&nodes[0].1);
    let before = client.status().unwrap();

    let stranger = Keypair::generate("stranger").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoint = {
        let _guard = rt.enter();
        Endpoint::client(Identity::new(&stranger).unwrap(), false).unwrap()
    };
    let hello = Message::Hello {
        chain: before.chain.clone(),
        genesis: before.head,
    };
    // Sends `frames` on a new channel; returns why the node closed it, or
    // None when it was still open 2 s after the last frame.
    let send = |frames: Vec<Message>| -> Option<String> {
        rt.block_on(async {
            let conn = endpoint.connect(p2p, ALPN_CONSENSUS, None).await.unwrap();
            let mut channel = conn.open_channel().await.unwrap();
            for f in &frames {
                if channel.send(f).await.is_err() {
                    break;
                }
            }
            let closed = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close("done");
            closed.ok()
        })
    };
    let why = send(vec![Message::Hello {
        chain: "another".into(),
        genesis: before.head,
    }])
    .expect("another chain's Hello is hung up on");
    assert!(why.contains("not \"another\""), "{why}");

    let why = send(vec![
        hello.clone(),
        Message::Vote {
            block: before.head,
            height: 0,
            signature: "-----BEGIN SSH SIGNATURE-----\nnot one\n-----END SSH SIGNATURE-----".into(),
        },
    ])
    .expect("a forged vote is hung up on");
    assert!(why.contains("does not verify"), "{why}");

    let why = send(vec![hello.clone(), Message::Heads]).expect("a request out of place");
    assert!(why.contains("on a consensus channel"), "{why}");

    // A line that is not a transaction, and one signed for another chain.
    let foreign = sign_requests(
        &stranger,
        "another",
        1,
        utter_formats::now(),
        [Request {
            dapp: "membership".into(),
            action: "join".into(),
            args: serde_json::json!({}),
        }],
    )
    .unwrap();
    let stays_open = send(vec![
        hello.clone(),
        Message::Txs(vec![
            b"{not a transaction".to_vec(),
            foreign[0].clone().into_bytes(),
        ]),
        Message::Announce(BlockId::from_sha1([7; 20])),
        // A stranger's push is not taken in: its block is pulled (from a
        // stranger that serves nothing), and nothing moves.
        Message::Proposal(Box::new(utter_net::wire::Proposal {
            block: BlockId::from_sha1([8; 20]),
            objects: 1,
            pack: b"not a pack".to_vec(),
            manifests: vec![],
            chunks: vec![],
        })),
    ]);
    assert_eq!(stays_open, None, "refused lines are not a protocol fault");
    let after = client.status().unwrap();
    assert_eq!(after.mempool, 0, "nothing was admitted");
    assert_eq!(after.head, before.head, "nothing moved");

    // The chain still commits.
    let lines = sign_requests(
        &stranger,
        &before.chain,
        1,
        utter_formats::now(),
        [Request {
            dapp: "membership".into(),
            action: "join".into(),
            args: serde_json::json!({}),
        }],
    )
    .unwrap();
    let id = client.submit(&lines).unwrap()[0].id();
    match Client::new(&nodes[1].1)
        .wait(id, Duration::from_secs(60))
        .unwrap()
    {
        TxState::Committed { .. } => {}
        other => panic!("{other:?}"),
    }
}

/// Each transaction on main's first-parent line that is not a replay
/// rejection, counted, and main itself, read from a data dir (its node
/// may be running).
pub(crate) fn committed(data: &Path) -> (BlockId, BTreeMap<TxId, usize>) {
    let home = utter_node::Home::new(data);
    let opened = home.open_read_only().unwrap();
    let ledger = &opened.ledger;
    let mut counts: BTreeMap<TxId, usize> = BTreeMap::new();
    for id in first_parent_line(ledger) {
        let block = ledger.block(id).unwrap();
        for text in ledger.result_lines(&block).unwrap() {
            let r: utter_formats::TxResult = serde_json::from_str(&text).unwrap();
            if !r
                .reason
                .as_deref()
                .is_some_and(|e| e.contains("already used"))
            {
                *counts.entry(r.tx).or_default() += 1;
            }
        }
    }
    (ledger.resolve(MAIN).unwrap(), counts)
}

pub(crate) fn height(data: &Path) -> u64 {
    let home = utter_node::Home::new(data);
    let opened = home.open_read_only().unwrap();
    let main = opened.ledger.resolve(MAIN).unwrap();
    opened.ledger.height(main).unwrap()
}

#[test]
fn partitions_heal_a_cut_off_follower_catches_up_and_a_killed_validator_rejoins_in_network_namespaces()
 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::net::in_ns;

    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let net = NetnsDevnet::new(tmp.path(), &["loss", "10%"]);
    let lan = &net.lan;
    let data = |i: usize| net.data(i);
    let start = |i: usize| net.start(i);
    let mut nodes: Vec<Option<Node>> = (1..=5).map(|i| Some(start(i))).collect();

    // A steady load: one signer per node (so nonces never race), one
    // transaction to each node that takes load, every round.
    let keys: Vec<PathBuf> = (1..=5)
        .map(|i| ssh_key(tmp.path(), &format!("user{i}")).0)
        .collect();
    let targets = Arc::new(Mutex::new(vec![1usize, 2, 3, 4, 5]));
    let accepted = Arc::new(Mutex::new(Vec::<(usize, TxId)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (targets, accepted, stop) = (targets.clone(), accepted.clone(), stop.clone());
        let dirs: Vec<PathBuf> = (1..=5).map(data).collect();
        let nss: Vec<String> = (1..=5).map(|i| lan.ns(i)).collect();
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                let now: Vec<usize> = targets.lock().unwrap().clone();
                for i in now {
                    let args = serde_json::json!({"name": format!("n{i}-{round}"), "key": "k"});
                    let out = in_ns(Some(&nss[i - 1]), &dirs[i - 1])
                        .args(["tx", "submit", "membership", "join", "--json", "--key"])
                        .arg(&keys[i - 1])
                        .args(["--args", &args.to_string()])
                        .output()
                        .unwrap();
                    if !out.status.success() {
                        continue; // the node is down (killed): nothing accepted
                    }
                    let states: Vec<TxState> = serde_json::from_slice(&out.stdout).unwrap();
                    for s in states {
                        match s {
                            TxState::Pending { id } | TxState::Committed { id, .. } => {
                                accepted.lock().unwrap().push((i, id));
                            }
                            TxState::Refused { id, error } => panic!("{id} refused: {error}"),
                        }
                    }
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Every node has every transaction accepted so far, once.
    let all_committed = |within: Duration, what: &str| {
        let wanted: Vec<TxId> = accepted.lock().unwrap().iter().map(|(_, id)| *id).collect();
        wait_until(what, within, || {
            (1..=5).all(|i| {
                let (_, counts) = committed(&data(i));
                wanted.iter().all(|id| counts.get(id) == Some(&1))
            })
        });
    };
    let max_height = |nodes: &[usize]| nodes.iter().map(|i| height(&data(*i))).max().unwrap();

    wait_until("the first commits", Duration::from_secs(60), || {
        (1..=5).all(|i| height(&data(i)) >= 2)
    });

    // 2 | 2 (the follower with the first two): no side has a quorum.
    lan.partition(&[&[1, 2, 5], &[3, 4]]);
    std::thread::sleep(Duration::from_secs(2)); // what was in flight lands
    let before = max_height(&[1, 2, 3, 4]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        max_height(&[1, 2, 3, 4]),
        before,
        "a block committed without a quorum during the 2 | 2 partition"
    );
    lan.heal();
    all_committed(Duration::from_secs(60), "commits after the 2 | 2 heal");

    // 3 | 1: the three go on, the one catches up after the heal.
    lan.partition(&[&[1, 2, 3, 5], &[4]]);
    std::thread::sleep(Duration::from_secs(2));
    let alone = height(&data(4));
    let three = max_height(&[1, 2, 3]);
    wait_until(
        "the three commit on their own",
        Duration::from_secs(30),
        || max_height(&[1, 2, 3]) > three + 1,
    );
    assert!(height(&data(4)) <= alone + 1, "the one alone committed");
    lan.heal();
    all_committed(Duration::from_secs(60), "the one catches up after the heal");

    // The follower cut off keeps accepting and records on its branch;
    // after the heal the branch is merged into main.
    lan.partition(&[&[1, 2, 3, 4]]);
    wait_until(
        "the cut-off follower records blocks on its branch",
        Duration::from_secs(30),
        || unmerged(&data(5), "f1").len() >= 3,
    );
    let recorded = unmerged(&data(5), "f1");
    lan.heal();
    all_committed(
        Duration::from_secs(60),
        "the follower's transactions after the heal",
    );
    wait_until(
        "main holds, once, what the follower recorded offline",
        Duration::from_secs(30),
        || {
            (1..=5).all(|i| {
                let (_, counts) = committed(&data(i));
                recorded.iter().all(|id| counts.get(id) == Some(&1))
            })
        },
    );

    // kill -9 of a validator under load, and a restart.
    let tip_at_kill: Option<BlockId> = {
        nodes[1].take().unwrap().kill_9();
        std::fs::read_to_string(data(2).join("vote-tip"))
            .ok()
            .map(|t| t.trim().parse().unwrap())
    };
    std::thread::sleep(Duration::from_secs(2));
    nodes[1] = Some(start(2));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    all_committed(Duration::from_secs(90), "everything after the restart");
    wait_until("one main everywhere", Duration::from_secs(60), || {
        let mains: HashSet<BlockId> = (1..=5).map(|i| committed(&data(i)).0).collect();
        mains.len() == 1
    });
    let n = accepted.lock().unwrap().len();
    assert!(n > 50, "the load ran: {n} transactions");
    eprintln!(
        "5 nodes in network namespaces: {n} transactions accepted, all committed once; main at height {}",
        height(&data(1))
    );
    drop(nodes);
    if let Some(before) = tip_at_kill {
        let now: BlockId = std::fs::read_to_string(data(2).join("vote-tip"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let home = utter_node::Home::new(data(2));
        let opened = home.open_read_only().unwrap();
        assert!(
            before == now || opened.ledger.is_ancestor(before, now).unwrap(),
            "v2 voted for {now}, which does not descend from its persisted tip {before}"
        );
    }
    for i in 1..=5 {
        let out = ok(utter(&data(i)).args(["verify", "--reexecute"]));
        assert!(out.contains("carry a commit certificate"), "{out}");
    }
}

/// One `membership join` per user, user `i` through `nodes[i]` with nonce
/// `nonce`; returns the ids the nodes accepted.
fn join_round(nodes: &[&Node], users: &[Keypair], chain: &str, nonce: u64) -> Vec<TxId> {
    let mut accepted = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let lines = sign_requests(
            user,
            chain,
            nonce,
            utter_formats::now(),
            [Request {
                dapp: "membership".into(),
                action: "join".into(),
                args: serde_json::json!({"name": format!("u{i}-{nonce}")}),
            }],
        )
        .unwrap();
        for state in nodes[i].client().submit(&lines).unwrap() {
            match state {
                TxState::Pending { id } | TxState::Committed { id, .. } => accepted.push(id),
                TxState::Refused { id, error } => panic!("{id} refused: {error}"),
            }
        }
    }
    accepted
}

/// Node `name` at `data` has every one of `accepted` on main's line
/// exactly once, and `verify --reexecute` passes on it.
fn every_accepted_once_and_reexecuted(data: &Path, name: &str, accepted: &[TxId]) {
    let (_, counts) = committed(data);
    for id in accepted {
        assert_eq!(counts.get(id), Some(&1), "{name}: {id} on main's line");
    }
    let out = ok(utter(data).args(["verify", "--reexecute"]));
    assert!(out.contains("carry a commit certificate"), "{name}: {out}");
}

/// Every node answers every one of `accepted` committed, and all are on
/// one main.
fn committed_everywhere(nodes: &[&Node], accepted: &[TxId]) {
    for node in nodes {
        let client = node.client();
        for id in accepted {
            match client.wait(*id, Duration::from_secs(60)).unwrap() {
                TxState::Committed { .. } => {}
                other => panic!("{id} is {other:?} after 60 s"),
            }
        }
    }
    wait_until("one main everywhere", Duration::from_secs(60), || {
        let heads: HashSet<BlockId> = nodes
            .iter()
            .map(|n| n.client().status().unwrap().head)
            .collect();
        heads.len() == 1
    });
}

/// A devnet's validators made by `devnet up --no-start`, started one by
/// Four validators (`v1`…`v4`, hosts 1-4) and a follower (`f1`, host 5)
/// made by `devnet up --no-start`, each in a network namespace of its own
/// on one LAN (`netem` on the links when the kernel has it).
///
/// One at a time in this process: two of them (ten nodes re-executing in
/// containers) on a 2-core machine starve each other's rounds, and a test
/// waiting two minutes for a commit then fails for the machine, not for
/// what it tests.
pub(crate) struct NetnsDevnet {
    pub dir: PathBuf,
    pub lan: Lan,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl NetnsDevnet {
    pub(crate) fn new(tmp: &Path, netem: &[&str]) -> Self {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tmp.join("net");
        ok(devnet(&[
            "up",
            "--no-start",
            "--validators",
            "4",
            "--followers",
            "1",
            "--dir",
        ])
        .arg(&dir));
        let lan = Lan::new(5, netem).expect("ip netns works as root");
        Self {
            dir,
            lan,
            _one_at_a_time: one,
        }
    }

    /// Host `i`'s data dir.
    pub(crate) fn data(&self, i: usize) -> PathBuf {
        self.dir.join(["v1", "v2", "v3", "v4", "f1"][i - 1])
    }

    /// Starts host `i`'s node in its namespace, peered with the validators.
    pub(crate) fn start(&self, i: usize) -> Node {
        let addr = |i: usize| format!("10.77.0.{i}:7448");
        let mut extra = vec!["--round-ms".to_string(), "500".to_string()];
        for v in (1..=4).filter(|v| *v != i) {
            extra.push("--peer".into());
            extra.push(addr(v));
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Node::start(&self.data(i), Some(&self.lan.ns(i)), &addr(i), &extra)
    }
}

/// one on loopback (each with its own environment).
struct Validators {
    dir: PathBuf,
    p2p: Vec<String>,
}

impl Validators {
    fn made(dir: &Path, n: usize) -> Self {
        let made: serde_json::Value = serde_json::from_str(&ok(devnet(&[
            "up",
            "--no-start",
            "--json",
            "--validators",
            &n.to_string(),
            "--dir",
        ])
        .arg(dir)))
        .unwrap();
        let p2p = made["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["p2p"].as_str().unwrap().to_string())
            .collect();
        Validators {
            dir: dir.to_path_buf(),
            p2p,
        }
    }

    /// Starts validator `i` (from 0) with `env`.
    fn start(&self, i: usize, env: &[(&str, &str)]) -> Node {
        let mut extra = vec!["--round-ms".to_string(), "500".to_string()];
        for (j, a) in self.p2p.iter().enumerate() {
            if j != i {
                extra.push("--peer".into());
                extra.push(a.clone());
            }
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Node::start_env(
            &self.dir.join(format!("v{}", i + 1)),
            None,
            &self.p2p[i],
            &extra,
            env,
        )
    }
}

/// One validator's clock 30 s ahead (the test-only `byzantine` build,
/// `UTTER_TEST_CLOCK_AHEAD`): the others refuse its proposals, dated after
/// their clocks by more than the bound, and go on committing; what it was
/// sent still reaches the chain, every transaction once, and no block on
/// main is dated ahead of the real clock beyond the bound.
#[test]
fn a_validator_whose_clock_is_30_s_ahead_cannot_date_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let four = Validators::made(&dir, 4);
    let mut nodes: Vec<Node> = (0..3).map(|i| four.start(i, &[])).collect();
    nodes.push(four.start(3, &[("UTTER_TEST_CLOCK_AHEAD", "30")]));
    let chain = nodes[0].client().status().unwrap().chain;
    let users: Vec<Keypair> = (0..4)
        .map(|i| Keypair::generate(&format!("user{i}")).unwrap())
        .collect();
    let mut accepted = Vec::new();
    // At least 12 rounds of load, and on until the fast clock has led two
    // rounds (its first block then long announced and judged).
    let mut round = 0u64;
    let started = Instant::now();
    let all: Vec<&Node> = nodes.iter().collect();
    while round < 12 || nodes[3].client().status().unwrap().blocks_made < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the fast clock never led a round"
        );
        round += 1;
        // Each user through its own node, the fast clock's included.
        accepted.extend(join_round(&all, &users, &chain, round));
        std::thread::sleep(Duration::from_millis(150));
    }
    committed_everywhere(&all, &accepted);
    let latest = i64::try_from(utter_formats::now()).unwrap() + 10;
    let said: Vec<String> = nodes.into_iter().map(Node::stop).collect();
    assert!(
        said[..3]
            .iter()
            .any(|s| s.contains("s after this node's clock")),
        "an honest validator refused a proposal of the fast clock:\n{}",
        said[..3].join("\n")
    );
    for i in 1..=4 {
        let data = dir.join(format!("v{i}"));
        let home = utter_node::Home::new(&data);
        let opened = home.open_read_only().unwrap();
        for id in first_parent_line(&opened.ledger) {
            let time = opened.ledger.block(id).unwrap().time;
            assert!(
                time <= latest,
                "v{i}: block {id} is dated {time}, after {latest}"
            );
        }
        drop(opened);
        every_accepted_once_and_reexecuted(&data, &format!("v{i}"), &accepted);
    }
}

/// A Byzantine validator (the test-only `byzantine` build, with
/// `UTTER_TEST_EQUIVOCATE`) proposes two blocks in every round it leads
/// and votes for both. The three honest validators commit every accepted
/// transaction once, agree on one main, and re-execute it.
#[test]
fn an_equivocating_validator_cannot_split_the_honest_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let four = Validators::made(&dir, 4);
    let honest: Vec<Node> = (0..3).map(|i| four.start(i, &[])).collect();
    let byzantine = four.start(3, &[("UTTER_TEST_EQUIVOCATE", "1")]);
    let chain = honest[0].client().status().unwrap().chain;

    let users: Vec<Keypair> = (0..3)
        .map(|i| Keypair::generate(&format!("user{i}")).unwrap())
        .collect();
    let mut accepted = Vec::new();
    let honest_ones: Vec<&Node> = honest.iter().collect();
    for round in 1..=12u64 {
        accepted.extend(join_round(&honest_ones, &users, &chain, round));
        std::thread::sleep(Duration::from_millis(150));
    }
    committed_everywhere(&honest_ones, &accepted);
    let said = byzantine.stop();
    for node in honest {
        drop(node);
    }
    let pairs: Vec<(BlockId, BlockId)> = said
        .lines()
        .filter_map(|l| l.split_once("equivocating in round "))
        .filter_map(|(_, rest)| {
            let (_, ids) = rest.split_once(": ")?;
            let (a, b) = ids.split_once(" and ")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    assert!(
        !pairs.is_empty(),
        "the Byzantine validator equivocated:\n{said}"
    );
    let mut seen_both = 0;
    for i in 1..=3 {
        let data = dir.join(format!("v{i}"));
        let home = utter_node::Home::new(&data);
        let opened = home.open_read_only().unwrap();
        for (a, b) in &pairs {
            if opened.ledger.has(*a) && opened.ledger.has(*b) {
                seen_both += 1;
            }
        }
        drop(opened);
        every_accepted_once_and_reexecuted(&data, &format!("v{i}"), &accepted);
    }
    assert!(
        seen_both > 0,
        "an honest validator received both proposals of a round"
    );
}

/// Three honest validators and a Byzantine fourth (the test-only
/// `byzantine` build, with `var` set) under at least `rounds` rounds of
/// load, and on until the Byzantine one has led two rounds. The honest
/// ones commit every accepted transaction once, `verify --reexecute`
/// passes on each, and their logs (returned) never say consensus stopped.
fn three_honest_beside_a_byzantine(var: &str, rounds: u64) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let four = Validators::made(&dir, 4);
    let honest: Vec<Node> = (0..3).map(|i| four.start(i, &[])).collect();
    let byzantine = four.start(3, &[(var, "1")]);
    let chain = honest[0].client().status().unwrap().chain;
    let users: Vec<Keypair> = (0..3)
        .map(|i| Keypair::generate(&format!("user{i}")).unwrap())
        .collect();
    let mut accepted = Vec::new();
    let honest_ones: Vec<&Node> = honest.iter().collect();
    let started = Instant::now();
    let mut round = 0u64;
    while round < rounds || byzantine.client().status().unwrap().blocks_made < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the Byzantine validator never led a round"
        );
        round += 1;
        accepted.extend(join_round(&honest_ones, &users, &chain, round));
        std::thread::sleep(Duration::from_millis(150));
    }
    committed_everywhere(&honest_ones, &accepted);
    drop(byzantine);
    let said: Vec<String> = honest.into_iter().map(Node::stop).collect();
    let all = said.join("\n");
    assert!(!all.contains("consensus stopped"), "{all}");
    for i in 1..=3 {
        let data = dir.join(format!("v{i}"));
        every_accepted_once_and_reexecuted(&data, &format!("v{i}"), &accepted);
    }
    all
}

/// A Byzantine validator (the test-only `byzantine` build, with
/// `UTTER_TEST_BAD_PUSH`) pushes each proposal with a byte of its pack
/// flipped. The honest validators refuse the push, pull the block from
/// it instead, and go on committing every transaction once.
#[test]
fn a_proposal_pushed_corrupt_is_refused_and_pulled_instead() {
    let all = three_honest_beside_a_byzantine("UTTER_TEST_BAD_PUSH", 8);
    assert!(
        all.contains("a push of block") && all.contains("is refused"),
        "no honest validator refused a corrupt push:\n{all}"
    );
}

/// A Byzantine validator (the test-only `byzantine` build, with
/// `UTTER_TEST_WRONG_VOTE_HEIGHT`) signs each vote it sends for the next
/// height, so a vote for its own proposal reaches the others before the
/// block does. Such a vote is not counted: the three honest validators
/// keep committing, and every certificate they write verifies (a counted
/// one would make the certificate unwritable and stop the node).
#[test]
fn votes_signed_for_the_wrong_height_are_not_counted_even_before_their_block() {
    // Its votes for its own blocks leave before them.
    let all = three_honest_beside_a_byzantine("UTTER_TEST_WRONG_VOTE_HEIGHT", 12);
    assert!(
        all.contains("not the block's") && all.contains(": not counted"),
        "no honest validator saw a vote for the wrong height:\n{all}"
    );
}

//! The executor through a fake [`Host`]: a real ledger (git, RocksDB) and
//! real checkouts, but the dapps are played in-process, so merges, nonces
//! and the rollback of a failed test dapp are checked without containers.
//!
//! The fake `counter` dapp counts `add {"name"}` per name in
//! `state/<name>` and rejects `refuse`; the fake test dapp `guard` fails
//! when any count reaches [`LIMIT`].

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use utter_chunkstore::{OpenOptions, Store};
use utter_ledger::key::Keypair;
use utter_ledger::layout::{ChainConfig, DappConfig};
use utter_ledger::tx::{SignedTx, Tx, VERSION};
use utter_ledger::{BlockId, Changes, Ledger, MAIN, Status};
use utter_runtime::dapp::{Entry, Invocation};
use utter_runtime::{Change, ChangeKind, Finished, HelperError, ImageProcess, Outcome, Ran};

use super::*;

const CHAIN: &str = "fake";
const T0: i64 = 1_790_000_000;
const LIMIT: u64 = 3;
const COUNTER_IMAGE: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const GUARD_IMAGE: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Plays `counter` and `guard` in-process; each run's results and changed
/// files go to a scratch directory of its own, as the helper's would.
struct FakeHost {
    scratch: tempfile::TempDir,
    runs: u64,
    released: u64,
    /// Invocations seen, as (dapp, entry).
    seen: Vec<(String, Entry)>,
    /// What each test run was told the block changed.
    told: Vec<Option<Vec<String>>>,
}

impl FakeHost {
    fn new() -> Self {
        Self {
            scratch: tempfile::tempdir().unwrap(),
            runs: 0,
            released: 0,
            seen: Vec::new(),
            told: Vec::new(),
        }
    }

    fn finished(code: i32, stderr: &str) -> Finished {
        Finished {
            outcome: Outcome::Exited(code),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
            elapsed: Duration::from_millis(1),
        }
    }

    fn counter(inv: &Invocation, upper: &Path) -> (Vec<String>, Vec<Change>) {
        let mut results = Vec::new();
        let mut changes = Vec::new();
        let mut counts = BTreeMap::new();
        for line in std::str::from_utf8(&inv.txs).unwrap().lines() {
            let stx: SignedTx = serde_json::from_str(line).unwrap();
            let result = match stx.tx.action.as_str() {
                "add" => {
                    let name = stx.tx.args["name"].as_str().unwrap().to_string();
                    let n = counts.get(&name).copied().unwrap_or_else(|| {
                        std::fs::read_to_string(inv.state.join(&name))
                            .map_or(0, |s| s.trim().parse::<u64>().unwrap())
                    }) + 1;
                    counts.insert(name, n);
                    json!({"status": "accepted", "output": n})
                }
                other => json!({"status": "rejected", "reason": format!("no {other}")}),
            };
            results.push(result.to_string());
        }
        for (name, n) in counts {
            std::fs::write(upper.join(&name), format!("{n}\n")).unwrap();
            changes.push(Change {
                path: name,
                kind: ChangeKind::File { executable: false },
            });
        }
        (results, changes)
    }

    fn guard(inv: &Invocation) -> Finished {
        let counter = inv.chain.as_ref().unwrap().join("counter");
        for entry in std::fs::read_dir(&counter).into_iter().flatten() {
            let entry = entry.unwrap();
            let n: u64 = std::fs::read_to_string(entry.path())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if n >= LIMIT {
                return Self::finished(1, &format!("{} reached {n}", entry.file_name().display()));
            }
        }
        Self::finished(0, "")
    }
}

impl Host for FakeHost {
    fn invoke(&mut self, inv: &Invocation) -> Result<Ran, HelperError> {
        self.runs += 1;
        let dir = self.scratch.path().join(self.runs.to_string());
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        let results = dir.join("results.jsonl");
        let dapp = inv.command[0].as_str();
        self.seen.push((dapp.to_string(), inv.context.entry));
        if inv.context.entry == Entry::Test {
            self.told.push(inv.changed.clone());
        }
        let (finished, lines, changes) = match (dapp, inv.context.entry) {
            ("counter", Entry::Apply) => {
                let (lines, changes) = Self::counter(inv, &upper);
                (Self::finished(0, ""), lines, changes)
            }
            ("guard", Entry::Test) => (Self::guard(inv), Vec::new(), Vec::new()),
            (_, entry) => (
                Self::finished(2, &format!("{dapp} has no {entry:?}")),
                Vec::new(),
                Vec::new(),
            ),
        };
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(&results, text).unwrap();
        Ok(Ran {
            id: self.runs,
            finished,
            results,
            upper,
            changes,
        })
    }

    fn release(&mut self, ran: Ran) {
        self.released += 1;
        let _ = std::fs::remove_dir_all(ran.upper.parent().unwrap());
    }
}

/// Each digest names a fake "rootfs" whose command is the dapp's name.
struct FakeImages;

impl Images for FakeImages {
    fn rootfs(&mut self, digest: &str) -> Result<(PathBuf, ImageProcess), ImageError> {
        let name = match digest {
            COUNTER_IMAGE => "counter",
            GUARD_IMAGE => "guard",
            _ => return Err(ImageError::Missing(format!("no image {digest}").into())),
        };
        Ok((
            PathBuf::from("/nonexistent-rootfs"),
            ImageProcess {
                command: vec![name.to_string()],
                default_args: Vec::new(),
                env: Vec::new(),
                cwd: "/".into(),
            },
        ))
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    key: Keypair,
    checkouts: PathBuf,
    nonce: std::cell::Cell<u64>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("db"),
            &OpenOptions {
                create: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let key = Keypair::generate("test").unwrap();
        let mut config = ChainConfig::single(CHAIN, "node", &key.public());
        config.test_dapps.push("guard".into());
        let mut changes = Changes::new();
        for (name, image) in [("counter", COUNTER_IMAGE), ("guard", GUARD_IMAGE)] {
            let dapp = DappConfig {
                image: image.into(),
                owners: vec![key.public().to_openssh()],
                permissions: Default::default(),
                deployed_at: None,
                upgraded_at: None,
            };
            changes.set_dapp(name, &dapp).unwrap();
        }
        let (mut ledger, _) = Ledger::create(
            &dir.path().join("ledger.git"),
            Arc::new(store),
            &config,
            changes,
            &key,
            T0,
        )
        .unwrap();
        ledger.set_durable(false);
        Self {
            checkouts: dir.path().join("checkouts"),
            _dir: dir,
            ledger,
            key,
            nonce: std::cell::Cell::new(0),
        }
    }

    fn line(&self, action: &str, name: &str) -> String {
        self.nonce.set(self.nonce.get() + 1);
        self.line_with_nonce(action, name, self.nonce.get())
    }

    fn line_with_nonce(&self, action: &str, name: &str, nonce: u64) -> String {
        Tx {
            v: VERSION,
            chain: CHAIN.into(),
            dapp: "counter".into(),
            action: action.into(),
            args: json!({ "name": name }),
            signer: self.key.public().to_openssh(),
            nonce,
            time: 1,
        }
        .sign(&self.key)
        .unwrap()
        .to_line()
    }

    /// Another executor (checkouts of its own) re-executes each block to
    /// exactly its tree.
    fn reexecutes(&self, host: &mut FakeHost, blocks: &[BlockId]) {
        let mut other =
            Executor::new(&self.ledger, &self.checkouts.with_extension("other")).unwrap();
        for id in blocks {
            let block = self.ledger.block(*id).unwrap();
            assert_eq!(
                other.reexecute(host, &mut FakeImages, &block).unwrap(),
                Verdict::Valid,
                "block {id}"
            );
        }
    }

    fn count(&self, block: BlockId, name: &str) -> Option<String> {
        let block = self.ledger.block(block).unwrap();
        self.ledger
            .read_value(&block, &format!("dapps/counter/state/{name}"))
            .unwrap()
            .map(|b| String::from_utf8(b).unwrap().trim().to_string())
    }
}

fn statuses(p: &Proposed) -> Vec<(Status, Option<String>)> {
    p.results
        .iter()
        .map(|r| (r.status, r.reason.clone()))
        .collect()
}

#[test]
fn one_run_per_dapp_and_nonces_in_block_order() {
    let f = Fixture::new();
    let (mut host, mut images) = (FakeHost::new(), FakeImages);
    let mut ex = Executor::new(&f.ledger, &f.checkouts).unwrap();
    let main = f.ledger.resolve(MAIN).unwrap();
    let a = f.line("add", "door");
    let b = f.line("add", "door");
    let again = f.line_with_nonce("add", "door", 2);
    let refuse = f.line("refuse", "door");
    let bad = a.replace("\"chain\":\"fake\"", "\"chain\":\"other\"");
    let lines = vec![a.clone(), b, again, refuse, bad.clone()];
    let p = ex
        .propose(&mut host, &mut images, main, &lines, T0 + 1, &f.key)
        .unwrap();
    assert_eq!(p.refused.len(), 1, "another chain's line is left out");
    assert_eq!(p.refused[0].line, bad);
    let s = statuses(&p);
    assert_eq!(s[0].0, Status::Accepted);
    assert_eq!(s[1].0, Status::Accepted);
    assert!(
        s[2].1
            .as_deref()
            .unwrap()
            .contains("nonce 2 was already used"),
        "{s:?}"
    );
    assert_eq!(s[3], (Status::Rejected, Some("no refuse".into())));
    assert_eq!(p.results[1].output, Some(json!(2)));
    assert_eq!(f.count(p.block.id, "door").as_deref(), Some("2"));
    // One apply of counter, one test of guard: not one run per transaction.
    assert_eq!(
        host.seen,
        vec![
            ("counter".into(), Entry::Apply),
            ("guard".into(), Entry::Test)
        ]
    );
    assert_eq!(host.released, host.runs, "every run's scratch is released");
    f.ledger.advance(MAIN, main, p.block.id).unwrap();

    // A later block: a nonce the line used is a replay, recorded as such.
    let replay = f.line_with_nonce("add", "door", 1);
    let next = f.line("add", "hall");
    let q = ex
        .propose(
            &mut host,
            &mut images,
            p.block.id,
            &[replay, next],
            T0 + 2,
            &f.key,
        )
        .unwrap();
    assert!(
        statuses(&q)[0]
            .1
            .as_deref()
            .unwrap()
            .contains("nonce 1 was already used")
    );
    assert_eq!(f.count(q.block.id, "door").as_deref(), Some("2"));
    assert_eq!(f.count(q.block.id, "hall").as_deref(), Some("1"));
    assert_eq!(
        ex.next_nonce(q.block.id, &f.key.public().to_openssh())
            .unwrap(),
        f.nonce.get() + 1
    );
    // Any node re-executes both blocks to exactly their trees.
    f.reexecutes(&mut host, &[p.block.id, q.block.id]);
}

#[test]
fn a_failing_test_dapp_rolls_the_whole_block_back() {
    let f = Fixture::new();
    let (mut host, mut images) = (FakeHost::new(), FakeImages);
    let mut ex = Executor::new(&f.ledger, &f.checkouts).unwrap();
    let main = f.ledger.resolve(MAIN).unwrap();
    let lines = vec![f.line("add", "tool"), f.line("add", "tool")];
    let p = ex
        .propose(&mut host, &mut images, main, &lines, T0 + 1, &f.key)
        .unwrap();
    assert_eq!(f.count(p.block.id, "tool").as_deref(), Some("2"));
    // The test dapp was told what the block changed, and only that.
    let told = host
        .told
        .last()
        .cloned()
        .flatten()
        .expect("told what changed");
    assert!(
        !told.is_empty() && told.iter().all(|p| p.ends_with("/tool")),
        "{told:?}"
    );

    // The third add would reach the limit: guard fails, so every accepted
    // transaction of the block is rejected and the state is the parent's.
    let lines = vec![f.line("add", "other"), f.line("add", "tool")];
    let q = ex
        .propose(&mut host, &mut images, p.block.id, &lines, T0 + 2, &f.key)
        .unwrap();
    for (status, reason) in statuses(&q) {
        assert_eq!(status, Status::Rejected);
        let reason = reason.unwrap();
        assert!(
            reason.contains("the block would break test dapp guard")
                && reason.contains("tool reached 3"),
            "{reason}"
        );
    }
    assert_eq!(f.count(q.block.id, "tool").as_deref(), Some("2"));
    assert_eq!(f.count(q.block.id, "other"), None);
    let (parent, block) = (
        f.ledger.block(p.block.id).unwrap(),
        f.ledger.block(q.block.id).unwrap(),
    );
    assert_eq!(
        f.ledger
            .diff_trees(Some(parent.tree), block.tree)
            .unwrap()
            .iter()
            .filter(|(path, _)| path.starts_with("dapps/"))
            .count(),
        0,
        "a rolled-back block changes no state"
    );
    // The checkout was rolled back too: the next block counts from 2, and
    // the nonces the rejected block used stay used.
    let next = f.line("add", "other");
    let r = ex
        .propose(&mut host, &mut images, q.block.id, &[next], T0 + 3, &f.key)
        .unwrap();
    assert_eq!(statuses(&r)[0].0, Status::Accepted);
    assert_eq!(f.count(r.block.id, "other").as_deref(), Some("1"));
    assert_eq!(f.count(r.block.id, "tool").as_deref(), Some("2"));
    f.reexecutes(&mut host, &[p.block.id, q.block.id, r.block.id]);
}

#[test]
fn a_merge_re_executes_the_other_branch_and_drops_nothing() {
    let f = Fixture::new();
    let (mut host, mut images) = (FakeHost::new(), FakeImages);
    let mut ex = Executor::new(&f.ledger, &f.checkouts).unwrap();
    let base = f.ledger.resolve(MAIN).unwrap();
    let shared = f.line("add", "x");
    let only_a = f.line("add", "a");
    let only_b = f.line("add", "b");
    // The same nonce as `only_b`, a different transaction, on branch a.
    let clash = f.line_with_nonce("add", "y", f.nonce.get());
    let a = ex
        .propose(
            &mut host,
            &mut images,
            base,
            &[shared.clone(), only_a, clash],
            T0 + 1,
            &f.key,
        )
        .unwrap();
    let b = ex
        .propose(
            &mut host,
            &mut images,
            base,
            &[shared.clone(), only_b.clone()],
            T0 + 1,
            &f.key,
        )
        .unwrap();
    let mut parents = vec![a.block.id, b.block.id];
    parents.sort();
    let merged = merge_lines(&f.ledger, &parents).unwrap();
    assert!(
        !merged.contains(&shared),
        "the shared line is not applied twice"
    );
    let later_branch = if parents[0] == a.block.id { 1 } else { 2 };
    assert_eq!(merged.len(), later_branch, "{merged:?}");
    let m = ex
        .propose_on(&mut host, &mut images, &parents, &[], None, T0 + 2, &f.key)
        .unwrap();
    assert_eq!(m.block.height, 2);
    assert_eq!(f.count(m.block.id, "x").as_deref(), Some("1"));
    assert_eq!(f.count(m.block.id, "a").as_deref(), Some("1"));
    // The later branch's lines run on the first's state; the one whose
    // nonce the first branch used for another transaction is recorded as
    // rejected, never dropped.
    let s = statuses(&m);
    if parents[0] == a.block.id {
        assert_eq!(m.results.len(), 1);
        assert_eq!(s[0].0, Status::Rejected, "{s:?}");
        assert!(s[0].1.as_deref().unwrap().contains("was already used"));
        assert_eq!(f.count(m.block.id, "y").as_deref(), Some("1"));
        assert_eq!(f.count(m.block.id, "b"), None);
    } else {
        assert_eq!(m.results.len(), 2);
        assert_eq!(s[0].0, Status::Accepted, "only_a applies on b: {s:?}");
        assert_eq!(s[1].0, Status::Rejected, "the clash: {s:?}");
        assert_eq!(f.count(m.block.id, "b").as_deref(), Some("1"));
        assert_eq!(f.count(m.block.id, "y"), None);
    }
    f.reexecutes(&mut host, &[a.block.id, b.block.id, m.block.id]);
    // Merging a block with its own ancestor, or parents out of order, is
    // refused with the reason.
    let mut on_one_line = [base, a.block.id];
    on_one_line.sort();
    let err = ex
        .propose_on(
            &mut host,
            &mut images,
            &on_one_line,
            &[],
            None,
            T0 + 3,
            &f.key,
        )
        .unwrap_err();
    assert!(
        matches!(err, ExecError::Merge(MergeError::OneLine(..))),
        "{err}"
    );
    let reversed = [parents[1], parents[0]];
    let err = ex
        .propose_on(&mut host, &mut images, &reversed, &[], None, T0 + 3, &f.key)
        .unwrap_err();
    assert!(
        matches!(err, ExecError::Merge(MergeError::Unsorted)),
        "{err}"
    );
}

#[test]
fn a_missing_image_rejects_its_dapps_transactions_with_the_reason() {
    struct NoImages;
    impl Images for NoImages {
        fn rootfs(&mut self, digest: &str) -> Result<(PathBuf, ImageProcess), ImageError> {
            Err(ImageError::Missing(format!("no image {digest}").into()))
        }
    }
    let f = Fixture::new();
    let mut host = FakeHost::new();
    let mut ex = Executor::new(&f.ledger, &f.checkouts).unwrap();
    let main = f.ledger.resolve(MAIN).unwrap();
    let line = f.line("add", "x");
    let p = ex
        .propose(&mut host, &mut NoImages, main, &[line], T0 + 1, &f.key)
        .unwrap();
    let reason = statuses(&p)[0].1.clone().unwrap();
    assert!(
        reason.contains("dapp counter's image sha256:1111")
            && reason.contains("is not available on this node")
            && reason.contains("import it with `utter image import`"),
        "{reason}"
    );
    assert_eq!(host.runs, 0, "nothing ran");
}

/// A `chain` transaction signed by `key`.
fn chain_line(key: &Keypair, nonce: u64, action: &str, args: serde_json::Value) -> String {
    Tx {
        v: VERSION,
        chain: CHAIN.into(),
        dapp: CHAIN_DAPP.into(),
        action: action.into(),
        args,
        signer: key.public().to_openssh(),
        nonce,
        time: 1,
    }
    .sign(key)
    .unwrap()
    .to_line()
}

#[test]
fn deploys_and_removals_follow_the_chain_rules_and_re_execute_alike() {
    let f = Fixture::new();
    let (mut host, mut images) = (FakeHost::new(), FakeImages);
    let mut ex = Executor::new(&f.ledger, &f.checkouts).unwrap();
    let main = f.ledger.resolve(MAIN).unwrap();
    let stranger = Keypair::generate("stranger").unwrap();
    f.nonce.set(f.nonce.get() + 3);
    let n = f.nonce.get();
    let deploy = chain_line(
        &f.key,
        n - 2,
        "deploy",
        json!({"name": "tally", "image": COUNTER_IMAGE}),
    );
    let by_stranger = chain_line(
        &stranger,
        1,
        "deploy",
        json!({"name": "mine", "image": COUNTER_IMAGE}),
    );
    let missing = format!("sha256:{}", "9".repeat(64));
    let no_image = chain_line(
        &f.key,
        n - 1,
        "deploy",
        json!({"name": "ghost", "image": missing}),
    );
    let remove = chain_line(&f.key, n, "remove", json!({"name": "counter"}));
    let add = f.line("add", "door");
    let lines = vec![deploy, by_stranger, no_image.clone(), remove, add];
    let p = ex
        .propose(&mut host, &mut images, main, &lines, T0 + 1, &f.key)
        .unwrap();
    // The image nobody has is left out, to wait; the rest are judged.
    assert_eq!(p.refused.len(), 1);
    assert_eq!(p.refused[0].line, no_image);
    assert!(
        p.refused[0]
            .error
            .to_string()
            .contains("is not on this node"),
        "{}",
        p.refused[0].error
    );
    let s = statuses(&p);
    assert_eq!(s[0].0, Status::Accepted, "{s:?}");
    assert!(
        s[1].1.as_deref().unwrap().contains("may not deploy"),
        "{s:?}"
    );
    assert_eq!(s[2].0, Status::Accepted, "{s:?}");
    assert!(
        s[3].1.as_deref().unwrap().contains("removed by this block"),
        "{s:?}"
    );
    let block = f.ledger.block(p.block.id).unwrap();
    let toml = f
        .ledger
        .read_value(&block, "dapps/tally/dapp.toml")
        .unwrap()
        .unwrap();
    let tally = DappConfig::parse("tally", &toml).unwrap();
    assert_eq!(tally.deployed_at, Some(1));
    assert_eq!(tally.owners, vec![f.key.public().to_openssh()]);
    assert!(
        f.ledger
            .read_value(&block, "dapps/counter/dapp.toml")
            .unwrap()
            .is_none()
    );
    f.reexecutes(&mut host, &[p.block.id]);
    // A node without the deployed image cannot accept the block.
    struct OnlyGuard;
    impl Images for OnlyGuard {
        fn rootfs(&mut self, digest: &str) -> Result<(PathBuf, ImageProcess), ImageError> {
            if digest == GUARD_IMAGE {
                FakeImages.rootfs(digest)
            } else {
                Err(ImageError::Missing(format!("no image {digest}").into()))
            }
        }
    }
    let mut other = Executor::new(&f.ledger, &f.checkouts.with_extension("lacking")).unwrap();
    let verdict = other
        .reexecute(
            &mut host,
            &mut OnlyGuard,
            &f.ledger.block(p.block.id).unwrap(),
        )
        .unwrap();
    assert!(
        matches!(&verdict, Verdict::Invalid(why) if why.contains("is not on this node")),
        "{verdict:?}"
    );
    f.ledger.advance(MAIN, main, p.block.id).unwrap();

    // The deployed dapp takes transactions from the next block on.
    let stx: SignedTx = serde_json::from_str(&f.line("add", "hall")).unwrap();
    let line = Tx {
        dapp: "tally".into(),
        ..stx.tx
    }
    .sign(&f.key)
    .unwrap()
    .to_line();
    let q = ex
        .propose(&mut host, &mut images, p.block.id, &[line], T0 + 2, &f.key)
        .unwrap();
    assert_eq!(statuses(&q)[0].0, Status::Accepted, "{:?}", statuses(&q));
    f.reexecutes(&mut host, &[q.block.id]);
}

#[test]
fn malformed_chain_actions_are_rejected_with_what_to_send() {
    let f = Fixture::new();
    let (mut host, mut images) = (FakeHost::new(), FakeImages);
    let mut ex = Executor::new(&f.ledger, &f.checkouts).unwrap();
    let main = f.ledger.resolve(MAIN).unwrap();
    let cases = [
        ("deploy", json!({"name": "x"}), "chain deploy takes"),
        (
            "deploy",
            json!({"name": "x", "image": COUNTER_IMAGE, "extra": 1}),
            "unknown field",
        ),
        (
            "deploy",
            json!({"name": "chain", "image": COUNTER_IMAGE}),
            "reserved",
        ),
        (
            "deploy",
            json!({"name": "Bad Name", "image": COUNTER_IMAGE}),
            "is not allowed",
        ),
        (
            "deploy",
            json!({"name": "x", "image": "counter:latest"}),
            "not an image digest",
        ),
        (
            "deploy",
            json!({"name": "x", "image": COUNTER_IMAGE, "owners": ["nobody"]}),
            "not an ssh-ed25519 public key",
        ),
        (
            "deploy",
            json!({"name": "x", "image": COUNTER_IMAGE, "permissions": [1]}),
            "chain deploy takes",
        ),
        (
            "upgrade",
            json!({"name": "ghost", "image": COUNTER_IMAGE}),
            "no dapp \"ghost\"",
        ),
        (
            "upgrade",
            json!({"name": "counter", "image": COUNTER_IMAGE}),
            "already runs",
        ),
        ("remove", json!({}), "chain remove takes"),
        ("rename", json!({}), "not \"rename\""),
    ];
    let lines: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (action, args, _))| chain_line(&f.key, i as u64 + 1, action, args.clone()))
        .collect();
    let p = ex
        .propose(&mut host, &mut images, main, &lines, T0 + 1, &f.key)
        .unwrap();
    assert!(p.refused.is_empty(), "{:?}", p.refused);
    for ((action, _, why), (status, reason)) in cases.iter().zip(statuses(&p)) {
        assert_eq!(status, Status::Rejected, "{action}");
        let reason = reason.unwrap();
        assert!(
            reason.contains(why),
            "{action}: {reason:?} should say {why:?}"
        );
    }
    // Nothing changed but the block's own record.
    let block = f.ledger.block(p.block.id).unwrap();
    let parent = f.ledger.block(main).unwrap();
    let changed: Vec<String> = f
        .ledger
        .diff_trees(Some(parent.tree), block.tree)
        .unwrap()
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| !path.starts_with("block/"))
        .collect();
    assert!(changed.is_empty(), "{changed:?}");
}

#[test]
fn a_test_dapp_is_told_the_paths_a_block_changed() {
    use utter_ledger::layout::StatePath;
    let mut c = Changes::new();
    c.state(
        "doors",
        &StatePath::new("log/front.jsonl").unwrap(),
        utter_ledger::Change::Put(b"x".to_vec()),
    )
    .unwrap();
    c.remove_dapp("old").unwrap();
    assert_eq!(
        changed_paths(&c),
        Some(vec![
            "doors/log/front.jsonl".to_string(),
            "old/".to_string()
        ])
    );
    let key = Keypair::generate("v").unwrap();
    c.set_chain(&ChainConfig::single("c", "v", &key.public()))
        .unwrap();
    assert_eq!(changed_paths(&c), None, "new chain rules: check everything");
}

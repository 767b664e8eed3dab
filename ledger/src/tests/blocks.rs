//! Blocks, state and the DAG, with `git` as the oracle.

use super::{CHAIN, Fixture, T0, dapp_config, git, with_stdin};
use crate::block::{self, BlockId};
use crate::layout::StatePath;
use crate::pointer::Pointer;
use crate::{Change, Changes, Draft, INLINE_MAX, Ledger, TxResult};

fn path(p: &str) -> StatePath {
    StatePath::new(p).unwrap()
}

/// genesis → b1 (dapps, 2 txs) → b2 (large value) on main; b1 → d1 on a
/// device branch; m merges b2 and d1.
struct Dag {
    f: Fixture,
    b1: BlockId,
    b2: BlockId,
    d1: BlockId,
    m: BlockId,
}

fn dag() -> Dag {
    let f = Fixture::new();
    let mut c = Changes::new();
    c.set_dapp("doors", &dapp_config()).unwrap();
    c.set_dapp("members", &dapp_config()).unwrap();
    c.state(
        "doors",
        &path("front/schedule"),
        Change::Put(b"always".to_vec()),
    )
    .unwrap();
    c.state(
        "members",
        &path("alice"),
        Change::Put(b"{\"roles\":[]}".to_vec()),
    )
    .unwrap();
    let b1 = f.block(&[f.genesis.id], c, vec![f.tx(&f.key, 1), f.tx(&f.key, 2)]);

    let mut c = Changes::new();
    let large: Vec<u8> = (0..INLINE_MAX as u32 * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    c.state("doors", &path("front/photo.jpg"), Change::Put(large))
        .unwrap();
    let b2 = f.block(&[b1.id], c, vec![f.tx(&f.key, 3)]);

    let mut c = Changes::new();
    c.state(
        "doors",
        &path("front/log/1"),
        Change::Put(b"granted".to_vec()),
    )
    .unwrap();
    let d1 = f.block_by(&f.device, &[b1.id], c, vec![f.tx(&f.device, 1)]);
    f.ledger.create_branch("front-door", d1.id).unwrap();

    let mut c = Changes::new();
    c.state(
        "doors",
        &path("front/log/1"),
        Change::Put(b"granted".to_vec()),
    )
    .unwrap();
    let m = f.block(&[b2.id, d1.id], c, vec![f.tx(&f.device, 1)]);
    f.ledger.advance("main", f.genesis.id, m.id).unwrap();
    Dag {
        b1: b1.id,
        b2: b2.id,
        d1: d1.id,
        m: m.id,
        f,
    }
}

#[test]
fn git_fsck_strict_and_git_verify_commit_accept_every_block() {
    let d = dag();
    let repo = d.f.repo_path();
    let fsck = git(&repo)
        .args(["fsck", "--strict", "--no-dangling", "--full"])
        .output()
        .expect("git is installed");
    let out =
        String::from_utf8_lossy(&fsck.stderr).to_string() + &String::from_utf8_lossy(&fsck.stdout);
    assert!(fsck.status.success(), "git fsck --strict failed:\n{out}");
    assert!(
        !out.contains("warning") && !out.contains("error"),
        "git fsck --strict complained:\n{out}"
    );

    let signers = d.f.dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        format!(
            "{}\n{}\n",
            d.f.key.public().allowed_signers_line("node-1", &["git"]),
            d.f.device
                .public()
                .allowed_signers_line("front-door", &["git"])
        ),
    )
    .unwrap();
    let blocks = [d.f.genesis.id, d.b1, d.b2, d.d1, d.m];
    for id in blocks {
        let out = git(&repo)
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", signers.display()))
            .args(["verify-commit", "-v", &id.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git verify-commit refused {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("Good \"git\" signature"), "{said}");
    }

    // And git walks the same DAG: parents, merge, heights.
    let log = git(&repo)
        .args(["log", "--format=%H %P", "main"])
        .output()
        .unwrap();
    let log = String::from_utf8(log.stdout).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(
        log.starts_with(&format!("{} {} {}", d.m, d.b2, d.d1)),
        "{log}"
    );
    let rev = git(&repo).args(["rev-parse", "HEAD"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&rev.stdout).trim(), d.m.to_string());
}

#[test]
fn a_block_is_byte_for_byte_what_git_commit_s_makes() {
    let d = dag();
    let repo = d.f.repo_path();
    let keyfile = d.f.dir.path().join("signing_key");
    d.f.key.save(&keyfile).unwrap();
    for id in [d.f.genesis.id, d.b1, d.m] {
        let b = d.f.ledger.block(id).unwrap();
        let message = block::message(&b.summary, b.height, CHAIN);
        let date = format!("@{} +0000", b.time);
        let email = d.f.key.public().fingerprint();
        let mut cmd = git(&repo);
        cmd.args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", keyfile.display()))
            .args(["commit-tree", "-S", &b.tree.to_string()]);
        for p in &b.parents {
            cmd.args(["-p", &p.to_string()]);
        }
        cmd.args(["-F", "-"])
            .env("GIT_AUTHOR_NAME", "utter")
            .env("GIT_AUTHOR_EMAIL", &email)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_NAME", "utter")
            .env("GIT_COMMITTER_EMAIL", &email)
            .env("GIT_COMMITTER_DATE", &date);
        let out = with_stdin(&mut cmd, message.as_bytes());
        assert!(
            out.status.success(),
            "git commit-tree -S: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            id.to_string(),
            "git commit -S made a different commit than utter for block {}",
            b.height
        );
    }
}

#[test]
fn state_reads_resolve_pointers_and_unchanged_subtrees_are_shared() {
    let d = dag();
    let l = &d.f.ledger;
    let b1 = l.block(d.b1).unwrap();
    let b2 = l.block(d.b2).unwrap();
    assert_eq!(
        l.read_state(&b1, "doors", &path("front/schedule")).unwrap(),
        Some(b"always".to_vec())
    );
    assert_eq!(l.read_state(&b1, "doors", &path("nope")).unwrap(), None);

    // The large value reads back whole, though git holds only a pointer.
    let photo = l
        .read_state(&b2, "doors", &path("front/photo.jpg"))
        .unwrap()
        .unwrap();
    assert_eq!(photo.len(), INLINE_MAX * 3);
    assert!(
        photo
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u32 * 7 % 251) as u8)
    );
    let raw = git(&d.f.repo_path())
        .args([
            "cat-file",
            "-p",
            &format!("{}:dapps/doors/state/front/photo.jpg", d.b2),
        ])
        .output()
        .unwrap();
    let pointer = Pointer::decode(&raw.stdout).expect("git holds a pointer blob");
    assert_eq!(pointer.size, photo.len() as u64);
    assert!(l.chunks().has_manifest(&pointer.manifest).unwrap());

    // `members` did not change in b2: its subtree is the same object.
    let subtree = |b: BlockId, p: &str| {
        let out = git(&d.f.repo_path())
            .args(["rev-parse", &format!("{b}:{p}")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        subtree(d.b1, "dapps/members"),
        subtree(d.b2, "dapps/members")
    );
    assert_ne!(subtree(d.b1, "dapps/doors"), subtree(d.b2, "dapps/doors"));

    // A small value that happens to read as a pointer is stored behind a
    // real pointer, so it reads back as itself.
    let lookalike = Pointer {
        manifest: pointer.manifest,
        size: 1,
    }
    .encode();
    let mut c = Changes::new();
    c.state("doors", &path("tricky"), Change::Put(lookalike.clone()))
        .unwrap();
    c.state("doors", &path("front/schedule"), Change::Remove)
        .unwrap();
    let b3 = d.f.block(&[d.m], c, vec![]);
    assert_eq!(
        l.read_state(&b3, "doors", &path("tricky")).unwrap(),
        Some(lookalike)
    );
    assert_eq!(
        l.read_state(&b3, "doors", &path("front/schedule")).unwrap(),
        None
    );
    let names: Vec<String> = l
        .list(&b3, "dapps/doors/state")
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["front", "tricky"]);
    assert_eq!(l.tx_lines(&b3).unwrap().len(), 0);
    assert_eq!(l.tx_lines(&b2).unwrap().len(), 1);
    assert_eq!(l.chain_config(&b3).unwrap().chain, CHAIN);
}

#[test]
fn dag_queries() {
    let d = dag();
    let l = &d.f.ledger;
    let g = d.f.genesis.id;
    assert_eq!(
        [g, d.b1, d.b2, d.d1, d.m].map(|id| l.height(id).unwrap()),
        [0, 1, 2, 2, 3]
    );
    assert!(l.is_ancestor(g, d.m).unwrap());
    assert!(l.is_ancestor(d.d1, d.m).unwrap());
    assert!(l.is_ancestor(d.m, d.m).unwrap());
    assert!(!l.is_ancestor(d.b2, d.d1).unwrap());
    assert!(!l.is_ancestor(d.m, d.b1).unwrap());
    assert_eq!(l.merge_bases(d.b2, d.d1).unwrap(), [d.b1]);
    assert_eq!(l.merge_bases(d.m, d.d1).unwrap(), [d.d1]);
    assert_eq!(l.merge_bases(g, d.m).unwrap(), [g]);
    let mut via = [d.b2, d.d1];
    via.sort_by_key(|id| (l.height(*id).unwrap(), *id));
    assert_eq!(
        l.ancestry_path(d.b1, d.m).unwrap().unwrap(),
        [via[0], via[1], d.m]
    );
    assert_eq!(l.ancestry_path(d.b2, d.m).unwrap().unwrap(), [d.m]);
    assert_eq!(l.ancestry_path(d.b2, d.d1).unwrap(), None);
    assert_eq!(
        l.branches().unwrap(),
        [("front-door".to_string(), d.d1), ("main".to_string(), d.m)]
    );
    assert_eq!(l.resolve("main").unwrap(), d.m);
    assert_eq!(l.resolve(&d.b1.to_string()[..10]).unwrap(), d.b1);
    assert!(l.resolve("nothing").is_err());

    // Criss-cross: two merges of the same pair have two best bases.
    let x = d.f.block(&[d.b2, d.d1], Changes::new(), vec![]);
    let y = d.f.block(&[d.d1, d.b2], Changes::new(), vec![]);
    let mut expect = vec![d.b2, d.d1];
    expect.sort();
    assert_eq!(l.merge_bases(x.id, y.id).unwrap(), expect);
}

#[test]
fn only_in_matches_git_rev_list_not() {
    let d = dag();
    let l = &d.f.ledger;
    let g = d.f.genesis.id;
    // A longer side: three more blocks on b2, a criss-cross, a merge.
    let c1 = d.f.block(&[d.b2], Changes::new(), vec![]);
    let c2 = d.f.block(&[c1.id], Changes::new(), vec![]);
    let x = d.f.block(&[c2.id, d.d1], Changes::new(), vec![]);
    let y = d.f.block(&[d.m, c1.id], Changes::new(), vec![]);
    let all = [g, d.b1, d.b2, d.d1, d.m, c1.id, c2.id, x.id, y.id];
    let rev_list = |include: &[BlockId], exclude: &[BlockId]| {
        let mut args = vec!["rev-list".to_string()];
        args.extend(include.iter().map(|b| b.to_string()));
        args.push("--not".into());
        args.extend(exclude.iter().map(|b| b.to_string()));
        let out = git(&d.f.repo_path()).args(&args).output().unwrap();
        assert!(out.status.success());
        let mut ids: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        ids.sort();
        ids
    };
    for a in all {
        for b in all {
            for exclude in [vec![b], vec![b, d.d1], vec![]] {
                let got = l.only_in(&[a], &exclude).unwrap();
                // Parents before children.
                for (i, id) in got.iter().enumerate() {
                    for p in &l.block(*id).unwrap().parents {
                        if let Some(j) = got.iter().position(|x| x == p) {
                            assert!(j < i, "{p} listed after its child {id}");
                        }
                    }
                }
                let mut got: Vec<String> = got.iter().map(|b| b.to_string()).collect();
                got.sort();
                assert_eq!(got, rev_list(&[a], &exclude), "{a} --not {exclude:?}");
            }
        }
    }
    let got = l.only_in(&[x.id, y.id], &[d.b1]).unwrap();
    assert_eq!(got.len(), rev_list(&[x.id, y.id], &[d.b1]).len());
}

#[test]
fn branches_only_move_forward() {
    let d = dag();
    let l = &d.f.ledger;
    let err = l.advance("main", d.m, d.b1).unwrap_err().to_string();
    assert!(err.contains("does not descend"), "{err}");
    let err = l.advance("main", d.b1, d.m).unwrap_err().to_string();
    assert!(err.contains("moved since"), "{err}");
    assert!(l.create_branch("main", d.b1).is_err());
    assert_eq!(l.branch("main").unwrap(), Some(d.m));
}

#[test]
fn verify_accepts_a_valid_dag_and_reopen_keeps_it() {
    let d = dag();
    let report = d.f.ledger.verify(None, false, |_, _| {}).unwrap();
    assert_eq!(report.blocks.len(), 5);
    assert!(report.first_bad().is_none(), "{:?}", report.first_bad());
    assert_eq!(report.txs(), 2 + 1 + 1 + 1);
    let heights: Vec<u64> = report.blocks.iter().map(|b| b.height).collect();
    assert_eq!(heights, [0, 1, 2, 2, 3]);
    let signers: Vec<&str> = report
        .blocks
        .iter()
        .map(|b| b.signer.as_deref().unwrap())
        .collect();
    assert!(signers.contains(&"front-door") && signers.contains(&"node-1"));

    let chunks = d.f.ledger.chunks().clone();
    let path = d.f.repo_path();
    let again = Ledger::open(&path, chunks).unwrap();
    assert_eq!(again.chain(), CHAIN);
    assert_eq!(again.genesis(), d.f.genesis.id);
    assert_eq!(again.branch("main").unwrap(), Some(d.m));
}

#[test]
fn durable_writes_sync_and_a_second_create_is_refused() {
    let f = Fixture::new();
    let mut ledger = Ledger::open(&f.repo_path(), f.ledger.chunks().clone()).unwrap();
    ledger.set_durable(true);
    let b = ledger
        .write_block(
            &Draft {
                parents: vec![f.genesis.id],
                changes: Changes::new(),
                txs: vec![f.tx(&f.key, 1).to_line()],
                results: vec![TxResult::accepted(f.tx(&f.key, 1).id())],
                text: "durable".into(),
                time: T0 + 1,
                round: None,
            },
            &f.key,
        )
        .unwrap();
    ledger.advance("main", f.genesis.id, b.id).unwrap();
    assert_eq!(ledger.branch("main").unwrap(), Some(b.id));
    let config = ledger.chain_config(&b).unwrap();
    let err = Ledger::create(
        &f.repo_path(),
        ledger.chunks().clone(),
        &config,
        Changes::new(),
        &f.key,
        T0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already holds a ledger"), "{err}");
}

#[test]
fn a_lock_left_by_a_killed_writer_is_cleared_and_main_moves_again() {
    let f = Fixture::new();
    let ledger = Ledger::open(&f.repo_path(), f.ledger.chunks().clone()).unwrap();
    let b = ledger
        .write_block(
            &Draft {
                parents: vec![f.genesis.id],
                changes: Changes::new(),
                txs: vec![f.tx(&f.key, 1).to_line()],
                results: vec![TxResult::accepted(f.tx(&f.key, 1).id())],
                text: "after a crash".into(),
                time: T0 + 1,
                round: None,
            },
            &f.key,
        )
        .unwrap();
    // What a writer killed between taking the lock and renaming it leaves.
    let lock = f.repo_path().join("refs/heads/main.lock");
    std::fs::write(&lock, "").unwrap();
    std::fs::create_dir_all(f.repo_path().join("refs/notes")).unwrap();
    std::fs::write(f.repo_path().join("refs/notes/x.lock"), "").unwrap();
    // And a pack write cut short: a temporary file no reader looks at.
    let half = f.repo_path().join("objects/pack/pack-0123.pack.tmp");
    std::fs::write(&half, "PACK").unwrap();
    let err = ledger.advance("main", f.genesis.id, b.id).unwrap_err();
    assert!(err.to_string().contains("main"), "{err}");
    assert_eq!(ledger.clear_stale_locks().unwrap(), 3);
    assert!(!lock.exists());
    assert!(!half.exists());
    assert!(
        f.repo_path()
            .join("objects/pack")
            .read_dir()
            .unwrap()
            .count()
            > 0,
        "only the temporary file went"
    );
    ledger.advance("main", f.genesis.id, b.id).unwrap();
    assert_eq!(ledger.branch("main").unwrap(), Some(b.id));
    assert_eq!(ledger.clear_stale_locks().unwrap(), 0);
}

#[test]
fn drafts_that_cannot_be_blocks_are_refused() {
    let f = Fixture::new();
    let draft = |text: &str, results: Vec<TxResult>| Draft {
        parents: vec![f.genesis.id],
        changes: Changes::new(),
        txs: vec![f.tx(&f.key, 1).to_line()],
        results,
        text: text.into(),
        time: T0,
        round: None,
    };
    let ok = vec![TxResult::accepted(f.tx(&f.key, 1).id())];
    for (d, why) in [
        (draft("x", vec![]), "1 transactions but 0 results"),
        (draft("", ok.clone()), "summary"),
        (draft("two\n", ok.clone()), "summary"),
    ] {
        let err = f.ledger.write_block(&d, &f.key).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let mut c = Changes::new();
    let missing = Pointer {
        manifest: utter_chunkstore::ManifestId::of(b"never stored"),
        size: 5,
    };
    c.state("doors", &path("x"), Change::Pointer(missing))
        .unwrap();
    let mut d = draft("x", ok);
    d.changes = c;
    let err = f.ledger.write_block(&d, &f.key).unwrap_err().to_string();
    assert!(err.contains("not in the chunk store"), "{err}");
    assert!(StatePath::new("a/../b").is_err());
    assert!(StatePath::new(".git/config").is_err());
    assert!(StatePath::new("x/.GIT").is_err());
    assert!(StatePath::new("/abs").is_err());
    assert!(StatePath::new("ok/fine.txt").is_ok());
}

/// `git fsck --strict --full` of the repository passes.
fn fsck_full(repo: &std::path::Path) {
    let fsck = git(repo)
        .args(["fsck", "--strict", "--no-dangling", "--full"])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// The packs of a repository (their `.idx` files) and the loose objects.
fn packs_and_loose(repo: &std::path::Path) -> (usize, usize, usize) {
    let names: Vec<_> = std::fs::read_dir(repo.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let count = |ext: &str| {
        names
            .iter()
            .filter(|p| p.extension() == Some(ext.as_ref()))
            .count()
    };
    let out = git(repo).args(["count-objects", "-v"]).output().unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let loose = out
        .lines()
        .find_map(|l| l.strip_prefix("count: "))
        .unwrap()
        .parse()
        .unwrap();
    (count("idx"), count("keep"), loose)
}

#[test]
fn blocks_go_to_disk_as_packs_git_reads_and_packs_merge_by_tier() {
    let d = dag();
    let repo = d.f.repo_path();
    let (packs, keeps, loose) = packs_and_loose(&repo);
    assert_eq!(loose, 0, "no block leaves loose objects");
    assert_eq!(keeps, 0, "no .keep file: git gc may repack our packs");
    assert!(packs >= 5, "a pack per block: {packs}");
    fsck_full(&repo);
    // Many blocks: their packs merge, so their number stays bounded, and
    // every block reads back, here and in a ledger opened afresh (its
    // object cache cold, its pack list read from disk).
    let mut tip = d.m;
    let mut most = 0;
    for i in 0..3 * crate::pack::PACKS_PER_TIER {
        let mut c = Changes::new();
        c.state(
            "doors",
            &path(&format!("front/log/n{i}")),
            Change::Put(format!("entry {i}").into_bytes()),
        )
        .unwrap();
        tip =
            d.f.ledger
                .write_block(
                    &Draft {
                        parents: vec![tip],
                        changes: c,
                        txs: vec![],
                        results: vec![],
                        text: format!("log {i}"),
                        time: T0 + 10 + i as i64,
                        round: None,
                    },
                    &d.f.key,
                )
                .unwrap()
                .id;
        most = most.max(packs_and_loose(&repo).0);
    }
    assert!(
        most < 2 * crate::pack::PACKS_PER_TIER,
        "packs merge by tier: at most {most} at once"
    );
    d.f.ledger.create_branch("packed", tip).unwrap();
    let fresh = Ledger::open(&repo, d.f.ledger.chunks().clone()).unwrap();
    for l in [&d.f.ledger, &fresh] {
        let report = l.verify(None, true, |_, _| {}).unwrap();
        assert_eq!(report.blocks.len(), 5 + 3 * crate::pack::PACKS_PER_TIER);
        assert!(report.first_bad().is_none(), "{:?}", report.first_bad());
        let tip = l.block(tip).unwrap();
        assert_eq!(
            l.read_state(&tip, "doors", &path("front/log/n0"))
                .unwrap()
                .as_deref(),
            Some(&b"entry 0"[..])
        );
    }
    fsck_full(&repo);
    // git's own check of every pack and index the ledger wrote.
    for entry in std::fs::read_dir(repo.join("objects/pack")).unwrap() {
        let index = entry.unwrap().path();
        if index.extension() != Some("idx".as_ref()) {
            continue;
        }
        let out = git(&repo).arg("verify-pack").arg(&index).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            index.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The fresh ledger writes on from objects only merged packs hold.
    let mut c = Changes::new();
    c.state("doors", &path("front/again"), Change::Put(b"new".to_vec()))
        .unwrap();
    let b = fresh
        .write_block(
            &Draft {
                parents: vec![tip],
                changes: c,
                txs: vec![],
                results: vec![],
                text: "from a fresh ledger".into(),
                time: T0 + 100,
                round: None,
            },
            &d.f.key,
        )
        .unwrap();
    assert_eq!(
        fresh
            .read_state(&b, "doors", &path("front/schedule"))
            .unwrap()
            .as_deref(),
        Some(&b"always"[..])
    );
    assert!(
        d.f.ledger.block(b.id).is_ok(),
        "the first ledger sees the new pack"
    );
}

/// A second `Ledger` on the repository (as a node's pull thread or API
/// holds one) reads every third block as it is written, over enough blocks that
/// gix reuses its index slots (64 in tests) while packs merge and go.
#[test]
fn another_ledger_reads_every_block_while_packs_merge_and_go() {
    let f = Fixture::new();
    let reader = Ledger::open(&f.repo_path(), f.ledger.chunks().clone()).unwrap();
    let mut tip = f.genesis.id;
    for i in 0..600 {
        let mut c = Changes::new();
        if i == 0 {
            c.set_dapp("doors", &dapp_config()).unwrap();
        }
        for a in 0..10 {
            c.state(
                "doors",
                &path(&format!("acct/m{}", (i * 10 + a) % 97)),
                Change::Put(format!("{i} {a}").into_bytes()),
            )
            .unwrap();
        }
        let draft = Draft {
            parents: vec![tip],
            changes: c,
            txs: vec![],
            results: vec![],
            text: format!("block {i}"),
            time: T0 + i as i64,
            round: None,
        };
        let block = f
            .ledger
            .write_block(&draft, &f.key)
            .unwrap_or_else(|e| panic!("writing block {i}: {e}"));
        tip = block.id;
        if i % 3 != 0 {
            continue; // a reader looks now and then, not at every block
        }
        let seen = reader
            .block(tip)
            .unwrap_or_else(|e| panic!("the reader at block {i}: {e}"));
        let value = reader
            .read_state(
                &seen,
                "doors",
                &path(&format!("acct/m{}", (i * 10 + 9) % 97)),
            )
            .unwrap_or_else(|e| panic!("the reader's state at block {i}: {e}"));
        assert_eq!(value.as_deref(), Some(format!("{i} 9").as_bytes()));
    }
}

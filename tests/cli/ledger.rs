//! `utter init/log/show/verify`, with `git` and `ssh-keygen` as oracles.

use std::sync::Arc;

use utter_chunkstore::{OpenOptions, Store};
use utter_ledger::key::Keypair;
use utter_ledger::layout::StatePath;
use utter_ledger::tx::{SignedTx, Tx};
use utter_ledger::{BlockId, Change, Changes, Draft, Ledger, TxResult};

use super::*;

fn git(repo: &Path) -> Command {
    // Commits made here are dated a minute on, after the blocks `grow`
    // dates a few seconds after genesis (chain time never goes back).
    let date = format!("{} +0000", utter_formats::now() + 60);
    let mut c = Command::new("git");
    c.arg("--git-dir")
        .arg(repo)
        .env("GIT_COMMITTER_DATE", &date)
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo)
        .env("GIT_AUTHOR_NAME", "someone")
        .env("GIT_AUTHOR_EMAIL", "someone@example.org")
        .env("GIT_COMMITTER_NAME", "someone")
        .env("GIT_COMMITTER_EMAIL", "someone@example.org");
    c
}

fn ssh_keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tx(key: &Keypair, nonce: u64) -> SignedTx {
    Tx {
        v: 1,
        chain: "makerspace".into(),
        dapp: "doors".into(),
        action: "access".into(),
        args: serde_json::json!({"door": "front"}),
        signer: key.public().to_openssh(),
        nonce,
        time: 1_790_000_000,
    }
    .sign(key)
    .unwrap()
}

/// Adds blocks with the library (the CLI to submit transactions comes with
/// the node): main gets two blocks, branch `door` one, then main merges it.
fn grow(data: &Path, key: &Keypair) -> Vec<BlockId> {
    let chunks = Arc::new(Store::open(data.join("db"), &OpenOptions::default()).unwrap());
    let ledger = Ledger::open(&data.join("ledger.git"), chunks).unwrap();
    let genesis = ledger.genesis();
    // Chain time never goes back: after genesis (made now).
    let t0 = ledger.block(genesis).unwrap().time;
    let write = |parents: Vec<BlockId>, text: &str, nonce: u64, file: &str| {
        let t = tx(key, nonce);
        let mut changes = Changes::new();
        changes
            .set_dapp(
                "doors",
                &utter_ledger::layout::DappConfig {
                    image: format!("sha256:{}", "cd".repeat(32)),
                    owners: vec![],
                    permissions: Default::default(),
                    deployed_at: None,
                    upgraded_at: None,
                },
            )
            .unwrap();
        changes
            .state(
                "doors",
                &StatePath::new(file).unwrap(),
                Change::Put(text.as_bytes().to_vec()),
            )
            .unwrap();
        ledger
            .write_block(
                &Draft {
                    parents,
                    changes,
                    results: vec![TxResult::accepted(t.id())],
                    txs: vec![t.to_line()],
                    text: text.into(),
                    time: t0 + nonce as i64,
                    round: None,
                },
                key,
            )
            .unwrap()
            .id
    };
    let b1 = write(vec![genesis], "first", 1, "log/1");
    let b2 = write(vec![b1], "second", 2, "log/2");
    let d1 = write(vec![b1], "offline door event", 3, "log/door");
    ledger.create_branch("door", d1).unwrap();
    let m = write(vec![b2, d1], "merge door", 4, "log/merged");
    ledger.advance("main", genesis, m).unwrap();
    vec![genesis, b1, b2, d1, m]
}

#[test]
fn init_log_show_verify_transcript() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let my_key = tmp.path().join("id_ed25519");
    ssh_keygen(&my_key);

    // $ utter init --chain makerspace --key ~/.ssh/id_ed25519
    let out = ok(utter(&data)
        .args(["init", "--chain", "makerspace", "--key"])
        .arg(&my_key));
    assert!(out.contains("created chain makerspace"), "{out}");
    let mine = std::fs::read_to_string(my_key.with_extension("pub")).unwrap();
    let mine: Vec<&str> = mine.split_whitespace().take(2).collect();
    assert!(
        out.contains(&mine.join(" ")),
        "the given key is the node key:\n{out}"
    );
    // $ utter init   (again: refused)
    let err = fails(utter(&data).args(["init"]));
    assert!(err.contains("already holds a ledger"), "{err}");

    let key = Keypair::load(&data.join("keys/node")).unwrap();
    let blocks = grow(&data, &key);
    let [genesis, b1, _b2, d1, m] = blocks[..] else {
        unreachable!()
    };

    // $ utter verify
    let out = ok(utter(&data).arg("verify"));
    assert_eq!(
        out.trim(),
        "verified 5 blocks and 4 transactions on 2 branches: all valid"
    );

    // $ utter log --graph
    let out = ok(utter(&data).args(["log", "--graph"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("* ") && lines[0].contains(&m.short()),
        "{out}"
    );
    assert!(out.contains("\\"), "a merge opens a lane:\n{out}");
    assert!(out.contains("/"), "lanes join at the fork:\n{out}");
    assert_eq!(lines.iter().filter(|l| l.contains('*')).count(), 5, "{out}");
    assert!(lines.last().unwrap().contains(&genesis.short()), "{out}");

    // $ utter log --json -n 2
    let json: serde_json::Value =
        serde_json::from_str(&ok(utter(&data).args(["log", "--json", "-n", "2"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["id"], m.to_string());
    assert_eq!(json[0]["height"], 3);
    assert_eq!(json[0]["valid"], true);
    assert_eq!(json[0]["signer"], "node");

    // $ utter show <prefix>
    let out = ok(utter(&data).args(["show", &d1.to_string()[..8]]));
    assert!(out.contains(&format!("block    {d1}")), "{out}");
    assert!(out.contains(&format!("parents  {b1}")), "{out}");
    assert!(out.contains("status   valid"), "{out}");
    assert!(out.contains("A dapps/doors/state/log/door"), "{out}");
    assert!(out.contains("accepted  doors/access  nonce 3"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(utter(&data).args(["show", "main", "--json"]))).unwrap();
    assert_eq!(json["changes"][0]["path"], "block/results.jsonl");
    assert_eq!(json["transactions"][0]["tx"]["nonce"], 4);
    assert_eq!(json["results"][0]["status"], "accepted");

    // git verify-commit accepts every block, given `utter key show --allowed-signers`.
    let repo = data.join("ledger.git");
    let allowed = file(
        tmp.path(),
        "allowed_signers",
        ok(utter(&data).args(["key", "show", "--allowed-signers"])).as_bytes(),
    );
    for id in &blocks {
        let out = run(git(&repo)
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
            .args(["verify-commit", &id.to_string()]));
        assert!(
            out.status.success(),
            "git verify-commit {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fsck = run(git(&repo).args(["fsck", "--strict", "--no-dangling"]));
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );

    // A plain, unsigned git commit on main: verify fails naming it.
    let plain = ok(git(&repo).args(["commit-tree", "main^{tree}", "-p", "main", "-m", "fix typo"]));
    let plain = plain.trim();
    ok(git(&repo).args(["update-ref", "refs/heads/main", plain]));
    let err = fails(utter(&data).arg("verify"));
    assert!(
        err.contains(&format!("error: block {plain} at height 4 is not signed")),
        "{err}"
    );
    // `utter log` still lists it, marked.
    let out = ok(utter(&data).arg("log"));
    assert!(out.lines().next().unwrap().contains("BAD"), "{out}");
    let out = run(utter(&data).args(["verify", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["invalid"], 1);
    assert_eq!(json["first_invalid"]["id"], plain);

    // A commit signed by a key the chain does not know: refused by name.
    let stranger = tmp.path().join("stranger");
    ssh_keygen(&stranger);
    ok(git(&repo).args(["update-ref", "refs/heads/main", &m.to_string()]));
    let signed = ok(git(&repo)
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("user.signingkey={}", stranger.display()))
        .args(["commit-tree", "-S", "main^{tree}", "-p", "main", "-m"])
        .arg("stranger\n\nHeight: 4\nChain: makerspace"));
    let signed = signed.trim();
    ok(git(&repo).args(["update-ref", "refs/heads/main", signed]));
    let err = fails(utter(&data).arg("verify"));
    assert!(
        err.contains(&format!(
            "error: block {signed} at height 4 is signed by ssh-ed25519 "
        )),
        "{err}"
    );
    assert!(err.contains("not a validator or device"), "{err}");
}

#[test]
fn ledger_commands_without_a_ledger_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nothing");
    for cmd in [&["log"][..], &["show"], &["verify"]] {
        let err = fails(utter(&data).args(cmd));
        assert!(err.contains("utter init"), "{cmd:?}: {err}");
    }
    assert!(!data.join("db").exists(), "reading commands create nothing");
    let err = fails(utter(&data).args(["init", "--chain", "Not OK"]));
    assert!(err.contains("chain name"), "{err}");
    let bad_key = file(tmp.path(), "key", b"garbage");
    let err = fails(utter(&data).args(["init", "--key"]).arg(&bad_key));
    assert!(err.contains("cannot read the SSH key"), "{err}");
    ok(utter(&data).args(["init"]));
    let err = fails(utter(&data).args(["show", "0000000"]));
    assert!(err.contains("not in the ledger"), "{err}");
}

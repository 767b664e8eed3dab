//! `utter chain show|approve|request` and the `chain set` transaction: a
//! quorum of the validators changes the validator set, through a joint
//! epoch, and every bad change is a recorded rejection with its reason.
//! `git show` reads the new `chain.toml`; `ssh-keygen -Y verify` checks an
//! approval.

use serde_json::Value;

use super::chain::{git, git_ok, propose, public_key, reasons, sign, sign_commit, with_input};
use super::*;

/// `chain.toml` text naming these validators.
fn desired(quorum: usize, validators: &[(&str, &str)]) -> String {
    let mut s = format!("chain = \"space\"\nquorum = {quorum}\n");
    for (name, key) in validators {
        s.push_str(&format!(
            "\n[[validators]]\nname = \"{name}\"\nkey = \"{key}\"\n"
        ));
    }
    s
}

fn approve(data: &Path, new: &Path, key: Option<&Path>, out: &Path) {
    let mut cmd = utter(data);
    cmd.args(["chain", "approve"]).arg(new).arg("-o").arg(out);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    ok(&mut cmd);
}

/// `chain request` with these approvals, then `tx sign` of its line.
fn change_tx(data: &Path, new: &Path, approvals: &[&Path], nonce: u64) -> String {
    let mut cmd = utter(data);
    cmd.args(["chain", "request"]).arg(new);
    for a in approvals {
        cmd.arg("--approval").arg(a);
    }
    let request = file(data, "request.jsonl", ok(&mut cmd).as_bytes());
    ok(utter(data)
        .args(["tx", "sign", "--nonce", &nonce.to_string(), "--file"])
        .arg(request))
    .trim()
    .to_string()
}

fn show_json(data: &Path) -> Value {
    serde_json::from_str(&ok(utter(data).args(["chain", "show", "--json"]))).expect("JSON")
}

#[test]
fn a_quorum_of_validators_changes_the_set_through_a_joint_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(utter(&data).args(["init", "--no-builtin", "--chain", "space"]));
    let others: Vec<PathBuf> = ["v2", "v3"].iter().map(|n| dir.path().join(n)).collect();
    for o in &others {
        ok(utter(o).args(["key", "gen"]));
    }
    let key_file = |o: &Path| o.join("keys/node");
    let (k1, k2, k3) = (
        public_key(&data),
        public_key(&others[0]),
        public_key(&others[1]),
    );
    let shown = ok(utter(&data).args(["chain", "show"]));
    assert!(
        shown.contains("epoch 0: validators node (quorum 1 of 1)"),
        "{shown}"
    );

    let three = file(
        dir.path(),
        "three.toml",
        desired(3, &[("node", &k1), ("v2", &k2), ("v3", &k3)]).as_bytes(),
    );
    // Only a validator approves.
    let err = fails(
        utter(&data)
            .args(["chain", "approve"])
            .arg(&three)
            .arg("--key")
            .arg(key_file(&others[0])),
    );
    assert!(
        err.contains("is not a validator in chain.toml epoch 0"),
        "{err}"
    );
    // What utter manages cannot be set by hand.
    let managed = file(
        dir.path(),
        "managed.toml",
        format!("epoch = 5\n{}", desired(1, &[("node", &k1)])).as_bytes(),
    );
    let err = fails(utter(&data).args(["chain", "approve"]).arg(&managed));
    assert!(err.contains("sets epoch, which utter manages"), "{err}");

    // Step 1: the node (the whole quorum of epoch 0) approves.
    let a0 = dir.path().join("a0.approval");
    approve(&data, &three, None, &a0);
    let step1 = change_tx(&data, &three, &[&a0], 1);
    let b1 = propose(&data, std::slice::from_ref(&step1));
    assert_eq!(reasons(&b1), ["accepted null"]);
    let toml = git_ok(git(&data).args(["show", "main:chain.toml"]));
    assert!(toml.contains("epoch = 1"), "{toml}");
    assert!(toml.contains("outgoing_quorum = 1"), "{toml}");
    assert!(toml.contains("[[outgoing]]"), "{toml}");
    let shown = ok(utter(&data).args(["chain", "show"]));
    assert!(
        shown.contains(
            "epoch 1: validators node, v2, v3 (quorum 3 of 3), with outgoing validators node (quorum 1 of 1)"
        ),
        "{shown}"
    );
    // ssh-keygen verifies the approval over the message the docs give:
    // the header lines, then the chain.toml it led to.
    let approval = std::fs::read_to_string(&a0).unwrap();
    let genesis = git_ok(git(&data).args(["rev-parse", "refs/utter/genesis"]));
    assert!(approval.starts_with(&format!("utter chain approval v1\nat {genesis}\nepoch 0\n")));
    let sig = file(
        dir.path(),
        "a0.sig",
        approval.splitn(4, '\n').nth(3).unwrap().as_bytes(),
    );
    let allowed = file(
        dir.path(),
        "allowed",
        format!("node namespaces=\"utter-chain\" {k1}\n").as_bytes(),
    );
    let message = format!("utter chain v1\nchain space\nat {genesis}\nepoch 0\n\n{toml}\n");
    let out = with_input(
        Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "utter-chain", "-I", "node", "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(&sig),
        &message,
    );
    assert!(out.status.success(), "ssh-keygen: {out:?}");

    // Step 2 needs a quorum of the new set: the node alone is too few, in
    // `chain request` and, if sent anyway, in the block.
    let a1 = dir.path().join("a1.approval");
    approve(&data, &three, None, &a1);
    let err = fails(
        utter(&data)
            .args(["chain", "request"])
            .arg(&three)
            .arg("--approval")
            .arg(&a1),
    );
    assert!(
        err.contains("1 of the validators approved; changing chain.toml takes 3"),
        "{err}"
    );
    let at = git_ok(git(&data).args(["rev-parse", "main"]));
    let sig1 = std::fs::read_to_string(&a1)
        .unwrap()
        .splitn(4, '\n')
        .nth(3)
        .unwrap()
        .trim()
        .to_string();
    let args = serde_json::json!({
        "config": std::fs::read_to_string(&three).unwrap(),
        "at": at,
        "approvals": [sig1],
    });
    let too_few = sign(&data, "chain", "set", &args.to_string(), 2);
    // The step-1 approvals again: chain.toml moved on since.
    let stale = change_tx(&data, &three, &[&a0], 3);
    let mut bad_args = args.clone();
    bad_args["at"] = Value::from("0".repeat(40));
    let unknown_at = sign(&data, "chain", "set", &bad_args.to_string(), 4);
    let no_action = sign(&data, "chain", "drop", "{}", 5);
    let b2 = propose(&data, &[too_few, stale, unknown_at, no_action]);
    let r = reasons(&b2);
    assert!(
        r[0].contains("rejected 1 of the validators approved"),
        "{r:?}"
    );
    assert!(
        r[1].contains("over chain.toml epoch 0") && r[1].contains("this block's is epoch 1"),
        "{r:?}"
    );
    assert!(r[2].contains("which this ledger does not have"), "{r:?}");
    assert!(
        r[3].contains("actions are set, deploy, upgrade and remove, not \"drop\""),
        "{r:?}"
    );
    assert_eq!(show_json(&data)["epoch"], 1);

    // All three approve: the change completes. The desired file may be
    // `chain show`'s output as it is (epoch and outgoing as they are now).
    let again = file(
        dir.path(),
        "again.toml",
        ok(utter(&data).args(["chain", "show"])).as_bytes(),
    );
    let mut approvals = vec![dir.path().join("b0.approval")];
    approve(&data, &again, None, &approvals[0]);
    for (i, o) in others.iter().enumerate() {
        let a = dir.path().join(format!("b{}.approval", i + 1));
        approve(&data, &again, Some(&key_file(o)), &a);
        approvals.push(a);
    }
    let refs: Vec<&Path> = approvals.iter().map(PathBuf::as_path).collect();
    let b3 = propose(&data, &[change_tx(&data, &again, &refs, 6)]);
    assert_eq!(reasons(&b3), ["accepted null"]);
    let config = show_json(&data);
    assert_eq!(config["epoch"], 2);
    assert_eq!(config["validators"].as_array().unwrap().len(), 3);
    assert!(config.get("outgoing").is_none(), "{config}");
    // Nothing left to change.
    let err = fails(utter(&data).args(["chain", "approve"]).arg(&three));
    assert!(err.contains("nothing to change"), "{err}");

    let out = ok(utter(&data).args(["verify", "--reexecute"]));
    assert!(out.contains("all valid"), "{out}");

    // A block that edits chain.toml by hand, signed by the node key: if it
    // keeps the epoch `verify` names it; if it bumps the epoch only
    // re-execution can tell, and does.
    let main = git_ok(git(&data).args(["rev-parse", "main"]));
    let height = 4;
    for (edit, expect_plain) in [(false, true), (true, false)] {
        let mut text = git_ok(git(&data).args(["show", "main:chain.toml"])) + "\n";
        text = text.replacen("name = \"v3\"", "name = \"v9\"", 1);
        if edit {
            text = text.replacen("epoch = 2", "epoch = 3", 1);
        }
        let out = with_input(git(&data).args(["hash-object", "-w", "--stdin"]), &text);
        assert!(out.status.success(), "{out:?}");
        let blob = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let index = dir.path().join(format!("index{edit}"));
        let tree = {
            let mut read = git(&data);
            read.env("GIT_INDEX_FILE", &index)
                .args(["read-tree", &main]);
            git_ok(&mut read);
            let mut update = git(&data);
            update.env("GIT_INDEX_FILE", &index).args([
                "update-index",
                "--cacheinfo",
                &format!("100644,{blob},chain.toml"),
            ]);
            git_ok(&mut update);
            // It carries no transaction of its own.
            let out = with_input(git(&data).args(["hash-object", "-w", "--stdin"]), "");
            let empty = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let mut clear = git(&data);
            clear
                .env("GIT_INDEX_FILE", &index)
                .args(["update-index", "--index-info"]);
            let out = with_input(
                &mut clear,
                &format!("100644 {empty}\tblock/txs.jsonl\n100644 {empty}\tblock/results.jsonl\n"),
            );
            assert!(out.status.success(), "{out:?}");
            let mut write = git(&data);
            write.env("GIT_INDEX_FILE", &index).arg("write-tree");
            git_ok(&mut write)
        };
        let forged = sign_commit(
            &data,
            &tree,
            &[&main],
            &format!("block {height}: renames v3\n\nHeight: {height}\nChain: space\n"),
        );
        git_ok(git(&data).args(["update-ref", "refs/heads/forged", &forged]));
        let plain = run(utter(&data).arg("verify"));
        let plain_text = String::from_utf8_lossy(&plain.stdout).to_string()
            + &String::from_utf8_lossy(&plain.stderr);
        if expect_plain {
            assert!(!plain.status.success(), "{plain_text}");
            assert!(
                plain_text.contains("it changes chain.toml but keeps epoch 2"),
                "{plain_text}"
            );
        } else {
            assert!(plain.status.success(), "{plain_text}");
            let err = fails(utter(&data).args(["verify", "--reexecute"]));
            assert!(err.contains(&forged), "{err}");
            assert!(err.contains("chain.toml"), "{err}");
        }
        git_ok(git(&data).args(["update-ref", "-d", "refs/heads/forged"]));
    }
}

#[test]
fn no_dapp_may_be_named_chain() {
    let dir = run::setup();
    let data = dir.path().join("data");
    let err = fails(utter(&data).args([
        "init",
        "--no-builtin",
        "--chain",
        "space",
        "--dapp",
        "chain=counter",
    ]));
    assert!(err.contains("dapp name \"chain\" is reserved"), "{err}");
    assert!(!data.join("ledger.git").exists());
}

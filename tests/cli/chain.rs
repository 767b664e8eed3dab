//! `utter tx sign`, `utter block propose` and `utter verify --reexecute`:
//! blocks made by running real dapps in real containers, every bad input
//! ending as a recorded rejection or a refusal, and a forged block (signed
//! by the right key, with a state its transactions do not make) caught by
//! re-execution. Git itself is the oracle for the state trees.

use std::io::Write;
use std::process::Stdio;

use serde_json::Value;

use super::*;

fn git(data: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--git-dir").arg(data.join("ledger.git"));
    c
}

fn git_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("git runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `cmd` with `input` on its stdin.
fn with_input(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("the command ends")
}

fn sign(data: &Path, dapp: &str, action: &str, args: &str, nonce: u64) -> String {
    ok(utter(data).args([
        "tx",
        "sign",
        dapp,
        action,
        "--args",
        args,
        "--nonce",
        &nonce.to_string(),
    ]))
    .trim()
    .to_string()
}

fn propose(data: &Path, lines: &[String]) -> Value {
    let txs = file(data, "txs.jsonl", (lines.join("\n") + "\n").as_bytes());
    let out = ok(utter(data)
        .args(["block", "propose", "--json", "--txs"])
        .arg(txs));
    serde_json::from_str(&out).expect("block propose --json prints JSON")
}

fn reasons(block: &Value) -> Vec<String> {
    block["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["status"].as_str().unwrap_or("?"),
                r["reason"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| r["output"].to_string())
            )
        })
        .collect()
}

#[test]
fn blocks_run_dapps_record_every_outcome_and_reexecute() {
    let dir = run::setup();
    let data = dir.path().join("data");
    // bb's entrypoint is /bin/sh, which cannot open a script called
    // "apply": a dapp that always fails.
    ok(utter(&data).args([
        "init",
        "--chain",
        "space",
        "--dapp",
        "counter=counter",
        "--dapp",
        "hello=hello",
        "--dapp",
        "broken=bb",
    ]));

    let good = sign(&data, "counter", "add", r#"{"name":"visits","by":2}"#, 1);
    let lines = vec![
        good.clone(),
        sign(&data, "counter", "add", r#"{"name":"visits"}"#, 2),
        sign(&data, "counter", "add", r#"{"name":"Bad!"}"#, 3),
        sign(&data, "hello", "hello", r#"{"name":"Ada"}"#, 4),
        sign(&data, "broken", "x", "{}", 5),
        sign(&data, "nope", "x", "{}", 6),
        // Another chain's transaction, and one whose args were changed
        // after signing: no block may carry either.
        ok(utter(&data).args([
            "tx", "sign", "counter", "add", "--chain", "other", "--nonce", "7",
        ]))
        .trim()
        .to_string(),
        sign(&data, "counter", "add", r#"{"name":"visits","by":1}"#, 8)
            .replace(r#""by":1"#, r#""by":9"#),
    ];
    let b1 = propose(&data, &lines);
    assert_eq!(b1["height"], 1);
    assert_eq!(b1["transactions"], 6, "{b1:#}");
    let r = reasons(&b1);
    assert_eq!(r[0], "accepted 2");
    assert_eq!(r[1], "accepted 3");
    assert!(
        r[2].starts_with("rejected \"Bad!\" is not a counter name"),
        "{r:?}"
    );
    assert_eq!(r[3], "accepted \"hello, Ada\"");
    assert!(
        r[4].starts_with("rejected dapp broken failed: it exited with code"),
        "{r:?}"
    );
    assert!(
        r[5].contains("there is no dapp \"nope\" on this chain (deployed: broken, counter, hello)"),
        "{r:?}"
    );
    let refused: Vec<&str> = b1["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap())
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].contains("for chain \"other\""), "{refused:?}");
    assert!(refused[1].contains("signature refused"), "{refused:?}");

    // Git reads the state the dapps wrote.
    let show = |path: &str| git_ok(git(&data).args(["show", &format!("main:{path}")]));
    assert_eq!(show("dapps/counter/state/counters/visits"), "3");
    assert_eq!(show("dapps/hello/state/guests"), "Ada");
    assert_eq!(show("dapps/hello/state/greetings"), "1");
    assert_eq!(show("block/txs.jsonl").lines().count(), 6);

    // A replay is recorded as rejected and changes nothing; the nonce a
    // key uses next comes from the chain.
    let next = ok(utter(&data).args([
        "tx",
        "sign",
        "counter",
        "add",
        "--args",
        r#"{"name":"visits"}"#,
    ]));
    assert!(next.contains(r#""nonce":7"#), "{next}");
    let b2 = propose(&data, &[good, next.trim().to_string()]);
    let r = reasons(&b2);
    assert!(
        r[0].starts_with("rejected nonce 1 was already used"),
        "{r:?}"
    );
    assert_eq!(r[1], "accepted 4");
    assert_eq!(show("dapps/counter/state/counters/visits"), "4");

    // A block of nothing but refused lines is not written.
    let bad = file(&data, "bad.jsonl", b"{\"not\":\"a transaction\"}\n");
    let err = fails(utter(&data).args(["block", "propose", "--txs"]).arg(bad));
    assert!(err.contains("no transaction can go into a block"), "{err}");

    let out = ok(utter(&data).args(["verify", "--reexecute"]));
    assert!(out.contains("re-executed 2 blocks"), "{out}");

    // Forge block 3: the right key signs a block with one new, well-signed
    // transaction (add 1) whose recorded result is right, but whose state
    // says 100. git verify-commit and the structural checks accept it;
    // only re-executing finds it out.
    let b2_id = b2["block"].as_str().unwrap();
    let tx = sign(&data, "counter", "add", r#"{"name":"visits"}"#, 9);
    let id = blake3::hash(tx.as_bytes()).to_hex().to_string();
    let result = format!(r#"{{"output":5,"status":"accepted","tx":"{id}"}}"#);
    let blob = |bytes: &str| {
        let out = with_input(git(&data).args(["hash-object", "-w", "--stdin"]), bytes);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let entries = [
        ("dapps/counter/state/counters/visits", blob("100")),
        ("block/txs.jsonl", blob(&format!("{tx}\n"))),
        ("block/results.jsonl", blob(&format!("{result}\n"))),
    ];
    let index = dir.path().join("forge.index");
    git_ok(
        git(&data)
            .env("GIT_INDEX_FILE", &index)
            .args(["read-tree", b2_id]),
    );
    for (path, blob) in &entries {
        git_ok(git(&data).env("GIT_INDEX_FILE", &index).args([
            "update-index",
            "--cacheinfo",
            &format!("100644,{blob},{path}"),
        ]));
    }
    let tree = git_ok(git(&data).env("GIT_INDEX_FILE", &index).arg("write-tree"));
    let keyfile = data.join("keys/node");
    let email = "forger";
    let out = with_input(
        git(&data)
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", keyfile.display()))
            .args(["commit-tree", "-S", &tree, "-p", b2_id, "-F", "-"])
            .env("GIT_AUTHOR_NAME", "utter")
            .env("GIT_AUTHOR_EMAIL", email)
            .env("GIT_COMMITTER_NAME", "utter")
            .env("GIT_COMMITTER_EMAIL", email),
        "block 3: forged\n\nHeight: 3\nChain: space\n",
    );
    assert!(
        out.status.success(),
        "git commit-tree -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forged = String::from_utf8_lossy(&out.stdout).trim().to_string();
    git_ok(git(&data).args(["update-ref", "refs/heads/forged", &forged]));

    // The structure and signature are fine...
    let out = ok(utter(&data).arg("verify"));
    assert!(out.contains("all valid"), "{out}");
    // ...but its transactions make another state.
    let err = fails(utter(&data).args(["verify", "--reexecute"]));
    assert!(
        err.contains(&format!("block {forged} at height 3"))
            && err.contains("its state differs from what its transactions make")
            && err.contains("dapps/counter/state/counters/visits"),
        "{err}"
    );
    let json: Value = serde_json::from_str(&String::from_utf8_lossy(
        &run(utter(&data).args(["verify", "--reexecute", "--json"])).stdout,
    ))
    .unwrap();
    assert_eq!(json["reexecuted"]["valid"], 2, "{json:#}");
    assert_eq!(json["reexecuted"]["invalid"][0]["id"], forged.as_str());
}

#[test]
fn a_missing_image_rejects_its_dapps_transactions_and_the_chain_goes_on() {
    let dir = run::setup();
    let data = dir.path().join("data");
    ok(utter(&data).args(["init", "--dapp", "counter=counter", "--dapp", "hello=hello"]));
    ok(utter(&data).args(["image", "rm", "hello"]));
    let b = propose(
        &data,
        &[
            sign(&data, "hello", "hello", r#"{"name":"Ada"}"#, 1),
            sign(&data, "counter", "add", r#"{"name":"n"}"#, 2),
        ],
    );
    let r = reasons(&b);
    assert!(
        r[0].starts_with("rejected dapp hello's image sha256:")
            && r[0].contains("is not available on this node")
            && r[0].contains("utter image import"),
        "{r:?}"
    );
    assert_eq!(r[1], "accepted 1");
}

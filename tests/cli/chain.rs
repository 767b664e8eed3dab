//! `utter tx sign`, `utter block propose` and `utter verify --reexecute`:
//! blocks made by running real dapps in real containers, every bad input
//! ending as a recorded rejection or a refusal, and a forged block (signed
//! by the right key, with a state its transactions do not make) caught by
//! re-execution. Git itself is the oracle for the state trees.

use std::io::Write;
use std::process::Stdio;

use serde_json::Value;

use super::*;

pub(crate) fn git(data: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--git-dir").arg(data.join("ledger.git"));
    c
}

pub(crate) fn git_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("git runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `cmd` with `input` on its stdin.
pub(crate) fn with_input(cmd: &mut Command, input: &str) -> Output {
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

pub(crate) fn sign(data: &Path, dapp: &str, action: &str, args: &str, nonce: u64) -> String {
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

/// `git commit-tree -S` with the node's own key: a commit utter's
/// signature check accepts, whatever its content.
pub(crate) fn sign_commit(data: &Path, tree: &str, parents: &[&str], message: &str) -> String {
    let keyfile = data.join("keys/node");
    let mut cmd = git(data);
    cmd.args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("user.signingkey={}", keyfile.display()))
        .args(["commit-tree", "-S", tree]);
    for p in parents {
        cmd.args(["-p", p]);
    }
    cmd.args(["-F", "-"]);
    for (var, value) in [
        ("GIT_AUTHOR_NAME", "utter"),
        ("GIT_AUTHOR_EMAIL", "forger"),
        ("GIT_COMMITTER_NAME", "utter"),
        ("GIT_COMMITTER_EMAIL", "forger"),
    ] {
        cmd.env(var, value);
    }
    let out = with_input(&mut cmd, message);
    assert!(
        out.status.success(),
        "git commit-tree -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Signs a commit of `tree` over `parents` at height 3 as the node (real
/// git), puts it on branch `forged`, and checks that `utter verify`
/// (structure, signatures) passes it while `verify --reexecute` names it
/// with every one of `expect`. Returns its id.
fn forged_block_is_caught(
    data: &Path,
    tree: &str,
    parents: &[&str],
    summary: &str,
    expect: &[&str],
) -> String {
    let forged = sign_commit(
        data,
        tree,
        parents,
        &format!("{summary}\n\nHeight: 3\nChain: space\n"),
    );
    git_ok(git(data).args(["update-ref", "refs/heads/forged", &forged]));
    let out = ok(utter(data).arg("verify"));
    assert!(out.contains("all valid"), "{out}");
    let err = fails(utter(data).args(["verify", "--reexecute"]));
    assert!(
        err.contains(&format!("block {forged} at height 3")),
        "{err}"
    );
    for e in expect {
        assert!(err.contains(e), "{e:?} not in: {err}");
    }
    forged
}

pub(crate) fn propose(data: &Path, lines: &[String]) -> Value {
    let txs = file(data, "txs.jsonl", (lines.join("\n") + "\n").as_bytes());
    let out = ok(utter(data)
        .args(["block", "propose", "--json", "--txs"])
        .arg(txs));
    serde_json::from_str(&out).expect("block propose --json prints JSON")
}

pub(crate) fn reasons(block: &Value) -> Vec<String> {
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
        "--no-builtin",
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
    // The structure and signature are fine, but its transactions make
    // another state.
    let forged = forged_block_is_caught(
        &data,
        &tree,
        &[b2_id],
        "block 3: forged",
        &[
            "its state differs from what its transactions make",
            "dapps/counter/state/counters/visits",
        ],
    );
    let json: Value = serde_json::from_str(&String::from_utf8_lossy(
        &run(utter(&data).args(["verify", "--reexecute", "--json"])).stdout,
    ))
    .unwrap();
    assert_eq!(json["reexecuted"]["valid"], 2, "{json:#}");
    assert_eq!(json["reexecuted"]["invalid"][0]["id"], forged.as_str());
}

#[test]
fn an_offline_branch_merges_into_main_by_re_execution() {
    let dir = run::setup();
    let data = dir.path().join("data");
    ok(utter(&data).args([
        "init",
        "--no-builtin",
        "--chain",
        "space",
        "--dapp",
        "counter=counter",
    ]));
    let b1 = propose(
        &data,
        &[sign(&data, "counter", "add", r#"{"name":"visits"}"#, 1)],
    );
    // Both sides carry `shared` (as two sibling proposals carry the same
    // mempool transaction); each uses nonce 2 for a different transaction.
    let shared = sign(&data, "counter", "add", r#"{"name":"shared"}"#, 4);
    let main_side = sign(&data, "counter", "add", r#"{"name":"visits","by":2}"#, 2);
    let b2 = propose(&data, &[main_side.clone(), shared.clone()]);
    let txs = file(
        &data,
        "door.jsonl",
        format!(
            "{}\n{}\n{shared}\n",
            sign(&data, "counter", "add", r#"{"name":"door","by":5}"#, 3),
            sign(&data, "counter", "add", r#"{"name":"visits","by":10}"#, 2),
        )
        .as_bytes(),
    );
    // The offline device's branch starts at main as it last saw it (b1).
    git_ok(git(&data).args(["branch", "front-door", b1["block"].as_str().unwrap()]));
    let out = ok(utter(&data)
        .args([
            "block",
            "propose",
            "--branch",
            "front-door",
            "--json",
            "--txs",
        ])
        .arg(&txs));
    let side: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reasons(&side), ["accepted 5", "accepted 11", "accepted 1"]);

    let out = ok(utter(&data).args(["block", "merge", "front-door", "--json"]));
    let merge: Value = serde_json::from_str(&out).unwrap();
    let parents: Vec<&str> = merge["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let (main_id, side_id) = (
        b2["block"].as_str().unwrap(),
        side["block"].as_str().unwrap(),
    );
    let mut sorted = vec![main_id, side_id];
    sorted.sort();
    assert_eq!(parents, sorted, "parents in id order");
    assert_eq!(merge["height"], 3);
    // The first parent's state is the base; the other's transactions are
    // re-executed on it. The nonce both sides used stays with the base;
    // the other side's is recorded as a replay. `shared` is not applied
    // twice.
    let base_is_main = parents[0] == main_id;
    let r = reasons(&merge);
    let replay = "rejected nonce 2 was already used";
    if base_is_main {
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0], "accepted 5");
        assert!(r[1].starts_with(replay), "{r:?}");
    } else {
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with(replay), "{r:?}");
    }
    let value = |name: &str| {
        git_ok(git(&data).args(["show", &format!("main:dapps/counter/state/counters/{name}")]))
    };
    assert_eq!(value("door"), "5");
    assert_eq!(value("shared"), "1");
    assert_eq!(value("visits"), if base_is_main { "3" } else { "11" });
    // Git sees a merge commit with both parents.
    assert_eq!(
        git_ok(git(&data).args(["rev-list", "--parents", "-n", "1", "main"])),
        format!(
            "{} {} {}",
            merge["block"].as_str().unwrap(),
            sorted[0],
            sorted[1]
        )
    );
    // Merging it again has nothing to do.
    let out = ok(utter(&data).args(["block", "merge", "front-door"]));
    assert!(out.contains("nothing to merge"), "{out}");

    // Every block re-executes, the merge included.
    let json: Value = serde_json::from_str(&String::from_utf8_lossy(
        &run(utter(&data).args(["verify", "--reexecute", "--json"])).stdout,
    ))
    .unwrap();
    assert_eq!(json["reexecuted"]["valid"], 4, "{json:#}");
    assert_eq!(json["reexecuted"]["invalid"].as_array().unwrap().len(), 0);

    // A merge that drops the branch's transactions (the base's state, no
    // transactions), properly signed: the structure and signature checks
    // pass, re-execution names what it left out.
    let index = dir.path().join("forge.index");
    let in_index = |args: &[&str]| git_ok(git(&data).env("GIT_INDEX_FILE", &index).args(args));
    in_index(&["read-tree", sorted[0]]);
    let empty = with_input(git(&data).args(["hash-object", "-w", "--stdin"]), "");
    let empty = String::from_utf8_lossy(&empty.stdout).trim().to_string();
    for path in ["block/txs.jsonl", "block/results.jsonl"] {
        in_index(&[
            "update-index",
            "--cacheinfo",
            &format!("100644,{empty},{path}"),
        ]);
    }
    let base_tree = in_index(&["write-tree"]);
    forged_block_is_caught(
        &data,
        &base_tree,
        &[sorted[0], sorted[1]],
        "block 3: forged merge",
        &[
            "a merge must re-execute the",
            "transactions of the branches it merges first",
        ],
    );
    // Bad input: a branch that does not exist, and main itself.
    let err = fails(utter(&data).args(["block", "merge", "back-door"]));
    assert!(err.contains(r#"there is no branch "back-door""#), "{err}");
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

pub(crate) fn public_key(data: &Path) -> String {
    let v: Value =
        serde_json::from_str(&ok(utter(data).args(["key", "show", "--json"]))).expect("json");
    v["public_key"].as_str().expect("public_key").to_string()
}

#[test]
fn a_makerspace_on_the_built_in_dapps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = ok(utter(&data).args(["init", "--chain", "space"]));
    assert!(
        out.contains("dapps     membership, certifications, doors"),
        "{out}"
    );
    let admin = public_key(&data);
    // A door controller is a device with its own key.
    let device = dir.path().join("device");
    ok(utter(&device).args(["key", "gen"]));
    let controller = public_key(&device);
    let badge = "ab".repeat(32);
    let stranger = "cd".repeat(32);
    let signed = |requests: &[Value], key: Option<&Path>, nonce: u64| -> Vec<String> {
        let file = dir.path().join("requests.jsonl");
        let text: String = requests.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&file, text).expect("write");
        let mut cmd = utter(&data);
        cmd.args(["tx", "sign", "--file"]).arg(&file);
        cmd.args(["--nonce", &nonce.to_string()]);
        if let Some(k) = key {
            cmd.arg("--key").arg(k);
        }
        ok(&mut cmd).lines().map(str::to_string).collect()
    };
    let salt = "00112233445566778899aabbccddeeff";
    // Other dapps see a block's changes from the next block on: the first
    // admin comes first.
    let b = propose(
        &data,
        &signed(
            &[
                serde_json::json!({"dapp": "membership", "action": "add-member",
                "args": {"key": admin, "name": "Ada", "salt": salt, "roles": ["trainer"]}}),
            ],
            None,
            1,
        ),
    );
    assert_eq!(
        reasons(&b)[0],
        r#"accepted {"first_admin":true,"member":"Ada"}"#
    );
    let b = propose(
        &data,
        &signed(
            &[
                serde_json::json!({"dapp": "membership", "action": "add-badge", "args": {"key": admin, "badge": badge}}),
                serde_json::json!({"dapp": "doors", "action": "define-door", "args": {"name": "shop", "certs": ["saw"]}}),
                serde_json::json!({"dapp": "doors", "action": "define-door", "args": {"name": "front"}}),
                serde_json::json!({"dapp": "doors", "action": "authorize-controller", "args": {"door": "front", "key": controller}}),
                serde_json::json!({"dapp": "certifications", "action": "certify", "args": {"member": admin, "tool": "saw"}}),
                serde_json::json!({"dapp": "membership", "action": "add-member", "args": {"key": controller, "name": "X"}}),
            ],
            None,
            2,
        ),
    );
    let r = reasons(&b);
    assert!(r.iter().take(5).all(|r| r.starts_with("accepted")), "{r:?}");
    // The controller is a device, not an admin: it may not add members.
    let b = propose(
        &data,
        &signed(
            &[
                serde_json::json!({"dapp": "membership", "action": "add-member",
                    "args": {"key": controller, "name": "Mallory"}}),
                serde_json::json!({"dapp": "doors", "action": "access", "args": {"door": "front",
                    "badge": badge, "member": admin, "time": 1_000, "granted": true, "reason": "Ada may enter"}}),
                serde_json::json!({"dapp": "doors", "action": "access", "args": {"door": "front",
                    "badge": stranger, "time": 1_060, "granted": false, "reason": "unknown badge"}}),
                serde_json::json!({"dapp": "doors", "action": "access", "args": {"door": "shop",
                    "badge": badge, "time": 1_100, "granted": true, "reason": "x"}}),
            ],
            Some(&device.join("keys/node")),
            1,
        ),
    );
    let r = reasons(&b);
    assert!(
        r[0].contains("only an active admin may add-member"),
        "{r:?}"
    );
    assert!(
        r[1].starts_with("accepted") && r[2].starts_with("accepted"),
        "{r:?}"
    );
    assert!(
        r[3].contains("not an authorized controller of shop"),
        "{r:?}"
    );

    let members = ok(utter(&data).args(["members", "ls", "--json"]));
    let members: Vec<Value> = members
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(members[0]["name"], "Ada");
    assert_eq!(members[0]["badges"], 1);
    assert_eq!(members[0]["roles"], serde_json::json!(["admin", "trainer"]));
    let table = ok(utter(&data).args(["members", "ls"]));
    assert!(
        table.contains("Ada") && table.contains("admin,trainer"),
        "{table}"
    );

    let log = ok(utter(&data).args(["doors", "log"]));
    assert!(
        log.contains("1970-01-01T00:16:40Z  front      open    Ada"),
        "{log}"
    );
    assert!(log.contains("DENIED  (unknown badge)"), "{log}");
    let since = ok(utter(&data).args([
        "doors", "log", "--json", "--since", "1050", "--door", "front",
    ]));
    assert_eq!(since.lines().count(), 1, "{since}");
    let salt_file = ok(utter(&data).args(["state", "get", "membership/salt"]));
    assert_eq!(salt_file.trim(), salt);
    let err = fails(utter(&data).args(["state", "get", "membership/nope"]));
    assert!(
        err.contains("no file nope in dapp membership's state"),
        "{err}"
    );
    let out = ok(utter(&data).args(["verify", "--reexecute"]));
    assert!(out.contains("re-executed 3 blocks"), "{out}");
}

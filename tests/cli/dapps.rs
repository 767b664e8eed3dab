//! A dapp author's day, as typed: `utter dapp new` in each language, `utter
//! dapp test` (fixtures through real containers, diffs when they differ),
//! `utter dapp check` (the protocol's conformance checks) on every built-in
//! dapp and on a broken one, and `utter dapp deploy|upgrade|remove|ls` on a
//! running node, with `utter verify --reexecute` as the oracle after.

use serde_json::{Value, json};

use super::net::{Node, key_of};
use super::*;

/// `utter dapp new NAME --lang LANG` in `dir`; the project's path.
fn new_project(dir: &Path, name: &str, lang: &str) -> PathBuf {
    let data = dir.join("unused-data");
    ok(utter(&data)
        .current_dir(dir)
        .args(["dapp", "new", name, "--lang", lang]));
    dir.join(name)
}

/// `utter dapp test --json` in `project`; (passed, the report).
fn dapp_test(project: &Path, extra: &[&str]) -> (bool, Value) {
    let out = run(utter(&project.join("unused-data"))
        .current_dir(project)
        .env("CARGO_NET_OFFLINE", "true")
        .args(["dapp", "test", "--json"])
        .args(extra));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "dapp test printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.success(), v["passed"] == true, "{v}");
    (out.status.success(), v)
}

fn failed_checks(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| format!("{}: {}", c["name"], c["problems"]))
        .collect()
}

#[test]
fn dapp_new_makes_a_project_that_tests_green_in_each_language_and_diffs_show_what_broke() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["sh", "python", "rust"] {
        let project = new_project(tmp.path(), &format!("hello-{lang}"), lang);
        let (passed, report) = dapp_test(&project, &[]);
        assert!(passed, "{lang}: {:?}", failed_checks(&report));
        // Four conformance checks and two fixtures.
        assert_eq!(report["checks"].as_array().unwrap().len(), 6, "{report}");
    }
    // A fixture that expects something else fails with a diff of results
    // and state; --update writes what the dapp did.
    let project = tmp.path().join("hello-sh");
    let txs = project.join("fixtures/01-greet/txs.jsonl");
    let text = std::fs::read_to_string(&txs).unwrap();
    std::fs::write(&txs, text.replace("\"Grace\"", "\"Grace Hopper\"")).unwrap();
    let (passed, report) = dapp_test(&project, &[]);
    assert!(!passed);
    let failed = failed_checks(&report);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("fixture 01-greet"), "{failed:?}");
    assert!(failed[0].contains("hello, Grace Hopper"), "{failed:?}");
    assert!(failed[0].contains("~ guests"), "{failed:?}");
    let (passed, _) = dapp_test(&project, &["--update"]);
    assert!(passed);
    assert_eq!(
        std::fs::read_to_string(project.join("fixtures/01-greet/after/guests")).unwrap(),
        "Ada\nGrace Hopper\n"
    );
    // Bad input: a name no chain takes, a directory in use, no project.
    let data = tmp.path().join("unused-data");
    let err = fails(
        utter(&data)
            .current_dir(tmp.path())
            .args(["dapp", "new", "Bad Name"]),
    );
    assert!(err.contains("is not allowed"), "{err}");
    let err = fails(
        utter(&data)
            .current_dir(tmp.path())
            .args(["dapp", "new", "hello-sh"]),
    );
    assert!(err.contains("not empty"), "{err}");
    let err = fails(utter(&data).args(["dapp", "test"]).arg(tmp.path()));
    assert!(err.contains("utter dapp new"), "{err}");
}

#[test]
fn the_conformance_checks_pass_on_every_builtin_dapp_and_fail_a_broken_one() {
    let dir = run::setup();
    let data = dir.path().join("data");
    ok(utter(&data).args(["init", "--chain", "space", "--dapp", "counter=counter"]));
    for image in [
        "utter/membership",
        "utter/certifications",
        "utter/doors",
        "utter/accounting",
        "utter/invariants",
        "counter",
        "hello",
    ] {
        let out = run(utter(&data).args(["dapp", "check", image, "--json"]));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "{image}: {:?}", failed_checks(&v));
    }
    // A dapp that answers once however many transactions it gets.
    let project = new_project(dir.path(), "broken", "sh");
    let main = project.join("main.sh");
    let text = std::fs::read_to_string(&main).unwrap();
    let broken = text.replace(
        "done < \"$BLOCK/txs.jsonl\" > \"$BLOCK/results.jsonl\"",
        "done < \"$BLOCK/txs.jsonl\" | head -n 1 > \"$BLOCK/results.jsonl\"",
    );
    assert_ne!(broken, text, "the template changed: break it another way");
    std::fs::write(&main, broken).unwrap();
    let out = run(utter(&data).args(["dapp", "check", "--json"]).arg(&project));
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = failed_checks(&v);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("1 result lines for 2 transactions"),
        "{failed:?}"
    );
}

/// `utter dapp SUBCOMMAND … --json` on the node of `data`; (succeeded, JSON).
fn dapp_json(data: &Path, args: &[&str], key: Option<&Path>) -> (bool, Value) {
    let mut cmd = utter(data);
    cmd.arg("dapp").args(args).arg("--json");
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = run(&mut cmd);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{args:?} printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn greet(data: &Path, name: &str) -> Value {
    let out = ok(utter(data).args([
        "tx",
        "submit",
        "hello",
        "greet",
        "--args",
        &json!({ "name": name }).to_string(),
        "--wait",
        "--json",
    ]));
    serde_json::from_str::<Value>(&out).unwrap()[0]["result"].clone()
}

/// A copy of `project` at `to` with `from` replaced by `with` in its main.sh.
fn variant(project: &Path, to: &Path, from: &str, with: &str) -> PathBuf {
    ok(Command::new("cp").arg("-r").arg(project).arg(to));
    let main = to.join("main.sh");
    let text = std::fs::read_to_string(&main).unwrap();
    assert!(text.contains(from), "the template changed: {from:?}");
    std::fs::write(&main, text.replace(from, with)).unwrap();
    to.to_path_buf()
}

/// Dapp `name` as `utter dapp ls --json` lists it.
fn listed(data: &Path, name: &str) -> Value {
    let (_, ls) = dapp_json(data, &["ls"], None);
    ls["dapps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no dapp {name}: {ls}"))
        .clone()
}

#[test]
fn a_dapp_is_deployed_used_upgraded_and_removed_by_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(utter(&data).args(["init", "--chain", "space"]));
    let node = Node::start(&data, None, "127.0.0.1:0", &[]);
    let project = new_project(tmp.path(), "hello", "sh");
    let dir = project.to_str().unwrap();

    // Deploy, and use it in the next block.
    let (ok_, v) = dapp_json(&data, &["deploy", "hello", dir], None);
    assert!(ok_, "{v}");
    assert_eq!(v["result"]["status"], "accepted", "{v}");
    assert_eq!(greet(&data, "Ada")["output"], "hello, Ada");
    let hello = listed(&data, "hello");
    assert_eq!(hello["owners"], json!([key_of(&data)]));
    assert!(hello["deployed_at"].as_u64().unwrap() > 0, "{hello}");
    let first_image = hello["image"].as_str().unwrap().to_string();

    // An upgrade whose test fails on the live state is rejected with the
    // test's words, and the old image keeps running.
    let bad = variant(
        &project,
        &tmp.path().join("hello-bad"),
        "if [ \"$count\" -ne \"$lines\" ]; then",
        "if [ \"$count\" -lt 100 ]; then",
    );
    let (ok_, v) = dapp_json(&data, &["upgrade", "hello", bad.to_str().unwrap()], None);
    assert!(!ok_);
    let reason = v["result"]["reason"].as_str().unwrap();
    assert!(reason.contains("test failed"), "{reason}");
    assert!(reason.contains("greetings says 1"), "{reason}");
    assert_eq!(greet(&data, "Bob")["output"], "hello, Bob");

    // A good upgrade keeps the state: the count goes on.
    let good = variant(
        &project,
        &tmp.path().join("hello-v2"),
        "hello, $name",
        "hi, $name",
    );
    let (ok_, v) = dapp_json(&data, &["upgrade", "hello", good.to_str().unwrap()], None);
    assert!(ok_, "{v}");
    assert_eq!(greet(&data, "Cy")["output"], "hi, Cy");
    let greetings = ok(utter(&data).args(["state", "get", "hello/greetings"]));
    assert_eq!(greetings.trim(), "3");
    let hello = listed(&data, "hello");
    assert_ne!(hello["image"], first_image.as_str());
    assert!(hello["upgraded_at"].as_u64().is_some(), "{hello}");

    // Keys the chain does not allow are rejected, with the reason.
    let (stranger, _) = ssh_key(tmp.path(), "stranger");
    let (ok_, v) = dapp_json(&data, &["deploy", "other", dir], Some(&stranger));
    assert!(!ok_);
    let reason = v["result"]["reason"].as_str().unwrap();
    assert!(reason.contains("may not deploy"), "{reason}");
    assert!(reason.contains("the validators"), "{reason}");
    let (ok_, v) = dapp_json(&data, &["upgrade", "hello", dir], Some(&stranger));
    assert!(!ok_);
    assert!(
        v["result"]["reason"]
            .as_str()
            .unwrap()
            .contains("does not own dapp \"hello\""),
        "{v}"
    );
    // A name already taken.
    let (ok_, v) = dapp_json(&data, &["deploy", "hello", dir], None);
    assert!(!ok_);
    assert!(
        v["result"]["reason"]
            .as_str()
            .unwrap()
            .contains("already deployed"),
        "{v}"
    );

    // An image nobody uploaded: the command says so, and a hand-made
    // transaction naming it is refused, not put in a block.
    let missing = format!("sha256:{}", "0".repeat(64));
    let err = fails(utter(&data).args(["dapp", "deploy", "ghost", &missing]));
    assert!(err.contains("has no image"), "{err}");
    let out = run(utter(&data).args([
        "tx",
        "submit",
        "chain",
        "deploy",
        "--args",
        &json!({"name": "ghost", "image": missing}).to_string(),
        "--json",
    ]));
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["status"], "refused", "{v}");
    assert!(
        v[0]["error"]
            .as_str()
            .unwrap()
            .contains("is not on this node"),
        "{v}"
    );
    let err = fails(utter(&data).args(["dapp", "deploy", "ghost", "/no/such/dir"]));
    assert!(err.contains("is not a dapp project"), "{err}");
    // An upload that is not an image archive is refused; nothing is kept.
    // (The node holds the store: count the catalog's documents instead.)
    let images = |data: &Path| {
        std::fs::read_dir(data.join("images/blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = images(&data);
    let client =
        utter_client::Client::new(&std::fs::read_to_string(data.join("node.addr")).unwrap());
    let err = client
        .upload_image(&mut &b"not a tar at all"[..])
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(utter_client::api::ErrorCode::BadImage),
        "{err}"
    );
    assert!(err.to_string().contains("not an image"), "{err}");
    assert_eq!(images(&data), before);
    assert_eq!(
        std::fs::read_dir(data.join("images/uploads"))
            .unwrap()
            .count(),
        0,
        "the upload's file is gone"
    );

    // Removed: its transactions are rejected; the history stays.
    let (ok_, v) = dapp_json(&data, &["remove", "hello"], None);
    assert!(ok_, "{v}");
    let out = run(utter(&data).args([
        "tx",
        "submit",
        "hello",
        "greet",
        "--args",
        r#"{"name":"Di"}"#,
        "--wait",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no dapp \"hello\""));
    drop(node);
    let verified = ok(utter(&data).args(["verify", "--reexecute"]));
    assert!(
        verified.contains("each gives exactly its state"),
        "{verified}"
    );
}

/// `utter tx submit --file` of `requests` as `key` (None: the node key),
/// waited for; each result.
fn submit_all(data: &Path, key: Option<&Path>, requests: &[Value]) -> Vec<Value> {
    let file = data.with_extension("requests.jsonl");
    let text: String = requests.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let mut cmd = utter(data);
    cmd.args(["tx", "submit", "--wait", "--json", "--file"])
        .arg(&file);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = run(&mut cmd);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "submit printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["result"].clone())
        .collect()
}

fn accepted(results: &[Value]) {
    for r in results {
        assert_eq!(r["status"], "accepted", "{results:?}");
    }
}

#[test]
fn reservations_and_inventory_pass_their_fixtures_deploy_and_a_booking_holds_the_tool_lockout() {
    let tmp = tempfile::tempdir().unwrap();
    let workspace = utter_testkit::workspace();
    // As their author would: the fixtures, through real containers.
    for dapp in ["reservations", "inventory"] {
        let (passed, report) = dapp_test(&workspace.join("dapps").join(dapp), &[]);
        assert!(passed, "{dapp}: {:?}", failed_checks(&report));
    }
    let data = tmp.path().join("data");
    ok(utter(&data).args(["init", "--chain", "space"]));
    let node = Node::start(&data, None, "127.0.0.1:0", &[]);
    let ada = key_of(&data);
    let (grace_file, grace) = ssh_key(tmp.path(), "grace");
    let badge = "c0".repeat(32);
    accepted(&submit_all(
        &data,
        None,
        &[
            json!({"dapp": "membership", "action": "add-member",
                   "args": {"key": ada, "name": "Ada", "roles": ["admin", "trainer"],
                            "salt": "00112233445566778899aabbccddeeff"}}),
            json!({"dapp": "membership", "action": "add-member",
                   "args": {"key": grace, "name": "Grace"}}),
            json!({"dapp": "membership", "action": "add-badge",
                   "args": {"key": grace, "badge": badge}}),
        ],
    ));
    // Other dapps read members as of the block before: a block later.
    accepted(&submit_all(
        &data,
        None,
        &[
            json!({"dapp": "doors", "action": "define-door",
                   "args": {"name": "laser", "certs": ["laser"]}}),
            json!({"dapp": "certifications", "action": "certify",
                   "args": {"member": ada, "tool": "laser"}}),
            json!({"dapp": "certifications", "action": "certify",
                   "args": {"member": grace, "tool": "laser"}}),
        ],
    ));
    for dapp in ["reservations", "inventory"] {
        let project = workspace.join("dapps").join(dapp);
        let (ok_, v) = dapp_json(&data, &["deploy", dapp, project.to_str().unwrap()], None);
        assert!(ok_, "{dapp}: {v}");
    }
    let client =
        utter_client::Client::new(&std::fs::read_to_string(data.join("node.addr")).unwrap());
    let open = |time: u64| {
        let dir = tempfile::tempdir().unwrap();
        client.rules().unwrap().write_to(dir.path()).unwrap();
        let mut rules = utter_doors::Rules::at(dir.path());
        utter_doors::may_open(&mut rules, "laser", &badge, time)
    };
    let now = utter_formats::now();
    assert!(open(now + 600).granted, "{:?}", open(now + 600));
    // Ada books the laser; Grace, certified too, is held out while it lasts.
    let (from, to) = (now + 300, now + 3900);
    let results = submit_all(
        &data,
        None,
        &[json!({"dapp": "reservations", "action": "book",
                 "args": {"resource": "laser", "from": from, "to": to}})],
    );
    accepted(&results);
    let during = open(from + 60);
    assert!(!during.granted, "{during:?}");
    assert!(during.reason.contains("booked by Ada"), "{during:?}");
    assert!(open(to).granted, "after the booking");
    // Grace cannot book over it.
    let results = submit_all(
        &data,
        Some(&grace_file),
        &[json!({"dapp": "reservations", "action": "book",
                 "args": {"resource": "laser", "from": from + 600, "to": from + 1200}})],
    );
    assert!(
        results[0]["reason"]
            .as_str()
            .unwrap()
            .contains("is booked by Ada"),
        "{results:?}"
    );
    // Inventory: a steward stocks, a member checks out, the list runs low.
    accepted(&submit_all(
        &data,
        None,
        &[json!({"dapp": "inventory", "action": "add-item",
                 "args": {"id": "glue", "name": "Wood glue", "quantity": 2,
                          "location": "shelf A1", "min": 2}})],
    ));
    accepted(&submit_all(
        &data,
        Some(&grace_file),
        &[json!({"dapp": "inventory", "action": "check-out", "args": {"id": "glue"}})],
    ));
    let low = ok(utter(&data).args(["state", "get", "inventory/low-stock.json"]));
    let low: Value = serde_json::from_str(&low).unwrap();
    assert_eq!(low[0]["id"], "glue", "{low}");
    assert_eq!(low[0]["quantity"], 1, "{low}");
    drop(node);
    let verified = ok(utter(&data).args(["verify", "--reexecute"]));
    assert!(
        verified.contains("each gives exactly its state"),
        "{verified}"
    );
}

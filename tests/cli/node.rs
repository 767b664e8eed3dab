//! `utter node run` with `utter tx submit`: a real node (real containers,
//! RocksDB and git) admits, commits and answers; every bad input ends with
//! a clear result and the chain goes on; a node killed with SIGKILL while
//! it makes blocks restarts with every accepted transaction committed or
//! still waiting; the accounting export reads the same in ledger-cli and
//! hledger as in utter.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

/// A running node; SIGTERM and wait on drop.
pub(crate) struct Node {
    child: Child,
    pub(crate) url: String,
}

impl Node {
    pub(crate) fn start(data: &Path, extra: &[&str]) -> Self {
        let addr = data.join("node.addr");
        let _ = std::fs::remove_file(&addr);
        // The node's log goes to a file beside its data dir (a pipe nobody
        // reads would stop a chatty node once it is full).
        let log_path = data.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the node's log file");
        let mut child = utter(data)
            .args(["node", "run", "--listen", "127.0.0.1:0", "--block-ms", "20"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the node starts");
        let started = Instant::now();
        while !addr.exists() {
            if let Some(status) = child.try_wait().expect("wait") {
                let err = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("the node exited with {status}: {err}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the node never served"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let url = std::fs::read_to_string(&addr).unwrap().trim().to_string();
        Self { child, url }
    }

    pub(crate) fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        std::mem::forget(self);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 request to the node; (status, JSON body).
fn http(url: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    raw(url, method, path, body.as_bytes())
}

/// Sends `body` as one request on a raw connection; (status, JSON). The
/// node may answer before it has read the whole body.
fn raw(url: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let host = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("connect to the node");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let _ = s.write_all(body);
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.len() >= 12,
        "{method} {path}: the node closed the connection without answering (did it stop?)"
    );
    let status = text[9..12].parse().expect("status code");
    let body = text.split_once("\r\n\r\n").expect("headers end").1;
    (status, serde_json::from_str(body).expect("a JSON body"))
}

pub(crate) fn public_key(data: &Path) -> String {
    let v: Value = serde_json::from_str(&ok(utter(data).args(["key", "show", "--json"]))).unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

/// `utter tx submit … --wait --json` as `key` (None: the node key); the
/// results and whether the command succeeded.
pub(crate) fn submit(
    data: &Path,
    key: Option<&Path>,
    dapp: &str,
    action: &str,
    args: Value,
) -> (bool, Value) {
    let mut cmd = utter(data);
    cmd.args([
        "tx",
        "submit",
        dapp,
        action,
        "--args",
        &args.to_string(),
        "--wait",
        "--json",
    ]);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = run(&mut cmd);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v[0].clone())
}

pub(crate) fn accepted(r: (bool, Value)) -> Value {
    assert!(r.0 && r.1["result"]["status"] == "accepted", "{}", r.1);
    r.1
}

fn rejected(r: (bool, Value), why: &str) {
    assert!(!r.0, "a rejected transaction fails the command: {}", r.1);
    assert_eq!(r.1["status"], "committed", "{}", r.1);
    assert_eq!(r.1["result"]["status"], "rejected", "{}", r.1);
    let reason = r.1["result"]["reason"].as_str().unwrap();
    assert!(reason.contains(why), "{reason:?} should say {why:?}");
}

pub(crate) const SALT: &str = "00112233445566778899aabbccddeeff";

/// A new chain `space` with the built-in dapps and its node running; the
/// node key (the admin-to-be).
fn space() -> (tempfile::TempDir, PathBuf, Node, String) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(utter(&data).args(["init", "--chain", "space"]));
    let node = Node::start(&data, &[]);
    let admin = public_key(&data);
    (tmp, data, node, admin)
}

#[test]
fn a_node_commits_what_it_admits_and_every_bad_input_gets_a_clear_result() {
    let (tmp, data, node, admin) = space();
    let (bob_file, bob) = ssh_key(tmp.path(), "bob");
    let (carol_file, carol) = ssh_key(tmp.path(), "carol");
    let (bot_file, bot) = ssh_key(tmp.path(), "front-bot");

    accepted(submit(
        &data,
        None,
        "membership",
        "add-member",
        json!({"key": admin, "name": "Ada", "roles": ["admin", "treasurer"], "salt": SALT}),
    ));
    // Many in one request: consecutive nonces, one block or more, in order.
    let reqs = tmp.path().join("reqs.jsonl");
    let lines = [
        json!({"dapp": "membership", "action": "add-member", "args": {"key": bob, "name": "Bob"}}),
        json!({"dapp": "membership", "action": "add-badge", "args": {"key": bob, "badge": "ab".repeat(32)}}),
        json!({"dapp": "doors", "action": "define-door", "args": {"name": "front", "dues": true}}),
        json!({"dapp": "doors", "action": "authorize-controller", "args": {"door": "front", "key": bot}}),
    ];
    file(
        tmp.path(),
        "reqs.jsonl",
        lines.map(|l| l.to_string() + "\n").concat().as_bytes(),
    );
    let out = ok(utter(&data)
        .args(["tx", "submit", "--file"])
        .arg(&reqs)
        .args(["--wait"]));
    assert_eq!(out.matches("accepted").count(), 4, "{out}");
    accepted(submit(
        &data,
        None,
        "accounting",
        "mint",
        json!({"to": bob, "amount": 10}),
    ));

    // Bad input, each recorded with its reason; the chain goes on.
    rejected(
        submit(&data, None, "nosuch", "hello", json!({})),
        "there is no dapp \"nosuch\"",
    );
    rejected(
        submit(&data, None, "membership", "frobnicate", json!({"key": bob})),
        "unknown action",
    );
    rejected(
        submit(&data, None, "membership", "add-member", json!({"key": 5})),
        "args.key must be a string",
    );
    rejected(
        submit(
            &data,
            Some(&bob_file),
            "membership",
            "add-member",
            json!({"key": carol, "name": "Carol"}),
        ),
        "only an active admin",
    );
    rejected(
        submit(
            &data,
            Some(&bob_file),
            "accounting",
            "transfer",
            json!({"to": admin, "amount": 50}),
        ),
        "Bob has 10 CR, which is less than 50 CR",
    );
    rejected(
        submit(
            &data,
            Some(&carol_file),
            "accounting",
            "transfer",
            json!({"to": admin, "amount": 1}),
        ),
        "is not a member",
    );
    rejected(
        submit(
            &data,
            Some(&bob_file),
            "doors",
            "access",
            json!({"door": "front", "badge": "ab".repeat(32), "time": 1, "granted": true, "reason": "x"}),
        ),
        "not an authorized controller",
    );
    accepted(submit(
        &data,
        Some(&bot_file),
        "doors",
        "access",
        json!({"door": "front", "badge": "ab".repeat(32), "time": 1, "granted": false, "reason": "Bob has not paid dues"}),
    ));

    // Malformed --args never leaves the machine.
    let err =
        fails(utter(&data).args(["tx", "submit", "membership", "suspend", "--args", "{key:"]));
    assert!(err.contains("is not JSON"), "{err}");
    // A replay (nonce 1 of the node key, used by the first transaction)
    // and a line that is not a transaction are refused at the door.
    let replay = ok(utter(&data).args([
        "tx",
        "sign",
        "membership",
        "suspend",
        "--args",
        &json!({"key": bob}).to_string(),
        "--nonce",
        "1",
    ]));
    let (status, v) = http(
        &node.url,
        "POST",
        "/v1/txs",
        &format!("{replay}not a transaction\n"),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["txs"][0]["status"], "refused", "{v}");
    assert!(
        v["txs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("already used this nonce"),
        "{v}"
    );
    assert_eq!(v["txs"][1]["status"], "refused", "{v}");
    let (status, v) = http(&node.url, "POST", "/v1/txs", "");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["code"], "bad_request", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no transactions"),
        "{v}"
    );
    let (status, v) = http(&node.url, "GET", &format!("/v1/txs/{}", "0".repeat(64)), "");
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("unknown_tx")),
        "{v}"
    );
    let (status, v) = http(&node.url, "GET", "/v1/status", "");
    assert_eq!((status, v["chain"].as_str()), (200, Some("space")), "{v}");

    // Reads work beside the running node, and the chain re-executes.
    let members: Vec<Value> = ok(utter(&data).args(["members", "ls", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(members.len(), 2);
    let books: Value =
        serde_json::from_str(&ok(utter(&data).args(["accounting", "balances", "--json"]))).unwrap();
    assert_eq!(books["accounts"][0]["name"], "Bob");
    assert_eq!(books["accounts"][0]["balance"], 10);
    let log = ok(utter(&data).args(["doors", "log", "--json"]));
    assert_eq!(log.lines().count(), 1, "{log}");
    let verified = ok(utter(&data).args(["verify", "--reexecute"]));
    assert!(
        verified.contains("each gives exactly its state"),
        "{verified}"
    );
    drop(node);
    // Nothing waits after a clean stop; the node comes back on the same chain.
    let node = Node::start(&data, &[]);
    let (_, v) = http(&node.url, "GET", "/v1/status", "");
    assert_eq!(v["mempool"], 0, "{v}");
}

#[test]
fn a_node_killed_mid_block_restarts_with_every_accepted_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(utter(&data).args(["init", "--chain", "space"]));
    let admin = public_key(&data);
    let node = Node::start(&data, &[]);
    accepted(submit(
        &data,
        None,
        "membership",
        "add-member",
        json!({"key": admin, "name": "Ada", "roles": ["admin"], "salt": SALT}),
    ));
    drop(node);
    // A kill between taking a ref's lock and renaming it leaves the lock;
    // the restarted node must clear it, or it can never move main again.
    std::fs::write(data.join("ledger.git/refs/heads/main.lock"), "").unwrap();
    let mut all_ids: Vec<String> = Vec::new();
    let mut waiting_at_restart = 0;
    for (round, delay_ms) in [0u64, 15, 40, 90].into_iter().enumerate() {
        let node = Node::start(&data, &["--block-txs", "150"]);
        let reqs: String = (0..400)
            .map(|i| {
                json!({"dapp": "membership", "action": "update-member",
                       "args": {"key": admin, "name": format!("Ada {round}-{i}")}})
                .to_string()
                    + "\n"
            })
            .collect();
        let reqs_path = file(tmp.path(), "reqs.jsonl", reqs.as_bytes());
        // Without --wait: the answer comes once the mempool holds them on disk.
        let answers: Value = serde_json::from_str(&ok(utter(&data)
            .args(["tx", "submit", "--json", "--file"])
            .arg(&reqs_path)))
        .unwrap();
        let ids: Vec<String> = answers
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                assert_eq!(a["status"], "pending", "{a}");
                a["id"].as_str().unwrap().to_string()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill_9();
        all_ids.extend(ids);
        // Restarted, the node finishes what it accepted.
        let node = Node::start(&data, &[]);
        let (_, status) = http(&node.url, "GET", "/v1/status", "");
        waiting_at_restart += status["mempool"].as_u64().unwrap();
        for id in &all_ids {
            let (status, v) = http(&node.url, "GET", &format!("/v1/txs/{id}?wait=60"), "");
            assert_eq!(
                (status, v["status"].as_str()),
                (200, Some("committed")),
                "round {round}: {v}"
            );
            assert_eq!(v["result"]["status"], "accepted", "{v}");
        }
        let (_, status) = http(&node.url, "GET", "/v1/status", "");
        assert_eq!(status["mempool"], 0, "{status}");
        drop(node);
    }
    assert!(
        waiting_at_restart > 0,
        "some kill should land before the node committed everything"
    );
    // Each accepted transaction is in exactly one block, and every block
    // re-executes to its own state.
    let mut seen = std::collections::HashMap::new();
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(data.join("ledger.git"))
        .args(["log", "--format=%H", "main"])
        .output()
        .unwrap();
    for commit in String::from_utf8_lossy(&out.stdout).lines() {
        let results = Command::new("git")
            .arg("--git-dir")
            .arg(data.join("ledger.git"))
            .args(["show", &format!("{commit}:block/results.jsonl")])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&results.stdout).lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            *seen
                .entry(v["tx"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    for id in &all_ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{id} should be in exactly one block"
        );
    }
    let verified = ok(utter(&data).args(["verify", "--reexecute"]));
    assert!(
        verified.contains("each gives exactly its state"),
        "{verified}"
    );
}

#[test]
fn the_accounting_export_balances_the_same_in_ledger_cli_and_hledger() {
    let (tmp, data, node, admin) = space();
    let (bob_file, bob) = ssh_key(tmp.path(), "bob");
    accepted(submit(
        &data,
        None,
        "membership",
        "add-member",
        json!({"key": admin, "name": "Ada Lovelace", "roles": ["admin", "treasurer"], "salt": SALT}),
    ));
    accepted(submit(
        &data,
        None,
        "membership",
        "add-member",
        json!({"key": bob, "name": "Bob"}),
    ));
    accepted(submit(
        &data,
        None,
        "accounting",
        "set-dues",
        json!({"per_month": 7}),
    ));
    accepted(submit(
        &data,
        None,
        "accounting",
        "mint",
        json!({"to": bob, "amount": 100, "memo": "grant; \"quoted\""}),
    ));
    accepted(submit(
        &data,
        None,
        "accounting",
        "mint",
        json!({"to": admin, "amount": 5}),
    ));
    accepted(submit(
        &data,
        Some(&bob_file),
        "accounting",
        "transfer",
        json!({"to": admin, "amount": 30}),
    ));
    accepted(submit(
        &data,
        Some(&bob_file),
        "accounting",
        "pay-dues",
        json!({"months": 2}),
    ));
    accepted(submit(
        &data,
        Some(&bob_file),
        "accounting",
        "escrow-open",
        json!({"name": "lease-1", "payee": admin, "amount": 20}),
    ));
    accepted(submit(
        &data,
        Some(&bob_file),
        "accounting",
        "escrow-release",
        json!({"name": "lease-1", "pay": 12}),
    ));
    accepted(submit(
        &data,
        Some(&bob_file),
        "accounting",
        "escrow-open",
        json!({"name": "lease-2", "payee": admin, "amount": 9}),
    ));
    drop(node);

    let books: Value =
        serde_json::from_str(&ok(utter(&data).args(["accounting", "balances", "--json"]))).unwrap();
    let mut expected: Vec<(String, i64)> = books["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["account"].as_str().unwrap().to_string(),
                a["balance"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        expected.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![47, 35],
        "Ada 5 + 30 + 12; Bob 100 - 30 - 14 - 20 + 8 - 9"
    );
    expected.push(("equity:issued".into(), -105));
    expected.push(("escrow:lease-2".into(), 9));
    expected.push(("income:dues".into(), 14));
    expected.sort();
    let journal = tmp.path().join("books.ledger");
    ok(utter(&data)
        .args(["accounting", "export", "--format", "ledger", "-o"])
        .arg(&journal));
    let again = ok(utter(&data).args(["accounting", "export", "--format", "ledger"]));
    assert_eq!(
        again,
        std::fs::read_to_string(&journal).unwrap(),
        "the export is stable"
    );
    for tool in ["ledger", "hledger"] {
        let out = Command::new(tool)
            .arg("-f")
            .arg(&journal)
            .args(["balance", "--flat", "--no-total"])
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: Vec<(String, i64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let n: i64 = w.next()?.parse().ok()?;
                let commodity = w.next()?;
                assert_eq!(commodity, "CR", "{l}");
                Some((w.collect::<Vec<_>>().join(" "), n))
            })
            .filter(|(_, n)| *n != 0)
            .collect();
        got.sort();
        assert_eq!(
            got, expected,
            "{tool} reads the same balances utter reports"
        );
    }
}

#[test]
fn the_demo_runs_a_day_at_the_makerspace_and_replaces_only_its_own_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-data");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_utter"));
    demo.arg("--data-dir").arg(&dir).arg("demo");
    let out = ok(&mut demo);
    for line in [
        "Bob tries to send Lin 500 CR: rejected (Bob has 100 CR, which is less than 500 CR)",
        "DENIED  Bob                  Bob has not paid dues",
        "DENIED  Sue                  Sue is suspended",
        "DENIED  Lin                  Lin is not certified for woodshop",
        "open    Max                  Max may enter",
        "issued 600 CR, paid as dues 125 CR",
        "each gives exactly its state",
    ] {
        assert!(out.contains(line), "the demo should print {line:?}:\n{out}");
    }
    // Again: it replaces its own data dir.
    ok(&mut demo);
    // Never a data dir it did not make.
    let other = tmp.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    file(&other, "precious", b"keep me");
    let err = fails(
        Command::new(env!("CARGO_BIN_EXE_utter"))
            .arg("--data-dir")
            .arg(&other)
            .arg("demo"),
    );
    assert!(err.contains("did not make"), "{err}");
    assert_eq!(std::fs::read(other.join("precious")).unwrap(), b"keep me");
}

#[test]
fn every_bad_request_gets_a_code_and_a_message_and_stores_nothing() {
    let (_tmp, _data, node, _admin) = space();
    let code = |(status, v): (u16, Value)| {
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "every error has a message: {v}"
        );
        (status, v["code"].as_str().unwrap_or("").to_string())
    };
    let is = |got: (u16, String), want: (u16, &str)| assert_eq!((got.0, got.1.as_str()), want);
    // Routes and methods.
    is(
        code(http(&node.url, "GET", "/v1/nope", "")),
        (404, "not_found"),
    );
    is(
        code(http(&node.url, "GET", "/v2/status", "")),
        (404, "not_found"),
    );
    is(
        code(http(&node.url, "DELETE", "/v1/status", "")),
        (405, "method_not_allowed"),
    );
    is(
        code(http(&node.url, "GET", "/v1/txs", "")),
        (405, "method_not_allowed"),
    );
    // Malformed queries and paths.
    is(
        code(http(&node.url, "GET", "/v1/nonce", "")),
        (400, "bad_request"),
    );
    is(
        code(http(&node.url, "GET", "/v1/txs/not-an-id", "")),
        (400, "bad_request"),
    );
    let id = "ab".repeat(32);
    is(
        code(http(
            &node.url,
            "GET",
            &format!("/v1/txs/{id}?wait=soon"),
            "",
        )),
        (400, "bad_request"),
    );
    is(
        code(http(&node.url, "GET", "/v1/blocks?after=zz", "")),
        (400, "bad_request"),
    );
    is(
        code(http(
            &node.url,
            "GET",
            &format!("/v1/blocks?after={}", "cd".repeat(20)),
            "",
        )),
        (409, "not_on_main"),
    );
    is(
        code(http(
            &node.url,
            "GET",
            "/v1/state/membership/no/such/file",
            "",
        )),
        (404, "no_file"),
    );
    // Bodies: not UTF-8, oversized, too many lines; malformed JSON lines
    // are refused one by one.
    is(
        code(raw(&node.url, "POST", "/v1/txs", &[0xff, 0xfe, b'\n'])),
        (400, "bad_request"),
    );
    let huge = vec![b'x'; (32 << 20) + 1];
    is(
        code(raw(&node.url, "POST", "/v1/txs", &huge)),
        (413, "too_large"),
    );
    let many = "{}\n".repeat(10_001);
    is(
        code(raw(&node.url, "POST", "/v1/txs", many.as_bytes())),
        (413, "too_large"),
    );
    let (status, v) = raw(
        &node.url,
        "POST",
        "/v1/txs",
        b"{\"sig\": \"x\", \"tx\": {\n[1,2\n",
    );
    assert_eq!(status, 200, "{v}");
    for answer in v["txs"].as_array().unwrap() {
        assert_eq!(answer["status"], "refused", "{v}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("malformed transaction"),
            "{v}"
        );
    }
    // Nothing of it was stored, and the node still serves.
    let (status, v) = http(&node.url, "GET", "/v1/status", "");
    assert_eq!((status, v["mempool"].as_u64()), (200, Some(0)), "{v}");
}

#[test]
fn the_client_follows_main_and_reads_state_and_the_rules_bundle() {
    use utter_client::Client;
    use utter_client::api::TxState;
    use utter_formats::tx::Request;

    let (_tmp, data, node, admin) = space();
    let client = Client::new(&node.url);
    let status = client.status().unwrap();
    assert_eq!(status.chain, "space");
    // Following from the head: the head first.
    let mut follow = client.follow(None).poll(Duration::from_secs(5));
    let head = follow.next().unwrap().unwrap();
    assert_eq!((head.id, head.height), (status.head, 0));
    let key = utter_ledger::key::Keypair::load(&data.join("keys/node")).unwrap();
    let sent = client
        .sign_and_submit(
            &key,
            vec![Request::new(
                "membership",
                "add-member",
                json!({"key": admin, "name": "Ada", "salt": SALT}),
            )],
        )
        .unwrap();
    assert!(matches!(sent[0].1, TxState::Pending { .. }), "{sent:?}");
    // The next block comes to the follower by itself.
    let next = follow.next().unwrap().unwrap();
    assert_eq!(next.height, 1);
    assert_eq!(next.parents, vec![head.id]);
    assert_eq!(next.txs, 1);
    let done = client
        .wait_all(&[sent[0].1.id()], Duration::from_secs(60), |_| {})
        .unwrap();
    assert!(
        matches!(&done[0], TxState::Committed { block, .. } if *block == next.id),
        "{done:?}"
    );
    // State reads: a file, and a missing one.
    let salt = client.state("membership", "salt", None).unwrap().unwrap();
    assert_eq!(salt.block, next.id);
    assert_eq!(String::from_utf8(salt.bytes).unwrap().trim(), SALT);
    assert!(
        client
            .state("membership", "nothing", None)
            .unwrap()
            .is_none()
    );
    let at_genesis = client
        .state("membership", "salt", Some(&head.id.to_string()))
        .unwrap();
    assert!(at_genesis.is_none(), "no salt before the first member");
    // The rules bundle decides as the chain's own state does.
    let bundle = client.rules().unwrap();
    assert_eq!(bundle.block, next.id);
    assert!(
        bundle.files.contains_key("membership/salt"),
        "{:?}",
        bundle.files.keys()
    );
    assert!(bundle.files.keys().all(|k| !k.starts_with("doors/log")));
    let dir = tempfile::tempdir().unwrap();
    bundle.write_to(dir.path()).unwrap();
    let mut rules = utter_doors::Rules::at(dir.path());
    let decision = utter_doors::may_open(&mut rules, "front", &"ab".repeat(32), 1);
    assert!(!decision.granted);
    assert!(decision.reason.contains("no door"), "{}", decision.reason);
    // A bundle that names a path outside its directory writes nothing.
    let mut hostile = bundle.clone();
    hostile.files.insert("../escape".into(), "x".into());
    let target = dir.path().join("hostile");
    assert!(hostile.write_to(&target).is_err());
    assert!(!target.exists());
}

/// A batch that mixes lines already pending, repeats, lines with a broken
/// signature and new lines gets one answer per line, in order: admission
/// checks only the signatures of lines it does not hold already, and that
/// bookkeeping must not shift an answer onto the wrong line.
#[test]
fn a_batch_of_pending_repeated_forged_and_new_lines_gets_each_its_own_answer() {
    let (tmp, data, node, _admin) = space();
    let reqs = tmp.path().join("reqs.jsonl");
    let hello =
        |n: u32| json!({"dapp": "nosuch", "action": "hello", "args": {"n": n}}).to_string() + "\n";
    file(
        tmp.path(),
        "reqs.jsonl",
        (0..3).map(hello).collect::<String>().as_bytes(),
    );
    let signed = ok(utter(&data)
        .args(["tx", "sign", "--nonce", "1", "--file"])
        .arg(&reqs));
    let lines: Vec<&str> = signed.lines().collect();
    assert_eq!(lines.len(), 3, "{signed}");
    // The same transaction, its signature made for other bytes.
    let other = ok(utter(&data)
        .args(["tx", "sign", "--nonce", "9", "--file"])
        .arg(&reqs));
    let other_sig: Value = serde_json::from_str(other.lines().next().unwrap()).unwrap();
    let mut forged: Value = serde_json::from_str(lines[2]).unwrap();
    forged["sig"] = other_sig["sig"].clone();
    let forged = serde_json::to_string(&forged).unwrap();
    let post = |body: &[&str]| -> Vec<(String, String)> {
        let (status, v) = raw(
            &node.url,
            "POST",
            "/v1/txs",
            (body.join("\n") + "\n").as_bytes(),
        );
        assert_eq!(status, 200, "{v}");
        v["txs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["status"].as_str().unwrap().to_string(),
                    a["error"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let first = post(&[lines[0], lines[0], &forged, lines[1]]);
    assert_eq!(first[0].0, "pending", "{first:?}");
    assert_eq!(first[1].0, "pending", "{first:?}");
    assert_eq!(first[2].0, "refused", "{first:?}");
    assert!(first[2].1.contains("signature"), "{first:?}");
    assert_eq!(first[3].0, "pending", "{first:?}");
    // Again, with the first two held (pending or committed by now), the
    // forged line between them and a new line last.
    let second = post(&[lines[1], &forged, lines[0], lines[2], &forged]);
    let held = |s: &str| s == "pending" || s == "committed";
    assert!(held(&second[0].0), "{second:?}");
    assert_eq!(second[1].0, "refused", "{second:?}");
    assert!(second[1].1.contains("signature"), "{second:?}");
    assert!(held(&second[2].0), "{second:?}");
    assert_eq!(second[3].0, "pending", "{second:?}");
    assert_eq!(second[4].0, "refused", "{second:?}");
    assert!(second[4].1.contains("signature"), "{second:?}");
}

//! The door controller end to end: a devnet of four validators and the
//! door's follower node, each in a network namespace the test makes, and
//! the real `doorbot` beside the follower (stdin reader, printed relay).
//! Oracles: the relay's printed transitions, the controller's own journal,
//! and main on every node (each event once).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use utter_formats::TxId;

use super::*;
use crate::devnet::{NetnsDevnet, committed, height, wait_until};
use crate::net::{Node, in_ns};

const SALT: &str = "0123456789abcdef0123456789abcdef";

/// The `doorbot` binary, built beside `utter` (its package's tests make
/// cargo build it; alone, it is built here).
fn doorbot_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_utter")).with_file_name("doorbot");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let ok = Command::new(cargo)
            .current_dir(utter_testkit::workspace())
            .args(["build", "--offline", "--workspace", "--bins"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok && bin.exists(), "cannot build doorbot");
    }
    bin
}

/// The badge hash a member's card has (what an admin's client computes).
fn badge(card: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(SALT.as_bytes());
    h.update(format!("{card:010}").as_bytes());
    h.finalize().to_hex().to_string()
}

/// A running doorbot: stdin to badge, its printed relay collected.
struct Doorbot {
    child: Child,
    stdin: ChildStdin,
    relay: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Doorbot {
    fn start(ns: &str, config: &Path) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(doorbot_bin())
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("doorbot starts");
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    l.lock().unwrap().push(line);
                }
            });
            lines
        };
        let relay = collect(Box::new(child.stdout.take().unwrap()));
        let log = collect(Box::new(child.stderr.take().unwrap()));
        let stdin = child.stdin.take().unwrap();
        Self {
            child,
            stdin,
            relay,
            log,
        }
    }

    fn card(&mut self, card: u64) {
        writeln!(self.stdin, "{card:010}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn strike_ons(&self) -> usize {
        self.relay
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.ends_with("strike on"))
            .count()
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Doorbot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller's journal: each event's id and its args.
fn journal(state: &Path) -> Vec<(TxId, Value)> {
    std::fs::read_to_string(state.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (TxId::of_line(l), v["tx"]["args"].clone())
        })
        .collect()
}

fn status(config: &Path) -> Value {
    let out = Command::new(doorbot_bin())
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Badges `card` and waits for the event it makes; its args. A read while
/// the door is still open or backing off is ignored (as it should be), so
/// the card is shown again each second until the door takes it.
fn decide(bot: &mut Doorbot, state: &Path, card: u64) -> Value {
    let before = journal(state).len();
    let started = Instant::now();
    while journal(state).len() == before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the door never decided"
        );
        bot.card(card);
        let shown = Instant::now();
        while journal(state).len() == before && shown.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let j = journal(state);
    assert_eq!(j.len(), before + 1, "one read, one event");
    j[before].1.clone()
}

#[test]
fn a_door_cut_off_keeps_deciding_offline_and_every_event_reaches_main_once() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let net = NetnsDevnet::new(tmp.path(), &[]);
    let lan = &net.lan;
    let data = |i: usize| net.data(i);
    let start = |i: usize| net.start(i);
    let mut nodes: Vec<Option<Node>> = (1..=5).map(|i| Some(start(i))).collect();

    // The makerspace: Ada (admin), Max, Sue (suspended), Cy; the front
    // door and its controller.
    let (ada, ada_pub) = ssh_key(tmp.path(), "ada");
    let keys: Vec<String> = ["max", "sue", "cy"]
        .iter()
        .map(|n| ssh_key(tmp.path(), n).1)
        .collect();
    let (max, sue, cy) = (2, 3, 4);
    let door_key = tmp.path().join("door.key");
    let enrolled: Value = serde_json::from_slice(
        &Command::new(doorbot_bin())
            .args(["enroll", "--door", "front", "--json", "--key"])
            .arg(&door_key)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let submit = |requests: &[Value]| {
        let file = tmp.path().join("requests.jsonl");
        let text: Vec<String> = requests.iter().map(Value::to_string).collect();
        std::fs::write(&file, text.join("\n") + "\n").unwrap();
        ok(in_ns(Some(&lan.ns(1)), &data(1))
            .args(["tx", "submit", "--wait", "--key"])
            .arg(&ada)
            .arg("--file")
            .arg(&file));
    };
    let mut setup = vec![json!({"dapp": "membership", "action": "add-member",
        "args": {"key": ada_pub, "name": "Ada", "roles": ["admin"], "salt": SALT}})];
    for (i, name) in ["Max", "Sue", "Cy"].iter().enumerate() {
        setup.push(json!({"dapp": "membership", "action": "add-member",
            "args": {"key": keys[i], "name": name}}));
        setup.push(json!({"dapp": "membership", "action": "add-badge",
            "args": {"key": keys[i], "badge": badge(i as u64 + 2)}}));
    }
    setup.push(json!({"dapp": "doors", "action": "define-door", "args": {"name": "front"}}));
    setup.push(json!({"dapp": "doors", "action": "authorize-controller",
        "args": {"door": "front", "key": enrolled["public"]}}));
    setup.push(json!({"dapp": "membership", "action": "suspend", "args": {"key": keys[1]}}));
    submit(&setup);
    let set_up = height(&data(1));

    let state = tmp.path().join("door");
    let config = tmp.path().join("doorbot.toml");
    std::fs::write(
        &config,
        format!(
            "door = \"front\"\nnode_addr_file = {:?}\nkey = {door_key:?}\nstate_dir = {state:?}\n\
             [timing]\nopen_ms = 300\ndeny_ms = 200\nerror_ms = 200\n\
             [reader]\nkind = \"stdin\"\n[outputs]\nkind = \"print\"\n",
            data(5).join("node.addr")
        ),
    )
    .unwrap();
    let mut bot = Doorbot::start(&lan.ns(5), &config);
    wait_until("the door has the rules", Duration::from_secs(60), || {
        status(&config)["rules_height"].as_u64() >= Some(set_up)
    });
    let e = decide(&mut bot, &state, max);
    assert_eq!(e["granted"], true, "{e}");
    wait_until("the strike", Duration::from_secs(5), || {
        bot.strike_ons() == 1
    });

    // The door's node is cut off from the validators.
    lan.partition(&[&[1, 2, 3, 4]]);
    let e = decide(&mut bot, &state, max);
    assert_eq!(e["granted"], true, "offline, a member opens: {e}");
    let e = decide(&mut bot, &state, sue);
    assert_eq!(
        e["granted"], false,
        "offline, the suspended are denied: {e}"
    );
    assert!(e["reason"].as_str().unwrap().contains("suspended"), "{e}");
    // Max is suspended while the door is offline.
    submit(&[json!({"dapp": "membership", "action": "suspend", "args": {"key": keys[0]}})]);
    let suspended = height(&data(1));
    let e = decide(&mut bot, &state, cy);
    assert_eq!(e["granted"], true, "{e}");
    wait_until(
        "the cut-off node records the door's events on its branch",
        Duration::from_secs(30),
        || status(&config)["unconfirmed"].as_u64() >= Some(3),
    );
    lan.heal();
    let healed = Instant::now();
    wait_until(
        "the heal brings the suspension to the door",
        Duration::from_secs(60),
        || status(&config)["rules_height"].as_u64() >= Some(suspended),
    );
    eprintln!(
        "the suspension reached the door {:.1} s after the heal",
        healed.elapsed().as_secs_f64()
    );
    let e = decide(&mut bot, &state, max);
    assert_eq!(e["granted"], false, "denied once the block came: {e}");
    assert!(
        e["reason"].as_str().unwrap().contains("Max is suspended"),
        "{e}"
    );
    let every_event_once = |what: &str, ids: &[TxId], on: &[usize]| {
        wait_until(what, Duration::from_secs(90), || {
            on.iter().all(|i| {
                let (_, counts) = committed(&data(*i));
                ids.iter().all(|id| counts.get(id) == Some(&1))
            })
        });
    };
    let ids: Vec<TxId> = journal(&state).into_iter().map(|(id, _)| id).collect();
    every_event_once("the offline events on main, once", &ids, &[1, 2, 3, 4, 5]);

    // doorbot killed -9 just after an open: the event is still recorded.
    let opened_before = bot.strike_ons();
    let e = decide(&mut bot, &state, cy);
    assert_eq!(e["granted"], true, "{e}");
    wait_until("the open", Duration::from_secs(10), || {
        bot.strike_ons() > opened_before
    });
    bot.kill_9();
    let (last, args) = journal(&state).pop().unwrap();
    assert_eq!(args["granted"], true);
    let mut bot = Doorbot::start(&lan.ns(5), &config);
    every_event_once("the event of the kill -9 on main", &[last], &[1]);

    // The door's node is killed: the door keeps deciding, and queues.
    nodes[4].take().unwrap().kill_9();
    wait_until(
        "the door sees its node gone",
        Duration::from_secs(30),
        || status(&config)["node_reachable"] == false,
    );
    let e = decide(&mut bot, &state, cy);
    assert_eq!(
        e["granted"], true,
        "the node is down, the door still decides: {e}"
    );
    wait_until("the event queued", Duration::from_secs(10), || {
        status(&config)["queued"].as_u64() >= Some(1)
    });
    nodes[4] = Some(start(5));
    let ids: Vec<TxId> = journal(&state).into_iter().map(|(id, _)| id).collect();
    every_event_once(
        "every event on main once, on every node",
        &ids,
        &[1, 2, 3, 4, 5],
    );
    wait_until("the door's queue empties", Duration::from_secs(60), || {
        let s = status(&config);
        s["queued"] == 0 && s["unconfirmed"] == 0
    });
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "one transaction per event"
    );
    let log = ok(utter(&data(1)).args(["doors", "log", "--json", "--door", "front"]));
    assert_eq!(log.lines().count(), ids.len(), "{log}");
    let badges: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["badge"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        badges.iter().all(|b| b.len() == 64),
        "only hashes on the ledger"
    );
    let printed = bot.log.lock().unwrap().join("\n");
    for card in 2..=4u64 {
        assert!(
            !printed.contains(&format!("{card:010}")),
            "a card number in the log: {printed}"
        );
    }
    drop(bot);
    drop(nodes);
    let out = ok(utter(&data(1)).args(["verify", "--reexecute"]));
    assert!(out.contains("carry a commit certificate"), "{out}");
}

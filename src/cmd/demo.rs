//! `utter demo`: a makerspace on a new chain, run through a real node.
//!
//! Creates the data dir (`utter init`), starts `utter node run` as a child
//! process, and sends signed transactions to its API as the people of a
//! makerspace would: the first admin, members and their badges, doors and
//! their controllers, a trainer's certification, credits, dues, a
//! transfer and an overdraft. Then a door controller that was offline
//! uploads a day of door events it decided itself with `may_open`. It
//! prints who came in, who was denied and why, the balances, and shows
//! the ledger with `git log` and `utter verify`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use utter_doors::{Rules, may_open};
use utter_ledger::MAIN;
use utter_ledger::key::Keypair;

use crate::chain;
use crate::query::materialize;
use crate::submit::Client;

/// Marks a data dir `utter demo` made, so a later run may replace it.
const MARKER: &str = ".utter-demo";

/// `utter demo`
#[derive(Args)]
pub struct DemoArgs {
    /// Leave the node running at the end (stop it with ctrl-c)
    #[arg(long)]
    keep_running: bool,
}

struct Person {
    name: &'static str,
    card: &'static str,
    key: Keypair,
}

struct Demo {
    exe: PathBuf,
    data_dir: PathBuf,
    client: Client,
    latencies: Vec<Duration>,
    txs: usize,
}

/// Stops the node when the demo ends, however it ends.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.0.wait();
    }
}

fn badge(salt: &str, card: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(salt.as_bytes());
    h.update(card.as_bytes());
    h.finalize().to_hex().to_string()
}

impl Demo {
    fn utter(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.exe)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .with_context(|| format!("cannot run utter {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "utter {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Signs `requests` with `key`, sends them, waits for their block;
    /// returns each one's result.
    fn send(&mut self, key: &Keypair, requests: Vec<chain::Request>) -> Result<Vec<Value>> {
        let status = self.client.status()?;
        let chain_id = status["chain"].as_str().unwrap_or_default().to_string();
        let nonce = self.client.next_nonce(&key.public().to_openssh())?;
        let lines = chain::sign_requests(key, &chain_id, nonce, chain::now(), requests)?;
        let sent = Instant::now();
        let answers = self.client.submit(&lines)?;
        if let Some(refused) = answers.iter().find(|a| a["status"] == "refused") {
            bail!("the node refused a transaction: {}", refused["error"]);
        }
        let ids: Vec<String> = answers
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
        let done = self.client.wait_all(&ids, Duration::from_secs(120), true)?;
        let took = sent.elapsed();
        self.latencies.extend(std::iter::repeat_n(took, done.len()));
        self.txs += done.len();
        Ok(done.into_iter().map(|v| v["result"].clone()).collect())
    }

    /// Like `send`, and every transaction must be accepted.
    fn must(&mut self, what: &str, key: &Keypair, requests: Vec<chain::Request>) -> Result<()> {
        let n = requests.len();
        let results = self.send(key, requests)?;
        for r in &results {
            if r["status"] != "accepted" {
                bail!("{what}: a transaction was rejected: {}", r["reason"]);
            }
        }
        match n {
            1 => println!("  {what}: accepted"),
            n => println!("  {what}: {n} transactions, all accepted"),
        }
        Ok(())
    }
}

fn req(dapp: &str, action: &str, args: Value) -> chain::Request {
    (dapp.to_string(), action.to_string(), args)
}

fn prepare(data_dir: &Path) -> Result<()> {
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        if !data_dir.join(MARKER).exists() {
            bail!(
                "{} holds data that `utter demo` did not make; pass another --data-dir (e.g. --data-dir ./demo-data)",
                data_dir.display()
            );
        }
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("cannot remove the old demo in {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::write(
        data_dir.join(MARKER),
        "made by `utter demo`; it replaces it\n",
    )?;
    Ok(())
}

fn start_node(exe: &Path, data_dir: &Path) -> Result<(NodeProcess, Client)> {
    let addr = crate::node::addr_file(data_dir);
    let log = std::fs::File::create(data_dir.join("node.log"))?;
    let child = Command::new(exe)
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "node",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--block-ms",
            "50",
            "--verbose",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start `utter node run`")?;
    let mut node = NodeProcess(child);
    let started = Instant::now();
    while !addr.exists() {
        if let Some(status) = node.0.try_wait()? {
            bail!(
                "the node exited ({status}) before it served: see {}",
                data_dir.join("node.log").display()
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the node did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = Client::new(data_dir, None);
    client.status()?;
    Ok((node, client))
}

pub fn run(data_dir: &Path, args: DemoArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the utter executable")?;
    prepare(data_dir)?;
    println!("== a makerspace on a new chain, in {}", data_dir.display());
    let mut d = Demo {
        exe: exe.clone(),
        data_dir: data_dir.to_path_buf(),
        client: Client::new(data_dir, None),
        latencies: Vec::new(),
        txs: 0,
    };
    d.utter(&["init", "--chain", "makerspace", "--name", "node1"])?;
    println!(
        "  utter init: genesis with the built-in dapps membership, certifications, doors, accounting and the test dapp invariants"
    );
    let (node, client) = start_node(&exe, data_dir)?;
    d.client = client;
    println!(
        "  utter node run: API on {} (log: {})",
        std::fs::read_to_string(crate::node::addr_file(data_dir))?.trim(),
        data_dir.join("node.log").display()
    );

    let person = |name, card| -> Result<Person> {
        Ok(Person {
            name,
            card,
            key: Keypair::generate(name)?,
        })
    };
    let people = [
        person("Ada", "4417-0001")?,
        person("Tia", "4417-0002")?,
        person("Max", "4417-0003")?,
        person("Sue", "4417-0004")?,
        person("Bob", "4417-0005")?,
        person("Lin", "4417-0006")?,
    ];
    let keys_dir = data_dir.join("demo-keys");
    std::fs::create_dir_all(&keys_dir)?;
    for p in &people {
        crate::key::save(&keys_dir.join(p.name.to_lowercase()), &p.key)?;
    }
    let front_bot = Keypair::generate("front-door")?;
    let shop_bot = Keypair::generate("woodshop-door")?;
    crate::key::save(&keys_dir.join("front-door"), &front_bot)?;
    crate::key::save(&keys_dir.join("woodshop-door"), &shop_bot)?;
    let pk = |i: usize| people[i].key.public().to_openssh();
    let (ada, tia, max, sue, bob, lin) = (0, 1, 2, 3, 4, 5);
    let salt = hex::encode(rand_salt());

    println!("\n== setting up (each step waits for its block)");
    d.must(
        "Ada starts the membership as its first admin and treasurer",
        &people[ada].key,
        vec![req(
            "membership",
            "add-member",
            json!({"key": pk(ada), "name": "Ada", "roles": ["admin", "treasurer"], "salt": salt}),
        )],
    )?;
    let mut setup = Vec::new();
    for (i, roles) in [
        (tia, json!(["trainer"])),
        (max, json!([])),
        (sue, json!([])),
        (bob, json!([])),
        (lin, json!([])),
    ] {
        setup.push(req(
            "membership",
            "add-member",
            json!({"key": pk(i), "name": people[i].name, "roles": roles}),
        ));
    }
    for (i, p) in people.iter().enumerate() {
        setup.push(req(
            "membership",
            "add-badge",
            json!({"key": pk(i), "badge": badge(&salt, p.card)}),
        ));
    }
    setup.push(req(
        "doors",
        "define-door",
        json!({"name": "front", "dues": true}),
    ));
    setup.push(req(
        "doors",
        "define-door",
        json!({"name": "woodshop", "certs": ["woodshop"], "dues": true,
               "schedule": {"days": [1, 2, 3, 4, 5, 6, 7], "from": 480, "to": 1320}}),
    ));
    setup.push(req(
        "doors",
        "define-door",
        json!({"name": "storage", "roles": ["admin", "trainer"]}),
    ));
    for (door, bot) in [
        ("front", &front_bot),
        ("woodshop", &shop_bot),
        ("storage", &shop_bot),
    ] {
        setup.push(req(
            "doors",
            "authorize-controller",
            json!({"door": door, "key": bot.public().to_openssh()}),
        ));
    }
    setup.push(req("accounting", "set-dues", json!({"per_month": 25})));
    d.must(
        "Ada adds five members, six badges (hashes only), three doors and their controllers, and sets dues of 25 CR a month",
        &people[ada].key,
        setup,
    )?;
    let mints = (0..people.len())
        .map(|i| req("accounting", "mint", json!({"to": pk(i), "amount": 100, "memo": format!("welcome credits for {}", people[i].name)})))
        .collect();
    d.must("Ada mints 100 CR for everyone", &people[ada].key, mints)?;
    d.must(
        "Tia certifies Max for the woodshop",
        &people[tia].key,
        vec![req(
            "certifications",
            "certify",
            json!({"member": pk(max), "tool": "woodshop"}),
        )],
    )?;
    for i in [ada, tia, max, sue, lin] {
        d.must(
            &format!("{} pays a month of dues", people[i].name),
            &people[i].key,
            vec![req("accounting", "pay-dues", json!({"months": 1}))],
        )?;
    }
    d.must(
        "Max pays Tia 10 CR for the induction",
        &people[max].key,
        vec![req(
            "accounting",
            "transfer",
            json!({"to": pk(tia), "amount": 10, "memo": "woodshop induction"}),
        )],
    )?;
    let overdraw = d.send(
        &people[bob].key,
        vec![req(
            "accounting",
            "transfer",
            json!({"to": pk(lin), "amount": 500, "memo": "a laser cutter"}),
        )],
    )?;
    println!(
        "  Bob tries to send Lin 500 CR: {} ({})",
        overdraw[0]["status"].as_str().unwrap_or("?"),
        overdraw[0]["reason"].as_str().unwrap_or("")
    );
    d.must(
        "Ada suspends Sue",
        &people[ada].key,
        vec![req("membership", "suspend", json!({"key": pk(sue)}))],
    )?;

    // A day of door events, decided by the controllers offline with the
    // rules as they are now, uploaded afterwards.
    let ledger = crate::ledger::open(data_dir)?;
    let block = ledger.block(ledger.resolve(MAIN)?)?;
    let rules_dir = tempfile::tempdir()?;
    for dapp in ["doors", "membership", "certifications", "accounting"] {
        materialize(&ledger, &block, dapp, rules_dir.path())?;
    }
    drop(ledger);
    let mut rules = Rules::at(rules_dir.path());
    // Yesterday, which the controllers kept offline.
    let day = (chain::now() / 86_400 - 1) * 86_400;
    let at = |h: u64, m: u64| day + h * 3600 + m * 60;
    let visits: Vec<(usize, &str, u64)> = vec![
        (ada, "front", at(8, 5)),
        (ada, "storage", at(8, 9)),
        (max, "front", at(9, 10)),
        (max, "woodshop", at(9, 12)),
        (lin, "front", at(10, 20)),
        (lin, "woodshop", at(10, 22)),
        (bob, "front", at(12, 31)),
        (sue, "front", at(13, 40)),
        (tia, "front", at(17, 45)),
        (tia, "storage", at(17, 47)),
        (tia, "woodshop", at(17, 50)),
        (max, "storage", at(18, 55)),
        (max, "woodshop", at(22, 30)),
    ];
    let mut events = Vec::new();
    let mut shown = Vec::new();
    for (who, door, time) in &visits {
        let b = badge(&salt, people[*who].card);
        let decision = may_open(&mut rules, door, &b, *time);
        events.push((door.to_string(), b, *time, decision.clone()));
        shown.push((
            people[*who].name.to_string(),
            door.to_string(),
            *time,
            decision,
        ));
    }
    let stranger = badge(&salt, "9999-0000");
    let decision = may_open(&mut rules, "front", &stranger, at(23, 59));
    events.push(("front".into(), stranger, at(23, 59), decision.clone()));
    shown.push((
        "(a stranger's card)".into(),
        "front".into(),
        at(23, 59),
        decision,
    ));
    let upload = |bot_door: &str| -> Vec<chain::Request> {
        events
            .iter()
            .filter(|(door, ..)| (bot_door == "front") == (door == "front"))
            .map(|(door, b, time, dec)| {
                req(
                    "doors",
                    "access",
                    json!({"door": door, "badge": b, "time": time,
                                              "granted": dec.granted, "reason": dec.reason}),
                )
            })
            .collect()
    };
    let front_events = upload("front");
    let shop_events = upload("woodshop");
    d.must(
        "the front door's controller uploads its log",
        &front_bot,
        front_events,
    )?;
    d.must(
        "the workshop's controller uploads its log",
        &shop_bot,
        shop_events,
    )?;

    println!("\n== the door log (decided offline by the controllers, now on the ledger)");
    shown.sort_by_key(|(_, _, t, _)| *t);
    for (name, door, time, dec) in &shown {
        println!(
            "  {}  {:<9} {:<7} {:<20} {}",
            crate::ledger::utc(i64::try_from(*time).unwrap_or(0)),
            door,
            if dec.granted { "open" } else { "DENIED" },
            name,
            dec.reason
        );
    }
    println!("\n== balances (utter accounting balances)");
    print!("{}", indent(&d.utter(&["accounting", "balances"])?));
    println!("\n== the ledger is a git repository (git log)");
    let git = Command::new("git")
        .arg("--git-dir")
        .arg(data_dir.join("ledger.git"))
        .args(["log", "--format=%h %s", "-n", "6", MAIN])
        .output();
    match git {
        Ok(out) if out.status.success() => {
            print!("{}", indent(&String::from_utf8_lossy(&out.stdout)))
        }
        _ => println!("  (git is not installed; `utter log` shows the same blocks)"),
    }
    let verify = d
        .utter(&["verify", "--reexecute"])
        .context("the chain does not verify")?;
    println!("\n== utter verify --reexecute (every block re-executed with its dapps)");
    print!("{}", indent(verify.lines().last().unwrap_or("").trim_end()));
    let mut lat = d.latencies.clone();
    lat.sort();
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or_default();
    let status = d.client.status()?;
    println!(
        "\n{} transactions in {} blocks; submit to committed p50 {:.0} ms",
        d.txs,
        status["blocks_made"],
        p50.as_secs_f64() * 1e3
    );
    println!(
        "explore: utter --data-dir {dir} members ls | doors log | accounting export --format ledger | log",
        dir = data_dir.display()
    );
    if args.keep_running {
        println!("the node keeps running; stop it with ctrl-c");
        let mut node = node;
        let _ = node.0.wait();
    } else {
        drop(node);
    }
    std::io::stdout().flush()?;
    Ok(ExitCode::SUCCESS)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn rand_salt() -> [u8; 16] {
    use rand_core::RngCore;
    let mut salt = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut salt);
    salt
}

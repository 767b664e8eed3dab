//! `utter demo`: a makerspace on a new chain, run through a real devnet.
//!
//! Starts a devnet in the data dir (`utter devnet up`: four validators
//! that re-execute and vote on every block, and two followers, the door
//! controllers' nodes), and sends signed transactions to the first
//! validator's API (through the client crate) as the people of a
//! makerspace would: the first admin, members and their badges, doors and
//! their controllers, a trainer's certification, credits, dues, a transfer
//! and an overdraft. Then the door controllers, which were offline, decide
//! a day of badges with `may_open` over the rules bundle their own node
//! serves, and upload it through that node. It prints who came in, who
//! was denied and why, the balances, and shows the ledger with `git log`
//! and `utter verify`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use utter_client::Client;
use utter_client::api::TxState;
use utter_doors::{Decision, Rules, may_open};
use utter_formats::tx::Request;
use utter_formats::{Status, TxResult};
use utter_ledger::MAIN;
use utter_ledger::key::Keypair;
use utter_node::Home;

use crate::ui::utc;

/// Marks a data dir `utter demo` made, so a later run may replace it.
const MARKER: &str = ".utter-demo";

/// `utter demo`
#[derive(Args)]
pub struct DemoArgs {
    /// Leave the devnet running at the end (stop it with `utter devnet
    /// down`)
    #[arg(long)]
    keep_running: bool,
}

/// Stops the devnet when the demo ends, however it ends.
struct DevnetProcess {
    exe: PathBuf,
    dir: PathBuf,
}

impl Drop for DevnetProcess {
    fn drop(&mut self) {
        let _ = Command::new(&self.exe)
            .args(["devnet", "down", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .output();
    }
}

/// A member of the makerspace and their badge.
struct Person {
    name: &'static str,
    card: &'static str,
    key: Keypair,
}

/// Everyone in the demo: six members and two door controllers.
struct Cast {
    people: Vec<Person>,
    front_bot: Keypair,
    shop_bot: Keypair,
    salt: String,
}

const ADA: usize = 0;
const TIA: usize = 1;
const MAX: usize = 2;
const SUE: usize = 3;
const BOB: usize = 4;
const LIN: usize = 5;

impl Cast {
    /// New keys for everyone, saved under `<data dir>/demo-keys`.
    fn new(dir: &Path) -> Result<Self> {
        let person = |name, card| -> Result<Person> {
            Ok(Person {
                name,
                card,
                key: Keypair::generate(name)?,
            })
        };
        let people = vec![
            person("Ada", "4417-0001")?,
            person("Tia", "4417-0002")?,
            person("Max", "4417-0003")?,
            person("Sue", "4417-0004")?,
            person("Bob", "4417-0005")?,
            person("Lin", "4417-0006")?,
        ];
        let keys = dir.join("demo-keys");
        for p in &people {
            Home::save_key(&keys.join(p.name.to_lowercase()), &p.key)?;
        }
        let front_bot = Keypair::generate("front-door")?;
        let shop_bot = Keypair::generate("woodshop-door")?;
        Home::save_key(&keys.join("front-door"), &front_bot)?;
        Home::save_key(&keys.join("woodshop-door"), &shop_bot)?;
        Ok(Self {
            people,
            front_bot,
            shop_bot,
            salt: hex::encode(rand_salt()),
        })
    }

    fn key(&self, i: usize) -> String {
        self.people[i].key.public().to_openssh()
    }

    /// The salted hash a reader makes of a card number.
    fn badge(&self, card: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.salt.as_bytes());
        h.update(card.as_bytes());
        h.finalize().to_hex().to_string()
    }
}

/// The demo's chain and what it measured.
struct Demo {
    exe: PathBuf,
    /// The first validator's data dir.
    dir: PathBuf,
    /// The first validator's API: the people's transactions go there.
    client: Client,
    /// The front door's and the workshop's follower nodes.
    front: Client,
    shop: Client,
    latencies: Vec<Duration>,
    txs: usize,
}

impl Demo {
    fn utter(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.exe)
            .arg("--data-dir")
            .arg(&self.dir)
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
    fn send(&mut self, key: &Keypair, requests: Vec<Request>) -> Result<Vec<TxResult>> {
        let client = self.client.clone();
        self.send_via(&client, key, requests)
    }

    /// Like `send`, through the node `client` talks to.
    fn send_via(
        &mut self,
        client: &Client,
        key: &Keypair,
        requests: Vec<Request>,
    ) -> Result<Vec<TxResult>> {
        let sent = Instant::now();
        let states = client.sign_and_submit(key, requests)?;
        let mut ids = Vec::with_capacity(states.len());
        for (_, state) in &states {
            if let TxState::Refused { error, .. } = state {
                bail!("the node refused a transaction: {error}");
            }
            ids.push(state.id());
        }
        let done = client.wait_all(&ids, Duration::from_secs(120), |_| {})?;
        let took = sent.elapsed();
        self.latencies.extend(std::iter::repeat_n(took, done.len()));
        self.txs += done.len();
        Ok(done
            .into_iter()
            .filter_map(|s| s.result().cloned())
            .collect())
    }

    /// Like `send`, and every transaction must be accepted.
    fn must(&mut self, what: &str, key: &Keypair, requests: Vec<Request>) -> Result<()> {
        let client = self.client.clone();
        self.must_via(&client, what, key, requests)
    }

    /// Like `must`, through the node `client` talks to.
    fn must_via(
        &mut self,
        client: &Client,
        what: &str,
        key: &Keypair,
        requests: Vec<Request>,
    ) -> Result<()> {
        let n = requests.len();
        for r in self.send_via(client, key, requests)? {
            if r.status != Status::Accepted {
                bail!(
                    "{what}: a transaction was rejected: {}",
                    r.reason.unwrap_or_default()
                );
            }
        }
        match n {
            1 => println!("  {what}: accepted"),
            n => println!("  {what}: {n} transactions, all accepted"),
        }
        Ok(())
    }
}

fn req(dapp: &str, action: &str, args: Value) -> Request {
    Request::new(dapp, action, args)
}

fn prepare(dir: &Path) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{} holds data that `utter demo` did not make; pass another --data-dir (e.g. --data-dir ./demo-data)",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the old demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by `utter demo`; it replaces it\n")?;
    Ok(())
}

/// Starts the demo's devnet in `dir`: four validators and two followers
/// (the front door's and the workshop's nodes); returns the guard that
/// stops it and each node's API, by name.
fn start_devnet(exe: &Path, dir: &Path) -> Result<(DevnetProcess, Vec<(String, String)>)> {
    let out = Command::new(exe)
        .args(["devnet", "up", "--validators", "4", "--followers", "2"])
        .args(["--chain", "makerspace", "--json", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `utter devnet up`")?;
    let guard = DevnetProcess {
        exe: exe.to_path_buf(),
        dir: dir.to_path_buf(),
    };
    if !out.status.success() {
        bail!(
            "utter devnet up failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let up: Value = serde_json::from_slice(&out.stdout).context("devnet up --json")?;
    let nodes = up["nodes"]
        .as_array()
        .context("devnet up --json lists its nodes")?
        .iter()
        .filter_map(|n| {
            Some((
                n["name"].as_str()?.to_string(),
                n["api"].as_str()?.to_string(),
            ))
        })
        .collect();
    Ok((guard, nodes))
}

/// The makerspace's first day: members, badges, doors, credits, dues.
fn set_up(d: &mut Demo, cast: &Cast) -> Result<()> {
    let p = &cast.people;
    println!("\n== setting up (each step waits for its block)");
    d.must(
        "Ada starts the membership as its first admin and treasurer",
        &p[ADA].key,
        vec![req(
            "membership",
            "add-member",
            json!({"key": cast.key(ADA), "name": "Ada", "roles": ["admin", "treasurer"], "salt": cast.salt}),
        )],
    )?;
    let mut setup = Vec::new();
    for (i, roles) in [
        (TIA, json!(["trainer"])),
        (MAX, json!([])),
        (SUE, json!([])),
        (BOB, json!([])),
        (LIN, json!([])),
    ] {
        setup.push(req(
            "membership",
            "add-member",
            json!({"key": cast.key(i), "name": p[i].name, "roles": roles}),
        ));
    }
    for (i, person) in p.iter().enumerate() {
        setup.push(req(
            "membership",
            "add-badge",
            json!({"key": cast.key(i), "badge": cast.badge(person.card)}),
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
        ("front", &cast.front_bot),
        ("woodshop", &cast.shop_bot),
        ("storage", &cast.shop_bot),
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
        &p[ADA].key,
        setup,
    )?;
    let mints = (0..p.len())
        .map(|i| req("accounting", "mint", json!({"to": cast.key(i), "amount": 100, "memo": format!("welcome credits for {}", p[i].name)})))
        .collect();
    d.must("Ada mints 100 CR for everyone", &p[ADA].key, mints)?;
    d.must(
        "Tia certifies Max for the woodshop",
        &p[TIA].key,
        vec![req(
            "certifications",
            "certify",
            json!({"member": cast.key(MAX), "tool": "woodshop"}),
        )],
    )?;
    for i in [ADA, TIA, MAX, SUE, LIN] {
        d.must(
            &format!("{} pays a month of dues", p[i].name),
            &p[i].key,
            vec![req("accounting", "pay-dues", json!({"months": 1}))],
        )?;
    }
    d.must(
        "Max pays Tia 10 CR for the induction",
        &p[MAX].key,
        vec![req(
            "accounting",
            "transfer",
            json!({"to": cast.key(TIA), "amount": 10, "memo": "woodshop induction"}),
        )],
    )?;
    let overdraw = d.send(
        &p[BOB].key,
        vec![req(
            "accounting",
            "transfer",
            json!({"to": cast.key(LIN), "amount": 500, "memo": "a laser cutter"}),
        )],
    )?;
    println!(
        "  Bob tries to send Lin 500 CR: {} ({})",
        if overdraw[0].status == Status::Accepted {
            "accepted"
        } else {
            "rejected"
        },
        overdraw[0].reason.as_deref().unwrap_or("")
    );
    d.must(
        "Ada suspends Sue",
        &p[ADA].key,
        vec![req("membership", "suspend", json!({"key": cast.key(SUE)}))],
    )
}

/// One badge at a door, decided by its controller.
struct Visit {
    who: String,
    door: &'static str,
    badge: String,
    time: u64,
    decision: Decision,
}

/// Yesterday, as the controllers decided it offline with `may_open` over
/// the rules bundle they last had from the node.
fn offline_day(d: &Demo, cast: &Cast) -> Result<Vec<Visit>> {
    // The controllers' node follows main by sync: the rules it serves are
    // main's once it is there.
    let main = d.client.status()?.head;
    let started = Instant::now();
    while d.front.status()?.head != main {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the front door's node did not reach main {main} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let bundle = d.front.rules()?;
    let rules_dir = tempfile::tempdir()?;
    bundle.write_to(rules_dir.path())?;
    let mut rules = Rules::at(rules_dir.path());
    let day = (utter_formats::now() / 86_400 - 1) * 86_400;
    let at = |h: u64, m: u64| day + h * 3600 + m * 60;
    let visits: [(usize, &'static str, u64); 13] = [
        (ADA, "front", at(8, 5)),
        (ADA, "storage", at(8, 9)),
        (MAX, "front", at(9, 10)),
        (MAX, "woodshop", at(9, 12)),
        (LIN, "front", at(10, 20)),
        (LIN, "woodshop", at(10, 22)),
        (BOB, "front", at(12, 31)),
        (SUE, "front", at(13, 40)),
        (TIA, "front", at(17, 45)),
        (TIA, "storage", at(17, 47)),
        (TIA, "woodshop", at(17, 50)),
        (MAX, "storage", at(18, 55)),
        (MAX, "woodshop", at(22, 30)),
    ];
    let mut day_log: Vec<Visit> = visits
        .iter()
        .map(|&(who, door, time)| {
            let badge = cast.badge(cast.people[who].card);
            Visit {
                who: cast.people[who].name.to_string(),
                door,
                decision: may_open(&mut rules, door, &badge, time),
                badge,
                time,
            }
        })
        .collect();
    let badge = cast.badge("9999-0000");
    day_log.push(Visit {
        who: "(a stranger's card)".into(),
        door: "front",
        decision: may_open(&mut rules, "front", &badge, at(23, 59)),
        badge,
        time: at(23, 59),
    });
    Ok(day_log)
}

/// Each controller uploads the events of its doors.
fn upload(d: &mut Demo, cast: &Cast, day: &[Visit]) -> Result<()> {
    let events = |front: bool| -> Vec<Request> {
        day.iter()
            .filter(|v| (v.door == "front") == front)
            .map(|v| {
                req(
                    "doors",
                    "access",
                    json!({"door": v.door, "badge": v.badge, "time": v.time,
                           "granted": v.decision.granted, "reason": v.decision.reason}),
                )
            })
            .collect()
    };
    let (front, shop) = (d.front.clone(), d.shop.clone());
    d.must_via(
        &front,
        "the front door's controller uploads its log through its own node",
        &cast.front_bot,
        events(true),
    )?;
    d.must_via(
        &shop,
        "the workshop's controller uploads its log through its own node",
        &cast.shop_bot,
        events(false),
    )
}

/// What the day left on the ledger: the door log, the books, the blocks.
fn report(d: &Demo, day: &mut [Visit]) -> Result<()> {
    println!("\n== the door log (decided offline by the controllers, now on the ledger)");
    day.sort_by_key(|v| v.time);
    for v in day.iter() {
        println!(
            "  {}  {:<9} {:<7} {:<20} {}",
            utc(i64::try_from(v.time).unwrap_or(0)),
            v.door,
            if v.decision.granted { "open" } else { "DENIED" },
            v.who,
            v.decision.reason
        );
    }
    println!("\n== balances (utter accounting balances)");
    print!("{}", indent(&d.utter(&["accounting", "balances"])?));
    println!("\n== the ledger is a git repository (git log)");
    let git = Command::new("git")
        .arg("--git-dir")
        .arg(d.dir.join("ledger.git"))
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
        "\n{} transactions in {} blocks, each re-executed and voted for by 4 validators; submit to committed p50 {:.0} ms",
        d.txs,
        status.height,
        p50.as_secs_f64() * 1e3
    );
    println!(
        "explore: utter --data-dir {dir} members ls | doors log | accounting export --format ledger | log",
        dir = d.dir.display()
    );
    Ok(())
}

pub fn run(dir: &Path, args: DemoArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the utter executable")?;
    let home = Home::new(dir);
    prepare(home.root())?;
    println!("== a makerspace on a new chain, in {}", dir.display());
    let net = home.root().join("net");
    let (devnet, nodes) = start_devnet(&exe, &net)?;
    let api = |name: &str| -> Result<Client> {
        nodes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| Client::new(a))
            .with_context(|| format!("devnet up started no node {name}"))
    };
    println!(
        "  utter devnet up: 4 validators (v1…v4) that re-execute and vote on every block, and 2 followers (f1 for the front door, f2 for the workshop), in {}",
        net.display()
    );
    println!(
        "  one genesis with the built-in dapps membership, certifications, doors, accounting, leases and the test dapp invariants; v1's API on {}",
        api("v1")?.base()
    );
    let mut d = Demo {
        exe: exe.clone(),
        dir: net.join("v1"),
        client: api("v1")?,
        front: api("f1")?,
        shop: api("f2")?,
        latencies: Vec::new(),
        txs: 0,
    };
    let cast = Cast::new(home.root())?;
    set_up(&mut d, &cast)?;
    let mut day = offline_day(&d, &cast)?;
    upload(&mut d, &cast, &day)?;
    report(&d, &mut day)?;
    if args.keep_running {
        println!(
            "the devnet keeps running: `utter devnet status --dir {0}`; stop it with `utter devnet down --dir {0}`",
            net.display()
        );
        std::mem::forget(devnet);
    } else {
        drop(devnet);
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

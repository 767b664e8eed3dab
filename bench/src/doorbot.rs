//! The door controller on its follower node: a devnet of four validators
//! and one follower on loopback, a makerspace of `members` members with
//! badges, and the real `doorbot` beside the follower (stdin reader,
//! printed relay). Prints, in one run:
//!
//! - badge read to relay decision (the line written to doorbot's stdin to
//!   its `strike on`), p50/p99/max, with the chain idle and while the
//!   follower syncs blocks under a steady load offered to the validators,
//!   beside the decision alone (`may_open` over the same rules in memory,
//!   in this process): what the controller adds around the decision;
//! - resident memory of doorbot and of its follower node, idle.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use utter_client::Client;

use crate::cluster::Devnet;
use crate::node::{door_load, offer, utter};
use crate::utter_bin;

/// Options of `utter-bench doorbot`.
pub struct Options {
    pub members: usize,
    pub reads: usize,
    pub rate: usize,
    pub work: Option<std::path::PathBuf>,
    /// Where `utter` and `doorbot` are (default: beside this program).
    pub bin_dir: Option<std::path::PathBuf>,
}

const SALT: &str = "00112233445566778899aabbccddeeff";

fn badge(card: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(SALT.as_bytes());
    h.update(format!("{card:010}").as_bytes());
    h.finalize().to_hex().to_string()
}

struct Bot(Child);

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// VmRSS of a process, MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap_or(&f64::NAN))
}

pub fn run(opts: Options) -> Result<()> {
    let bin = match &opts.bin_dir {
        Some(dir) => dir.join("utter"),
        None => utter_bin()?,
    };
    let doorbot = bin.with_file_name("doorbot");
    if !doorbot.exists() {
        bail!(
            "{} not found: build it (`cargo build --workspace --bins`, or `./x bench`)",
            doorbot.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let work = crate::work_dir(opts.work.clone(), tmp.path())?;
    println!(
        "## doorbot: badge to relay on a follower node, a makerspace of {} members, 4 validators on loopback",
        opts.members
    );
    println!(
        "binaries: {}",
        bin.parent().unwrap_or(Path::new(".")).display()
    );
    let dir = work.join("devnet");
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(&bin)
        .args([
            "devnet",
            "up",
            "--json",
            "--chain",
            "bench",
            "--validators",
            "4",
            "--followers",
            "1",
            "--dir",
        ])
        .arg(&dir)
        .output()?;
    let _down = Devnet(&bin, &dir);
    if !out.status.success() {
        bail!("devnet up: {}", String::from_utf8_lossy(&out.stderr));
    }
    let up: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let validators: Vec<Client> = up["nodes"]
        .as_array()
        .context("devnet up --json lists nodes")?
        .iter()
        .filter(|n| n["name"].as_str().is_some_and(|n| n.starts_with('v')))
        .filter_map(|n| n["api"].as_str())
        .map(Client::new)
        .collect();
    let (v1, f1) = (dir.join("v1"), dir.join("f1"));

    // The space (v1's key is its first admin), the load's lines, and the
    // members with their badges.
    let load_secs = 20usize;
    let lines = door_load(&bin, &v1, &work, "bench", opts.rate * load_secs)?;
    let door_key = work.join("door.key");
    let _ = std::fs::remove_file(&door_key);
    let enrolled: serde_json::Value = serde_json::from_slice(
        &Command::new(&doorbot)
            .args(["enroll", "--door", "front", "--json", "--key"])
            .arg(&door_key)
            .output()?
            .stdout,
    )?;
    let mut requests = vec![json!({"dapp": "doors", "action": "authorize-controller",
        "args": {"door": "front", "key": enrolled["public"]}})];
    for i in 0..opts.members {
        let key = utter_formats::Keypair::generate("member")?
            .public()
            .to_openssh();
        requests.push(json!({"dapp": "membership", "action": "add-member",
            "args": {"key": key, "name": format!("Member {i}")}}));
        requests.push(json!({"dapp": "membership", "action": "add-badge",
            "args": {"key": key, "badge": badge(1_000 + i as u64)}}));
    }
    let file = work.join("members.jsonl");
    let text: String = requests.iter().map(|r| r.to_string() + "\n").collect();
    std::fs::write(&file, text)?;
    utter(
        &bin,
        &v1,
        &[
            "tx",
            "submit",
            "--wait",
            "--file",
            &file.display().to_string(),
        ],
    )?;
    let set_up = validators[0].status()?.height;

    // doorbot on the follower.
    let state = work.join("door");
    let _ = std::fs::remove_dir_all(&state);
    let config = work.join("doorbot.toml");
    std::fs::write(
        &config,
        format!(
            "door = \"front\"\nnode_addr_file = {:?}\nkey = {door_key:?}\nstate_dir = {state:?}\n\
             [timing]\nopen_ms = 20\ndeny_ms = 20\nerror_ms = 20\n\
             [reader]\nkind = \"stdin\"\n[outputs]\nkind = \"print\"\n",
            f1.join("node.addr")
        ),
    )?;
    // As doorbot.service runs it: Nice=-10, so a badge is not queued
    // behind the node's block sync on a 2-core board.
    let mut child = Command::new("nice")
        .args(["-n", "-10"])
        .arg(&doorbot)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.join("doorbot.log"))?)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let bot_pid = child.id();
    let _bot = Bot(child);
    let (tx, rx) = mpsc::channel::<Instant>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.ends_with("strike on") && tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let status = || -> Option<serde_json::Value> {
        let out = Command::new(&doorbot)
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let started = Instant::now();
    while status().and_then(|s| s["rules_height"].as_u64()) < Some(set_up) {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("doorbot did not get the rules of height {set_up}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let f1_pid: u32 = std::fs::read_to_string(f1.join("node.pid"))?
        .trim()
        .parse()?;
    let idle_rss = (rss_mib(bot_pid)?, rss_mib(f1_pid)?);

    // Badge reads: a member's card, then wait for the strike.
    let mut card = 0u64;
    let mut reads = |n: usize| -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            card = (card + 7) % opts.members as u64;
            let sent = Instant::now();
            writeln!(stdin, "{:010}", 1_000 + card)?;
            stdin.flush()?;
            let Ok(on) = rx.recv_timeout(Duration::from_secs(10)) else {
                let log = std::fs::read_to_string(work.join("doorbot.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                bail!(
                    "no strike within 10 s: the member was not let in; doorbot's log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            };
            out.push((on - sent).as_secs_f64() * 1e3);
            // Past the 20 ms open before the next card.
            std::thread::sleep(Duration::from_millis(40));
        }
        Ok(out)
    };
    let idle = reads(opts.reads / 2)?;

    let load = {
        let lines = lines.clone();
        let clients = validators.clone();
        let rate = opts.rate;
        std::thread::spawn(move || offer(&clients, &lines, rate, 50))
    };
    // Let the follower start syncing the load's blocks.
    let h0 = Client::new(std::fs::read_to_string(f1.join("node.addr"))?.trim())
        .status()?
        .height;
    let f1_client = Client::new(std::fs::read_to_string(f1.join("node.addr"))?.trim());
    let waited = Instant::now();
    while f1_client.status()?.height < h0 + 2 && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let loaded = reads(opts.reads)?;
    let h1 = f1_client.status()?.height;
    let busy_rss = (rss_mib(bot_pid)?, rss_mib(f1_pid)?);
    let offered = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load panicked"))??;

    // The decision alone, in this process, over the same rules.
    let bundle = f1_client.rules()?;
    let mut rules =
        utter_doors::Rules::in_memory(bundle.files.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    let now = utter_formats::now();
    let mut alone = Vec::new();
    for i in 0..opts.reads * 10 {
        let b = badge(1_000 + (i as u64 * 7) % opts.members as u64);
        let t = Instant::now();
        let d = utter_doors::may_open(&mut rules, "front", &b, now);
        alone.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(d.granted, "{d:?}");
    }

    let (ip50, ip99, imax) = percentiles(idle);
    let (lp50, lp99, lmax) = percentiles(loaded);
    let (ap50, ap99, amax) = percentiles(alone);
    println!("                                        p50        p99        max      target");
    println!("badge -> strike, chain idle          {ip50:>6.2} ms  {ip99:>6.2} ms  {imax:>6.2} ms");
    println!(
        "badge -> strike, follower syncing    {lp50:>6.2} ms  {lp99:>6.2} ms  {lmax:>6.2} ms   p99 <= 20 ms  {}",
        if lp99 <= 20.0 { "met" } else { "NOT met" }
    );
    println!("may_open alone (in memory)           {ap50:>6.3} ms  {ap99:>6.3} ms  {amax:>6.3} ms");
    println!(
        "under load: {} blocks synced by the follower during the reads, {:.0} tx/s committed of {} offered",
        h1.saturating_sub(h0),
        offered.rate,
        opts.rate
    );
    let (bot_rss, node_rss) = idle_rss;
    println!(
        "resident memory, idle, {} members: doorbot {bot_rss:.1} MiB + follower node {node_rss:.1} MiB = {:.1} MiB   target <= 50 MB ({:.1} MiB)  {}",
        opts.members,
        bot_rss + node_rss,
        50e6 / (1 << 20) as f64,
        if (bot_rss + node_rss) * (1 << 20) as f64 <= 50e6 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "resident memory after the reads (events on the follower's branch, blocks synced): doorbot {:.1} MiB + follower node {:.1} MiB",
        busy_rss.0, busy_rss.1
    );
    Ok(())
}

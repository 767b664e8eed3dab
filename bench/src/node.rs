//! Door `access` transactions through a running node: the whole path
//! (HTTP, signature check and synced mempool at admission, the doors dapp
//! in a container, the invariants test dapp, tree, signed and synced
//! block). Offers a steady rate and measures what is committed and how long
//! each request waits for its block, beside the targets.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use utter_client::Client;
use utter_client::api::TxState;
use utter_formats::TxId;

use crate::utter_bin;

/// Options of `utter-bench node`.
pub struct Options {
    /// Offered load, transactions per second.
    pub rate: usize,
    /// How long the load lasts, seconds.
    pub seconds: u64,
    /// Transactions per request.
    pub batch: usize,
    pub work: Option<std::path::PathBuf>,
}

/// A node process: SIGTERM and wait when dropped.
pub(crate) struct Node(pub(crate) Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

pub(crate) fn utter(bin: &Path, data: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()?;
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = stdout
            .lines()
            .filter(|l| !l.contains(" accepted "))
            .take(5)
            .collect();
        bail!(
            "utter {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(opts: Options) -> Result<()> {
    let bin = utter_bin()?;
    let tmp = tempfile::tempdir()?;
    let work = crate::work_dir(opts.work.clone(), tmp.path())?;
    let data = work.join("data");
    let _ = std::fs::remove_dir_all(&data);
    utter(&bin, &data, &["init", "--chain", "bench"])?;
    let (node, client) = start_node(&bin, &data)?;
    let total = opts.rate * opts.seconds as usize;
    let lines = door_load(&bin, &data, &work, "bench", total)?;
    println!(
        "## node: door access transactions through `utter node run` (HTTP, admission, doors dapp + invariants test dapp, signed synced blocks)"
    );
    println!(
        "offered {} tx/s for {} s in requests of {} ({total} transactions)",
        opts.rate, opts.seconds, opts.batch
    );
    let offered = offer(std::slice::from_ref(&client), &lines, opts.rate, opts.batch)?;
    let blocks = client.status()?.blocks_made;
    println!("                                   measured      target");
    println!(
        "committed, sustained               {:>7.0} tx/s   >= 2000 tx/s  {}",
        offered.rate,
        if offered.rate >= 2000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "submit -> committed, p50           {:>7.0} ms     <= 250 ms     {}",
        offered.p50,
        if offered.p50 <= 250.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "submit -> committed, p90 / max     {:>7.0} / {:.0} ms",
        offered.p90, offered.max
    );
    println!(
        "blocks: {blocks} ({:.0} transactions each on average)",
        offered.committed as f64 / blocks.max(1) as f64
    );
    drop(node);
    let verify = utter(&bin, &data, &["verify"])?;
    println!(
        "utter verify: {}",
        verify.lines().last().unwrap_or("").trim()
    );
    Ok(())
}

/// Starts `utter node run` on `data` and waits for its API.
pub(crate) fn start_node(bin: &Path, data: &Path) -> Result<(Node, Client)> {
    let addr_file = data.join("node.addr");
    let node = Node(
        Command::new(bin)
            .arg("--data-dir")
            .arg(data)
            .args(["node", "run", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let started = Instant::now();
    while !addr_file.exists() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the node did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let client = Client::new(std::fs::read_to_string(&addr_file)?.trim());
    Ok((node, client))
}

/// Sets up a space with a door and its controller through the node on
/// `data` (whose key is the chain's first admin), and signs `total` door
/// `access` transactions of the controller beforehand, so the load is the
/// chain's.
pub(crate) fn door_load(
    bin: &Path,
    data: &Path,
    work: &Path,
    chain: &str,
    total: usize,
) -> Result<Vec<String>> {
    let admin: Value = serde_json::from_str(&utter(bin, data, &["key", "show", "--json"])?)?;
    let admin = admin["public_key"].as_str().context("no key")?.to_string();
    let bot_key = work.join("bot");
    let _ = std::fs::remove_file(&bot_key);
    let _ = std::fs::remove_file(bot_key.with_extension("pub"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&bot_key)
        .output()
        .context("ssh-keygen runs")?;
    anyhow::ensure!(out.status.success(), "ssh-keygen failed");
    let bot_pub = std::fs::read_to_string(bot_key.with_extension("pub"))?;
    let bot: String = bot_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let salt = "00112233445566778899aabbccddeeff";
    for (dapp, action, args) in [
        (
            "membership",
            "add-member",
            json!({"key": admin, "name": "Ada", "roles": ["admin"], "salt": salt}),
        ),
        ("doors", "define-door", json!({"name": "front"})),
        (
            "doors",
            "authorize-controller",
            json!({"door": "front", "key": bot}),
        ),
    ] {
        utter(
            bin,
            data,
            &[
                "tx",
                "submit",
                dapp,
                action,
                "--args",
                &args.to_string(),
                "--wait",
            ],
        )?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let requests: String = (0..total)
        .map(|i| {
            json!({"dapp": "doors", "action": "access", "args": {
                "door": "front", "badge": format!("{:064x}", i % 50), "time": now,
                "granted": i % 7 != 0, "reason": "bench"}})
            .to_string()
                + "\n"
        })
        .collect();
    let req_file = work.join("access.jsonl");
    std::fs::write(&req_file, requests)?;
    let signed = utter(
        bin,
        data,
        &[
            "tx",
            "sign",
            "--file",
            &req_file.display().to_string(),
            "--key",
            &bot_key.display().to_string(),
            "--nonce",
            "1",
            "--chain",
            chain,
        ],
    )?;
    let lines: Vec<String> = signed.lines().map(str::to_string).collect();
    anyhow::ensure!(lines.len() == total, "signed {} of {total}", lines.len());
    Ok(lines)
}

/// What a steady load got.
pub(crate) struct Offered {
    /// Committed transactions per second, first request to last commit.
    pub rate: f64,
    /// Submit → committed, per request, milliseconds.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// Transactions committed.
    pub committed: usize,
    /// Seconds from the first request to the last commit.
    pub elapsed: f64,
}

/// Offers `lines` at `rate` per second in requests of `batch`, the
/// requests taking turns over `clients`; each request's latency is until
/// its last transaction is committed, as the node it went to answers.
pub(crate) fn offer(
    clients: &[Client],
    lines: &[String],
    rate: usize,
    batch: usize,
) -> Result<Offered> {
    let interval = Duration::from_secs_f64(batch as f64 / rate as f64);
    let t0 = Instant::now();
    let mut waiters = Vec::new();
    for (n, chunk) in lines.chunks(batch).enumerate() {
        let due = t0 + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let client = clients[n % clients.len()].clone();
        let sent = Instant::now();
        let ids: Vec<TxId> = client
            .submit(chunk)?
            .into_iter()
            .map(|a| match a {
                TxState::Pending { id } => Ok(id),
                other => anyhow::bail!("not admitted: {other:?}"),
            })
            .collect::<Result<_>>()?;
        // Blocks take the mempool in arrival order, so a request is in
        // when its last transaction is: that is its latency.
        waiters.push(std::thread::spawn(
            move || -> Result<(f64, Instant, usize)> {
                let mut done = sent;
                for id in [ids.first(), ids.last()].into_iter().flatten() {
                    let v = client.wait(*id, Duration::from_secs(120))?;
                    anyhow::ensure!(
                        matches!(v, TxState::Committed { .. }),
                        "not committed: {v:?}"
                    );
                    done = Instant::now();
                }
                Ok(((done - sent).as_secs_f64() * 1e3, done, ids.len()))
            },
        ));
    }
    let mut latencies = Vec::new();
    let mut last_commit = t0;
    let mut committed = 0;
    for w in waiters {
        let (ms, done, n) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a waiter panicked"))??;
        latencies.push(ms);
        last_commit = last_commit.max(done);
        committed += n;
    }
    let elapsed = (last_commit - t0).as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(Offered {
        rate: committed as f64 / elapsed,
        p50: percentile(&latencies, 0.5),
        p90: percentile(&latencies, 0.9),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or(f64::NAN),
        committed,
        elapsed,
    })
}

//! `utter devnet`: a chain of several validators (and followers) on this
//! machine, each node a real `utter node run` process with its own data
//! directory, talking QUIC on loopback.
//!
//! `DIR/devnet.json` records the nodes and their fixed p2p addresses, so
//! `up` on an existing DIR starts again only the nodes that are not
//! running (a killed node rejoins with its data dir), and `down` stops
//! them. Each node's output goes to `DIR/<name>/node.log`, its process id
//! to `DIR/<name>/node.pid`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use utter_ledger::layout::Member;
use utter_node::Home;
use utter_node::init::{InitOptions, init};

use crate::builtin::{BUILTIN, BUILTIN_TEST_DAPP};
use crate::files::copy_tree;

/// The devnet's description in its directory.
const FILE: &str = "devnet.json";
/// How long `up` waits for a node's API.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// `utter devnet …`
#[derive(Subcommand)]
pub enum Command {
    /// Start a devnet: N validators and K followers on loopback, one
    /// genesis naming the validators, one data dir per node (DIR/v1…,
    /// DIR/f1…, so `utter --data-dir DIR/v2 tx submit …` talks to that
    /// node). On an existing DIR, starts the nodes that are not running.
    Up(UpArgs),
    /// Show each node: running or not, its API, main's height and head,
    /// its round, peers and last certificate
    Status(DirArgs),
    /// Stop every node of the devnet (SIGTERM, then SIGKILL after 10 s)
    Down(DirArgs),
}

/// `utter devnet up`
#[derive(Args)]
pub struct UpArgs {
    /// Validators (a new devnet only)
    #[arg(long, default_value_t = 4, value_name = "N")]
    validators: usize,
    /// Followers: nodes that forward transactions and follow commits (a
    /// new devnet only)
    #[arg(long, default_value_t = 0, value_name = "K")]
    followers: usize,
    /// The chain's name (a new devnet only)
    #[arg(long, default_value = "devnet", value_name = "NAME")]
    chain: String,
    /// Where the devnet lives
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Extra arguments for every `utter node run` (e.g. `--block-txs 500`),
    /// whitespace-separated
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    node_args: Option<String>,
    /// Make the devnet's data dirs but start no node (to run them
    /// elsewhere, e.g. each in a network namespace)
    #[arg(long)]
    no_start: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `utter devnet status|down`
#[derive(Args)]
pub struct DirArgs {
    /// Where the devnet lives
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// One node of a devnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeEntry {
    /// `v1`…, `f1`…
    name: String,
    /// Whether it validates.
    validator: bool,
    /// Its QUIC address.
    p2p: SocketAddr,
}

/// `DIR/devnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Devnet {
    chain: String,
    nodes: Vec<NodeEntry>,
    /// Extra `node run` arguments.
    #[serde(default)]
    node_args: Vec<String>,
}

impl Devnet {
    fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; remove the directory and start again",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn must_load(dir: &Path) -> Result<Self> {
        Self::load(dir)?.with_context(|| {
            format!(
                "{} holds no devnet; start one with `utter devnet up --dir {}`",
                dir.display(),
                dir.display()
            )
        })
    }
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Up(args) => up(args),
        Command::Status(args) => status(&args),
        Command::Down(args) => down(&args),
    }
}

/// A free UDP port on loopback (the node binds it soon after).
fn free_udp() -> Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("cannot find a free UDP port")?;
    Ok(socket.local_addr()?)
}

/// Makes a new devnet in `dir`: keys, one genesis, a data dir per node.
fn create(args: &UpArgs) -> Result<Devnet> {
    if args.validators < 2 {
        bail!(
            "--validators must be at least 2 (one validator is `utter init` and `utter node run`)"
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut nodes = Vec::new();
    for i in 1..=args.validators {
        nodes.push((format!("v{i}"), true));
    }
    for i in 1..=args.followers {
        nodes.push((format!("f{i}"), false));
    }
    let mut validators = Vec::new();
    let mut devices = Vec::new();
    for (name, validator) in &nodes {
        let home = Home::new(args.dir.join(name));
        if home.root().exists() {
            bail!(
                "{} exists but {} does not: pick an empty --dir",
                home.root().display(),
                args.dir.join(FILE).display()
            );
        }
        std::fs::create_dir_all(home.key_path().parent().expect("keys/node has a parent"))?;
        let key = Home::generate_key(&home.key_path())?;
        let member = Member {
            name: name.clone(),
            key: key.public().to_openssh(),
        };
        if !*validator {
            // A follower is a device: it keeps what it is given offline
            // on its own branch, which the validators merge into main.
            devices.push(member);
        } else if name != "v1" {
            validators.push(member);
        }
    }
    let first = Home::new(args.dir.join("v1"));
    init(
        &first,
        InitOptions {
            chain: args.chain.clone(),
            name: "v1".into(),
            key: None,
            validators,
            devices,
            builtin: &BUILTIN,
            test_dapp: Some(BUILTIN_TEST_DAPP),
            dapps: Vec::new(),
            time: i64::try_from(utter_formats::now()).unwrap_or(i64::MAX),
        },
    )
    .with_context(|| format!("cannot create the chain in {}", first.root().display()))?;
    // The others start from the same genesis and the same images.
    for (name, _) in nodes.iter().skip(1) {
        let home = Home::new(args.dir.join(name));
        copy_tree(&first.db(), &home.db())?;
        copy_tree(&first.ledger_dir(), &home.ledger_dir())?;
        copy_tree(&first.images_dir(), &home.images_dir())?;
    }
    let mut entries = Vec::new();
    for (name, validator) in nodes {
        entries.push(NodeEntry {
            name,
            validator,
            p2p: free_udp()?,
        });
    }
    let devnet = Devnet {
        chain: args.chain.clone(),
        nodes: entries,
        node_args: args
            .node_args
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    };
    let path = args.dir.join(FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&devnet)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(devnet)
}

/// The process id a node's `node.pid` names, if that process still runs
/// `utter node run` on this data dir.
fn running(home: &Home) -> Option<i32> {
    let text = std::fs::read_to_string(home.root().join("node.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let root = home.root().to_string_lossy();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let ours = args.iter().any(|a| a.as_str() == root) && args.iter().any(|a| a == "node");
    // A zombie (exited, not yet reaped) is not running.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (ours && !zombie).then_some(pid)
}

fn up(args: UpArgs) -> Result<ExitCode> {
    let devnet = match Devnet::load(&args.dir)? {
        Some(d) => d,
        None => create(&args)?,
    };
    let exe = std::env::current_exe().context("cannot find the utter executable")?;
    let validators: Vec<SocketAddr> = devnet
        .nodes
        .iter()
        .filter(|n| n.validator)
        .map(|n| n.p2p)
        .collect();
    if args.no_start {
        if args.json {
            println!("{}", serde_json::to_string(&devnet)?);
        } else {
            println!(
                "devnet {} made in {} ({} nodes); start them with `utter devnet up --dir {}`",
                devnet.chain,
                args.dir.display(),
                devnet.nodes.len(),
                args.dir.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut started = Vec::new();
    for node in &devnet.nodes {
        let home = Home::new(args.dir.join(&node.name));
        if running(&home).is_some() {
            continue;
        }
        // An address file of a node that died says nothing.
        let _ = std::fs::remove_file(home.addr_file());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.root().join("node.log"))
            .with_context(|| format!("cannot open {}/node.log", home.root().display()))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("--data-dir")
            .arg(home.root())
            .args([
                "node",
                "run",
                "--verbose",
                "--listen",
                "127.0.0.1:0",
                "--sync-ms",
                "500",
            ])
            .arg("--p2p")
            .arg(node.p2p.to_string());
        for peer in validators.iter().filter(|p| **p != node.p2p) {
            cmd.arg("--peer").arg(peer.to_string());
        }
        cmd.args(&devnet.node_args);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a ctrl-c in this terminal leaves it be.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {}", node.name))?;
        std::fs::write(home.root().join("node.pid"), format!("{}\n", child.id()))?;
        started.push(node.name.clone());
    }
    // Wait for every API.
    let deadline = Instant::now() + START_TIMEOUT;
    let mut apis = Vec::new();
    for node in &devnet.nodes {
        let home = Home::new(args.dir.join(&node.name));
        let url = loop {
            if let Some(url) = home.node_url()
                && home.client(Some(&url)).status().is_ok()
            {
                break url;
            }
            if running(&home).is_none() {
                bail!(
                    "node {} stopped while starting; see {}/node.log",
                    node.name,
                    home.root().display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not answer within {} s; see {}/node.log",
                    node.name,
                    START_TIMEOUT.as_secs(),
                    home.root().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        apis.push(url);
    }
    if args.json {
        let nodes: Vec<serde_json::Value> = devnet
            .nodes
            .iter()
            .zip(&apis)
            .map(|(n, api)| {
                serde_json::json!({
                    "name": n.name,
                    "validator": n.validator,
                    "data_dir": args.dir.join(&n.name),
                    "api": api,
                    "p2p": n.p2p,
                    "started": started.contains(&n.name),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"chain": devnet.chain, "nodes": nodes})
        );
    } else {
        println!(
            "devnet {} in {}: {} started, {} already running",
            devnet.chain,
            args.dir.display(),
            started.len(),
            devnet.nodes.len() - started.len()
        );
        for (n, api) in devnet.nodes.iter().zip(&apis) {
            println!(
                "  {:<4} {:<9} API {api:<24} p2p {}  data dir {}",
                n.name,
                if n.validator { "validator" } else { "follower" },
                n.p2p,
                args.dir.join(&n.name).display()
            );
        }
        println!(
            "next: `utter --data-dir {}/v1 tx submit …`, `utter devnet status --dir {}`",
            args.dir.display(),
            args.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(args: &DirArgs) -> Result<ExitCode> {
    let devnet = Devnet::must_load(&args.dir)?;
    let mut rows = Vec::new();
    for node in &devnet.nodes {
        let home = Home::new(args.dir.join(&node.name));
        let pid = running(&home);
        let url = pid.and_then(|_| home.node_url());
        let status = url
            .as_deref()
            .and_then(|u| home.client(Some(u)).status().ok());
        rows.push((node, pid, url, status));
    }
    if args.json {
        let nodes: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, pid, url, status)| {
                serde_json::json!({
                    "name": n.name,
                    "validator": n.validator,
                    "running": pid.is_some(),
                    "pid": pid,
                    "api": url,
                    "p2p": n.p2p,
                    "status": status,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"chain": devnet.chain, "nodes": nodes})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("devnet {} in {}", devnet.chain, args.dir.display());
    for (n, pid, url, status) in rows {
        let Some(s) = status else {
            println!(
                "  {:<4} {}",
                n.name,
                if pid.is_some() {
                    "running, API not answering"
                } else {
                    "stopped"
                }
            );
            continue;
        };
        let consensus = s.consensus.as_ref();
        let cert = match consensus {
            Some(c) if !c.validator => "(follows by sync)".to_string(),
            _ => consensus
                .and_then(|c| c.certified.as_ref())
                .map_or("none yet".to_string(), |c| {
                    format!("{} at {} ({} votes)", c.block.short(), c.height, c.votes)
                }),
        };
        println!(
            "  {:<4} height {:<6} head {}  round {:<5} peers {}  mempool {:<6} last certificate {cert}  API {}",
            n.name,
            s.height,
            s.head.short(),
            consensus.map_or(0, |c| c.round),
            consensus.map_or(0, |c| c.peers),
            s.mempool,
            url.unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn down(args: &DirArgs) -> Result<ExitCode> {
    use rustix::process::{Pid, Signal, kill_process};
    let devnet = Devnet::must_load(&args.dir)?;
    let mut stopping = Vec::new();
    for node in &devnet.nodes {
        let home = Home::new(args.dir.join(&node.name));
        if let Some(pid) = running(&home)
            && let Some(p) = Pid::from_raw(pid)
        {
            let _ = kill_process(p, Signal::TERM);
            stopping.push((node.name.clone(), home, p));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = Vec::new();
    for (name, home, pid) in &stopping {
        while running(home).is_some() {
            if Instant::now() > deadline {
                let _ = kill_process(*pid, Signal::KILL);
                killed.push(name.clone());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(home.root().join("node.pid"));
    }
    if args.json {
        let names: Vec<&String> = stopping.iter().map(|(n, ..)| n).collect();
        println!(
            "{}",
            serde_json::json!({"stopped": names, "killed": killed})
        );
    } else {
        println!(
            "devnet {}: {} nodes stopped{}",
            devnet.chain,
            stopping.len(),
            if killed.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} killed after 10 s: {})",
                    killed.len(),
                    killed.join(", ")
                )
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

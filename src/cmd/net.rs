//! `utter clone`, `utter sync` and `utter peers`: a new node from a peer,
//! one sync pass, and the peers this node knows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use utter_ledger::BlockId;
use utter_ledger::key::Signer;
use utter_net::sync::RefUpdate;
use utter_net::{Passed, Progress};
use utter_node::Home;
use utter_node::p2p::{self, Target};

use crate::ui::{self, human, plural};

/// `utter clone`
#[derive(Args)]
pub struct CloneArgs {
    /// The peer: SHA256:FINGERPRINT@HOST:PORT (its node.p2p file says it;
    /// the fingerprint is its key's, as `ssh-keygen -l` prints it)
    target: Target,
    /// Use this OpenSSH ed25519 key as the new node's key (e.g. a
    /// validator's that genesis names) [default: keys/node, made if
    /// missing]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Print JSON: chain, main, key, what arrived
    #[arg(long)]
    json: bool,
}

/// `utter sync`
#[derive(Args)]
pub struct SyncArgs {
    /// Peers to pull from [default: the peers this node knows]
    #[arg(value_name = "HOST:PORT")]
    peers: Vec<SocketAddr>,
    /// Print JSON: one object per peer
    #[arg(long)]
    json: bool,
}

/// `utter peers …`
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PeersArgs {
    #[command(subcommand)]
    command: Option<PeersCommand>,
    /// Print JSON: one object per peer
    #[arg(long)]
    json: bool,
}

/// `utter peers allow`
#[derive(Subcommand)]
pub enum PeersCommand {
    /// Let this key in when the node runs with --private (besides the keys
    /// the chain names)
    Allow {
        /// An OpenSSH ed25519 public key (`ssh-ed25519 AAAA…`)
        key: String,
    },
}

/// What `utter clone --json` prints.
#[derive(Serialize)]
struct CloneReport<'a> {
    chain: &'a str,
    main: BlockId,
    key: String,
    peer: String,
    objects: u64,
    chunks: u64,
    /// Payload bytes: packs and chunks as sent.
    bytes: u64,
    /// Bytes on the wire (QUIC's UDP payload).
    wire_bytes: u64,
    missing_images: &'a [String],
}

/// One line of `utter sync --json`: a peer's pass.
#[derive(Serialize)]
struct SyncReport<'a> {
    peer: SocketAddr,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    passed: Option<PassReport<'a>>,
}

#[derive(Serialize)]
struct PassReport<'a> {
    key: String,
    commits: usize,
    objects: u64,
    chunks: u64,
    bytes: u64,
    wire_bytes: u64,
    updates: &'a [RefUpdate],
    missing_images: &'a [String],
}

impl<'a> PassReport<'a> {
    fn of(passed: &'a Passed) -> Self {
        Self {
            key: passed.peer.to_openssh(),
            commits: passed.summary.commits,
            objects: passed.progress.objects,
            chunks: passed.progress.chunks,
            bytes: passed.progress.bytes,
            wire_bytes: passed.wire_bytes,
            updates: &passed.summary.updates,
            missing_images: &passed.missing_images,
        }
    }
}

/// A progress bar over what a pass received.
struct Bar(ui::Progress);

impl Bar {
    fn new(quiet: bool) -> Self {
        Self(ui::Progress::items("syncing (objects + chunks)", 0, quiet))
    }

    fn show(&mut self, p: Progress) {
        self.0.set_total(p.objects + p.chunks_total.max(p.chunks));
        self.0.set(p.objects + p.chunks);
    }
}

pub fn clone(home: &Home, args: CloneArgs) -> Result<ExitCode> {
    let mut bar = Bar::new(args.json);
    let cloned = p2p::clone(home, &args.target, args.key.as_deref(), &mut |p| {
        bar.show(p)
    })
    .with_context(|| format!("cannot clone {}", args.target.addr))?;
    bar.0.finish();
    let got = cloned.passed.progress;
    if args.json {
        let report = CloneReport {
            chain: &cloned.chain,
            main: cloned.main,
            key: cloned.key.to_openssh(),
            peer: cloned.passed.peer.to_openssh(),
            objects: got.objects,
            chunks: got.chunks,
            bytes: got.bytes,
            wire_bytes: cloned.passed.wire_bytes,
            missing_images: &cloned.passed.missing_images,
        };
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "cloned chain {} from {} into {}",
            cloned.chain,
            args.target.addr,
            home.root().display()
        );
        println!("main      {}", cloned.main);
        println!("node key  {}", cloned.key);
        println!(
            "received  {}, {}, {}",
            plural(got.objects as usize, "object", "objects"),
            plural(got.chunks as usize, "chunk", "chunks"),
            human(got.bytes)
        );
        for image in &cloned.passed.missing_images {
            println!(
                "warning: the peer has no image {image}; blocks using it cannot be re-executed here"
            );
        }
        println!(
            "next: `utter verify --reexecute`, `utter node run --p2p 0.0.0.0:7448 --peer {}`",
            args.target.addr
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sync(home: &Home, args: SyncArgs) -> Result<ExitCode> {
    let mut bar = Bar::new(args.json);
    let synced = p2p::sync_once(home, &args.peers, &mut |p| bar.show(p)).map_err(|e| {
        let text = e.to_string();
        if text.contains("in use by another process") {
            anyhow::anyhow!(
                "{text}\na node runs on this data dir and syncs by itself (`utter peers` shows its peers)"
            )
        } else {
            e.into()
        }
    })?;
    bar.0.finish();
    let mut failed = 0;
    for (addr, result) in &synced.peers {
        match result {
            Ok(passed) => {
                if args.json {
                    let report = SyncReport {
                        peer: *addr,
                        ok: true,
                        error: None,
                        passed: Some(PassReport::of(passed)),
                    };
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    let updates = &passed.summary.updates;
                    println!(
                        "{addr}: {}, {}, {} ({} on the wire); {}",
                        plural(passed.summary.commits, "commit", "commits"),
                        plural(passed.progress.chunks as usize, "chunk", "chunks"),
                        human(passed.progress.bytes),
                        human(passed.wire_bytes),
                        if updates.is_empty() {
                            "nothing new".to_string()
                        } else {
                            format!("{} moved", plural(updates.len(), "ref", "refs"))
                        }
                    );
                    for u in updates {
                        println!("  {u}");
                    }
                }
            }
            Err(why) => {
                failed += 1;
                if args.json {
                    let report = SyncReport {
                        peer: *addr,
                        ok: false,
                        error: Some(why),
                        passed: None,
                    };
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    eprintln!("{addr}: {why}");
                }
            }
        }
    }
    Ok(if failed == synced.peers.len() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn peers(home: &Home, args: PeersArgs) -> Result<ExitCode> {
    if let Some(PeersCommand::Allow { key }) = args.command {
        let Some(signer) = Signer::parse(&key) else {
            bail!("{key:?} is not an OpenSSH ed25519 public key (ssh-ed25519 AAAA…)");
        };
        let added = utter_net::peers::allow(&home.allowed_peers(), &signer)?;
        println!(
            "{} {} ({})",
            if added { "allowed" } else { "already allowed:" },
            signer.fingerprint(),
            home.allowed_peers().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = home.store(utter_node::Need::Ledger, false, true, None)?;
    let book = utter_net::peers::load(&store)?;
    if args.json {
        for p in book.peers() {
            println!("{}", serde_json::to_string(p)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if book.peers().next().is_none() {
        println!("no peers yet: `utter node run --p2p ADDR --peer HOST:PORT`, or clone from one");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22} {:<20} {:<22} {:<14} STATE",
        "ADDRESS", "KEY", "LAST SEEN", "MAIN"
    );
    for p in book.peers() {
        let fp = p.fingerprint.as_deref().unwrap_or("?");
        println!(
            "{:<22} {:<20} {:<22} {:<14} {}",
            p.addr.to_string(),
            &fp[..fp.len().min(19)],
            p.last_seen
                .map_or("never".into(), |t| ui::utc(i64::try_from(t).unwrap_or(0))),
            p.main.map_or("-".into(), |m| m.short()),
            match &p.last_error {
                Some(e) if p.failures > 0 => format!("failing ({}): {e}", p.failures),
                _ => "ok".into(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

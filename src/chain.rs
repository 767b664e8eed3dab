//! Executing blocks: `utter tx sign`, `utter block propose`, the
//! re-execution half of `utter verify --reexecute`, and the container
//! helper (`utter sandbox-helper`) they run dapps through.
//!
//! A process that opened RocksDB never creates containers (libcontainer's
//! children would hang in RocksDB's exit handler), so these commands start
//! `utter sandbox-helper` — the same binary, which opens only the container
//! runtime — and hand it every dapp run.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use utter_chunkstore::Store;
use utter_consensus::executor::{self, Executor, Images, Proposed, Verdict};
use utter_images::Images as ImageStore;
use utter_ledger::key::Keypair;
use utter_ledger::tx::{MAX_LINE, Tx, VERSION};
use utter_ledger::{BlockId, Ledger, MAIN, Status};
use utter_runtime::{Helper, ImageProcess, Runtime};

use crate::progress::Progress;
use crate::{data_dir, key, ledger};

/// `utter tx …`
#[derive(Subcommand)]
pub enum TxCommand {
    /// Sign transactions and print their lines (one canonical JSON line
    /// each), ready for `utter block propose --txs`
    Sign(SignArgs),
    /// Sign transactions and send them to the running node (`utter node
    /// run`); with --wait, print each one's result once committed (exit 1
    /// if any was rejected or refused)
    Submit(crate::submit::SubmitArgs),
}

/// What to sign, and with which key (`tx sign` and `tx submit`).
#[derive(Args)]
pub struct RequestArgs {
    /// The dapp that handles it (with ACTION; or use --file)
    #[arg(required_unless_present = "file")]
    pub dapp: Option<String>,
    /// What the dapp should do
    #[arg(required_unless_present = "file")]
    pub action: Option<String>,
    /// The action's arguments, JSON
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub args: String,
    /// Many transactions: one JSON object per line, {"dapp","action","args"};
    /// they get consecutive nonces
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dapp", "action"])]
    pub file: Option<PathBuf>,
    /// The signer's OpenSSH ed25519 private key [default: the node key]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

impl RequestArgs {
    /// The requests, read from --file or the arguments.
    pub fn requests(&self) -> Result<Vec<Request>> {
        read_requests(
            self.file.as_deref(),
            self.dapp.as_deref(),
            self.action.as_deref(),
            &self.args,
        )
    }
}

/// `utter tx sign`
#[derive(Args)]
pub struct SignArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// The (first) nonce [default: one above the highest the key used on main]
    #[arg(long, value_name = "N")]
    nonce: Option<u64>,
    /// The chain [default: the data directory's chain]
    #[arg(long, value_name = "NAME")]
    chain: Option<String>,
    /// The transaction time, Unix seconds [default: now]
    #[arg(long, value_name = "SECS")]
    time: Option<u64>,
}

/// `utter block …`
#[derive(Subcommand)]
pub enum BlockCommand {
    /// Execute signed transactions as one block on main: verify them, run
    /// each touched dapp once in a container, write and sign the block, move
    /// main
    Propose(ProposeArgs),
    /// Merge branches into main: a merge block over main and each branch
    /// re-executes the branches' transactions on main's state (parents in
    /// id order); those that no longer apply are recorded as rejected,
    /// none is dropped. How a door controller's offline branch comes home
    Merge(MergeArgs),
}

/// `utter block merge`
#[derive(Args)]
pub struct MergeArgs {
    /// The branches to merge into main (`utter log --branches` lists them)
    #[arg(required = true, value_name = "BRANCH")]
    branches: Vec<String>,
    /// More signed transactions to execute after the merged ones
    #[arg(long, value_name = "FILE")]
    txs: Option<PathBuf>,
    /// The block's time, Unix seconds [default: now]
    #[arg(long, value_name = "SECS")]
    time: Option<i64>,
    /// Print JSON: the block, each transaction's result and timings
    #[arg(long)]
    json: bool,
}

/// `utter block propose`
#[derive(Args)]
pub struct ProposeArgs {
    /// Signed transaction lines (`utter tx sign` output); `-` reads stdin
    #[arg(long, value_name = "FILE")]
    txs: PathBuf,
    /// The block's time, Unix seconds [default: now]
    #[arg(long, value_name = "SECS")]
    time: Option<i64>,
    /// Extend this branch instead of main (created from main when it does
    /// not exist): a device's offline branch, merged later with
    /// `utter block merge`
    #[arg(long, value_name = "NAME")]
    branch: Option<String>,
    /// Print JSON: the block, each transaction's result, refused lines and
    /// timings
    #[arg(long)]
    json: bool,
}

/// The most bytes of transaction lines `block propose` reads.
const MAX_TXS_FILE: u64 = 256 << 20;

/// The data directory's node key, or the key file given.
pub fn load_key(data_dir: &Path, path: Option<&Path>) -> Result<Keypair> {
    let path = path.map_or_else(|| key::key_path(data_dir), Path::to_path_buf);
    Keypair::load(&path).with_context(|| {
        format!(
            "cannot load the key {}: make one with `utter key gen` or pass --key FILE",
            path.display()
        )
    })
}

/// One chunk store, shared by the ledger and the image store (RocksDB
/// allows one opener per directory).
pub struct Opened {
    pub store: Store,
    pub ledger: Ledger,
}

pub fn open(data_dir: &Path) -> Result<Opened> {
    let store = ledger::open_chunks(data_dir, false)?;
    let ledger = Ledger::open(&data_dir::ledger(data_dir), Arc::new(store.clone()))?;
    Ok(Opened { store, ledger })
}

/// [`open`] for reading only: works beside a running node.
pub fn open_read_only(data_dir: &Path) -> Result<Opened> {
    let ledger = ledger::open(data_dir)?;
    Ok(Opened {
        store: ledger.chunks().as_ref().clone(),
        ledger,
    })
}

/// The node's images, for the executor: rootfs unpacked on first use.
pub struct NodeImages {
    images: ImageStore,
}

impl NodeImages {
    pub fn new(data_dir: &Path, store: &Store) -> Result<Self> {
        Ok(Self {
            images: ImageStore::open(data_dir::images(data_dir), store.clone())?,
        })
    }
}

impl Images for NodeImages {
    fn rootfs(&mut self, digest: &str) -> Result<(PathBuf, ImageProcess), String> {
        let image = self
            .images
            .get(digest)
            .map_err(|e| format!("{e}; import it with `utter image import`"))?;
        let rootfs = self.images.rootfs(&image).map_err(|e| e.to_string())?;
        let config = self.images.config(&image).map_err(|e| e.to_string())?;
        let process = ImageProcess::from_config(&config);
        if process.command.is_empty() {
            return Err("the image has no entrypoint".into());
        }
        Ok((rootfs, process))
    }
}

/// Starts `utter sandbox-helper` for this data directory.
pub fn spawn_helper(data_dir: &Path) -> Result<Helper> {
    let exe = std::env::current_exe().context("cannot find the utter executable")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("sandbox-helper");
    Ok(Helper::spawn(command)?)
}

/// `utter sandbox-helper`: serves dapp runs on stdin/stdout until stdin
/// closes. Never opens RocksDB.
pub fn sandbox_helper(data_dir: &Path) -> Result<ExitCode> {
    // Die with the parent: a helper outliving its node would hold
    // containers nobody waits for.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("cannot set the helper's parent-death signal")?;
    utter_runtime::runtime_base(&data_dir::runtime_base())
        .context("cannot set up the container runtime")?;
    let runtime = Runtime::open(data_dir::runtime(data_dir))
        .context("cannot set up the container runtime")?
        .with_network_ahead();
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    utter_runtime::helper::serve(&runtime, stdin, stdout).context("the helper's pipe broke")?;
    Ok(ExitCode::SUCCESS)
}

pub fn tx(data_dir: &Path, cmd: TxCommand) -> Result<ExitCode> {
    match cmd {
        TxCommand::Sign(args) => sign(data_dir, args),
        TxCommand::Submit(args) => crate::submit::submit(data_dir, args),
    }
}

/// What to sign: (dapp, action, args).
pub type Request = (String, String, serde_json::Value);

/// The requests of `--file` (one `{"dapp","action","args"}` per line), or
/// the one given as DAPP ACTION --args.
fn read_requests(
    file: Option<&Path>,
    dapp: Option<&str>,
    action: Option<&str>,
    args: &str,
) -> Result<Vec<Request>> {
    let mut requests = Vec::new();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("line {} of {} is not JSON", n + 1, file.display()))?;
            let field = |name: &str| {
                v.get(name)
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                    .with_context(|| {
                        format!(
                            "line {} of {} has no string {name:?}: each line is {{\"dapp\",\"action\",\"args\"}}",
                            n + 1,
                            file.display()
                        )
                    })
            };
            requests.push((
                field("dapp")?,
                field("action")?,
                v.get("args").cloned().unwrap_or(json!({})),
            ));
        }
    } else {
        let value: serde_json::Value =
            serde_json::from_str(args).with_context(|| format!("--args `{args}` is not JSON"))?;
        requests.push((
            dapp.unwrap_or_default().to_string(),
            action.unwrap_or_default().to_string(),
            value,
        ));
    }
    Ok(requests)
}

/// Signs `requests` with consecutive nonces from `first_nonce`.
pub fn sign_requests(
    key: &Keypair,
    chain: &str,
    first_nonce: u64,
    time: u64,
    requests: Vec<Request>,
) -> Result<Vec<String>> {
    let signer = key.public().to_openssh();
    let mut lines = Vec::with_capacity(requests.len());
    for (i, (dapp, action, args)) in requests.into_iter().enumerate() {
        let tx = Tx {
            v: VERSION,
            chain: chain.to_string(),
            dapp,
            action,
            args,
            signer: signer.clone(),
            nonce: first_nonce + i as u64,
            time,
        };
        let line = tx.sign(key)?.to_line();
        if line.len() > MAX_LINE {
            bail!(
                "transaction {} is {} bytes signed; the limit is {MAX_LINE}: keep large values out of args",
                i + 1,
                line.len()
            );
        }
        lines.push(line);
    }
    Ok(lines)
}

/// The current time, Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sign(data_dir: &Path, args: SignArgs) -> Result<ExitCode> {
    let key = load_key(data_dir, args.request.key.as_deref())?;
    let signer = key.public().to_openssh();
    let requests = args.request.requests()?;
    let (chain, first_nonce) = match (&args.chain, args.nonce) {
        (Some(chain), Some(nonce)) => (chain.clone(), nonce),
        _ => {
            let l = &ledger::open(data_dir)?;
            let chain = args.chain.clone().unwrap_or_else(|| l.chain().to_string());
            let nonce = match args.nonce {
                Some(n) => n,
                None => executor::next_nonce(l, l.resolve(MAIN)?, &signer)?,
            };
            (chain, nonce)
        }
    };
    let time = args.time.unwrap_or_else(now);
    let mut out = std::io::stdout().lock();
    for line in sign_requests(&key, &chain, first_nonce, time, requests)? {
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn block(data_dir: &Path, cmd: BlockCommand) -> Result<ExitCode> {
    match cmd {
        BlockCommand::Propose(args) => propose(data_dir, args),
        BlockCommand::Merge(args) => merge(data_dir, args),
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut add = |line: String| {
        if !line.trim().is_empty() {
            lines.push(line);
        }
    };
    if path == Path::new("-") {
        for line in std::io::stdin().lock().lines() {
            add(line.context("cannot read transactions from stdin")?);
        }
    } else {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read transactions file {}", path.display()))?;
        if meta.len() > MAX_TXS_FILE {
            bail!(
                "{} is {} bytes; one block takes at most {MAX_TXS_FILE}",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} as text", path.display()))?;
        text.lines().map(str::to_string).for_each(&mut add);
    }
    Ok(lines)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn propose(data_dir: &Path, args: ProposeArgs) -> Result<ExitCode> {
    let lines = read_lines(&args.txs)?;
    if lines.is_empty() {
        bail!("{} holds no transactions", args.txs.display());
    }
    let key = load_key(data_dir, None)?;
    let opened = open(data_dir)?;
    let ledger = &opened.ledger;
    let mut images = NodeImages::new(data_dir, &opened.store)?;
    let mut helper = spawn_helper(data_dir)?;
    let mut executor = Executor::new(ledger, &data_dir::checkouts(data_dir))?;
    let branch = args.branch.as_deref().unwrap_or(MAIN);
    let tip = match ledger.branch(branch)? {
        Some(tip) => tip,
        None => {
            let main = ledger.resolve(MAIN)?;
            ledger
                .create_branch(branch, main)
                .with_context(|| format!("cannot create branch {branch}"))?;
            main
        }
    };
    let time = args
        .time
        .unwrap_or_else(|| i64::try_from(now()).unwrap_or(i64::MAX));
    let proposed = executor
        .propose(&mut helper, &mut images, tip, &lines, time, &key)
        .context("cannot make a block")?;
    ledger.advance(branch, tip, proposed.block.id)?;
    report_block(&proposed, branch, args.json)
}

fn merge(data_dir: &Path, args: MergeArgs) -> Result<ExitCode> {
    let lines = match &args.txs {
        Some(path) => read_lines(path)?,
        None => Vec::new(),
    };
    let key = load_key(data_dir, None)?;
    let opened = open(data_dir)?;
    let ledger = &opened.ledger;
    let main = ledger.resolve(MAIN)?;
    let mut parents = vec![main];
    for name in &args.branches {
        let Some(tip) = ledger.branch(name)? else {
            let known: Vec<String> = ledger.branches()?.into_iter().map(|(n, _)| n).collect();
            bail!(
                "there is no branch {name:?} (branches: {})",
                known.join(", ")
            );
        };
        if ledger.is_ancestor(tip, main)? {
            eprintln!("branch {name} is already in main; nothing of it to merge");
            continue;
        }
        if ledger.is_ancestor(main, tip)? {
            bail!(
                "branch {name} already contains main: move main to it instead of merging \
                 (nothing would be re-executed)"
            );
        }
        parents.push(tip);
    }
    parents.sort();
    parents.dedup();
    if parents.len() < 2 {
        println!("nothing to merge: main already holds every branch named");
        return Ok(ExitCode::SUCCESS);
    }
    let mut images = NodeImages::new(data_dir, &opened.store)?;
    let mut helper = spawn_helper(data_dir)?;
    let mut executor = Executor::new(ledger, &data_dir::checkouts(data_dir))?;
    let time = args
        .time
        .unwrap_or_else(|| i64::try_from(now()).unwrap_or(i64::MAX));
    let proposed = executor
        .propose_on(&mut helper, &mut images, &parents, &lines, time, &key)
        .context("cannot make the merge block")?;
    ledger.advance(MAIN, main, proposed.block.id)?;
    report_block(&proposed, MAIN, args.json)
}

/// Prints a block `propose` or `merge` made, and each result.
fn report_block(proposed: &Proposed, branch: &str, json: bool) -> Result<ExitCode> {
    let accepted = proposed
        .results
        .iter()
        .filter(|r| r.status == Status::Accepted)
        .count();
    if json {
        let results: Vec<serde_json::Value> = proposed
            .results
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect();
        let refused: Vec<serde_json::Value> = proposed
            .refused
            .iter()
            .map(|r| json!({"line": r.line, "error": r.error.to_string()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "block": proposed.block.id.to_string(),
                "height": proposed.block.height,
                "branch": branch,
                "parents": proposed.block.parents.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "transactions": proposed.results.len(),
                "accepted": accepted,
                "results": results,
                "refused": refused,
                "dapps_ms": ms(proposed.timings.dapps),
                "total_ms": ms(proposed.timings.total),
            }))?
        );
    } else {
        for (i, r) in proposed.results.iter().enumerate() {
            match r.status {
                Status::Accepted => match &r.output {
                    Some(out) => println!("{:>4}  accepted  {out}", i + 1),
                    None => println!("{:>4}  accepted", i + 1),
                },
                Status::Rejected => println!(
                    "{:>4}  rejected  {}",
                    i + 1,
                    r.reason.as_deref().unwrap_or("")
                ),
            }
        }
        for r in &proposed.refused {
            eprintln!("refused (not in the block): {}", r.error);
        }
        let merged = if proposed.block.parents.len() > 1 {
            format!(" merging {} branches,", proposed.block.parents.len())
        } else {
            String::new()
        };
        println!(
            "block {} at height {}:{merged} {} transactions, {accepted} accepted; {branch} moved ({:.1} ms, {:.1} ms in dapps)",
            proposed.block.id.short(),
            proposed.block.height,
            proposed.results.len(),
            ms(proposed.timings.total),
            ms(proposed.timings.dapps),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A block re-execution found wrong.
pub struct Mismatch {
    pub id: BlockId,
    pub height: u64,
    pub why: String,
}

/// What `verify --reexecute` found.
pub struct Reexecuted {
    pub checked: usize,
    pub skipped: usize,
    pub bad: Vec<Mismatch>,
}

/// Re-executes every block reachable from a branch, parents first.
pub fn reexecute_all(data_dir: &Path, opened: &Opened, quiet: bool) -> Result<Reexecuted> {
    let ledger = &opened.ledger;
    let tips: Vec<BlockId> = ledger.branches()?.into_iter().map(|(_, id)| id).collect();
    let blocks = ledger.ancestors(&tips)?;
    let mut images = NodeImages::new(data_dir, &opened.store)?;
    let mut helper = spawn_helper(data_dir)?;
    // Checkouts of its own: a running node's are in use.
    let scratch = tempfile::Builder::new()
        .prefix("verify-checkouts-")
        .tempdir_in(data_dir)
        .context("cannot make a scratch directory in the data dir")?;
    let mut executor = Executor::new(ledger, scratch.path())?;
    let mut progress = Progress::items("re-executing blocks", blocks.len() as u64, quiet);
    let mut out = Reexecuted {
        checked: 0,
        skipped: 0,
        bad: Vec::new(),
    };
    for (i, id) in blocks.iter().enumerate() {
        let block = ledger.block(*id)?;
        match executor.reexecute(&mut helper, &mut images, &block)? {
            Verdict::Valid => out.checked += 1,
            Verdict::Skipped(_) => out.skipped += 1,
            Verdict::Invalid(why) => out.bad.push(Mismatch {
                id: *id,
                height: block.height,
                why,
            }),
        }
        progress.set(i as u64 + 1);
    }
    progress.finish();
    Ok(out)
}

/// The built-in dapps: each a static executable built by `build.rs`.
pub const BUILTIN: [(&str, &[u8]); 5] = [
    (
        "membership",
        include_bytes!(concat!(env!("OUT_DIR"), "/membership")),
    ),
    (
        "certifications",
        include_bytes!(concat!(env!("OUT_DIR"), "/certifications")),
    ),
    ("doors", include_bytes!(concat!(env!("OUT_DIR"), "/doors"))),
    (
        "accounting",
        include_bytes!(concat!(env!("OUT_DIR"), "/accounting")),
    ),
    (
        "invariants",
        include_bytes!(concat!(env!("OUT_DIR"), "/invariants")),
    ),
];

/// The built-in test dapp `utter init` lists in `chain.toml`.
pub const BUILTIN_TEST_DAPP: &str = "invariants";

/// Packages each built-in dapp as a one-file image tagged `utter/<name>`
/// (reproducible: the same utter binary makes the same image ids) and
/// returns (name, image) pairs.
fn builtin_images(data_dir: &Path, images: &ImageStore) -> Result<Vec<(String, String)>> {
    let dir = data_dir::images(data_dir).join(format!("builtin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    let result = (|| -> Result<()> {
        for (name, bytes) in BUILTIN {
            let file = dir.join(name);
            std::fs::write(&file, bytes)
                .with_context(|| format!("cannot write {}", file.display()))?;
            let options = utter_images::BuildOptions {
                entrypoint: vec![format!("/{name}")],
                cmd: Vec::new(),
                env: Vec::new(),
                workdir: None,
                tags: vec![format!("utter/{name}")],
            };
            let built = images
                .build(
                    &utter_images::BuildInput::Binary(file),
                    &options,
                    &mut |_| {},
                )
                .with_context(|| format!("cannot package the built-in dapp {name}"))?;
            out.push((name.to_string(), built.image.id.to_string()));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| out)
}

/// The dapps to install at genesis: the built-in ones (unless
/// `builtin` is false), then `NAME=IMAGE` pairs, each image resolved to its
/// digest in the image store. A pair may replace a built-in dapp.
pub fn genesis_dapps(
    data_dir: &Path,
    store: &Store,
    builtin: bool,
    pairs: &[String],
    owner: &str,
) -> Result<(utter_ledger::Changes, Vec<String>)> {
    let mut changes = utter_ledger::Changes::new();
    let images = ImageStore::open(data_dir::images(data_dir), store.clone())?;
    let mut chosen: Vec<(String, String)> = if builtin {
        builtin_images(data_dir, &images)?
    } else {
        Vec::new()
    };
    for pair in pairs {
        let Some((name, reference)) = pair.split_once('=') else {
            bail!("--dapp {pair:?} is not NAME=IMAGE (e.g. --dapp counter=counter:latest)");
        };
        let image = images.get(reference).with_context(|| {
            format!("no image {reference} for dapp {name}: build or import it first")
        })?;
        chosen.retain(|(n, _)| n != name);
        chosen.push((name.to_string(), image.id.to_string()));
    }
    for (name, image) in &chosen {
        let config = utter_ledger::layout::DappConfig {
            image: image.clone(),
            owners: vec![owner.to_string()],
            permissions: Default::default(),
        };
        changes
            .set_dapp(name, &config)
            .with_context(|| format!("cannot install dapp {name}"))?;
    }
    Ok((changes, chosen.into_iter().map(|(n, _)| n).collect()))
}

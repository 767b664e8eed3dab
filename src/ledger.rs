//! `utter init`, `utter log`, `utter show`, `utter verify`: the ledger of a
//! data directory.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use utter_chunkstore::{OpenError, OpenOptions, Store};
use utter_ledger::key::Keypair;
use utter_ledger::key::Signer;
use utter_ledger::layout::{ChainConfig, Member};
use utter_ledger::{Block, BlockId, BlockReport, Ledger, MAIN, Verification};

use crate::progress::Progress;
use crate::{chain, data_dir, key};

/// `utter init`
#[derive(Args)]
pub struct InitArgs {
    /// The chain's name (also in every block and transaction)
    #[arg(long, default_value = "local", value_name = "NAME")]
    chain: String,
    /// Use this OpenSSH ed25519 private key (e.g. ~/.ssh/id_ed25519) as the
    /// node key; it is copied to keys/node. Default: keys/node, made if
    /// missing
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// This node's name in chain.toml
    #[arg(long, default_value = "node", value_name = "NAME")]
    name: String,
    /// Install a dapp in the genesis block: NAME=IMAGE (a tag or digest in
    /// this data directory's image store); repeatable; replaces a built-in
    /// dapp of the same name
    #[arg(long = "dapp", value_name = "NAME=IMAGE")]
    dapps: Vec<String>,
    /// Leave out the built-in makerspace dapps (membership, certifications,
    /// doors)
    #[arg(long)]
    no_builtin: bool,
    /// Another validator: NAME=KEY, KEY an OpenSSH public key
    /// (`ssh-ed25519 AAAA…`, as `utter key show` prints it); repeatable.
    /// The quorum is ⌊2n/3⌋+1 of the n validators, this node included
    #[arg(long = "validator", value_name = "NAME=KEY")]
    validators: Vec<String>,
    /// Print JSON: chain, genesis block, public key
    #[arg(long)]
    json: bool,
}

/// `utter log`
#[derive(Args)]
pub struct LogArgs {
    /// Branch or block to start from
    #[arg(default_value = MAIN)]
    start: String,
    /// Draw the DAG: merges and branches as lines
    #[arg(long)]
    graph: bool,
    /// Show at most this many blocks (newest first)
    #[arg(short = 'n', long, value_name = "N")]
    max: Option<usize>,
    /// Print JSON: one object per block, newest first
    #[arg(long, conflicts_with = "graph")]
    json: bool,
}

/// `utter show`
#[derive(Args)]
pub struct ShowArgs {
    /// Branch or block id (or a unique prefix of at least 4 hex digits)
    #[arg(default_value = MAIN)]
    block: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `utter verify`
#[derive(Args)]
pub struct VerifyArgs {
    /// Also re-execute every block's transactions with the dapps (in
    /// containers) and check each block's state is what they make
    #[arg(long)]
    reexecute: bool,
    /// Print JSON: counts, and the first invalid block if any
    #[arg(long)]
    json: bool,
}

/// Opens the data directory's chunk store.
pub fn open_chunks(data_dir: &Path, create: bool) -> Result<Store> {
    let path = data_dir::db(data_dir);
    match Store::open(
        &path,
        &OpenOptions {
            create,
            ..OpenOptions::default()
        },
    ) {
        Ok(s) => Ok(s),
        Err(OpenError::NotFound { .. }) => bail!(
            "no ledger in {}: create one with `utter init` (or pass the right --data-dir)",
            data_dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// Opens the data directory's ledger for reading: its chunk store is
/// opened read-only, so this works beside a running node.
pub fn open(data_dir: &Path) -> Result<Ledger> {
    let path = data_dir::db(data_dir);
    let chunks = match Store::open(
        &path,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    ) {
        Ok(s) => s,
        Err(OpenError::NotFound { .. }) => bail!(
            "no ledger in {}: create one with `utter init` (or pass the right --data-dir)",
            data_dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    Ok(Ledger::open(&data_dir::ledger(data_dir), Arc::new(chunks))?)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub fn init(data_dir: &Path, args: InitArgs) -> Result<ExitCode> {
    let repo = data_dir::ledger(data_dir);
    if repo.exists() {
        bail!(
            "{} already holds a ledger; use another --data-dir to start a new chain",
            data_dir.display()
        );
    }
    utter_ledger::layout::check_name("chain", &args.chain)?;
    utter_ledger::layout::check_name("node", &args.name)?;
    let node_key = key::key_path(data_dir);
    let keypair = match &args.key {
        Some(path) => {
            let given = Keypair::load(path)?;
            if node_key.exists() {
                let existing = Keypair::load(&node_key)?;
                if existing.public() != given.public() {
                    bail!(
                        "{} already holds a different node key; remove it or use it (drop --key)",
                        node_key.display()
                    );
                }
            } else {
                key::save(&node_key, &given)?;
            }
            given
        }
        None if node_key.exists() => Keypair::load(&node_key)?,
        None => key::generate(&node_key)?,
    };
    let mut config = ChainConfig::single(&args.chain, &args.name, &keypair.public());
    for v in &args.validators {
        let Some((name, key)) = v.split_once('=') else {
            bail!("--validator {v:?} is not NAME=KEY (KEY as `utter key show` prints it)");
        };
        let Some(signer) = Signer::parse(key.trim()) else {
            bail!(
                "--validator {name}: {key:?} is not an OpenSSH ed25519 public key (ssh-ed25519 AAAA…)"
            );
        };
        config.validators.push(Member {
            name: name.to_string(),
            key: signer.to_openssh(),
        });
    }
    config.quorum = ChainConfig::min_quorum(config.validators.len());
    config
        .check()
        .context("the validators given do not make a chain")?;
    let chunks = open_chunks(data_dir, true)?;
    let (dapps, names) = chain::genesis_dapps(
        data_dir,
        &chunks,
        !args.no_builtin,
        &args.dapps,
        &keypair.public().to_openssh(),
    )?;
    if names.iter().any(|n| n == chain::BUILTIN_TEST_DAPP) {
        config.test_dapps.push(chain::BUILTIN_TEST_DAPP.to_string());
    }
    let (_, genesis) = Ledger::create(&repo, Arc::new(chunks), &config, dapps, &keypair, now())?;
    if args.json {
        println!(
            "{}",
            json!({
                "chain": args.chain,
                "genesis": genesis.id.to_string(),
                "public_key": keypair.public().to_string(),
                "ledger": repo,
                "dapps": names,
            })
        );
    } else {
        println!("created chain {} in {}", args.chain, data_dir.display());
        println!("genesis   {}", genesis.id);
        println!("node key  {} ({})", keypair.public(), node_key.display());
        if !names.is_empty() {
            println!("dapps     {}", names.join(", "));
        }
        println!("next: `utter log`, `utter verify`");
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_from(ledger: &Ledger, tips: Option<&[BlockId]>, quiet: bool) -> Result<Verification> {
    let mut progress = Progress::items("verifying blocks", 0, quiet);
    let report = ledger.verify(tips, false, |done, total| {
        progress.set_total(total);
        progress.set(done);
    })?;
    progress.finish();
    Ok(report)
}

fn status(report: &BlockReport) -> String {
    match &report.verdict {
        Ok(()) => "valid".into(),
        Err(e) => format!("INVALID: block {e}"),
    }
}

fn report_json(r: &BlockReport) -> serde_json::Value {
    json!({
        "id": r.id.to_string(),
        "height": r.height,
        "parents": r.parents.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "signer": r.signer,
        "time": r.time,
        "summary": r.summary,
        "txs": r.txs,
        "valid": r.verdict.is_ok(),
        "error": r.verdict.as_ref().err().map(|e| format!("block {} {e}", r.id)),
    })
}

pub fn log(data_dir: &Path, args: LogArgs) -> Result<ExitCode> {
    let ledger = open(data_dir)?;
    let start = ledger.resolve(&args.start)?;
    let report = verify_from(&ledger, Some(&[start]), args.json)?;
    let newest_first: Vec<&BlockReport> = report
        .blocks
        .iter()
        .rev()
        .take(args.max.unwrap_or(usize::MAX))
        .collect();
    if args.json {
        let out: Vec<_> = newest_first.iter().map(|r| report_json(r)).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut graph = Graph::default();
    for r in newest_first {
        let line = format!(
            "{:>6}  {}  {:<12}  {:<5}  {} ({} tx{})",
            r.height,
            r.id.short(),
            r.signer.as_deref().unwrap_or("?"),
            if r.verdict.is_ok() { "ok" } else { "BAD" },
            r.summary.as_deref().unwrap_or("(unreadable)"),
            r.txs,
            if r.txs == 1 { "" } else { "s" },
        );
        if args.graph {
            for row in graph.rows(r.id, &r.parents, &line) {
                println!("{row}");
            }
        } else {
            println!("{line}");
        }
        if let Err(e) = &r.verdict {
            println!("        ^ block {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Lanes for `log --graph`, newest block first: `*` is the block, `|` a
/// lane waiting for an older block, `\` a merge opening lanes for its other
/// parents, `/` lanes joining where they meet a common parent.
#[derive(Default)]
struct Graph {
    lanes: Vec<Option<BlockId>>,
}

impl Graph {
    fn draw(&self, mark: Option<usize>, special: &[(usize, char)]) -> String {
        let mut s = String::new();
        for (i, lane) in self.lanes.iter().enumerate() {
            let c = if let Some(&(_, c)) = special.iter().find(|(j, _)| *j == i) {
                c
            } else if mark == Some(i) {
                '*'
            } else if lane.is_some() {
                '|'
            } else {
                ' '
            };
            s.push(c);
            s.push(' ');
        }
        s
    }

    fn rows(&mut self, id: BlockId, parents: &[BlockId], text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let waiting: Vec<usize> = (0..self.lanes.len())
            .filter(|&i| self.lanes[i] == Some(id))
            .collect();
        let col = match waiting.first() {
            Some(&c) => c,
            None => {
                let free = self.lanes.iter().position(Option::is_none);
                free.unwrap_or_else(|| {
                    self.lanes.push(None);
                    self.lanes.len() - 1
                })
            }
        };
        let joining: Vec<usize> = waiting.iter().copied().filter(|&i| i != col).collect();
        if !joining.is_empty() {
            let marks: Vec<(usize, char)> = joining.iter().map(|&i| (i, '/')).collect();
            out.push(self.draw(None, &marks));
            for i in joining {
                self.lanes[i] = None;
            }
        }
        self.lanes[col] = Some(id);
        out.push(format!("{}{text}", self.draw(Some(col), &[])));
        self.lanes[col] = parents.first().copied();
        let mut opened = Vec::new();
        for p in parents.iter().skip(1) {
            if self.lanes.contains(&Some(*p)) {
                continue;
            }
            let at = col + 1 + opened.len();
            self.lanes.insert(at, Some(*p));
            opened.push((at, '\\'));
        }
        if !opened.is_empty() {
            out.push(self.draw(None, &opened));
        }
        while self.lanes.last() == Some(&None) {
            self.lanes.pop();
        }
        out
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (before 1970: 1970).
pub fn utc(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    let rem = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        utter_dapp_sdk::date(secs),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn show(data_dir: &Path, args: ShowArgs) -> Result<ExitCode> {
    let ledger = open(data_dir)?;
    let id = ledger.resolve(&args.block)?;
    let block: Block = ledger.block(id)?;
    let report = verify_from(&ledger, Some(&[id]), true)?;
    let own = report
        .blocks
        .iter()
        .find(|r| r.id == id)
        .context("verification did not reach the block itself")?;
    let base = match block.parents.first() {
        Some(p) => Some(ledger.block(*p)?.tree),
        None => None,
    };
    let changes = ledger.diff_trees(base, block.tree)?;
    let txs = ledger.tx_lines(&block)?;
    let results = ledger.result_lines(&block)?;
    let parse = |l: &String| serde_json::from_str::<serde_json::Value>(l).unwrap_or(json!(l));
    if args.json {
        let mut v = report_json(own);
        v["chain"] = json!(block.chain);
        v["tree"] = json!(block.tree.to_string());
        v["signer_key"] = json!(block.signer.as_ref().map(ToString::to_string));
        v["changes"] = changes
            .iter()
            .map(|(p, c)| json!({"path": p, "change": c}))
            .collect();
        v["transactions"] = txs.iter().map(parse).collect();
        v["results"] = results.iter().map(parse).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("block    {}", block.id);
    println!("height   {}", block.height);
    println!("chain    {}", block.chain);
    let parents: Vec<String> = block.parents.iter().map(ToString::to_string).collect();
    println!(
        "parents  {}",
        if parents.is_empty() {
            "(genesis)".into()
        } else {
            parents.join(" ")
        }
    );
    println!(
        "signer   {} ({})",
        own.signer.as_deref().unwrap_or("?"),
        block
            .signer
            .as_ref()
            .map_or("no signature".into(), |s| s.fingerprint())
    );
    println!("time     {} ({})", utc(block.time), block.time);
    println!("status   {}", status(own));
    println!("summary  {}", block.summary);
    println!();
    println!("changes ({}):", changes.len());
    for (path, change) in &changes {
        let c = match change {
            utter_ledger::FileChange::Added => 'A',
            utter_ledger::FileChange::Modified => 'M',
            utter_ledger::FileChange::Removed => 'D',
        };
        println!("  {c} {path}");
    }
    println!("transactions ({}):", txs.len());
    for (i, line) in txs.iter().enumerate() {
        let tx = parse(line);
        let result = results.get(i).map(parse).unwrap_or(json!({}));
        println!(
            "  {:>4}  {:<8}  {}/{}  nonce {}  {}",
            i + 1,
            result["status"].as_str().unwrap_or("?"),
            tx["tx"]["dapp"].as_str().unwrap_or("?"),
            tx["tx"]["action"].as_str().unwrap_or("?"),
            tx["tx"]["nonce"],
            result["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(data_dir: &Path, args: VerifyArgs) -> Result<ExitCode> {
    let opened = chain::open_read_only(data_dir)?;
    let ledger = &opened.ledger;
    let branches = ledger.branches()?;
    let report = verify_from(ledger, None, args.json)?;
    let bad: Vec<&BlockReport> = report
        .blocks
        .iter()
        .filter(|r| r.verdict.is_err())
        .collect();
    // Re-execution only makes sense on blocks that are well-formed.
    let reexecuted = if args.reexecute && bad.is_empty() {
        Some(chain::reexecute_all(data_dir, &opened, args.json)?)
    } else {
        None
    };
    let mismatched = reexecuted.as_ref().map_or(0, |r| r.bad.len());
    // Commit certificates (git notes) against each block's validator set.
    let mut certified = 0usize;
    let mut bad_certs: Vec<(BlockId, String)> = Vec::new();
    for r in report.blocks.iter().filter(|r| r.verdict.is_ok()) {
        match ledger.certificate(r.id) {
            Ok(None) => {}
            Ok(Some(cert)) => match ledger.check_certificate(&ledger.block(r.id)?, &cert)? {
                Ok(_) => certified += 1,
                Err(e) => bad_certs.push((r.id, e.to_string())),
            },
            Err(e) => bad_certs.push((r.id, e.to_string())),
        }
    }
    if args.json {
        println!(
            "{}",
            json!({
                "blocks": report.blocks.len(),
                "transactions": report.txs(),
                "branches": branches.len(),
                "invalid": bad.len() + mismatched + bad_certs.len(),
                "first_invalid": bad.first().map(|r| report_json(r)),
                "certified": certified,
                "bad_certificates": bad_certs.iter().map(|(id, why)| json!({
                    "id": id.to_string(),
                    "error": why,
                })).collect::<Vec<_>>(),
                "reexecuted": reexecuted.as_ref().map(|r| json!({
                    "valid": r.checked,
                    "skipped": r.skipped,
                    "invalid": r.bad.iter().map(|m| json!({
                        "id": m.id.to_string(),
                        "height": m.height,
                        "error": m.why,
                    })).collect::<Vec<_>>(),
                })),
            })
        );
    } else if let Some((id, why)) = bad_certs.first() {
        eprintln!("error: block {id} has a commit certificate that does not hold: {why}");
        if bad_certs.len() > 1 {
            eprintln!("       and {} more bad certificate(s)", bad_certs.len() - 1);
        }
    } else if let Some(m) = reexecuted.as_ref().and_then(|r| r.bad.first()) {
        eprintln!(
            "error: block {} at height {} is not what its transactions make: {}",
            m.id, m.height, m.why
        );
        if mismatched > 1 {
            eprintln!(
                "       and {} more block(s) that re-execute differently",
                mismatched - 1
            );
        }
    } else if let Some(first) = bad.first() {
        eprintln!(
            "error: block {} at height {} {}",
            first.id,
            first.height,
            first
                .verdict
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        if bad.len() > 1 {
            eprintln!(
                "       and {} more invalid block(s), most because they descend from it (`utter log` marks each)",
                bad.len() - 1
            );
        }
    } else {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        println!(
            "verified {} and {} on {}: all valid",
            plural(report.blocks.len(), "block", "blocks"),
            plural(report.txs(), "transaction", "transactions"),
            plural(branches.len(), "branch", "branches"),
        );
        if certified > 0 {
            println!(
                "{} carry a commit certificate with a quorum of their validators' votes",
                plural(certified, "block", "blocks")
            );
        }
        if let Some(r) = &reexecuted {
            println!(
                "re-executed {}, merges included: each gives exactly its state (genesis is given, not re-executed)",
                plural(r.checked, "block", "blocks"),
            );
        }
    }
    Ok(
        if bad.is_empty() && mismatched == 0 && bad_certs.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

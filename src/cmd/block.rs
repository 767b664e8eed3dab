//! `utter block propose` and `utter block merge`: make a block on this
//! node from signed transactions (running each touched dapp once), or
//! merge branches into main.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use utter_executor::{Executor, Proposed};
use utter_ledger::{BlockId, Ledger, MAIN, Status};
use utter_node::Home;

use crate::ui::ms;

/// `utter block …`
#[derive(Subcommand)]
pub enum Command {
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

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Propose(args) => propose(home, args),
        Command::Merge(args) => merge(home, args),
    }
}

/// Now, as a block's time.
/// Now, or the latest parent's time if that is later (chain time never
/// goes back; a parent made on a clock a little ahead is no error).
fn block_time(ledger: &Ledger, parents: &[BlockId]) -> Result<i64> {
    let mut time = i64::try_from(utter_formats::now()).unwrap_or(i64::MAX);
    for p in parents {
        time = time.max(ledger.block(*p)?.time);
    }
    Ok(time)
}

/// Signed lines from a file, or stdin for `-`.
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

fn propose(home: &Home, args: ProposeArgs) -> Result<ExitCode> {
    let lines = read_lines(&args.txs)?;
    if lines.is_empty() {
        bail!("{} holds no transactions", args.txs.display());
    }
    let key = home.load_key(None)?;
    let opened = home.open()?;
    let ledger = &opened.ledger;
    let mut images = home.node_images(&opened.store)?;
    let mut helper = home.spawn_helper()?;
    let mut executor = Executor::new(ledger, &home.checkouts())?;
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
    let time = match args.time {
        Some(t) => t,
        None => block_time(ledger, &[tip])?,
    };
    let proposed = executor
        .propose(&mut helper, &mut images, tip, &lines, time, &key)
        .context("cannot make a block")?;
    ledger.advance(branch, tip, proposed.block.id)?;
    report_block(&proposed, branch, args.json)
}

fn merge(home: &Home, args: MergeArgs) -> Result<ExitCode> {
    let lines = match &args.txs {
        Some(path) => read_lines(path)?,
        None => Vec::new(),
    };
    let key = home.load_key(None)?;
    let opened = home.open()?;
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
    let mut images = home.node_images(&opened.store)?;
    let mut helper = home.spawn_helper()?;
    let mut executor = Executor::new(ledger, &home.checkouts())?;
    let time = match args.time {
        Some(t) => t,
        None => block_time(ledger, &parents)?,
    };
    let proposed = executor
        .propose_on(&mut helper, &mut images, &parents, &lines, None, time, &key)
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
                "verify_ms": ms(proposed.timings.verify),
                "dapps_ms": ms(proposed.timings.dapps),
                "write_ms": ms(proposed.timings.write),
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

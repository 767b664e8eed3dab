//! `utter log` and `utter show`: blocks newest first (with `--graph`, the
//! DAG drawn in lanes), and one block in full.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use utter_ledger::{Block, BlockId, BlockReport, MAIN};
use utter_node::Home;

use crate::blocks::{report_json, status, verify_from};
use crate::ui::utc;

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

pub fn log(home: &Home, args: LogArgs) -> Result<ExitCode> {
    let ledger = home.open_read_only()?.ledger;
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

pub fn show(home: &Home, args: ShowArgs) -> Result<ExitCode> {
    let ledger = home.open_read_only()?.ledger;
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
        v["round"] = json!(block.round);
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
    if let Some(round) = block.round {
        println!("round    {round} (a consensus proposal)");
    }
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

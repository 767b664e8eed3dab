//! `utter accounting balances` and `utter accounting export --format
//! ledger`: the accounting dapp's books, read off main with the dapp's own
//! library (its state is copied out of the ledger into a scratch
//! directory first).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use utter_accounting::{COMMODITY, Entry};
use utter_dapp_sdk::State;
use utter_ledger::{Block, BlockId, Ledger, MAIN};
use utter_membership::key_id;

use utter_node::Home;
use utter_node::query::{materialize, members};

/// `utter accounting …`
#[derive(Subcommand)]
pub enum Command {
    /// Every member's credits, dues paid-until, and the totals
    Balances {
        /// Read at this branch or block
        #[arg(long, default_value = MAIN, value_name = "BLOCK")]
        at: String,
        /// Print JSON: the accounts and totals
        #[arg(long)]
        json: bool,
    },
    /// Write the journal in a standard format
    Export(ExportArgs),
}

/// Export formats.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A ledger-cli journal (also read by hledger)
    Ledger,
}

/// `utter accounting export`
#[derive(Args)]
pub struct ExportArgs {
    /// The format
    #[arg(long, value_enum, default_value = "ledger")]
    format: Format,
    /// Write here instead of stdout
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Read at this branch or block
    #[arg(long, default_value = MAIN, value_name = "BLOCK")]
    at: String,
}

/// The ledger-cli account of a member: `members:<name>:<end of key id>`
/// (names are not unique; the key id's end tells members apart).
fn member_account(name: &str, id: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("members:{clean}:{}", &id[id.len().saturating_sub(8)..])
}

struct Books {
    _dir: tempfile::TempDir,
    state: State,
    names: HashMap<String, String>,
    block: Block,
}

fn books(ledger: &Ledger, at: &str) -> Result<Books> {
    let block = ledger.block(ledger.resolve(at)?)?;
    let dir = tempfile::tempdir().context("cannot make a scratch directory")?;
    materialize(ledger, &block, "accounting", dir.path())?;
    let names = members(ledger, &block)?
        .into_iter()
        .filter_map(|m| key_id(&m.key).map(|id| (id, m.name)))
        .collect();
    Ok(Books {
        state: State::at(dir.path().join("accounting")),
        _dir: dir,
        names,
        block,
    })
}

impl Books {
    /// The ledger-cli account of an accounting-dapp account.
    fn account(&self, account: &str) -> String {
        match account.strip_prefix("members:") {
            Some(id) => member_account(self.names.get(id).map_or("unknown", String::as_str), id),
            None => account.to_string(),
        }
    }
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    let ledger = home.open_read_only()?.ledger;
    match cmd {
        Command::Balances { at, json } => balances(&ledger, &at, json),
        Command::Export(args) => export(&ledger, &args),
    }
}

fn balances(ledger: &Ledger, at: &str, as_json: bool) -> Result<ExitCode> {
    let mut b = books(ledger, at)?;
    let all = utter_accounting::balances(&mut b.state)?;
    let totals = utter_accounting::totals(&mut b.state)?;
    let mut rows = Vec::new();
    for (key, balance) in all {
        let id = key_id(&key).context("a balance holds a key that is not ssh-ed25519")?;
        let name = b
            .names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| "(not a member)".into());
        let paid = utter_accounting::paid_until(&mut b.state, &key)?;
        rows.push((name, key, id, balance, paid));
    }
    rows.sort_by(|x, y| x.0.cmp(&y.0));
    if as_json {
        let accounts: Vec<_> = rows
            .iter()
            .map(|(name, key, id, balance, paid)| {
                json!({"name": name, "key": key, "account": member_account(name, id),
                       "balance": balance, "dues_paid_until": paid})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "block": b.block.id.to_string(),
                "commodity": COMMODITY,
                "accounts": accounts,
                "issued": totals.issued,
                "dues": totals.dues,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no balances yet: a treasurer mints credits (accounting mint)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:>12}  {:<10}  KEY",
        "NAME", "BALANCE", "DUES UNTIL"
    );
    for (name, key, _, balance, paid) in &rows {
        let key = key.strip_prefix("ssh-ed25519 ").unwrap_or(key);
        println!(
            "{:<20} {:>9} {COMMODITY}  {:<10}  …{}",
            name,
            balance,
            paid.map_or("-".to_string(), utter_dapp_sdk::date),
            &key[key.len().saturating_sub(12)..]
        );
    }
    println!(
        "issued {} {COMMODITY}, paid as dues {} {COMMODITY}",
        totals.issued, totals.dues
    );
    Ok(ExitCode::SUCCESS)
}

/// Block ids by height on the first-parent line ending at `tip`.
fn heights(ledger: &Ledger, tip: BlockId) -> Result<HashMap<u64, BlockId>> {
    let mut out = HashMap::new();
    let mut at = Some(tip);
    while let Some(id) = at {
        let block = ledger.block(id)?;
        out.insert(block.height, id);
        at = block.parents.first().copied();
    }
    Ok(out)
}

/// One journal entry as ledger-cli text.
fn write_entry(out: &mut impl Write, b: &Books, e: &Entry, block: Option<&BlockId>) -> Result<()> {
    let payee: String = e.memo.chars().filter(|c| !c.is_control()).collect();
    writeln!(out, "{} * {}", utter_dapp_sdk::date(e.time), payee.trim())?;
    writeln!(out, "    ; time: {}", e.time)?;
    writeln!(out, "    ; action: {}", e.action)?;
    match block {
        Some(id) => writeln!(out, "    ; block {id} height {} tx {}", e.height, e.index)?,
        None => writeln!(out, "    ; height {} tx {}", e.height, e.index)?,
    }
    for (account, amount) in &e.postings {
        writeln!(out, "    {:<48}  {amount} {COMMODITY}", b.account(account))?;
    }
    writeln!(out)?;
    Ok(())
}

fn export(ledger: &Ledger, args: &ExportArgs) -> Result<ExitCode> {
    let Format::Ledger = args.format;
    let mut b = books(ledger, &args.at)?;
    let entries = utter_accounting::journal(&mut b.state)?;
    let by_height = heights(ledger, b.block.id)?;
    let mut text = Vec::new();
    writeln!(
        text,
        "; utter accounting journal of chain {} at block {} (height {})",
        ledger.chain(),
        b.block.id,
        b.block.height
    )?;
    writeln!(text, "; one entry per accepted transaction, in block order")?;
    writeln!(text)?;
    writeln!(text, "commodity {COMMODITY}")?;
    writeln!(text)?;
    for e in &entries {
        if e.postings.iter().map(|(_, n)| i128::from(*n)).sum::<i128>() != 0 {
            bail!(
                "the journal entry at height {} tx {} does not balance; the books are damaged",
                e.height,
                e.index
            );
        }
        write_entry(&mut text, &b, e, by_height.get(&e.height))?;
    }
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} entries to {}", entries.len(), path.display());
        }
        None => std::io::stdout().write_all(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

//! `utter state get`: any dapp's state file, at main or a given block.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use utter_ledger::MAIN;
use utter_node::Home;
use utter_node::query::state_path;

/// `utter state …`
#[derive(Subcommand)]
pub enum Command {
    /// Print a state file: DAPP/PATH, e.g. membership/salt
    Get(GetArgs),
}

/// `utter state get`
#[derive(Args)]
pub struct GetArgs {
    /// DAPP/PATH inside the dapp's state
    path: String,
    /// Read at this branch or block
    #[arg(long, default_value = MAIN, value_name = "BLOCK")]
    at: String,
    /// Print JSON: path, block, size, and the value (as JSON when it is
    /// JSON, else as text)
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    let Command::Get(args) = cmd;
    let ledger = home.open_read_only()?.ledger;
    let block = ledger.block(ledger.resolve(&args.at)?)?;
    let Some((dapp, rest)) = args.path.split_once('/') else {
        bail!(
            "{:?} is not DAPP/PATH: e.g. `utter state get membership/salt`",
            args.path
        );
    };
    let Some(bytes) = ledger.read_value(&block, &state_path(dapp, rest))? else {
        bail!(
            "no file {rest} in dapp {dapp}'s state at {} (`utter show {}` lists what changed)",
            block.id.short(),
            args.at
        );
    };
    if args.json {
        let value = serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        println!(
            "{}",
            json!({"path": args.path, "block": block.id.to_string(), "size": bytes.len(), "value": value})
        );
    } else {
        std::io::stdout().write_all(&bytes)?;
    }
    Ok(ExitCode::SUCCESS)
}

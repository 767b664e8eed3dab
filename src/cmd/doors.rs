//! `utter doors log`: who came in, who was denied and why.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use utter_ledger::MAIN;
use utter_node::Home;
use utter_node::query::{door_log, members};

use crate::ui::utc;

/// `utter doors …`
#[derive(Subcommand)]
pub enum Command {
    /// The access log, oldest first: who came in, who was denied and why
    Log(LogArgs),
}

/// `utter doors log`
#[derive(Args)]
pub struct LogArgs {
    /// Only this door
    #[arg(long, value_name = "DOOR")]
    door: Option<String>,
    /// Only events at or after this time, Unix seconds
    #[arg(long, value_name = "SECS")]
    since: Option<u64>,
    /// Print JSON: one object per event
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    let Command::Log(args) = cmd;
    let ledger = home.open_read_only()?.ledger;
    let block = ledger.block(ledger.resolve(MAIN)?)?;
    let names: HashMap<String, String> = members(&ledger, &block)?
        .into_iter()
        .map(|m| (m.key, m.name))
        .collect();
    let events = door_log(&ledger, &block, args.door.as_deref(), args.since)?;
    for e in &events {
        let mut v = e.event.clone();
        let name = v["member"].as_str().and_then(|k| names.get(k)).cloned();
        v["door"] = json!(e.door);
        v["name"] = json!(name);
        if args.json {
            println!("{v}");
        } else {
            println!(
                "{}  {:<10} {:<7} {:<20} {}",
                utc(i64::try_from(e.time).unwrap_or(i64::MAX)),
                e.door,
                if v["granted"].as_bool() == Some(true) {
                    "open"
                } else {
                    "DENIED"
                },
                v["name"].as_str().unwrap_or("(unknown badge)"),
                v["reason"].as_str().unwrap_or("")
            );
        }
    }
    if events.is_empty() && !args.json {
        println!(
            "no door events{}",
            args.door
                .as_ref()
                .map_or(String::new(), |d| format!(" for {d}"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

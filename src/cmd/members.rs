//! `utter members ls`: the makerspace's members at main.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use utter_ledger::MAIN;
use utter_node::Home;
use utter_node::query::members;

/// `utter members …`
#[derive(Subcommand)]
pub enum Command {
    /// List members: name, status, roles, badges, key
    Ls {
        /// Print JSON: one object per member
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    let Command::Ls { json } = cmd;
    let ledger = home.open_read_only()?.ledger;
    let block = ledger.block(ledger.resolve(MAIN)?)?;
    let all = members(&ledger, &block)?;
    if json {
        for m in &all {
            println!(
                "{}",
                json!({"name": m.name, "key": m.key, "status": if m.active {"active"} else {"suspended"},
                       "roles": m.roles, "badges": m.badges.len()})
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!(
            "no members yet: the first admin adds themselves (membership add-member with a salt)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<10} {:<24} {:>6}  KEY",
        "NAME", "STATUS", "ROLES", "BADGES"
    );
    for m in &all {
        let key = m.key.strip_prefix("ssh-ed25519 ").unwrap_or(&m.key);
        println!(
            "{:<20} {:<10} {:<24} {:>6}  …{}",
            m.name,
            if m.active { "active" } else { "suspended" },
            if m.roles.is_empty() {
                "-".to_string()
            } else {
                m.roles.join(",")
            },
            m.badges.len(),
            &key[key.len().saturating_sub(12)..]
        );
    }
    Ok(ExitCode::SUCCESS)
}

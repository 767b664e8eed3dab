//! Reading the makerspace off the ledger: `utter state get`, `utter
//! members ls`, `utter doors log`. Reads main's tree (or a given block);
//! never writes.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use utter_ledger::{Block, Ledger, MAIN};
use utter_membership::Member;

use crate::ledger::{open, utc};

/// `utter state …`
#[derive(Subcommand)]
pub enum StateCommand {
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

/// `utter members …`
#[derive(Subcommand)]
pub enum MembersCommand {
    /// List members: name, status, roles, badges, key
    Ls {
        /// Print JSON: one object per member
        #[arg(long)]
        json: bool,
    },
}

/// `utter doors …`
#[derive(Subcommand)]
pub enum DoorsCommand {
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

fn state_path(dapp: &str, path: &str) -> String {
    format!("dapps/{dapp}/state/{path}")
}

fn files(ledger: &Ledger, block: &Block, dir: &str) -> Result<Vec<String>> {
    Ok(ledger
        .list(block, dir)?
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect())
}

/// Copies dapp `dapp`'s state at `block` into `root/<dapp>`, so the
/// dapps' own libraries (which read directories) can read it.
pub fn materialize(ledger: &Ledger, block: &Block, dapp: &str, root: &Path) -> Result<()> {
    let base = root.join(dapp);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let in_tree = if rel.is_empty() {
            state_path(dapp, "").trim_end_matches('/').to_string()
        } else {
            state_path(dapp, &rel)
        };
        for entry in ledger.list(block, &in_tree)?.unwrap_or_default() {
            let child = if rel.is_empty() {
                entry.name.clone()
            } else {
                format!("{rel}/{}", entry.name)
            };
            let path = base.join(&child);
            if entry.is_dir {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                dirs.push(child);
            } else {
                let bytes = ledger
                    .read_value(block, &state_path(dapp, &child))?
                    .unwrap_or_default();
                std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// (key, name) of every member at `block`.
pub fn member_names(ledger: &Ledger, block: &Block) -> Result<Vec<(String, String)>> {
    Ok(members(ledger, block)?
        .into_iter()
        .map(|m| (m.key, m.name))
        .collect())
}

fn members(ledger: &Ledger, block: &Block) -> Result<Vec<Member>> {
    let dir = state_path("membership", "members");
    let mut out = Vec::new();
    for name in files(ledger, block, &dir)? {
        let bytes = ledger
            .read_value(block, &format!("{dir}/{name}"))?
            .unwrap_or_default();
        let v: Value =
            serde_json::from_slice(&bytes).with_context(|| format!("{dir}/{name} is not JSON"))?;
        out.push(
            Member::from_json(&v)
                .with_context(|| format!("{dir}/{name} is not a member record"))?,
        );
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn state(data_dir: &Path, cmd: StateCommand) -> Result<ExitCode> {
    let StateCommand::Get(args) = cmd;
    let ledger = open(data_dir)?;
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
        use std::io::Write;
        std::io::stdout().write_all(&bytes)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn members_cmd(data_dir: &Path, cmd: MembersCommand) -> Result<ExitCode> {
    let MembersCommand::Ls { json } = cmd;
    let ledger = open(data_dir)?;
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

pub fn doors_cmd(data_dir: &Path, cmd: DoorsCommand) -> Result<ExitCode> {
    let DoorsCommand::Log(args) = cmd;
    let ledger = open(data_dir)?;
    let block = ledger.block(ledger.resolve(MAIN)?)?;
    let names: std::collections::HashMap<String, String> = members(&ledger, &block)?
        .into_iter()
        .map(|m| (m.key, m.name))
        .collect();
    let log_dir = state_path("doors", "log");
    let mut events = Vec::new();
    for door in files(&ledger, &block, &log_dir)? {
        if args.door.as_ref().is_some_and(|d| *d != door) {
            continue;
        }
        for day in files(&ledger, &block, &format!("{log_dir}/{door}"))? {
            let bytes = ledger
                .read_value(&block, &format!("{log_dir}/{door}/{day}"))?
                .unwrap_or_default();
            for line in String::from_utf8_lossy(&bytes).lines() {
                let mut v: Value = serde_json::from_str(line).with_context(|| {
                    format!("{log_dir}/{door}/{day} holds a line that is not JSON")
                })?;
                let time = v["time"].as_u64().unwrap_or(0);
                if args.since.is_some_and(|s| time < s) {
                    continue;
                }
                let name = v["member"].as_str().and_then(|k| names.get(k)).cloned();
                v["door"] = json!(door);
                v["name"] = json!(name);
                events.push((time, v));
            }
        }
    }
    // Stable: by time, then in log order.
    events.sort_by_key(|(t, _)| *t);
    for (time, v) in &events {
        if args.json {
            println!("{v}");
        } else {
            println!(
                "{}  {:<10} {:<7} {:<20} {}",
                utc(i64::try_from(*time).unwrap_or(i64::MAX)),
                v["door"].as_str().unwrap_or("?"),
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

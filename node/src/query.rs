//! Reading the makerspace off the ledger, for the CLI and the API: state
//! files, members, the door log, the doors' rules bundle, main's blocks.
//! Never writes.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use utter_client::api::{BlockInfo, RulesBundle};
use utter_ledger::{Block, BlockId, Ledger, LedgerError};
use utter_membership::Member;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Reading the ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A state file is not what its dapp writes.
    #[error("{path} is damaged: {why}")]
    Damaged {
        /// The tree path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Writing a copy.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `after` is not on main's first-parent line.
    #[error("block {0} is not on main")]
    NotOnMain(BlockId),
}

/// The tree path of `dapp`'s state file `path`.
pub fn state_path(dapp: &str, path: &str) -> String {
    format!("dapps/{dapp}/state/{path}")
}

fn files(ledger: &Ledger, block: &Block, dir: &str) -> Result<Vec<String>, QueryError> {
    Ok(ledger
        .list(block, dir)?
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect())
}

/// Every file under `dapp`'s state directory `dir` ("" for all of it), as
/// (path inside the state, bytes), depth first.
pub fn state_files(
    ledger: &Ledger,
    block: &Block,
    dapp: &str,
    dir: &str,
) -> Result<Vec<(String, Vec<u8>)>, QueryError> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.trim_matches('/').to_string()];
    while let Some(rel) = dirs.pop() {
        let in_tree = if rel.is_empty() {
            state_path(dapp, "").trim_end_matches('/').to_string()
        } else {
            state_path(dapp, &rel)
        };
        let Some(entries) = ledger.list(block, &in_tree)? else {
            // A single file rather than a directory.
            if let Some(bytes) = ledger.read_value(block, &in_tree)? {
                out.push((rel, bytes));
            }
            continue;
        };
        for entry in entries {
            let child = if rel.is_empty() {
                entry.name.clone()
            } else {
                format!("{rel}/{}", entry.name)
            };
            if entry.is_dir {
                dirs.push(child);
            } else {
                let bytes = ledger
                    .read_value(block, &state_path(dapp, &child))?
                    .unwrap_or_default();
                out.push((child, bytes));
            }
        }
    }
    Ok(out)
}

/// Copies `dapp`'s state at `block` into `root/<dapp>`, so the dapps' own
/// libraries (which read directories) can read it.
pub fn materialize(
    ledger: &Ledger,
    block: &Block,
    dapp: &str,
    root: &Path,
) -> Result<(), QueryError> {
    let base = root.join(dapp);
    let write = |path: &Path, bytes: &[u8]| -> Result<(), QueryError> {
        let fail = |source| QueryError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        std::fs::write(path, bytes).map_err(fail)
    };
    std::fs::create_dir_all(&base).map_err(|source| QueryError::Write {
        path: base.clone(),
        source,
    })?;
    for (rel, bytes) in state_files(ledger, block, dapp, "")? {
        write(&base.join(rel), &bytes)?;
    }
    Ok(())
}

/// Every member at `block`, by name.
pub fn members(ledger: &Ledger, block: &Block) -> Result<Vec<Member>, QueryError> {
    let dir = state_path("membership", "members");
    let mut out = Vec::new();
    for name in files(ledger, block, &dir)? {
        let path = format!("{dir}/{name}");
        let bytes = ledger.read_value(block, &path)?.unwrap_or_default();
        let damaged = |why: String| QueryError::Damaged {
            path: path.clone(),
            why,
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        out.push(Member::from_json(&v).ok_or_else(|| damaged("not a member record".into()))?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One door event of the log, with the door it is from.
#[derive(Debug, Clone)]
pub struct DoorEvent {
    /// The door.
    pub door: String,
    /// When the controller decided, Unix seconds.
    pub time: u64,
    /// The logged line, as the doors dapp wrote it.
    pub event: Value,
}

/// The door log at `block`, oldest first (by time, then log order),
/// optionally only one door's and only from `since`.
pub fn door_log(
    ledger: &Ledger,
    block: &Block,
    door: Option<&str>,
    since: Option<u64>,
) -> Result<Vec<DoorEvent>, QueryError> {
    let log_dir = state_path("doors", "log");
    let mut events = Vec::new();
    for name in files(ledger, block, &log_dir)? {
        if door.is_some_and(|d| d != name) {
            continue;
        }
        for day in files(ledger, block, &format!("{log_dir}/{name}"))? {
            let path = format!("{log_dir}/{name}/{day}");
            let bytes = ledger.read_value(block, &path)?.unwrap_or_default();
            for line in String::from_utf8_lossy(&bytes).lines() {
                let event: Value = serde_json::from_str(line).map_err(|_| QueryError::Damaged {
                    path: path.clone(),
                    why: "it holds a line that is not JSON".into(),
                })?;
                let time = event["time"].as_u64().unwrap_or(0);
                if since.is_some_and(|s| time < s) {
                    continue;
                }
                events.push(DoorEvent {
                    door: name.clone(),
                    time,
                    event,
                });
            }
        }
    }
    // Stable: by time, then in log order.
    events.sort_by_key(|e| e.time);
    Ok(events)
}

/// What `doors::may_open` reads, per dapp: the directories (or files) of
/// its state.
pub const RULES: [(&str, &[&str]); 5] = [
    ("doors", &["doors"]),
    ("membership", &["members", "badges", "salt"]),
    ("certifications", &["certs"]),
    ("accounting", &["dues"]),
    ("reservations", &["bookings"]),
];

/// The doors' rules bundle at `block`.
pub fn rules_bundle(ledger: &Ledger, block: &Block) -> Result<RulesBundle, QueryError> {
    let mut files = BTreeMap::new();
    for (dapp, dirs) in RULES {
        for dir in dirs {
            for (rel, bytes) in state_files(ledger, block, dapp, dir)? {
                let name = format!("{dapp}/{rel}");
                let text = String::from_utf8(bytes).map_err(|_| QueryError::Damaged {
                    path: state_path(dapp, &rel),
                    why: "it is not UTF-8".into(),
                })?;
                files.insert(name, text);
            }
        }
    }
    Ok(RulesBundle {
        block: block.id,
        height: block.height,
        time: block.time,
        files,
    })
}

/// A block as a follower sees it.
pub fn block_info(ledger: &Ledger, block: &Block) -> Result<BlockInfo, QueryError> {
    Ok(BlockInfo {
        id: block.id,
        height: block.height,
        parents: block.parents.clone(),
        time: block.time,
        txs: ledger.tx_lines(block)?.len(),
        summary: block.summary.clone(),
    })
}

/// The blocks after `after` on the first-parent line ending at `head`,
/// oldest first, at most `max` (the oldest ones); with no `after`, the
/// head alone.
pub fn blocks_after(
    ledger: &Ledger,
    head: BlockId,
    after: Option<BlockId>,
    max: usize,
) -> Result<Vec<BlockInfo>, QueryError> {
    let Some(after) = after else {
        return Ok(vec![block_info(ledger, &ledger.block(head)?)?]);
    };
    let floor = ledger
        .block(after)
        .map_err(|_| QueryError::NotOnMain(after))?
        .height;
    let mut line = Vec::new();
    let mut at = Some(head);
    while let Some(id) = at {
        if id == after {
            break;
        }
        let block = ledger.block(id)?;
        if block.height <= floor {
            return Err(QueryError::NotOnMain(after));
        }
        at = block.parents.first().copied();
        line.push(block);
    }
    if at.is_none() {
        return Err(QueryError::NotOnMain(after));
    }
    line.reverse();
    line.truncate(max);
    line.iter().map(|b| block_info(ledger, b)).collect()
}

/// The image a `chain deploy` or `chain upgrade` transaction names.
pub fn deploy_image(tx: &utter_ledger::tx::Tx) -> Option<&str> {
    use utter_ledger::governance::{CHAIN_DAPP, DEPLOY_ACTION, UPGRADE_ACTION};
    if tx.dapp != CHAIN_DAPP || (tx.action != DEPLOY_ACTION && tx.action != UPGRADE_ACTION) {
        return None;
    }
    tx.args.get("image").and_then(Value::as_str)
}

/// The dapps deployed at `block`, by name.
pub fn dapps(ledger: &Ledger, block: &Block) -> Result<utter_client::api::Dapps, QueryError> {
    use utter_ledger::layout::{DAPP_TOML, DAPPS, DappConfig};
    let mut dapps = Vec::new();
    for name in files(ledger, block, DAPPS)? {
        let path = format!("{DAPPS}/{name}/{DAPP_TOML}");
        let Some(bytes) = ledger.read_value(block, &path)? else {
            continue;
        };
        let config = DappConfig::parse(&name, &bytes).map_err(|e| QueryError::Damaged {
            path: path.clone(),
            why: e.to_string(),
        })?;
        dapps.push(utter_client::api::DappInfo {
            name,
            image: config.image,
            owners: config.owners,
            deployed_at: config.deployed_at.unwrap_or(0),
            upgraded_at: config.upgraded_at,
        });
    }
    dapps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(utter_client::api::Dapps {
        at: block.id,
        height: block.height,
        dapps,
    })
}

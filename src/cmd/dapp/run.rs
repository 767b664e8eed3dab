//! `utter dapp run`: one invocation of the dapp protocol on a state
//! directory, outside any chain.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use utter_node::Home;
use utter_runtime::Limits;
use utter_runtime::dapp::{ChangeKind, Context, Entry, Invocation, invoke};

use crate::container::{
    LimitArgs, finished_json, image_rootfs, open_runtime, parse_size, read_limited,
};

/// Which entry point `utter dapp run` runs.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum EntryArg {
    Apply,
    Test,
}

/// Arguments of `utter dapp run`.
#[derive(Args, Debug)]
pub struct DappRunArgs {
    /// The dapp's image: a tag, sha256:… digest, or unique digest prefix
    image: String,
    /// The dapp's state directory: read as the state before, written with
    /// the state after (only when the dapp exits 0)
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Transactions, one JSON line each (as in a block's txs.jsonl)
    #[arg(long, value_name = "FILE")]
    txs: Option<PathBuf>,
    /// context.json to give the dapp [default: chain "local", height 1,
    /// time now, dapp named after IMAGE]
    #[arg(long, value_name = "FILE")]
    context: Option<PathBuf>,
    /// Entry point to run
    #[arg(long, value_enum, default_value = "apply")]
    entry: EntryArg,
    /// Run, print, but leave the state directory as it was
    #[arg(long)]
    dry_run: bool,
    /// Most bytes the dapp may write (state changes and results)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    scratch: u64,
    #[command(flatten)]
    limits: LimitArgs,
    /// Print one JSON object: outcome, results, changed paths, output
    #[arg(long)]
    json: bool,
}

/// The most transaction bytes `dapp run` reads.
const MAX_TXS: u64 = 256 << 20;

pub fn dapp_run(home: &Home, args: DappRunArgs) -> Result<u8> {
    let entry = match args.entry {
        EntryArg::Apply => Entry::Apply,
        EntryArg::Test => Entry::Test,
    };
    let txs = match &args.txs {
        Some(path) => read_limited(path, MAX_TXS, "transactions file")?,
        None if entry == Entry::Apply => {
            bail!("apply needs transactions: give --txs FILE (one JSON line each), or --entry test")
        }
        None => Vec::new(),
    };
    for (n, line) in txs.split(|b| *b == b'\n').enumerate() {
        if !line.is_empty() && serde_json::from_slice::<serde_json::Value>(line).is_err() {
            bail!(
                "line {} of {} is not JSON: each line must be one transaction",
                n + 1,
                args.txs.as_deref().unwrap_or(Path::new("-")).display()
            );
        }
    }
    let mut context = match &args.context {
        Some(path) => serde_json::from_slice::<Context>(&read_limited(path, 1 << 20, "context")?)
            .with_context(|| {
                format!(
                    "{} is not a dapp context: it needs chain, dapp, entry, height, time, parent and proposer",
                    path.display()
                )
            })?,
        None => Context {
            chain: "local".into(),
            dapp: args.image.clone(),
            entry,
            height: 1,
            time: utter_formats::now(),
            parent: String::new(),
            proposer: String::new(),
        },
    };
    context.entry = entry;
    let state = args.state.canonicalize().with_context(|| {
        format!(
            "state directory {} does not exist: create it (an empty directory is a new dapp's state)",
            args.state.display()
        )
    })?;
    let runtime = open_runtime(home)?;
    let (process, rootfs) = image_rootfs(home, &args.image, args.json)?;
    if process.command.is_empty() {
        bail!(
            "{} has no entrypoint: a dapp image needs one (utter image build --entrypoint)",
            args.image
        );
    }
    let invocation = Invocation {
        rootfs,
        command: process.command,
        env: process.env,
        cwd: process.cwd,
        state: state.clone(),
        chain: None,
        context,
        txs,
        limits: args.limits.limits(Limits::default().timeout)?,
        scratch: args.scratch,
        changed: None,
    };
    let run = invoke(&runtime, &invocation)?;
    let ok = run.finished.outcome.success();
    if ok && !args.dry_run {
        run.apply_to(&state)
            .with_context(|| format!("cannot write the new state into {}", state.display()))?;
    }
    if args.json {
        let results: Vec<serde_json::Value> = String::from_utf8_lossy(&run.results)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"unparsed": l})))
            .collect();
        let changes: Vec<serde_json::Value> = run
            .changes
            .iter()
            .map(|c| {
                let (kind, extra) = match &c.kind {
                    ChangeKind::File { executable } => ("file", json!({"executable": executable})),
                    ChangeKind::Symlink { target } => ("symlink", json!({"target": target})),
                    ChangeKind::Dir { opaque } => ("dir", json!({"opaque": opaque})),
                    ChangeKind::Removed => ("removed", json!({})),
                };
                let mut v = json!({"path": c.path, "kind": kind});
                if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                    v.extend(extra.clone());
                }
                v
            })
            .collect();
        let mut v = finished_json(&run.finished);
        v["results"] = json!(results);
        v["changes"] = json!(changes);
        v["state_written"] = json!(ok && !args.dry_run);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        err.write_all(&run.finished.stdout)?;
        err.write_all(&run.finished.stderr)?;
        std::io::stdout().write_all(&run.results)?;
        let written = if entry == Entry::Test {
            if ok { "test passed" } else { "test failed" }
        } else if !ok {
            "state left as it was"
        } else if args.dry_run {
            "state left as it was (--dry-run)"
        } else {
            "state written"
        };
        eprintln!(
            "{} {}: {} in {:.1} ms; {} changed paths; {written}",
            args.image,
            entry.as_str(),
            run.finished.outcome,
            run.finished.elapsed.as_secs_f64() * 1000.0,
            run.changes.len()
        );
    }
    Ok(if ok {
        0
    } else {
        run.finished.outcome.exit_code().clamp(1, 255) as u8
    })
}

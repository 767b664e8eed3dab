//! Proof of merge over the network, under load: a devnet of validators on
//! loopback (`utter devnet up`), each re-executing every proposal with the
//! doors dapp and the invariants test dapp in containers, with door
//! `access` transactions offered at a steady rate spread over every
//! node's API; beside it, in the same run, the same load through one node
//! that makes its blocks alone. Prints committed tx/s, submit→commit
//! p50/p99, consensus frames per committed block and bytes on the wire per
//! transaction.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use utter_client::Client;

use crate::node::{door_load, offer, start_node, utter};
use crate::utter_bin;

/// Options of `utter-bench cluster`.
pub struct Options {
    pub validators: usize,
    pub rate: usize,
    pub seconds: u64,
    pub batch: usize,
    pub work: Option<std::path::PathBuf>,
}

/// Stops the devnet (`utter`, its dir) when dropped.
pub(crate) struct Devnet<'a>(pub(crate) &'a Path, pub(crate) &'a Path);

impl Drop for Devnet<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.0)
            .args(["devnet", "down", "--dir"])
            .arg(self.1)
            .output();
    }
}

pub fn run(opts: Options) -> Result<()> {
    let bin = utter_bin()?;
    let tmp = tempfile::tempdir()?;
    let work = crate::work_dir(opts.work.clone(), tmp.path())?;
    let total = opts.rate * opts.seconds as usize;
    println!(
        "## cluster: door access transactions, {} validators on loopback beside one node alone",
        opts.validators
    );
    println!(
        "offered {} tx/s for {} s in requests of {} ({total} transactions) to every node's API",
        opts.rate, opts.seconds, opts.batch
    );

    // One node alone, the same load.
    let single = work.join("single");
    let _ = std::fs::remove_dir_all(&single);
    utter(&bin, &single, &["init", "--chain", "bench"])?;
    let (node, client) = start_node(&bin, &single)?;
    let lines = door_load(&bin, &single, &work, "bench", total)?;
    let alone = offer(&[client], &lines, opts.rate, opts.batch)?;
    drop(node);

    // The devnet.
    let dir = work.join("devnet");
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(&bin)
        .args(["devnet", "up", "--json", "--chain", "bench", "--dir"])
        .arg(&dir)
        .args(["--validators", &opts.validators.to_string()])
        .output()?;
    let _down = Devnet(&bin, &dir);
    if !out.status.success() {
        bail!("devnet up: {}", String::from_utf8_lossy(&out.stderr));
    }
    let up: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let clients: Vec<Client> = up["nodes"]
        .as_array()
        .context("devnet up --json lists nodes")?
        .iter()
        .filter_map(|n| n["api"].as_str())
        .map(Client::new)
        .collect();
    let v1 = dir.join("v1");
    let lines = door_load(&bin, &v1, &work, "bench", total)?;
    let before: Vec<_> = clients
        .iter()
        .map(|c| c.status())
        .collect::<Result<_, _>>()?;
    let cluster = offer(&clients, &lines, opts.rate, opts.batch)?;
    let after: Vec<_> = clients
        .iter()
        .map(|c| c.status())
        .collect::<Result<_, _>>()?;
    let consensus = |s: &utter_client::api::Status| s.consensus.clone().unwrap_or_default();
    let blocks = after[0].height - before[0].height;
    let sum = |f: &dyn Fn(&utter_client::api::ConsensusStatus) -> u64| -> u64 {
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| f(&consensus(a)) - f(&consensus(b)))
            .sum()
    };
    let frames = sum(&|c| c.frames_sent);
    let bytes = sum(&|c| c.bytes_sent) + sum(&|c| c.bytes_pulled);
    let taken = sum(&|c| c.pushes_taken);
    let pulled = sum(&|c| c.pushes_pulled);

    println!(
        "                            {} validators     one node alone   target",
        opts.validators
    );
    println!(
        "committed, sustained        {:>7.0} tx/s     {:>7.0} tx/s     >= 2000 tx/s  {}",
        cluster.rate,
        alone.rate,
        if cluster.rate >= 2000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "submit -> committed, p50    {:>7.0} ms       {:>7.0} ms       <= 500 ms     {}",
        cluster.p50,
        alone.p50,
        if cluster.p50 <= 500.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "submit -> committed, p99    {:>7.0} ms       {:>7.0} ms",
        cluster.p99, alone.p99
    );
    println!(
        "                 max        {:>7.0} ms       {:>7.0} ms",
        cluster.max, alone.max
    );
    println!(
        "cluster: {blocks} blocks committed ({:.0} transactions each), {:.1} consensus frames per committed block, {:.0} bytes per transaction on the consensus protocol and pulls (all nodes)",
        cluster.committed as f64 / blocks.max(1) as f64,
        frames as f64 / blocks.max(1) as f64,
        bytes as f64 / cluster.committed.max(1) as f64
    );
    println!(
        "proposals pushed whole: {taken} taken in by their validators, {pulled} pulled instead (all nodes)"
    );
    println!(
        "(the load took {:.1} s to commit on the cluster, {:.1} s alone)",
        cluster.elapsed, alone.elapsed
    );
    Ok(())
}

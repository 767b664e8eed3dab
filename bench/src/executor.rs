//! `utter-bench executor`: blocks of 1,000 counter transactions through the
//! whole executor path (signature checks, one container run per block
//! through the helper process, results, tree, signed and synced commit,
//! main moved), printing where a block's time goes and the executor's
//! overhead beside the dapp run it wraps.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use utter_executor::Executor;
use utter_ledger::key::Keypair;
use utter_ledger::tx::{Tx, VERSION};
use utter_ledger::{MAIN, Status};
use utter_node::Home;

use crate::runtime::utter;
use crate::utter_bin;

/// Options of `utter-bench executor`.
pub struct Options {
    /// Blocks to time (after one warm-up block).
    pub blocks: usize,
    /// Transactions per block.
    pub txs: usize,
    /// Work directory; a temporary one when `None`.
    pub work: Option<PathBuf>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn batch(key: &Keypair, chain: &str, first_nonce: u64, n: usize) -> Result<Vec<String>> {
    let signer = key.public().to_openssh();
    (0..n)
        .map(|i| {
            let tx = Tx {
                v: VERSION,
                chain: chain.into(),
                dapp: "counter".into(),
                action: "add".into(),
                args: serde_json::json!({"name": format!("c{}", i % 100)}),
                signer: signer.clone(),
                nonce: first_nonce + i as u64,
                time: 1,
            };
            Ok(tx.sign(key)?.to_line())
        })
        .collect()
}

#[derive(Default)]
struct Timed {
    total: Vec<f64>,
    dapps: Vec<f64>,
    verify: Vec<f64>,
    write: Vec<f64>,
}

impl Timed {
    fn report(self, path: &str, txs: usize) {
        let (t, d, v, w) = (
            median(self.total),
            median(self.dapps),
            median(self.verify),
            median(self.write),
        );
        println!("\n{path}");
        println!("                                   median ms   share of block");
        println!("block, whole path                  {t:>9.1}");
        println!(
            "  dapp run (container + helper)    {d:>9.1}   {:>5.1}%",
            100.0 * d / t
        );
        println!(
            "  signature and form checks        {v:>9.1}   {:>5.1}%",
            100.0 * v / t
        );
        println!(
            "  tree, signed commit, sync        {w:>9.1}   {:>5.1}%",
            100.0 * w / t
        );
        println!(
            "  the rest (checkout, results)     {:>9.1}   {:>5.1}%",
            t - d - v - w,
            100.0 * (t - d - v - w) / t
        );
        println!(
            "executor overhead beyond the dapp run: {:.1}% of the block time (target <= 30%)",
            100.0 * (t - d) / t
        );
        println!(
            "throughput: {:.0} tx/s on one block at a time",
            txs as f64 / (t / 1000.0)
        );
    }
}

pub fn run(opts: Options) -> Result<()> {
    let bin = utter_bin()?;
    let tmp = tempfile::tempdir()?;
    let work = crate::work_dir(opts.work.clone(), tmp.path())?;
    let data = work.join("data");
    crate::runtime::counter_image(&bin, &data)?;
    utter(
        &bin,
        &data,
        &["init", "--chain", "bench", "--dapp", "counter=counter"],
    )?;
    // Warm-up through the CLI: unpacks the rootfs cache.
    let warm = work.join("warm.jsonl");
    let user = Keypair::generate("bench user")?;
    std::fs::write(&warm, batch(&user, "bench", 1, 10)?.join("\n") + "\n")?;
    utter(
        &bin,
        &data,
        &["block", "propose", "--txs", &warm.display().to_string()],
    )?;

    let home = Home::new(&data).with_helper(&bin);
    let opened = home.open()?;
    let ledger = &opened.ledger;
    let key = home.load_key(None)?;
    let mut images = home.node_images(&opened.store)?;
    let mut helper = home.spawn_helper()?;
    let mut executor = Executor::new(ledger, &home.checkouts())?;
    // Two paths, alternating block by block: signatures checked in the
    // block (`block propose`, a validator's re-execution) and checked at
    // admission (the node: its mempool holds checked transactions).
    let mut in_block = Timed::default();
    let mut admitted = Timed::default();
    let mut nonce = 11;
    println!(
        "## executor: {} blocks of {} counter transactions per path (1 signer, 100 counters), synced",
        opts.blocks, opts.txs
    );
    for i in 0..=2 * opts.blocks {
        let lines = batch(&user, "bench", nonce, opts.txs)?;
        nonce += opts.txs as u64;
        let tip = ledger.resolve(MAIN)?;
        let time = 1_700_000_000 + i as i64;
        let checked_at_admission = i % 2 == 1;
        let p = if checked_at_admission {
            let checked = utter_executor::verify_all(&lines, "bench")
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            executor.propose_verified(&mut helper, &mut images, tip, &lines, checked, time, &key)
        } else {
            executor.propose(&mut helper, &mut images, tip, &lines, time, &key)
        }
        .context("the executor failed")?;
        let accepted = p
            .results
            .iter()
            .filter(|r| r.status == Status::Accepted)
            .count();
        anyhow::ensure!(
            accepted == opts.txs,
            "only {accepted} of {} accepted: {:?}",
            opts.txs,
            p.results.iter().find(|r| r.status != Status::Accepted)
        );
        ledger.advance(MAIN, tip, p.block.id)?;
        if i == 0 {
            continue; // the first block builds the checkout
        }
        let into = if checked_at_admission {
            &mut admitted
        } else {
            &mut in_block
        };
        into.total.push(ms(p.timings.total));
        into.dapps.push(ms(p.timings.dapps));
        into.verify.push(ms(p.timings.verify));
        into.write.push(ms(p.timings.write));
    }
    in_block.report(
        "signatures checked in the block (block propose, re-execution)",
        opts.txs,
    );
    admitted.report(
        "signatures checked at admission (the node's mempool)",
        opts.txs,
    );
    Ok(())
}

//! The block producer: one thread that owns the executor and the sandbox
//! helper, takes durable transactions from the pool, makes a block on
//! main, moves main, and only then forgets the transactions' records.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use utter_consensus::{ExecError, Executor};
use utter_ledger::key::Keypair;
use utter_ledger::{BlockId, Ledger, MAIN, Status, TxResult};

use super::{Committed, Recent, Shared, lock, seq_key};
use crate::chain::{self, NodeImages, Opened};
use crate::data_dir;

/// When to cut a block.
pub struct Settings {
    pub block_every: Duration,
    pub block_txs: usize,
    pub verbose: bool,
}

/// Runs until the node stops; on an error, stops the API too.
pub fn run(
    data_dir: &Path,
    opened: Opened,
    key: Keypair,
    shared: Arc<Shared>,
    settings: Settings,
) -> Result<()> {
    let result = produce(data_dir, &opened, &key, &shared, &settings);
    if let Err(e) = &result {
        eprintln!("error: the block producer stopped: {e:#}");
        shared.failed.notify_one();
    }
    result
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn produce(
    data_dir: &Path,
    opened: &Opened,
    key: &Keypair,
    shared: &Shared,
    settings: &Settings,
) -> Result<()> {
    let ledger = &opened.ledger;
    let mut images = NodeImages::new(data_dir, &opened.store)?;
    let mut helper = chain::spawn_helper(data_dir)?;
    let mut executor = Executor::new(ledger, &data_dir::checkouts(data_dir))?;
    let mut last_cut = Instant::now();
    loop {
        let batch = {
            let mut pool = lock(&shared.pool);
            loop {
                if shared.stopping.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let ready = pool.ready();
                let since = last_cut.elapsed();
                if ready >= settings.block_txs || (ready > 0 && since >= settings.block_every) {
                    break pool.take(settings.block_txs);
                }
                let wait = if ready > 0 {
                    settings.block_every.saturating_sub(since)
                } else {
                    Duration::from_secs(1)
                };
                pool = shared
                    .wake
                    .wait_timeout(pool, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        last_cut = Instant::now();
        let tip = ledger.resolve(MAIN)?;
        let parent = ledger.block(tip)?;
        let time = now().max(parent.time);
        let lines: Vec<String> = batch.iter().map(|p| p.line.clone()).collect();
        let checked = batch.iter().map(|p| p.tx.clone()).collect();
        let proposed = match executor.propose_verified(
            &mut helper,
            &mut images,
            tip,
            &lines,
            checked,
            time,
            key,
        ) {
            Ok(p) => p,
            Err(ExecError::Host(e)) => {
                eprintln!("the sandbox helper failed ({e}); starting a new one");
                helper = chain::spawn_helper(data_dir)?;
                continue;
            }
            Err(e) => return Err(e).context("cannot make a block"),
        };
        // The block and main are synced: now the records may go.
        ledger.advance(MAIN, tip, proposed.block.id)?;
        let seqs: Vec<u64> = batch.iter().map(|p| p.seq).collect();
        let keys: Vec<Vec<u8>> = seqs.iter().map(|s| seq_key(*s)).collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        shared
            .store
            .write_records(&[], &key_refs)
            .context("cannot drop committed transactions from the mempool")?;
        lock(&shared.pool).committed(&seqs);
        let accepted = proposed
            .results
            .iter()
            .filter(|r| r.status == Status::Accepted)
            .count();
        {
            let mut recent = lock(&shared.recent);
            for result in proposed.results {
                recent.insert(
                    result.tx.clone(),
                    Committed {
                        block: proposed.block.id,
                        height: proposed.block.height,
                        result,
                    },
                );
            }
        }
        {
            let mut head = lock(&shared.head);
            head.id = proposed.block.id;
            head.height = proposed.block.height;
            head.blocks_made += 1;
        }
        shared.blocks.send_modify(|n| *n += 1);
        if settings.verbose {
            eprintln!(
                "block {} at height {}: {} transactions, {accepted} accepted ({:.1} ms, {:.1} in dapps)",
                proposed.block.id.short(),
                proposed.block.height,
                batch.len(),
                proposed.timings.total.as_secs_f64() * 1e3,
                proposed.timings.dapps.as_secs_f64() * 1e3,
            );
        }
    }
}

/// The results of the transactions in the last `blocks` blocks on the
/// first-parent line ending at `tip`, so `GET /v1/txs/ID` answers for
/// them after a restart.
pub fn recent_results(ledger: &Ledger, tip: BlockId, blocks: usize) -> Result<Recent> {
    let mut line = Vec::new();
    let mut at = Some(tip);
    while let Some(id) = at {
        if line.len() == blocks {
            break;
        }
        let block = ledger.block(id)?;
        at = block.parents.first().copied();
        line.push(block);
    }
    let mut recent = Recent::default();
    for block in line.iter().rev() {
        for text in ledger.result_lines(block)? {
            if let Ok(result) = serde_json::from_str::<TxResult>(&text) {
                recent.insert(
                    result.tx.clone(),
                    Committed {
                        block: block.id,
                        height: block.height,
                        result,
                    },
                );
            }
        }
    }
    Ok(recent)
}

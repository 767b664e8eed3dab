//! The block producer: one thread that owns the executor and the sandbox
//! helper, takes durable transactions from the pool, makes a block on
//! main, moves main, and only then forgets the transactions' records.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use utter_executor::{ExecError, Executor};
use utter_ledger::key::Keypair;
use utter_ledger::{MAIN, Status};

use crate::home::{Home, Opened};
use crate::run::{Committed, NodeError, Shared, lock, seq_key};

/// Whether this node makes blocks on main alone: its key is the only
/// validator main's `chain.toml` names. (Chains of several validators
/// need consensus over the network; other nodes follow.)
pub(crate) fn can_produce(ledger: &utter_ledger::Ledger, key: &Keypair) -> bool {
    let Ok(main) = ledger.resolve(MAIN).and_then(|m| ledger.block(m)) else {
        return false;
    };
    let Ok(config) = ledger.chain_config(&main) else {
        return false;
    };
    let me = key.public();
    config.validators.len() == 1
        && config.outgoing.is_empty()
        && utter_ledger::key::Signer::parse(&config.validators[0].key).as_ref() == Some(&me)
}

/// When to cut a block.
pub(crate) struct Settings {
    pub block_every: Duration,
    pub block_txs: usize,
    pub verbose: bool,
}

/// Runs until the node stops; on an error, stops the API too.
pub(crate) fn run(
    home: &Home,
    opened: Opened,
    key: Keypair,
    shared: Arc<Shared>,
    settings: Settings,
) -> Result<(), NodeError> {
    let result = produce(home, &opened, &key, &shared, &settings);
    if let Err(e) = &result {
        eprintln!("error: the block producer stopped: {e}");
        shared.failed.notify_one();
    }
    result
}

fn produce(
    home: &Home,
    opened: &Opened,
    key: &Keypair,
    shared: &Shared,
    settings: &Settings,
) -> Result<(), NodeError> {
    let ledger = &opened.ledger;
    let mut images = home.node_images(&opened.store)?;
    let mut helper = home.spawn_helper()?;
    let mut executor = Executor::new(ledger, &home.checkouts())?;
    let mut last_cut = Instant::now();
    loop {
        let batch = {
            let mut pool = lock(&shared.pool);
            loop {
                if shared.stopping.load(Ordering::SeqCst) {
                    return Ok(());
                }
                // Main can change hands (a sync, a chain set): ask again.
                let producing = can_produce(ledger, key);
                shared.producing.store(producing, Ordering::SeqCst);
                let ready = if producing { pool.ready() } else { 0 };
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
        let time = i64::try_from(utter_formats::now())
            .unwrap_or(i64::MAX)
            .max(parent.time);
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
                helper = home.spawn_helper()?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The block and main are synced: now the records may go.
        ledger.advance(MAIN, tip, proposed.block.id)?;
        let seqs: Vec<u64> = batch.iter().map(|p| p.seq).collect();
        let keys: Vec<Vec<u8>> = seqs.iter().map(|s| seq_key(*s)).collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        shared.store.write_records(&[], &key_refs)?;
        let accepted = proposed
            .results
            .iter()
            .filter(|r| r.status == Status::Accepted)
            .count();
        // Results first, then out of the pool: a lookup between the two
        // finds the transaction in one of them, never in neither.
        {
            let mut recent = lock(&shared.recent);
            for result in proposed.results {
                recent.insert(Committed {
                    block: proposed.block.id,
                    height: proposed.block.height,
                    result,
                });
            }
        }
        lock(&shared.pool).committed(&seqs);
        {
            let mut head = lock(&shared.head);
            head.id = proposed.block.id;
            head.height = proposed.block.height;
            head.blocks_made += 1;
        }
        shared.blocks.send_modify(|n| *n += 1);
        if settings.verbose {
            eprintln!(
                "block {} at height {}: {} transactions, {accepted} accepted ({:.1} ms, {:.1} in dapps, {:.1} writing, {:.1} verifying)",
                proposed.block.id.short(),
                proposed.block.height,
                batch.len(),
                proposed.timings.total.as_secs_f64() * 1e3,
                proposed.timings.dapps.as_secs_f64() * 1e3,
                proposed.timings.write.as_secs_f64() * 1e3,
                proposed.timings.verify.as_secs_f64() * 1e3,
            );
        }
    }
}

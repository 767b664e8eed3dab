//! `utter-bench ledger`: block writing through the ledger library (there is
//! no command that writes blocks before the node exists), and `utter verify`
//! against `git verify-commit` over the same chain.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use utter_chunkstore::{OpenOptions, Store};
use utter_ledger::key::Keypair;
use utter_ledger::layout::{ChainConfig, DappConfig, StatePath};
use utter_ledger::tx::{self, SignedTx, Tx};
use utter_ledger::{BlockId, Change, Changes, Draft, Ledger, TxId, TxResult};

use crate::{best, settle, timed};

pub(crate) const CHAIN: &str = "bench";
pub(crate) const T0: i64 = 1_790_000_000;

/// Options of `utter-bench ledger`.
pub struct Options {
    pub write_blocks: usize,
    pub txs_per_block: usize,
    pub verify_blocks: usize,
    pub verify_txs_per_block: usize,
    pub work: Option<PathBuf>,
    pub runs: usize,
}

pub(crate) fn signed_txs(key: &Keypair, first_nonce: u64, n: usize) -> Result<Vec<SignedTx>> {
    (0..n as u64)
        .map(|i| {
            let nonce = first_nonce + i;
            Tx {
                v: 1,
                chain: CHAIN.into(),
                dapp: "accounting".into(),
                action: "transfer".into(),
                args: serde_json::json!({"to": format!("member-{}", nonce % 97), "amount": nonce % 1000 + 1}),
                signer: key.public().to_openssh(),
                nonce,
                time: T0 as u64 + nonce,
            }
            .sign(key)
            .context("signing a transaction")
        })
        .collect()
}

/// Transactions as a node holds them after admission: the line and its id.
pub(crate) fn lines_and_ids(blocks: Vec<Vec<SignedTx>>) -> Vec<Vec<(String, TxId)>> {
    blocks
        .into_iter()
        .map(|txs| {
            txs.iter()
                .map(|t| {
                    let line = t.to_line();
                    let id = TxId::of_line(&line);
                    (line, id)
                })
                .collect()
        })
        .collect()
}

pub(crate) fn open_store(dir: &Path) -> Result<Store> {
    Ok(Store::open(
        dir.join("db"),
        &OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )?)
}

fn new_ledger(dir: &Path, key: &Keypair) -> Result<Ledger> {
    new_chain(
        dir,
        key,
        open_store(dir)?,
        &format!("sha256:{}", "0".repeat(64)),
    )
}

/// A chain in `dir/ledger.git` whose one validator is `key`, with the
/// dapp `accounting` running `image`.
pub(crate) fn new_chain(dir: &Path, key: &Keypair, store: Store, image: &str) -> Result<Ledger> {
    let config = ChainConfig::single(CHAIN, "node", &key.public());
    let mut dapps = Changes::new();
    dapps.set_dapp(
        "accounting",
        &DappConfig {
            image: image.to_string(),
            owners: vec![key.public().to_openssh()],
            permissions: Default::default(),
            deployed_at: None,
            upgraded_at: None,
        },
    )?;
    let (ledger, _) = Ledger::create(
        &dir.join("ledger.git"),
        Arc::new(store),
        &config,
        dapps,
        key,
        T0,
    )?;
    Ok(ledger)
}

/// Writes `blocks` blocks of `txs` each on main; each block also changes
/// ten account files. Returns the seconds spent writing (signing the blocks,
/// storing and syncing them, moving main), excluding signing transactions.
pub(crate) fn write_chain(
    ledger: &Ledger,
    key: &Keypair,
    blocks: usize,
    txs: &[Vec<(String, TxId)>],
    mut each: impl FnMut(usize),
) -> Result<f64> {
    let mut tip = ledger.genesis();
    let started = Instant::now();
    for (b, block_txs) in txs.iter().enumerate().take(blocks) {
        let mut changes = Changes::new();
        for a in 0..10 {
            let account = StatePath::new(&format!("accounts/member-{}", (b * 10 + a) % 97))?;
            changes.state(
                "accounting",
                &account,
                Change::Put(format!("{{\"balance\":{}}}", b * 10 + a).into_bytes()),
            )?;
        }
        let results = block_txs
            .iter()
            .map(|(_, id)| TxResult::accepted(*id))
            .collect();
        let block = ledger.write_block(
            &Draft {
                parents: vec![tip],
                changes,
                txs: block_txs.iter().map(|(line, _)| line.clone()).collect(),
                results,
                text: format!("block {}", b + 1),
                time: T0 + b as i64 + 1,
                round: None,
            },
            key,
        )?;
        ledger.advance("main", tip, block.id)?;
        tip = block.id;
        each(b);
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(opts: Options) -> Result<()> {
    let tmp;
    let work = match &opts.work {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            w.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let key = Keypair::generate("bench")?;

    // ---- block writing ----------------------------------------------------
    let n = opts.write_blocks * opts.txs_per_block;
    println!(
        "## block writing: {} blocks of {} transactions (signed, stored, synced, main moved)",
        opts.write_blocks, opts.txs_per_block
    );
    let started = Instant::now();
    let txs: Vec<Vec<SignedTx>> = (0..opts.write_blocks)
        .map(|b| signed_txs(&key, (b * opts.txs_per_block) as u64, opts.txs_per_block))
        .collect::<Result<_>>()?;
    let sign_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let txs = lines_and_ids(txs);
    for (line, _) in txs.iter().flatten() {
        tx::verify_line(line.as_bytes(), CHAIN, |_, _| false)
            .map_err(|e| anyhow::anyhow!("a benchmark transaction is invalid: {e}"))?;
    }
    let verify_secs = started.elapsed().as_secs_f64();
    let mut run = 0;
    let mut write = |durable: bool| {
        best(opts.runs, || {
            run += 1;
            let dir = work.join(format!("write-{run}"));
            let mut ledger = new_ledger(&dir, &key)?;
            ledger.set_durable(durable);
            let secs = write_chain(&ledger, &key, opts.write_blocks, &txs, |_| {})?;
            Ok((secs, dir))
        })
    };
    let (write_secs, blocks_dir) = write(true)?;
    let (unsynced_secs, _) = write(false)?;
    let per_sec = |count: usize, secs: f64| count as f64 / secs;
    println!("                                        tx/s    target");
    println!(
        "utter: write blocks                {:>10.0}    20000   ({:.1} ms per {}-tx block, best of {})",
        per_sec(n, write_secs),
        write_secs * 1e3 / opts.write_blocks as f64,
        opts.txs_per_block,
        opts.runs
    );
    println!(
        "(for scale) the same, no syncs     {:>10.0}            ({:.1} ms per block)",
        per_sec(n, unsynced_secs),
        unsynced_secs * 1e3 / opts.write_blocks as f64,
    );
    println!(
        "(for scale) sign transactions      {:>10.0}            (clients do this, one core)",
        per_sec(n, sign_secs)
    );
    println!(
        "(for scale) verify transactions    {:>10.0}            (a node does this once, when a tx arrives)",
        per_sec(n, verify_secs)
    );
    let repo_bytes = crate::dir_bytes(&blocks_dir.join("ledger.git"));
    println!(
        "ledger.git after {} blocks: {:.1} MB ({} bytes per transaction)",
        opts.write_blocks,
        repo_bytes as f64 / 1e6,
        repo_bytes / n.max(1) as u64
    );
    println!();

    // ---- verify vs git verify-commit -------------------------------------
    let blocks = opts.verify_blocks;
    println!(
        "## verify: a {blocks}-block chain, {} transaction(s) per block",
        opts.verify_txs_per_block
    );
    let dir = work.join("verify");
    let ledger = new_ledger(&dir, &key)?;
    let mut ledger = ledger;
    ledger.set_durable(false);
    let txs: Vec<Vec<SignedTx>> = (0..blocks)
        .map(|b| {
            signed_txs(
                &key,
                (n + b * opts.verify_txs_per_block) as u64,
                opts.verify_txs_per_block,
            )
        })
        .collect::<Result<_>>()?;
    let txs = lines_and_ids(txs);
    let mut last = Instant::now();
    write_chain(&ledger, &key, blocks, &txs, |b| {
        if last.elapsed().as_secs() >= 5 {
            eprintln!("  building the chain: {b}/{blocks} blocks");
            last = Instant::now();
        }
    })?;
    let tip = ledger.branch("main")?.context("main exists")?;
    let mut ids: Vec<BlockId> = ledger.ancestors(&[tip])?;
    ids.sort();
    drop(ledger);
    settle();

    let bin = crate::utter_bin()?;
    let (utter_secs, out) = best(opts.runs, || {
        timed(Command::new(&bin).arg("--data-dir").arg(&dir).arg("verify"))
    })?;
    if !out.contains("all valid") {
        bail!("utter verify did not pass: {out}");
    }

    let repo = dir.join("ledger.git");
    let signers = dir.join("allowed_signers");
    std::fs::write(
        &signers,
        format!("{}\n", key.public().allowed_signers_line("node", &["git"])),
    )?;
    let (git_secs, checked) = best(1, || git_verify_all(&repo, &signers, &ids))?;
    if checked != ids.len() {
        bail!(
            "git verify-commit checked {checked} of {} blocks",
            ids.len()
        );
    }
    println!("                                      seconds   blocks/s   utter is");
    println!(
        "utter verify                        {:>9.2} {:>10.0}",
        utter_secs,
        blocks as f64 / utter_secs
    );
    println!(
        "git verify-commit (same blocks)     {:>9.2} {:>10.0} {:>9.1}x   (target 20x)",
        git_secs,
        blocks as f64 / git_secs,
        git_secs / utter_secs
    );
    println!(
        "(utter verify also checks every transaction's signature, heights, the tree layout and nonces; git checks the commit signatures only)"
    );
    Ok(())
}

/// `git verify-commit` over every block, a thousand ids per process.
fn git_verify_all(repo: &Path, signers: &Path, ids: &[BlockId]) -> Result<(f64, usize)> {
    let started = Instant::now();
    let mut checked = 0;
    for batch in ids.chunks(1000) {
        let status = Command::new("git")
            .arg("--git-dir")
            .arg(repo)
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", signers.display()))
            .arg("verify-commit")
            .args(batch.iter().map(ToString::to_string))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running git verify-commit")?;
        if !status.success() {
            bail!(
                "git verify-commit refused a block in a batch of {}",
                batch.len()
            );
        }
        checked += batch.len();
    }
    Ok((started.elapsed().as_secs_f64(), checked))
}

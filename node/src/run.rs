//! `utter node run`: one node of a chain. A local HTTP/JSON API on
//! 127.0.0.1 admits signed transactions into a mempool persisted in the
//! data dir's RocksDB (`records`, keys `mempool/<seq>`), and a block
//! producer cuts a block from the mempool every `--block-ms` or
//! `--block-txs` transactions, whichever comes first.
//!
//! Threads: tokio serves the API; the producer is one plain thread that
//! owns the ledger's executor and the sandbox helper. They share the pool
//! (a mutex and a condition variable) and a record of recent results
//! (with a watch channel that ticks per block for `?wait=`).
//!
//! A transaction is answered `pending` only after its record is synced,
//! and its record is deleted only after the block that holds it is
//! written, synced and main moved; a node killed at any point restarts
//! with every accepted transaction either committed or still waiting.

mod api;
pub mod pool;
mod producer;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use utter_chunkstore::Store;
use utter_consensus::Nonces;
use utter_ledger::{BlockId, MAIN, TxResult};

use crate::chain;
use pool::Pool;

/// The API's default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7447";
/// Where a running node writes its API address (`http://…`).
pub fn addr_file(data_dir: &Path) -> PathBuf {
    data_dir.join("node.addr")
}

const MEMPOOL: &[u8] = b"mempool/";
/// Results of this many recent transactions are kept for `GET /v1/txs/ID`.
const RECENT: usize = 200_000;

/// `utter node …`
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run the node: the local API, the mempool and the block producer,
    /// until SIGTERM or ctrl-c
    ///
    /// The API (JSON): GET /v1/status; GET /v1/nonce?signer=KEY; POST
    /// /v1/txs with signed transaction lines (answered once they are on
    /// disk); GET /v1/txs/ID?wait=SECS. A node killed outright restarts
    /// with every accepted transaction committed or still waiting.
    Run(RunArgs),
}

/// `utter node run`
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Address of the local API (port 0: any free port; the address is
    /// written to <data-dir>/node.addr)
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Cut a block this often when transactions wait (milliseconds)
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub block_ms: u64,
    /// Cut a block as soon as this many transactions wait; also the most
    /// one block takes
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub block_txs: usize,
    /// The most transactions the mempool holds; more are refused
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub mempool_max: usize,
    /// Print a line per block
    #[arg(long, short)]
    pub verbose: bool,
}

/// A committed transaction's result.
#[derive(Debug, Clone)]
pub struct Committed {
    pub block: BlockId,
    pub height: u64,
    pub result: TxResult,
}

/// What the producer tells the API about the chain.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: BlockId,
    pub height: u64,
    pub blocks_made: u64,
}

/// State shared by the API and the producer.
pub struct Shared {
    pub chain: String,
    pub node_key: String,
    pub store: Store,
    pub pool: Mutex<Pool>,
    /// Wakes the producer: transactions became durable, or shutdown.
    pub wake: Condvar,
    /// Serializes admissions: one synced write at a time, so waiting
    /// transactions that are not durable are always at the pool's tail.
    pub admit: Mutex<()>,
    pub recent: Mutex<Recent>,
    pub head: Mutex<Head>,
    /// Ticks once per committed block.
    pub blocks: tokio::sync::watch::Sender<u64>,
    pub stopping: AtomicBool,
    /// The producer stopped on an error: the API stops too.
    pub failed: tokio::sync::Notify,
}

/// Results of recent transactions, oldest evicted first.
#[derive(Default)]
pub struct Recent {
    by_id: HashMap<String, Committed>,
    order: VecDeque<String>,
}

impl Recent {
    pub fn insert(&mut self, id: String, c: Committed) {
        if self.by_id.insert(id.clone(), c).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > RECENT {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Committed> {
        self.by_id.get(id)
    }
}

/// Locks, ignoring poisoning: every holder leaves the data consistent
/// before anything that can panic.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn seq_key(seq: u64) -> Vec<u8> {
    let mut k = MEMPOOL.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn run(data_dir: &Path, cmd: NodeCommand) -> Result<ExitCode> {
    match cmd {
        NodeCommand::Run(args) => run_node(data_dir, args),
    }
}

/// Reloads the mempool: every persisted line is checked again (signature,
/// chain); lines whose nonce a committed block used were committed before
/// the node stopped and are dropped.
fn load_pool(
    opened: &chain::Opened,
    committed: Nonces,
    max: usize,
) -> Result<(Pool, usize, usize)> {
    let records = opened
        .store
        .records(MEMPOOL)
        .context("cannot read the mempool")?;
    let next_seq = records
        .last()
        .and_then(|(k, _)| k[MEMPOOL.len()..].try_into().ok())
        .map_or(0, |b: [u8; 8]| u64::from_be_bytes(b) + 1);
    let lines: Vec<String> = records
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    let checked = utter_consensus::executor::verify_all(&lines, opened.ledger.chain());
    let mut pool = Pool::new(committed, max.max(records.len()), next_seq);
    let mut stale = Vec::new();
    let mut kept = Vec::new();
    for ((key, _), (line, checked)) in records.iter().zip(lines.into_iter().zip(checked)) {
        let admitted = checked.ok().and_then(|stx| {
            let id = blake3::hash(line.as_bytes()).to_hex().to_string();
            pool.admit(id, line, stx).ok()
        });
        match admitted {
            Some(pool::Admitted::New(seq)) => kept.push(seq),
            _ => stale.push(key.as_slice()),
        }
    }
    pool.made_durable(&kept);
    opened
        .store
        .write_records(&[], &stale)
        .context("cannot drop committed transactions from the mempool")?;
    Ok((pool, kept.len(), stale.len()))
}

fn run_node(data_dir: &Path, args: RunArgs) -> Result<ExitCode> {
    if args.block_txs == 0 {
        anyhow::bail!("--block-txs must be at least 1");
    }
    let opened = chain::open(data_dir)?;
    let key = chain::load_key(data_dir, None)?;
    let tip = opened.ledger.resolve(MAIN)?;
    let head = opened.ledger.block(tip)?;
    let committed = Nonces::of_line(&opened.ledger, tip)?;
    let (pool, kept, dropped) = load_pool(&opened, committed, args.mempool_max)?;
    let recent = producer::recent_results(&opened.ledger, tip, 256)?;
    let (blocks_tx, _) = tokio::sync::watch::channel(0u64);
    let shared = Arc::new(Shared {
        chain: opened.ledger.chain().to_string(),
        node_key: key.public().to_openssh(),
        store: opened.store.clone(),
        pool: Mutex::new(pool),
        wake: Condvar::new(),
        admit: Mutex::new(()),
        recent: Mutex::new(recent),
        head: Mutex::new(Head {
            id: tip,
            height: head.height,
            blocks_made: 0,
        }),
        blocks: blocks_tx,
        stopping: AtomicBool::new(false),
        failed: tokio::sync::Notify::new(),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| {
            format!(
                "cannot listen on {}: is another node running? pick another with --listen",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let addr_path = addr_file(data_dir);
    std::fs::write(&addr_path, format!("http://{addr}\n"))
        .with_context(|| format!("cannot write {}", addr_path.display()))?;
    eprintln!(
        "node of chain {} at height {} ({}), API on http://{addr}",
        shared.chain,
        head.height,
        tip.short()
    );
    if kept + dropped > 0 {
        eprintln!(
            "mempool: {kept} transactions still waiting, {dropped} committed before the restart"
        );
    }

    let producer = {
        let shared = shared.clone();
        let data_dir = data_dir.to_path_buf();
        let settings = producer::Settings {
            block_every: Duration::from_millis(args.block_ms),
            block_txs: args.block_txs,
            verbose: args.verbose,
        };
        std::thread::Builder::new()
            .name("producer".into())
            .spawn(move || producer::run(&data_dir, opened, key, shared, settings))
            .context("cannot start the block producer")?
    };

    let served = runtime.block_on(api::serve(
        listener,
        shared.clone(),
        shutdown_signal(shared.clone()),
    ));
    // Stop the producer after the block it is making, if any.
    shared.stopping.store(true, Ordering::SeqCst);
    shared.wake.notify_all();
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the block producer panicked"))?;
    let _ = std::fs::remove_file(&addr_path);
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    produced?;
    let waiting = lock(&shared.pool).len();
    eprintln!("node stopped; {waiting} transactions wait in the mempool for the next start");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal(shared: Arc<Shared>) {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => eprintln!("stopping: finishing the block in progress"),
        () = term => eprintln!("stopping: finishing the block in progress"),
        () = shared.failed.notified() => {}
    }
}

//! `utter node run`: one node of a chain. A local HTTP/JSON API on
//! 127.0.0.1 admits signed transactions into a mempool persisted in the
//! data dir's RocksDB (records `mempool/<seq>`), and a block producer cuts
//! a block from the mempool every `block_every` or `block_txs`
//! transactions, whichever comes first.
//!
//! Threads: tokio serves the API; the producer is one plain thread that
//! owns the ledger's executor and the sandbox helper. They share the pool
//! (a mutex and a condition variable), a record of recent results, and a
//! watch channel that ticks per block (for `?wait=` and `/v1/blocks`). The
//! API reads the ledger through a handle of its own.
//!
//! A transaction is answered `pending` only after its record is synced,
//! and its record is deleted only after the block that holds it is
//! written, synced and main moved; a node killed at any point restarts
//! with every accepted transaction either committed or still waiting.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use utter_chunkstore::Store;
use utter_executor::Nonces;
use utter_formats::Status;
use utter_ledger::{BlockId, Ledger, MAIN, TxId, TxResult};

use crate::home::{Home, HomeError, Opened};
use crate::pool::{self, Pool};
use crate::{api, producer};

/// Record keys of the mempool: `mempool/<seq, u64 BE>` → the line.
pub(crate) const MEMPOOL: &[u8] = b"mempool/";
/// Results of this many recent transactions are kept for `GET /v1/txs/ID`.
const RECENT: usize = 200_000;
/// Blocks whose results a restarted node reloads.
const RECENT_BLOCKS: usize = 256;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The local API's address (port 0: any free port; the address is
    /// written to the data dir's `node.addr`).
    pub listen: SocketAddr,
    /// Cut a block this long after the last one when transactions wait.
    pub block_every: Duration,
    /// Cut a block as soon as this many wait; also the most one block takes.
    pub block_txs: usize,
    /// The most transactions the mempool holds; more are refused.
    pub mempool_max: usize,
    /// Print a line per block.
    pub verbose: bool,
    /// Proof of merge: a round's first timeout (it doubles per round that
    /// commits nothing).
    pub round_timeout: Duration,
    /// Serve and sync over QUIC.
    pub p2p: Option<crate::p2p::P2pSettings>,
}

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// A setting that cannot work.
    #[error("{0}")]
    Settings(&'static str),
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] utter_ledger::LedgerError),
    /// The executor.
    #[error(transparent)]
    Exec(#[from] utter_executor::ExecError),
    /// The mempool's records.
    #[error("the mempool's records: {0}")]
    Mempool(#[from] utter_chunkstore::Error),
    /// The API's address is taken or not ours.
    #[error(
        "cannot listen on {addr}: {source}; is another node running? pick another with --listen"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Other IO: the async runtime, `node.addr`, a thread.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The network part.
    #[error(transparent)]
    P2p(#[from] Box<crate::p2p::P2pError>),
    /// Proof of merge's state on disk (the vote tip) or a vote.
    #[error("consensus: {0}")]
    Consensus(String),
    /// The block producer panicked.
    #[error("the block producer panicked")]
    Panicked,
}

/// A committed transaction's result.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub block: BlockId,
    pub height: u64,
    pub result: TxResult,
}

/// What the producer tells the API about the chain.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub id: BlockId,
    pub height: u64,
    pub blocks_made: u64,
}

/// State shared by the API and the producer.
pub(crate) struct Shared {
    pub chain: String,
    pub genesis: BlockId,
    pub node_key: String,
    pub store: Store,
    /// The API's own handle on the ledger (reads only).
    pub ledger: Mutex<Ledger>,
    /// The image store: uploads land here, deploys are checked against it.
    pub images: utter_images::Images,
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
    /// The producer makes blocks (the node key is the chain's only
    /// validator); otherwise the node follows and admits nothing.
    pub producing: AtomicBool,
    /// The producer stopped on an error: the API stops too.
    pub failed: tokio::sync::Notify,
    /// What `/v1/status` says of proof of merge (set by its thread).
    pub consensus: Mutex<Option<utter_client::api::ConsensusStatus>>,
    /// Where admitted transactions are announced, when consensus runs.
    pub inputs: std::sync::OnceLock<std::sync::mpsc::Sender<crate::gossip::Input>>,
}

/// Results of recent transactions, oldest evicted first.
#[derive(Default)]
pub(crate) struct Recent {
    by_id: HashMap<TxId, Committed>,
    order: VecDeque<TxId>,
}

impl Recent {
    pub fn insert(&mut self, c: Committed) {
        let id = c.result.tx;
        // A transaction of a merged branch has a result in its own block
        // and in the merge that re-executed it on main's state: the
        // higher block is what main says. But a replay rejection (a merge
        // re-executing a copy already applied in a sibling) is never a
        // transaction's fate when it has another result.
        let replay = |c: &Committed| {
            c.result.status == Status::Rejected
                && c.result
                    .reason
                    .as_deref()
                    .is_some_and(utter_formats::tx::is_replay)
        };
        if let Some(old) = self.by_id.get(&id) {
            let keep_old = match (replay(old), replay(&c)) {
                (false, true) => true,
                (true, false) => false,
                _ => old.height > c.height,
            };
            if keep_old {
                return;
            }
        }
        if self.by_id.insert(id, c).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > RECENT {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &TxId) -> Option<&Committed> {
        self.by_id.get(id)
    }

    /// The results of the transactions in the last `blocks` blocks on the
    /// first-parent line ending at `tip`, so `GET /v1/txs/ID` answers for
    /// them after a restart.
    fn load(ledger: &Ledger, tip: BlockId, blocks: usize) -> Result<Self, NodeError> {
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
                    recent.insert(Committed {
                        block: block.id,
                        height: block.height,
                        result,
                    });
                }
            }
        }
        Ok(recent)
    }
}

/// Locks, ignoring poisoning: every holder leaves the data consistent
/// before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The record key of mempool entry `seq`.
pub(crate) fn seq_key(seq: u64) -> Vec<u8> {
    let mut k = MEMPOOL.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// What a restart found in the mempool.
struct Reloaded {
    pool: Pool,
    kept: usize,
    dropped: usize,
}

/// Reloads the mempool: every persisted line is checked again (signature,
/// chain); lines whose nonce a committed block used were committed before
/// the node stopped and are dropped.
fn load_pool(opened: &Opened, committed: Nonces, max: usize) -> Result<Reloaded, NodeError> {
    let records = opened.store.records(MEMPOOL)?;
    let next_seq = records
        .last()
        .and_then(|(k, _)| k[MEMPOOL.len()..].try_into().ok())
        .map_or(0, |b: [u8; 8]| u64::from_be_bytes(b) + 1);
    let lines: Vec<String> = records
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    let checked = utter_executor::verify_all(&lines, opened.ledger.chain());
    let mut pool = Pool::new(committed, max.max(records.len()), next_seq);
    let mut stale = Vec::new();
    let mut kept = Vec::new();
    for ((key, _), (line, checked)) in records.iter().zip(lines.into_iter().zip(checked)) {
        let admitted = checked
            .ok()
            .and_then(|stx| pool.admit(TxId::of_line(&line), line, stx).ok());
        match admitted {
            Some(pool::Admitted::New(seq)) => kept.push(seq),
            _ => stale.push(key.as_slice()),
        }
    }
    pool.made_durable(&kept);
    opened.store.write_records(&[], &stale)?;
    Ok(Reloaded {
        pool,
        kept: kept.len(),
        dropped: stale.len(),
    })
}

/// Main moved from `before` to `after` (a commit, a sync): the results of
/// the blocks that came go to `recent`, then their transactions leave the
/// pool and its records (results first: a lookup between the two finds a
/// transaction in one of them), then the head moves and `?wait=` wakes.
/// Returns the transactions that left the pool without being committed
/// (another one with their signer and nonce was).
pub(crate) fn settle(
    shared: &Shared,
    ledger: &Ledger,
    before: BlockId,
    after: BlockId,
) -> Result<Vec<TxId>, NodeError> {
    let block = ledger.block(after)?;
    let mut txs = Vec::new();
    let mut committed = Vec::new();
    for id in ledger.only_in(&[after], &[before])? {
        let b = ledger.block(id)?;
        for text in ledger.result_lines(&b)? {
            if let Ok(result) = serde_json::from_str::<TxResult>(&text) {
                committed.push(Committed {
                    block: b.id,
                    height: b.height,
                    result,
                });
            }
        }
        let lines = ledger.tx_lines(&b)?;
        let pool = lock(&shared.pool);
        for line in lines {
            let tx = TxId::of_line(&line);
            // A line the pool holds was parsed at admission: its signer
            // and nonce are known without parsing it again.
            let known = pool
                .get(&tx)
                .map(|p| (p.tx.tx.signer.clone(), p.tx.tx.nonce));
            if let Some((signer, nonce)) = known.or_else(|| utter_executor::signer_nonce(&line)) {
                txs.push((tx, signer, nonce));
            }
        }
    }
    {
        let mut recent = lock(&shared.recent);
        for c in committed {
            recent.insert(c);
        }
    }
    let (seqs, dropped) = lock(&shared.pool).settle(&txs);
    delete_records(shared, &seqs)?;
    {
        let mut head = lock(&shared.head);
        head.id = after;
        head.height = block.height;
    }
    shared.blocks.send_modify(|n| *n += 1);
    Ok(dropped)
}

/// Takes `ids` out of the pool and its records (no block may carry them).
pub(crate) fn forget(shared: &Shared, ids: &[TxId]) -> Result<(), NodeError> {
    let seqs = lock(&shared.pool).remove_ids(ids);
    delete_records(shared, &seqs)
}

fn delete_records(shared: &Shared, seqs: &[u64]) -> Result<(), NodeError> {
    let keys: Vec<Vec<u8>> = seqs.iter().map(|s| seq_key(*s)).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    shared.store.write_records(&[], &refs)?;
    Ok(())
}

/// Runs the node on `home` until SIGTERM or ctrl-c (finishing the block in
/// progress), or until the producer fails.
pub fn run(home: &Home, settings: Settings) -> Result<(), NodeError> {
    if settings.block_txs == 0 {
        return Err(NodeError::Settings("--block-txs must be at least 1"));
    }
    let opened = home.open()?;
    let key = home.load_key(None)?;
    // A chain of several validators: proof of merge over the network.
    let role = match &settings.p2p {
        Some(_) => crate::validator::role(&opened.ledger, &key)?,
        None => None,
    };
    let tip = opened.ledger.resolve(MAIN)?;
    let head = opened.ledger.block(tip)?;
    let committed = Nonces::of_line(&opened.ledger, tip)?;
    let reloaded = load_pool(&opened, committed, settings.mempool_max)?;
    let recent = Recent::load(&opened.ledger, tip, RECENT_BLOCKS)?;
    let (blocks_tx, _) = tokio::sync::watch::channel(0u64);
    let shared = Arc::new(Shared {
        chain: opened.ledger.chain().to_string(),
        genesis: opened.ledger.genesis(),
        node_key: key.public().to_openssh(),
        store: opened.store.clone(),
        ledger: Mutex::new(home.ledger(&opened.store)?),
        images: {
            let images = home.images(&opened.store)?;
            // Uploads a killed node was receiving: never imported.
            let _ = std::fs::remove_dir_all(images.dir().join("uploads"));
            images
        },
        pool: Mutex::new(reloaded.pool),
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
        producing: AtomicBool::new(role.is_some() || producer::can_produce(&opened.ledger, &key)),
        failed: tokio::sync::Notify::new(),
        inputs: std::sync::OnceLock::new(),
        consensus: Mutex::new(None),
    });

    let io = |what: &str| {
        let what = what.to_string();
        move |source| NodeError::Io { what, source }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("start the async runtime"))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(settings.listen))
        .map_err(|source| NodeError::Listen {
            addr: settings.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(io("read the API's address"))?;
    // Through a rename: a reader sees no address or the whole one.
    let addr_path = home.addr_file();
    let tmp = addr_path.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("http://{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, &addr_path))
        .map_err(io(&format!("write {}", addr_path.display())))?;
    eprintln!(
        "node of chain {} at height {} ({}), API on http://{addr}",
        shared.chain,
        head.height,
        tip.short()
    );
    let mut consensus = None;
    let p2p = match &settings.p2p {
        Some(p) => {
            let mut started = crate::p2p::P2p::start(
                home,
                &opened.store,
                &key,
                shared.clone(),
                p,
                &runtime,
                settings.verbose,
                role,
            )
            .map_err(Box::new)?;
            consensus = started.consensus.take();
            let target = format!("{}@{}", key.public().fingerprint(), started.addr);
            let path = home.p2p_file();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{target}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(io(&format!("write {}", path.display())))?;
            eprintln!("p2p on UDP {} as {target}", started.addr);
            Some(started)
        }
        None => None,
    };
    match role {
        Some(true) => eprintln!(
            "this node is a validator: it proposes, re-executes and votes with the other validators (proof of merge)"
        ),
        Some(false) => match crate::validator::device(&opened.ledger, &key)? {
            Some(name) => eprintln!(
                "this node is device {name}: what it is given goes on its branch {name}, which the validators merge into main; it follows their commits"
            ),
            None => eprintln!(
                "this node is not a validator: it sends its transactions to the validators and follows their commits"
            ),
        },
        None => {}
    }
    if !shared.producing.load(Ordering::SeqCst) {
        eprintln!(
            "this node follows the chain: its key is not the chain's only validator, so it makes no blocks"
        );
    }
    if reloaded.kept + reloaded.dropped > 0 {
        eprintln!(
            "mempool: {} transactions still waiting, {} committed before the restart",
            reloaded.kept, reloaded.dropped
        );
    }

    let producer = {
        let shared = shared.clone();
        let home = home.clone();
        let verbose = settings.verbose;
        let block_txs = settings.block_txs;
        let round_timeout = settings.round_timeout;
        let settings = producer::Settings {
            block_every: settings.block_every,
            block_txs: settings.block_txs,
            verbose: settings.verbose,
        };
        match consensus {
            Some((out, inputs)) => std::thread::Builder::new()
                .name("consensus".into())
                .spawn(move || {
                    crate::validator::run(
                        &home,
                        opened,
                        key,
                        shared,
                        out,
                        inputs,
                        role == Some(true),
                        block_txs,
                        round_timeout,
                        verbose,
                    )
                })
                .map_err(io("start the consensus thread"))?,
            None => std::thread::Builder::new()
                .name("producer".into())
                .spawn(move || producer::run(&home, opened, key, shared, settings))
                .map_err(io("start the block producer"))?,
        }
    };

    // A provider runs its leases' containers.
    let agent = if crate::leases::chain_has_leases(&lock(&shared.ledger)) {
        let (home, shared) = (home.clone(), shared.clone());
        let key = home.load_key(None)?;
        let verbose = settings.verbose;
        // Inbound ports are forwarded from the address peers reach this
        // node at (its p2p address, else its API's).
        let ip = p2p.as_ref().map_or(addr.ip(), |p| p.addr.ip());
        let ports = crate::ports::Ports::new(home.root(), ip, runtime.handle().clone());
        Some(
            std::thread::Builder::new()
                .name("leases".into())
                .spawn(move || crate::leases::run(home, shared, key, Some(ports), verbose))
                .map_err(io("start the lease agent"))?,
        )
    } else {
        None
    };

    let served = runtime.block_on(api::serve(
        listener,
        shared.clone(),
        shutdown_signal(shared.clone()),
    ));
    // Stop the producer after the block it is making, if any.
    shared.stopping.store(true, Ordering::SeqCst);
    shared.wake.notify_all();
    let produced = producer.join().map_err(|_| NodeError::Panicked)?;
    if let Some(agent) = agent {
        // Its containers run on; the next start adopts them.
        let _ = agent.join();
    }
    if let Some(p2p) = p2p {
        p2p.stop();
        let _ = std::fs::remove_file(home.p2p_file());
    }
    let _ = std::fs::remove_file(&addr_path);
    runtime.shutdown_timeout(Duration::from_secs(1));
    served.map_err(io("serve the API"))?;
    produced?;
    let waiting = lock(&shared.pool).len();
    eprintln!("node stopped; {waiting} transactions wait in the mempool for the next start");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(height: u64, result: &TxResult) -> Committed {
        Committed {
            block: format!("{height:040x}").parse().expect("id"),
            height,
            result: result.clone(),
        }
    }

    #[test]
    fn a_merges_replay_rejection_never_hides_the_result_that_applied_the_transaction() {
        let id = TxId::of_line("a line");
        let accepted = TxResult {
            tx: id,
            status: Status::Accepted,
            reason: None,
            output: None,
        };
        let replay = TxResult {
            status: Status::Rejected,
            reason: Some(
                utter_formats::TxError::Replayed {
                    signer: "ssh-ed25519 AAAA".into(),
                    nonce: 4,
                }
                .to_string(),
            ),
            ..accepted.clone()
        };
        let no_longer = TxResult {
            status: Status::Rejected,
            reason: Some("the door is gone".into()),
            ..accepted.clone()
        };
        // Sibling blocks both carried it; the merge above them re-executed
        // the second copy: main applied it once, in the sibling.
        for order in [[5, 6], [6, 5]] {
            let mut r = Recent::default();
            for h in order {
                r.insert(at(h, if h == 6 { &replay } else { &accepted }));
            }
            assert_eq!(r.get(&id).expect("known").height, 5, "{order:?}");
        }
        // A device's side block, then the merge that re-executed it on
        // main's state: the merge is what main says.
        let mut r = Recent::default();
        r.insert(at(3, &accepted));
        r.insert(at(6, &no_longer));
        assert_eq!(r.get(&id).expect("known").result, no_longer);
    }
}

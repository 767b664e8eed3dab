//! The network side of proof of merge on a running node: channels to the
//! other validators (QUIC, `utter-consensus/1`), what arrives on them
//! checked before the driver sees it, and pulls of announced blocks.
//!
//! - **Outbound**: one tokio task per peer address dials it from the
//!   node's own endpoint (so the peer sees our serving address), opens the
//!   channel, says `Hello` (chain, genesis), reports the peer's key as
//!   connected and sends what the driver queues. While it is not
//!   connected, queued frames are dropped: gossip is best effort, and a
//!   reconnection brings the peer up to date (the machine's
//!   `PeerConnected`).
//! - **Inbound**: every consensus connection the endpoint accepts has its
//!   channel read frame by frame. A channel that does not start with the
//!   chain's `Hello` is closed. Transactions are admitted to the pool like
//!   the API's (signature, chain, nonce, durable before the driver hears
//!   of them); a vote's signature is checked over chain, block and height
//!   and its key is the voter, whoever relayed it; an announcement names a
//!   block to pull from the announcer, and a pushed proposal
//!   ([`utter_net::push`]) brings the block with it. Nothing a peer says
//!   about a block beyond its id is used: the driver reads headers from
//!   the signed commits it pulled (or was pushed) and checked.
//! - **Pulls** run on a thread of their own with its own ledger handle, so
//!   a slow or vanished peer never holds up the machine. A push is taken
//!   in there too, and a push that is refused or not enough is pulled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use utter_chunkstore::Store;
use utter_ledger::cert::SignedVote;
use utter_ledger::{BlockId, TxId};
use utter_net::wire::{MAX_IDS, Message, Proposal};
use utter_net::{ALPN_CONSENSUS, Conn, Endpoint, Pass};

use crate::home::Home;
use crate::run::Shared;

/// What the network tells the driver.
#[derive(Debug)]
pub(crate) enum Input {
    /// Transactions admitted to the pool, durably: by this node's API
    /// (`from: None`) or from a peer.
    Admitted {
        /// The peer's key, when a peer sent them.
        from: Option<String>,
        /// The transactions.
        ids: Vec<TxId>,
    },
    /// A peer has this block.
    Announced {
        /// The peer's key.
        from: String,
        /// Where it serves.
        addr: SocketAddr,
        /// The block.
        block: BlockId,
    },
    /// A peer pushed this proposal whole (nothing in it checked yet).
    Proposed {
        /// The peer's key.
        from: String,
        /// Where it serves.
        addr: SocketAddr,
        /// The block and what is new in it.
        proposal: Box<Proposal>,
    },
    /// A vote whose signature verified.
    Vote {
        /// Who relayed it.
        from: String,
        /// Who signed it.
        voter: String,
        /// The block.
        block: BlockId,
        /// The height it signed.
        height: u64,
        /// The signature.
        vote: SignedVote,
    },
    /// This peer's round timed out: it wants to be brought up to date.
    Behind {
        /// Its key.
        from: String,
    },
    /// A channel to this peer is open.
    Connected {
        /// Its key.
        key: String,
        /// Its address.
        addr: SocketAddr,
    },
    /// The channel to this peer closed.
    Disconnected {
        /// Its key.
        key: String,
    },
    /// Blocks a pull brought (parents first), or why it failed.
    Pulled {
        /// What was asked for.
        wants: Vec<BlockId>,
        /// What arrived, or why nothing did.
        got: Result<Vec<BlockId>, String>,
    },
}

/// The most transaction lines one `Txs` frame carries.
pub(crate) const TXS_PER_FRAME: usize = 512;

/// What went over the consensus protocol and pulls, for the status.
#[derive(Default)]
pub(crate) struct Counters {
    /// Frames sent on channels.
    pub frames: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Bytes of packs and chunks pulled.
    pub pulled: AtomicU64,
    /// Pushed proposals taken in.
    pub pushes_taken: AtomicU64,
    /// Pushed proposals refused or not enough (pulled instead).
    pub pushes_pulled: AtomicU64,
}

/// Pushed proposals queued for the pull thread at most; a push beyond
/// them is pulled, so what a peer pushes cannot pile up in memory.
const PUSHES_QUEUED: usize = 4;

/// The sending half of the network, as the driver holds it.
pub(crate) struct Outbound {
    peers: Vec<(SocketAddr, tokio::sync::mpsc::UnboundedSender<Message>)>,
    pulls: Sender<Pull>,
    /// Pushes waiting in `pulls`.
    pushes: Arc<AtomicUsize>,
    pub counters: Arc<Counters>,
}

/// A pull for the pull thread.
pub(crate) struct Pull {
    pub wants: Vec<BlockId>,
    pub haves: Vec<BlockId>,
    /// Peers to try, in order.
    pub from: Vec<SocketAddr>,
    /// What a peer pushed of `wants`: taken in first, pulled if that
    /// fails.
    pub pushed: Option<Box<Proposal>>,
}

impl Outbound {
    /// Queues `m` for the peer at `addr`.
    pub fn send(&self, addr: SocketAddr, m: Message) {
        if let Some((_, tx)) = self.peers.iter().find(|(a, _)| *a == addr) {
            let _ = tx.send(m);
        }
    }

    /// Queues `m` for every peer.
    pub fn broadcast(&self, m: &Message) {
        for (_, tx) in &self.peers {
            let _ = tx.send(m.clone());
        }
    }

    /// Every peer's address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.peers.iter().map(|(a, _)| *a).collect()
    }

    /// Asks the pull thread for `wants` (a push beyond
    /// [`PUSHES_QUEUED`] is dropped: the block is pulled).
    pub fn pull(&self, mut pull: Pull) {
        if pull.pushed.is_some() && self.pushes.fetch_add(1, Ordering::SeqCst) >= PUSHES_QUEUED {
            self.pushes.fetch_sub(1, Ordering::SeqCst);
            pull.pushed = None;
        }
        let _ = self.pulls.send(pull);
    }
}

/// Starts the channels to `peers`, the reader of inbound channels and the
/// pull thread; everything they learn goes to `inputs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    runtime: &tokio::runtime::Runtime,
    endpoint: &Endpoint,
    inbound: tokio::sync::mpsc::UnboundedReceiver<Conn>,
    peers: &[SocketAddr],
    home: &Home,
    store: &Store,
    shared: Arc<Shared>,
    inputs: Sender<Input>,
) -> Result<Outbound, crate::p2p::P2pError> {
    let hello = Message::Hello {
        chain: shared.chain.clone(),
        genesis: shared.genesis,
    };
    let counters = Arc::new(Counters::default());
    let mut out = Vec::new();
    for addr in peers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(dial(
            endpoint.clone(),
            *addr,
            hello.clone(),
            rx,
            inputs.clone(),
            counters.clone(),
        ));
        out.push((*addr, tx));
    }
    runtime.spawn(accept(inbound, shared.clone(), inputs.clone()));
    let (pulls, requests) = std::sync::mpsc::channel::<Pull>();
    let ledger = home.ledger(store)?;
    let images = home.images(store)?;
    let store = store.clone();
    let key = home.load_key(None)?;
    let pulled = counters.clone();
    let pushes = Arc::new(AtomicUsize::new(0));
    let queued = pushes.clone();
    std::thread::Builder::new()
        .name("pull".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let Ok(endpoint) = ({
                let _guard = rt.enter();
                utter_net::Identity::new(&key)
                    .map_err(utter_net::NetError::from)
                    .and_then(|id| Endpoint::client(id, false))
            }) else {
                return;
            };
            while let Ok(pull) = requests.recv() {
                let mut got = Err("no peer to pull from".to_string());
                if let Some(p) = &pull.pushed {
                    queued.fetch_sub(1, Ordering::SeqCst);
                    match utter_net::push::receive(&ledger, &store, &images, p) {
                        Ok(blocks) if pull.wants.iter().all(|w| ledger.has(*w)) => {
                            pulled.pushes_taken.fetch_add(1, Ordering::Relaxed);
                            if inputs
                                .send(Input::Pulled {
                                    wants: pull.wants,
                                    got: Ok(blocks),
                                })
                                .is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if e.untrustworthy() {
                                eprintln!(
                                    "a push of block {} is refused: {e}; pulling it",
                                    p.block.short()
                                );
                            }
                        }
                    }
                    pulled.pushes_pulled.fetch_add(1, Ordering::Relaxed);
                }
                for addr in &pull.from {
                    let mut bytes = 0;
                    let pass = Pass {
                        endpoint: &endpoint,
                        addr: *addr,
                        pin: None,
                        ledger: &ledger,
                        store: &store,
                        images: &images,
                        batch_bytes: utter_net::fetch::BATCH_BYTES,
                        progress: &mut |p| bytes = p.bytes,
                    };
                    let result = rt.block_on(pass.pull(pull.wants.clone(), pull.haves.clone()));
                    pulled.pulled.fetch_add(bytes, Ordering::Relaxed);
                    match result {
                        Ok(blocks) if pull.wants.iter().all(|w| ledger.has(*w)) => {
                            got = Ok(blocks);
                            break;
                        }
                        Ok(_) => got = Err(format!("{addr} does not have them")),
                        Err(e) => got = Err(format!("{addr}: {e}")),
                    }
                }
                let wants = pull.wants;
                if inputs.send(Input::Pulled { wants, got }).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| crate::p2p::P2pError::Runtime(format!("cannot start the pull thread: {e}")))?;
    Ok(Outbound {
        peers: out,
        pulls,
        pushes,
        counters,
    })
}

/// Keeps a channel open to `addr`, sending what `rx` queues.
async fn dial(
    endpoint: Endpoint,
    addr: SocketAddr,
    hello: Message,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Message>,
    inputs: Sender<Input>,
    counters: Arc<Counters>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let conn = endpoint.connect(addr, ALPN_CONSENSUS, None).await?;
            let mut channel = conn.open_channel().await?;
            channel.send(&hello).await?;
            Ok::<_, utter_net::NetError>((conn, channel))
        }
        .await;
        match connected {
            Ok((conn, mut channel)) => {
                backoff = Duration::from_millis(100);
                let key = conn.peer().to_openssh();
                // Frames queued while away are stale: the reconnection
                // brings the peer up to date instead.
                while rx.try_recv().is_ok() {}
                if inputs
                    .send(Input::Connected {
                        key: key.clone(),
                        addr,
                    })
                    .is_err()
                {
                    return;
                }
                loop {
                    tokio::select! {
                        m = rx.recv() => {
                            let Some(m) = m else { return };
                            let frame = m.encode();
                            if channel.send_bytes(&frame).await.is_err() {
                                break;
                            }
                            counters.frames.fetch_add(1, Ordering::Relaxed);
                            counters.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                        }
                        _ = conn.closed() => break,
                    }
                }
                conn.close("reconnecting");
                if inputs.send(Input::Disconnected { key }).is_err() {
                    return;
                }
            }
            Err(_) => {
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Reads every inbound channel.
async fn accept(
    mut inbound: tokio::sync::mpsc::UnboundedReceiver<Conn>,
    shared: Arc<Shared>,
    inputs: Sender<Input>,
) {
    while let Some(conn) = inbound.recv().await {
        let shared = shared.clone();
        let inputs = inputs.clone();
        tokio::spawn(async move {
            if let Err(why) = read(&conn, &shared, &inputs).await {
                conn.close(&why);
            }
        });
    }
}

/// Reads one peer's channel until it ends; `Err` says why it was cut.
async fn read(conn: &Conn, shared: &Arc<Shared>, inputs: &Sender<Input>) -> Result<(), String> {
    let mut channel = conn.accept_channel().await.map_err(|e| e.to_string())?;
    let from = conn.peer().to_openssh();
    match channel.next().await.map_err(|e| e.to_string())? {
        Some(Message::Hello { chain, genesis })
            if chain == shared.chain && genesis == shared.genesis => {}
        Some(Message::Hello { chain, genesis }) => {
            return Err(format!(
                "this node is on chain {:?} (genesis {}), not {chain:?} (genesis {genesis})",
                shared.chain, shared.genesis
            ));
        }
        other => return Err(format!("{other:?} where Hello belongs")),
    }
    loop {
        let Some(m) = channel.next().await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let input = match m {
            Message::Txs(lines) => {
                if lines.len() > MAX_IDS {
                    return Err("too many transactions in one frame".into());
                }
                let lines: Vec<String> = lines
                    .into_iter()
                    .filter_map(|l| String::from_utf8(l).ok())
                    .collect();
                let shared = shared.clone();
                let admitted = tokio::task::spawn_blocking(move || {
                    crate::api::admit_lines(&shared, lines, false)
                })
                .await
                .map_err(|e| e.to_string())?;
                match admitted {
                    Ok((_, new)) if !new.is_empty() => Input::Admitted {
                        from: Some(from.clone()),
                        ids: new,
                    },
                    _ => continue,
                }
            }
            Message::Behind => Input::Behind { from: from.clone() },
            Message::Announce(block) => Input::Announced {
                from: from.clone(),
                addr: conn.addr(),
                block,
            },
            Message::Proposal(proposal) => Input::Proposed {
                from: from.clone(),
                addr: conn.addr(),
                proposal,
            },
            Message::Vote {
                block,
                height,
                signature,
            } => {
                let vote = SignedVote { signature };
                let Ok(voter) = vote.verify(&shared.chain, block, height) else {
                    return Err(format!(
                        "a vote for {block} whose signature does not verify"
                    ));
                };
                Input::Vote {
                    from: from.clone(),
                    voter: voter.to_openssh(),
                    block,
                    height,
                    vote,
                }
            }
            other => return Err(format!("{other:?} on a consensus channel")),
        };
        if inputs.send(input).is_err() {
            return Ok(());
        }
    }
}

//! The node on the network: it serves its ledger, certificates, images
//! and chunks over QUIC (`--p2p`), and syncs continuously from the peers
//! it knows (`--peer`, and every peer that connected or was cloned from),
//! each pass pulling what it lacks, verified before any ref moves.
//!
//! Also `utter sync` (one pass, no node running) and `utter clone` (a new
//! data directory from a peer).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use utter_chunkstore::Store;
use utter_images::Images;
use utter_ledger::key::{Keypair, Signer};
use utter_ledger::{BlockId, Ledger, MAIN};
use utter_net::peers::{self, PeerBook};
use utter_net::serve::Source;
use utter_net::tls::Gate;
use utter_net::{
    ALPN_CHUNKS, ALPN_CONSENSUS, ALPN_EXEC, ALPN_SYNC, Endpoint, Identity, Pass, PassError, Passed,
    Progress,
};

use crate::home::{Home, HomeError, Need};
use crate::run::{Shared, lock};

/// How a node takes part in the network.
#[derive(Debug, Clone)]
pub struct P2pSettings {
    /// Where to serve QUIC (UDP).
    pub listen: SocketAddr,
    /// Peers to sync from (remembered in the data dir).
    pub peers: Vec<SocketAddr>,
    /// Let in only keys the chain names or the operator allowed.
    pub private: bool,
    /// How often to pull from each peer.
    pub every: Duration,
}

/// Why the network part failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The data directory.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The network.
    #[error(transparent)]
    Net(#[from] utter_net::NetError),
    /// TLS.
    #[error(transparent)]
    Tls(#[from] utter_net::tls::TlsError),
    /// The peer table.
    #[error(transparent)]
    Peers(#[from] peers::PeersError),
    /// A pass.
    #[error("{peer}: {source}")]
    Pass {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        source: PassError,
    },
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] utter_ledger::LedgerError),
    /// No peer to sync from.
    #[error("no peer to sync from: give one (HOST:PORT), or add one with `utter node run --peer`")]
    NoPeer,
    /// A thread or runtime.
    #[error("{0}")]
    Runtime(String),
    /// The node key of a clone.
    #[error(transparent)]
    Init(#[from] crate::init::InitError),
    /// Creating the ledger of a clone.
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data dir holds a chain already.
    #[error("{} already holds a ledger; clone into another --data-dir", .0.display())]
    Exists(PathBuf),
}

/// The keys a `--private` node lets in: its chain's validators, outgoing
/// validators and devices, and the keys in `allowed_peers`.
#[derive(Clone, Default)]
pub struct Members(Arc<RwLock<HashSet<String>>>);

impl Members {
    /// The members `main`'s `chain.toml` names.
    pub fn refresh(&self, ledger: &Ledger) {
        let Ok(main) = ledger.resolve(MAIN).and_then(|m| ledger.block(m)) else {
            return;
        };
        let Ok(config) = ledger.chain_config(&main) else {
            return;
        };
        let keys = config
            .validators
            .iter()
            .chain(&config.devices)
            .chain(&config.outgoing)
            .filter_map(|m| Signer::parse(&m.key).map(|k| k.to_openssh()))
            .collect();
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }

    fn contains(&self, key: &Signer) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key.to_openssh())
    }
}

/// The gate of a node: everyone, or with `private` only members and the
/// allowed (the file is read at each handshake, so `utter peers allow`
/// takes effect at once).
pub fn gate(home: &Home, private: bool, members: Members) -> Gate {
    if !private {
        return utter_net::tls::open_gate();
    }
    let allowed = home.allowed_peers();
    Arc::new(move |key: &Signer| {
        members.contains(key) || peers::allowed(&allowed).is_ok_and(|keys| keys.contains(key))
    })
}

/// The source a node serves from.
pub fn source(home: &Home, store: &Store) -> Result<Source, HomeError> {
    Ok(Source {
        ledger_dir: home.ledger_dir(),
        store: store.clone(),
        images: home.images(store)?,
    })
}

/// Serving and syncing, while a node runs.
pub(crate) struct P2p {
    endpoint: Endpoint,
    stop: Arc<(Mutex<bool>, Condvar)>,
    sync: Option<std::thread::JoinHandle<()>>,
    pub(crate) addr: SocketAddr,
    /// On a chain of several validators: the channels to the other
    /// validators and what arrives on them, for the consensus thread.
    pub(crate) consensus: Option<(
        crate::gossip::Outbound,
        std::sync::mpsc::Receiver<crate::gossip::Input>,
    )>,
}

impl P2p {
    /// Serves on the node's runtime and starts the sync thread; on a chain
    /// of several validators (`role` is `Some(validator)`) also the
    /// consensus channels, and on a validator no sync thread (the machine
    /// moves main; it pulls what it is told of).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        home: &Home,
        store: &Store,
        key: &Keypair,
        shared: Arc<Shared>,
        settings: &P2pSettings,
        runtime: &tokio::runtime::Runtime,
        verbose: bool,
        role: Option<bool>,
    ) -> Result<Self, P2pError> {
        let identity = Identity::new(key)?;
        let members = Members::default();
        members.refresh(&home.ledger(store)?);
        let gate = gate(home, settings.private, members.clone());
        let endpoint = {
            let _guard = runtime.enter();
            Endpoint::serve(
                settings.listen,
                identity.clone(),
                &[ALPN_SYNC, ALPN_CHUNKS, ALPN_CONSENSUS, ALPN_EXEC],
                gate,
            )?
        };
        let addr = endpoint.local_addr()?;
        let mut book = peers::load(store)?;
        for peer in &settings.peers {
            book.add(*peer, None);
        }
        peers::save(store, &book)?;
        let mut consensus = None;
        let (conns, inbound) = tokio::sync::mpsc::unbounded_channel();
        if role.is_some() {
            let (inputs, received) = std::sync::mpsc::channel();
            let _ = shared.inputs.set(inputs.clone());
            let mut peers: Vec<SocketAddr> = book.peers().map(|p| p.addr).collect();
            peers.retain(|p| *p != addr);
            let outbound = crate::gossip::start(
                runtime,
                &endpoint,
                inbound,
                &peers,
                home,
                store,
                shared.clone(),
                inputs,
            )?;
            consensus = Some((outbound, received));
        }
        let book = Arc::new(Mutex::new(book));
        // Any node serves exec sessions: on one that provides no lease,
        // each is refused with the lease's provider named.
        let exec = crate::exec::start(
            runtime,
            home.clone(),
            shared.clone(),
            key.public().to_openssh(),
        );
        runtime.spawn(utter_net::serve::serve_with(
            endpoint.clone(),
            source(home, store)?,
            role.is_some().then_some(conns),
            Some(exec),
        ));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let sync = (role != Some(true))
            .then(|| {
                let home = home.clone();
                let store = store.clone();
                let stop = stop.clone();
                let every = settings.every;
                let key = key.clone();
                std::thread::Builder::new()
                    .name("sync".into())
                    .spawn(move || {
                        if let Err(e) = sync_loop(
                            &home, &store, &key, &shared, &book, &stop, every, &members, verbose,
                        ) {
                            eprintln!("error: the sync thread stopped: {e}");
                        }
                    })
                    .map_err(|e| P2pError::Runtime(format!("cannot start the sync thread: {e}")))
            })
            .transpose()?;
        Ok(Self {
            endpoint,
            stop,
            sync,
            addr,
            consensus,
        })
    }

    /// Stops syncing and serving.
    pub(crate) fn stop(mut self) {
        {
            let (flag, cv) = &*self.stop;
            *lock(flag) = true;
            cv.notify_all();
        }
        self.endpoint.close();
        if let Some(t) = self.sync.take() {
            let _ = t.join();
        }
    }
}

fn now() -> u64 {
    utter_formats::now()
}

#[allow(clippy::too_many_arguments)]
fn sync_loop(
    home: &Home,
    store: &Store,
    key: &Keypair,
    shared: &Shared,
    book: &Mutex<PeerBook>,
    stop: &(Mutex<bool>, Condvar),
    every: Duration,
    members: &Members,
    verbose: bool,
) -> Result<(), P2pError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| P2pError::Runtime(format!("cannot start the sync runtime: {e}")))?;
    let ledger = home.ledger(store)?;
    let images = home.images(store)?;
    let endpoint = {
        let _guard = runtime.enter();
        Endpoint::client(Identity::new(key)?, false)?
    };
    loop {
        let due = lock(book).due(now());
        for peer in due {
            if *lock(&stop.0) {
                return Ok(());
            }
            let before = ledger.resolve(MAIN)?;
            let result = pass(
                &runtime,
                &endpoint,
                &peer.addr,
                peer.fingerprint.clone(),
                &ledger,
                store,
                &images,
                &mut |_| {},
            );
            let mut book = lock(book);
            match result {
                Ok(passed) => {
                    book.seen(
                        peer.addr,
                        &passed.peer,
                        passed.summary.remote.clone(),
                        now(),
                    );
                    let after = ledger.resolve(MAIN)?;
                    if after != before {
                        if let Err(e) = crate::run::settle(shared, &ledger, before, after) {
                            eprintln!(
                                "error: main moved to {} but the pool was not settled: {e}",
                                after.short()
                            );
                        }
                        members.refresh(&ledger);
                        if verbose {
                            eprintln!(
                                "sync from {}: main at {} ({} commits)",
                                peer.addr,
                                after.short(),
                                passed.summary.commits
                            );
                        }
                    }
                }
                Err(e) => {
                    let its_fault =
                        matches!(&e, P2pError::Pass { source, .. } if source.peer_is_at_fault());
                    if verbose || its_fault {
                        eprintln!("sync from {} failed: {e}", peer.addr);
                    }
                    book.failed(peer.addr, its_fault, &e.to_string(), now());
                }
            }
            let _ = peers::save(store, &book);
        }
        let (flag, cv) = stop;
        let stopped = lock(flag);
        if *stopped {
            return Ok(());
        }
        let (stopped, _) = cv
            .wait_timeout(stopped, every)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *stopped {
            return Ok(());
        }
    }
}

/// A runtime of its own and a client endpoint on it, for passes made
/// outside a running node (`utter sync`, `utter clone`).
fn client(key: &Keypair, ipv6: bool) -> Result<(tokio::runtime::Runtime, Endpoint), P2pError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| P2pError::Runtime(e.to_string()))?;
    let endpoint = {
        let _guard = runtime.enter();
        Endpoint::client(Identity::new(key)?, ipv6)?
    };
    Ok((runtime, endpoint))
}

/// One pass against the peer at `addr`, on `runtime`.
#[allow(clippy::too_many_arguments)]
pub fn pass(
    runtime: &tokio::runtime::Runtime,
    endpoint: &Endpoint,
    addr: &SocketAddr,
    pin: Option<String>,
    ledger: &Ledger,
    store: &Store,
    images: &Images,
    progress: &mut dyn FnMut(Progress),
) -> Result<Passed, P2pError> {
    let pass = Pass {
        endpoint,
        addr: *addr,
        pin,
        ledger,
        store,
        images,
        batch_bytes: utter_net::fetch::BATCH_BYTES,
        progress,
    };
    runtime
        .block_on(pass.run(false))
        .map_err(|source| P2pError::Pass {
            peer: *addr,
            source,
        })
}

/// What `utter sync` did.
#[derive(Debug, Clone)]
pub struct Synced {
    /// Each peer tried, and what happened.
    pub peers: Vec<(SocketAddr, Result<Passed, String>)>,
}

/// `utter sync`: one pass against `addrs` (the remembered peers when
/// empty), with no node running on the data dir.
pub fn sync_once(
    home: &Home,
    addrs: &[SocketAddr],
    progress: &mut dyn FnMut(Progress),
) -> Result<Synced, P2pError> {
    let opened = home.open()?;
    let key = home.load_key(None)?;
    let images = home.images(&opened.store)?;
    let mut book = peers::load(&opened.store)?;
    let targets: Vec<SocketAddr> = if addrs.is_empty() {
        book.peers().map(|p| p.addr).collect()
    } else {
        addrs.to_vec()
    };
    if targets.is_empty() {
        return Err(P2pError::NoPeer);
    }
    let (runtime, endpoint) = client(&key, false)?;
    let mut out = Vec::new();
    for addr in targets {
        let pin = book.get(&addr).and_then(|p| p.fingerprint.clone());
        let result = pass(
            &runtime,
            &endpoint,
            &addr,
            pin,
            &opened.ledger,
            &opened.store,
            &images,
            progress,
        );
        match result {
            Ok(passed) => {
                book.seen(addr, &passed.peer, passed.summary.remote.clone(), now());
                out.push((addr, Ok(passed)));
            }
            Err(e) => {
                let its_fault =
                    matches!(&e, P2pError::Pass { source, .. } if source.peer_is_at_fault());
                book.failed(addr, its_fault, &e.to_string(), now());
                out.push((addr, Err(e.to_string())));
            }
        }
    }
    peers::save(&opened.store, &book)?;
    Ok(Synced { peers: out })
}

/// Where to clone from: `SHA256:FINGERPRINT@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The peer's key fingerprint, pinned.
    pub fingerprint: String,
    /// Its address.
    pub addr: SocketAddr,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((fp, addr)) = s.rsplit_once('@') else {
            return Err(format!(
                "{s:?} is not SHA256:FINGERPRINT@HOST:PORT (the peer's `utter key show --fingerprint`)"
            ));
        };
        if !fp.starts_with("SHA256:") || fp.len() < 20 {
            return Err(format!(
                "{fp:?} is not a key fingerprint: it starts SHA256:, as `ssh-keygen -l` prints it"
            ));
        }
        let addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not HOST:PORT (an IP address and a UDP port)"))?;
        Ok(Self {
            fingerprint: fp.to_string(),
            addr,
        })
    }
}

/// What a clone made.
#[derive(Debug, Clone)]
pub struct Cloned {
    /// The chain.
    pub chain: String,
    /// Main.
    pub main: BlockId,
    /// The node key.
    pub key: Signer,
    /// The pass.
    pub passed: Passed,
}

/// `utter clone`: a new data directory from a peer, its key pinned: this
/// node's own key (given, or new), the whole ledger, every certificate,
/// and every image and chunk main's state names, all verified. An
/// interrupted clone resumes from what it fetched.
pub fn clone(
    home: &Home,
    target: &Target,
    key: Option<&std::path::Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Cloned, P2pError> {
    if home.ledger_dir().exists() {
        return Err(P2pError::Exists(home.root().to_path_buf()));
    }
    let key = crate::init::node_key(home, key)?;
    let store = home.store(Need::Ledger, true, false, None)?;
    let images = home.images(&store)?;
    let (runtime, endpoint) = client(&key, target.addr.is_ipv6())?;
    // The chain and genesis the peer claims; its blocks prove them.
    let (chain, genesis) = runtime.block_on(claims(&endpoint, target))?;
    let making = home.root().join(".ledger.git.creating");
    let chunks = Arc::new(store.clone());
    let ledger = if making.exists() {
        Ledger::reopen_for_clone(&making, chunks, &chain, genesis)?
    } else {
        Ledger::init_for_clone(&making, chunks, &chain, genesis)?
    };
    let pass = Pass {
        endpoint: &endpoint,
        addr: target.addr,
        pin: Some(target.fingerprint.clone()),
        ledger: &ledger,
        store: &store,
        images: &images,
        batch_bytes: utter_net::fetch::BATCH_BYTES,
        progress,
    };
    let passed = runtime
        .block_on(pass.run(true))
        .map_err(|source| P2pError::Pass {
            peer: target.addr,
            source,
        })?;
    ledger.finish_clone()?;
    let main = ledger.resolve(MAIN)?;
    drop(ledger);
    let io = |what, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| P2pError::Io { what, path, source }
    };
    std::fs::rename(&making, home.ledger_dir())
        .map_err(io("move the cloned ledger to", &home.ledger_dir()))?;
    std::fs::File::open(home.root())
        .and_then(|d| d.sync_all())
        .map_err(io("sync", home.root()))?;
    let mut book = peers::load(&store)?;
    book.add(target.addr, Some(target.fingerprint.clone()));
    book.seen(
        target.addr,
        &passed.peer,
        passed.summary.remote.clone(),
        now(),
    );
    peers::save(&store, &book)?;
    Ok(Cloned {
        chain,
        main,
        key: key.public(),
        passed,
    })
}

async fn claims(endpoint: &Endpoint, target: &Target) -> Result<(String, BlockId), P2pError> {
    let conn = endpoint
        .connect(target.addr, ALPN_SYNC, Some(target.fingerprint.clone()))
        .await?;
    let mut answer = conn.ask(&utter_net::wire::Message::Heads).await?;
    let frame = answer.frame().await?;
    conn.close("done");
    match frame {
        Some(utter_net::wire::Message::HeadsAre { chain, genesis, .. }) => Ok((chain, genesis)),
        other => Err(P2pError::Pass {
            peer: target.addr,
            source: PassError::Fault(utter_net::sync::Fault::Protocol(format!(
                "{other:?} where the heads belong"
            ))),
        }),
    }
}

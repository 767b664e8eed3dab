//! `utter-bench net`: sync between two nodes over QUIC on loopback, each
//! figure beside its peer's from the same run on the same bytes.
//!
//! - chunks: a node clones a chain whose state holds 1 GiB of new chunks
//!   (a value behind a pointer), against one raw QUIC stream of as many
//!   bytes between the same kind of endpoints (the same TLS 1.3 handshake
//!   with raw public keys, cipher and transport settings) read into
//!   nothing. Both ends run in this process, as the raw stream's do.
//! - ledger: a 10,000-block chain synced into an empty node (every block
//!   verified before main moves), against `git clone --mirror` of the same
//!   repository from `git daemon` on loopback.
//! - images: the bytes on the wire that bring image v2 to a node that has
//!   v1 (Debian minbase, v2 with packages added, packed by umoci), against
//!   what `casync make` adds to its store for v2's layer after v1's.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use utter_chunkstore::Store;
use utter_images::{Images, ImportOptions, Source as ImageSource};
use utter_ledger::key::Keypair;
use utter_ledger::layout::{DappConfig, StatePath};
use utter_ledger::pointer::Pointer;
use utter_ledger::{BlockId, Change, Changes, Draft, Ledger};
use utter_net::fetch::BATCH_BYTES;
use utter_net::serve::Source;
use utter_net::tls::open_gate;
use utter_net::wire::Message;
use utter_net::{ALPN_CHUNKS, ALPN_SYNC, Endpoint, Identity, Pass, Passed, Progress};

use crate::ledger::{T0, lines_and_ids, new_chain, open_store, signed_txs, write_chain};
use crate::{dir_bytes, installed, mbps, settle, timed};

/// What to run.
pub struct Options {
    /// MiB of new chunks in the throughput benchmark.
    pub chunk_mib: u64,
    /// Blocks of the chain in the ledger benchmark.
    pub blocks: usize,
    /// Runs per timing (the fastest is kept).
    pub runs: usize,
    /// Work directory (default: temporary).
    pub work: Option<PathBuf>,
    /// Where the debootstrap trees are kept between runs.
    pub cache: PathBuf,
    /// Debian suite and mirror for the images.
    pub suite: String,
    /// The mirror.
    pub mirror: String,
    /// The parts to run.
    pub only: Vec<Part>,
}

/// One part of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    /// Chunk throughput against a raw QUIC stream.
    Chunks,
    /// A long ledger against `git clone` over `git daemon`.
    Ledger,
    /// Image v1 to v2 on the wire against `casync make`.
    Images,
}

/// An image no store has: the dapp of a chain that runs none.
fn no_image() -> String {
    format!("sha256:{}", "0".repeat(64))
}

/// A node's stores, in one directory.
struct Node {
    dir: PathBuf,
    store: Store,
    images: Images,
    ledger: Ledger,
    key: Keypair,
}

fn stores(dir: &Path) -> Result<(Store, Images)> {
    std::fs::create_dir_all(dir)?;
    let store = open_store(dir)?;
    let images = Images::open(dir.join("images"), store.clone())?;
    Ok((store, images))
}

impl Node {
    /// A node that will clone `from`'s chain.
    fn empty(dir: &Path, from: &Node) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        let (store, images) = stores(dir)?;
        let ledger = Ledger::init_for_clone(
            &dir.join("ledger.git"),
            std::sync::Arc::new(store.clone()),
            from.ledger.chain(),
            from.ledger.genesis(),
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            store,
            images,
            ledger,
            key: Keypair::generate("follower")?,
        })
    }

    fn source(&self) -> Source {
        Source {
            ledger_dir: self.dir.join("ledger.git"),
            store: self.store.clone(),
            images: self.images.clone(),
        }
    }

    /// A block on main with `changes` and no transactions.
    fn block(&self, changes: Changes, text: &str) -> Result<BlockId> {
        let tip = self.ledger.branch("main")?.context("main exists")?;
        let height = self.ledger.block(tip)?.height;
        let block = self.ledger.write_block(
            &Draft {
                parents: vec![tip],
                changes,
                txs: vec![],
                results: vec![],
                text: text.into(),
                time: T0 + height as i64 + 1,
                round: None,
            },
            &self.key,
        )?;
        self.ledger.advance("main", tip, block.id)?;
        Ok(block.id)
    }
}

/// A node serving on loopback, on a runtime of its own (two workers).
struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    fingerprint: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn serve(node: &Node) -> Result<Server> {
    let rt = runtime()?;
    let _guard = rt.enter();
    let endpoint = Endpoint::serve(
        "127.0.0.1:0".parse()?,
        Identity::new(&node.key)?,
        &[ALPN_SYNC, ALPN_CHUNKS],
        open_gate(),
    )?;
    let addr = endpoint.local_addr()?;
    rt.spawn(utter_net::serve::serve(endpoint, node.source()));
    drop(_guard);
    Ok(Server {
        rt,
        addr,
        fingerprint: node.key.public().fingerprint(),
    })
}

/// One sync pass of `node` against `server`, as `utter clone` (cloning)
/// or `utter sync` makes it.
fn pass(
    node: &Node,
    server: &Server,
    cloning: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Passed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    let endpoint = Endpoint::client(Identity::new(&node.key)?, false)?;
    let passed = rt.block_on(
        Pass {
            endpoint: &endpoint,
            addr: server.addr,
            pin: Some(server.fingerprint.clone()),
            ledger: &node.ledger,
            store: &node.store,
            images: &node.images,
            batch_bytes: BATCH_BYTES,
            progress,
        }
        .run(cloning),
    )?;
    if cloning {
        node.ledger.finish_clone()?;
    }
    Ok(passed)
}

pub fn run(opts: Options) -> Result<()> {
    let tmp = tempfile::tempdir_in(opts.work.clone().unwrap_or_else(std::env::temp_dir))?;
    let work = tmp.path();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# utter-bench net: {cores} cores; both nodes on loopback in this process; AES-GCM {} on this CPU",
        if utter_net::tls::has_aes() {
            "accelerated"
        } else {
            "not accelerated (ChaCha20-Poly1305 first)"
        }
    );
    if opts.only.contains(&Part::Chunks) {
        chunks(&opts, work)?;
    }
    if opts.only.contains(&Part::Ledger) {
        ledger(&opts, work)?;
    }
    if opts.only.contains(&Part::Images) {
        images(&opts, work)?;
    }
    Ok(())
}

// ---- chunk throughput -------------------------------------------------------

/// The chunk phase of one clone: seconds and chunk bytes received.
struct ChunkPhase {
    secs: f64,
    bytes: u64,
    chunks: u64,
    clone_secs: f64,
}

fn chunks(opts: &Options, work: &Path) -> Result<()> {
    let size = opts.chunk_mib << 20;
    println!();
    println!(
        "## chunk sync: a clone of a chain holding {} MiB of new chunks, against one raw QUIC stream",
        opts.chunk_mib
    );
    let a_dir = work.join("chunks-a");
    let (store, images) = stores(&a_dir)?;
    let key = Keypair::generate("validator")?;
    let ledger = new_chain(&a_dir, &key, store.clone(), &no_image())?;
    let a = Node {
        dir: a_dir,
        store,
        images,
        ledger,
        key,
    };
    eprintln!(
        "storing {} MiB of random bytes on the serving node…",
        opts.chunk_mib
    );
    let put = a
        .store
        .put(Read::take(utter_testkit::Noise::new(3), size))?;
    let mut changes = Changes::new();
    changes.state(
        "accounting",
        &StatePath::new("uploads/big")?,
        Change::Pointer(Pointer {
            manifest: put.id,
            size,
        }),
    )?;
    a.block(changes, "a large upload")?;
    let server = serve(&a)?;
    let raw_addr = raw_server(&server.rt, &a.key, size)?;

    let mut best_utter: Option<ChunkPhase> = None;
    let mut best_raw: Option<f64> = None;
    let mut first: Option<(f64, f64)> = None;
    for run in 0..opts.runs.max(1) {
        settle();
        eprintln!("  run {}: cloning…", run + 1);
        let b = Node::empty(&work.join(format!("chunks-b{run}")), &a)?;
        let phase = clone_chunks(&b, &server)?;
        if phase.chunks != put.manifest.entries().len() as u64 {
            bail!(
                "the clone fetched {} chunks of {}",
                phase.chunks,
                put.manifest.entries().len()
            );
        }
        drop(b);
        let _ = std::fs::remove_dir_all(work.join(format!("chunks-b{run}")));
        settle();
        let raw = raw_fetch(&server, raw_addr, size)?;
        eprintln!(
            "  run {}: utter {:.0} MB/s, raw stream {:.0} MB/s",
            run + 1,
            mbps(phase.bytes, phase.secs),
            mbps(size, raw)
        );
        first.get_or_insert((mbps(phase.bytes, phase.secs), mbps(size, raw)));
        if best_utter.as_ref().is_none_or(|b| phase.secs < b.secs) {
            best_utter = Some(phase);
        }
        if best_raw.is_none_or(|b| raw < b) {
            best_raw = Some(raw);
        }
    }
    let utter = best_utter.context("one run")?;
    let raw = best_raw.context("one run")?;
    let ours = mbps(utter.bytes, utter.secs);
    let theirs = mbps(size, raw);
    println!("{:<58} {:>9} {:>9}", "", "seconds", "MB/s");
    println!(
        "{:<58} {:>9.2} {:>9.0}",
        format!(
            "utter sync: {} chunks fetched, hashed, stored",
            utter.chunks
        ),
        utter.secs,
        ours
    );
    println!(
        "{:<58} {:>9.2} {:>9.0}",
        "raw QUIC stream, same TLS and transport, into nothing", raw, theirs
    );
    println!(
        "utter's chunk sync runs at {:.2}x the raw stream (target >= 0.7x); best of {}",
        ours / theirs,
        opts.runs.max(1)
    );
    if let Some((cold, raw_then)) = first {
        println!(
            "first run, the serving store read cold from disk: utter {cold:.0} MB/s, {:.2}x the raw stream",
            cold / raw_then
        );
    }
    println!(
        "(for scale) the whole clone, verification included: {:.2} s",
        utter.clone_secs
    );
    Ok(())
}

/// Clones into `b`, timing the chunk phase from its first progress report
/// (the chunks to fetch counted) to its last chunk stored.
fn clone_chunks(b: &Node, server: &Server) -> Result<ChunkPhase> {
    let mut start: Option<(Instant, u64)> = None;
    let mut end: Option<(Instant, u64, u64)> = None;
    let started = Instant::now();
    {
        let mut on = |p: Progress| {
            if p.chunks_total == 0 {
                return;
            }
            if start.is_none() {
                start = Some((Instant::now(), p.bytes));
            }
            if p.chunks == p.chunks_total {
                end = Some((Instant::now(), p.bytes, p.chunks));
            }
        };
        pass(b, server, true, &mut on)?;
    }
    let clone_secs = started.elapsed().as_secs_f64();
    let ((t0, b0), (t1, b1, chunks)) = start.zip(end).context("the clone fetched no chunks")?;
    Ok(ChunkPhase {
        secs: (t1 - t0).as_secs_f64(),
        bytes: b1 - b0,
        chunks,
        clone_secs,
    })
}

/// Serves `bytes` raw bytes on one stream to every request, with the same
/// endpoint, TLS and transport settings as a node.
fn raw_server(rt: &tokio::runtime::Runtime, key: &Keypair, bytes: u64) -> Result<SocketAddr> {
    let _guard = rt.enter();
    let endpoint = Endpoint::serve(
        "127.0.0.1:0".parse()?,
        Identity::new(key)?,
        &[ALPN_CHUNKS],
        open_gate(),
    )?;
    let addr = endpoint.local_addr()?;
    rt.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok((conn, _)) = incoming.connected().await else {
                    return;
                };
                while let Some(Ok((_, mut reply))) = conn.next_request().await {
                    tokio::spawn(async move {
                        let mut block = vec![0u8; 1 << 20];
                        let _ = utter_testkit::Noise::new(4).read_exact(&mut block);
                        let mut left = bytes;
                        while left > 0 {
                            let n = left.min(block.len() as u64) as usize;
                            if reply.bytes(&block[..n]).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                        reply.finish();
                    });
                }
            });
        }
    });
    Ok(addr)
}

/// Seconds to read the raw stream to its end, from the request on.
fn raw_fetch(server: &Server, addr: SocketAddr, bytes: u64) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = Keypair::generate("raw-client")?;
    rt.block_on(async {
        let endpoint = Endpoint::client(Identity::new(&key)?, false)?;
        let conn = endpoint
            .connect(addr, ALPN_CHUNKS, Some(server.fingerprint.clone()))
            .await?;
        let started = Instant::now();
        let mut answer = conn.ask(&Message::Heads).await?;
        let got = answer.rest_into(&mut std::io::sink(), u64::MAX).await?;
        let secs = started.elapsed().as_secs_f64();
        if got != bytes {
            bail!("the raw stream carried {got} bytes of {bytes}");
        }
        conn.close("done");
        Ok(secs)
    })
}

// ---- ledger sync against git ------------------------------------------------

fn ledger(opts: &Options, work: &Path) -> Result<()> {
    let blocks = opts.blocks;
    println!();
    println!(
        "## ledger sync: a {blocks}-block chain (1 transaction per block) into an empty node, against git clone over git daemon"
    );
    let a_dir = work.join("ledger-a");
    let (store, images) = stores(&a_dir)?;
    let key = Keypair::generate("validator")?;
    let mut ledger = new_chain(&a_dir, &key, store.clone(), &no_image())?;
    ledger.set_durable(false);
    let txs: Vec<_> = (0..blocks)
        .map(|b| signed_txs(&key, b as u64, 1))
        .collect::<Result<_>>()?;
    let txs = lines_and_ids(txs);
    let mut last = Instant::now();
    write_chain(&ledger, &key, blocks, &txs, |b| {
        if last.elapsed().as_secs() >= 5 {
            eprintln!("  building the chain: {b}/{blocks} blocks");
            last = Instant::now();
        }
    })?;
    let main = ledger.branch("main")?.context("main exists")?;
    let a = Node {
        dir: a_dir.clone(),
        store,
        images,
        ledger,
        key,
    };
    let server = serve(&a)?;
    let daemon = GitDaemon::start(&a_dir)?;

    let mut utter_best = f64::MAX;
    let mut git_best = f64::MAX;
    let mut objects = 0;
    let mut packs = 0;
    let mut git_pack = 0;
    for run in 0..opts.runs.max(1) {
        settle();
        let dir = work.join(format!("ledger-b{run}"));
        let b = Node::empty(&dir, &a)?;
        let started = Instant::now();
        let passed = pass(&b, &server, true, &mut |_| {})?;
        let secs = started.elapsed().as_secs_f64();
        if b.ledger.branch("main")? != Some(main) {
            bail!("the clone's main is not the served main");
        }
        objects = passed.progress.objects;
        packs = passed.progress.bytes;
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
        settle();
        let dest = work.join(format!("git-mirror{run}"));
        let (git_secs, _) = timed(
            Command::new("git")
                .args(["clone", "--mirror", "--quiet"])
                .arg(daemon.url("ledger.git"))
                .arg(&dest),
        )?;
        let (_, theirs) = timed(
            Command::new("git")
                .arg("--git-dir")
                .arg(&dest)
                .args(["rev-parse", "refs/heads/main"]),
        )?;
        if theirs.trim() != main.to_string() {
            bail!("git's clone has main {}, not {main}", theirs.trim());
        }
        git_pack = dir_bytes(&dest.join("objects").join("pack"));
        let _ = std::fs::remove_dir_all(&dest);
        eprintln!("  run {}: utter {secs:.2} s, git {git_secs:.2} s", run + 1);
        utter_best = utter_best.min(secs);
        git_best = git_best.min(git_secs);
    }
    println!("{:<58} {:>9} {:>9}", "", "seconds", "blocks/s");
    println!(
        "{:<58} {:>9.2} {:>9.0}",
        format!("utter clone ({objects} objects, every block verified)"),
        utter_best,
        blocks as f64 / utter_best
    );
    println!(
        "{:<58} {:>9.2} {:>9.0}",
        "git clone --mirror from git daemon (no signature checks)",
        git_best,
        blocks as f64 / git_best
    );
    println!(
        "packs on the wire: utter {:.1} MB, git {:.1} MB (its pack and index as received)",
        packs as f64 / 1e6,
        git_pack as f64 / 1e6
    );
    println!(
        "utter takes {:.2}x git's time (target <= 1.0x); best of {}",
        utter_best / git_best,
        opts.runs.max(1)
    );
    Ok(())
}

/// `git daemon` serving a directory on a loopback port, stopped on drop.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> Result<Self> {
        // A port free a moment ago; the daemon binds it.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start git daemon")?;
        let mut daemon = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("git daemon exited ({status}) before it listened on port {port}");
            }
            if Instant::now() > deadline {
                bail!("git daemon did not listen on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- an image update on the wire against casync ---------------------------

fn images(opts: &Options, work: &Path) -> Result<()> {
    for tool in ["umoci", "skopeo", "casync"] {
        if !installed(tool) {
            bail!(
                "{tool} is not installed (./x bench net installs it), or pass --only chunks,ledger"
            );
        }
    }
    let iopts = crate::images::Options {
        cache: opts.cache.clone(),
        work: None,
        runs: 1,
        suite: opts.suite.clone(),
        mirror: opts.mirror.clone(),
    };
    let v1_tree = crate::images::rootfs(&iopts, &format!("{}-minbase", opts.suite), None)?;
    let v2_tree = crate::images::rootfs(
        &iopts,
        &format!("{}-minbase-plus", opts.suite),
        Some(crate::images::EXTRA_PACKAGES),
    )?;
    let oci = work.join("oci");
    std::fs::create_dir_all(&oci)?;
    eprintln!("packing both trees with umoci…");
    let v1_tar = crate::images::umoci_image(&oci, &v1_tree, "v1")?;
    let v2_tar = crate::images::umoci_image(&oci, &v2_tree, "v2")?;
    let layout = oci.join("layout");
    let import = |images: &Images, tag: &str| {
        images
            .import(
                &ImageSource::OciDir {
                    dir: layout.clone(),
                    tag: Some(tag.into()),
                },
                &ImportOptions::default(),
                &mut |_| {},
            )
            .with_context(|| format!("importing {tag}"))
    };
    println!();
    println!(
        "## image update on the wire: Debian {} minbase (v1, {:.1} MB layer) to v1 + {} (v2, {:.1} MB), against casync",
        opts.suite,
        std::fs::metadata(&v1_tar)?.len() as f64 / 1e6,
        crate::images::EXTRA_PACKAGES,
        std::fs::metadata(&v2_tar)?.len() as f64 / 1e6
    );

    // Node A runs v1; B clones it; A moves the dapp to v2; B syncs.
    let a_dir = work.join("images-a");
    let (store, images) = stores(&a_dir)?;
    let v1 = import(&images, "v1")?.image.id;
    let key = Keypair::generate("validator")?;
    let ledger = new_chain(&a_dir, &key, store.clone(), &v1.to_string())?;
    let a = Node {
        dir: a_dir,
        store,
        images,
        ledger,
        key,
    };
    let server = serve(&a)?;
    let b = Node::empty(&work.join("images-b"), &a)?;
    let first = pass(&b, &server, true, &mut |_| {})?;
    b.images
        .get(&v1.to_string())
        .context("the clone did not bring image v1")?;
    let v2 = import(&a.images, "v2")?.image.id;
    let mut changes = Changes::new();
    changes.set_dapp(
        "accounting",
        &DappConfig {
            image: v2.to_string(),
            owners: vec![a.key.public().to_openssh()],
            permissions: Default::default(),
            deployed_at: None,
            upgraded_at: None,
        },
    )?;
    a.block(changes, "accounting runs v2")?;
    let second = pass(&b, &server, false, &mut |_| {})?;
    b.images
        .get(&v2.to_string())
        .context("the sync did not bring image v2")?;

    let store_dir = work.join("casync-store");
    let casync = |tar: &Path, n: u32| {
        timed(
            Command::new("casync")
                .arg("make")
                .arg(format!("--store={}", store_dir.display()))
                .arg(work.join(format!("v{n}.caibx")))
                .arg(tar),
        )
    };
    casync(&v1_tar, 1)?;
    let casync_v1 = dir_bytes(&store_dir);
    casync(&v2_tar, 2)?;
    let casync_v2 = dir_bytes(&store_dir) - casync_v1;
    let index_v2 = std::fs::metadata(work.join("v2.caibx"))?.len();
    println!("{:<58} {:>12} {:>12}", "", "v1", "v2 given v1");
    println!(
        "{:<58} {:>12} {:>12}",
        "utter sync, bytes on the wire (QUIC UDP payload)", first.wire_bytes, second.wire_bytes
    );
    println!(
        "{:<58} {:>12} {:>12}",
        "utter sync, payload (packs, documents, chunks)",
        first.progress.bytes,
        second.progress.bytes
    );
    println!(
        "{:<58} {:>12} {:>12}",
        "casync make, store growth (chunks)", casync_v1, casync_v2
    );
    println!(
        "utter puts {:.2}x what casync adds for v2 on the wire (target <= 1.1x); {:.2}x with casync's {index_v2}-byte index counted",
        second.wire_bytes as f64 / casync_v2.max(1) as f64,
        second.wire_bytes as f64 / (casync_v2 + index_v2).max(1) as f64
    );
    Ok(())
}

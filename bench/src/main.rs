//! `utter-bench`: benchmarks that print utter's figures beside its peers',
//! measured in the same run on the same files.
//!
//! `utter-bench chunkstore` times the `utter` binary found next to this one
//! (`./x bench` builds both) against restic, borg and casync.
//! `utter-bench ledger` times block writing and `utter verify` against
//! `git verify-commit`. `utter-bench images` times image import, the dedup
//! of an image update and unpack against raw ingest, casync and umoci.
//! `utter-bench runtime` times container runs against `runc run` and a
//! counter-dapp block against an empty container run. `utter-bench net`
//! times sync between two nodes over QUIC against a raw QUIC stream and
//! `git clone`, and counts an image update's bytes on the wire against
//! casync. `utter-bench doorbot` times a badge to the relay on a door's
//! follower node, idle and under load, beside the decision alone.

mod cluster;
mod consensus;
mod dapps;
mod doorbot;
mod executor;
mod images;
mod leases;
mod ledger;
mod net;
mod node;
mod runtime;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "utter's benchmarks: each prints utter beside its peer, from one run")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Chunk store ingest, re-ingest, read and dedup against restic, borg and casync
    Chunkstore {
        /// Size of the incompressible data set, in MiB
        #[arg(long, default_value_t = 1024)]
        random_mib: u64,
        /// Directory to tar into the compressible v1/v2 pair
        #[arg(long, default_value = "/usr/share")]
        tree: PathBuf,
        /// Also stream this many GiB through `utter chunks put -` and report peak memory
        #[arg(long, default_value_t = 4)]
        stream_gib: u64,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
        /// Skip restic, borg and casync
        #[arg(long)]
        no_peers: bool,
        /// Time each ingest and read this many times and keep the fastest
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Image import against raw ingest, update dedup against casync, unpack against umoci
    Images {
        /// Where the debootstrap trees are kept between runs
        #[arg(long, default_value_os_t = default_cache())]
        cache: PathBuf,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
        /// Time each measurement this many times and keep the fastest
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Debian suite for the images
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Debian mirror
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        mirror: String,
    },
    /// Proof of merge in simulation: 4 validators on 1 ms links; consensus
    /// work per block, commit latency in round trips, machine events/s
    Consensus {
        /// Validators
        #[arg(long, default_value_t = 4)]
        validators: u32,
        /// Transactions submitted (spread over 10 simulated seconds)
        #[arg(long, default_value_t = 2000)]
        txs: u32,
    },
    /// Container start against `runc run`, and a 1,000-transaction counter block
    Runtime {
        /// Runs of each measurement (the median is printed)
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Transactions in the counter block
        #[arg(long, default_value_t = 1000)]
        txs: usize,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Door access transactions through a devnet of validators (proof of
    /// merge over QUIC on loopback), every node's API taking its share,
    /// beside one node alone in the same run
    Cluster {
        /// Validators
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Offered load, transactions per second
        #[arg(long, default_value_t = 2500)]
        rate: usize,
        /// Seconds of load
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Transactions per request
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Compute leases: block time with 10,000 open leases beside 10, halt
    /// latency (ran dry to frozen), `lease exec` beside ssh
    Leases {
        /// Open leases on the big chain (beside a chain of 10)
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        /// Blocks timed on each chain
        #[arg(long, default_value_t = 20)]
        blocks: usize,
        /// Leases that run dry, for the halt latency
        #[arg(long, default_value_t = 20)]
        halts: usize,
        /// Round trips timed for `lease exec` and ssh
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Seconds to wait after opening the leases before the blocks are
        /// timed (the filesystem settles after the opening's writes)
        #[arg(long, default_value_t = 0)]
        settle: u64,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// The door controller beside its follower node: badge to relay
    /// decision, idle and while the follower syncs blocks under load, and
    /// the resident memory of both, with a makerspace of many members
    Doorbot {
        /// Members with badges
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Badge reads under load (half as many idle)
        #[arg(long, default_value_t = 200)]
        reads: usize,
        /// Load offered to the validators meanwhile, transactions per second
        #[arg(long, default_value_t = 300)]
        rate: usize,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
        /// The directory of the `utter` and `doorbot` to measure, e.g. a
        /// release build's (default: beside utter-bench)
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Door access transactions through a running node at a steady rate:
    /// committed tx/s and submit-to-committed latency
    Node {
        /// Offered load, transactions per second
        #[arg(long, default_value_t = 2500)]
        rate: usize,
        /// Seconds of load
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Transactions per request
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Blocks of counter transactions through the executor: where a block's
    /// time goes, and the overhead beyond the dapp run
    Executor {
        /// Blocks to time (after a warm-up block)
        #[arg(long, default_value_t = 20)]
        blocks: usize,
        /// Transactions per block
        #[arg(long, default_value_t = 1000)]
        txs: usize,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Sync over QUIC: chunk throughput against a raw QUIC stream, a
    /// 10,000-block clone against `git clone` from `git daemon`, an image
    /// update's bytes on the wire against casync
    Net {
        /// MiB of new chunks to sync
        #[arg(long, default_value_t = 1024)]
        chunk_mib: u64,
        /// Blocks of the chain to sync
        #[arg(long, default_value_t = 10_000)]
        blocks: usize,
        /// Time each measurement this many times and keep the fastest
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
        /// Where the debootstrap trees are kept between runs
        #[arg(long, default_value_os_t = default_cache())]
        cache: PathBuf,
        /// Debian suite for the images
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Debian mirror
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        mirror: String,
        /// Run only these parts (the images part needs debootstrap and the mirror)
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "chunks,ledger,images"
        )]
        only: Vec<net::Part>,
    },
    /// Deploy to first use of a large image on one node and on a second
    /// that fetches it; a Python dapp's block beside the Rust counter's
    Dapps {
        /// The deployed image's size, MiB
        #[arg(long, default_value_t = 50)]
        size_mib: u64,
        /// Transactions in the language block
        #[arg(long, default_value_t = 1000)]
        txs: usize,
        /// Blocks per language
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Block writing (tx/s) and `utter verify` against `git verify-commit`
    Ledger {
        /// Blocks to write in the writing benchmark
        #[arg(long, default_value_t = 50)]
        write_blocks: usize,
        /// Transactions per block in the writing benchmark
        #[arg(long, default_value_t = 1000)]
        txs_per_block: usize,
        /// Length of the chain `utter verify` and `git verify-commit` check
        #[arg(long, default_value_t = 10_000)]
        verify_blocks: usize,
        /// Transactions per block of that chain
        #[arg(long, default_value_t = 1)]
        verify_txs_per_block: usize,
        /// Work directory (default: a temporary directory, removed afterwards)
        #[arg(long)]
        work: Option<PathBuf>,
        /// Time each measurement this many times and keep the fastest
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Chunkstore {
            random_mib,
            tree,
            stream_gib,
            work,
            no_peers,
            runs,
        } => chunkstore(random_mib, &tree, stream_gib, work, no_peers, runs),
        Bench::Images {
            cache,
            work,
            runs,
            suite,
            mirror,
        } => images::run(images::Options {
            cache,
            work,
            runs,
            suite,
            mirror,
        }),
        Bench::Consensus { validators, txs } => consensus::run(validators, txs),
        Bench::Runtime { runs, txs, work } => runtime::run(runtime::Options { runs, txs, work }),
        Bench::Node {
            rate,
            seconds,
            batch,
            work,
        } => node::run(node::Options {
            rate,
            seconds,
            batch,
            work,
        }),
        Bench::Cluster {
            validators,
            rate,
            seconds,
            batch,
            work,
        } => cluster::run(cluster::Options {
            validators,
            rate,
            seconds,
            batch,
            work,
        }),
        Bench::Leases {
            leases,
            blocks,
            halts,
            runs,
            settle,
            work,
        } => leases::run(leases::Options {
            leases,
            blocks,
            halts,
            runs,
            settle: Duration::from_secs(settle),
            work,
        }),
        Bench::Doorbot {
            members,
            reads,
            rate,
            work,
            bin_dir,
        } => doorbot::run(doorbot::Options {
            members,
            reads,
            rate,
            work,
            bin_dir,
        }),
        Bench::Executor { blocks, txs, work } => {
            executor::run(executor::Options { blocks, txs, work })
        }
        Bench::Net {
            chunk_mib,
            blocks,
            runs,
            work,
            cache,
            suite,
            mirror,
            only,
        } => net::run(net::Options {
            chunk_mib,
            blocks,
            runs,
            work,
            cache,
            suite,
            mirror,
            only,
        }),
        Bench::Dapps {
            size_mib,
            txs,
            runs,
            work,
        } => dapps::run(dapps::Options {
            size_mib,
            txs,
            runs,
            work,
        }),
        Bench::Ledger {
            write_blocks,
            txs_per_block,
            verify_blocks,
            verify_txs_per_block,
            work,
            runs,
        } => ledger::run(ledger::Options {
            write_blocks,
            txs_per_block,
            verify_blocks,
            verify_txs_per_block,
            work,
            runs,
        }),
    }
}

fn default_cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/utter-bench")
}

/// The work directory given, else `tmp`; made and made absolute.
fn work_dir(given: Option<PathBuf>, tmp: &Path) -> Result<PathBuf> {
    let work = given.unwrap_or_else(|| tmp.to_path_buf());
    std::fs::create_dir_all(&work)?;
    Ok(work.canonicalize()?)
}

fn utter_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("utter");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (`cargo build --workspace --bins`, or run `./x bench`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs a command, returns (seconds, stdout). Fails with its stderr.
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Bytes in all files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += dir_bytes(&e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Incompressible bytes.
fn write_noise(path: &Path, bytes: u64) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    std::io::copy(
        &mut std::io::Read::take(utter_testkit::Noise::new(1), bytes),
        &mut f,
    )?;
    Ok(())
}

/// v1 and v2 tars of `tree`: v2 adds every 15th top-level directory of the
/// tree back (v1 leaves them out), like installing a few packages, plus
/// one changed file.
fn make_tar_pair(tree: &Path, work: &Path) -> Result<(PathBuf, PathBuf, usize)> {
    let mut dirs: Vec<String> = std::fs::read_dir(tree)
        .with_context(|| format!("cannot list {}", tree.display()))?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let added: Vec<&String> = dirs.iter().skip(7).step_by(15).collect();
    let v1 = work.join("v1.tar");
    let v2 = work.join("v2.tar");
    let parent = tree.parent().unwrap_or(Path::new("/"));
    let base = tree
        .file_name()
        .context("tree has no name")?
        .to_string_lossy()
        .into_owned();
    let tar = |out: &Path, exclude: &[&String]| -> Result<()> {
        let mut cmd = Command::new("tar");
        cmd.args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
        ]);
        cmd.arg(out).arg("-C").arg(parent);
        for d in exclude {
            cmd.arg(format!("--exclude={base}/{d}"));
        }
        cmd.arg(&base);
        let status = cmd.stderr(Stdio::null()).status()?;
        // tar exits 1 when files changed while reading; the archive is still complete.
        if status.code().unwrap_or(2) > 1 {
            bail!("tar of {} failed", tree.display());
        }
        Ok(())
    };
    tar(&v1, &added)?;
    tar(&v2, &[])?;
    Ok((v1, v2, added.len()))
}

struct Peer {
    name: &'static str,
    /// Initialise a repository in the directory.
    init: fn(&Path) -> Command,
    /// Store a file into the repository (the n-th snapshot).
    store: fn(&Path, &Path, usize) -> Command,
    /// Where the stored bytes live inside the repository directory.
    data: &'static str,
}

fn peers() -> Vec<Peer> {
    vec![
        Peer {
            name: "restic",
            init: |repo| {
                let mut c = Command::new("restic");
                c.env("RESTIC_PASSWORD", "bench")
                    .arg("-r")
                    .arg(repo)
                    .args(["init", "-q"]);
                c
            },
            store: |repo, file, _| {
                let mut c = Command::new("restic");
                c.env("RESTIC_PASSWORD", "bench")
                    .arg("-r")
                    .arg(repo)
                    .args(["backup", "-q"])
                    .arg(file);
                c
            },
            data: "data",
        },
        Peer {
            name: "borg",
            init: |repo| {
                let mut c = Command::new("borg");
                c.args(["init", "-e", "none"]).arg(repo);
                c
            },
            store: |repo, file, n| {
                let mut c = Command::new("borg");
                c.env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
                    .arg("create")
                    .arg(format!("{}::s{n}", repo.display()))
                    .arg(file);
                c
            },
            data: "data",
        },
        Peer {
            name: "casync",
            init: |repo| {
                let mut c = Command::new("mkdir");
                c.arg("-p").arg(repo);
                c
            },
            store: |repo, file, n| {
                let mut c = Command::new("casync");
                c.arg("make")
                    .arg(format!("--store={}", repo.join("store").display()))
                    .arg(repo.join(format!("s{n}.caibx")))
                    .arg(file);
                c
            },
            data: "store",
        },
    ]
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

struct UtterRun {
    secs: f64,
    new_bytes: u64,
    chunks: u64,
    manifest: String,
}

impl UtterRun {
    /// Bytes of the manifest's canonical encoding (part of `new_bytes`).
    fn manifest_bytes(&self) -> u64 {
        18 + 8 + 36 * self.chunks
    }
}

/// Writes dirty pages back, so one run's writeback does not land on the next.
fn settle() {
    let _ = Command::new("sync").status();
}

/// The fastest of `runs` timings of `f` (each starting from a settled disk).
fn best<T>(runs: usize, mut f: impl FnMut() -> Result<(f64, T)>) -> Result<(f64, T)> {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..runs.max(1) {
        settle();
        let r = f()?;
        if best.as_ref().is_none_or(|b| r.0 < b.0) {
            best = Some(r);
        }
    }
    Ok(best.expect("at least one run"))
}

fn utter_put(bin: &Path, data_dir: &Path, file: &Path) -> Result<UtterRun> {
    let (secs, out) = timed(
        Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["chunks", "put", "--json"])
            .arg(file),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).context("utter put --json output")?;
    Ok(UtterRun {
        secs,
        new_bytes: v["new_bytes"].as_u64().unwrap_or(0),
        chunks: v["chunks"].as_u64().unwrap_or(0),
        manifest: v["manifest"].as_str().unwrap_or_default().to_string(),
    })
}

fn chunkstore(
    random_mib: u64,
    tree: &Path,
    stream_gib: u64,
    work: Option<PathBuf>,
    no_peers: bool,
    runs: usize,
) -> Result<()> {
    let bin = utter_bin()?;
    let tmp;
    let work = match work {
        Some(w) => {
            std::fs::create_dir_all(&w)?;
            w
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# utter-bench chunkstore: {cores} cores, utter = {}",
        bin.display()
    );

    eprintln!("making data sets in {} ...", work.display());
    let random = work.join("random.bin");
    write_noise(&random, random_mib << 20)?;
    let (v1, v2, added) = make_tar_pair(tree, &work)?;
    settle();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);

    let peers: Vec<Peer> = if no_peers {
        Vec::new()
    } else {
        peers()
            .into_iter()
            .filter(|p| {
                let ok = installed(p.name);
                if !ok {
                    println!(
                        "({} not installed: apt-get install {} to compare)",
                        p.name, p.name
                    );
                }
                ok
            })
            .collect()
    };

    for (label, file) in [
        ("random (incompressible)", &random),
        ("tar of a tree (compressible)", &v1),
    ] {
        let bytes = size(file);
        println!();
        println!(
            "## ingest of new data: {label}, {:.0} MB",
            bytes as f64 / 1e6
        );
        println!("{:<28} {:>10} {:>12}", "", "MB/s", "utter is");
        let dir = work.join("utter-ingest");
        let (new_secs, first) = best(runs, || {
            let _ = std::fs::remove_dir_all(&dir);
            utter_put(&bin, &dir, file).map(|r| (r.secs, r))
        })?;
        let (again_secs, _) = best(runs, || utter_put(&bin, &dir, file).map(|r| (r.secs, ())))?;
        let get = || {
            timed(Command::new("sh").arg("-c").arg(format!(
                "{} --data-dir {} chunks get {} > /dev/null",
                bin.display(),
                dir.display(),
                first.manifest
            )))
            .map(|(secs, _)| (secs, ()))
        };
        // Flushes write with O_DIRECT, so the first read comes from disk.
        settle();
        let (cold_secs, _) = get()?;
        let (get_secs, _) = best(runs, get)?;
        let utter_new = mbps(bytes, new_secs);
        println!("{:<28} {:>10.0}", "utter chunks put (new)", utter_new);
        println!(
            "{:<28} {:>10.0}",
            "utter chunks put (again)",
            mbps(bytes, again_secs)
        );
        println!(
            "{:<28} {:>10.0}",
            "utter chunks get (first)",
            mbps(bytes, cold_secs)
        );
        println!(
            "{:<28} {:>10.0}",
            "utter chunks get (warm)",
            mbps(bytes, get_secs)
        );
        let mut fastest: f64 = 0.0;
        for p in &peers {
            let repo = work.join(format!("{}-ingest", p.name));
            let (secs, _) = best(runs, || {
                let _ = std::fs::remove_dir_all(&repo);
                timed(&mut (p.init)(&repo))?;
                timed(&mut (p.store)(&repo, file, 1))
            })?;
            let rate = mbps(bytes, secs);
            fastest = fastest.max(rate);
            println!(
                "{:<28} {:>10.0} {:>11.1}x",
                format!("{} (new)", p.name),
                rate,
                utter_new / rate
            );
            let _ = std::fs::remove_dir_all(&repo);
        }
        if fastest > 0.0 {
            println!(
                "utter new-data ingest vs fastest peer: {:.1}x (target >= 5x)",
                utter_new / fastest
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!();
    println!(
        "## dedup: v1 = tar of {} without {added} directories ({:.0} MB), v2 = with them ({:.0} MB)",
        tree.display(),
        size(&v1) as f64 / 1e6,
        size(&v2) as f64 / 1e6
    );
    println!(
        "{:<22} {:>14} {:>22} {:>22}",
        "", "v1 stored", "v2 adds: chunks only", "with index/manifest"
    );
    let dir = work.join("utter-dedup");
    let _ = std::fs::remove_dir_all(&dir);
    let a = utter_put(&bin, &dir, &v1)?;
    let b = utter_put(&bin, &dir, &v2)?;
    let utter_chunks = b.new_bytes - b.manifest_bytes();
    println!(
        "{:<22} {:>14} {:>22} {:>22}",
        "utter", a.new_bytes, utter_chunks, b.new_bytes
    );
    let _ = std::fs::remove_dir_all(&dir);
    for p in &peers {
        let repo = work.join(format!("{}-dedup", p.name));
        let _ = std::fs::remove_dir_all(&repo);
        timed(&mut (p.init)(&repo))?;
        timed(&mut (p.store)(&repo, &v1, 1))?;
        let (data1, all1) = (dir_bytes(&repo.join(p.data)), dir_bytes(&repo));
        timed(&mut (p.store)(&repo, &v2, 2))?;
        let (data2, all2) = (dir_bytes(&repo.join(p.data)), dir_bytes(&repo));
        println!(
            "{:<22} {:>14} {:>22} {:>22}",
            format!("{} ({}/)", p.name, p.data),
            data1,
            data2 - data1,
            all2 - all1
        );
        if p.name == "casync" && data2 > data1 {
            println!(
                "utter adds {:.2}x what casync adds for v2 counting chunks, {:.2}x counting indexes too (target <= 1.1x)",
                utter_chunks as f64 / (data2 - data1) as f64,
                b.new_bytes as f64 / (all2 - all1) as f64
            );
        }
        let _ = std::fs::remove_dir_all(&repo);
    }

    if stream_gib > 0 {
        println!();
        println!("## memory: {stream_gib} GiB of new data streamed through `utter chunks put -`");
        let dir = work.join("utter-stream");
        let _ = std::fs::remove_dir_all(&dir);
        let (secs, peak_kib) = stream_put(&bin, &dir, stream_gib << 30)?;
        println!(
            "{:.0} MB/s, peak resident memory {:.0} MiB (target < 256 MiB)",
            mbps(stream_gib << 30, secs),
            peak_kib as f64 / 1024.0
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Pipes generated noise into `utter chunks put -`; returns seconds and the
/// child's peak RSS in KiB.
fn stream_put(bin: &Path, dir: &Path, bytes: u64) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .args(["chunks", "put", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    std::io::copy(
        &mut std::io::Read::take(utter_testkit::Noise::new(2), bytes),
        &mut stdin,
    )?;
    drop(stdin);
    let (status, peak) = wait_with_peak_rss(child)?;
    if !status.success() {
        bail!("utter chunks put - failed");
    }
    Ok((started.elapsed().as_secs_f64(), peak))
}

/// Peak RSS of a child, from `/proc/<pid>/status` (VmHWM) sampled just
/// before it exits: polled until the child ends.
fn wait_with_peak_rss(mut child: std::process::Child) -> Result<(std::process::ExitStatus, u64)> {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            return Ok((status, peak));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! `utter run` (a one-off command in an image's container) and
//! `utter dapp run` (one invocation of the dapp protocol, outside any
//! chain).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::os::unix::process::CommandExt;

use utter_images::Catalog;
use utter_runtime::dapp::{ChangeKind, Context, Entry, Invocation, invoke};
use utter_runtime::{Finished, ImageProcess, Job, Limits, Outcome, Runtime, Sandbox, Stdio};

use crate::{data_dir, image};

/// Limits shared by `utter run` and `utter dapp run`.
#[derive(Args, Debug)]
pub struct LimitArgs {
    /// Memory limit, e.g. 256M or 1G (includes the 16 MiB /tmp)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    memory: u64,
    /// Most processes and threads at once
    #[arg(long, value_name = "N", default_value_t = 64)]
    pids: u64,
    /// CPU time, in cores (0.5 = half of one core)
    #[arg(long, value_name = "CORES", default_value_t = 1.0)]
    cpus: f64,
    /// Wall-clock limit, e.g. 30s, 500ms, 2m; then the container is killed
    /// [default: none for `run`, 30s for `dapp run`]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Most bytes of stdout and stderr kept when output is captured
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    output: u64,
}

impl LimitArgs {
    fn limits(&self, default_timeout: Duration) -> Result<Limits> {
        if !(self.cpus > 0.0 && self.cpus <= 1024.0) {
            bail!(
                "--cpus {} is out of range: give a number of cores above 0, e.g. 0.5",
                self.cpus
            );
        }
        if self.memory < 4 << 20 {
            bail!("--memory must be at least 4M: a container needs some memory to start");
        }
        if self.pids == 0 {
            bail!("--pids must be at least 1");
        }
        Ok(Limits {
            memory: self.memory,
            pids: self.pids,
            cpus: self.cpus,
            timeout: self.timeout.unwrap_or(default_timeout),
            output: self.output,
            ..Limits::default()
        })
    }
}

/// Arguments of `utter run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The image: a tag, sha256:… digest, or unique digest prefix
    image: String,
    /// The command to run instead of the image's entrypoint and cmd
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Capture stdout and stderr and print one JSON object (outcome,
    /// output, time) instead of attaching the terminal
    #[arg(long)]
    json: bool,
}

/// `utter dapp …`
#[derive(Subcommand, Debug)]
pub enum DappCommand {
    /// Run a dapp once on a state directory and a file of transactions,
    /// outside any chain: prints the results and, when the dapp succeeds,
    /// writes the new state into the directory
    Run(DappRunArgs),
}

/// Which entry point `utter dapp run` runs.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum EntryArg {
    Apply,
    Test,
}

/// Arguments of `utter dapp run`.
#[derive(Args, Debug)]
pub struct DappRunArgs {
    /// The dapp's image: a tag, sha256:… digest, or unique digest prefix
    image: String,
    /// The dapp's state directory: read as the state before, written with
    /// the state after (only when the dapp exits 0)
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Transactions, one JSON line each (as in a block's txs.jsonl)
    #[arg(long, value_name = "FILE")]
    txs: Option<PathBuf>,
    /// context.json to give the dapp [default: chain "local", height 1,
    /// time now, dapp named after IMAGE]
    #[arg(long, value_name = "FILE")]
    context: Option<PathBuf>,
    /// Entry point to run
    #[arg(long, value_enum, default_value = "apply")]
    entry: EntryArg,
    /// Run, print, but leave the state directory as it was
    #[arg(long)]
    dry_run: bool,
    /// Most bytes the dapp may write (state changes and results)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    scratch: u64,
    #[command(flatten)]
    limits: LimitArgs,
    /// Print one JSON object: outcome, results, changed paths, output
    #[arg(long)]
    json: bool,
}

/// The most transaction bytes `dapp run` reads.
const MAX_TXS: u64 = 256 << 20;

fn open_runtime(data_dir: &Path) -> Result<Runtime> {
    utter_runtime::runtime_base(&data_dir::runtime_base())
        .context("cannot set up the container runtime")?;
    Runtime::open(data_dir::runtime(data_dir)).context("cannot set up the container runtime")
}

/// The image's config and its unpacked rootfs, read from the catalog
/// without opening the chunk store. On an image's first run its rootfs is
/// unpacked from the chunk store and then this process re-executes itself:
/// libcontainer's child processes run the process's exit handlers, and
/// RocksDB's handler joins threads that do not exist in a child, so
/// containers are only ever created by a process that never opened
/// RocksDB.
fn image_rootfs(data_dir: &Path, reference: &str, quiet: bool) -> Result<(ImageProcess, PathBuf)> {
    let catalog = Catalog::open(data_dir::images(data_dir));
    let img = match catalog.get(reference) {
        Ok(img) => img,
        // Let the full store give its usual message (no data dir, unknown ref).
        Err(_) => image::open(data_dir, false)?.get(reference)?,
    };
    let rootfs = catalog.rootfs_path(&img.id);
    if !rootfs.is_dir() {
        if std::env::var_os(REEXEC_MARK).is_some() {
            bail!(
                "the rootfs of {reference} vanished while utter was starting; run the command again"
            );
        }
        if !quiet {
            eprintln!("unpacking {reference} into the rootfs cache (first run only)");
        }
        let images = image::open(data_dir, false)?;
        images
            .rootfs(&img)
            .with_context(|| format!("cannot unpack {reference}"))?;
        drop(images);
        let err = std::process::Command::new("/proc/self/exe")
            .args(std::env::args_os().skip(1))
            .env(REEXEC_MARK, "1")
            .exec();
        bail!("cannot re-execute utter after unpacking: {err}");
    }
    let process = ImageProcess::from_config(&catalog.config(&img)?);
    Ok((process, rootfs))
}

/// Set in the environment of the re-executed process.
const REEXEC_MARK: &str = "UTTER_REEXEC_AFTER_UNPACK";

fn finished_json(f: &Finished) -> serde_json::Value {
    json!({
        "outcome": f.outcome.kind(),
        "exit_code": f.outcome.exit_code(),
        "message": f.outcome.to_string(),
        "elapsed_ms": f.elapsed.as_secs_f64() * 1000.0,
        "stdout": String::from_utf8_lossy(&f.stdout),
        "stderr": String::from_utf8_lossy(&f.stderr),
    })
}

fn exit_code(outcome: &Outcome) -> u8 {
    outcome.exit_code().clamp(0, 255) as u8
}

/// `utter run`.
pub fn run(data_dir: &Path, args: RunArgs) -> Result<u8> {
    let runtime = open_runtime(data_dir)?;
    let (process, rootfs) = image_rootfs(data_dir, &args.image, args.json)?;
    let command = if args.command.is_empty() {
        process.default_args.clone()
    } else {
        args.command.clone()
    };
    if command.is_empty() {
        bail!(
            "{} has no entrypoint or cmd: give the command after --, e.g. `utter run {} -- /bin/sh`",
            args.image,
            args.image
        );
    }
    let job = Job {
        rootfs,
        args: command,
        env: process.env,
        cwd: process.cwd,
        hostname: "utter".into(),
        mounts: Vec::new(),
        limits: args
            .limits
            .limits(Duration::from_secs(100 * 365 * 24 * 3600))?,
    };
    let stdio = if args.json {
        Stdio::Capture
    } else {
        Stdio::Inherit
    };
    let finished = runtime.run(&job, stdio)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&finished_json(&finished))?
        );
    } else if !matches!(finished.outcome, Outcome::Exited(_)) {
        eprintln!("utter: the container {}", finished.outcome);
    }
    Ok(exit_code(&finished.outcome))
}

/// `utter dapp …`.
pub fn dapp(data_dir: &Path, cmd: DappCommand) -> Result<u8> {
    match cmd {
        DappCommand::Run(args) => dapp_run(data_dir, args),
    }
}

fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if meta.len() > max {
        bail!(
            "{what} {} is {} bytes; the most is {max}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn dapp_run(data_dir: &Path, args: DappRunArgs) -> Result<u8> {
    let entry = match args.entry {
        EntryArg::Apply => Entry::Apply,
        EntryArg::Test => Entry::Test,
    };
    let txs = match &args.txs {
        Some(path) => read_limited(path, MAX_TXS, "transactions file")?,
        None if entry == Entry::Apply => {
            bail!("apply needs transactions: give --txs FILE (one JSON line each), or --entry test")
        }
        None => Vec::new(),
    };
    for (n, line) in txs.split(|b| *b == b'\n').enumerate() {
        if !line.is_empty() && serde_json::from_slice::<serde_json::Value>(line).is_err() {
            bail!(
                "line {} of {} is not JSON: each line must be one transaction",
                n + 1,
                args.txs.as_deref().unwrap_or(Path::new("-")).display()
            );
        }
    }
    let mut context = match &args.context {
        Some(path) => serde_json::from_slice::<Context>(&read_limited(path, 1 << 20, "context")?)
            .with_context(|| {
                format!(
                    "{} is not a dapp context: it needs chain, dapp, entry, height, time, parent and proposer",
                    path.display()
                )
            })?,
        None => Context {
            chain: "local".into(),
            dapp: args.image.clone(),
            entry,
            height: 1,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            parent: String::new(),
            proposer: String::new(),
        },
    };
    context.entry = entry;
    let state = args.state.canonicalize().with_context(|| {
        format!(
            "state directory {} does not exist: create it (an empty directory is a new dapp's state)",
            args.state.display()
        )
    })?;
    let runtime = open_runtime(data_dir)?;
    let (process, rootfs) = image_rootfs(data_dir, &args.image, args.json)?;
    if process.command.is_empty() {
        bail!(
            "{} has no entrypoint: a dapp image needs one (utter image build --entrypoint)",
            args.image
        );
    }
    let invocation = Invocation {
        rootfs,
        command: process.command,
        env: process.env,
        cwd: process.cwd,
        state: state.clone(),
        chain: None,
        context,
        txs,
        limits: args.limits.limits(Limits::default().timeout)?,
        scratch: args.scratch,
    };
    let run = invoke(&runtime, &invocation)?;
    let ok = run.finished.outcome.success();
    if ok && !args.dry_run {
        run.apply_to(&state)
            .with_context(|| format!("cannot write the new state into {}", state.display()))?;
    }
    if args.json {
        let results: Vec<serde_json::Value> = String::from_utf8_lossy(&run.results)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"unparsed": l})))
            .collect();
        let changes: Vec<serde_json::Value> = run
            .changes
            .iter()
            .map(|c| {
                let (kind, extra) = match &c.kind {
                    ChangeKind::File { executable } => ("file", json!({"executable": executable})),
                    ChangeKind::Symlink { target } => ("symlink", json!({"target": target})),
                    ChangeKind::Dir { opaque } => ("dir", json!({"opaque": opaque})),
                    ChangeKind::Removed => ("removed", json!({})),
                };
                let mut v = json!({"path": c.path, "kind": kind});
                if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                    v.extend(extra.clone());
                }
                v
            })
            .collect();
        let mut v = finished_json(&run.finished);
        v["results"] = json!(results);
        v["changes"] = json!(changes);
        v["state_written"] = json!(ok && !args.dry_run);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        err.write_all(&run.finished.stdout)?;
        err.write_all(&run.finished.stderr)?;
        std::io::stdout().write_all(&run.results)?;
        let written = if entry == Entry::Test {
            if ok { "test passed" } else { "test failed" }
        } else if !ok {
            "state left as it was"
        } else if args.dry_run {
            "state left as it was (--dry-run)"
        } else {
            "state written"
        };
        eprintln!(
            "{} {}: {} in {:.1} ms; {} changed paths; {written}",
            args.image,
            entry.as_str(),
            run.finished.outcome,
            run.finished.elapsed.as_secs_f64() * 1000.0,
            run.changes.len()
        );
    }
    Ok(if ok {
        0
    } else {
        run.finished.outcome.exit_code().clamp(1, 255) as u8
    })
}

/// `256M`, `1G`, `64k`, `1048576` → bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size: write e.g. 256M, 1G or 65536"))?;
    let shift = match unit
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("`{s}` has an unknown unit: use k, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `30s`, `500ms`, `2m`, `1h`, `10` (seconds) → a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 30s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}` has an unknown unit: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}

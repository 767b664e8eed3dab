//! `utter-bench runtime`: container start→exit→cleanup against `runc run`
//! of the same rootfs, and the cost of a 1,000-transaction block for the
//! counter dapp against an empty container run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use utter_images::Catalog;
use utter_runtime::dapp::{Context, Entry, Invocation, invoke};
use utter_runtime::{ImageProcess, Job, Limits, Outcome, Runtime, Sandbox, Stdio};

use crate::{installed, timed, utter_bin};

/// Options of the runtime benchmark.
pub struct Options {
    pub runs: usize,
    pub txs: usize,
    pub work: Option<PathBuf>,
}

/// The pause before each timed CLI run: longer than an RCU grace period,
/// so each run starts as a one-off command does, with the kernel's cgroup
/// migration lock cold.
const IDLE: Duration = Duration::from_millis(60);

/// How long this process takes to move into the cgroup it is already in,
/// the first time after idle: the RCU grace period the kernel waits for
/// the first cgroup migration, which every container start pays.
fn first_cgroup_move() -> Result<Duration> {
    let procs = utter_runtime::own_cgroup_procs().context("no cgroup of this process found")?;
    let started = Instant::now();
    std::fs::write(&procs, "0").with_context(|| format!("cannot write {}", procs.display()))?;
    Ok(started.elapsed())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A busybox rootfs with every applet linked.
fn busybox_dir(dir: &Path) -> Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("busybox-static is not installed (./x bench installs it)")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    Ok(())
}

/// Builds the counter dapp statically and tags its image `counter`.
pub(crate) fn counter_image(bin: &Path, data: &Path) -> Result<()> {
    let counter = utter_testkit::static_binary("utter-counter", "counter");
    utter(
        bin,
        data,
        &[
            "image",
            "build",
            "--binary",
            &counter.display().to_string(),
            "--tag",
            "counter",
        ],
    )?;
    Ok(())
}

/// `utter --data-dir DATA ARGS…`, its stdout; fails with its stderr.
pub(crate) fn utter(bin: &Path, data: &Path, args: &[&str]) -> Result<String> {
    Ok(timed(Command::new(bin).arg("--data-dir").arg(data).args(args))?.1)
}

pub fn run(opts: Options) -> Result<()> {
    if !installed("runc") {
        bail!("runc is not installed (./x bench installs it)");
    }
    let bin = utter_bin()?;
    let tmp = tempfile::tempdir()?;
    let work = crate::work_dir(opts.work.clone(), tmp.path())?;
    let data = work.join("data");
    let tree = work.join("busybox");
    busybox_dir(&tree)?;
    let tree_arg = tree.display().to_string();
    utter(
        &bin,
        &data,
        &[
            "image",
            "build",
            &tree_arg,
            "--entrypoint",
            "/bin/sh",
            "--tag",
            "bb",
        ],
    )?;
    counter_image(&bin, &data)?;
    // First runs unpack the rootfs caches.
    utter(&bin, &data, &["run", "bb", "--", "/bin/true"])?;
    let empty_state = work.join("state");
    std::fs::create_dir_all(&empty_state)?;
    let txs_file = work.join("txs.jsonl");
    std::fs::write(&txs_file, "")?;
    utter(
        &bin,
        &data,
        &[
            "dapp",
            "run",
            "counter",
            "--state",
            &empty_state.display().to_string(),
            "--txs",
            &txs_file.display().to_string(),
            "--dry-run",
        ],
    )?;

    let catalog = Catalog::open(data.join("images"));
    let bb = catalog.get("bb")?;
    let rootfs = catalog.rootfs_path(&bb.id);
    let counter_image = catalog.get("counter")?;
    let counter_rootfs = catalog.rootfs_path(&counter_image.id);
    let counter_process = ImageProcess::from_config(&catalog.config(&counter_image)?);

    // runc's bundle: its default spec, the same rootfs, read-only, /bin/true.
    let bundle = work.join("runc-bundle");
    std::fs::create_dir_all(&bundle)?;
    let status = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()?;
    if !status.success() {
        bail!("runc spec failed");
    }
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

    let runs = opts.runs.max(3);
    println!("# utter-bench runtime: {runs} runs each, median; busybox rootfs, /bin/true");
    println!("# utter applies memory/pids/CPU limits, a seccomp filter and no capabilities;");
    println!("# runc runs its default spec (no limits, no seccomp), state in /run/runc.");
    println!("# Each CLI run starts after {IDLE:?} idle, as a one-off command would.");
    let mut runc = Vec::new();
    let mut cli = Vec::new();
    let mut grace = Vec::new();
    for n in 0..runs {
        // Interleaved, so both see the same machine.
        std::thread::sleep(IDLE);
        grace.push(first_cgroup_move()?);
        std::thread::sleep(IDLE);
        let started = Instant::now();
        let out = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("bench-{n}"))
            .stdin(std::process::Stdio::null())
            .output()?;
        runc.push(started.elapsed());
        if !out.status.success() {
            bail!("runc run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(IDLE);
        let started = Instant::now();
        utter(&bin, &data, &["run", "bb", "--", "/bin/true"])?;
        cli.push(started.elapsed());
    }
    let runtime = Runtime::open(work.join("rt"))?;
    let job = Job {
        rootfs: rootfs.clone(),
        args: vec!["/bin/true".into()],
        env: vec![utter_runtime::spec::DEFAULT_PATH.into()],
        cwd: "/".into(),
        hostname: "bench".into(),
        mounts: Vec::new(),
        limits: Limits::default(),
    };
    let mut in_process = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let f = runtime.run(&job, Stdio::Capture)?;
        in_process.push(started.elapsed());
        if f.outcome != Outcome::Exited(0) {
            bail!("/bin/true: {}", f.outcome);
        }
    }
    let (runc_ms, cli_ms, inproc_ms) = (median(runc), median(cli), median(in_process));
    let grace_ms = median(grace);
    println!();
    println!("## start → exit → cleanup          median ms   vs runc");
    println!("runc run (whole CLI)              {:>9.1}", ms(runc_ms));
    println!(
        "utter run (whole CLI)             {:>9.1}   {:.2}x   (target <= 0.7x)",
        ms(cli_ms),
        ms(cli_ms) / ms(runc_ms)
    );
    println!(
        "  of which the kernel's wait     {:>9.1}           (first cgroup move after idle, paid by both)",
        ms(grace_ms)
    );
    println!(
        "  the rest                       {:>9.1} vs {:.1}   {:.2}x",
        ms(cli_ms) - ms(grace_ms),
        ms(runc_ms) - ms(grace_ms),
        (ms(cli_ms) - ms(grace_ms)) / (ms(runc_ms) - ms(grace_ms))
    );
    println!(
        "utter-runtime in-process          {:>9.1}   {:.2}x   (target <= 0.5x)",
        ms(inproc_ms),
        ms(inproc_ms) / ms(runc_ms)
    );

    let mut txs = String::new();
    for i in 0..opts.txs {
        txs.push_str(&format!(
            r#"{{"sig":"-","tx":{{"action":"add","args":{{"by":{},"name":"c{}"}},"chain":"bench","dapp":"counter","nonce":{i},"signer":"ssh-ed25519 AAAAbench","time":1,"v":1}}}}"#,
            i % 7 + 1,
            i % 10
        ));
        txs.push('\n');
    }
    let invocation = |txs: &str| Invocation {
        rootfs: counter_rootfs.clone(),
        command: counter_process.command.clone(),
        env: counter_process.env.clone(),
        cwd: counter_process.cwd.clone(),
        state: empty_state.clone(),
        chain: None,
        context: Context {
            chain: "bench".into(),
            dapp: "counter".into(),
            entry: Entry::Apply,
            height: 1,
            time: 0,
            parent: String::new(),
            proposer: String::new(),
        },
        txs: txs.as_bytes().to_vec(),
        limits: Limits::default(),
        scratch: 64 << 20,
        changed: None,
    };
    let mut empty_block = Vec::new();
    let mut full_block = Vec::new();
    for _ in 0..runs {
        for (txs, samples) in [("", &mut empty_block), (txs.as_str(), &mut full_block)] {
            let started = Instant::now();
            let run = invoke(&runtime, &invocation(txs))?;
            samples.push(started.elapsed());
            if !run.finished.outcome.success() {
                bail!(
                    "counter: {}: {}",
                    run.finished.outcome,
                    String::from_utf8_lossy(&run.finished.stderr)
                );
            }
            let lines = run.results.iter().filter(|b| **b == b'\n').count();
            if lines != txs.lines().count() {
                bail!(
                    "counter wrote {lines} results for {} transactions",
                    txs.lines().count()
                );
            }
        }
    }
    let (empty_ms, full_ms) = (median(empty_block), median(full_block));
    println!();
    println!("## counter dapp apply (in-process)    median ms   vs empty container run");
    println!("empty container run (/bin/true)   {:>9.1}", ms(inproc_ms));
    println!(
        "counter apply, empty block        {:>9.1}   {:.2}x",
        ms(empty_ms),
        ms(empty_ms) / ms(inproc_ms)
    );
    println!(
        "counter apply, {:>5} txs          {:>9.1}   {:.2}x   (target <= 2x)",
        opts.txs,
        ms(full_ms),
        ms(full_ms) / ms(inproc_ms)
    );
    Ok(())
}

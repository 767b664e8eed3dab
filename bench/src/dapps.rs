//! What a dapp author waits for. Deploy to first use: a project whose image
//! is `size` MiB (busybox sh plus incompressible bytes) deployed by
//! `utter dapp deploy` on a running node, then its first transaction
//! committed; and a second node, following over QUIC, which must fetch the
//! image before it has the block. Printed beside importing the same image
//! archive into a fresh store (`utter image import`), the floor of what a
//! deploy must do. Then one block of `txs` transactions through the Python
//! template's dapp beside the Rust counter's (`utter block propose`), so
//! authors know what a language costs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::node::Node;
use crate::runtime::{counter_image, utter};
use crate::{timed, utter_bin, write_noise};

/// Options of `utter-bench dapps`.
pub struct Options {
    /// The deployed image's size, MiB.
    pub size_mib: u64,
    /// Transactions in the language block.
    pub txs: usize,
    /// Blocks per language (the median is printed).
    pub runs: usize,
    pub work: Option<PathBuf>,
}

/// `utter node run --p2p` on loopback; waits until it serves. Its stderr
/// goes to `data/node.log`.
pub(crate) fn start(bin: &Path, data: &Path, extra: &[&str]) -> Result<Node> {
    let log = std::fs::File::create(data.join("node.log"))?;
    for f in ["node.addr", "node.p2p"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let node = Node(
        Command::new(bin)
            .arg("--data-dir")
            .arg(data)
            .args(["node", "run", "--listen", "127.0.0.1:0"])
            .args(["--p2p", "127.0.0.1:0", "--sync-ms", "100"])
            .args(if extra.contains(&"--block-ms") {
                &[][..]
            } else {
                &["--block-ms", "20"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let started = Instant::now();
    while !data.join("node.p2p").exists() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the node on {} did not start", data.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(node)
}

fn git_main(data: &Path) -> String {
    Command::new("git")
        .arg("--git-dir")
        .arg(data.join("ledger.git"))
        .args(["rev-parse", "-q", "--verify", "refs/heads/main"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(opts: Options) -> Result<()> {
    let bin = utter_bin()?;
    let tmp = tempfile::tempdir()?;
    let work = crate::work_dir(opts.work.clone(), tmp.path())?;
    for d in [
        "a",
        "b",
        "floor",
        "lang-rust",
        "lang-python",
        "big",
        "hello-python",
    ] {
        let _ = std::fs::remove_dir_all(work.join(d));
    }
    deploy(&bin, &work, opts.size_mib)?;
    languages(&bin, &work, opts.txs, opts.runs)
}

fn deploy(bin: &Path, work: &Path, size_mib: u64) -> Result<()> {
    // The project: the sh template, its rootfs made once with the noise in.
    let project = work.join("big");
    timed(
        Command::new(bin)
            .args(["dapp", "new", "big", "--lang", "sh", "--dir"])
            .arg(&project),
    )?;
    timed(Command::new("sh").arg("build.sh").current_dir(&project))?;
    write_noise(&project.join("rootfs/noise"), size_mib << 20)?;
    let toml = project.join("utter-dapp.toml");
    let text = std::fs::read_to_string(&toml)?;
    std::fs::write(
        &toml,
        text.replace("build = [\"sh\", \"build.sh\"]", "build = []"),
    )?;

    let (a, b) = (work.join("a"), work.join("b"));
    utter(bin, &a, &["init", "--chain", "bench"])?;
    let na = start(bin, &a, &[])?;
    let target = std::fs::read_to_string(a.join("node.p2p"))?
        .trim()
        .to_string();
    let addr = target.split_once('@').context("node.p2p")?.1.to_string();
    utter(bin, &b, &["clone", &target])?;
    let nb = start(bin, &b, &["--peer", &addr])?;

    let started = Instant::now();
    let project_arg = project.display().to_string();
    utter(bin, &a, &["dapp", "deploy", "big", &project_arg, "--json"])?;
    let deployed = started.elapsed().as_secs_f64();
    let out = utter(
        bin,
        &a,
        &[
            "tx",
            "submit",
            "big",
            "greet",
            "--args",
            r#"{"name":"Ada"}"#,
            "--wait",
            "--json",
        ],
    )?;
    let first_use = started.elapsed().as_secs_f64();
    let v: Value = serde_json::from_str(&out)?;
    if v[0]["result"]["status"] != "accepted" {
        bail!("the first use was not accepted: {v}");
    }
    let main = git_main(&a);
    while git_main(&b) != main {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the second node never reached main");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = started.elapsed().as_secs_f64();
    drop(nb);
    drop(na);
    // B holds the image and re-executes the blocks that used it.
    let verified = utter(bin, &b, &["verify", "--reexecute"])?;
    if !verified.contains("each gives exactly its state") {
        bail!("the second node does not re-execute: {verified}");
    }

    // The floor: the same image, as an archive, imported into a new store.
    let images: Value = serde_json::from_str(&utter(bin, &a, &["image", "ls", "--json"])?)?;
    let digest = images
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|i| i["size"].as_u64().unwrap_or(0) > size_mib << 20)
        })
        .and_then(|i| i["id"].as_str())
        .context("the deployed image is not in the store")?
        .to_string();
    let layout = work.join("floor/layout");
    utter(
        bin,
        &a,
        &[
            "image",
            "export",
            &digest,
            &format!("oci:{}", layout.display()),
        ],
    )?;
    let (import, _) = timed(
        Command::new(bin)
            .arg("--data-dir")
            .arg(work.join("floor/data"))
            .args(["image", "import", &format!("oci:{}", layout.display())]),
    )?;

    println!("## deploy to first use, {size_mib} MiB image        seconds   vs image import");
    println!("utter image import (local, no chain)      {import:>8.2}      1.00x");
    println!(
        "utter dapp deploy (build, upload, block)  {deployed:>8.2}   {:>7.2}x",
        deployed / import
    );
    println!(
        "  + first transaction committed          {first_use:>8.2}   {:>7.2}x",
        first_use / import
    );
    println!(
        "second node has it (image over QUIC)     {second:>8.2}   {:>7.2}x",
        second / import
    );
    Ok(())
}

/// The `(total ms, in dapps ms)` of each block of `n` transactions the
/// node's `--verbose` log has printed.
pub(crate) fn block_times(log: &Path, n: usize) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(log)?;
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.contains(&format!(": {n} transactions")) {
            continue;
        }
        // "… accepted (1234.5 ms, 123.4 in dapps)"
        let Some(figures) = line.rsplit_once('(').map(|(_, f)| f) else {
            continue;
        };
        let mut nums = figures
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<f64>().ok());
        if let (Some(total), Some(dapps)) = (nums.next(), nums.next()) {
            out.push((total, dapps));
        }
    }
    Ok(out)
}

/// Blocks of `txs` transactions to `dapp` on a node of its own; the
/// median (total ms, in dapps ms), after one block that warms the image's
/// rootfs up.
fn one_language(
    bin: &Path,
    data: &Path,
    work: &Path,
    (dapp, action): (&str, &str),
    txs: usize,
    runs: usize,
) -> Result<(f64, f64)> {
    let node = start(
        bin,
        data,
        &[
            "--block-txs",
            &txs.to_string(),
            "--block-ms",
            "60000",
            "--verbose",
        ],
    )?;
    let reqs = work.join(format!("{dapp}-requests.jsonl"));
    for run in 0..=runs {
        let requests: String = (0..txs)
            .map(|i| {
                format!(
                    "{}\n",
                    json!({"dapp": dapp, "action": action,
                           "args": {"name": format!("n{run}x{i}")}})
                )
            })
            .collect();
        std::fs::write(&reqs, requests)?;
        let reqs_arg = reqs.display().to_string();
        let out = utter(
            bin,
            data,
            &["tx", "submit", "--file", &reqs_arg, "--wait", "--json"],
        )?;
        let v: Value = serde_json::from_str(&out)?;
        let accepted = v.as_array().map_or(0, |a| {
            a.iter()
                .filter(|s| s["result"]["status"] == "accepted")
                .count()
        });
        if accepted != txs {
            bail!("{dapp}: {accepted} of {txs} accepted");
        }
    }
    drop(node);
    let times = block_times(&data.join("node.log"), txs)?;
    if times.len() != runs + 1 {
        bail!(
            "{dapp}: the node logged {} blocks of {txs}, not {}",
            times.len(),
            runs + 1
        );
    }
    let rest = &times[1..];
    Ok((
        median(rest.iter().map(|t| t.0).collect()),
        median(rest.iter().map(|t| t.1).collect()),
    ))
}

fn languages(bin: &Path, work: &Path, txs: usize, runs: usize) -> Result<()> {
    let rust = work.join("lang-rust");
    counter_image(bin, &rust)?;
    utter(
        bin,
        &rust,
        &["init", "--chain", "bench", "--dapp", "counter=counter"],
    )?;
    let python = work.join("hello-python");
    timed(
        Command::new(bin)
            .args(["dapp", "new", "hello", "--lang", "python", "--dir"])
            .arg(&python),
    )?;
    timed(Command::new("sh").arg("build.sh").current_dir(&python))?;
    let rootfs = python.join("rootfs").display().to_string();
    let py = work.join("lang-python");
    utter(
        bin,
        &py,
        &[
            "image",
            "build",
            &rootfs,
            "--entrypoint",
            r#"["/usr/bin/python3","-S","-B","/dapp/main.py"]"#,
            "--env",
            "PYTHONHASHSEED=0",
            "--tag",
            "hello-python",
        ],
    )?;
    utter(
        bin,
        &py,
        &["init", "--chain", "bench", "--dapp", "hello=hello-python"],
    )?;
    let (rust_total, rust_dapps) = one_language(bin, &rust, work, ("counter", "add"), txs, runs)?;
    let (py_total, py_dapps) = one_language(bin, &py, work, ("hello", "greet"), txs, runs)?;
    println!(
        "## one block of {txs} transactions on a running node (median of {runs})\n\
         {:<38} {:>9} {:>9} {:>12} {:>9}",
        "", "block ms", "vs Rust", "in dapps ms", "vs Rust"
    );
    println!(
        "{:<38} {rust_total:>9.1} {:>9} {rust_dapps:>12.1} {:>9}",
        "Rust counter (static binary)", "1.00x", "1.00x"
    );
    println!(
        "{:<38} {py_total:>9.1} {:>8.2}x {py_dapps:>12.1} {:>8.2}x",
        "Python template (greet, python3 -S)",
        py_total / rust_total,
        py_dapps / rust_dapps
    );
    println!("(the counter writes a state file per name, 1,000 per block; the greeter two files)");
    Ok(())
}

//! What `utter run` and `utter dapp run` share: the limits a container
//! runs under, finding an image's rootfs without opening the chunk store,
//! and reporting how a container ended.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::json;
use utter_images::Catalog;
use utter_node::{Home, Need};
use utter_runtime::{Finished, ImageProcess, Limits, Outcome, Runtime};

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
    pub fn limits(&self, default_timeout: Duration) -> Result<Limits> {
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

/// The data dir's container runtime (this process creates containers).
pub fn open_runtime(home: &Home) -> Result<Runtime> {
    Ok(home.runtime()?)
}

/// The image store, for a rootfs that must first be unpacked.
fn open_images(home: &Home) -> Result<utter_images::Images> {
    let store = home.store(Need::Images, false, false, None)?;
    Ok(home.images(&store)?)
}

/// The image's config and its unpacked rootfs, read from the catalog
/// without opening the chunk store. On an image's first run its rootfs is
/// unpacked from the chunk store and then this process re-executes itself:
/// libcontainer's child processes run the process's exit handlers, and
/// RocksDB's handler joins threads that do not exist in a child, so
/// containers are only ever created by a process that never opened
/// RocksDB.
pub fn image_rootfs(home: &Home, reference: &str, quiet: bool) -> Result<(ImageProcess, PathBuf)> {
    let catalog = Catalog::open(home.images_dir());
    let img = match catalog.get(reference) {
        Ok(img) => img,
        // Let the full store give its usual message (no data dir, unknown ref).
        Err(_) => open_images(home)?.get(reference)?,
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
        let images = open_images(home)?;
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

pub fn finished_json(f: &Finished) -> serde_json::Value {
    json!({
        "outcome": f.outcome.kind(),
        "exit_code": f.outcome.exit_code(),
        "message": f.outcome.to_string(),
        "elapsed_ms": f.elapsed.as_secs_f64() * 1000.0,
        "stdout": String::from_utf8_lossy(&f.stdout),
        "stderr": String::from_utf8_lossy(&f.stderr),
    })
}

pub fn exit_code(outcome: &Outcome) -> u8 {
    outcome.exit_code().clamp(0, 255) as u8
}

pub fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
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

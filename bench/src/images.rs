//! `utter-bench images`: image import, dedup of an update, and unpack,
//! each beside its peer from the same run on the same bytes.
//!
//! The images are Debian minbase root filesystems made by `debootstrap`
//! (v1, and v2 with a few packages more), packed by `umoci` as one gzip
//! layer each, exactly as a dapp author's tools would make them.
//! - import: `utter image import` of v1 into a fresh store, against
//!   `utter chunks put` of v1's uncompressed layer tar (the chunkstore's raw
//!   ingest of the same bytes, without decompression or digests);
//! - dedup: what importing v2 after v1 adds, against what `casync make`
//!   adds storing v2's layer tar after v1's in one store;
//! - unpack: `utter image unpack` of the stored image against `umoci unpack`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{best, dir_bytes, installed, mbps, timed, utter_bin};

/// What to run.
pub struct Options {
    /// Where debootstrap's trees are kept between runs.
    pub cache: PathBuf,
    /// Work directory (default: temporary).
    pub work: Option<PathBuf>,
    /// Runs per measurement (fastest kept).
    pub runs: usize,
    /// The Debian suite and mirror for debootstrap.
    pub suite: String,
    /// The mirror.
    pub mirror: String,
}

pub(crate) const EXTRA_PACKAGES: &str = "curl,jq,less,nano";

pub(crate) fn rootfs(opts: &Options, name: &str, include: Option<&str>) -> Result<PathBuf> {
    let dir = opts.cache.join(name);
    if dir.join("etc/os-release").exists() {
        return Ok(dir);
    }
    if !installed("debootstrap") && !Path::new("/usr/sbin/debootstrap").exists() {
        bail!("debootstrap is not installed (./x bench images installs it)");
    }
    std::fs::create_dir_all(&opts.cache)?;
    let tmp = opts.cache.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!(
        "debootstrap {} {name} (once; kept in {})…",
        opts.suite,
        opts.cache.display()
    );
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase");
    if let Some(pkgs) = include {
        cmd.arg(format!("--include={pkgs}"));
    }
    cmd.arg(&opts.suite).arg(&tmp).arg(&opts.mirror);
    timed(&mut cmd).context("debootstrap failed (it needs the Debian mirror)")?;
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Packs `tree` with umoci into `layout:tag` as one gzip layer; returns the
/// path of that layer's uncompressed tar.
pub(crate) fn umoci_image(work: &Path, tree: &Path, tag: &str) -> Result<PathBuf> {
    let layout = work.join("layout");
    if !layout.exists() {
        timed(
            Command::new("umoci")
                .args(["init", "--layout"])
                .arg(&layout),
        )?;
    }
    let image = format!("{}:{tag}", layout.display());
    timed(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = work.join(format!("bundle-{tag}"));
    timed(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    )?;
    timed(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", tree.display()))
            .arg(bundle.join("rootfs")),
    )?;
    timed(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    )?;
    std::fs::remove_dir_all(&bundle)?;
    // The layer blob, decompressed: the bytes every contender stores.
    let (_, manifest) = timed(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{image}")),
    )?;
    let m: serde_json::Value = serde_json::from_str(&manifest)?;
    let digest = m["layers"][0]["digest"]
        .as_str()
        .context("umoci's manifest has no layer")?
        .trim_start_matches("sha256:")
        .to_string();
    let tar = work.join(format!("{tag}.tar"));
    let blob = layout.join("blobs/sha256").join(&digest);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' > '{}'",
            blob.display(),
            tar.display()
        ))
        .status()?;
    if !status.success() {
        bail!("cannot decompress {}", blob.display());
    }
    Ok(tar)
}

fn utter_json(bin: &Path, data: &Path, args: &[&str]) -> Result<(f64, serde_json::Value)> {
    let (secs, out) = timed(Command::new(bin).arg("--data-dir").arg(data).args(args))?;
    let v = serde_json::from_str(out.trim())
        .with_context(|| format!("utter {args:?} output: {out}"))?;
    Ok((secs, v))
}

pub fn run(opts: Options) -> Result<()> {
    for tool in ["umoci", "skopeo", "casync"] {
        if !installed(tool) {
            bail!("{tool} is not installed (./x bench images installs it)");
        }
    }
    let bin = utter_bin()?;
    let v1_tree = rootfs(&opts, &format!("{}-minbase", opts.suite), None)?;
    let v2_tree = rootfs(
        &opts,
        &format!("{}-minbase-plus", opts.suite),
        Some(EXTRA_PACKAGES),
    )?;
    let tmp = tempfile::tempdir_in(opts.work.clone().unwrap_or_else(std::env::temp_dir))?;
    let work = tmp.path();
    eprintln!("packing both trees with umoci…");
    let v1_tar = umoci_image(work, &v1_tree, "v1")?;
    let v2_tar = umoci_image(work, &v2_tree, "v2")?;
    let layout = work.join("layout");
    let v1_bytes = std::fs::metadata(&v1_tar)?.len();
    let v2_bytes = std::fs::metadata(&v2_tar)?.len();
    // zstd layers too, converted by skopeo.
    timed(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--dest-compress-format",
                "zstd",
                "--dest-compress",
            ])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("oci:{}/zstd:v1", work.display())),
    )?;
    println!(
        "images: Debian {} minbase (v1, {:.1} MB layer tar) and v1 + {EXTRA_PACKAGES} (v2, {:.1} MB), one layer each, made by umoci",
        opts.suite,
        v1_bytes as f64 / 1e6,
        v2_bytes as f64 / 1e6
    );
    println!();

    // ---- import speed ----------------------------------------------------
    let fresh = |name: &str| -> PathBuf {
        let d = work.join(name);
        let _ = std::fs::remove_dir_all(&d);
        d
    };
    let (raw_secs, _) = best(opts.runs, || {
        let d = fresh("raw");
        utter_json(
            &bin,
            &d,
            &[
                "chunks",
                "put",
                "--json",
                v1_tar.to_str().unwrap_or_default(),
            ],
        )
    })?;
    let import = |source: String| {
        best(opts.runs, || {
            let d = fresh("imp");
            utter_json(&bin, &d, &["image", "import", "--json", &source])
        })
    };
    let (gz_secs, _) = import(format!("oci:{}:v1", layout.display()))?;
    let (zst_secs, _) = import(format!("oci:{}/zstd:v1", work.display()))?;
    println!(
        "import of v1 into an empty store (MB/s of uncompressed layer, best of {}):",
        opts.runs
    );
    println!(
        "{:<44} {:>8.1} MB/s",
        "utter chunks put v1.tar (raw ingest)",
        mbps(v1_bytes, raw_secs)
    );
    for (label, secs) in [
        ("utter image import (gzip layer)", gz_secs),
        ("utter image import (zstd layer)", zst_secs),
    ] {
        println!(
            "{label:<44} {:>8.1} MB/s  = {:.0}% of raw ingest (target >= 80%)",
            mbps(v1_bytes, secs),
            100.0 * raw_secs / secs
        );
    }
    println!();

    // ---- dedup of the update ---------------------------------------------
    let data = fresh("dedup");
    let (_, a) = utter_json(
        &bin,
        &data,
        &[
            "image",
            "import",
            "--json",
            &format!("oci:{}:v1", layout.display()),
        ],
    )?;
    let (_, b) = utter_json(
        &bin,
        &data,
        &[
            "image",
            "import",
            "--json",
            &format!("oci:{}:v2", layout.display()),
        ],
    )?;
    let utter_v1 = a["new_bytes"].as_u64().unwrap_or(0);
    let utter_v2 = b["new_bytes"].as_u64().unwrap_or(0);
    let store = work.join("casync-store");
    let _ = std::fs::remove_dir_all(&store);
    let casync = |tar: &Path, n: u32| {
        timed(
            Command::new("casync")
                .arg("make")
                .arg(format!("--store={}", store.display()))
                .arg(work.join(format!("v{n}.caibx")))
                .arg(tar),
        )
    };
    casync(&v1_tar, 1)?;
    let casync_v1 = dir_bytes(&store);
    casync(&v2_tar, 2)?;
    let casync_v2 = dir_bytes(&store) - casync_v1;
    println!("bytes stored: v1, then what v2 adds");
    println!("{:<44} {:>12} {:>12}", "", "v1", "v2 adds");
    println!(
        "{:<44} {:>12} {:>12}",
        "utter image import (chunk store growth)", utter_v1, utter_v2
    );
    println!(
        "{:<44} {:>12} {:>12}",
        "casync make, layer tars (store/)", casync_v1, casync_v2
    );
    println!(
        "utter adds {:.2}x what casync adds for v2 (target <= 1.1x); v2 adds {:.1}% of its layer to utter's store",
        utter_v2 as f64 / casync_v2.max(1) as f64,
        100.0 * utter_v2 as f64 / v2_bytes as f64
    );
    println!();

    // ---- unpack ------------------------------------------------------------
    let (ours, _) = best(opts.runs, || {
        let d = fresh("unpacked");
        timed(
            Command::new(&bin)
                .arg("--data-dir")
                .arg(&data)
                .args(["image", "unpack", "--json", "v1"])
                .arg(&d),
        )
    })?;
    let (theirs, _) = best(opts.runs, || {
        let d = fresh("umoci-bundle");
        timed(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:v1", layout.display()))
                .arg(&d),
        )
    })?;
    println!(
        "unpack of v1 ({:.1} MB, best of {}):",
        v1_bytes as f64 / 1e6,
        opts.runs
    );
    println!(
        "{:<44} {:>8.3} s {:>8.1} MB/s",
        "utter image unpack (from the chunk store)",
        ours,
        mbps(v1_bytes, ours)
    );
    println!(
        "{:<44} {:>8.3} s {:>8.1} MB/s",
        "umoci unpack (from the OCI layout)",
        theirs,
        mbps(v1_bytes, theirs)
    );
    println!(
        "utter unpacks {:.2}x as fast as umoci (target >= 1x)",
        theirs / ours
    );
    let _ = std::fs::remove_dir_all(work.join("unpacked"));
    let _ = std::fs::remove_dir_all(work.join("umoci-bundle"));
    Ok(())
}

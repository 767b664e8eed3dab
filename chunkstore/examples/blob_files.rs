//! Measures ingest with chunk bytes in RocksDB blob files (BlobDB, the
//! default) against chunk bytes inline in SST files, on the same data, in
//! one run:
//!
//! ```sh
//! cargo run -p utter-chunkstore --example blob_files -- 4
//! ```
//!
//! The argument is GiB of new (incompressible) data per layout, stored as
//! 256 MiB blobs so compaction has time to matter. Prints throughput and the
//! bytes RocksDB wrote to disk (write amplification) for each layout.

use std::time::Instant;

use utter_chunkstore::{OpenOptions, Store};
use utter_testkit::noise;

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Bytes written by this process so far, from /proc/self/io.
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("write_bytes:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gib: u64 = std::env::args().nth(1).map_or(Ok(2), |a| a.parse())?;
    let blobs = (gib * 4) as usize;
    println!("# {gib} GiB of new data as {blobs} blobs of 256 MiB, per layout");
    println!(
        "{:<22} {:>10} {:>16} {:>14}",
        "layout", "MB/s", "disk written", "db size"
    );
    for (name, blob_files) in [
        ("blob files (BlobDB)", true),
        ("inline in SST files", false),
    ] {
        let dir = tempfile::tempdir()?;
        let store = Store::open(
            dir.path().join("db"),
            &OpenOptions {
                create: true,
                blob_files,
                ..Default::default()
            },
        )?;
        let before = written();
        let mut secs = 0.0;
        for i in 0..blobs {
            let data = noise(256 << 20, i as u64 + 1);
            let t = Instant::now();
            store.put(&data[..])?;
            secs += t.elapsed().as_secs_f64();
        }
        drop(store);
        let wrote = written() - before;
        let total = (blobs as u64) << 28;
        println!(
            "{:<22} {:>10.0} {:>13.2} GB {:>11.2} GB",
            name,
            total as f64 / 1e6 / secs,
            wrote as f64 / 1e9,
            dir_bytes(&dir.path().join("db")) as f64 / 1e9
        );
    }
    Ok(())
}

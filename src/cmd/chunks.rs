//! `utter chunks …`: the chunk store from the command line.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use utter_chunkstore::{Chunking, ManifestId, PutOptions, Store};

use utter_node::{Home, Need};

use crate::ui::{Progress, human};

#[derive(Subcommand)]
pub enum Command {
    /// Store files (or `-` for stdin) and print each one's manifest id
    ///
    /// The data directory is created if needed. Each stored file is pinned,
    /// so `utter chunks gc` keeps it until you `unpin` it.
    Put {
        /// Files to store; `-` reads standard input
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// One JSON object per file: manifest, size, chunks, new_chunks, new_bytes
        #[arg(long)]
        json: bool,
        /// Do not pin (the next `gc` may remove what was stored)
        #[arg(long)]
        no_pin: bool,
        /// Chunk sizes MIN/AVG/MAX for a new store (default 16K/64K/256K);
        /// an existing store keeps the sizes it was created with
        #[arg(long, value_name = "MIN/AVG/MAX")]
        chunking: Option<Chunking>,
    },
    /// Write a stored blob to a file or stdout, verifying every chunk
    Get {
        /// The manifest id `put` printed
        manifest: ManifestId,
        /// Output file (written whole or not at all); stdout if omitted
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show what the store holds
    Stats {
        /// Print JSON: chunks, logical_bytes, stored_bytes, …
        #[arg(long)]
        json: bool,
    },
    /// Re-read every chunk and manifest and check each against its id
    ///
    /// Exits 0 only if everything verifies; otherwise lists the bad ids.
    Verify {
        /// Print a JSON report
        #[arg(long)]
        json: bool,
    },
    /// Remove manifests that are not pinned and chunks no manifest uses
    Gc {
        /// Print a JSON report
        #[arg(long)]
        json: bool,
    },
    /// Pin a manifest so gc keeps it (pins count; it need not be stored yet)
    Pin {
        /// Manifest id
        manifest: ManifestId,
    },
    /// Remove one pin from a manifest
    Unpin {
        /// Manifest id
        manifest: ManifestId,
    },
    /// List pinned manifests with their pin counts
    Pins {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Put {
            files,
            json,
            no_pin,
            chunking,
        } => put(home, &files, json, !no_pin, chunking),
        Command::Get { manifest, output } => get(home, &manifest, output.as_deref()),
        Command::Stats { json } => stats(home, json),
        Command::Verify { json } => verify(home, json),
        Command::Gc { json } => gc(home, json),
        Command::Pin { manifest } => {
            let n = open(home, false, None)?.pin(&manifest)?;
            println!("{manifest} pinned {n}x");
            Ok(ExitCode::SUCCESS)
        }
        Command::Unpin { manifest } => {
            let n = open(home, false, None)?.unpin(&manifest)?;
            println!("{manifest} pinned {n}x");
            Ok(ExitCode::SUCCESS)
        }
        Command::Pins { json } => {
            let pins = open(home, false, None)?.pins()?;
            for (id, n) in pins {
                if json {
                    println!("{}", json!({"manifest": id.to_string(), "pins": n}));
                } else {
                    println!("{id} {n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open(home: &Home, create: bool, chunking: Option<Chunking>) -> Result<Store> {
    Ok(home.store(Need::Chunks, create, false, chunking)?)
}

fn put(
    home: &Home,
    files: &[PathBuf],
    json: bool,
    pin: bool,
    chunking: Option<Chunking>,
) -> Result<ExitCode> {
    // Check every input before storing any, so a typo does not leave half
    // the files stored.
    let mut inputs = Vec::with_capacity(files.len());
    for path in files {
        if path.as_os_str() == "-" {
            inputs.push((path, None, None));
            continue;
        }
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if meta.is_dir() {
            bail!(
                "{} is a directory; `chunks put` stores files (tar a directory first)",
                path.display()
            );
        }
        inputs.push((
            path,
            Some(meta.len()).filter(|_| meta.is_file()),
            Some(file),
        ));
    }
    let store = open(home, true, chunking)?;
    let mut stdout = io::stdout().lock();
    for (path, size, file) in inputs {
        let name = path.display().to_string();
        let mut bar = Progress::bytes(&name, size, json);
        let options = PutOptions { pin };
        let put = match file {
            Some(f) => store.put_observed(f, options, |n| bar.set(n)),
            None => store.put_observed(io::stdin().lock(), options, |n| bar.set(n)),
        }
        .with_context(|| format!("cannot store {name}"))?;
        bar.finish();
        if json {
            let obj = json!({
                "file": name,
                "manifest": put.id.to_string(),
                "size": put.manifest.size(),
                "chunks": put.manifest.entries().len(),
                "new_chunks": put.new_chunks,
                "new_bytes": put.new_bytes,
            });
            writeln!(stdout, "{obj}")?;
        } else {
            writeln!(stdout, "{}", put.id)?;
            eprintln!(
                "{name}: {} in {} chunks, {} new ({} stored)",
                human(put.manifest.size()),
                put.manifest.entries().len(),
                put.new_chunks,
                human(put.new_bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get(home: &Home, id: &ManifestId, output: Option<&Path>) -> Result<ExitCode> {
    let store = open(home, false, None)?;
    let mut reader = store.get(id)?;
    let mut bar = Progress::bytes(&id.to_string()[..12], Some(reader.size()), output.is_none());
    match output {
        None => {
            let mut out = io::stdout().lock();
            reader
                .copy_to(&mut out)
                .with_context(|| format!("cannot read {id}"))?;
            out.flush()?;
        }
        Some(path) => {
            // Write beside the target and rename: a damaged chunk leaves no
            // half-written file behind.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot create a file in {}", dir.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, tmp);
            let mut done = 0u64;
            while let Some(chunk) = reader
                .next_chunk()
                .with_context(|| format!("cannot read {id}"))?
            {
                out.write_all(&chunk)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                done += chunk.len() as u64;
                bar.set(done);
            }
            let tmp = out.into_inner().map_err(|e| e.into_error())?;
            tmp.persist(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    bar.finish();
    Ok(ExitCode::SUCCESS)
}

fn stats(home: &Home, json: bool) -> Result<ExitCode> {
    let store = open(home, false, None)?;
    let s = store.stats();
    if json {
        println!(
            "{}",
            json!({
                "chunks": s.chunks,
                "chunk_bytes": s.chunk_bytes,
                "manifests": s.manifests,
                "logical_bytes": s.logical_bytes,
                "stored_bytes": s.stored_bytes,
                "chunking": store.chunking().to_string(),
            })
        );
    } else {
        let ratio = if s.stored_bytes > 0 {
            s.logical_bytes as f64 / s.stored_bytes as f64
        } else {
            1.0
        };
        println!("manifests      {}", s.manifests);
        println!(
            "logical bytes  {} ({})",
            s.logical_bytes,
            human(s.logical_bytes)
        );
        println!(
            "chunks         {} ({} unique plain)",
            s.chunks,
            human(s.chunk_bytes)
        );
        println!(
            "stored bytes   {} ({})",
            s.stored_bytes,
            human(s.stored_bytes)
        );
        println!("saving         {ratio:.2}x");
        println!("chunking       {}", store.chunking());
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(home: &Home, json: bool) -> Result<ExitCode> {
    let store = open(home, false, None)?;
    let mut bar = Progress::items("verify", 0, json);
    let report = store.verify(|done, total| {
        bar.set_total(total);
        bar.set(done);
    })?;
    bar.finish();
    if json {
        let list = |v: &[(String, String)]| {
            v.iter()
                .map(|(id, why)| json!({"id": id, "problem": why}))
                .collect::<Vec<_>>()
        };
        let chunks: Vec<_> = report
            .bad_chunks
            .iter()
            .map(|(i, w)| (i.to_string(), w.clone()))
            .collect();
        let manifests: Vec<_> = report
            .bad_manifests
            .iter()
            .map(|(i, w)| (i.to_string(), w.clone()))
            .collect();
        println!(
            "{}",
            json!({
                "ok": report.is_ok(),
                "chunks_checked": report.chunks_checked,
                "manifests_checked": report.manifests_checked,
                "bad_chunks": list(&chunks),
                "bad_manifests": list(&manifests),
            })
        );
    } else {
        for (id, why) in &report.bad_chunks {
            println!("bad chunk {id}: {why}");
        }
        for (id, why) in &report.bad_manifests {
            println!("bad manifest {id}: {why}");
        }
        eprintln!(
            "checked {} chunks and {} manifests: {}",
            report.chunks_checked,
            report.manifests_checked,
            if report.is_ok() {
                "all verify".to_string()
            } else {
                format!(
                    "{} bad chunks, {} bad manifests",
                    report.bad_chunks.len(),
                    report.bad_manifests.len()
                )
            }
        );
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn gc(home: &Home, json: bool) -> Result<ExitCode> {
    let store = open(home, false, None)?;
    let r = store.gc(&[])?;
    if json {
        println!(
            "{}",
            json!({"manifests": r.manifests, "chunks": r.chunks, "bytes": r.bytes})
        );
    } else {
        println!(
            "removed {} manifests and {} chunks ({})",
            r.manifests,
            r.chunks,
            human(r.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `utter image …`: OCI images from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use utter_images::{BuildInput, BuildOptions, Image, Images, ImportOptions, Source, UnpackOptions};

use utter_node::{Home, Need};

use crate::ui::{Progress, human};

#[derive(Subcommand)]
pub enum Command {
    /// Import an image from an OCI layout, an OCI archive or a docker archive
    ///
    /// SOURCE is spelled as skopeo spells it: oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]. Layers may
    /// be plain, gzip or zstd tars. Every digest is checked; a mismatch
    /// stores nothing. Layers are kept uncompressed and chunked, so an
    /// updated image adds only the chunks that changed.
    Import(ImportArgs),
    /// Build a reproducible one-layer image from a directory or a binary
    ///
    /// Entries are sorted, owners are 0:0 and times 0: the same input and
    /// options give the same digest anywhere.
    Build(BuildArgs),
    /// Write an image to an OCI layout (oci:DIR[:TAG]) that skopeo and umoci read
    Export {
        /// Tag, digest or digest prefix
        image: String,
        /// oci:DIR[:TAG]
        target: String,
        /// Print a JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Unpack an image's layers into a new or empty directory
    ///
    /// Whiteouts, hard links, symlinks, modes and (as root) owners are
    /// applied; nothing is written outside DIR whatever the layers say.
    Unpack {
        /// Tag, digest or digest prefix
        image: String,
        /// The directory to create
        dir: PathBuf,
        /// Print a JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// List stored images
    Ls {
        /// One JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a tag, or an image with its tags and cached rootfs
    ///
    /// A tag that shares its image with other tags is removed alone. The
    /// layers no other image uses become garbage for `utter chunks gc`.
    Rm {
        /// Tags, digests or digest prefixes
        #[arg(required = true)]
        images: Vec<String>,
        /// One JSON object per image instead of text
        #[arg(long)]
        json: bool,
    },
    /// Give an image another tag (or move a tag to it)
    Tag {
        /// Tag, digest or digest prefix
        image: String,
        /// The new tag
        tag: String,
    },
    /// Show an image's layers and config
    Inspect {
        /// Tag, digest or digest prefix
        image: String,
        /// Print the stored manifest and config as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ImportArgs {
    /// oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]
    source: String,
    /// Tag the image (repeatable); default: the source's own name
    #[arg(long = "tag", short = 't', value_name = "NAME")]
    tags: Vec<String>,
    /// Largest uncompressed layer accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = ImportOptions::default().max_layer_size)]
    max_layer_size: u64,
    /// Largest uncompressed:compressed ratio accepted past 256 MiB (decompression bombs exceed it)
    #[arg(long, value_name = "N", default_value_t = ImportOptions::default().max_ratio)]
    max_ratio: u64,
    /// Print a JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The directory that becomes the rootfs
    #[arg(required_unless_present = "binary", conflicts_with = "binary")]
    dir: Option<PathBuf>,
    /// Build a one-file image from a static executable, placed at /NAME
    /// and used as the entrypoint unless --entrypoint says otherwise
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// The program to run: a JSON array (`["/bin/sh","-c","…"]`) or words
    /// split on spaces (`/app --serve`)
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Default arguments after the entrypoint, JSON array or words
    #[arg(long, value_name = "ARGS")]
    cmd: Option<String>,
    /// Environment for the program (repeatable)
    #[arg(long, value_name = "K=V")]
    env: Vec<String>,
    /// Working directory for the program
    #[arg(long, value_name = "DIR")]
    workdir: Option<String>,
    /// Tag the image (repeatable)
    #[arg(long = "tag", short = 't', value_name = "NAME")]
    tags: Vec<String>,
    /// Print a JSON object instead of text
    #[arg(long)]
    json: bool,
}

fn argv(s: &str, flag: &str) -> Result<Vec<String>> {
    if s.trim_start().starts_with('[') {
        serde_json::from_str(s)
            .with_context(|| format!("{flag} `{s}` is not a JSON array of strings"))
    } else {
        Ok(s.split_whitespace().map(str::to_string).collect())
    }
}

/// Opens the data directory's image store (creating it when `create`).
fn open(home: &Home, create: bool) -> Result<Images> {
    let store = home.store(Need::Images, create, false, None)?;
    Ok(home.images(&store)?)
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Import(args) => import(home, args),
        Command::Build(args) => build(home, args),
        Command::Export {
            image,
            target,
            json,
        } => export(home, &image, &target, json),
        Command::Unpack { image, dir, json } => unpack(home, &image, &dir, json),
        Command::Ls { json } => ls(home, json),
        Command::Rm { images, json } => rm(home, &images, json),
        Command::Tag { image, tag } => {
            let images = open(home, false)?;
            let id = images.tag(&image, &tag)?;
            println!("{tag} -> {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { image, json } => inspect(home, &image, json),
    }
}

fn image_json(i: &Image) -> serde_json::Value {
    json!({
        "id": i.id.to_string(),
        "tags": i.tags,
        "size": i.size(),
        "config": i.config.to_string(),
        "layers": i.layers.iter().map(|l| json!({
            "diff_id": l.diff_id.to_string(),
            "size": l.size,
            "blob": l.blob.to_string(),
        })).collect::<Vec<_>>(),
        "source": i.source,
        "source_digest": i.source_digest.map(|d| d.to_string()),
        "added": i.added,
    })
}

fn import(home: &Home, args: ImportArgs) -> Result<ExitCode> {
    let source: Source = args.source.parse()?;
    let images = open(home, true)?;
    let options = ImportOptions {
        tags: args.tags,
        max_layer_size: args.max_layer_size,
        max_ratio: args.max_ratio,
    };
    let started = Instant::now();
    let mut bar = Progress::bytes("importing", None, args.json);
    let imported = images.import(&source, &options, &mut |p| {
        bar.set_total(p.total);
        bar.set(p.done);
    });
    bar.finish();
    let imported = imported?;
    let i = &imported.image;
    if args.json {
        let mut v = image_json(i);
        v["new_layers"] = json!(imported.new_layers);
        v["new_bytes"] = json!(imported.new_bytes);
        println!("{v}");
    } else {
        println!(
            "imported {} {} ({} layers, {}; {} new layers, store grew {}) in {:.1}s",
            i.id,
            tags_text(i),
            i.layers.len(),
            human(i.size()),
            imported.new_layers,
            human(imported.new_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn tags_text(i: &Image) -> String {
    if i.tags.is_empty() {
        "(no tag)".into()
    } else {
        i.tags.join(", ")
    }
}

fn build(home: &Home, args: BuildArgs) -> Result<ExitCode> {
    let input = match (args.dir, args.binary) {
        (_, Some(b)) => BuildInput::Binary(b),
        (Some(d), None) => BuildInput::Dir(d),
        (None, None) => bail!("give a DIR or --binary FILE to build from"),
    };
    let options = BuildOptions {
        entrypoint: args
            .entrypoint
            .as_deref()
            .map(|s| argv(s, "--entrypoint"))
            .transpose()?
            .unwrap_or_default(),
        cmd: args
            .cmd
            .as_deref()
            .map(|s| argv(s, "--cmd"))
            .transpose()?
            .unwrap_or_default(),
        env: args.env,
        workdir: args.workdir,
        tags: args.tags,
    };
    let images = open(home, true)?;
    let mut bar = Progress::bytes("building", None, args.json);
    let built = images.build(&input, &options, &mut |n| bar.set(n));
    bar.finish();
    let built = built?;
    for w in &built.warnings {
        eprintln!("warning: {w}");
    }
    let i = &built.image;
    if args.json {
        let mut v = image_json(i);
        v["warnings"] = json!(built.warnings);
        v["new_bytes"] = json!(built.new_bytes);
        println!("{v}");
    } else {
        println!(
            "built {} {} ({}; store grew {})",
            i.id,
            tags_text(i),
            human(i.size()),
            human(built.new_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn export(home: &Home, reference: &str, target: &str, json: bool) -> Result<ExitCode> {
    let (dir, tag) = utter_images::parse_target(target)?;
    let images = open(home, false)?;
    let image = images.get(reference)?;
    let mut bar = Progress::bytes("exporting", Some(image.size()), json);
    let result = images.export(&image, &dir, tag.as_deref(), &mut |p| bar.set(p.done));
    bar.finish();
    result?;
    if json {
        println!(
            "{}",
            json!({"id": image.id.to_string(), "dir": dir, "tag": tag})
        );
    } else {
        println!("exported {} to {}", image.id, target);
    }
    Ok(ExitCode::SUCCESS)
}

fn unpack(home: &Home, reference: &str, dir: &Path, json: bool) -> Result<ExitCode> {
    let images = open(home, false)?;
    let image = images.get(reference)?;
    let mut bar = Progress::bytes("unpacking", Some(image.size()), json);
    let started = Instant::now();
    let result = images.unpack(&image, dir, UnpackOptions::default(), &mut |done, _| {
        bar.set(done)
    });
    bar.finish();
    let report = result?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        println!(
            "{}",
            json!({
                "id": image.id.to_string(),
                "dir": dir,
                "entries": report.entries,
                "bytes": report.bytes,
                "warnings": report.warnings,
            })
        );
    } else {
        println!(
            "unpacked {} into {}: {} entries, {} in {:.2}s",
            image.id,
            dir.display(),
            report.entries,
            human(report.bytes),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(home: &Home, json: bool) -> Result<ExitCode> {
    if !home.images_dir().exists() {
        if json {
            println!("[]");
        } else {
            println!("no images yet: `utter image import SOURCE` or `utter image build DIR`");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let images = open(home, false)?;
    let list = images.list()?;
    if json {
        println!(
            "{}",
            serde_json::Value::Array(list.iter().map(image_json).collect())
        );
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no images yet: `utter image import SOURCE` or `utter image build DIR`");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<14} {:>9} {:>6}  TAGS", "IMAGE", "SIZE", "LAYERS");
    for i in &list {
        println!(
            "{:<14} {:>9} {:>6}  {}",
            i.id.short(),
            human(i.size()),
            i.layers.len(),
            tags_text(i)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(home: &Home, references: &[String], json: bool) -> Result<ExitCode> {
    let images = open(home, false)?;
    for r in references {
        let removed = images.remove(r)?;
        if json {
            println!(
                "{}",
                json!({
                    "ref": r,
                    "untagged": removed.untagged,
                    "removed": removed.image.map(|d| d.to_string()),
                    "layers_released": removed.layers_released,
                })
            );
        } else if let Some(tag) = removed.untagged {
            println!("untagged {tag}");
        } else if let Some(id) = removed.image {
            println!(
                "removed {id} ({} layers released; `utter chunks gc` frees their space)",
                removed.layers_released
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(home: &Home, reference: &str, json: bool) -> Result<ExitCode> {
    let images = open(home, false)?;
    let image = images.get(reference)?;
    if json {
        let manifest: serde_json::Value = serde_json::from_slice(&images.manifest_bytes(&image)?)?;
        let config: serde_json::Value = serde_json::from_slice(&images.config_bytes(&image)?)?;
        let mut v = image_json(&image);
        v["manifest"] = manifest;
        v["image_config"] = config;
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let config = images.config(&image)?;
    println!("image     {}", image.id);
    println!("tags      {}", tags_text(&image));
    println!("source    {}", image.source);
    if let Some(d) = image.source_digest {
        println!("source id {d}");
    }
    println!("platform  {}/{}", config.os(), config.architecture());
    if let Some(c) = config.config() {
        if let Some(e) = c.entrypoint() {
            println!("entry     {}", serde_json::to_string(e)?);
        }
        if let Some(e) = c.cmd() {
            println!("cmd       {}", serde_json::to_string(e)?);
        }
        if let Some(w) = c.working_dir() {
            println!("workdir   {w}");
        }
        for e in c.env().iter().flatten() {
            println!("env       {e}");
        }
    }
    for (n, l) in image.layers.iter().enumerate() {
        println!("layer {:<3} {} {}", n + 1, l.diff_id, human(l.size));
    }
    Ok(ExitCode::SUCCESS)
}

//! Reproducible images from a directory or one static binary.
//!
//! The layer is a tar of the directory with entries sorted by name, every
//! owner 0:0, every time 0, modes kept, hard links within the directory kept
//! as links: the same directory and options give the same image digest on
//! any machine.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, ConfigBuilder, ImageConfigurationBuilder, Os, RootFsBuilder};
use utter_chunkstore::PutOptions;

use crate::Error;
use crate::digest::HashingWriter;
use crate::import::ManifestOut;
use crate::pipe;
use crate::store::{Image, Images, Layer, NewImage};
use crate::tar::{self, Header, Kind};

/// What to build from.
#[derive(Debug, Clone)]
pub enum BuildInput {
    /// Every file under a directory becomes the rootfs.
    Dir(PathBuf),
    /// One executable, placed at `/<file name>` and made the entrypoint
    /// unless one is given.
    Binary(PathBuf),
}

/// The image config a build writes.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Entrypoint (argv).
    pub entrypoint: Vec<String>,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// `K=V` environment entries.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// Tags to give the image.
    pub tags: Vec<String>,
}

/// A build failed; nothing it stored is reachable.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The input is not what the build needs.
    #[error("{0}")]
    Input(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image.
    pub image: Image,
    /// Files skipped (sockets, devices), each with why.
    pub warnings: Vec<String>,
    /// Bytes the chunk store grew by (only chunks it did not hold).
    pub new_bytes: u64,
}

fn arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        "arm" => Arch::ARM,
        "riscv64" => Arch::RISCV64,
        other => Arch::Other(other.to_string()),
    }
}

/// Writes the layer tar of `input` to `out`; returns warnings.
fn write_layer(
    input: &BuildInput,
    out: impl io::Write,
) -> Result<(io::Result<()>, Vec<String>), BuildError> {
    let mut w = tar::Writer::new(out);
    let mut warnings = Vec::new();
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    match input {
        BuildInput::Binary(file) => {
            let meta = fs::metadata(file).map_err(io_at(file))?;
            if !meta.is_file() {
                return Err(BuildError::Input(format!(
                    "{} is not a file",
                    file.display()
                )));
            }
            let name = file
                .file_name()
                .ok_or_else(|| BuildError::Input(format!("{} has no file name", file.display())))?;
            let mut f = File::open(file).map_err(io_at(file))?;
            let h = Header {
                mode: 0o755,
                size: meta.len(),
                ..Header::file(name.as_bytes())
            };
            let result = w
                .append(&h, Some(&mut f))
                .and_then(|()| w.finish().map(drop));
            return Ok((result, warnings));
        }
        BuildInput::Dir(dir) => {
            let meta = fs::metadata(dir).map_err(io_at(dir))?;
            if !meta.is_dir() {
                return Err(BuildError::Input(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            let mut seen: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
            // Depth-first, each directory's entries sorted by name bytes.
            let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(dir.clone(), Vec::new())];
            while let Some((path, rel)) = stack.pop() {
                let mut names: Vec<_> = fs::read_dir(&path)
                    .map_err(io_at(&path))?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<_, _>>()
                    .map_err(io_at(&path))?;
                names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                let mut subdirs = Vec::new();
                for name in names {
                    let full = path.join(&name);
                    let mut r = rel.clone();
                    if !r.is_empty() {
                        r.push(b'/');
                    }
                    r.extend_from_slice(name.as_bytes());
                    let m = fs::symlink_metadata(&full).map_err(io_at(&full))?;
                    let ft = m.file_type();
                    let mode = m.mode() & 0o7777;
                    let result = if ft.is_dir() {
                        let mut p = r.clone();
                        p.push(b'/');
                        let res = w.append(
                            &Header {
                                kind: Kind::Dir,
                                mode,
                                ..Header::file(&p)
                            },
                            None,
                        );
                        subdirs.push((full, r));
                        res
                    } else if ft.is_symlink() {
                        let target = fs::read_link(&full).map_err(io_at(&full))?;
                        w.append(
                            &Header {
                                kind: Kind::Symlink,
                                mode: 0o777,
                                link: target.as_os_str().as_bytes(),
                                ..Header::file(&r)
                            },
                            None,
                        )
                    } else if ft.is_file() {
                        let key = (m.dev(), m.ino());
                        if m.nlink() > 1
                            && let Some(first) = seen.get(&key)
                        {
                            w.append(
                                &Header {
                                    kind: Kind::Hardlink,
                                    mode,
                                    link: first,
                                    ..Header::file(&r)
                                },
                                None,
                            )
                        } else {
                            if m.nlink() > 1 {
                                seen.insert(key, r.clone());
                            }
                            let mut f = File::open(&full).map_err(io_at(&full))?;
                            w.append(
                                &Header {
                                    mode,
                                    size: m.len(),
                                    ..Header::file(&r)
                                },
                                Some(&mut f),
                            )
                        }
                    } else if ft.is_fifo() {
                        w.append(
                            &Header {
                                kind: Kind::Fifo,
                                mode,
                                ..Header::file(&r)
                            },
                            None,
                        )
                    } else {
                        warnings.push(format!(
                            "{} skipped: sockets and device nodes do not go into images",
                            full.display()
                        ));
                        Ok(())
                    };
                    if let Err(e) = result {
                        return Ok((Err(e), warnings));
                    }
                }
                // Pop in name order.
                stack.extend(subdirs.into_iter().rev());
            }
        }
    }
    Ok((w.finish().map(drop), warnings))
}

impl Images {
    /// Builds an image from a directory or a binary.
    pub fn build(
        &self,
        input: &BuildInput,
        options: &BuildOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Built, BuildError> {
        for tag in &options.tags {
            crate::store::check_tag(tag)?;
        }
        let (writer, reader) = pipe::pipe(4);
        let (made, put) = std::thread::scope(|s| {
            let producer = s.spawn(move || {
                let adapter = pipe::WriteAdapter::new(writer, 1 << 20);
                let mut hashing = HashingWriter::new(adapter);
                let result = write_layer(input, &mut hashing);
                let (digest, size, mut adapter) = hashing.finish();
                let flushed = io::Write::flush(&mut adapter);
                match (&result, &flushed) {
                    (Ok((Ok(()), _)), Ok(())) => {}
                    (Ok((Err(e), _)), _) | (Ok(_), Err(e)) => {
                        adapter.fail(io::Error::new(e.kind(), e.to_string()));
                    }
                    (Err(_), _) => adapter.fail(io::Error::other("build failed")),
                }
                result.map(|(r, warnings)| (r, warnings, digest, size))
            });
            let put = self
                .chunks()
                .put_observed(reader, PutOptions { pin: true }, progress);
            let made = producer
                .join()
                .unwrap_or_else(|_| Err(BuildError::Input("the layer writer panicked".into())));
            (made, put)
        });
        let release = |put: &Result<utter_chunkstore::Put, utter_chunkstore::Error>| {
            if let Ok(p) = put {
                let _ = self.chunks().unpin(&p.id);
            }
        };
        let (written, warnings, diff_id, size) = match made {
            Ok(m) => m,
            Err(e) => {
                release(&put);
                return Err(e);
            }
        };
        if let Err(e) = written {
            release(&put);
            return Err(BuildError::Input(format!("writing the layer: {e}")));
        }
        let put = put.map_err(Error::from)?;
        let new_bytes = put.new_bytes;
        let layer = Layer {
            diff_id,
            size,
            blob: put.id,
        };
        let mut entrypoint = options.entrypoint.clone();
        if entrypoint.is_empty()
            && let BuildInput::Binary(file) = input
            && let Some(name) = file.file_name()
        {
            entrypoint.push(format!("/{}", name.to_string_lossy()));
        }
        let mut config = ConfigBuilder::default();
        if !entrypoint.is_empty() {
            config = config.entrypoint(entrypoint);
        }
        if !options.cmd.is_empty() {
            config = config.cmd(options.cmd.clone());
        }
        let mut env = options.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        for e in &env {
            if !e.contains('=') || e.starts_with('=') {
                release(&Ok(put));
                return Err(BuildError::Input(format!("--env `{e}` is not KEY=VALUE")));
            }
        }
        config = config.env(env);
        if let Some(w) = &options.workdir {
            config = config.working_dir(w.clone());
        }
        let built = (|| {
            let config = config.build().map_err(|e| e.to_string())?;
            let rootfs = RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.to_string()])
                .build()
                .map_err(|e| e.to_string())?;
            let image_config = ImageConfigurationBuilder::default()
                .architecture(arch())
                .os(Os::Linux)
                .config(config)
                .rootfs(rootfs)
                .build()
                .map_err(|e| e.to_string())?;
            image_config.to_string().map_err(|e| e.to_string())
        })();
        let config_json = match built {
            Ok(c) => c.into_bytes(),
            Err(e) => {
                release(&Ok(put));
                return Err(BuildError::Input(format!("making the image config: {e}")));
            }
        };
        let manifest =
            ManifestOut::new(&config_json, std::slice::from_ref(&layer), BTreeMap::new())
                .to_bytes();
        let source = match input {
            BuildInput::Dir(d) => format!("build:{}", d.display()),
            BuildInput::Binary(f) => format!("build-binary:{}", f.display()),
        };
        let image = self
            .commit(NewImage {
                manifest,
                config: config_json,
                layers: vec![(layer, true)],
                source,
                source_digest: None,
                tags: options.tags.clone(),
            })
            .inspect_err(|_| {
                let _ = self.chunks().unpin(&put.id);
            })?;
        Ok(Built {
            image,
            warnings,
            new_bytes,
        })
    }
}

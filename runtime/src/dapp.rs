//! The dapp protocol, host side: one invocation of a dapp's `apply` (a
//! block's transactions) or `test` (invariants over the new state).
//!
//! In the container:
//! ```text
//! /state                    the dapp's state: an overlay over a read-only
//!                           checkout, writable; changes land in scratch
//! /block/context.json       chain, dapp, entry, height, time, parent, proposer (read-only)
//! /block/txs.jsonl          this block's transactions for the dapp (read-only)
//! /block/results.jsonl      written by the dapp: one line per transaction
//! /chain/<dapp>/…           every dapp's state before the block (read-only,
//!                           when the caller gives it)
//! ```
//! The entrypoint is run with one more argument, `apply` or `test`. After
//! the run the changed paths are read off the overlay's upper directory
//! (whiteouts and opaque directories included), so the caller can build
//! the next state without rescanning the whole state.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container::{Finished, RunError, Sandbox, Scratch, Stdio};
use crate::spec::{Job, Limits, Mount};

/// Which entry point of a dapp to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    /// Apply the block's transactions to the state.
    Apply,
    /// Check the dapp's invariants over the state (no transactions).
    Test,
}

impl Entry {
    /// `apply` or `test`: the argument the entrypoint gets.
    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Apply => "apply",
            Entry::Test => "test",
        }
    }
}

/// `/block/context.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The chain id.
    pub chain: String,
    /// The dapp's name on the chain.
    pub dapp: String,
    /// The entry point being run.
    pub entry: Entry,
    /// The block's height.
    pub height: u64,
    /// The block's time, Unix seconds (the proposer's clock: the only
    /// clock a dapp may use).
    pub time: u64,
    /// The parent block's id (hex), empty for the first block.
    pub parent: String,
    /// The proposer's public key, `ssh-ed25519 AAAA…`.
    pub proposer: String,
}

/// The file of `/block` listing what the block changed, for a test dapp.
pub const CHANGED_FILE: &str = "changed.txt";

/// One invocation of a dapp.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    /// The image's unpacked rootfs.
    pub rootfs: PathBuf,
    /// The image's entrypoint (or command); the entry is appended.
    pub command: Vec<String>,
    /// The image's environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// The image's working directory.
    pub cwd: String,
    /// The state before the block: a directory that is never changed
    /// (the overlay's lower layer).
    pub state: PathBuf,
    /// Every dapp's state as of the parent block (`<dapp>/…`), mounted
    /// read-only at `/chain`, so a dapp can read what others keep (the
    /// doors dapp reads members and certifications). `None`: no `/chain`.
    #[serde(default)]
    pub chain: Option<PathBuf>,
    /// The context.
    pub context: Context,
    /// The transactions, one JSON line each (`/block/txs.jsonl`); text
    /// (UTF-8) when it crosses to a helper process.
    #[serde(with = "text_bytes")]
    pub txs: Vec<u8>,
    /// The container's limits.
    pub limits: Limits,
    /// Bytes the dapp may write: its state changes and results together.
    pub scratch: u64,
    /// For the `test` entry: what the block changed, `<dapp>/<path>` (a
    /// whole dapp as `<dapp>/`), written to `/block/changed.txt` one per
    /// line, so a test dapp checks again only what a change can break.
    /// `None`: not known (no file; the test checks everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
}

/// Transaction lines cross the helper's pipe as one JSON string, not as
/// an array of numbers (a quarter of the size, and quick to parse).
mod text_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ser::Error::custom("transaction lines must be UTF-8"))?;
        s.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d).map_err(de::Error::custom)?;
        Ok(text.into_bytes())
    }
}

/// What an invocation produced. The state changes stay readable (in a
/// scratch tmpfs) until this is dropped.
#[derive(Debug)]
pub struct DappRun {
    /// How the container ended, with what it printed.
    pub finished: Finished,
    /// `/block/results.jsonl` as the dapp wrote it.
    pub results: Vec<u8>,
    /// The changed paths, parents before children.
    pub changes: Vec<Change>,
    upper: PathBuf,
    results_path: PathBuf,
    _scratch: Scratch,
}

/// One changed path of a dapp's state, relative to `/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Relative path, `/`-separated, UTF-8.
    pub path: String,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// What happened to a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A regular file was written (created or replaced); its bytes are in
    /// the run's upper directory ([`DappRun::file`]).
    File {
        /// Any execute bit set (git's 100755).
        executable: bool,
    },
    /// A symlink was created or replaced.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A directory exists here; with `opaque` everything the old state
    /// had under it is gone (it was removed and made again), otherwise it
    /// merges with the old directory.
    Dir {
        /// Replaces rather than merges.
        opaque: bool,
    },
    /// The path (file, link or whole directory) was removed.
    Removed,
}

/// Why a dapp's state changes cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The dapp made a name that is not UTF-8.
    #[error("the dapp wrote a state path that is not UTF-8: {0:?}")]
    NotUtf8(PathBuf),
    /// The dapp made a fifo, socket or device in its state.
    #[error(
        "the dapp made {path} in its state, which is neither a file, a symlink nor a directory"
    )]
    Special {
        /// The path.
        path: String,
    },
    /// Reading the upper directory or writing the target failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn state_io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Why an invocation failed before or after the container ran.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The container could not run.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The state's lower directory cannot be used.
    #[error("cannot use {0} as the dapp's state: {1}")]
    BadState(PathBuf, &'static str),
    /// Reading what the dapp wrote failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Runs one invocation in `sandbox`.
pub fn invoke<S: Sandbox + ?Sized>(
    sandbox: &S,
    invocation: &Invocation,
) -> Result<DappRun, InvokeError> {
    let lower = invocation.state.canonicalize().map_err(|_| {
        InvokeError::BadState(
            invocation.state.clone(),
            "it does not exist or cannot be read",
        )
    })?;
    if !lower.is_dir() {
        return Err(InvokeError::BadState(lower, "it is not a directory"));
    }
    // Overlay options are comma-separated and lowerdir is colon-separated.
    if lower.to_str().is_none_or(|s| s.contains([',', ':'])) {
        return Err(InvokeError::BadState(
            lower,
            "its path has a comma or colon (or is not UTF-8); move it",
        ));
    }
    let scratch = sandbox.scratch(invocation.scratch)?;
    let root = scratch.path();
    let block = root.join("block");
    let out = root.join("out");
    let upper = root.join("upper");
    let work = root.join("work");
    for dir in [&block, &out, &upper, &work] {
        fs::create_dir(dir).map_err(RunError::io("create", dir))?;
    }
    let context = serde_json::to_vec(&invocation.context).expect("the context always serializes");
    let results = out.join("results.jsonl");
    for (path, bytes) in [
        (block.join("context.json"), &context[..]),
        (block.join("txs.jsonl"), &invocation.txs[..]),
        (block.join("results.jsonl"), &[][..]),
        (results.clone(), &[][..]),
    ] {
        fs::write(&path, bytes).map_err(RunError::io("write", &path))?;
    }
    if let Some(changed) = &invocation.changed {
        let path = block.join(CHANGED_FILE);
        let mut text = String::with_capacity(changed.iter().map(|c| c.len() + 1).sum());
        for c in changed {
            text.push_str(c);
            text.push('\n');
        }
        fs::write(&path, text).map_err(RunError::io("write", &path))?;
    }
    let mut args = invocation.command.clone();
    args.push(invocation.context.entry.as_str().to_string());
    let mut job = Job {
        rootfs: invocation.rootfs.clone(),
        args,
        env: invocation.env.clone(),
        cwd: invocation.cwd.clone(),
        hostname: "dapp".into(),
        mounts: vec![
            Mount::Overlay {
                lower,
                upper: upper.clone(),
                work,
                target: "/state".into(),
            },
            Mount::Bind {
                source: block,
                target: "/block".into(),
                writable: false,
            },
            Mount::Bind {
                source: results.clone(),
                target: "/block/results.jsonl".into(),
                writable: true,
            },
        ],
        limits: invocation.limits.clone(),
    };
    if let Some(chain) = &invocation.chain {
        job.mounts.push(Mount::Bind {
            source: chain.clone(),
            target: "/chain".into(),
            writable: false,
        });
    }
    let finished = sandbox.run(&job, Stdio::Capture)?;
    let results_path = results;
    let results = fs::read(&results_path).map_err(state_io("read", &results_path))?;
    let changes = read_changes(&upper)?;
    Ok(DappRun {
        finished,
        results,
        changes,
        upper,
        results_path,
        _scratch: scratch,
    })
}

impl DappRun {
    /// The new bytes of a changed file.
    pub fn file(&self, path: &str) -> Result<Vec<u8>, StateError> {
        let full = self.upper.join(path);
        fs::read(&full).map_err(state_io("read", &full))
    }

    /// Applies the changes to `dir`, a copy of the state the dapp ran on,
    /// which then holds the new state.
    pub fn apply_to(&self, dir: &Path) -> Result<(), StateError> {
        apply_changes(&self.upper, &self.changes, dir)
    }

    /// Where the results file is (in the scratch).
    pub fn results_path(&self) -> PathBuf {
        self.results_path.clone()
    }

    /// The overlay's upper directory, where changed files' bytes are.
    pub fn upper(&self) -> &Path {
        &self.upper
    }
}

/// Applies `changes`, read from the overlay upper directory `upper`, to
/// `dir`, a copy of the state the dapp ran on, which then holds the new
/// state.
pub fn apply_changes(upper: &Path, changes: &[Change], dir: &Path) -> Result<(), StateError> {
    for change in changes {
        let target = dir.join(&change.path);
        match &change.kind {
            ChangeKind::Removed => remove_any(&target)?,
            ChangeKind::Dir { opaque } => {
                let is_dir = fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir());
                if *opaque || !is_dir {
                    remove_any(&target)?;
                    fs::create_dir(&target).map_err(state_io("create", &target))?;
                }
            }
            ChangeKind::File { executable } => {
                remove_any(&target)?;
                let source = upper.join(&change.path);
                fs::copy(&source, &target).map_err(state_io("write", &target))?;
                let mode = if *executable { 0o755 } else { 0o644 };
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(state_io("chmod", &target))?;
            }
            ChangeKind::Symlink { target: link } => {
                remove_any(&target)?;
                std::os::unix::fs::symlink(link, &target).map_err(state_io("create", &target))?;
            }
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), StateError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(state_io("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(state_io("remove", path)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(state_io("inspect", path)(err)),
    }
}

/// The changes recorded in an overlay upper directory, sorted so that a
/// directory comes before what is in it.
pub fn read_changes(upper: &Path) -> Result<Vec<Change>, StateError> {
    let mut changes = Vec::new();
    walk(upper, "", &mut changes)?;
    Ok(changes)
}

fn walk(dir: &Path, prefix: &str, changes: &mut Vec<Change>) -> Result<(), StateError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(state_io("read", dir))?
        .collect::<Result<_, _>>()
        .map_err(state_io("read", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let full = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| StateError::NotUtf8(full.clone()))?;
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&full).map_err(state_io("inspect", &full))?;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            let opaque = is_opaque(&full);
            changes.push(Change {
                path: path.clone(),
                kind: ChangeKind::Dir { opaque },
            });
            walk(&full, &path, changes)?;
        } else if file_type.is_file() {
            changes.push(Change {
                path,
                kind: ChangeKind::File {
                    executable: meta.mode() & 0o111 != 0,
                },
            });
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full).map_err(state_io("read", &full))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| StateError::NotUtf8(full.clone()))?;
            changes.push(Change {
                path,
                kind: ChangeKind::Symlink { target },
            });
        } else if file_type.is_char_device() && meta.rdev() == 0 {
            // overlayfs's whiteout: a 0/0 character device.
            changes.push(Change {
                path,
                kind: ChangeKind::Removed,
            });
        } else {
            return Err(StateError::Special { path });
        }
    }
    Ok(())
}

/// Whether overlayfs marked the directory opaque (its lower contents
/// hidden): the `trusted.overlay.opaque` attribute is `y`, or
/// `user.overlay.opaque` for an overlay mounted in a user namespace
/// (rootless).
fn is_opaque(dir: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .into_iter()
        .any(|name| {
            let mut value = [0u8; 4];
            matches!(rustix::fs::lgetxattr(dir, name, &mut value[..]), Ok(1) if value[0] == b'y')
        })
}

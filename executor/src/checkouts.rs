//! The per-dapp state checkouts: plain directories the dapps run on, kept
//! in step with a block's tree by applying tree diffs, so a block costs
//! what changed, not the size of the state.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use utter_ledger::layout::{DAPPS, STATE};
use utter_ledger::{Change, FileChange, Ledger, ObjectId};

use crate::ExecError;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The per-dapp state checkouts.
#[derive(Debug)]
pub(crate) struct Checkouts {
    pub(crate) root: PathBuf,
    /// Which state tree each dapp's directory holds (`None`: empty).
    pub(crate) at: BTreeMap<String, Option<ObjectId>>,
    /// Dapps whose directory holds the state of the block being made
    /// (recorded in `at` once that block is written).
    pub(crate) pending: Vec<String>,
}

impl Checkouts {
    pub(crate) fn open(root: &Path) -> Result<Self, ExecError> {
        // What a previous process left is not trusted: start empty.
        match fs::remove_dir_all(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("clear", root)(e)),
        }
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        let root = root.canonicalize().map_err(io_err("resolve", root))?;
        Ok(Self {
            root,
            at: BTreeMap::new(),
            pending: Vec::new(),
        })
    }

    pub(crate) fn dir(&self, dapp: &str) -> PathBuf {
        self.root.join(dapp)
    }

    /// Brings every dapp's checkout to its state in `tree`.
    pub(crate) fn sync(
        &mut self,
        ledger: &Ledger,
        tree: ObjectId,
        dapps: &[String],
    ) -> Result<(), ExecError> {
        let gone: Vec<String> = self
            .at
            .keys()
            .filter(|d| !dapps.contains(d))
            .cloned()
            .collect();
        for dapp in gone {
            let dir = self.dir(&dapp);
            remove_any(&dir)?;
            self.at.remove(&dapp);
        }
        for dapp in dapps {
            let want = ledger.subtree(tree, &format!("{DAPPS}/{dapp}/{STATE}"))?;
            let have = self.at.get(dapp).copied();
            if have == Some(want) {
                continue;
            }
            let dir = self.dir(dapp);
            let from = match have {
                Some(from) => from,
                None => {
                    remove_any(&dir)?;
                    None
                }
            };
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            // Mark unknown while changing, so a failure half-way makes the
            // next sync start over.
            self.at.remove(dapp);
            if let Some(want) = want {
                for (path, change) in ledger.diff_trees(from, want)? {
                    let target = dir.join(&path);
                    match change {
                        FileChange::Removed => {
                            remove_any(&target)?;
                            prune_empty(&dir, &target)?;
                        }
                        FileChange::Added | FileChange::Modified => {
                            let bytes = ledger.read_value_in(want, &path)?.unwrap_or_default();
                            if let Some(parent) = target.parent() {
                                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                            }
                            overwrite(&target, &bytes)?;
                        }
                    }
                }
            } else {
                remove_any(&dir)?;
                fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            }
            self.at.insert(dapp.clone(), want);
        }
        Ok(())
    }

    pub(crate) fn forget(&mut self, dapp: &str) {
        self.at.remove(dapp);
    }
}

fn remove_any(path: &Path) -> Result<(), ExecError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Removes empty directories from `path`'s parent up to (not including)
/// `root`: git keeps no empty trees, so neither may a checkout.
fn prune_empty(root: &Path, path: &Path) -> Result<(), ExecError> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        match fs::remove_dir(d) {
            Ok(()) => dir = d.parent(),
            Err(e)
                if e.kind() == io::ErrorKind::DirectoryNotEmpty
                    || e.kind() == io::ErrorKind::NotFound =>
            {
                break;
            }
            Err(e) => return Err(io_err("remove", d)(e)),
        }
    }
    Ok(())
}

/// Writes `bytes` as the whole of file `path`, reusing the file when it
/// exists. Not `O_TRUNC`: ext4 forces out the data of a file truncated to
/// zero and rewritten (`auto_da_alloc`): rewriting a hundred small state
/// files that way took 24–30 ms per block here, and overwriting them cut
/// the executor's own work per block (`utter-bench executor`, "the rest")
/// from ~31 ms to ~13 ms. Checkouts are rebuilt from the ledger after a
/// crash, so they need no such care.
fn overwrite(path: &Path, bytes: &[u8]) -> Result<(), ExecError> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open", path))?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.set_len(bytes.len() as u64)
        .map_err(io_err("write", path))
}

/// Applies one state change to a checkout directory.
pub(crate) fn write_checkout(dir: &Path, path: &str, change: &Change) -> Result<(), ExecError> {
    let target = dir.join(path);
    match change {
        Change::Put(bytes) => {
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                remove_any(&target)?;
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            overwrite(&target, bytes)
        }
        Change::Remove => {
            remove_any(&target)?;
            prune_empty(dir, &target)
        }
        Change::Pointer(_) => Err(io_err("write", &target)(io::Error::other(
            "a dapp's change is never a pointer",
        ))),
    }
}

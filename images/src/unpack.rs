//! Unpacking layers into a rootfs, safely.
//!
//! Every entry is created relative to a directory file descriptor with
//! `*at` calls that never follow the final component. Parent directories
//! are walked one component at a time: a symlink on the way is followed
//! as the image means it (an absolute target starts again at the rootfs),
//! and a walk that would climb above the rootfs is refused with the entry's
//! name. Names that are absolute or contain `..` are refused outright, and
//! so are hard links whose source resolves outside. Device nodes are
//! skipped with a warning. Whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove
//! only what lower layers made, as the OCI spec says.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::Timespec;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use crate::Error;
use crate::store::{Image, Images};
use crate::tar::{self, Entry, Kind, TarError};

/// The deepest directory nesting accepted.
const MAX_DEPTH: usize = 512;
/// Symlinks followed while walking one path.
const MAX_HOPS: usize = 40;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// How to unpack.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Give files the owners the layers name (needs root); otherwise they
    /// belong to the caller.
    pub ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            ownership: rustix::process::geteuid().is_root(),
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default)]
pub struct UnpackReport {
    /// Entries applied.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Entries skipped, each with why (device nodes).
    pub warnings: Vec<String>,
}

/// Unpacking failed; the target may hold part of the image.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry is hostile or cannot be applied.
    #[error("layer {layer} ({diff_id}), entry `{path}`: {reason}")]
    Entry {
        /// 1-based layer number.
        layer: usize,
        /// The layer's diffID.
        diff_id: String,
        /// The entry as named in the tar.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The layer is not a readable tar.
    #[error("layer {layer} ({diff_id}): {source}")]
    Tar {
        /// 1-based layer number.
        layer: usize,
        /// The layer's diffID.
        diff_id: String,
        /// The tar error, naming the entry.
        source: TarError,
    },
    /// The target cannot be used.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The target directory holds files.
    #[error("{0} is not empty: unpack into a new or empty directory")]
    NotEmpty(PathBuf),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl Images {
    /// Unpacks `image` into `target`, which must be new or empty.
    pub fn unpack(
        &self,
        image: &Image,
        target: &Path,
        options: UnpackOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<UnpackReport, UnpackError> {
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| UnpackError::Io { what, path, source }
        };
        match std::fs::read_dir(target) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(UnpackError::NotEmpty(target.to_path_buf()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(target).map_err(io_err("cannot create", target))?;
            }
            Err(e) => return Err(io_err("cannot read", target)(e)),
        }
        let root = open_root(target)?;
        let total = image.size();
        let mut done = 0;
        let mut report = UnpackReport::default();
        for (i, layer) in image.layers.iter().enumerate() {
            let reader = self.layer_reader(layer)?;
            let mut counted = Counted {
                inner: reader,
                done: 0,
                report: &mut |n| progress(done + n, total),
            };
            apply_layer(&root, &mut counted, options, &mut report)
                .map_err(|e| e.at(i + 1, layer.diff_id.to_string()))?;
            done += layer.size;
        }
        Ok(report)
    }

    /// The unpacked rootfs of `image` in the store's cache, unpacking it
    /// first if needed. A cached rootfs is complete and synced: it is
    /// unpacked beside its final name and renamed into place.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf, UnpackError> {
        let final_path = self.rootfs_path(&image.id);
        if final_path.is_dir() {
            return Ok(final_path);
        }
        let parent = final_path.parent().unwrap_or(Path::new("."));
        clean_stale(parent);
        let tmp = parent.join(format!(".tmp-{}-{}", image.id.hex(), std::process::id()));
        if tmp.exists() {
            remove_tree(&tmp).map_err(|source| UnpackError::Io {
                what: "cannot remove",
                path: tmp.clone(),
                source,
            })?;
        }
        let result = self
            .unpack(image, &tmp, UnpackOptions::default(), &mut |_, _| {})
            .and_then(|_| {
                let f = File::open(&tmp).map_err(|source| UnpackError::Io {
                    what: "cannot open",
                    path: tmp.clone(),
                    source,
                })?;
                rustix::fs::syncfs(&f).map_err(|e| UnpackError::Io {
                    what: "cannot sync",
                    path: tmp.clone(),
                    source: e.into(),
                })
            });
        if let Err(e) = result {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, &final_path) {
            Ok(()) => Ok(final_path),
            Err(_) if final_path.is_dir() => {
                // Another process finished first; its copy is as good.
                let _ = remove_tree(&tmp);
                Ok(final_path)
            }
            Err(source) => {
                let _ = remove_tree(&tmp);
                Err(UnpackError::Io {
                    what: "cannot rename into",
                    path: final_path,
                    source,
                })
            }
        }
    }
}

/// Removes temporary unpack directories whose process is gone.
fn clean_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(".tmp-")) else {
            continue;
        };
        let pid = rest.rsplit('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = remove_tree(&e.path());
        }
    }
}

struct Counted<'a, R> {
    inner: R,
    done: u64,
    report: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done % (4 << 20) < n as u64 {
            (self.report)(self.done);
        }
        Ok(n)
    }
}

/// Removes a directory tree without following symlinks (also for trees
/// whose directories have no write permission).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("cannot remove a path without a name"))?;
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    remove_at(&dir, name.as_bytes(), 0).map_err(io::Error::from)
}

fn remove_at(dir: &OwnedFd, name: &[u8], depth: usize) -> Result<(), Errno> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    if depth > MAX_DEPTH * 4 {
        return Err(Errno::LOOP);
    }
    // Make sure we may list and empty it.
    let child = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .or_else(|_| {
        let _ = rustix::fs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty());
        rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })?;
    let _ = rustix::fs::fchmod(&child, Mode::from_raw_mode(0o700));
    let names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(&child)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    for n in names {
        remove_at(&child, &n, depth + 1)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

enum LayerError {
    Entry { path: String, reason: String },
    Tar(TarError),
}

impl LayerError {
    /// The error, naming the layer it happened in.
    fn at(self, layer: usize, diff_id: String) -> UnpackError {
        match self {
            Self::Entry { path, reason } => UnpackError::Entry {
                layer,
                diff_id,
                path,
                reason,
            },
            Self::Tar(source) => UnpackError::Tar {
                layer,
                diff_id,
                source,
            },
        }
    }
}

/// Opens the target directory; every entry is made relative to it.
fn open_root(target: &Path) -> Result<OwnedFd, UnpackError> {
    rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        what: "cannot open",
        path: target.to_path_buf(),
        source: e.into(),
    })
}

/// Splits a member name into components: refuses absolute names, `..`
/// and NUL; drops `.` and empty components.
fn components(name: &[u8]) -> Result<Vec<&[u8]>, String> {
    if name.starts_with(b"/") {
        return Err("absolute paths are refused".into());
    }
    if name.contains(&0) {
        return Err("a NUL byte in the name".into());
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` in a path is refused".into()),
            c => out.push(c),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} directories"));
    }
    Ok(out)
}

fn cstr(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| "a NUL byte in the name".to_string())
}

fn errno_text(e: Errno) -> String {
    io::Error::from(e).to_string()
}

/// Applying one layer.
struct Applier<'a> {
    root: &'a OwnedFd,
    options: UnpackOptions,
    /// Paths this layer made (whiteouts leave them alone).
    made: HashSet<Vec<u8>>,
    /// Directory metadata, applied after the layer, deepest first.
    dirs: Vec<(Vec<u8>, Entry)>,
    /// The last parent directory walked, reused for its siblings.
    cached: Option<(Vec<u8>, OwnedFd)>,
}

impl Applier<'_> {
    /// Opens (creating missing directories when `create`) the directory
    /// `comps` names, following symlinks inside the rootfs only.
    fn walk(&self, comps: &[&[u8]], create: bool) -> Result<OwnedFd, String> {
        let dup = || {
            rustix::fs::openat(
                self.root,
                c".",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno_text)
        };
        let mut stack: Vec<OwnedFd> = vec![dup()?];
        let mut queue: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut hops = 0;
        let mut walked: Vec<Vec<u8>> = Vec::new();
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                if stack.len() == 1 {
                    return Err(format!(
                        "its path leaves the rootfs through a symlink (at `{}`)",
                        tar::display(&walked.join(&b'/'))
                    ));
                }
                stack.pop();
                walked.pop();
                continue;
            }
            if stack.len() > MAX_DEPTH {
                return Err(format!("nested deeper than {MAX_DEPTH} directories"));
            }
            let cur = stack.last().expect("the stack always holds the root");
            let name = cstr(&c)?;
            let open = || {
                rustix::fs::openat(
                    cur,
                    &name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            };
            match open() {
                Ok(fd) => {
                    stack.push(fd);
                    walked.push(c);
                }
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(cur, &name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno_text(e)),
                    }
                    stack.push(open().map_err(errno_text)?);
                    walked.push(c);
                }
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    let st = rustix::fs::statat(cur, &name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(errno_text)?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                        walked.push(c);
                        return Err(format!(
                            "`{}` is not a directory",
                            tar::display(&walked.join(&b'/'))
                        ));
                    }
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err("too many levels of symlinks".into());
                    }
                    let target =
                        rustix::fs::readlinkat(cur, &name, Vec::new()).map_err(errno_text)?;
                    let target = target.as_bytes();
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                        walked.clear();
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                Err(e) => return Err(errno_text(e)),
            }
        }
        Ok(stack.pop().expect("the stack always holds the root"))
    }

    fn parent(&mut self, comps: &[&[u8]]) -> Result<&OwnedFd, String> {
        let key = comps.join(&b'/');
        let hit = matches!(&self.cached, Some((k, _)) if *k == key);
        if !hit {
            let fd = self.walk(comps, true)?;
            self.cached = Some((key, fd));
        }
        Ok(&self.cached.as_ref().expect("just set").1)
    }

    fn owner(&self, e: &Entry) -> Owner {
        if !self.options.ownership {
            return (None, None);
        }
        let uid = u32::try_from(e.uid).unwrap_or(u32::MAX - 1);
        let gid = u32::try_from(e.gid).unwrap_or(u32::MAX - 1);
        (
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
    }

    fn times(e: &Entry) -> Timestamps {
        let t = Timespec {
            tv_sec: e.mtime,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }

    fn apply(
        &mut self,
        e: &Entry,
        data: &mut dyn Read,
        report: &mut UnpackReport,
    ) -> Result<(), String> {
        let comps = components(&e.path)?;
        let Some((&name, parents)) = comps.split_last() else {
            if e.kind == Kind::Dir {
                self.dirs.push((Vec::new(), e.clone()));
                return Ok(());
            }
            return Err("names the rootfs itself".into());
        };
        if name == OPAQUE {
            return self.opaque(parents);
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            return self.whiteout(parents, hidden);
        }
        if matches!(e.kind, Kind::Char | Kind::Block) {
            report.warnings.push(format!(
                "device node `{}` skipped (images get /dev from the runtime)",
                e.display_path()
            ));
            return Ok(());
        }
        let hard_source = match e.kind {
            Kind::Hardlink => Some(self.hard_link_source(e)?),
            _ => None,
        };
        let invalidate = self.make(parents, name, e, data, report, hard_source)?;
        let full = comps.join(&b'/');
        if e.kind == Kind::Dir {
            self.dirs.push((full.clone(), e.clone()));
        }
        if invalidate {
            self.cached = None;
        }
        self.made.insert(full);
        report.entries += 1;
        Ok(())
    }

    /// An opaque-directory marker: everything lower layers put in the
    /// directory goes, what this layer made stays.
    fn opaque(&mut self, parents: &[&[u8]]) -> Result<(), String> {
        let dir = self.walk(parents, true)?;
        let prefix = parents.join(&b'/');
        let reading = rustix::fs::openat(
            &dir,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_text)?;
        let children: Vec<Vec<u8>> = rustix::fs::Dir::read_from(&reading)
            .map_err(errno_text)?
            .filter_map(Result::ok)
            .map(|d| d.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        for child in children {
            if !self.made.contains(&join(&prefix, &child)) {
                remove_at(&dir, &child, 0).map_err(errno_text)?;
            }
        }
        self.cached = None;
        Ok(())
    }

    /// A whiteout: removes `hidden` as lower layers left it.
    fn whiteout(&mut self, parents: &[&[u8]], hidden: &[u8]) -> Result<(), String> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err("a whiteout must name a file in its directory".into());
        }
        let full = join(&parents.join(&b'/'), hidden);
        if self.made.contains(&full) {
            return Ok(()); // a whiteout hides lower layers only
        }
        match self.walk(parents, false) {
            Ok(dir) => remove_at(&dir, hidden, 0).map_err(errno_text)?,
            Err(reason) if reason.contains("leaves the rootfs") => return Err(reason),
            Err(_) => {} // nothing there to hide
        }
        self.cached = None;
        Ok(())
    }

    /// Where a hard link's source is: its directory, name and inode.
    fn hard_link_source(&mut self, e: &Entry) -> Result<HardSource, String> {
        let tcomps = components(&e.link).map_err(|r| format!("hard link source: {r}"))?;
        let Some((&tname, tparents)) = tcomps.split_last() else {
            return Err("a hard link to the rootfs itself".into());
        };
        let tdir = self
            .walk(tparents, false)
            .map_err(|r| format!("hard link source `{}`: {r}", tar::display(&e.link)))?;
        let tname = cstr(tname)?;
        let st = rustix::fs::statat(&tdir, &tname, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| {
            format!(
                "hard link source `{}`: {}",
                tar::display(&e.link),
                errno_text(err)
            )
        })?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err("a hard link to a directory".into());
        }
        Ok((tdir, tname, st))
    }

    /// Makes entry `e` as `name` in directory `parents`, replacing what is
    /// there unless it is the same directory or the link's own inode.
    /// Returns whether the cached parent may no longer be right.
    fn make(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        e: &Entry,
        data: &mut dyn Read,
        report: &mut UnpackReport,
        hard_source: Option<HardSource>,
    ) -> Result<bool, String> {
        let cname = cstr(name)?;
        let owner = self.owner(e);
        let times = Self::times(e);
        let mode = Mode::from_raw_mode(e.mode & 0o7777);
        let is_dir = e.kind == Kind::Dir;
        let parent = self.parent(parents)?;
        let existing = match rustix::fs::statat(parent, &cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(err) => return Err(errno_text(err)),
        };
        let mut invalidate = false;
        if let Some(st) = existing {
            let kind = FileType::from_raw_mode(st.st_mode);
            let same_inode = hard_source
                .as_ref()
                .is_some_and(|(_, _, src)| src.st_ino == st.st_ino && src.st_dev == st.st_dev);
            let keep = same_inode || (is_dir && kind == FileType::Directory);
            if !keep {
                invalidate = kind == FileType::Directory;
                remove_at(parent, name, 0).map_err(errno_text)?;
            }
        }
        match e.kind {
            Kind::Dir => {
                if existing
                    .is_none_or(|st| FileType::from_raw_mode(st.st_mode) != FileType::Directory)
                {
                    rustix::fs::mkdirat(parent, &cname, Mode::from_raw_mode(0o755))
                        .map_err(errno_text)?;
                }
            }
            Kind::File => {
                report.bytes += write_file(parent, &cname, data, owner, mode, &times)?;
            }
            Kind::Symlink => {
                if e.link.is_empty() {
                    return Err("a symlink with an empty target".into());
                }
                let target = cstr(&e.link)?;
                rustix::fs::symlinkat(&target, parent, &cname).map_err(errno_text)?;
                chown_at(parent, &cname, owner)?;
                rustix::fs::utimensat(parent, &cname, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno_text)?;
                invalidate = true;
            }
            Kind::Hardlink => {
                let (tdir, tname, _) = hard_source.expect("set for hard links");
                let linked = existing.is_some_and(|st| {
                    rustix::fs::statat(&tdir, &tname, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| s.st_ino == st.st_ino && s.st_dev == st.st_dev)
                });
                if !linked {
                    match rustix::fs::linkat(&tdir, &tname, parent, &cname, AtFlags::empty()) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(err) => return Err(errno_text(err)),
                    }
                }
            }
            Kind::Fifo => {
                rustix::fs::mknodat(parent, &cname, FileType::Fifo, mode, 0).map_err(errno_text)?;
                chown_at(parent, &cname, owner)?;
                rustix::fs::chmodat(parent, &cname, mode, AtFlags::empty()).map_err(errno_text)?;
            }
            Kind::Char | Kind::Block => unreachable!("skipped by apply"),
        }
        Ok(invalidate)
    }

    /// Sets directory owners, modes and times, deepest last-made first.
    fn finish_dirs(&mut self) -> Result<(), (Vec<u8>, String)> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, e) in dirs.iter().rev() {
            let comps = components(path).map_err(|r| (e.path.clone(), r))?;
            let Ok(fd) = self.walk(&comps, false) else {
                continue; // removed later in the layer
            };
            let open = rustix::fs::openat(
                &fd,
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let Ok(dir) = open else { continue };
            let (uid, gid) = self.owner(e);
            let fail = |err: Errno| (e.path.clone(), errno_text(err));
            if uid.is_some() {
                rustix::fs::fchown(&dir, uid, gid).map_err(fail)?;
            }
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(e.mode & 0o7777)).map_err(fail)?;
            rustix::fs::futimens(&dir, &Self::times(e)).map_err(fail)?;
        }
        Ok(())
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut out = prefix.to_vec();
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

fn copy(data: &mut dyn Read, out: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// A hard link's source: its directory, name and inode.
type HardSource = (OwnedFd, CString, rustix::fs::Stat);

/// An entry's owner, when ownership is kept.
type Owner = (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>);

/// Creates regular file `name` in `parent` with `data`; returns the bytes
/// written.
fn write_file(
    parent: &OwnedFd,
    name: &CStr,
    data: &mut dyn Read,
    (uid, gid): Owner,
    mode: Mode,
    times: &Timestamps,
) -> Result<u64, String> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(errno_text)?;
    let mut f = File::from(fd);
    let written = copy(data, &mut f).map_err(|err| err.to_string())?;
    if uid.is_some() {
        rustix::fs::fchown(&f, uid, gid).map_err(errno_text)?;
    }
    rustix::fs::fchmod(&f, mode).map_err(errno_text)?;
    rustix::fs::futimens(&f, times).map_err(errno_text)?;
    Ok(written)
}

/// Gives `name` in `parent` its owner (not following a symlink).
fn chown_at(parent: &OwnedFd, name: &CStr, (uid, gid): Owner) -> Result<(), String> {
    if uid.is_some() {
        rustix::fs::chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno_text)?;
    }
    Ok(())
}

/// Applies one layer's tar to the rootfs open at `root`.
fn apply_layer(
    root: &OwnedFd,
    layer: &mut dyn Read,
    options: UnpackOptions,
    report: &mut UnpackReport,
) -> Result<(), LayerError> {
    let mut tar = tar::Reader::new(BufReader::with_capacity(256 * 1024, layer));
    let mut applier = Applier {
        root,
        options,
        made: HashSet::new(),
        dirs: Vec::new(),
        cached: None,
    };
    while let Some(entry) = tar.next_entry().map_err(LayerError::Tar)? {
        let mut data = tar.data();
        applier
            .apply(&entry, &mut data, report)
            .map_err(|reason| LayerError::Entry {
                path: entry.display_path(),
                reason,
            })?;
    }
    applier
        .finish_dirs()
        .map_err(|(path, reason)| LayerError::Entry {
            path: tar::display(&path),
            reason,
        })
}

/// Unpacks plain tar streams (bottom layer first) into `target`; what the
/// image store does, for callers with their own layers (and tests).
pub fn unpack_tars(
    target: &Path,
    layers: &mut [&mut dyn Read],
    options: UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    std::fs::create_dir_all(target).map_err(|source| UnpackError::Io {
        what: "cannot create",
        path: target.to_path_buf(),
        source,
    })?;
    let root = open_root(target)?;
    let mut report = UnpackReport::default();
    for (i, layer) in layers.iter_mut().enumerate() {
        apply_layer(&root, *layer, options, &mut report).map_err(|e| e.at(i + 1, "-".into()))?;
    }
    Ok(report)
}

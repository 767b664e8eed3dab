//! Where the data directory is and what lives in it.

use std::path::{Path, PathBuf};

/// `--data-dir`, else `$XDG_DATA_HOME/utter`, else `~/.local/share/utter`,
/// else `./utter-data` when there is no home at all; made absolute, because
/// libcontainer briefly changes the process's working directory while it
/// creates a container.
pub fn resolve(flag: Option<PathBuf>) -> PathBuf {
    let dir = resolve_relative(flag);
    std::path::absolute(&dir).unwrap_or(dir)
}

fn resolve_relative(flag: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = flag {
        return dir;
    }
    let env_dir = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = env_dir("XDG_DATA_HOME") {
        return xdg.join("utter");
    }
    if let Some(home) = env_dir("HOME") {
        return home.join(".local/share/utter");
    }
    PathBuf::from("utter-data")
}

/// The RocksDB directory inside a data directory.
pub fn db(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// The ledger's bare git repository inside a data directory.
pub fn ledger(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger.git")
}

/// The executor's state checkouts (one directory per dapp, rebuilt from
/// the ledger whenever an executor starts).
pub fn checkouts(data_dir: &Path) -> PathBuf {
    data_dir.join("checkouts")
}

/// The image store (index, documents, rootfs cache) inside a data directory.
pub fn images(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

/// The container runtime's directory for a data directory, named by a
/// hash of the data directory's path so two data directories never share
/// containers. As root it is under `/run/utter` (like runc's `/run/runc`),
/// which [`utter_runtime::runtime_base`] keeps on a tmpfs; otherwise under
/// the user's `$XDG_RUNTIME_DIR/utter`, or `/tmp/utter-<uid>` when there is
/// none.
pub fn runtime(data_dir: &Path) -> PathBuf {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    runtime_base().join(format!("{hash:016x}"))
}

/// The directory that holds every data directory's runtime directory.
pub fn runtime_base() -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/utter");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) if Path::new(&dir).is_dir() => PathBuf::from(dir).join("utter"),
        _ => PathBuf::from(format!("/tmp/utter-{}", uid.as_raw())),
    }
}

//! Where the data directory is and what lives in it.

use std::path::{Path, PathBuf};

/// `--data-dir`, else `$XDG_DATA_HOME/utter`, else `~/.local/share/utter`,
/// else `./utter-data` when there is no home at all.
pub fn resolve(flag: Option<PathBuf>) -> PathBuf {
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

/// The image store (index, documents, rootfs cache) inside a data directory.
pub fn images(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

//! The layout of a block's tree and the rules every name in it follows.
//!
//! ```text
//! chain.toml                  chain id, validator and device keys, quorum, test dapps
//! dapps/<name>/dapp.toml      image digest, owner keys, permissions
//! dapps/<name>/state/...      the dapp's state: regular files and directories only
//! block/txs.jsonl             this block's transactions, one per line
//! block/results.jsonl         each transaction's outcome, one per line
//! ```
//!
//! Pure rules only; walking a tree against them is in `verify`. The two
//! configuration files and the name rules are public formats
//! (`utter_formats::config`), re-exported here.

use std::fmt;

pub use utter_formats::config::{
    CHAIN_TOML, ChainConfig, DAPP_TOML, DAPPS, DappConfig, LayoutError, Member, check_name,
};

/// A dapp's state directory inside `dapps/<name>/`.
pub const STATE: &str = "state";
/// The directory of this block's transactions and results.
pub const BLOCK: &str = "block";
/// `block/txs.jsonl`.
pub const TXS: &str = "txs.jsonl";
/// `block/results.jsonl`.
pub const RESULTS: &str = "results.jsonl";

/// The longest state file name (one path component), as on Linux.
pub const MAX_NAME_LEN: usize = 255;
/// The deepest state path, in components.
pub const MAX_DEPTH: usize = 32;

/// Checks one component of a state path: UTF-8, at most
/// [`MAX_NAME_LEN`] bytes, no `/` or NUL, not `.` or `..`, and none of the
/// spellings of `.git` that `git fsck` refuses.
pub fn check_component(name: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(name).map_err(|_| "a name is not UTF-8".to_string())?;
    if name.len() > MAX_NAME_LEN {
        return Err(format!("a name is longer than {MAX_NAME_LEN} bytes"));
    }
    if name.contains(&0) {
        return Err("a name contains a NUL byte".into());
    }
    let options = gix::validate::path::component::Options {
        protect_windows: false,
        protect_hfs: true,
        protect_ntfs: true,
    };
    gix::validate::path::component(name.into(), None, options).map_err(|e| e.to_string())?;
    Ok(text)
}

/// A checked path inside a dapp's `state/` directory, like `members/ab12`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatePath(String);

impl StatePath {
    /// Checks `path` (components separated by `/`, no leading or trailing
    /// `/`, at most [`MAX_DEPTH`] deep).
    pub fn new(path: &str) -> Result<Self, LayoutError> {
        let bad = |why: String| LayoutError::StatePath {
            path: path.to_string(),
            why,
        };
        if path.is_empty() {
            return Err(bad("the path is empty".into()));
        }
        let mut depth = 0;
        for component in path.split('/') {
            check_component(component.as_bytes()).map_err(bad)?;
            depth += 1;
        }
        if depth > MAX_DEPTH {
            return Err(bad(format!("deeper than {MAX_DEPTH} directories")));
        }
        Ok(Self(path.to_string()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StatePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

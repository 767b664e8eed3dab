//! Which files differ between two state trees, descending only into
//! subtrees whose ids differ (cost follows the change, not the state).

use std::collections::HashMap;

use gix::ObjectId;
use gix::bstr::ByteSlice;

use crate::repo::{Ledger, LedgerError};

/// How a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileChange {
    /// New in the second tree.
    Added,
    /// In both, with different contents.
    Modified,
    /// Only in the first tree.
    Removed,
}

type Entries = Vec<(String, bool, ObjectId)>;

impl Ledger {
    fn entries(&self, tree: Option<ObjectId>) -> Result<Entries, LedgerError> {
        let Some(tree) = tree else {
            return Ok(Vec::new());
        };
        let repo = self.repo();
        let tree = repo.find_tree(tree).map_err(|source| LedgerError::Git {
            doing: "reading a tree to compare".into(),
            source,
        })?;
        let decoded = tree.decode().map_err(|source| LedgerError::Git {
            doing: "decoding a tree to compare".into(),
            source,
        })?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| {
                (
                    e.filename.to_str_lossy().into_owned(),
                    e.mode.is_tree(),
                    e.oid.to_owned(),
                )
            })
            .collect())
    }

    /// Files that differ from tree `from` (none: empty) to tree `to`, by
    /// path, sorted.
    pub fn diff_trees(
        &self,
        from: Option<ObjectId>,
        to: ObjectId,
    ) -> Result<Vec<(String, FileChange)>, LedgerError> {
        let mut out = Vec::new();
        self.diff_into(from, Some(to), "", &mut out)?;
        out.sort();
        Ok(out)
    }

    fn diff_into(
        &self,
        from: Option<ObjectId>,
        to: Option<ObjectId>,
        prefix: &str,
        out: &mut Vec<(String, FileChange)>,
    ) -> Result<(), LedgerError> {
        if from == to {
            return Ok(());
        }
        let a = self.entries(from)?;
        let b = self.entries(to)?;
        let by_name = |entries: &'_ Entries| -> HashMap<String, (bool, ObjectId)> {
            entries
                .iter()
                .map(|(n, t, id)| (n.clone(), (*t, *id)))
                .collect()
        };
        let (old_map, new_map) = (by_name(&a), by_name(&b));
        let mut names: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let old = old_map.get(name.as_str());
            let new = new_map.get(name.as_str());
            let path = format!("{prefix}{name}");
            let tree = |e: Option<&(bool, ObjectId)>| e.filter(|e| e.0).map(|e| e.1);
            let blob = |e: Option<&(bool, ObjectId)>| e.filter(|e| !e.0).map(|e| e.1);
            let (old_tree, new_tree) = (tree(old), tree(new));
            if old_tree.is_some() || new_tree.is_some() {
                self.diff_into(old_tree, new_tree, &format!("{path}/"), out)?;
            }
            match (blob(old), blob(new)) {
                (None, Some(_)) => out.push((path, FileChange::Added)),
                (Some(_), None) => out.push((path, FileChange::Removed)),
                (Some(x), Some(y)) if x != y => out.push((path, FileChange::Modified)),
                _ => {}
            }
        }
        Ok(())
    }
}

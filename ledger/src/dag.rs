//! Queries over the block DAG. Every block carries its height (one more
//! than its highest parent), so walks stop as soon as they pass below the
//! height they look for, the way git uses generation numbers.

use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::block::BlockId;
use crate::repo::{Ledger, LedgerError};

impl Ledger {
    /// A block's height.
    pub fn height(&self, id: BlockId) -> Result<u64, LedgerError> {
        Ok(self.node(id)?.height)
    }

    /// True when `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: BlockId, descendant: BlockId) -> Result<bool, LedgerError> {
        let floor = self.height(ancestor)?;
        let mut seen = HashSet::new();
        let mut stack = vec![descendant];
        while let Some(id) = stack.pop() {
            if id == ancestor {
                return Ok(true);
            }
            if !seen.insert(id) {
                continue;
            }
            let node = self.node(id)?;
            if node.height <= floor {
                continue;
            }
            stack.extend(node.parents);
        }
        Ok(false)
    }

    /// The best common ancestors of `a` and `b`: common ancestors none of
    /// which is an ancestor of another (usually one block; several after
    /// criss-cross merges), sorted by id.
    pub fn merge_bases(&self, a: BlockId, b: BlockId) -> Result<Vec<BlockId>, LedgerError> {
        const A: u8 = 1;
        const B: u8 = 2;
        const STALE: u8 = 4;
        let mut flags: HashMap<BlockId, u8> = HashMap::new();
        let mut queue = BinaryHeap::new();
        for (id, flag) in [(a, A), (b, B)] {
            *flags.entry(id).or_default() |= flag;
            queue.push((self.height(id)?, id));
        }
        let mut found = Vec::new();
        // Walk highest first; stop when only stale blocks remain queued.
        while let Some((_, id)) = queue.pop() {
            let mut flag = flags[&id];
            if flag & (A | B) == A | B && flag & STALE == 0 {
                found.push(id);
                flag |= STALE;
                flags.insert(id, flag);
            }
            for parent in self.node(id)?.parents {
                let entry = flags.entry(parent).or_default();
                let before = *entry;
                *entry |= flag;
                if *entry != before {
                    queue.push((self.height(parent)?, parent));
                }
            }
            if queue.iter().all(|(_, id)| flags[id] & STALE != 0) {
                break;
            }
        }
        // Drop any base that is an ancestor of another base.
        let mut bases = Vec::new();
        for &candidate in &found {
            let mut redundant = false;
            for &other in &found {
                if other != candidate && self.is_ancestor(candidate, other)? {
                    redundant = true;
                    break;
                }
            }
            if !redundant {
                bases.push(candidate);
            }
        }
        bases.sort();
        bases.dedup();
        Ok(bases)
    }

    /// The blocks on the way from `from` to `to`: every block that descends
    /// from `from` and is an ancestor of `to` (`to` included, `from` not),
    /// lowest first; like `git rev-list --ancestry-path from..to`. `None`
    /// when `from` is not an ancestor of `to`.
    pub fn ancestry_path(
        &self,
        from: BlockId,
        to: BlockId,
    ) -> Result<Option<Vec<BlockId>>, LedgerError> {
        if !self.is_ancestor(from, to)? {
            return Ok(None);
        }
        let floor = self.height(from)?;
        // Everything above `from`'s height that `to` reaches.
        let mut reach: HashMap<BlockId, (u64, Vec<BlockId>)> = HashMap::new();
        let mut stack = vec![to];
        while let Some(id) = stack.pop() {
            if id == from || reach.contains_key(&id) {
                continue;
            }
            let node = self.node(id)?;
            if node.height <= floor {
                continue;
            }
            stack.extend(node.parents.iter().copied());
            reach.insert(id, (node.height, node.parents));
        }
        let mut order: Vec<(u64, BlockId)> = reach.iter().map(|(id, (h, _))| (*h, *id)).collect();
        order.sort();
        let mut on_path: HashSet<BlockId> = HashSet::new();
        let mut out = Vec::new();
        for (_, id) in order {
            let parents = &reach[&id].1;
            if parents.iter().any(|p| *p == from || on_path.contains(p)) {
                on_path.insert(id);
                out.push(id);
            }
        }
        Ok(Some(out))
    }

    /// Every block reachable from `tips`, parents before children (by
    /// height, then id).
    pub fn ancestors(&self, tips: &[BlockId]) -> Result<Vec<BlockId>, LedgerError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut stack: Vec<BlockId> = tips.to_vec();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let node = self.node(id)?;
            out.push((node.height, id));
            stack.extend(node.parents);
        }
        out.sort();
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }

    /// The blocks reachable from `include` but from none of `exclude`,
    /// parents before children (by height, then id); like `git rev-list
    /// include --not exclude`. The walk stops once everything left to
    /// visit is reachable from `exclude`, so its cost follows how far the
    /// two sides diverged, not the chain's length.
    pub fn only_in(
        &self,
        include: &[BlockId],
        exclude: &[BlockId],
    ) -> Result<Vec<BlockId>, LedgerError> {
        const IN: u8 = 1;
        const OUT: u8 = 2;
        let mut flags: HashMap<BlockId, u8> = HashMap::new();
        let mut queue = BinaryHeap::new();
        // Queued blocks not (yet) known to be reachable from `exclude`.
        let mut live = 0usize;
        for (tips, flag) in [(include, IN), (exclude, OUT)] {
            for id in tips {
                let entry = flags.entry(*id).or_default();
                if *entry & flag == 0 {
                    *entry |= flag;
                    queue.push((self.height(*id)?, *id));
                }
            }
        }
        for (_, id) in &queue {
            if flags[id] & OUT == 0 {
                live += 1;
            }
        }
        // Highest first: every child of a block is visited before it, so a
        // block's flags are final when it is popped.
        let mut done: HashSet<BlockId> = HashSet::new();
        while let Some((_, id)) = queue.pop() {
            let flag = flags[&id];
            if !done.insert(id) {
                continue;
            }
            if flag & OUT == 0 {
                live -= 1;
            } else if live == 0 {
                break;
            }
            for parent in self.node(id)?.parents {
                let entry = flags.entry(parent).or_default();
                let before = *entry;
                *entry |= flag;
                if *entry == before {
                    continue;
                }
                if done.contains(&parent) {
                    continue;
                }
                if before == 0 {
                    queue.push((self.height(parent)?, parent));
                    if *entry & OUT == 0 {
                        live += 1;
                    }
                } else if before & OUT == 0 && *entry & OUT != 0 {
                    // Already queued as live; now reachable from `exclude`.
                    live -= 1;
                }
            }
        }
        let mut out = Vec::new();
        for (id, flag) in &flags {
            if *flag == IN {
                out.push((self.height(*id)?, *id));
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }
}

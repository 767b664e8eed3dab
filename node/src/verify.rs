//! Re-executing a whole ledger (`utter verify --reexecute`): every block
//! reachable from a branch, parents first, through the container helper,
//! on checkouts of its own (a running node's are in use).

use utter_executor::{Executor, Verdict};
use utter_ledger::BlockId;

use crate::home::{Home, Opened};
use crate::run::NodeError;

/// A block re-execution found wrong.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// The block.
    pub id: BlockId,
    /// Its height.
    pub height: u64,
    /// Where it differs from what its transactions make.
    pub why: String,
}

/// What re-execution found.
#[derive(Debug, Clone, Default)]
pub struct Reexecuted {
    /// Blocks that re-executed to exactly their state.
    pub checked: usize,
    /// Blocks not re-executed (genesis).
    pub skipped: usize,
    /// Blocks that did not.
    pub bad: Vec<Mismatch>,
}

/// Re-executes every block reachable from a branch; `progress` hears
/// (done, total) after each block.
pub fn reexecute_all(
    home: &Home,
    opened: &Opened,
    mut progress: impl FnMut(u64, u64),
) -> Result<Reexecuted, NodeError> {
    let ledger = &opened.ledger;
    let tips: Vec<BlockId> = ledger.branches()?.into_iter().map(|(_, id)| id).collect();
    let blocks = ledger.ancestors(&tips)?;
    let mut images = home.node_images(&opened.store)?;
    let mut helper = home.spawn_helper()?;
    let scratch = tempfile::Builder::new()
        .prefix("verify-checkouts-")
        .tempdir_in(home.root())
        .map_err(|source| NodeError::Io {
            what: format!("make a scratch directory in {}", home.root().display()),
            source,
        })?;
    let mut executor = Executor::new(ledger, scratch.path())?;
    let mut out = Reexecuted::default();
    let total = blocks.len() as u64;
    for (i, id) in blocks.iter().enumerate() {
        let block = ledger.block(*id)?;
        match executor.reexecute(&mut helper, &mut images, &block)? {
            Verdict::Valid => out.checked += 1,
            Verdict::Skipped(_) => out.skipped += 1,
            Verdict::Invalid(why) => out.bad.push(Mismatch {
                id: *id,
                height: block.height,
                why,
            }),
        }
        progress(i as u64 + 1, total);
    }
    Ok(out)
}

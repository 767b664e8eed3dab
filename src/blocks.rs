//! What `log`, `show` and `verify` share: a block's verification report,
//! as a line and as JSON.

use anyhow::Result;
use serde_json::json;
use utter_ledger::{BlockId, BlockReport, Ledger, Verification};

use crate::ui::Progress;

/// Verifies the blocks reachable from `tips` (all branches: `None`).
pub fn verify_from(ledger: &Ledger, tips: Option<&[BlockId]>, quiet: bool) -> Result<Verification> {
    let mut progress = Progress::items("verifying blocks", 0, quiet);
    let report = ledger.verify(tips, false, |done, total| {
        progress.set_total(total);
        progress.set(done);
    })?;
    progress.finish();
    Ok(report)
}

/// `valid`, or why not.
pub fn status(report: &BlockReport) -> String {
    match &report.verdict {
        Ok(()) => "valid".into(),
        Err(e) => format!("INVALID: block {e}"),
    }
}

/// A block's report as JSON.
pub fn report_json(r: &BlockReport) -> serde_json::Value {
    json!({
        "id": r.id.to_string(),
        "height": r.height,
        "parents": r.parents.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "signer": r.signer,
        "time": r.time,
        "summary": r.summary,
        "txs": r.txs,
        "valid": r.verdict.is_ok(),
        "error": r.verdict.as_ref().err().map(|e| format!("block {} {e}", r.id)),
    })
}

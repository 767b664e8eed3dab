//! Reading what a dapp run left: exactly one result per transaction and
//! the state changes, or the reason every transaction of the dapp is
//! rejected.

use utter_ledger::layout::{DAPP_TOML, DAPPS, DappConfig, LayoutError, StatePath};
use utter_ledger::{Block, Change, Ledger, LedgerError, Status, TxId, TxResult};
use utter_runtime::Ran;
use utter_runtime::dapp::ChangeKind;

use crate::ExecError;

/// The longest a dapp's stderr is quoted in a rejection reason.
const REASON_STDERR: usize = 400;

pub(crate) fn read_dapp_config(
    ledger: &Ledger,
    parent: &Block,
    dapp: &str,
) -> Result<DappConfig, ExecError> {
    let path = format!("{DAPPS}/{dapp}/{DAPP_TOML}");
    let bytes = ledger
        .read_value(parent, &path)?
        .ok_or_else(|| LedgerError::Malformed {
            id: parent.id,
            why: format!("dapp {dapp} has no {DAPP_TOML}"),
        })?;
    Ok(DappConfig::parse(dapp, &bytes)?)
}

pub(crate) fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text.len().saturating_sub(REASON_STDERR);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    format!(": {}", &text[start..])
}

/// One line of a dapp's `results.jsonl`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DappResult {
    status: Status,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    output: Option<serde_json::Value>,
}

impl DappResult {
    pub(crate) fn into_result(self, tx: TxId) -> TxResult {
        match self.status {
            Status::Accepted => TxResult {
                tx,
                status: Status::Accepted,
                reason: self.reason,
                output: self.output,
            },
            Status::Rejected => TxResult {
                tx,
                status: Status::Rejected,
                reason: Some(self.reason.unwrap_or_else(|| "rejected by the dapp".into())),
                output: self.output,
            },
        }
    }
}

pub(crate) type DappChanges = Vec<(StatePath, Change)>;

/// Reads a finished run: `n` results and the state changes, or the reason
/// every transaction of the dapp is rejected.
pub(crate) fn take_run(
    ran: &Ran,
    dapp: &str,
    n: usize,
) -> Result<(Vec<DappResult>, DappChanges), String> {
    if !ran.finished.outcome.success() {
        return Err(format!(
            "dapp {dapp} failed: it {}{}",
            ran.finished.outcome,
            stderr_tail(&ran.finished.stderr)
        ));
    }
    let bytes = ran
        .read_results()
        .map_err(|e| format!("dapp {dapp}'s results cannot be read: {e}"))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("dapp {dapp} wrote results that are not UTF-8"))?;
    let mut results = Vec::with_capacity(n);
    for (i, line) in text.lines().enumerate() {
        let r: DappResult = serde_json::from_str(line).map_err(|e| {
            format!(
                "dapp {dapp} wrote result line {} that is not a result ({e}); \
                 each line is {{\"status\":\"accepted\"|\"rejected\",\"reason\"?,\"output\"?}}",
                i + 1
            )
        })?;
        results.push(r);
    }
    if results.len() != n {
        return Err(format!(
            "dapp {dapp} wrote {} results for {n} transactions; it must write one line per transaction",
            results.len()
        ));
    }
    let mut changes = Vec::new();
    for change in &ran.changes {
        let bad_path = |e: LayoutError| format!("dapp {dapp} wrote a state path it may not: {e}");
        match &change.kind {
            ChangeKind::File { .. } => {
                let path = StatePath::new(&change.path).map_err(bad_path)?;
                let bytes = ran
                    .file(&change.path)
                    .map_err(|e| format!("dapp {dapp}'s state change cannot be read: {e}"))?;
                changes.push((path, Change::Put(bytes)));
            }
            ChangeKind::Removed => {
                changes.push((
                    StatePath::new(&change.path).map_err(bad_path)?,
                    Change::Remove,
                ));
            }
            ChangeKind::Dir { opaque: true } => {
                // Everything that was under it is gone; what is in it now
                // follows as its own changes.
                changes.push((
                    StatePath::new(&change.path).map_err(bad_path)?,
                    Change::Remove,
                ));
            }
            ChangeKind::Dir { opaque: false } => {
                StatePath::new(&change.path).map_err(bad_path)?;
            }
            ChangeKind::Symlink { .. } => {
                return Err(format!(
                    "dapp {dapp} made a symlink at {} in its state; state holds only files and directories",
                    change.path
                ));
            }
        }
    }
    Ok((results, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_quoted_from_its_end() {
        assert_eq!(stderr_tail(b""), "");
        assert_eq!(stderr_tail(b" oops\n"), ": oops");
        let long = "é".repeat(500);
        let tail = stderr_tail(long.as_bytes());
        assert!(tail.len() <= REASON_STDERR + 2);
    }
}

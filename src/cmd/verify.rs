//! `utter verify`: every block on every branch (signatures, signers,
//! parents, heights, layout, transactions), every commit certificate, and
//! with `--reexecute` every block's state against what its transactions
//! make.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use utter_ledger::{BlockId, BlockReport};
use utter_node::Home;

use crate::blocks::{report_json, verify_from};
use crate::ui::{Progress, plural};

/// `utter verify`
#[derive(Args)]
pub struct VerifyArgs {
    /// Also re-execute every block's transactions with the dapps (in
    /// containers) and check each block's state is what they make
    #[arg(long)]
    reexecute: bool,
    /// Print JSON: counts, and the first invalid block if any
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, args: VerifyArgs) -> Result<ExitCode> {
    let opened = home.open_read_only()?;
    let ledger = &opened.ledger;
    let branches = ledger.branches()?;
    let report = verify_from(ledger, None, args.json)?;
    let bad: Vec<&BlockReport> = report
        .blocks
        .iter()
        .filter(|r| r.verdict.is_err())
        .collect();
    // Re-execution only makes sense on blocks that are well-formed.
    let reexecuted = if args.reexecute && bad.is_empty() {
        let mut progress = Progress::items("re-executing blocks", 0, args.json);
        let found = utter_node::verify::reexecute_all(home, &opened, |done, total| {
            progress.set_total(total);
            progress.set(done);
        })?;
        progress.finish();
        Some(found)
    } else {
        None
    };
    let mismatched = reexecuted.as_ref().map_or(0, |r| r.bad.len());
    // Commit certificates (git notes) against each block's validator set.
    let mut certified = 0usize;
    let mut bad_certs: Vec<(BlockId, String)> = Vec::new();
    for r in report.blocks.iter().filter(|r| r.verdict.is_ok()) {
        match ledger.certificate(r.id) {
            Ok(None) => {}
            Ok(Some(cert)) => match ledger.check_certificate(&ledger.block(r.id)?, &cert)? {
                Ok(_) => certified += 1,
                Err(e) => bad_certs.push((r.id, e.to_string())),
            },
            Err(e) => bad_certs.push((r.id, e.to_string())),
        }
    }
    if args.json {
        println!(
            "{}",
            json!({
                "blocks": report.blocks.len(),
                "transactions": report.txs(),
                "branches": branches.len(),
                "invalid": bad.len() + mismatched + bad_certs.len(),
                "first_invalid": bad.first().map(|r| report_json(r)),
                "certified": certified,
                "bad_certificates": bad_certs.iter().map(|(id, why)| json!({
                    "id": id.to_string(),
                    "error": why,
                })).collect::<Vec<_>>(),
                "reexecuted": reexecuted.as_ref().map(|r| json!({
                    "valid": r.checked,
                    "skipped": r.skipped,
                    "invalid": r.bad.iter().map(|m| json!({
                        "id": m.id.to_string(),
                        "height": m.height,
                        "error": m.why,
                    })).collect::<Vec<_>>(),
                })),
            })
        );
    } else if let Some((id, why)) = bad_certs.first() {
        eprintln!("error: block {id} has a commit certificate that does not hold: {why}");
        if bad_certs.len() > 1 {
            eprintln!("       and {} more bad certificate(s)", bad_certs.len() - 1);
        }
    } else if let Some(m) = reexecuted.as_ref().and_then(|r| r.bad.first()) {
        eprintln!(
            "error: block {} at height {} is not what its transactions make: {}",
            m.id, m.height, m.why
        );
        if mismatched > 1 {
            eprintln!(
                "       and {} more block(s) that re-execute differently",
                mismatched - 1
            );
        }
    } else if let Some(first) = bad.first() {
        eprintln!(
            "error: block {} at height {} {}",
            first.id,
            first.height,
            first
                .verdict
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        if bad.len() > 1 {
            eprintln!(
                "       and {} more invalid block(s), most because they descend from it (`utter log` marks each)",
                bad.len() - 1
            );
        }
    } else {
        println!(
            "verified {} and {} on {}: all valid",
            plural(report.blocks.len(), "block", "blocks"),
            plural(report.txs(), "transaction", "transactions"),
            plural(branches.len(), "branch", "branches"),
        );
        if certified > 0 {
            println!(
                "{} carry a commit certificate with a quorum of their validators' votes",
                plural(certified, "block", "blocks")
            );
        }
        if let Some(r) = &reexecuted {
            println!(
                "re-executed {}, merges included: each gives exactly its state (genesis is given, not re-executed)",
                plural(r.checked, "block", "blocks"),
            );
        }
    }
    Ok(
        if bad.is_empty() && mismatched == 0 && bad_certs.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

//! Changing `chain.toml`: the `chain set` transaction and its approvals.
//!
//! Only a quorum of the current validators can change who validates. Each
//! of them approves one exact next `chain.toml`, over a block it saw
//! committed, with an SSH signature (namespace `utter-chain`) over
//!
//! ```text
//! utter chain v1
//! chain <chain>
//! at <block id>
//! epoch <the current epoch>
//!
//! <the next chain.toml>
//! ```
//!
//! The transaction is `{"dapp": "chain", "action": "set", "args":
//! {"config": <the desired chain.toml>, "at": <block id>, "approvals":
//! [<signature>, …]}}`. The executor applies it in a block that descends
//! from `at` while the state's `chain.toml` is still the one at `at`; the
//! next `chain.toml` is [`ChainConfig::next`] of the current one, so a
//! change of validators goes through a joint epoch (both sets vote) and a
//! second `chain set` with the same validators completes it. Binding the
//! approvals to a committed block is what keeps a change safe: the second
//! step can only build on a committed block of the joint epoch
//! (ARCHITECTURE.md has the argument).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::block::BlockId;
use crate::key::{KeyError, Keypair, SignatureError, Signer};
use crate::layout::ChainConfig;
use crate::repo::{Ledger, LedgerError};

pub use utter_formats::config::{
    CHAIN_DAPP, DEPLOY_ACTION, DeployArgs, REMOVE_ACTION, RemoveArgs, SET_ACTION, UPGRADE_ACTION,
    UpgradeArgs, is_image_digest,
};

/// The SSH signature namespace of approvals.
pub const CHAIN_NAMESPACE: &str = "utter-chain";

const FILE_MAGIC: &str = "utter chain approval v1";

/// What validators sign to approve a change.
pub fn message(chain: &str, at: BlockId, epoch: u64, next: &ChainConfig) -> String {
    format!(
        "utter chain v1\nchain {chain}\nat {at}\nepoch {epoch}\n\n{}",
        next.to_toml()
    )
}

/// The arguments of a `chain set` transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetArgs {
    /// The desired `chain.toml` (without `epoch` and `outgoing`, which
    /// utter sets).
    pub config: String,
    /// The committed block the approvals were given over.
    pub at: String,
    /// The validators' armored SSH signatures over [`message`].
    pub approvals: Vec<String>,
}

/// One validator's approval, as `utter chain approve` writes it: the block
/// and epoch it was given over, then the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The committed block whose `chain.toml` it changes.
    pub at: BlockId,
    /// That `chain.toml`'s epoch.
    pub epoch: u64,
    /// The armored SSH signature over [`message`].
    pub signature: String,
}

impl Approval {
    /// `key`'s approval of changing `current` (the `chain.toml` at the
    /// committed block `at`) to `next`.
    pub fn sign(
        key: &Keypair,
        current: &ChainConfig,
        at: BlockId,
        next: &ChainConfig,
    ) -> Result<Self, KeyError> {
        let msg = message(&current.chain, at, current.epoch, next);
        let signature = key.sign(CHAIN_NAMESPACE, msg.as_bytes())?;
        Ok(Self {
            at,
            epoch: current.epoch,
            signature: signature.trim_end().to_string(),
        })
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        format!(
            "{FILE_MAGIC}\nat {}\nepoch {}\n{}\n",
            self.at, self.epoch, self.signature
        )
    }

    /// Reads an approval file.
    pub fn parse(text: &str) -> Result<Self, GovError> {
        let bad = |why: &str| GovError::BadApproval {
            approval: 0,
            why: format!("not an approval file ({why})"),
        };
        let mut lines = text.lines();
        if lines.next() != Some(FILE_MAGIC) {
            return Err(bad(&format!("it does not start with {FILE_MAGIC:?}")));
        }
        let at = lines
            .next()
            .and_then(|l| l.strip_prefix("at "))
            .and_then(|h| h.parse::<BlockId>().ok())
            .ok_or_else(|| bad("no `at <block id>` line"))?;
        let epoch = lines
            .next()
            .and_then(|l| l.strip_prefix("epoch "))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("no `epoch <n>` line"))?;
        let signature = lines.collect::<Vec<_>>().join("\n").trim().to_string();
        if !signature.starts_with("-----BEGIN SSH SIGNATURE-----") {
            return Err(bad("no SSH signature after the epoch line"));
        }
        Ok(Self {
            at,
            epoch,
            signature,
        })
    }
}

/// Why a `chain set` transaction is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovError {
    /// The arguments are not `{config, at, approvals}`.
    #[error(
        "chain set takes {{\"config\": the new chain.toml, \"at\": a block id, \"approvals\": [signatures]}}: {0}"
    )]
    Args(String),
    /// The desired `chain.toml` is not valid.
    #[error("the new chain.toml is not valid: {0}")]
    Config(String),
    /// It sets what utter manages.
    #[error("the new chain.toml sets {0}, which utter manages: leave it out")]
    Managed(&'static str),
    /// It names another chain.
    #[error("the new chain.toml names chain {found:?}; this chain is {chain:?}")]
    OtherChain {
        /// This chain.
        chain: String,
        /// The one it names.
        found: String,
    },
    /// It changes nothing.
    #[error("the new chain.toml is the current one (epoch {0}); nothing to change")]
    Unchanged(u64),
    /// `at` is not a block here.
    #[error("the approvals were given at block {0}, which this ledger does not have")]
    UnknownAt(String),
    /// The block does not descend from `at`.
    #[error(
        "the approvals were given at block {0}, which this block does not descend from; approve at a block on this chain's main"
    )]
    NotUnder(BlockId),
    /// `chain.toml` changed since the approvals.
    #[error(
        "the approvals were given over chain.toml epoch {then} (at block {at}), but this block's is epoch {now}; approve again"
    )]
    Moved {
        /// The block.
        at: BlockId,
        /// Its epoch.
        then: u64,
        /// The epoch now.
        now: u64,
    },
    /// An approval does not verify.
    #[error("approval {approval} {why}")]
    BadApproval {
        /// Which approval (from 1; 0 for a file).
        approval: usize,
        /// Why.
        why: String,
    },
    /// Two approvals by one validator.
    #[error("validator {0} approved twice")]
    Twice(String),
    /// Fewer than the quorum.
    #[error("{found} of the validators approved; changing chain.toml takes {quorum}")]
    TooFew {
        /// Distinct validators that approved.
        found: usize,
        /// The current quorum.
        quorum: u32,
    },
}

impl GovError {
    fn approval(approval: usize, error: SignatureError) -> Self {
        Self::BadApproval {
            approval,
            why: format!("does not verify: {error}"),
        }
    }
}

/// Checks the desired config and the approvals against `current` (the
/// `chain.toml` at `at`) and returns the next `chain.toml` with the names
/// of the validators who approved. The ledger checks of `at` are
/// [`Ledger::check_chain_set`]'s.
pub fn check_approvals(
    current: &ChainConfig,
    at: BlockId,
    desired: &str,
    approvals: &[String],
) -> Result<(ChainConfig, Vec<String>), GovError> {
    let next = next_config(current, desired)?;
    let msg = message(&current.chain, at, current.epoch, &next);
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for (i, signature) in approvals.iter().enumerate() {
        let signer = Signer::of_signature(signature).map_err(|e| GovError::approval(i + 1, e))?;
        signer
            .verify(CHAIN_NAMESPACE, msg.as_bytes(), signature)
            .map_err(|e| GovError::approval(i + 1, e))?;
        let key = signer.to_openssh();
        let Some(member) = current
            .validators
            .iter()
            .find(|m| Signer::parse(&m.key).is_some_and(|k| k.to_openssh() == key))
        else {
            return Err(GovError::BadApproval {
                approval: i + 1,
                why: format!(
                    "is by {}, which is not a validator in chain.toml epoch {}",
                    signer.fingerprint(),
                    current.epoch
                ),
            });
        };
        if !seen.insert(key) {
            return Err(GovError::Twice(member.name.clone()));
        }
        names.push(member.name.clone());
    }
    if names.len() < current.quorum as usize {
        return Err(GovError::TooFew {
            found: names.len(),
            quorum: current.quorum,
        });
    }
    Ok((next, names))
}

/// The `chain.toml` that changing `current` to `desired` (a TOML text;
/// `epoch` and `outgoing` left out or as they are now) leads to
/// ([`ChainConfig::next`]).
pub fn next_config(current: &ChainConfig, desired: &str) -> Result<ChainConfig, GovError> {
    let desired =
        ChainConfig::parse(desired.as_bytes()).map_err(|e| GovError::Config(e.to_string()))?;
    // Left out, or as they are now (an edited copy of `utter chain show`).
    if desired.epoch != 0 && desired.epoch != current.epoch {
        return Err(GovError::Managed("epoch"));
    }
    let unset = desired.outgoing.is_empty() && desired.outgoing_quorum == 0;
    let as_now =
        desired.outgoing == current.outgoing && desired.outgoing_quorum == current.outgoing_quorum;
    if !unset && !as_now {
        return Err(GovError::Managed("outgoing validators"));
    }
    if desired.chain != current.chain {
        return Err(GovError::OtherChain {
            chain: current.chain.clone(),
            found: desired.chain,
        });
    }
    let next = current.next(&desired);
    if current.outgoing.is_empty() && next.outgoing.is_empty() {
        let mut same = next.clone();
        same.epoch = current.epoch;
        if same == *current {
            return Err(GovError::Unchanged(current.epoch));
        }
    }
    Ok(next)
}

impl Ledger {
    /// Checks a `chain set` transaction's `args` for a block over
    /// `parents` whose state's `chain.toml` is `current`; returns the next
    /// `chain.toml` and who approved it, or why the transaction is
    /// rejected.
    pub fn check_chain_set(
        &self,
        parents: &[BlockId],
        current: &ChainConfig,
        args: &serde_json::Value,
    ) -> Result<Result<(ChainConfig, Vec<String>), GovError>, LedgerError> {
        let args: SetArgs = match serde_json::from_value(args.clone()) {
            Ok(a) => a,
            Err(e) => return Ok(Err(GovError::Args(e.to_string()))),
        };
        let Ok(at) = args.at.parse::<BlockId>() else {
            return Ok(Err(GovError::Args(format!(
                "at {:?} is not a block id",
                args.at
            ))));
        };
        let then = match self.block(at) {
            Ok(block) => self.chain_config(&block)?,
            Err(LedgerError::NoBlock(_)) => return Ok(Err(GovError::UnknownAt(args.at))),
            Err(e) => return Err(e),
        };
        let mut under = false;
        for p in parents {
            if self.is_ancestor(at, *p)? {
                under = true;
                break;
            }
        }
        if !under {
            return Ok(Err(GovError::NotUnder(at)));
        }
        if then != *current {
            return Ok(Err(GovError::Moved {
                at,
                then: then.epoch,
                now: current.epoch,
            }));
        }
        Ok(check_approvals(current, at, &args.config, &args.approvals))
    }
}

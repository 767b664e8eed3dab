//! The `chain` dapp's native actions, applied in block order before any
//! dapp runs: `set` (a new `chain.toml`, see `utter_ledger::governance`),
//! `deploy`, `upgrade` and `remove`.
//!
//! - `deploy {name, image, owners, permissions}`: the signer must be one
//!   of `chain.toml`'s deployers (the validators when it names none); the
//!   name must be free; the image must be on this node. The dapp's
//!   `dapp.toml` is written with `deployed_at` = this block's height, its
//!   state starts empty, and transactions reach it from the next block.
//! - `upgrade {name, image}`: the signer must own the dapp; the new
//!   image's `test` entry runs on the dapp's current state (the parent
//!   block's) and must pass, or the upgrade is rejected with the test's
//!   output. The state is kept; the new image runs from the next block
//!   (this block's transactions to the dapp still run the old one).
//! - `remove {name}`: the signer must own the dapp; its directory leaves
//!   the tree (the blocks before keep its history). Its other
//!   transactions in this block are rejected.
//!
//! An image this node does not have cannot be judged: proposing, such a
//! transaction is left out of the block (refused, so it can wait for the
//! image); checking a block, it makes the block one this node cannot
//! accept. Every other failure is a rejection with its reason.

use std::collections::HashSet;

use utter_ledger::governance::{
    DEPLOY_ACTION, DeployArgs, REMOVE_ACTION, RemoveArgs, SET_ACTION, UPGRADE_ACTION, UpgradeArgs,
    is_image_digest,
};
use utter_ledger::key::Signer;
use utter_ledger::layout::{ChainConfig, DappConfig, check_name};
use utter_ledger::tx::TxError;
use utter_ledger::{Changes, TxResult};
use utter_runtime::dapp::Entry;

use crate::host::{Host, ImageError, Images};
use crate::run::{read_dapp_config, stderr_tail};
use crate::{Base, Batch, CHAIN_DAPP, ExecError, Executor, NotRun, Slot};

/// A `chain` transaction waiting for its turn.
pub(crate) struct Native {
    pub action: String,
    pub args: serde_json::Value,
    pub signer: String,
}

/// What the native actions of a block left for the rest of it.
#[derive(Default)]
pub(crate) struct Applied {
    /// Dapps removed in this block: their transactions are rejected.
    pub removed: HashSet<String>,
    /// Slots whose image is not here (refused, not judged).
    pub unavailable: Vec<(usize, TxError)>,
}

/// One native transaction's fate.
enum Fate {
    Accepted,
    Rejected(String),
    /// Its image is not on this node.
    Unavailable(String),
}

fn args<T: serde::de::DeserializeOwned>(
    action: &str,
    shape: &str,
    value: serde_json::Value,
) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("{CHAIN_DAPP} {action} takes {shape}: {e}"))
}

impl Executor<'_> {
    /// Applies the `chain` transactions of `slots`, in block order, each
    /// against the state the ones before it left.
    pub(crate) fn apply_native(
        &self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        batch: &Batch<'_>,
        base: &Base,
        slots: &mut [Slot],
        changes: &mut Changes,
    ) -> Result<Applied, ExecError> {
        let mut config = base.config.clone();
        let mut applied = Applied::default();
        // Dapps as the transactions so far leave them.
        let mut dapps: HashSet<String> = base.dapps.iter().cloned().collect();
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(native) = slot.native.take() else {
                continue;
            };
            if slot.result.is_some() {
                continue;
            }
            let fate = match native.action.as_str() {
                SET_ACTION => {
                    match self
                        .ledger
                        .check_chain_set(batch.parents, &config, &native.args)?
                    {
                        Ok((next, _)) => {
                            changes.set_chain(&next)?;
                            config = next;
                            Fate::Accepted
                        }
                        Err(e) => Fate::Rejected(e.to_string()),
                    }
                }
                DEPLOY_ACTION => {
                    self.deploy(images, batch, &config, &native, &mut dapps, changes)?
                }
                UPGRADE_ACTION => {
                    self.upgrade(host, images, batch, base, &native, &dapps, changes)?
                }
                REMOVE_ACTION => match self.remove(batch, base, &native, &dapps, changes)? {
                    Ok(name) => {
                        dapps.remove(&name);
                        applied.removed.insert(name);
                        Fate::Accepted
                    }
                    Err(why) => Fate::Rejected(why),
                },
                other => Fate::Rejected(format!(
                    "the {CHAIN_DAPP} dapp's actions are {SET_ACTION}, {DEPLOY_ACTION}, \
                     {UPGRADE_ACTION} and {REMOVE_ACTION}, not {other:?}"
                )),
            };
            match fate {
                Fate::Accepted => slot.result = Some(TxResult::accepted(slot.id)),
                Fate::Rejected(why) => slot.reject(why),
                Fate::Unavailable(image) => {
                    applied
                        .unavailable
                        .push((i, TxError::ImageMissing { image }));
                }
            }
        }
        Ok(applied)
    }

    fn deploy(
        &self,
        images: &mut dyn Images,
        batch: &Batch<'_>,
        config: &ChainConfig,
        native: &Native,
        dapps: &mut HashSet<String>,
        changes: &mut Changes,
    ) -> Result<Fate, ExecError> {
        let shape = "{\"name\", \"image\": \"sha256:…\", \"owners\": [keys], \"permissions\": {…}}";
        let a: DeployArgs = match args(DEPLOY_ACTION, shape, native.args.clone()) {
            Ok(a) => a,
            Err(why) => return Ok(Fate::Rejected(why)),
        };
        let signer = Signer::parse(&native.signer).expect("a verified signer parses");
        if !config.may_deploy(&signer) {
            let who = if config.deployers.is_empty() {
                "the validators"
            } else {
                "the deployers"
            };
            return Ok(Fate::Rejected(format!(
                "{} may not deploy dapps on this chain: chain.toml lets {who} ({}) deploy; \
                 a quorum of validators changes that list with `utter chain`",
                native.signer,
                config.deployer_names().join(", ")
            )));
        }
        if let Err(e) = check_name("dapp", &a.name) {
            return Ok(Fate::Rejected(e.to_string()));
        }
        if dapps.contains(&a.name) {
            return Ok(Fate::Rejected(format!(
                "dapp {:?} is already deployed; its owners change it with `utter dapp upgrade`",
                a.name
            )));
        }
        let mut owners = Vec::new();
        for owner in if a.owners.is_empty() {
            std::slice::from_ref(&native.signer)
        } else {
            &a.owners[..]
        } {
            match Signer::parse(owner) {
                Some(key) => owners.push(key.to_openssh()),
                None => {
                    return Ok(Fate::Rejected(format!(
                        "owner {owner:?} is not an ssh-ed25519 public key"
                    )));
                }
            }
        }
        if let Some(fate) = image_fate(images, &a.image) {
            return Ok(fate);
        }
        let dapp = DappConfig {
            image: a.image,
            owners,
            permissions: a.permissions,
            deployed_at: Some(batch.height),
            upgraded_at: None,
        };
        changes.set_dapp(&a.name, &dapp)?;
        dapps.insert(a.name);
        Ok(Fate::Accepted)
    }

    /// The dapp `name` as of the parent, if the signer owns it.
    fn owned(
        &self,
        batch: &Batch<'_>,
        base: &Base,
        native: &Native,
        name: &str,
        dapps: &HashSet<String>,
    ) -> Result<Result<DappConfig, String>, ExecError> {
        if !dapps.contains(name) {
            return Ok(Err(format!("there is no dapp {name:?} on this chain")));
        }
        if !base.dapps.iter().any(|d| d == name) {
            return Ok(Err(format!(
                "dapp {name:?} was deployed in this block; it can be changed from the next"
            )));
        }
        let current = read_dapp_config(self.ledger, batch.parent, name)?;
        let signer = Signer::parse(&native.signer).expect("a verified signer parses");
        let owns = current
            .owners
            .iter()
            .any(|o| Signer::parse(o).as_ref() == Some(&signer));
        if !owns {
            return Ok(Err(format!(
                "{} does not own dapp {name:?}; its owners are {}",
                native.signer,
                if current.owners.is_empty() {
                    "none (it was installed at genesis and cannot be changed by transaction)"
                        .to_string()
                } else {
                    current.owners.join(", ")
                }
            )));
        }
        Ok(Ok(current))
    }

    #[allow(clippy::too_many_arguments)]
    fn upgrade(
        &self,
        host: &mut dyn Host,
        images: &mut dyn Images,
        batch: &Batch<'_>,
        base: &Base,
        native: &Native,
        dapps: &HashSet<String>,
        changes: &mut Changes,
    ) -> Result<Fate, ExecError> {
        let a: UpgradeArgs = match args(
            UPGRADE_ACTION,
            "{\"name\", \"image\": \"sha256:…\"}",
            native.args.clone(),
        ) {
            Ok(a) => a,
            Err(why) => return Ok(Fate::Rejected(why)),
        };
        let mut current = match self.owned(batch, base, native, &a.name, dapps)? {
            Ok(c) => c,
            Err(why) => return Ok(Fate::Rejected(why)),
        };
        if current.image == a.image {
            return Ok(Fate::Rejected(format!(
                "dapp {:?} already runs image {}",
                a.name, a.image
            )));
        }
        if let Some(fate) = image_fate(images, &a.image) {
            return Ok(fate);
        }
        // The new image must hold the dapp's invariants over the state it
        // inherits.
        let context = batch.context(&base.chain, &a.name, Entry::Test);
        let mut spent = std::time::Duration::ZERO;
        let ran = match self.run(
            host,
            images,
            &a.image,
            "the upgrade of dapp",
            &a.name,
            context,
            Vec::new(),
            &mut spent,
            // A new image: every rule of it is checked.
            None,
        )? {
            Ok(ran) => ran,
            Err(NotRun(why)) => return Ok(Fate::Rejected(why)),
        };
        let failed = (!ran.finished.outcome.success()).then(|| {
            format!(
                "the new image's test failed on dapp {:?}'s current state, so it keeps image {}: \
                 the test {}{}",
                a.name,
                current.image,
                ran.finished.outcome,
                stderr_tail(&ran.finished.stderr)
            )
        });
        host.release(ran);
        if let Some(why) = failed {
            return Ok(Fate::Rejected(why));
        }
        current.image = a.image;
        current.upgraded_at = Some(batch.height);
        changes.set_dapp(&a.name, &current)?;
        Ok(Fate::Accepted)
    }

    /// The removed dapp's name, or why not.
    fn remove(
        &self,
        batch: &Batch<'_>,
        base: &Base,
        native: &Native,
        dapps: &HashSet<String>,
        changes: &mut Changes,
    ) -> Result<Result<String, String>, ExecError> {
        let a: RemoveArgs = match args(REMOVE_ACTION, "{\"name\"}", native.args.clone()) {
            Ok(a) => a,
            Err(why) => return Ok(Err(why)),
        };
        if let Err(why) = self.owned(batch, base, native, &a.name, dapps)? {
            return Ok(Err(why));
        }
        changes.remove_dapp(&a.name)?;
        Ok(Ok(a.name))
    }
}

/// `None` when `image` names an image this node can run; else its fate.
fn image_fate(images: &mut dyn Images, image: &str) -> Option<Fate> {
    if !is_image_digest(image) {
        return Some(Fate::Rejected(format!(
            "image {image:?} is not an image digest (sha256:<64 hex digits>)"
        )));
    }
    match images.rootfs(image) {
        Ok(_) => None,
        Err(ImageError::Missing(_)) => Some(Fate::Unavailable(image.to_string())),
        Err(e) => Some(Fate::Rejected(format!("image {image} cannot run: {e}"))),
    }
}

//! `chain.toml` and `dapp.toml`, and the rules names follow: who may sign
//! and certify blocks, which image a dapp runs, which names a chain, dapp
//! or member may have.
//!
//! Pure rules; where these files sit in a block's tree is the ledger's.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::key::Signer;

/// `chain.toml`, at the root of every block's tree.
pub const CHAIN_TOML: &str = "chain.toml";
/// The directory of dapps.
pub const DAPPS: &str = "dapps";
/// A dapp's configuration inside `dapps/<name>/`.
pub const DAPP_TOML: &str = "dapp.toml";

/// The built-in dapp name transactions that change `chain.toml` use; no
/// deployed dapp may take it.
pub const CHAIN_DAPP: &str = "chain";
/// Its action that changes `chain.toml`.
pub const SET_ACTION: &str = "set";
/// Its action that deploys a dapp ([`DeployArgs`]).
pub const DEPLOY_ACTION: &str = "deploy";
/// Its action that swaps a dapp's image, keeping the state ([`UpgradeArgs`]).
pub const UPGRADE_ACTION: &str = "upgrade";
/// Its action that removes a dapp and its state ([`RemoveArgs`]).
pub const REMOVE_ACTION: &str = "remove";

/// `chain deploy`: a new dapp `name` running `image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployArgs {
    /// The dapp's name on the chain.
    pub name: String,
    /// The image manifest digest, `sha256:<64 hex>`.
    pub image: String,
    /// Keys that may upgrade or remove it; empty: the deployer alone.
    #[serde(default)]
    pub owners: Vec<String>,
    /// The dapp's own permission rules, written to its `dapp.toml`.
    #[serde(default)]
    pub permissions: toml::Table,
}

/// `chain upgrade`: dapp `name` runs `image` from the next block on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeArgs {
    /// The deployed dapp.
    pub name: String,
    /// The new image manifest digest.
    pub image: String,
}

/// `chain remove`: dapp `name` and its state leave the tree (its history
/// stays in the blocks before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveArgs {
    /// The deployed dapp.
    pub name: String,
}

/// Whether `image` is spelled `sha256:<64 lowercase hex>`.
pub fn is_image_digest(image: &str) -> bool {
    image
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Why a name, path or configuration file breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A chain, dapp or member name outside `[a-z0-9][a-z0-9._-]{0,63}`.
    #[error(
        "{what} name {name:?} is not allowed: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
    )]
    Name {
        /// What was being named.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A dapp named like a built-in.
    #[error("dapp name {0:?} is reserved: transactions to it change chain.toml")]
    Reserved(String),
    /// A state path component git or a filesystem would refuse or misread.
    #[error("state path {path:?} is not allowed: {why}")]
    StatePath {
        /// The path.
        path: String,
        /// Why.
        why: String,
    },
    /// `chain.toml` or `dapp.toml` does not parse or breaks a rule.
    #[error("{file} is invalid: {why}")]
    Config {
        /// Which file.
        file: String,
        /// Why.
        why: String,
    },
}

/// Checks a chain, dapp or member name.
pub fn check_name(what: &'static str, name: &str) -> Result<(), LayoutError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if ok && what == "dapp" && name == CHAIN_DAPP {
        return Err(LayoutError::Reserved(name.to_string()));
    }
    if ok {
        Ok(())
    } else {
        Err(LayoutError::Name {
            what,
            name: name.to_string(),
        })
    }
}

/// A named key: a validator or a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// A short name shown in logs.
    pub name: String,
    /// `ssh-ed25519 AAAA…`.
    pub key: String,
}

/// `chain.toml`: who may sign blocks, how many votes commit one, and which
/// test dapps every block must pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The chain id, also in every block's `Chain:` trailer and every
    /// transaction.
    pub chain: String,
    /// Votes that commit a block; at least `floor(2n/3) + 1` of `n`
    /// validators, at most `n`.
    pub quorum: u32,
    /// 0 at genesis; every change of this file (a `chain set`
    /// transaction) adds one. A block is certified by the `chain.toml` of
    /// its parents with the highest epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// Votes of `outgoing` validators a block also needs while a change of
    /// the validators is under way (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outgoing_quorum: u32,
    /// Dapps run read-only over every proposed state; all must pass.
    #[serde(default)]
    pub test_dapps: Vec<String>,
    /// Keys that propose, test and vote on blocks.
    pub validators: Vec<Member>,
    /// Keys that may sign blocks on their own branches (door controllers
    /// that keep working offline) but do not vote.
    #[serde(default)]
    pub devices: Vec<Member>,
    /// While a change of the validators is under way: the validators
    /// before it, who still vote (and must reach `outgoing_quorum`) until
    /// a second change completes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outgoing: Vec<Member>,
    /// Keys that may deploy new dapps by transaction; when empty, the
    /// validators may. Changed like the rest of this file, by a quorum
    /// of validators (`chain set`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployers: Vec<Member>,
}

/// A quorum must be between `floor(2n/3) + 1` and `n`.
fn check_quorum(field: &str, quorum: u32, n: usize, of: &str) -> Result<(), LayoutError> {
    let min = ChainConfig::min_quorum(n);
    if quorum < min || quorum as usize > n {
        return Err(LayoutError::Config {
            file: CHAIN_TOML.into(),
            why: format!("{field} {quorum} is outside {min}..={n} for {n} {of}"),
        });
    }
    Ok(())
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl ChainConfig {
    /// A one-validator chain.
    pub fn single(chain: &str, name: &str, key: &Signer) -> Self {
        Self {
            chain: chain.to_string(),
            quorum: 1,
            epoch: 0,
            outgoing_quorum: 0,
            test_dapps: Vec::new(),
            validators: vec![Member {
                name: name.to_string(),
                key: key.to_openssh(),
            }],
            devices: Vec::new(),
            outgoing: Vec::new(),
            deployers: Vec::new(),
        }
    }

    /// The `chain.toml` a change to `desired` leads to: one epoch on, with
    /// `desired`'s validators, quorum, devices and test dapps. When the
    /// validators' keys change, the current validators stay on as
    /// `outgoing` (a block then needs both quorums); a change to the same
    /// keys completes one under way.
    pub fn next(&self, desired: &ChainConfig) -> ChainConfig {
        let keys = |ms: &[Member]| {
            let mut k: Vec<String> = ms.iter().map(|m| m.key.clone()).collect();
            k.sort();
            k
        };
        let same = keys(&self.validators) == keys(&desired.validators);
        ChainConfig {
            chain: desired.chain.clone(),
            quorum: desired.quorum,
            epoch: self.epoch + 1,
            outgoing_quorum: if same { 0 } else { self.quorum },
            test_dapps: desired.test_dapps.clone(),
            validators: desired.validators.clone(),
            devices: desired.devices.clone(),
            outgoing: if same {
                Vec::new()
            } else {
                self.validators.clone()
            },
            deployers: desired.deployers.clone(),
        }
    }

    /// Of the parents' configs, the one that certifies a block over them:
    /// the highest epoch. Two different configs at that epoch are an error
    /// (two changes approved over one state).
    pub fn certifying<'a>(
        parents: impl IntoIterator<Item = &'a ChainConfig>,
    ) -> Result<&'a ChainConfig, String> {
        let mut top: Option<&ChainConfig> = None;
        for c in parents {
            match top {
                Some(t) if t.epoch > c.epoch => {}
                Some(t) if t.epoch == c.epoch => {
                    if t != c {
                        return Err(format!(
                            "its parents' chain.toml differ at epoch {}",
                            c.epoch
                        ));
                    }
                }
                _ => top = Some(c),
            }
        }
        top.ok_or_else(|| "it has no parents".to_string())
    }

    /// The smallest quorum that keeps two quorums overlapping in an
    /// honest validator: `floor(2n/3) + 1`.
    pub fn min_quorum(validators: usize) -> u32 {
        u32::try_from(2 * validators / 3 + 1).unwrap_or(u32::MAX)
    }

    /// Parses and checks `chain.toml`.
    pub fn parse(text: &[u8]) -> Result<Self, LayoutError> {
        let bad = |why: String| LayoutError::Config {
            file: CHAIN_TOML.into(),
            why,
        };
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8".into()))?;
        let config: Self = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// The checks `parse` applies.
    pub fn check(&self) -> Result<(), LayoutError> {
        let bad = |why: String| LayoutError::Config {
            file: CHAIN_TOML.into(),
            why,
        };
        check_name("chain", &self.chain)?;
        let n = self.validators.len();
        if n == 0 {
            return Err(bad("there must be at least one validator".into()));
        }
        check_quorum("quorum", self.quorum, n, "validators")?;
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for m in self.validators.iter().chain(&self.devices) {
            check_name("member", &m.name)?;
            let key = Signer::parse(&m.key)
                .ok_or_else(|| bad(format!("{}: {:?} is not an ssh-ed25519 key", m.name, m.key)))?;
            if !names.insert(m.name.as_str()) {
                return Err(bad(format!("the name {} appears twice", m.name)));
            }
            if !keys.insert(key.to_openssh()) {
                return Err(bad(format!("the key of {} appears twice", m.name)));
            }
        }
        for d in &self.test_dapps {
            check_name("dapp", d)?;
        }
        let out = self.outgoing.len();
        if out == 0 && self.outgoing_quorum != 0 {
            return Err(bad("outgoing_quorum without outgoing validators".into()));
        }
        if out > 0 {
            check_quorum(
                "outgoing_quorum",
                self.outgoing_quorum,
                out,
                "outgoing validators",
            )?;
        }
        let mut deployer_keys = HashSet::new();
        for m in &self.deployers {
            check_name("member", &m.name)?;
            let key = Signer::parse(&m.key)
                .ok_or_else(|| bad(format!("{}: {:?} is not an ssh-ed25519 key", m.name, m.key)))?;
            if !deployer_keys.insert(key.to_openssh()) {
                return Err(bad(format!("the deployer key of {} appears twice", m.name)));
            }
        }
        let mut out_keys = HashSet::new();
        for m in &self.outgoing {
            check_name("member", &m.name)?;
            let key = Signer::parse(&m.key)
                .ok_or_else(|| bad(format!("{}: {:?} is not an ssh-ed25519 key", m.name, m.key)))?;
            if !out_keys.insert(key.to_openssh()) {
                return Err(bad(format!("the outgoing key of {} appears twice", m.name)));
            }
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a chain config always serializes")
    }

    /// Whether `key` may deploy a new dapp: a deployer, or a validator
    /// when the file names no deployers.
    pub fn may_deploy(&self, key: &Signer) -> bool {
        let list = if self.deployers.is_empty() {
            &self.validators
        } else {
            &self.deployers
        };
        list.iter()
            .any(|m| Signer::parse(&m.key).as_ref() == Some(key))
    }

    /// Who may deploy, as [`ChainConfig::may_deploy`] reads it: names for
    /// a refusal's text.
    pub fn deployer_names(&self) -> Vec<&str> {
        let list = if self.deployers.is_empty() {
            &self.validators
        } else {
            &self.deployers
        };
        list.iter().map(|m| m.name.as_str()).collect()
    }

    /// The member (validator, device, or outgoing validator) with this
    /// key: who may sign a block this config certifies.
    pub fn member(&self, key: &Signer) -> Option<&Member> {
        self.validators
            .iter()
            .chain(&self.devices)
            .chain(&self.outgoing)
            .find(|m| Signer::parse(&m.key).as_ref() == Some(key))
    }
}

/// `dapps/<name>/dapp.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DappConfig {
    /// The OCI image manifest digest, `sha256:<64 hex>`.
    pub image: String,
    /// Keys that may change this file.
    #[serde(default)]
    pub owners: Vec<String>,
    /// The dapp's own permission rules; the dapp reads them.
    #[serde(default)]
    pub permissions: toml::Table,
    /// The height of the block that deployed it (absent: genesis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<u64>,
    /// The height of the block that last swapped its image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_at: Option<u64>,
}

impl DappConfig {
    /// Parses and checks `dapp.toml` of dapp `name`.
    pub fn parse(name: &str, text: &[u8]) -> Result<Self, LayoutError> {
        let bad = |why: String| LayoutError::Config {
            file: format!("{DAPPS}/{name}/{DAPP_TOML}"),
            why,
        };
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8".into()))?;
        let config: Self = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        if !is_image_digest(&config.image) {
            return Err(bad(format!(
                "image {:?} is not an image digest (sha256:<64 hex digits>)",
                config.image
            )));
        }
        for owner in &config.owners {
            if Signer::parse(owner).is_none() {
                return Err(bad(format!("owner {owner:?} is not an ssh-ed25519 key")));
            }
        }
        Ok(config)
    }

    /// The file's bytes.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a dapp config always serializes")
    }
}

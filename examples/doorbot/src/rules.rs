//! The rules a door decides with: the node's rules bundle, kept in memory
//! (the doors dapp's `Rules` over states held in memory) and on disk
//! beside the block it came from, and [`Gate`], the decision that fails
//! secure around `doors::may_open`.
//!
//! On disk, `rules.json` holds the bundle, the chain's name and the
//! bundle's BLAKE3: it is written to a temporary file, synced and renamed
//! over the last one (whose copy stays as `rules.prev.json`), so a power
//! cut leaves the old rules or the new, never half of either. A copy
//! whose hash does not match is not used (the one before it is, if it is
//! whole): a damaged file never becomes "nobody is a member".
//!
//! `rules.fresh` holds when the controller last knew its rules were
//! current: its node was in touch with the network and main was the
//! rules' block. Rules that have not been fresh for `max_offline` admit
//! only the roles the config names.

use std::path::{Path, PathBuf};

use utter_client::api::RulesBundle;
use utter_doors::{Decision, Rules, may_open};

use crate::badge::{Badge, Salt};

/// The durable copy's file.
pub const FILE: &str = "rules.json";
const PREV: &str = "rules.prev.json";
const FRESH: &str = "rules.fresh";

/// What `rules.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Copy {
    /// The chain the rules are from (events are signed for it).
    pub chain: String,
    /// BLAKE3 of the bundle's JSON, hex.
    pub blake3: String,
    /// The bundle.
    pub bundle: RulesBundle,
}

/// Why the rules on disk cannot be used or kept.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// Reading or writing the copy.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The copy is damaged.
    #[error("{path} is damaged ({why}); it is not used")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// How.
        why: String,
    },
}

fn hash(bundle: &RulesBundle) -> String {
    let bytes = serde_json::to_vec(bundle).expect("a bundle serializes");
    blake3::hash(&bytes).to_hex().to_string()
}

impl Copy {
    /// A copy of `bundle` from `chain`.
    pub fn new(chain: &str, bundle: RulesBundle) -> Self {
        Self {
            chain: chain.to_string(),
            blake3: hash(&bundle),
            bundle,
        }
    }

    /// Writes the copy durably into `dir` (temporary file, fsync, rename,
    /// fsync of the directory); the last copy becomes the previous one.
    pub fn save(&self, dir: &Path) -> Result<(), RulesError> {
        let path = dir.join(FILE);
        let bytes = serde_json::to_vec(self).expect("a copy serializes");
        if path.exists() {
            std::fs::rename(&path, dir.join(PREV)).map_err(io(&path))?;
        }
        crate::durable::write(&path, &bytes).map_err(io(&path))
    }

    /// The copy in `dir`: the last whole one (`rules.json`, else
    /// `rules.prev.json`), `Ok(None)` when there is none, and the damage
    /// found along the way (to report).
    pub fn load(dir: &Path) -> (Option<Self>, Vec<RulesError>) {
        let mut damage = Vec::new();
        for name in [FILE, PREV] {
            let path = dir.join(name);
            match Self::read(&path) {
                Ok(Some(copy)) => return (Some(copy), damage),
                Ok(None) => {}
                Err(e) => damage.push(e),
            }
        }
        (None, damage)
    }

    fn read(path: &Path) -> Result<Option<Self>, RulesError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let damaged = |why: String| RulesError::Damaged {
            path: path.to_path_buf(),
            why,
        };
        let copy: Self = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if hash(&copy.bundle) != copy.blake3 {
            return Err(damaged("its hash does not match its rules".into()));
        }
        Ok(Some(copy))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RulesError + '_ {
    move |source| RulesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// When the rules were last known current (Unix seconds), from `dir`.
pub fn load_fresh(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(FRESH))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Records when the rules were last known current.
pub fn save_fresh(dir: &Path, at: u64) -> std::io::Result<()> {
    crate::durable::write(&dir.join(FRESH), format!("{at}\n").as_bytes())
}

/// Rules in memory, ready to decide.
struct Loaded {
    rules: Rules,
    salt: Option<Salt>,
    block: String,
    height: u64,
    time: u64,
    chain: String,
}

/// The decision, failing secure: no rules deny, stale rules admit only
/// the configured roles, a clock behind the rules denies.
pub struct Gate {
    door: String,
    max_offline: u64,
    offline_roles: Vec<String>,
    loaded: Option<Loaded>,
    fresh_at: Option<u64>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("door", &self.door)
            .field("block", &self.loaded.as_ref().map(|l| &l.block))
            .finish()
    }
}

/// A clock this far behind the rules' block is wrong (a Pi without a
/// real-time clock before NTP): decisions wait for the time.
pub const CLOCK_SLACK: u64 = 300;

impl Gate {
    /// A gate for `door` with no rules yet.
    pub fn new(door: &str, max_offline: u64, offline_roles: Vec<String>) -> Self {
        Self {
            door: door.to_string(),
            max_offline,
            offline_roles,
            loaded: None,
            fresh_at: None,
        }
    }

    /// Decides with `copy` from now on.
    pub fn set(&mut self, copy: &Copy) {
        let b = &copy.bundle;
        let rules = Rules::in_memory(b.files.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        self.loaded = Some(Loaded {
            rules,
            salt: b
                .files
                .get("membership/salt")
                .and_then(|s| Salt::from_file(s)),
            block: b.block.to_string(),
            height: b.height,
            time: u64::try_from(b.time).unwrap_or(0),
            chain: copy.chain.clone(),
        });
        self.fresh_at = Some(self.fresh_at.unwrap_or(0).max(self.rules_time()));
    }

    fn rules_time(&self) -> u64 {
        self.loaded.as_ref().map_or(0, |l| l.time)
    }

    /// The rules are known current at `now`.
    pub fn fresh(&mut self, now: u64) {
        self.fresh_at = Some(now);
    }

    /// Sets when the rules were last known current (from disk).
    pub fn fresh_since(&mut self, at: u64) {
        self.fresh_at = Some(self.fresh_at.unwrap_or(0).max(at));
    }

    /// When the rules were last known current.
    pub fn fresh_at(&self) -> Option<u64> {
        self.fresh_at
    }

    /// The chain's badge salt, once rules came.
    pub fn salt(&self) -> Option<&Salt> {
        self.loaded.as_ref()?.salt.as_ref()
    }

    /// The chain's name, once rules came.
    pub fn chain(&self) -> Option<&str> {
        Some(&self.loaded.as_ref()?.chain)
    }

    /// The rules' block, height and time.
    pub fn block(&self) -> Option<(&str, u64, u64)> {
        self.loaded
            .as_ref()
            .map(|l| (l.block.as_str(), l.height, l.time))
    }

    /// Whether there are rules at all, and not older than `max_offline`.
    pub fn usable(&self, now: u64) -> bool {
        self.loaded.is_some() && !self.stale(now)
    }

    fn stale(&self, now: u64) -> bool {
        now.saturating_sub(self.fresh_at.unwrap_or(0)) > self.max_offline
    }

    /// May `badge` pass at `now` (Unix seconds)?
    pub fn decide(&mut self, badge: &Badge, now: u64) -> Decision {
        let stale = self.stale(now);
        let (max_offline, door) = (self.max_offline, self.door.clone());
        let roles = self.offline_roles.clone();
        let Some(l) = &mut self.loaded else {
            return deny("no rules yet: the door stays locked until its node sends them");
        };
        if now + CLOCK_SLACK < l.time {
            return deny("the clock is behind the rules' block: waiting for the time (NTP)");
        }
        let d = may_open(&mut l.rules, &door, badge.as_str(), now);
        if !stale || !d.granted {
            return d;
        }
        let days = now.saturating_sub(self.fresh_at.unwrap_or(0)) / 86_400;
        let member = d.member.as_deref().and_then(|key| {
            utter_membership::member(&mut l.rules.members, key)
                .ok()
                .flatten()
        });
        match member.and_then(|m| roles.iter().find(|r| m.has_role(r)).cloned()) {
            Some(role) => Decision {
                reason: format!("{} (rules {days} d old: admitted as {role})", d.reason),
                ..d
            },
            None => Decision {
                granted: false,
                reason: format!(
                    "the rules are {days} d old (max_offline is {} d): only {} may enter until the door is back online",
                    max_offline / 86_400,
                    if roles.is_empty() {
                        "no one".to_string()
                    } else {
                        roles.join(" or ")
                    }
                ),
                member: d.member,
            },
        }
    }
}

fn deny(reason: &str) -> Decision {
    Decision {
        granted: false,
        reason: reason.to_string(),
        member: None,
    }
}

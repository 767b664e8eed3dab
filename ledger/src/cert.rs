//! Votes and commit certificates.
//!
//! A validator's vote is an SSH signature (namespace `utter-vote`) over
//! four lines naming the chain, the block and its height:
//!
//! ```text
//! utter vote v1
//! chain <chain>
//! block <block id>
//! height <height>
//! ```
//!
//! A block's **certificate** is the quorum of votes that committed it,
//! kept as a git note on the block under [`NOTES_REF`]: those four lines,
//! an empty line, then the armored signatures one after another. Anyone
//! who knows the validator set can check it, with utter or with
//! `ssh-keygen -Y verify -n utter-vote` over the first four lines.
//!
//! **The validator set of a block** is the one in the `chain.toml` of its
//! parents with the highest epoch (genesis: its own). A block that changes
//! `chain.toml` (a `chain set` transaction, [`crate::governance`]) changes
//! who certifies the blocks after it, from the next height on, never
//! itself. While a change is under way the set has `outgoing` validators,
//! and a certificate needs the quorum of both.

use std::collections::BTreeSet;

use gix::objs::tree::EntryKind;

use crate::block::{self, BlockId};
use crate::key::{Keypair, SignatureError, Signer};
use crate::layout::ChainConfig;
use crate::repo::{Block, Ledger, LedgerError, git};

/// The SSH signature namespace of votes.
pub const VOTE_NAMESPACE: &str = "utter-vote";

/// Where certificates are kept: one git note per committed block.
pub const NOTES_REF: &str = "refs/notes/utter-certificates";

const MAGIC: &str = "utter vote v1";
const ARMOR_END: &str = "-----END SSH SIGNATURE-----";

/// The bytes every vote for `block` signs.
pub fn vote_message(chain: &str, block: BlockId, height: u64) -> String {
    format!("{MAGIC}\nchain {chain}\nblock {block}\nheight {height}\n")
}

/// One validator's vote: its armored signature (the key is inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedVote {
    /// The armored SSH signature over [`vote_message`].
    pub signature: String,
}

impl SignedVote {
    /// `key`'s vote for `block` at `height` on `chain`.
    pub fn sign(
        key: &Keypair,
        chain: &str,
        block: BlockId,
        height: u64,
    ) -> Result<Self, CertError> {
        let signature = key
            .sign(
                VOTE_NAMESPACE,
                vote_message(chain, block, height).as_bytes(),
            )
            .map_err(|e| CertError::Sign(e.to_string()))?;
        Ok(Self {
            signature: signature.trim_end().to_string(),
        })
    }

    /// The key that made it.
    pub fn signer(&self) -> Result<Signer, SignatureError> {
        Signer::of_signature(&self.signature)
    }

    /// Checks it is a vote for exactly this block, height and chain, and
    /// returns who cast it.
    pub fn verify(
        &self,
        chain: &str,
        block: BlockId,
        height: u64,
    ) -> Result<Signer, SignatureError> {
        let signer = self.signer()?;
        signer.verify(
            VOTE_NAMESPACE,
            vote_message(chain, block, height).as_bytes(),
            &self.signature,
        )?;
        Ok(signer)
    }
}

/// Why a certificate is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The note's text is not a certificate.
    #[error("the certificate is malformed: {0}")]
    Malformed(String),
    /// It names another block, height or chain.
    #[error("the certificate is for {0}")]
    Elsewhere(String),
    /// A vote's signature does not verify.
    #[error("vote {vote} does not verify: {error}")]
    BadVote {
        /// Which vote (from 1).
        vote: usize,
        /// Why.
        error: SignatureError,
    },
    /// A vote by a key that is not a validator of the block.
    #[error("vote {vote} is by {key}, which is not a validator of this block")]
    NotValidator {
        /// Which vote (from 1).
        vote: usize,
        /// The key's fingerprint.
        key: String,
    },
    /// Two votes by one validator.
    #[error("validator {0} voted twice")]
    Twice(String),
    /// Fewer distinct validators than the quorum.
    #[error("{found} validator votes, the quorum is {quorum}")]
    TooFew {
        /// Distinct validators that voted.
        found: usize,
        /// The quorum of the block's validator set.
        quorum: u32,
    },
    /// During a change, fewer outgoing validators than their quorum.
    #[error("{found} votes of the outgoing validators, their quorum is {quorum}")]
    TooFewOutgoing {
        /// Distinct outgoing validators that voted.
        found: usize,
        /// The outgoing quorum.
        quorum: u32,
    },
    /// The parents name different validator sets at one epoch.
    #[error("the block has no validator set: {0}")]
    NoSet(String),
    /// Signing a vote failed.
    #[error("cannot sign the vote: {0}")]
    Sign(String),
}

/// The votes that committed one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The chain.
    pub chain: String,
    /// The block.
    pub block: BlockId,
    /// Its height.
    pub height: u64,
    /// The votes, in the order they were collected.
    pub votes: Vec<SignedVote>,
}

impl Certificate {
    /// The note's text.
    pub fn encode(&self) -> String {
        let mut out = vote_message(&self.chain, self.block, self.height);
        out.push('\n');
        for v in &self.votes {
            out.push_str(&v.signature);
            out.push('\n');
        }
        out
    }

    /// Reads a note's text strictly.
    pub fn parse(text: &str) -> Result<Self, CertError> {
        let bad = |why: &str| CertError::Malformed(why.to_string());
        let (head, sigs) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line after the header"))?;
        let mut lines = head.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad("it does not start with `utter vote v1`"));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("no `{name}` line")))
        };
        let chain = field("chain")?;
        let block = field("block")?
            .parse::<BlockId>()
            .map_err(|_| bad("the block is not an object id"))?;
        let height = field("height")?
            .parse::<u64>()
            .map_err(|_| bad("the height is not a number"))?;
        if lines.next().is_some() {
            return Err(bad("extra header lines"));
        }
        let mut votes = Vec::new();
        let mut rest = sigs;
        while !rest.trim().is_empty() {
            let end = rest
                .find(ARMOR_END)
                .ok_or_else(|| bad("a signature has no END line"))?
                + ARMOR_END.len();
            votes.push(SignedVote {
                signature: rest[..end].trim().to_string(),
            });
            rest = rest[end..].strip_prefix('\n').unwrap_or(&rest[end..]);
        }
        let cert = Self {
            chain,
            block,
            height,
            votes,
        };
        if cert.encode() != text {
            return Err(bad("it is not in canonical form"));
        }
        Ok(cert)
    }

    /// Checks the certificate commits `block` at `height` on `chain` under
    /// `validators` (the block's validator set, see the module docs):
    /// every vote verifies, is by a distinct validator (or outgoing
    /// validator), and there are at least a quorum of them (and, during a
    /// change, of the outgoing ones). Returns the voters' names.
    pub fn verify(
        &self,
        chain: &str,
        block: BlockId,
        height: u64,
        validators: &ChainConfig,
    ) -> Result<Vec<String>, CertError> {
        if self.chain != chain || self.block != block || self.height != height {
            return Err(CertError::Elsewhere(format!(
                "block {} at height {} on chain {}",
                self.block, self.height, self.chain
            )));
        }
        let mut seen = BTreeSet::new();
        let mut names = Vec::new();
        let find = |set: &[crate::layout::Member], key: &str| {
            set.iter()
                .find(|m| Signer::parse(&m.key).is_some_and(|k| k.to_openssh() == key))
                .map(|m| m.name.clone())
        };
        let (mut members, mut outgoing) = (0, 0);
        for (i, vote) in self.votes.iter().enumerate() {
            let signer = vote
                .verify(chain, block, height)
                .map_err(|error| CertError::BadVote { vote: i + 1, error })?;
            let key = signer.to_openssh();
            let member = find(&validators.validators, &key);
            let out = find(&validators.outgoing, &key);
            let Some(name) = member.clone().or(out.clone()) else {
                return Err(CertError::NotValidator {
                    vote: i + 1,
                    key: signer.fingerprint(),
                });
            };
            if !seen.insert(key) {
                return Err(CertError::Twice(name));
            }
            members += usize::from(member.is_some());
            outgoing += usize::from(out.is_some());
            names.push(name);
        }
        if members < validators.quorum as usize {
            return Err(CertError::TooFew {
                found: members,
                quorum: validators.quorum,
            });
        }
        if outgoing < validators.outgoing_quorum as usize {
            return Err(CertError::TooFewOutgoing {
                found: outgoing,
                quorum: validators.outgoing_quorum,
            });
        }
        Ok(names)
    }
}

/// The note's path in the notes tree: two hex digits of fan-out, as
/// `git notes` makes when there are many.
fn note_path(block: BlockId) -> String {
    let hex = block.to_string();
    format!("{}/{}", &hex[..2], &hex[2..])
}

impl Ledger {
    /// The validator set that certifies `block`: the `chain.toml` of its
    /// parents with the highest epoch (genesis: its own); `Err` inside
    /// when two parents name different sets at that epoch.
    pub fn validators_of(&self, block: &Block) -> Result<Result<ChainConfig, String>, LedgerError> {
        if block.parents.is_empty() {
            return Ok(Ok(self.chain_config(block)?));
        }
        let mut configs = Vec::with_capacity(block.parents.len());
        for p in &block.parents {
            configs.push(self.chain_config(&self.block(*p)?)?);
        }
        Ok(ChainConfig::certifying(&configs).cloned())
    }

    /// The `chain.toml` `block` changes to, when its epoch is newer than
    /// every parent's (the block carries a `chain set`): what consensus
    /// needs to know of a block's validator set.
    pub fn set_change(&self, block: &Block) -> Result<Option<ChainConfig>, LedgerError> {
        let own = self.chain_config(block)?;
        for p in &block.parents {
            if self.chain_config(&self.block(*p)?)?.epoch >= own.epoch {
                return Ok(None);
            }
        }
        Ok((!block.parents.is_empty()).then_some(own))
    }

    /// Whether `block` is committed by what this ledger holds: genesis, a
    /// block with a certificate note (checked when it was stored), or a
    /// block its one validator signed (a chain of one validator, whose
    /// blocks that validator commits alone).
    pub fn is_certified(&self, id: BlockId) -> Result<bool, LedgerError> {
        if id == self.genesis() || self.certificate(id)?.is_some() {
            return Ok(true);
        }
        let block = self.block(id)?;
        let Ok(set) = self.validators_of(&block)? else {
            return Ok(false);
        };
        let signer = block.signer.as_ref().map(Signer::to_openssh);
        Ok(set.validators.len() == 1
            && set.outgoing.is_empty()
            && Signer::parse(&set.validators[0].key).map(|k| k.to_openssh()) == signer)
    }

    /// Checks `cert` against `block` and its validator set.
    pub fn check_certificate(
        &self,
        block: &Block,
        cert: &Certificate,
    ) -> Result<Result<Vec<String>, CertError>, LedgerError> {
        let validators = match self.validators_of(block)? {
            Ok(v) => v,
            Err(why) => return Ok(Err(CertError::NoSet(why))),
        };
        Ok(cert.verify(&validators.chain, block.id, block.height, &validators))
    }

    /// Stores `cert` as the block's note (after checking it: a certificate
    /// that does not verify is refused) and syncs it. Replaces an earlier
    /// one (a certificate with more votes is still a certificate).
    pub fn write_certificate(&self, cert: &Certificate) -> Result<(), LedgerError> {
        let block = self.block(cert.block)?;
        if let Err(e) = self.check_certificate(&block, cert)? {
            return Err(LedgerError::Draft(format!(
                "not storing the certificate of block {}: {e}",
                block.id
            )));
        }
        let old = self.notes_head()?;
        let base = match old {
            Some(commit) => self.commit_tree(commit)?,
            None => gix::ObjectId::empty_tree(gix::hash::Kind::Sha1),
        };
        let repo = self.repo();
        let mut editor = repo
            .edit_tree(base)
            .map_err(git("loading the certificates tree"))?;
        let blob = self
            .repo()
            .write_blob(cert.encode().as_bytes())
            .map_err(git("writing a certificate"))?
            .detach();
        editor
            .upsert(note_path(block.id).as_str(), EntryKind::Blob, blob)
            .map_err(git("adding a certificate"))?;
        let tree = editor
            .write()
            .map_err(git("writing the certificates tree"))?
            .detach();
        let parents: Vec<BlockId> = old.into_iter().collect();
        let message = format!(
            "certificate of block {} at height {}\n",
            block.id, block.height
        );
        let commit = self.write_commit(tree, &parents, &message, block.time, None)?;
        self.sync_all()?;
        self.set_ref(NOTES_REF, commit, old)
    }

    /// The certificate stored for `block`, if any. A note that is not a
    /// certificate is an error naming the block.
    pub fn certificate(&self, block: BlockId) -> Result<Option<Certificate>, LedgerError> {
        let Some(head) = self.notes_head()? else {
            return Ok(None);
        };
        let tree = self.commit_tree(head)?;
        // Also read notes `git notes add` wrote without fan-out.
        let mut text = None;
        for path in [note_path(block), block.to_string()] {
            if let Some(bytes) = self.read_value_in(tree, &path)? {
                text = Some(bytes);
                break;
            }
        }
        let Some(bytes) = text else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes).map_err(|_| LedgerError::Malformed {
            id: block,
            why: "its certificate note is not UTF-8".into(),
        })?;
        Certificate::parse(&text)
            .map(Some)
            .map_err(|e| LedgerError::Malformed {
                id: block,
                why: e.to_string(),
            })
    }

    fn notes_head(&self) -> Result<Option<BlockId>, LedgerError> {
        self.ref_target(NOTES_REF)
    }

    /// The tree of a commit (a block, or a certificates commit).
    pub(crate) fn commit_tree(&self, id: BlockId) -> Result<gix::ObjectId, LedgerError> {
        let repo = self.repo();
        let commit = repo
            .find_commit(block::oid(id))
            .map_err(git(format!("reading commit {id}")))?;
        Ok(commit
            .tree_id()
            .map_err(git(format!("reading the tree of {id}")))?
            .detach())
    }

    /// The certificates a notes commit holds that the notes commit `base`
    /// (none: an empty tree) does not hold as they are: (block, note
    /// text), for a peer's notes to be checked and imported.
    pub fn notes_added(
        &self,
        commit: BlockId,
        base: Option<BlockId>,
    ) -> Result<Vec<(BlockId, String)>, LedgerError> {
        let tree = self.commit_tree(commit)?;
        let base = base.map(|b| self.commit_tree(b)).transpose()?;
        let mut out = Vec::new();
        for (path, change) in self.diff_trees(base, tree)? {
            if change == crate::FileChange::Removed {
                continue;
            }
            let hex: String = path.chars().filter(|c| *c != '/').collect();
            let Ok(block) = hex.parse::<BlockId>() else {
                return Err(LedgerError::Malformed {
                    id: commit,
                    why: format!(
                        "the certificates commit has a note at {path}, which names no block"
                    ),
                });
            };
            let bytes = self.read_value_in(tree, &path)?.unwrap_or_default();
            let text = String::from_utf8(bytes).map_err(|_| LedgerError::Malformed {
                id: commit,
                why: format!("the note at {path} is not UTF-8"),
            })?;
            out.push((block, text));
        }
        Ok(out)
    }

    /// Whether commit `ancestor` is `descendant` or one of its ancestors,
    /// by walking parents (certificates commits carry no heights).
    pub fn commit_descends(
        &self,
        descendant: BlockId,
        ancestor: BlockId,
    ) -> Result<bool, LedgerError> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![descendant];
        while let Some(id) = stack.pop() {
            if id == ancestor {
                return Ok(true);
            }
            if !seen.insert(id) {
                continue;
            }
            stack.extend(
                self.commit_parents(id)?
                    .map_err(|why| LedgerError::Malformed { id, why })?,
            );
        }
        Ok(false)
    }
}

//! Transactions: canonical JSON (RFC 8785) objects
//! `{v, chain, dapp, action, args, signer, nonce, time}` signed with the
//! signer's SSH key in namespace `utter-tx`.
//!
//! On the wire and in `block/txs.jsonl` a transaction is one line, itself
//! canonical JSON: `{"sig": "<armored SSH signature>", "tx": {…}}`. The
//! signature covers the canonical bytes of the `tx` object. A line that is
//! not exactly its own canonical form is refused, so one transaction has one
//! encoding and one id.

use serde::{Deserialize, Serialize};

use crate::id::TxId;
use crate::key::{KeyError, Keypair, SignatureError};

/// The SSH signature namespace of transactions.
pub const NAMESPACE: &str = "utter-tx";
/// The transaction format version this code writes and reads.
pub const VERSION: u32 = 1;
/// The longest transaction line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Integers above this are not exact in every JSON reader (RFC 8785 §3.2.2.3).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The signed part of a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx {
    /// Format version, [`VERSION`].
    pub v: u32,
    /// The chain it is for: a transaction for another chain is refused.
    pub chain: String,
    /// The dapp that handles it.
    pub dapp: String,
    /// What the dapp should do.
    pub action: String,
    /// Arguments for the action (any JSON).
    pub args: serde_json::Value,
    /// The signer's public key, `ssh-ed25519 AAAA…`.
    pub signer: String,
    /// Per-signer number used once, against replay.
    pub nonce: u64,
    /// When the signer made it, Unix seconds.
    pub time: u64,
}

/// A transaction with its signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTx {
    /// Armored SSH signature over the canonical bytes of `tx`.
    pub sig: String,
    /// The transaction.
    pub tx: Tx,
}

/// Why a transaction line was refused. Each is a value a block records as
/// the reason for rejecting the transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// Longer than [`MAX_LINE`].
    #[error("transaction is {len} bytes; the limit is {MAX_LINE}")]
    Oversized {
        /// Its length.
        len: usize,
    },
    /// Not JSON, or not a transaction (missing, extra or mistyped fields).
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// Valid JSON but not in RFC 8785 canonical form.
    #[error(
        "transaction is not in canonical form (RFC 8785: sorted keys, no whitespace, shortest numbers)"
    )]
    NotCanonical,
    /// A version this code does not know.
    #[error("transaction version {0} is not supported (this utter reads version {VERSION})")]
    Version(u32),
    /// A number JSON readers cannot all represent exactly.
    #[error("transaction field {field} is {value}, above 2^53 - 1")]
    Unsafe {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// For another chain.
    #[error("transaction is for chain {found:?}, this is {expected:?}")]
    WrongChain {
        /// This chain.
        expected: String,
        /// What the transaction names.
        found: String,
    },
    /// `signer` is not an ed25519 OpenSSH public key.
    #[error("transaction signer {0:?} is not an ssh-ed25519 public key")]
    BadSigner(String),
    /// The signature does not verify for the signer.
    #[error("transaction signature refused: {0}")]
    BadSignature(SignatureError),
    /// A dapp deploy or upgrade names an image this node does not have:
    /// the transaction waits out of every block until the image is here.
    #[error(
        "image {image} is not on this node: upload it first (`utter dapp deploy` and `utter dapp upgrade` do, from a project directory or an image archive)"
    )]
    ImageMissing {
        /// The digest.
        image: String,
    },
    /// The signer already used this nonce.
    #[error("nonce {nonce} was already used by {signer}")]
    Replayed {
        /// The signer.
        signer: String,
        /// The nonce.
        nonce: u64,
    },
}

/// Whether a rejection's reason is [`TxError::Replayed`]'s: the
/// transaction (or another with its signer and nonce) was applied before,
/// so this rejection is not its fate (a merge re-executing a sibling's
/// copy records one).
pub fn is_replay(reason: &str) -> bool {
    reason
        .strip_prefix("nonce ")
        .and_then(|r| r.split_once(" was already used by "))
        .is_some_and(|(n, _)| n.parse::<u64>().is_ok())
}

fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    crate::jcs::to_vec(value)
}

impl Tx {
    /// The bytes the signature covers.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical(self)
    }

    /// Signs with `key` (which must be the `signer`).
    pub fn sign(self, key: &Keypair) -> Result<SignedTx, KeyError> {
        let sig = key.sign(NAMESPACE, &self.canonical_bytes())?;
        Ok(SignedTx { sig, tx: self })
    }
}

impl SignedTx {
    /// The transaction line, canonical JSON without a trailing newline.
    pub fn to_line(&self) -> String {
        String::from_utf8(canonical(self)).expect("canonical JSON is UTF-8")
    }

    /// The transaction's id: BLAKE3 of its line.
    pub fn id(&self) -> TxId {
        TxId::of_line(self.to_line())
    }
}

/// The canonical bytes of `tx` inside a line already checked to be
/// canonical: keys are sorted, so the line is `{"sig":"…","tx":` + the
/// canonical `tx` + `}`, and `","tx":` cannot occur inside the signature
/// string (a quote in a JSON string is escaped). Saves canonicalising the
/// transaction a second time on every verification.
pub(crate) fn signed_part(line: &[u8]) -> Option<&[u8]> {
    const MARK: &[u8] = b"\",\"tx\":";
    let start = line.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    line.get(start..line.len().checked_sub(1)?)
}

/// Checks one transaction line (a trailing `\n` is allowed) for `chain`:
/// size, canonical form, fields, version, chain, signer, signature, then
/// `nonce_used(signer, nonce)`. Returns the transaction or why it was
/// refused.
pub fn verify_line(
    line: &[u8],
    chain: &str,
    nonce_used: impl FnOnce(&str, u64) -> bool,
) -> Result<SignedTx, TxError> {
    verify_line_prechecked(line, chain, nonce_used, false)
}

/// [`verify_line`], for a caller that already had this exact line pass
/// [`verify_line`] for `chain` (all but its nonce) when `prechecked`: every
/// check runs again but the signature's.
pub fn verify_line_prechecked(
    line: &[u8],
    chain: &str,
    nonce_used: impl FnOnce(&str, u64) -> bool,
    prechecked: bool,
) -> Result<SignedTx, TxError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(TxError::Oversized { len: line.len() });
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| TxError::Malformed(e.to_string()))?;
    let stx = SignedTx::deserialize(&value).map_err(|e| TxError::Malformed(e.to_string()))?;
    if crate::jcs::value_to_vec(&value) != line {
        return Err(TxError::NotCanonical);
    }
    let tx = &stx.tx;
    if tx.v != VERSION {
        return Err(TxError::Version(tx.v));
    }
    for (field, value) in [("nonce", tx.nonce), ("time", tx.time)] {
        if value > MAX_SAFE_INTEGER {
            return Err(TxError::Unsafe { field, value });
        }
    }
    if tx.chain != chain {
        return Err(TxError::WrongChain {
            expected: chain.to_string(),
            found: tx.chain.clone(),
        });
    }
    // One key, one spelling: no comments or extra spaces in `signer`.
    let signer = crate::key::Verifier::of(&tx.signer)
        .ok_or_else(|| TxError::BadSigner(tx.signer.clone()))?;
    let signed = signed_part(line).ok_or(TxError::NotCanonical)?;
    if !prechecked {
        signer
            .verify(NAMESPACE, signed, &stx.sig)
            .map_err(TxError::BadSignature)?;
    }
    if nonce_used(&tx.signer, tx.nonce) {
        return Err(TxError::Replayed {
            signer: tx.signer.clone(),
            nonce: tx.nonce,
        });
    }
    Ok(stx)
}

/// What a signer asks of a dapp, before it is signed: one line of a
/// requests file (`{"dapp","action","args"}`, `args` defaulting to `{}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The dapp that handles it.
    pub dapp: String,
    /// What the dapp should do.
    pub action: String,
    /// The action's arguments.
    #[serde(default = "empty_args")]
    pub args: serde_json::Value,
}

fn empty_args() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl Request {
    /// A request of `dapp` to do `action` with `args`.
    pub fn new(dapp: &str, action: &str, args: serde_json::Value) -> Self {
        Self {
            dapp: dapp.to_string(),
            action: action.to_string(),
            args,
        }
    }
}

/// Why requests could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key could not sign.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A signed line would be longer than any block takes.
    #[error(
        "transaction {index} is {len} bytes signed; the limit is {MAX_LINE}: keep large values out of args"
    )]
    Oversized {
        /// Which request (1-based).
        index: usize,
        /// Its signed length.
        len: usize,
    },
}

/// Signs `requests` with `key` for `chain` at `time`, with consecutive
/// nonces from `first_nonce`; returns their lines in order.
pub fn sign_requests(
    key: &Keypair,
    chain: &str,
    first_nonce: u64,
    time: u64,
    requests: impl IntoIterator<Item = Request>,
) -> Result<Vec<String>, SignError> {
    let signer = key.public().to_openssh();
    let mut lines = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        let tx = Tx {
            v: VERSION,
            chain: chain.to_string(),
            dapp: request.dapp,
            action: request.action,
            args: request.args,
            signer: signer.clone(),
            nonce: first_nonce + i as u64,
            time,
        };
        let line = tx.sign(key)?.to_line();
        if line.len() > MAX_LINE {
            return Err(SignError::Oversized {
                index: i + 1,
                len: line.len(),
            });
        }
        lines.push(line);
    }
    Ok(lines)
}

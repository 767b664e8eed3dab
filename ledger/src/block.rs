//! What a block is on disk: a signed git commit whose message ends with the
//! `Height:` and `Chain:` trailers, and the `block/results.jsonl` line
//! format.

use std::fmt;
use std::str::FromStr;

use gix::ObjectId;
use serde::{Deserialize, Serialize};

/// The SSH signature namespace git uses for commits (`git commit -S` with
/// `gpg.format=ssh`).
pub const GIT_NAMESPACE: &str = "git";
/// The commit header that carries the signature.
pub const SIGNATURE_HEADER: &str = "gpgsig";
/// The longest summary line a block may carry.
pub const MAX_SUMMARY: usize = 200;

/// A block's id: its git commit id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub ObjectId);

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", self.0)
    }
}

impl FromStr for BlockId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectId::from_hex(s.as_bytes())
            .map(Self)
            .map_err(|_| format!("{s:?} is not a block id (40 hex digits)"))
    }
}

impl BlockId {
    /// The id whose SHA-1 bytes are `bytes`.
    pub fn from_sha1(bytes: [u8; 20]) -> Self {
        Self(ObjectId::Sha1(bytes))
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        self.0.to_hex_with_len(12).to_string()
    }
}

/// The commit message of a block: `text` (a summary line, then optional
/// body) followed by the trailers.
pub fn message(text: &str, height: u64, chain: &str) -> String {
    format!("{text}\n\nHeight: {height}\nChain: {chain}\n")
}

/// A block's message, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The first line.
    pub summary: String,
    /// The `Height:` trailer.
    pub height: u64,
    /// The `Chain:` trailer.
    pub chain: String,
}

/// Reads a block message strictly: the last paragraph must be exactly
/// `Height: <n>` and `Chain: <name>`, each once, in that order.
pub fn parse_message(text: &[u8]) -> Result<Message, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the message is not UTF-8".to_string())?;
    let body = text
        .strip_suffix('\n')
        .ok_or("the message does not end with a newline")?;
    let (head, trailers) = body
        .rsplit_once("\n\n")
        .ok_or("the message has no trailer paragraph (Height:, Chain:)")?;
    let mut lines = trailers.split('\n');
    let height = lines
        .next()
        .and_then(|l| l.strip_prefix("Height: "))
        .ok_or("the first trailer is not Height:")?;
    let chain = lines
        .next()
        .and_then(|l| l.strip_prefix("Chain: "))
        .ok_or("the second trailer is not Chain:")?;
    if lines.next().is_some() {
        return Err("there are trailers after Chain:".into());
    }
    let canonical = !height.is_empty()
        && height.bytes().all(|b| b.is_ascii_digit())
        && (height == "0" || !height.starts_with('0'));
    let height: u64 = height
        .parse()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| format!("Height: {height:?} is not a number"))?;
    let summary = head.lines().next().unwrap_or_default();
    if summary.is_empty() || summary.len() > MAX_SUMMARY {
        return Err(format!(
            "the summary line must have 1 to {MAX_SUMMARY} characters"
        ));
    }
    Ok(Message {
        summary: summary.to_string(),
        height,
        chain: chain.to_string(),
    })
}

/// A transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Applied to the state.
    Accepted,
    /// Recorded but not applied; `reason` says why.
    Rejected,
}

/// One line of `block/results.jsonl`, for the transaction on the same line
/// of `block/txs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxResult {
    /// The transaction's id (BLAKE3 of its line).
    pub tx: String,
    /// Accepted or rejected.
    pub status: Status,
    /// Why it was rejected, or a dapp's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the dapp returned for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

impl TxResult {
    /// An accepted transaction.
    pub fn accepted(tx: String) -> Self {
        Self {
            tx,
            status: Status::Accepted,
            reason: None,
            output: None,
        }
    }

    /// A rejected transaction and why.
    pub fn rejected(tx: String, reason: impl Into<String>) -> Self {
        Self {
            tx,
            status: Status::Rejected,
            reason: Some(reason.into()),
            output: None,
        }
    }

    /// The canonical JSON line (no newline).
    pub fn to_line(&self) -> String {
        String::from_utf8(
            serde_json_canonicalizer::to_vec(self).expect("plain data always serializes"),
        )
        .expect("canonical JSON is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_strictness() {
        let m = message("block 7: 3 transactions", 7, "space");
        assert_eq!(
            parse_message(m.as_bytes()),
            Ok(Message {
                summary: "block 7: 3 transactions".into(),
                height: 7,
                chain: "space".into()
            })
        );
        let with_body = message("merge\n\nbody line\nmore", 9, "space");
        assert_eq!(parse_message(with_body.as_bytes()).map(|m| m.height), Ok(9));
        for bad in [
            "s\n\nHeight: 07\nChain: c\n",
            "s\n\nHeight: -1\nChain: c\n",
            "s\n\nHeight: 1\nChain: c",
            "s\n\nChain: c\nHeight: 1\n",
            "s\n\nHeight: 1\nChain: c\nExtra: x\n",
            "s\nHeight: 1\nChain: c\n",
            "\n\nHeight: 1\nChain: c\n",
            "s\n\nHeight: 99999999999999999999999\nChain: c\n",
        ] {
            assert!(parse_message(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}

//! What a block is on disk: a signed git commit whose message ends with the
//! `Height:` and `Chain:` trailers. Its id and its results lines are public
//! formats (`utter_formats`), re-exported here.

use gix::ObjectId;

pub use utter_formats::result::{Status, TxResult};

/// The SSH signature namespace git uses for commits (`git commit -S` with
/// `gpg.format=ssh`).
pub const GIT_NAMESPACE: &str = "git";
/// The commit header that carries the signature.
pub const SIGNATURE_HEADER: &str = "gpgsig";
/// The longest summary line a block may carry.
pub const MAX_SUMMARY: usize = 200;

pub use utter_formats::id::BlockId;

/// The git object id of a block.
pub fn oid(id: BlockId) -> ObjectId {
    ObjectId::Sha1(*id.as_bytes())
}

/// The block id of a commit (the repository uses SHA-1).
pub fn block_id(oid: &gix::oid) -> BlockId {
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(oid.as_bytes());
    BlockId::from_sha1(bytes)
}

/// The commit message of a block: `text` (a summary line, then optional
/// body) followed by the trailers.
pub fn message(text: &str, height: u64, chain: &str) -> String {
    message_in_round(text, height, chain, None)
}

/// [`message`] of a consensus proposal made in `round`: a `Round:`
/// trailer follows `Chain:`.
pub fn message_in_round(text: &str, height: u64, chain: &str, round: Option<u64>) -> String {
    match round {
        None => format!("{text}\n\nHeight: {height}\nChain: {chain}\n"),
        Some(r) => format!("{text}\n\nHeight: {height}\nChain: {chain}\nRound: {r}\n"),
    }
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
    /// The `Round:` trailer, on a consensus proposal.
    pub round: Option<u64>,
}

/// Reads a block message strictly: the last paragraph must be exactly
/// `Height: <n>` and `Chain: <name>`, each once, in that order, then on a
/// proposal `Round: <n>`.
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
    let round = match lines.next() {
        None => None,
        Some(l) => {
            let r = l
                .strip_prefix("Round: ")
                .ok_or("the trailer after Chain: is not Round:")?;
            Some(number("Round", r)?)
        }
    };
    if lines.next().is_some() {
        return Err("there are trailers after Round:".into());
    }
    let height = number("Height", height)?;
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
        round,
    })
}

/// A trailer's number: decimal digits, no leading zero.
fn number(trailer: &str, text: &str) -> Result<u64, String> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    text.parse()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| format!("{trailer}: {text:?} is not a number"))
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
                chain: "space".into(),
                round: None,
            })
        );
        let proposal = message_in_round("block 8", 8, "space", Some(12));
        assert!(proposal.ends_with("Chain: space\nRound: 12\n"));
        assert_eq!(
            parse_message(proposal.as_bytes()).map(|m| m.round),
            Ok(Some(12))
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
            "s\n\nHeight: 1\nChain: c\nRound: 01\n",
            "s\n\nHeight: 1\nChain: c\nRound: x\n",
            "s\n\nHeight: 1\nChain: c\nRound: 1\nRound: 2\n",
            "s\n\nHeight: 1\nRound: 1\nChain: c\n",
        ] {
            assert!(parse_message(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}

//! The peers a node knows: where they are, their keys, when they were last
//! seen, what they had, and how long to leave one alone after it broke the
//! protocol. [`PeerBook`] is the rules without IO (time is passed in);
//! [`load`] and [`save`] keep it in the chunk store's records
//! (`peers/<address>`), and `allowed_peers` in the data directory lists the
//! keys a `--private` node lets in besides the chain's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utter_chunkstore::Store;
use utter_formats::{BlockId, Signer};

/// Record keys of the peer table.
pub const PEERS: &[u8] = b"peers/";
/// The most a misbehaving peer is left alone.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its key (`ssh-ed25519 …`) once seen; a peer is pinned to it.
    #[serde(default)]
    pub key: Option<String>,
    /// Its key's `SHA256:…` fingerprint, once seen.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// When it last answered, Unix seconds.
    #[serde(default)]
    pub last_seen: Option<u64>,
    /// Its main and height when last seen.
    #[serde(default)]
    pub main: Option<BlockId>,
    /// Its refs when last seen.
    #[serde(default)]
    pub refs: BTreeMap<String, BlockId>,
    /// Failures in a row (its fault or not).
    #[serde(default)]
    pub failures: u32,
    /// Not tried before this time, Unix seconds (a backoff).
    #[serde(default)]
    pub retry_at: u64,
    /// What went wrong last.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl Peer {
    /// A peer known only by its address (and the fingerprint to pin).
    pub fn at(addr: SocketAddr, fingerprint: Option<String>) -> Self {
        Self {
            addr,
            key: None,
            fingerprint,
            last_seen: None,
            main: None,
            refs: BTreeMap::new(),
            failures: 0,
            retry_at: 0,
            last_error: None,
        }
    }
}

/// The peer table's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBook {
    peers: BTreeMap<SocketAddr, Peer>,
}

impl PeerBook {
    /// The peers, by address.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// One peer.
    pub fn get(&self, addr: &SocketAddr) -> Option<&Peer> {
        self.peers.get(addr)
    }

    /// Adds a peer (or, when known, sets the fingerprint it is pinned to).
    pub fn add(&mut self, addr: SocketAddr, fingerprint: Option<String>) -> &Peer {
        let peer = self
            .peers
            .entry(addr)
            .or_insert_with(|| Peer::at(addr, None));
        if fingerprint.is_some() {
            peer.fingerprint = fingerprint;
        }
        peer
    }

    /// The peers to try at `now`, the longest unseen first.
    pub fn due(&self, now: u64) -> Vec<Peer> {
        let mut due: Vec<Peer> = self
            .peers
            .values()
            .filter(|p| p.retry_at <= now)
            .cloned()
            .collect();
        due.sort_by_key(|p| p.last_seen.unwrap_or(0));
        due
    }

    /// A pass with the peer at `addr` succeeded: it is `key`, with `refs`.
    pub fn seen(
        &mut self,
        addr: SocketAddr,
        key: &Signer,
        refs: BTreeMap<String, BlockId>,
        now: u64,
    ) {
        let peer = self
            .peers
            .entry(addr)
            .or_insert_with(|| Peer::at(addr, None));
        peer.key = Some(key.to_openssh());
        peer.fingerprint = Some(key.fingerprint());
        peer.last_seen = Some(now);
        peer.main = refs.get("refs/heads/main").copied();
        peer.refs = refs;
        peer.failures = 0;
        peer.retry_at = 0;
        peer.last_error = None;
    }

    /// A pass with the peer failed. When `its_fault` (it broke the
    /// protocol, sent what does not verify, stalled), it is left alone for
    /// 2^failures seconds, up to [`MAX_BACKOFF`]; an unreachable peer is
    /// tried again sooner (a node back from offline is found quickly).
    pub fn failed(&mut self, addr: SocketAddr, its_fault: bool, why: &str, now: u64) {
        let peer = self
            .peers
            .entry(addr)
            .or_insert_with(|| Peer::at(addr, None));
        peer.failures = peer.failures.saturating_add(1);
        peer.last_error = Some(why.to_string());
        let wait = if its_fault {
            (1u64 << peer.failures.min(12)).min(MAX_BACKOFF.as_secs())
        } else {
            u64::from(peer.failures.min(5))
        };
        peer.retry_at = now + wait;
    }
}

/// Why the peer table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// The store.
    #[error(transparent)]
    Store(#[from] utter_chunkstore::Error),
    /// A record that is not a peer.
    #[error("the peer record {key} is damaged: {why}")]
    Damaged {
        /// Its key.
        key: String,
        /// Why.
        why: String,
    },
    /// The allowed-peers file.
    #[error("cannot read or write {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the allowed-peers file that is not a key.
    #[error("{path} line {line}: {text:?} is not an ssh-ed25519 public key")]
    BadKey {
        /// The file.
        path: std::path::PathBuf,
        /// The line.
        line: usize,
        /// What it holds.
        text: String,
    },
}

/// The peer table kept in `store`.
pub fn load(store: &Store) -> Result<PeerBook, PeersError> {
    let mut book = PeerBook::default();
    for (key, value) in store.records(PEERS)? {
        let name = String::from_utf8_lossy(&key).into_owned();
        let peer: Peer = serde_json::from_slice(&value).map_err(|e| PeersError::Damaged {
            key: name,
            why: e.to_string(),
        })?;
        book.peers.insert(peer.addr, peer);
    }
    Ok(book)
}

/// Writes the peer table (one synced batch).
pub fn save(store: &Store, book: &PeerBook) -> Result<(), PeersError> {
    let records: Vec<(Vec<u8>, Vec<u8>)> = book
        .peers
        .values()
        .map(|p| {
            let mut key = PEERS.to_vec();
            key.extend_from_slice(p.addr.to_string().as_bytes());
            let value = serde_json::to_vec(p).expect("a peer serializes");
            (key, value)
        })
        .collect();
    let puts: Vec<(&[u8], &[u8])> = records
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    store.write_records(&puts, &[])?;
    Ok(())
}

/// The keys an operator allowed (`utter peers allow`): one OpenSSH public
/// key per line, `#` comments, like `authorized_keys`.
pub fn allowed(path: &Path) -> Result<Vec<Signer>, PeersError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PeersError::File {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = Signer::parse(line).ok_or_else(|| PeersError::BadKey {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// Adds `key` to the allowed-peers file (written through a rename).
pub fn allow(path: &Path, key: &Signer) -> Result<bool, PeersError> {
    let mut keys = allowed(path)?;
    if keys.contains(key) {
        return Ok(false);
    }
    keys.push(key.clone());
    let mut text =
        String::from("# keys this node lets in when it runs with --private (utter peers allow)\n");
    for k in &keys {
        text.push_str(&k.to_openssh());
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    let fail = |source| PeersError::File {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_at_fault_backs_off_exponentially_and_recovers_when_seen() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut book = PeerBook::default();
        book.add(addr, None);
        assert_eq!(book.due(100).len(), 1);
        book.failed(addr, true, "sent a bad chunk", 100);
        assert_eq!(book.get(&addr).unwrap().retry_at, 102);
        book.failed(addr, true, "again", 102);
        assert_eq!(book.get(&addr).unwrap().retry_at, 106);
        assert!(book.due(105).is_empty());
        for _ in 0..20 {
            book.failed(addr, true, "again", 200);
        }
        assert_eq!(
            book.get(&addr).unwrap().retry_at,
            200 + MAX_BACKOFF.as_secs()
        );
        let key = utter_formats::Keypair::generate("p").unwrap().public();
        book.seen(addr, &key, BTreeMap::new(), 300);
        let p = book.get(&addr).unwrap();
        assert_eq!((p.failures, p.retry_at), (0, 0));
        assert_eq!(p.fingerprint.as_deref(), Some(key.fingerprint().as_str()));
        // Unreachable: tried again within seconds.
        book.failed(addr, false, "connection refused", 400);
        assert_eq!(book.get(&addr).unwrap().retry_at, 401);
    }
}

//! Real nodes for the protocol tests, in one process: a ledger, a chunk
//! store and an image store per node, QUIC on loopback.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use tempfile::TempDir;
use utter_chunkstore::{OpenOptions, Store};
use utter_formats::tx::{Tx, VERSION};
use utter_formats::{BlockId, Keypair, TxResult};
use utter_images::Images;
use utter_ledger::layout::{ChainConfig, DappConfig, StatePath};
use utter_ledger::{Change, Changes, Draft, Ledger, MAIN};
use utter_net::serve::Source;
use utter_net::tls::open_gate;
use utter_net::{ALPN_CHUNKS, ALPN_SYNC, Endpoint, Identity, Pass, PassError, Passed};

pub const CHAIN: &str = "space";
pub const T0: i64 = 1_790_000_000;

/// A node's stores.
pub struct Node {
    pub dir: TempDir,
    pub store: Store,
    pub ledger: Ledger,
    pub images: Images,
    pub key: Keypair,
    pub user: Keypair,
    pub nonce: std::cell::Cell<u64>,
}

fn store(dir: &Path) -> Store {
    Store::open(
        dir.join("db"),
        &OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

impl Node {
    /// A new chain: this node's key its only validator, a dapp `notes`.
    pub fn chain() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let key = Keypair::generate("validator").unwrap();
        let config = ChainConfig::single(CHAIN, "v", &key.public());
        let mut changes = Changes::new();
        changes
            .set_dapp(
                "notes",
                &DappConfig {
                    image: format!("sha256:{}", "ab".repeat(32)),
                    owners: vec![],
                    permissions: Default::default(),
                    deployed_at: None,
                    upgraded_at: None,
                },
            )
            .unwrap();
        let (ledger, _) = Ledger::create(
            &dir.path().join("ledger.git"),
            Arc::new(store.clone()),
            &config,
            changes,
            &key,
            T0,
        )
        .unwrap();
        let images = Images::open(dir.path().join("images"), store.clone()).unwrap();
        Self {
            dir,
            store,
            ledger,
            images,
            key,
            user: Keypair::generate("user").unwrap(),
            nonce: std::cell::Cell::new(0),
        }
    }

    /// An empty node that will clone `from`'s chain.
    pub fn empty(from: &Node) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let ledger = Ledger::init_for_clone(
            &dir.path().join("ledger.git"),
            Arc::new(store.clone()),
            from.ledger.chain(),
            from.ledger.genesis(),
        )
        .unwrap();
        let images = Images::open(dir.path().join("images"), store.clone()).unwrap();
        Self {
            dir,
            store,
            ledger,
            images,
            key: Keypair::generate("follower").unwrap(),
            user: Keypair::generate("user").unwrap(),
            nonce: std::cell::Cell::new(0),
        }
    }

    /// Writes a block on `parent` with `n` transactions, each putting a
    /// state file; `big` adds a value large enough to live in the chunk
    /// store behind a pointer. Moves main when `parent` is main.
    pub fn block(&self, parent: BlockId, n: usize, big: Option<&[u8]>) -> BlockId {
        let mut changes = Changes::new();
        let mut txs = Vec::new();
        let mut results = Vec::new();
        for _ in 0..n {
            self.nonce.set(self.nonce.get() + 1);
            let nonce = self.nonce.get();
            let line = Tx {
                v: VERSION,
                chain: CHAIN.into(),
                dapp: "notes".into(),
                action: "put".into(),
                args: json!({ "n": nonce }),
                signer: self.user.public().to_openssh(),
                nonce,
                time: 1,
            }
            .sign(&self.user)
            .unwrap()
            .to_line();
            results.push(TxResult::accepted(utter_formats::TxId::of_line(&line)));
            txs.push(line);
            changes
                .state(
                    "notes",
                    &StatePath::new(&format!("n/{nonce}")).unwrap(),
                    Change::Put(format!("{nonce}\n").into_bytes()),
                )
                .unwrap();
        }
        if let Some(big) = big {
            changes
                .state(
                    "notes",
                    &StatePath::new("big").unwrap(),
                    Change::Put(big.to_vec()),
                )
                .unwrap();
        }
        let height = self.ledger.block(parent).unwrap().height;
        let block = self
            .ledger
            .write_block(
                &Draft {
                    parents: vec![parent],
                    changes,
                    txs,
                    results,
                    text: format!("block {}", height + 1),
                    time: T0 + height as i64 + 1,
                    round: None,
                },
                &self.key,
            )
            .unwrap();
        if self.ledger.resolve(MAIN).unwrap() == parent {
            self.ledger.advance(MAIN, parent, block.id).unwrap();
        }
        block.id
    }

    /// `n` blocks on main.
    pub fn grow(&self, n: usize) -> BlockId {
        let mut tip = self.ledger.resolve(MAIN).unwrap();
        for _ in 0..n {
            tip = self.block(tip, 2, None);
        }
        tip
    }

    pub fn main(&self) -> Option<BlockId> {
        self.ledger.branch(MAIN).unwrap()
    }

    pub fn source(&self) -> Source {
        Source {
            ledger_dir: self.dir.path().join("ledger.git"),
            store: self.store.clone(),
            images: self.images.clone(),
        }
    }

    /// Insists that `git fsck --strict` finds the ledger whole.
    pub fn fsck(&self) {
        let fsck = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(self.dir.path().join("ledger.git"))
            .args(["fsck", "--strict"])
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stderr)
        );
    }

    pub fn packs(&self) -> Vec<PathBuf> {
        let dir = self.dir.path().join("ledger.git/objects/pack");
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// A tokio runtime for servers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Serves `node` honestly on loopback; its address and fingerprint.
pub fn serve(rt: &tokio::runtime::Runtime, node: &Node) -> (SocketAddr, String) {
    let _guard = rt.enter();
    let endpoint = Endpoint::serve(
        "127.0.0.1:0".parse().unwrap(),
        Identity::new(&node.key).unwrap(),
        &[ALPN_SYNC, ALPN_CHUNKS],
        open_gate(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    rt.spawn(utter_net::serve::serve(endpoint, node.source()));
    (addr, node.key.public().fingerprint())
}

/// One pass of `node` against `addr`.
pub fn pass(
    node: &Node,
    addr: SocketAddr,
    pin: Option<String>,
    cloning: bool,
) -> Result<Passed, PassError> {
    pass_with(node, addr, pin, cloning, None)
}

/// [`pass`] with a shorter read timeout.
pub fn pass_with(
    node: &Node,
    addr: SocketAddr,
    pin: Option<String>,
    cloning: bool,
    timeout: Option<std::time::Duration>,
) -> Result<Passed, PassError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut endpoint = Endpoint::client(Identity::new(&node.key).unwrap(), false).unwrap();
    if let Some(t) = timeout {
        endpoint = endpoint.with_read_timeout(t);
    }
    let mut progress = |_| {};
    let pass = Pass {
        endpoint: &endpoint,
        addr,
        pin,
        ledger: &node.ledger,
        store: &node.store,
        images: &node.images,
        batch_bytes: 1 << 20,
        progress: &mut progress,
    };
    let out = rt.block_on(pass.run(cloning));
    if out.is_ok() && cloning {
        node.ledger.finish_clone().unwrap();
    }
    out
}

/// A pack entry's header for a blob of `size` bytes: type 3, then the
/// size, 4 bits and 7 per byte (git's format, written here by hand so the
/// tests do not lean on the code they test).
fn blob_entry_header(mut size: usize, out: &mut Vec<u8>) {
    let mut byte = (3 << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
}

/// A pack that never ends, well formed as far as it goes: a header that
/// claims 4,096 objects (4 GiB), then the same 1 MiB blob entry (a stored
/// zlib stream) for as long as it is sent. Returns the header and the
/// entry.
pub fn endless_pack() -> (Vec<u8>, Vec<u8>) {
    let mut header = b"PACK".to_vec();
    header.extend_from_slice(&2u32.to_be_bytes());
    header.extend_from_slice(&4096u32.to_be_bytes());
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut entry = Vec::new();
    blob_entry_header(data.len(), &mut entry);
    // zlib: header, stored deflate blocks, Adler-32 of the data.
    entry.extend_from_slice(&[0x78, 0x01]);
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        entry.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        entry.extend_from_slice(&len.to_le_bytes());
        entry.extend_from_slice(&(!len).to_le_bytes());
        entry.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    entry.extend_from_slice(&((b << 16) | a).to_be_bytes());
    (header, entry)
}

/// A zlib bomb: a well-formed pack of one blob that declares `declared`
/// bytes and inflates to them (zeros: a MiB of pack per GiB of blob).
pub fn bomb_pack(declared: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut pack = b"PACK".to_vec();
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&1u32.to_be_bytes());
    blob_entry_header(declared, &mut pack);
    let mut z = flate2::write::ZlibEncoder::new(pack, flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut left = declared;
    while left > 0 {
        let n = left.min(zeros.len());
        z.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    let mut pack = z.finish().unwrap();
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(&pack);
    let trailer = hasher.try_finalize().unwrap();
    pack.extend_from_slice(trailer.as_bytes());
    pack
}

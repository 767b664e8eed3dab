//! The wire format of utter's QUIC protocols, without IO: frames encoded
//! and decoded with every size checked before it is buffered.
//!
//! ```text
//! frame     = length:u32be kind:u8 body     (length counts kind and body)
//! str       = length:u16be utf-8
//! bytes     = length:u32be raw
//! list<T>   = count:u32be T*
//! block id  = 20 bytes (a commit's SHA-1)      hash = 32 bytes (BLAKE3, SHA-256)
//! ```
//!
//! One request per QUIC stream: the opener writes one request frame and
//! finishes its side; the other side answers with frames and finishes. A
//! `Pack` answer is followed on the same stream by the raw git pack, up to
//! the end of the stream. [`Message`] lists every frame.

use std::fmt;

use utter_formats::BlockId;

/// The most bytes of any frame (a 16 MiB chunk with its header fits).
pub const MAX_FRAME: usize = (16 << 20) + 1024;
/// The most bytes of a request frame.
pub const MAX_REQUEST: usize = 1 << 20;
/// The most ids in one list of a request.
pub const MAX_IDS: usize = 4096;
/// The most refs one node advertises.
pub const MAX_REFS: usize = 10_000;
/// The longest string in a frame (ref names, chain names, messages).
pub const MAX_STR: usize = 4096;
/// The largest document (an image's manifest or config) in a frame.
pub const MAX_DOC: usize = 4 << 20;
/// The longest transaction line in a `Txs` frame (the ledger's limit).
pub const MAX_TX_LINE: usize = utter_formats::tx::MAX_LINE;

/// A 32-byte hash: a chunk, a manifest (BLAKE3) or an image (SHA-256).
pub type Hash = [u8; 32];

/// What a `Missing` answer is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// A chunkstore manifest.
    Manifest,
    /// A chunk.
    Chunk,
    /// An image.
    Image,
}

/// One layer of an image as a node sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    /// The uncompressed tar's SHA-256 (the config's diffID).
    pub diff_id: Hash,
    /// Its length.
    pub size: u64,
    /// The chunkstore manifest holding it.
    pub blob: Hash,
}

/// Error codes of an `Error` frame.
pub mod code {
    /// The request is malformed or not for this protocol.
    pub const BAD_REQUEST: u16 = 1;
    /// The request asks for more than the server answers at once.
    pub const TOO_LARGE: u16 = 2;
    /// The server could not read its own store.
    pub const INTERNAL: u16 = 3;
    /// The server is busy; ask again later.
    pub const BUSY: u16 = 4;
}

/// A proposal pushed whole, so its receivers need not pull it: the git
/// objects new under its parents as one pack, and the values its tree
/// names outside git (manifests, then their chunks as stored). Nothing in
/// it is trusted: the pack is indexed (every object hashed), manifests and
/// chunks are hashed against their ids, and the block is checked like a
/// pulled one before consensus hears of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The block.
    pub block: BlockId,
    /// Objects in the pack.
    pub objects: u32,
    /// The raw git pack.
    pub pack: Vec<u8>,
    /// Manifests of the values new in the block: id, encoding.
    pub manifests: Vec<(Hash, Vec<u8>)>,
    /// The chunks those manifests name.
    pub chunks: Vec<PushedChunk>,
}

/// One chunk of a [`Proposal`], as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct PushedChunk {
    /// Its id.
    pub id: Hash,
    /// Its plain length.
    pub len: u32,
    /// A zstd frame shorter than `len`, or the plain bytes.
    pub stored: Vec<u8>,
}

impl Proposal {
    /// Bytes it carries: the pack, the manifests and the chunks.
    pub fn bytes(&self) -> usize {
        self.pack.len()
            + self.manifests.iter().map(|(_, m)| m.len()).sum::<usize>()
            + self.chunks.iter().map(|c| c.stored.len()).sum::<usize>()
    }
}

/// Every frame of the protocols.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// Request (sync): the server's chain and refs.
    Heads,
    /// Request (sync): the commits reachable from `wants` and from none of
    /// `haves` (unknown haves are ignored), parents first, as a pack of at
    /// most about `max_bytes`.
    Blocks {
        /// Heads the asker lacks.
        wants: Vec<BlockId>,
        /// Heads the asker has.
        haves: Vec<BlockId>,
        /// How much one answer may carry.
        max_bytes: u64,
    },
    /// Request (sync): the certificate notes commits reachable from `want`
    /// and from none of `haves`.
    Notes {
        /// The notes head the asker lacks.
        want: BlockId,
        /// Notes commits the asker has.
        haves: Vec<BlockId>,
    },
    /// Request (chunks): these manifests.
    Manifests(Vec<Hash>),
    /// Request (chunks): these chunks.
    Chunks(Vec<Hash>),
    /// Request (chunks): this image's documents and layer blobs.
    Image(Hash),
    /// Answer to `Heads`.
    HeadsAre {
        /// The chain's name.
        chain: String,
        /// Its genesis block.
        genesis: BlockId,
        /// Every ref the server shares: `refs/heads/*` and
        /// `refs/notes/utter-certificates`.
        refs: Vec<(String, BlockId)>,
    },
    /// Answer to `Blocks` or `Notes`; the raw pack follows to the end of
    /// the stream.
    Pack {
        /// The commits in the pack, parents first.
        commits: Vec<BlockId>,
        /// Objects in the pack.
        objects: u32,
        /// More commits wait: ask again with these as haves.
        more: bool,
    },
    /// One manifest, canonically encoded.
    Manifest {
        /// Its id.
        id: Hash,
        /// Its encoding (BLAKE3 of it is `id`).
        encoded: Vec<u8>,
    },
    /// One chunk, as stored.
    Chunk {
        /// Its id.
        id: Hash,
        /// Its plain length.
        len: u32,
        /// A zstd frame shorter than `len`, or the plain bytes.
        stored: Vec<u8>,
    },
    /// An image's documents and layers.
    ImageIs {
        /// The manifest document.
        manifest: Vec<u8>,
        /// The config document.
        config: Vec<u8>,
        /// The layers, bottom first.
        layers: Vec<LayerRef>,
    },
    /// The server does not have it.
    Missing {
        /// What was asked for.
        what: What,
        /// Its id.
        id: Hash,
    },
    /// Consensus: the first frame of a channel — the chain and genesis
    /// of the node opening it (a node of another chain is hung up on).
    Hello {
        /// The chain's name.
        chain: String,
        /// Its genesis block.
        genesis: BlockId,
    },
    /// Consensus: signed transaction lines for the mempools, at most
    /// [`MAX_IDS`] a frame, each at most [`MAX_TX_LINE`] bytes.
    Txs(Vec<Vec<u8>>),
    /// Consensus: the sender has this block (a proposal, a side block);
    /// the receiver pulls it on the sync protocol if it lacks it.
    Announce(BlockId),
    /// Consensus: a proposal with everything new in it (an `Announce`
    /// whose receiver has nothing to pull).
    Proposal(Box<Proposal>),
    /// Consensus: a validator's vote, an SSH signature over chain, block
    /// and height (`utter_ledger::cert::vote_message`).
    Vote {
        /// The block voted for.
        block: BlockId,
        /// Its height, as signed.
        height: u64,
        /// The armored signature.
        signature: String,
    },
    /// Consensus: the sender's round timed out without a commit: "bring me
    /// up to date" (the receiver sends its main, its vote and its mempool
    /// as on a new connection).
    Behind,
    /// The server refuses or failed.
    Error {
        /// A [`code`].
        code: u16,
        /// For people.
        message: String,
    },
}

fn short(h: &[u8]) -> String {
    hex::encode(&h[..h.len().min(6)])
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let manifests: Vec<String> = self.manifests.iter().map(|(h, _)| short(h)).collect();
        let chunks: Vec<String> = self
            .chunks
            .iter()
            .map(|c| format!("{} {}/{}", short(&c.id), c.stored.len(), c.len))
            .collect();
        write!(
            f,
            "Proposal {{ block: {:?}, objects: {}, pack: {}, manifests: {manifests:?}, chunks: {chunks:?} }}",
            self.block,
            self.objects,
            self.pack.len()
        )
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Heads => write!(f, "Heads"),
            Message::Blocks {
                wants,
                haves,
                max_bytes,
            } => write!(
                f,
                "Blocks {{ wants: {wants:?}, haves: {haves:?}, max_bytes: {max_bytes} }}"
            ),
            Message::Notes { want, haves } => {
                write!(f, "Notes {{ want: {want:?}, haves: {haves:?} }}")
            }
            Message::Manifests(ids) => {
                let ids: Vec<String> = ids.iter().map(|h| short(h)).collect();
                write!(f, "Manifests({ids:?})")
            }
            Message::Chunks(ids) => {
                let ids: Vec<String> = ids.iter().map(|h| short(h)).collect();
                write!(f, "Chunks({ids:?})")
            }
            Message::Image(h) => write!(f, "Image({})", short(h)),
            Message::HeadsAre {
                chain,
                genesis,
                refs,
            } => write!(
                f,
                "HeadsAre {{ chain: {chain:?}, genesis: {genesis:?}, refs: {refs:?} }}"
            ),
            Message::Pack {
                commits,
                objects,
                more,
            } => write!(
                f,
                "Pack {{ commits: {commits:?}, objects: {objects}, more: {more} }}"
            ),
            Message::Manifest { id, encoded } => {
                write!(
                    f,
                    "Manifest {{ id: {}, bytes: {} }}",
                    short(id),
                    encoded.len()
                )
            }
            Message::Chunk { id, len, stored } => write!(
                f,
                "Chunk {{ id: {}, len: {len}, stored: {} }}",
                short(id),
                stored.len()
            ),
            Message::ImageIs {
                manifest,
                config,
                layers,
            } => write!(
                f,
                "ImageIs {{ manifest: {}, config: {}, layers: {} }}",
                manifest.len(),
                config.len(),
                layers.len()
            ),
            Message::Missing { what, id } => write!(f, "Missing({what:?}, {})", short(id)),
            Message::Hello { chain, genesis } => write!(f, "Hello({chain:?}, {genesis:?})"),
            Message::Txs(lines) => write!(f, "Txs({})", lines.len()),
            Message::Announce(id) => write!(f, "Announce({id:?})"),
            Message::Proposal(p) => p.fmt(f),
            Message::Vote { block, height, .. } => write!(f, "Vote({block:?} at {height})"),
            Message::Behind => write!(f, "Behind"),
            Message::Error { code, message } => write!(f, "Error({code}, {message:?})"),
        }
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame longer than the limit where it arrived.
    #[error("a frame of {len} bytes, above the limit of {limit}")]
    TooLarge {
        /// Its announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An unknown frame kind.
    #[error("unknown frame kind {0:#04x}")]
    Kind(u8),
    /// The body does not parse as its kind.
    #[error("a malformed {kind} frame: {why}")]
    Malformed {
        /// The kind's name.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended {0} bytes into a frame")]
    Truncated(usize),
}

const HEADS: u8 = 0x01;
const BLOCKS: u8 = 0x02;
const NOTES: u8 = 0x03;
const MANIFESTS: u8 = 0x10;
const CHUNKS: u8 = 0x11;
const IMAGE: u8 = 0x12;
const HEADS_ARE: u8 = 0x81;
const PACK: u8 = 0x82;
const MANIFEST: u8 = 0x90;
const CHUNK: u8 = 0x91;
const IMAGE_IS: u8 = 0x92;
const MISSING: u8 = 0x9f;
const HELLO: u8 = 0xa0;
const TXS: u8 = 0xa1;
const ANNOUNCE: u8 = 0xa2;
const VOTE: u8 = 0xa3;
const BEHIND: u8 = 0xa4;
const PROPOSAL: u8 = 0xa5;
const ERROR: u8 = 0xff;

fn put_str(out: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(MAX_STR)];
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_ids(out: &mut Vec<u8>, ids: &[BlockId]) {
    out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
}

fn put_hashes(out: &mut Vec<u8>, ids: &[Hash]) {
    out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        out.extend_from_slice(id);
    }
}

impl Message {
    /// Whether this is a request (the first frame of a stream).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::Heads
                | Message::Blocks { .. }
                | Message::Notes { .. }
                | Message::Manifests(_)
                | Message::Chunks(_)
                | Message::Image(_)
        )
    }

    /// The front of a `Chunk` frame: everything before its `stored`
    /// bytes, so a server sends those as they are, uncopied.
    /// `chunk_header(..) ++ stored` is `Message::Chunk{..}.encode()`.
    pub fn chunk_header(id: &Hash, len: u32, stored_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(45);
        out.extend_from_slice(&(1 + 32 + 4 + 4 + stored_len as u32).to_be_bytes());
        out.push(CHUNK);
        out.extend_from_slice(id);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&(stored_len as u32).to_be_bytes());
        out
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // The length and kind go in front once the body is written: the
        // body (a chunk's bytes, most of all) is copied once.
        let capacity = match self {
            Message::Chunk { stored, .. } => 5 + 32 + 4 + 4 + stored.len(),
            Message::Proposal(p) => 64 + p.bytes() + 72 * (p.manifests.len() + p.chunks.len()),
            _ => 64,
        };
        let mut body = Vec::with_capacity(capacity);
        body.extend_from_slice(&[0; 5]);
        let kind = match self {
            Message::Heads => HEADS,
            Message::Blocks {
                wants,
                haves,
                max_bytes,
            } => {
                put_ids(&mut body, wants);
                put_ids(&mut body, haves);
                body.extend_from_slice(&max_bytes.to_be_bytes());
                BLOCKS
            }
            Message::Notes { want, haves } => {
                body.extend_from_slice(want.as_bytes());
                put_ids(&mut body, haves);
                NOTES
            }
            Message::Manifests(ids) => {
                put_hashes(&mut body, ids);
                MANIFESTS
            }
            Message::Chunks(ids) => {
                put_hashes(&mut body, ids);
                CHUNKS
            }
            Message::Image(h) => {
                body.extend_from_slice(h);
                IMAGE
            }
            Message::HeadsAre {
                chain,
                genesis,
                refs,
            } => {
                put_str(&mut body, chain);
                body.extend_from_slice(genesis.as_bytes());
                body.extend_from_slice(&(refs.len() as u32).to_be_bytes());
                for (name, id) in refs {
                    put_str(&mut body, name);
                    body.extend_from_slice(id.as_bytes());
                }
                HEADS_ARE
            }
            Message::Pack {
                commits,
                objects,
                more,
            } => {
                put_ids(&mut body, commits);
                body.extend_from_slice(&objects.to_be_bytes());
                body.push(u8::from(*more));
                PACK
            }
            Message::Manifest { id, encoded } => {
                body.extend_from_slice(id);
                put_bytes(&mut body, encoded);
                MANIFEST
            }
            Message::Chunk { id, len, stored } => {
                body.extend_from_slice(id);
                body.extend_from_slice(&len.to_be_bytes());
                put_bytes(&mut body, stored);
                CHUNK
            }
            Message::ImageIs {
                manifest,
                config,
                layers,
            } => {
                put_bytes(&mut body, manifest);
                put_bytes(&mut body, config);
                body.extend_from_slice(&(layers.len() as u32).to_be_bytes());
                for l in layers {
                    body.extend_from_slice(&l.diff_id);
                    body.extend_from_slice(&l.size.to_be_bytes());
                    body.extend_from_slice(&l.blob);
                }
                IMAGE_IS
            }
            Message::Missing { what, id } => {
                body.push(match what {
                    What::Manifest => 1,
                    What::Chunk => 2,
                    What::Image => 3,
                });
                body.extend_from_slice(id);
                MISSING
            }
            Message::Hello { chain, genesis } => {
                put_str(&mut body, chain);
                body.extend_from_slice(genesis.as_bytes());
                HELLO
            }
            Message::Txs(lines) => {
                body.extend_from_slice(&(lines.len() as u32).to_be_bytes());
                for line in lines {
                    put_bytes(&mut body, line);
                }
                TXS
            }
            Message::Announce(id) => {
                body.extend_from_slice(id.as_bytes());
                ANNOUNCE
            }
            Message::Proposal(p) => {
                body.extend_from_slice(p.block.as_bytes());
                body.extend_from_slice(&p.objects.to_be_bytes());
                put_bytes(&mut body, &p.pack);
                body.extend_from_slice(&(p.manifests.len() as u32).to_be_bytes());
                for (id, encoded) in &p.manifests {
                    body.extend_from_slice(id);
                    put_bytes(&mut body, encoded);
                }
                body.extend_from_slice(&(p.chunks.len() as u32).to_be_bytes());
                for c in &p.chunks {
                    body.extend_from_slice(&c.id);
                    body.extend_from_slice(&c.len.to_be_bytes());
                    put_bytes(&mut body, &c.stored);
                }
                PROPOSAL
            }
            Message::Vote {
                block,
                height,
                signature,
            } => {
                body.extend_from_slice(block.as_bytes());
                body.extend_from_slice(&height.to_be_bytes());
                put_str(&mut body, signature);
                VOTE
            }
            Message::Behind => BEHIND,
            Message::Error { code, message } => {
                body.extend_from_slice(&code.to_be_bytes());
                put_str(&mut body, message);
                ERROR
            }
        };
        let len = body.len() as u32 - 4;
        body[..4].copy_from_slice(&len.to_be_bytes());
        body[4] = kind;
        body
    }

    /// Decodes one frame's kind and body (as [`Decoder`] cut them out).
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        let name = match kind {
            HEADS => "Heads",
            BLOCKS => "Blocks",
            NOTES => "Notes",
            MANIFESTS => "Manifests",
            CHUNKS => "Chunks",
            IMAGE => "Image",
            HEADS_ARE => "HeadsAre",
            PACK => "Pack",
            MANIFEST => "Manifest",
            CHUNK => "Chunk",
            IMAGE_IS => "ImageIs",
            MISSING => "Missing",
            HELLO => "Hello",
            TXS => "Txs",
            ANNOUNCE => "Announce",
            PROPOSAL => "Proposal",
            VOTE => "Vote",
            BEHIND => "Behind",
            ERROR => "Error",
            k => return Err(WireError::Kind(k)),
        };
        let mut r = Reader {
            body,
            at: 0,
            kind: name,
        };
        let m = match kind {
            HEADS => Message::Heads,
            BLOCKS => Message::Blocks {
                wants: r.ids(MAX_IDS)?,
                haves: r.ids(MAX_IDS)?,
                max_bytes: r.u64()?,
            },
            NOTES => Message::Notes {
                want: r.id()?,
                haves: r.ids(MAX_IDS)?,
            },
            MANIFESTS => Message::Manifests(r.hashes(MAX_IDS)?),
            CHUNKS => Message::Chunks(r.hashes(MAX_IDS)?),
            IMAGE => Message::Image(r.hash()?),
            HEADS_ARE => {
                let chain = r.str()?;
                let genesis = r.id()?;
                let n = r.count(MAX_REFS)?;
                let mut refs = Vec::with_capacity(n);
                for _ in 0..n {
                    refs.push((r.str()?, r.id()?));
                }
                Message::HeadsAre {
                    chain,
                    genesis,
                    refs,
                }
            }
            PACK => Message::Pack {
                commits: r.ids(1 << 20)?,
                objects: r.u32()?,
                more: match r.u8()? {
                    0 => false,
                    1 => true,
                    b => return Err(r.bad(format!("more is {b}, not 0 or 1"))),
                },
            },
            MANIFEST => Message::Manifest {
                id: r.hash()?,
                encoded: r.bytes(MAX_FRAME)?,
            },
            CHUNK => Message::Chunk {
                id: r.hash()?,
                len: r.u32()?,
                stored: r.bytes(MAX_FRAME)?,
            },
            IMAGE_IS => {
                let manifest = r.bytes(MAX_DOC)?;
                let config = r.bytes(MAX_DOC)?;
                let n = r.count(4096)?;
                let mut layers = Vec::with_capacity(n);
                for _ in 0..n {
                    layers.push(LayerRef {
                        diff_id: r.hash()?,
                        size: r.u64()?,
                        blob: r.hash()?,
                    });
                }
                Message::ImageIs {
                    manifest,
                    config,
                    layers,
                }
            }
            MISSING => Message::Missing {
                what: match r.u8()? {
                    1 => What::Manifest,
                    2 => What::Chunk,
                    3 => What::Image,
                    b => return Err(r.bad(format!("missing kind {b}"))),
                },
                id: r.hash()?,
            },
            HELLO => Message::Hello {
                chain: r.str()?,
                genesis: r.id()?,
            },
            TXS => {
                let n = r.count(MAX_IDS)?;
                let mut lines = Vec::with_capacity(n);
                for _ in 0..n {
                    lines.push(r.bytes(MAX_TX_LINE)?);
                }
                Message::Txs(lines)
            }
            ANNOUNCE => Message::Announce(r.id()?),
            PROPOSAL => {
                let block = r.id()?;
                let objects = r.u32()?;
                let pack = r.bytes(MAX_FRAME)?;
                let n = r.count(MAX_IDS)?;
                let mut manifests = Vec::with_capacity(n);
                for _ in 0..n {
                    manifests.push((r.hash()?, r.bytes(MAX_FRAME)?));
                }
                let n = r.count(MAX_IDS)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.hash()?;
                    let len = r.u32()?;
                    let stored = r.bytes(MAX_FRAME)?;
                    if stored.len() > len as usize {
                        return Err(r.bad(format!(
                            "chunk {} is stored in {} bytes, more than its {len}",
                            short(&id),
                            stored.len()
                        )));
                    }
                    chunks.push(PushedChunk { id, len, stored });
                }
                Message::Proposal(Box::new(Proposal {
                    block,
                    objects,
                    pack,
                    manifests,
                    chunks,
                }))
            }
            VOTE => Message::Vote {
                block: r.id()?,
                height: r.u64()?,
                signature: r.str()?,
            },
            BEHIND => Message::Behind,
            ERROR => Message::Error {
                code: r.u16()?,
                message: r.str()?,
            },
            _ => unreachable!("kinds are matched above"),
        };
        if r.at != body.len() {
            return Err(r.bad(format!(
                "{} bytes after the frame's fields",
                body.len() - r.at
            )));
        }
        Ok(m)
    }
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    kind: &'static str,
}

impl Reader<'_> {
    fn bad(&self, why: String) -> WireError {
        WireError::Malformed {
            kind: self.kind,
            why,
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.body.len())
            .ok_or_else(|| self.bad(format!("it ends before a field of {n} bytes")))?;
        let out = &self.body[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn count(&mut self, max: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.bad(format!("a list of {n}, above the limit of {max}")));
        }
        Ok(n)
    }

    fn id(&mut self) -> Result<BlockId, WireError> {
        let bytes: [u8; 20] = self.take(20)?.try_into().expect("20 bytes");
        Ok(BlockId::from_sha1(bytes))
    }

    fn hash(&mut self) -> Result<Hash, WireError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    fn ids(&mut self, max: usize) -> Result<Vec<BlockId>, WireError> {
        let n = self.count(max)?;
        (0..n).map(|_| self.id()).collect()
    }

    fn hashes(&mut self, max: usize) -> Result<Vec<Hash>, WireError> {
        let n = self.count(max)?;
        (0..n).map(|_| self.hash()).collect()
    }

    fn str(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        if n > MAX_STR {
            return Err(self.bad(format!("a string of {n} bytes, above {MAX_STR}")));
        }
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad("a string that is not UTF-8".into()))
    }

    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.bad(format!("{n} bytes, above the limit of {max}")));
        }
        Ok(self.take(n)?.to_vec())
    }
}

/// Cuts frames out of a byte stream, refusing one longer than `limit`
/// as soon as its length arrives (nothing of it is buffered).
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    limit: usize,
}

impl Decoder {
    /// A decoder of frames of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit: limit.min(MAX_FRAME),
        }
    }

    /// Bytes that arrived.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// How many more bytes the frame being read needs (at least 1 when
    /// none is complete), so a driver reads no further than one frame.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < 4 {
            return 4 - self.buf.len();
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        (4 + len).saturating_sub(self.buf.len()).max(1)
    }

    /// The next complete frame, if one is buffered.
    pub fn frame(&mut self) -> Result<Option<Message>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > self.limit {
            return Err(WireError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if len == 0 {
            return Err(WireError::Malformed {
                kind: "zero-length",
                why: "a frame holds at least its kind".into(),
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = self.buf[4];
        let m = Message::decode(kind, &self.buf[5..4 + len]);
        self.buf.drain(..4 + len);
        m.map(Some)
    }

    /// The stream ended: bytes left over are a truncated frame.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated(self.buf.len()))
        }
    }

    /// Bytes buffered past the last frame (a pack that followed it).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_header_is_the_front_of_its_frame() {
        for stored in [vec![], vec![7u8; 1], vec![3u8; 70_000]] {
            let id = [9u8; 32];
            let mut framed = Message::chunk_header(&id, 70_000, stored.len());
            framed.extend_from_slice(&stored);
            let m = Message::Chunk {
                id,
                len: 70_000,
                stored,
            };
            assert_eq!(framed, m.encode());
        }
    }
}

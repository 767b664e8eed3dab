//! The driver of a sync pass ([`crate::sync::Session`]) against one peer:
//! it asks over the sync protocol, indexes packs as they arrive, fetches the
//! values and images new trees name over the content protocol (chunks on
//! parallel streams, each hashed on arrival), verifies, and moves refs.
//!
//! It runs on the thread that owns the ledger (a `Ledger` is not shared
//! between threads), with the network futures on a runtime of its own.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;

use utter_chunkstore::{ChunkId, Manifest, ManifestId, Store, StoredChunk};
use utter_formats::BlockId;
use utter_images::{Digest, ImageDocs, Images, Layer};
use utter_ledger::cert::Certificate;
use utter_ledger::sync::{FETCHED_PREFIX, Indexed};
use utter_ledger::{Ledger, LedgerError};

use crate::endpoint::{ALPN_CHUNKS, ALPN_SYNC, Answer, Conn, Endpoint, NetError};
use crate::sync::{
    Action, Event, Fault, HEADS_PREFIX, Local, NOTES_REF, RefUpdate, Relation, Session, Summary,
};
use crate::wire::{Hash, MAX_IDS, Message, What};

/// Main, the one ref only a certificate moves.
const MAIN_REF: &str = "refs/heads/main";
/// How many blocks under an uncertified main a pass looks through for the
/// highest certified one.
const CERTIFIED_SEARCH: usize = 10_000;

/// The pack batch a pass asks for.
pub const BATCH_BYTES: u64 = 32 << 20;
/// The most bytes of one pack accepted from a peer.
pub const MAX_PACK: u64 = 256 << 20;
/// Parallel chunk streams.
pub const CHUNK_STREAMS: usize = 4;
/// Chunks asked for per stream request, at most.
const CHUNKS_PER_ASK: usize = 256;
/// Plain bytes asked for per stream request, at most (a larger chunk is
/// asked for alone): with [`CHUNK_STREAMS`] and [`STORING`] this bounds
/// what a pass holds in memory.
const BYTES_PER_ASK: u64 = 8 << 20;
/// Batches of chunks written to the store while the next arrive.
const STORING: usize = 2;

/// A batch being written: the task, its chunks and their bytes.
type StoringBatch = (
    tokio::task::JoinHandle<Result<u64, utter_chunkstore::Error>>,
    u64,
    u64,
);

/// The chunks to ask for, cut into requests of at most [`CHUNKS_PER_ASK`]
/// chunks and [`BYTES_PER_ASK`] bytes.
fn asks(chunks: impl Iterator<Item = (ChunkId, u32)>) -> Vec<Vec<(ChunkId, u32)>> {
    let mut out: Vec<Vec<(ChunkId, u32)>> = Vec::new();
    let mut bytes = 0u64;
    for (id, len) in chunks {
        let full = out.last().is_none_or(|ask| {
            ask.len() >= CHUNKS_PER_ASK || bytes + u64::from(len) > BYTES_PER_ASK
        });
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += u64::from(len);
        out.last_mut().expect("pushed above").push((id, len));
    }
    out
}

/// How far a pass got, for a progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Git objects received.
    pub objects: u64,
    /// Chunks received.
    pub chunks: u64,
    /// Chunks needed.
    pub chunks_total: u64,
    /// Bytes received (packs and chunks as sent).
    pub bytes: u64,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The session's verdict (whose fault it says).
    #[error(transparent)]
    Fault(#[from] Fault),
    /// The network.
    #[error(transparent)]
    Net(#[from] NetError),
    /// This node's ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl PassError {
    /// Whether what the peer sent cannot be trusted (it lied, rather than
    /// stalled or went away): the packs of the pass are dropped.
    pub fn untrustworthy(&self) -> bool {
        match self {
            PassError::Fault(f) => matches!(
                f,
                Fault::Invalid { .. } | Fault::Protocol(_) | Fault::OtherChain { .. }
            ),
            PassError::Net(n) => matches!(n, NetError::Wire { .. } | NetError::TooMuch { .. }),
            PassError::Ledger(_) => false,
        }
    }

    /// Whether the peer is to blame.
    pub fn peer_is_at_fault(&self) -> bool {
        match self {
            PassError::Fault(f) => f.peer_is_at_fault(),
            PassError::Net(n) => n.peer_is_at_fault(),
            PassError::Ledger(_) => false,
        }
    }
}

/// What a pass brought.
#[derive(Debug, Clone)]
pub struct Passed {
    /// The session's summary.
    pub summary: Summary,
    /// The peer's key.
    pub peer: utter_formats::Signer,
    /// Objects, chunks and bytes received.
    pub progress: Progress,
    /// Images main names that the peer could not provide.
    pub missing_images: Vec<String>,
    /// Bytes that arrived on the pass's connections (UDP payload, QUIC
    /// and TLS included): what the pass cost on the wire.
    pub wire_bytes: u64,
}

/// One pass against the peer at `addr`.
pub struct Pass<'a> {
    /// The endpoint to connect from.
    pub endpoint: &'a Endpoint,
    /// The peer.
    pub addr: SocketAddr,
    /// Its key's fingerprint, when pinned.
    pub pin: Option<String>,
    /// This node's ledger.
    pub ledger: &'a Ledger,
    /// Its chunk store.
    pub store: &'a Store,
    /// Its image store.
    pub images: &'a Images,
    /// How much one pack may carry (the server keeps it between 1 and 64
    /// MiB); [`BATCH_BYTES`] is the default.
    pub batch_bytes: u64,
    /// Hears progress.
    pub progress: &'a mut dyn FnMut(Progress),
}

/// The local view of a ledger, as a session starts from it.
pub fn local_view(ledger: &Ledger, cloning: bool) -> Result<Local, LedgerError> {
    let fetched: Vec<BlockId> = ledger.fetched()?.into_iter().map(|(_, id)| id).collect();
    if cloning {
        return Ok(Local {
            fetched,
            ..Local::default()
        });
    }
    Ok(Local {
        chain: Some(ledger.chain().to_string()),
        genesis: Some(ledger.genesis()),
        refs: ledger.shared_refs()?.into_iter().collect(),
        fetched,
    })
}

/// A short tag for branches kept from a peer: the first 8 hex digits of
/// the BLAKE3 of its key.
pub fn peer_tag(key: &utter_formats::Signer) -> String {
    hex::encode(&blake3::hash(&key.ed25519_bytes()).as_bytes()[..4])
}

impl Pass<'_> {
    /// Runs the pass. A clone (`cloning`) starts from no refs and takes the
    /// peer's chain.
    pub async fn run(mut self, cloning: bool) -> Result<Passed, PassError> {
        let sync = self
            .endpoint
            .connect(self.addr, ALPN_SYNC, self.pin.clone())
            .await?;
        let peer = sync.peer().clone();
        let local = local_view(self.ledger, cloning)?;
        let mut session = Session::new(local, &peer_tag(&peer), self.batch_bytes);
        let mut progress = Progress::default();
        let mut packs: Vec<Indexed> = Vec::new();
        let mut answer: Option<Answer> = None;
        let mut content: Option<Conn> = None;
        let mut missing_images = Vec::new();
        let result = loop {
            let Some(action) = session.poll() else {
                break Err(PassError::Fault(Fault::Driver(
                    "the session stopped without an end".into(),
                )));
            };
            let event = match action {
                Action::Ask(request) => {
                    let mut a = match sync.ask(&request).await {
                        Ok(a) => a,
                        Err(e) => break Err(e.into()),
                    };
                    match a.frame().await {
                        Ok(Some(frame)) => {
                            answer = Some(a);
                            Event::Answer(frame)
                        }
                        Ok(None) => Event::Failed(Fault::Protocol(
                            "the peer ended the stream without answering".into(),
                        )),
                        Err(e) => break Err(e.into()),
                    }
                }
                Action::Lookup(ids) => {
                    Event::Missing(ids.into_iter().filter(|id| !self.ledger.has(*id)).collect())
                }
                Action::ReceivePack { commits, objects } => {
                    let Some(a) = answer.as_mut() else {
                        break Err(Fault::Driver("a pack without its answer".into()).into());
                    };
                    match self.receive_pack(a, &commits, objects, &mut progress).await {
                        Ok((indexed, tips)) => {
                            packs.push(indexed);
                            Event::Stored { tips }
                        }
                        Err(e) => break Err(e),
                    }
                }
                Action::FetchContent { commits, main } => {
                    if content.is_none() {
                        match self
                            .endpoint
                            .connect(self.addr, ALPN_CHUNKS, Some(peer.fingerprint()))
                            .await
                        {
                            Ok(c) => content = Some(c),
                            Err(e) => break Err(e.into()),
                        }
                    }
                    let conn = content.as_ref().expect("connected above");
                    match self
                        .fetch_content(conn, &commits, main, &mut progress)
                        .await
                    {
                        Ok(missing) => {
                            missing_images = missing;
                            Event::Fetched
                        }
                        Err(e) => break Err(e),
                    }
                }
                Action::Check(heads) => match self.check(&heads) {
                    Ok(relations) => Event::Checked(relations),
                    Err(e) => break Err(e.into()),
                },
                Action::Update(updates) => match self.update(&updates) {
                    Ok(()) => {
                        for p in &packs {
                            self.ledger.release_pack(p);
                        }
                        let _ = self.ledger.clear_fetched();
                        Event::Updated
                    }
                    Err(e) => break Err(e.into()),
                },
                Action::Done(summary) => {
                    break Ok(Passed {
                        summary,
                        peer: peer.clone(),
                        progress,
                        missing_images: std::mem::take(&mut missing_images),
                        wire_bytes: sync.wire_bytes()
                            + content.as_ref().map_or(0, Conn::wire_bytes),
                    });
                }
                Action::Fail(fault) => break Err(fault.into()),
            };
            session.handle(event);
        };
        if let Err(e) = &result {
            if e.untrustworthy() {
                // What it sent is not to be kept.
                for p in &packs {
                    self.ledger.drop_pack(p);
                }
                let _ = self.ledger.clear_fetched();
            }
            let why = e.to_string();
            sync.close(&why);
            if let Some(c) = &content {
                c.close(&why);
            }
        }
        result
    }

    /// Pulls `wants` and their ancestors not under `haves` (packs in
    /// batches), then what their trees name outside git: values and the
    /// images their `dapp.toml` files name. Nothing is verified and no ref
    /// moves: the caller checks each block before it uses it (consensus
    /// pulls the blocks it is told of this way). Returns the commits that
    /// arrived, parents first.
    pub async fn pull(
        mut self,
        wants: Vec<BlockId>,
        mut haves: Vec<BlockId>,
    ) -> Result<Vec<BlockId>, PassError> {
        let sync = self
            .endpoint
            .connect(self.addr, ALPN_SYNC, self.pin.clone())
            .await?;
        let mut progress = Progress::default();
        let mut received = Vec::new();
        let mut packs = Vec::new();
        let result: Result<(), PassError> = async {
            loop {
                haves.truncate(MAX_IDS);
                let request = Message::Blocks {
                    wants: wants.clone(),
                    haves: haves.clone(),
                    max_bytes: self.batch_bytes,
                };
                let mut answer = sync.ask(&request).await?;
                let (commits, objects, more) = match answer.frame().await? {
                    Some(Message::Pack {
                        commits,
                        objects,
                        more,
                    }) => (commits, objects, more),
                    Some(Message::Error { message, .. }) => {
                        return Err(Fault::Refused(message).into());
                    }
                    other => {
                        return Err(
                            Fault::Protocol(format!("{other:?} where a pack belongs")).into()
                        );
                    }
                };
                if commits.is_empty() {
                    return Ok(());
                }
                let (indexed, tips) = self
                    .receive_pack(&mut answer, &commits, objects, &mut progress)
                    .await?;
                packs.push(indexed);
                self.ledger.unfetch(&tips)?;
                received.extend_from_slice(&commits);
                if !more {
                    return Ok(());
                }
                haves.splice(0..0, tips);
            }
        }
        .await;
        let result = match result.and_then(|()| self.lacks_content(&received)) {
            Ok(false) => Ok(()),
            Ok(true) => match self
                .endpoint
                .connect(self.addr, ALPN_CHUNKS, Some(sync.peer().fingerprint()))
                .await
            {
                Ok(content) => {
                    let fetched = self
                        .fetch_content(&content, &received, None, &mut progress)
                        .await
                        .map(drop);
                    content.close("done");
                    fetched
                }
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        match &result {
            Err(e) if e.untrustworthy() => {
                for p in &packs {
                    self.ledger.drop_pack(p);
                }
            }
            _ => {
                for p in &packs {
                    self.ledger.release_pack(p);
                }
            }
        }
        match &result {
            Ok(()) => sync.close("done"),
            Err(e) => sync.close(&e.to_string()),
        }
        result.map(|()| received)
    }

    /// Whether the trees of `commits` name values or images not here (a
    /// pull then fetches them; most blocks name none).
    fn lacks_content(&self, commits: &[BlockId]) -> Result<bool, PassError> {
        if commits.is_empty() {
            return Ok(false);
        }
        let content = self.ledger.new_content(commits)?;
        for m in &content.manifests {
            if !self.store.has_manifest(m).map_err(store_err)? {
                return Ok(true);
            }
        }
        Ok(content.images.iter().any(|d| self.images.get(d).is_err()))
    }

    async fn receive_pack(
        &mut self,
        answer: &mut Answer,
        commits: &[BlockId],
        objects: u32,
        progress: &mut Progress,
    ) -> Result<(Indexed, Vec<BlockId>), PassError> {
        // Indexed while it arrives: gix-pack reads the pieces on a blocking
        // thread as quinn hands them over (a bounded queue: a slow index
        // slows the peer, memory stays flat).
        let indexer = self.ledger.pack_indexer();
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(PACK_PIECES_QUEUED);
        let indexing = tokio::task::spawn_blocking(move || {
            let mut reader = std::io::BufReader::with_capacity(
                1 << 20,
                PieceReader {
                    rx,
                    piece: bytes::Bytes::new(),
                },
            );
            indexer.index(&mut reader)
        });
        let mut received = 0u64;
        let streamed: Result<(), NetError> = async {
            while let Some(piece) = answer.piece().await? {
                received += piece.len() as u64;
                if received > MAX_PACK {
                    return Err(NetError::TooMuch {
                        addr: self.addr,
                        limit: MAX_PACK,
                    });
                }
                if tx.send(piece).await.is_err() {
                    // The index gave up; it says why below.
                    answer.stop();
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let indexed = indexing.await.map_err(|e| {
            PassError::Fault(Fault::Driver(format!("indexing the pack failed: {e}")))
        })?;
        if let Err(e) = streamed {
            if let Ok(indexed) = &indexed {
                self.ledger.drop_pack(indexed);
            }
            return Err(e.into());
        }
        let indexed = indexed.map_err(|e| {
            Fault::Protocol(format!(
                "the pack does not read as a git pack: {}",
                with_causes(&e)
            ))
        })?;
        let bad = |why: String| {
            self.ledger.drop_pack(&indexed);
            PassError::Fault(Fault::Protocol(why))
        };
        if indexed.objects != objects {
            return Err(bad(format!(
                "the pack holds {} objects, its header said {objects}",
                indexed.objects
            )));
        }
        if let Some(first) = commits.first() {
            self.ledger.refresh(*first);
        }
        if let Some(missing) = commits.iter().find(|c| !self.ledger.has(**c)) {
            return Err(bad(format!("the pack lacks commit {missing} it announced")));
        }
        // Tips of the batch, kept as fetched refs: an interrupted pass
        // does not fetch them again.
        let mut parents = HashSet::new();
        for c in commits {
            if let Ok(b) = self.ledger.block(*c) {
                parents.extend(b.parents);
            }
        }
        let tips: Vec<BlockId> = commits
            .iter()
            .copied()
            .filter(|c| !parents.contains(c))
            .collect();
        for tip in &tips {
            let name = format!("{FETCHED_PREFIX}{tip}");
            if self.ledger.ref_id(&name)?.is_none() {
                self.ledger.set_sync_ref(&name, *tip, None)?;
            }
        }
        progress.objects += u64::from(objects);
        progress.bytes += received;
        (self.progress)(*progress);
        Ok((indexed, tips))
    }

    /// Fetches what the trees of `commits` name outside git, and every
    /// image `main` names. Returns the images the peer could not provide.
    async fn fetch_content(
        &mut self,
        conn: &Conn,
        commits: &[BlockId],
        main: Option<BlockId>,
        progress: &mut Progress,
    ) -> Result<Vec<String>, PassError> {
        let content = self.ledger.new_content(commits)?;
        let mut images: BTreeSet<String> = content.images.clone();
        if let Some(main) = main
            && self.ledger.has(main)
        {
            images.extend(self.ledger.images_at(main)?);
        }
        let images: Vec<Digest> = images
            .iter()
            .filter_map(|d| d.parse().ok())
            .filter(|d: &Digest| self.images.get(&d.to_string()).is_err())
            .collect();
        // Image documents first: they say which layer blobs to fetch.
        let mut docs: Vec<(Digest, ImageDocs)> = Vec::new();
        let mut unavailable = Vec::new();
        for digest in images {
            match self.ask_image(conn, &digest).await? {
                Some(d) => docs.push((digest, d)),
                None => unavailable.push(digest.to_string()),
            }
        }
        let mut wanted: BTreeSet<ManifestId> = content.manifests.clone();
        for (_, d) in &docs {
            wanted.extend(d.blobs());
        }
        let wanted: Vec<ManifestId> = wanted
            .into_iter()
            .filter(|m| !self.store.has_manifest(m).unwrap_or(false))
            .collect();
        let manifests = self.ask_manifests(conn, &wanted).await?;
        // Pinned while the chunks are in flight (gc leaves them alone).
        for (id, _) in &manifests {
            self.store.pin(id).map_err(store_err)?;
        }
        let fetched = self.fetch_chunks(conn, &manifests, progress).await;
        let stored = fetched.and_then(|()| {
            for (_, manifest) in &manifests {
                self.store
                    .put_manifest(&manifest.encode())
                    .map_err(store_err)?;
            }
            Ok(())
        });
        let adopted = stored.and_then(|()| {
            let source = format!("sync:{}", conn.peer().fingerprint());
            for (digest, d) in &docs {
                self.images.adopt(digest, d, &source).map_err(|e| {
                    PassError::Fault(Fault::Protocol(format!("image {digest}: {e}")))
                })?;
            }
            Ok(())
        });
        // Layers are now pinned by their image; values by this one pin.
        let layer_blobs: HashSet<ManifestId> = docs.iter().flat_map(|(_, d)| d.blobs()).collect();
        for (id, _) in &manifests {
            if layer_blobs.contains(id) && !content.manifests.contains(id) {
                let _ = self.store.unpin(id);
            }
        }
        adopted.map(|()| unavailable)
    }

    async fn ask_image(
        &mut self,
        conn: &Conn,
        digest: &Digest,
    ) -> Result<Option<ImageDocs>, PassError> {
        let mut a = conn.ask(&Message::Image(*digest.as_bytes())).await?;
        let frame = a.frame().await?;
        match frame {
            Some(Message::ImageIs {
                manifest,
                config,
                layers,
            }) => {
                let docs = ImageDocs {
                    manifest,
                    config,
                    layers: layers
                        .iter()
                        .map(|l| Layer {
                            diff_id: Digest::from_bytes(l.diff_id),
                            size: l.size,
                            blob: ManifestId(l.blob),
                        })
                        .collect(),
                };
                docs.check(digest)
                    .map_err(|e| Fault::Protocol(e.to_string()))?;
                Ok(Some(docs))
            }
            Some(Message::Missing {
                what: What::Image, ..
            }) => Ok(None),
            other => Err(Fault::Protocol(format!("{other:?} where image {digest} belongs")).into()),
        }
    }

    async fn ask_manifests(
        &mut self,
        conn: &Conn,
        ids: &[ManifestId],
    ) -> Result<Vec<(ManifestId, Manifest)>, PassError> {
        let mut out = Vec::new();
        for batch in ids.chunks(MAX_IDS) {
            let hashes: Vec<Hash> = batch.iter().map(|m| m.0).collect();
            let mut a = conn.ask(&Message::Manifests(hashes)).await?;
            for want in batch {
                match a.frame().await? {
                    Some(Message::Manifest { id, encoded }) if id == want.0 => {
                        if ManifestId::of(&encoded) != *want {
                            return Err(Fault::Protocol(format!(
                                "manifest {want} arrived with other bytes"
                            ))
                            .into());
                        }
                        let manifest = Manifest::decode(&encoded).map_err(|e| {
                            Fault::Protocol(format!("manifest {want} does not decode: {e}"))
                        })?;
                        out.push((*want, manifest));
                    }
                    Some(Message::Missing {
                        what: What::Manifest,
                        id,
                    }) if id == want.0 => {
                        return Err(Fault::Driver(format!(
                            "the peer does not have manifest {want} that its blocks name"
                        ))
                        .into());
                    }
                    other => {
                        return Err(Fault::Protocol(format!(
                            "{other:?} where manifest {want} belongs"
                        ))
                        .into());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Fetches every chunk the manifests name that is not here, over
    /// parallel streams; each is hashed before it is stored.
    async fn fetch_chunks(
        &mut self,
        conn: &Conn,
        manifests: &[(ManifestId, Manifest)],
        progress: &mut Progress,
    ) -> Result<(), PassError> {
        let mut wanted: Vec<(ChunkId, u32)> = manifests
            .iter()
            .flat_map(|(_, m)| m.entries().iter().map(|e| (e.id, e.len)))
            .collect();
        wanted.sort();
        wanted.dedup_by_key(|(id, _)| *id);
        let ids: Vec<ChunkId> = wanted.iter().map(|(id, _)| *id).collect();
        let missing = self.store.missing(&ids).map_err(store_err)?;
        progress.chunks_total += missing.len() as u64;
        (self.progress)(*progress);
        let lens: BTreeMap<ChunkId, u32> = wanted.into_iter().collect();
        let asks = asks(
            missing
                .iter()
                .map(|id| (*id, lens.get(id).copied().unwrap_or(u32::MAX))),
        );
        let mut next = 0;
        let mut running = futures_lite_join::Running::new();
        // Batches being written while the next ones arrive.
        let mut storing = std::collections::VecDeque::new();
        loop {
            while running.len() < CHUNK_STREAMS && next < asks.len() {
                let ask = asks[next].clone();
                next += 1;
                let conn = conn.clone();
                running.push(async move { receive_chunks(conn, ask).await });
            }
            while storing.len() >= STORING || (next == asks.len() && running.len() == 0) {
                let Some(batch) = storing.pop_front() else {
                    break;
                };
                self.stored(batch, progress).await?;
            }
            let Some(done) = running.next().await else {
                break;
            };
            let chunks = done?;
            let bytes: u64 = chunks.iter().map(|c| c.stored.len() as u64).sum();
            let n = chunks.len() as u64;
            let store = self.store.clone();
            let task = tokio::task::spawn_blocking(move || store.put_chunks_stored(chunks));
            storing.push_back((task, n, bytes));
        }
        while let Some(batch) = storing.pop_front() {
            self.stored(batch, progress).await?;
        }
        Ok(())
    }

    /// Waits for a batch of chunks to be written; counts it.
    async fn stored(
        &mut self,
        (task, n, bytes): StoringBatch,
        progress: &mut Progress,
    ) -> Result<(), PassError> {
        task.await
            .map_err(|e| PassError::Fault(Fault::Driver(e.to_string())))?
            .map_err(chunk_err)?;
        progress.chunks += n;
        progress.bytes += bytes;
        (self.progress)(*progress);
        Ok(())
    }

    /// How each head relates to this node's, once everything under it is
    /// verified (certificates included).
    fn check(&self, heads: &[(String, BlockId)]) -> Result<Vec<(String, Relation)>, LedgerError> {
        let blocks: Vec<BlockId> = heads
            .iter()
            .filter(|(n, _)| n.starts_with(HEADS_PREFIX))
            .map(|(_, id)| *id)
            .collect();
        let report = self.ledger.verify(Some(&blocks), false, |_, _| {})?;
        let verdicts: BTreeMap<BlockId, Result<(), String>> = report
            .blocks
            .iter()
            .map(|r| (r.id, r.verdict.clone().map_err(|e| e.to_string())))
            .collect();
        let first_bad = report.first_bad().map(|r| {
            format!(
                "block {} {}",
                r.id,
                r.verdict
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )
        });
        // Blocks the peer's notes certify (merged only after this check).
        let mut certified: HashSet<BlockId> = HashSet::new();
        if let Some((_, theirs)) = heads.iter().find(|(n, _)| n == NOTES_REF) {
            let ours = self.ledger.ref_id(NOTES_REF)?;
            certified.extend(
                self.ledger
                    .notes_added(*theirs, ours)?
                    .into_iter()
                    .map(|(b, _)| b),
            );
        }
        let mut out = Vec::with_capacity(heads.len());
        for (name, id) in heads {
            let ours = self.ledger.ref_id(name)?;
            let relation = if name == NOTES_REF {
                self.notes_relation(*id, ours)?
            } else {
                match verdicts.get(id) {
                    Some(Err(_)) => Relation::Invalid(
                        first_bad
                            .clone()
                            .unwrap_or_else(|| "it does not verify".into()),
                    ),
                    None => Relation::Invalid("it is not here".into()),
                    Some(Ok(())) => match ours {
                        Some(o) if o == *id => Relation::Same,
                        _ if name == MAIN_REF && !self.certified(*id, &certified)? => {
                            match self.certified_under(*id, &certified)? {
                                Some(c) if ours == Some(c) => Relation::Uncertified,
                                Some(c) if ours.is_none() => Relation::UpTo(c),
                                Some(c) if self.ledger.is_ancestor(ours.expect("some"), c)? => {
                                    Relation::UpTo(c)
                                }
                                _ => Relation::Uncertified,
                            }
                        }
                        None => Relation::New,
                        Some(o) if self.ledger.is_ancestor(o, *id)? => Relation::Ahead,
                        Some(o) if self.ledger.is_ancestor(*id, o)? => Relation::Behind,
                        Some(_) => Relation::Diverged,
                    },
                }
            };
            out.push((name.clone(), relation));
        }
        Ok(out)
    }

    /// Whether `id` is committed: a certificate here or among the peer's
    /// (`theirs`, checked with its notes), or a one-validator chain's block.
    fn certified(&self, id: BlockId, theirs: &HashSet<BlockId>) -> Result<bool, LedgerError> {
        Ok(theirs.contains(&id) || self.ledger.is_certified(id)?)
    }

    /// The highest certified block under `id` (highest first over every
    /// parent line), looking at most [`CERTIFIED_SEARCH`] blocks down.
    fn certified_under(
        &self,
        id: BlockId,
        theirs: &HashSet<BlockId>,
    ) -> Result<Option<BlockId>, LedgerError> {
        let mut queue = std::collections::BinaryHeap::new();
        let mut seen = HashSet::new();
        let block = self.ledger.block(id)?;
        for p in block.parents {
            if seen.insert(p) {
                queue.push((self.ledger.height(p)?, p));
            }
        }
        while let Some((_, b)) = queue.pop() {
            if self.certified(b, theirs)? {
                return Ok(Some(b));
            }
            if seen.len() > CERTIFIED_SEARCH {
                return Ok(None);
            }
            for p in self.ledger.block(b)?.parents {
                if seen.insert(p) {
                    queue.push((self.ledger.height(p)?, p));
                }
            }
        }
        Ok(None)
    }

    /// The peer's notes: every certificate they add must hold for a block
    /// here.
    fn notes_relation(
        &self,
        theirs: BlockId,
        ours: Option<BlockId>,
    ) -> Result<Relation, LedgerError> {
        if ours == Some(theirs) {
            return Ok(Relation::Same);
        }
        for (block, text) in self.ledger.notes_added(theirs, ours)? {
            let cert = match Certificate::parse(&text) {
                Ok(c) if c.block == block => c,
                Ok(_) => {
                    return Ok(Relation::Invalid(format!(
                        "the note of {block} certifies another block"
                    )));
                }
                Err(e) => return Ok(Relation::Invalid(format!("the note of {block}: {e}"))),
            };
            let Ok(b) = self.ledger.block(block) else {
                return Ok(Relation::Invalid(format!(
                    "a certificate for block {block}, which is not here"
                )));
            };
            if let Err(e) = self.ledger.check_certificate(&b, &cert)? {
                return Ok(Relation::Invalid(format!(
                    "the certificate of {block}: {e}"
                )));
            }
        }
        Ok(match ours {
            None => Relation::New,
            Some(o) if self.ledger.commit_descends(theirs, o)? => Relation::Ahead,
            Some(o) if self.ledger.commit_descends(o, theirs)? => Relation::Behind,
            Some(_) => Relation::Diverged,
        })
    }

    fn update(&self, updates: &[RefUpdate]) -> Result<(), LedgerError> {
        for u in updates {
            match u {
                RefUpdate::Create { name, to } if name == NOTES_REF => {
                    self.ledger.set_sync_ref(name, *to, None)?;
                }
                RefUpdate::Forward { name, from, to } if name == NOTES_REF => {
                    self.ledger.set_sync_ref(name, *to, Some(*from))?;
                }
                RefUpdate::MergeNotes { theirs } => {
                    let ours = self.ledger.ref_id(NOTES_REF)?;
                    for (block, text) in self.ledger.notes_added(*theirs, ours)? {
                        if self.ledger.certificate(block)?.is_none()
                            && let Ok(cert) = Certificate::parse(&text)
                        {
                            self.ledger.write_certificate(&cert)?;
                        }
                    }
                }
                RefUpdate::Create { name, to } => {
                    self.ledger
                        .create_branch(name.trim_start_matches(HEADS_PREFIX), *to)?;
                }
                RefUpdate::Forward { name, from, to } => {
                    self.ledger
                        .advance(name.trim_start_matches(HEADS_PREFIX), *from, *to)?;
                }
                RefUpdate::Keep { as_name, to, .. } => {
                    let branch = as_name.trim_start_matches(HEADS_PREFIX);
                    match self.ledger.branch(branch)? {
                        None => self.ledger.create_branch(branch, *to)?,
                        Some(old) if self.ledger.is_ancestor(old, *to)? => {
                            self.ledger.advance(branch, old, *to)?;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn store_err(e: utter_chunkstore::Error) -> PassError {
    PassError::Fault(Fault::Driver(format!("this node's chunk store: {e}")))
}

/// Storing chunks a peer sent failed: a chunk that is not its id is the
/// peer's lie, anything else this node's store.
pub(crate) fn chunk_err(e: utter_chunkstore::Error) -> PassError {
    match e {
        e @ (utter_chunkstore::Error::HashMismatch { .. }
        | utter_chunkstore::Error::ChunkSize { .. }
        | utter_chunkstore::Error::CorruptChunk { .. }) => {
            PassError::Fault(Fault::Protocol(format!("a chunk that is not its id: {e}")))
        }
        e => store_err(e),
    }
}

/// Asks for `ids` on one stream; every answer must be the chunk asked for,
/// in order (checked against its id when stored).
/// An error and what caused it, one line: what a peer's bad pack did wrong
/// is in gix's error under the ledger's.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    for cause in std::iter::successors(e.source(), |c| c.source()) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// Pieces of a pack queued between the stream and the index.
const PACK_PIECES_QUEUED: usize = 16;

/// Reads the pieces of a pack as they are queued; the end of the queue is
/// the end of the pack.
struct PieceReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    piece: bytes::Bytes,
}

impl std::io::Read for PieceReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.piece.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => self.piece = piece,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.piece.len());
        out[..n].copy_from_slice(&self.piece[..n]);
        bytes::Buf::advance(&mut self.piece, n);
        Ok(n)
    }
}

async fn receive_chunks(
    conn: Conn,
    ask: Vec<(ChunkId, u32)>,
) -> Result<Vec<StoredChunk>, PassError> {
    let hashes: Vec<Hash> = ask.iter().map(|(c, _)| c.0).collect();
    let mut a = conn.ask(&Message::Chunks(hashes)).await?;
    let mut out = Vec::with_capacity(ask.len());
    for (want, want_len) in &ask {
        match a.frame().await? {
            Some(Message::Chunk { id, len, stored }) if id == want.0 => {
                // What a manifest says of its chunks is checked: a peer
                // cannot make this pass hold more than it asked for.
                if len != *want_len || stored.len() > len as usize {
                    return Err(Fault::Protocol(format!(
                        "chunk {want} came as {} bytes of {len}, its manifest says {want_len}",
                        stored.len()
                    ))
                    .into());
                }
                out.push(StoredChunk {
                    id: *want,
                    len,
                    stored,
                });
            }
            Some(Message::Missing {
                what: What::Chunk,
                id,
            }) if id == want.0 => {
                return Err(Fault::Driver(format!(
                    "the peer lacks chunk {want} of a manifest it sent"
                ))
                .into());
            }
            other => {
                return Err(
                    Fault::Protocol(format!("{other:?} where chunk {want} belongs")).into(),
                );
            }
        }
    }
    Ok(out)
}

/// A small set of futures run together, finished ones first.
mod futures_lite_join {
    use std::future::Future;
    use std::pin::Pin;

    type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

    /// Futures running together on this task.
    pub struct Running<T> {
        futures: Vec<Boxed<T>>,
    }

    impl<T> Running<T> {
        pub fn new() -> Self {
            Self {
                futures: Vec::new(),
            }
        }

        pub fn len(&self) -> usize {
            self.futures.len()
        }

        pub fn push(&mut self, f: impl Future<Output = T> + 'static) {
            self.futures.push(Box::pin(f));
        }

        /// The next to finish; `None` when none runs.
        pub async fn next(&mut self) -> Option<T> {
            if self.futures.is_empty() {
                return None;
            }
            std::future::poll_fn(|cx| {
                for i in 0..self.futures.len() {
                    if let std::task::Poll::Ready(v) = self.futures[i].as_mut().poll(cx) {
                        drop(self.futures.swap_remove(i));
                        return std::task::Poll::Ready(Some(v));
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }
    }
}

//! The store: RocksDB column families, the ingest pipeline, reads, pins, gc.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crossbeam_channel::{Receiver, Sender, bounded};
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options,
    WriteBatch, WriteOptions,
};

use crate::cut::{Block, Cutter};
use crate::error::{Error, OpenError};
use crate::manifest::{Entry, MAX_CHUNK_LEN, Manifest};
use crate::{ChunkId, Chunking, ManifestId};

/// Column family: store metadata (format, chunking, counters).
const CF_META: &str = "chunkstore.meta";
/// Column family: chunk id -> stored bytes (zstd frame, or the plain bytes
/// when compression would not make them smaller).
const CF_CHUNKS: &str = "chunkstore.chunks";
/// Column family: chunk id -> plain length, stored length (u32 LE each).
/// Small, so existence checks never touch chunk bytes.
const CF_CHUNK_META: &str = "chunkstore.chunk_meta";
/// Column family: manifest id -> canonical encoding.
const CF_MANIFESTS: &str = "chunkstore.manifests";
/// Column family: manifest id -> pin count (u64 LE).
const CF_PINS: &str = "chunkstore.pins";
/// A record: (key, value).
pub type Record = (Vec<u8>, Vec<u8>);

/// Column family: small records of the store's other owners (the node's
/// mempool, votes, peers), each key prefixed by its owner. The store owns
/// the family; its users reach it only through [`Store::records`] and
/// [`Store::write_records`].
const CF_RECORDS: &str = "chunkstore.records";
/// What [`CF_RECORDS`] was called before it carried the prefix; moved into
/// it the first time a writer opens an older store.
const CF_RECORDS_OLD: &str = "records";
const OWN_CFS: [&str; 6] = [
    CF_META,
    CF_CHUNKS,
    CF_CHUNK_META,
    CF_MANIFESTS,
    CF_PINS,
    CF_RECORDS,
];

const KEY_FORMAT: &[u8] = b"format";
const KEY_CHUNKING: &[u8] = b"chunking";
const KEY_STATS: &[u8] = b"stats";
/// Present only while the store is closed cleanly: its counters are exact.
const KEY_CLEAN: &[u8] = b"clean";
const FORMAT: u32 = 1;

/// Ingest reads the input in blocks of this size (or four maximal chunks).
const BLOCK_SIZE: usize = 4 << 20;
/// Block cache shared by all families (table index and data blocks; chunk
/// bytes in blob files go through the OS page cache).
const BLOCK_CACHE_BYTES: usize = 32 << 20;
/// A batch with at least this many new bytes bypasses the write-ahead log:
/// its bytes go to disk once, when the memtable is flushed.
const WAL_BYPASS_BYTES: usize = 1 << 20;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Create the store if it does not exist.
    pub create: bool,
    /// Chunk sizes: used when creating; when opening, must match what the
    /// store recorded. `None` takes the default (creating) or the recorded
    /// sizes (opening).
    pub chunking: Option<Chunking>,
    /// Worker threads for ingest and reads; `None` = available cores.
    pub threads: Option<usize>,
    /// zstd level for new chunks. Does not change ids, so it may differ
    /// between runs.
    pub zstd_level: i32,
    /// Put chunk bytes in RocksDB blob files (BlobDB) rather than inline in
    /// SST files. On by default: see ARCHITECTURE.md for the measurement.
    pub blob_files: bool,
    /// Open for reading only, beside a process that has it open for
    /// writing (a running node): every write fails.
    pub read_only: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            create: false,
            chunking: None,
            threads: None,
            zstd_level: 1,
            blob_files: true,
            read_only: false,
        }
    }
}

/// What a store holds, as counted by its writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Distinct chunks.
    pub chunks: u64,
    /// Plain bytes of the distinct chunks.
    pub chunk_bytes: u64,
    /// Bytes the store keeps: chunks after compression plus manifests.
    pub stored_bytes: u64,
    /// Distinct manifests.
    pub manifests: u64,
    /// Sum of the sizes of all manifests: the bytes users stored.
    pub logical_bytes: u64,
}

impl Stats {
    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        for (i, v) in [
            self.chunks,
            self.chunk_bytes,
            self.stored_bytes,
            self.manifests,
            self.logical_bytes,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 40 {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some(Self {
            chunks: w(0),
            chunk_bytes: w(1),
            stored_bytes: w(2),
            manifests: w(3),
            logical_bytes: w(4),
        })
    }
}

/// What one `put` did.
#[derive(Debug, Clone)]
pub struct Put {
    /// The blob's manifest.
    pub manifest: Manifest,
    /// Its id.
    pub id: ManifestId,
    /// Chunks this put added to the store.
    pub new_chunks: u64,
    /// Bytes the store grew by (compressed chunks plus the manifest if new).
    pub new_bytes: u64,
}

/// Options for one `put`.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions {
    /// Add a pin on the manifest in the same write that stores it, so `gc`
    /// can never collect the blob before the caller records it elsewhere.
    pub pin: bool,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self { pin: true }
    }
}

/// What `gc` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifests removed.
    pub manifests: u64,
    /// Chunks removed.
    pub chunks: u64,
    /// Stored bytes removed.
    pub bytes: u64,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Chunks read and re-hashed.
    pub chunks_checked: u64,
    /// Manifests decoded and re-hashed.
    pub manifests_checked: u64,
    /// Damaged chunks and what is wrong with each.
    pub bad_chunks: Vec<(ChunkId, String)>,
    /// Damaged or incomplete manifests and what is wrong with each.
    pub bad_manifests: Vec<(ManifestId, String)>,
}

impl VerifyReport {
    /// Everything verified.
    pub fn is_ok(&self) -> bool {
        self.bad_chunks.is_empty() && self.bad_manifests.is_empty()
    }
}

/// A content-addressed chunk store. Cheap to clone; clones share one database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    path: PathBuf,
    chunking: Chunking,
    threads: usize,
    zstd_level: i32,
    /// The single writer: every write batch that touches chunks, manifests or
    /// pins is made under this lock, with the counters it guards.
    writer: Mutex<Stats>,
    /// Puts hold it shared for their whole run, `gc` exclusively, so `gc`
    /// never sweeps the chunks of a blob whose manifest is not written yet.
    gc_guard: RwLock<()>,
    /// Chunks were written without the WAL since the last flush: the next
    /// manifest write flushes first. Read and set under `writer`.
    unflushed: AtomicBool,
    /// Opened with [`OpenOptions::read_only`]: nothing is written on close.
    read_only: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters change only after a successful write, so they are consistent
    // even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn chunk_meta(plain: u32, stored: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&plain.to_le_bytes());
    out[4..].copy_from_slice(&stored.to_le_bytes());
    out
}

fn parse_chunk_meta(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() != 8 {
        return None;
    }
    Some((
        u32::from_le_bytes(b[..4].try_into().ok()?),
        u32::from_le_bytes(b[4..].try_into().ok()?),
    ))
}

fn cf_options(name: &str, blob_files: bool, cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::None);
    // Every family is looked up by random 32-byte ids: bloom filters let a
    // lookup skip the table files that cannot hold the id.
    let mut t = BlockBasedOptions::default();
    t.set_bloom_filter(10.0, false);
    t.set_block_cache(cache);
    o.set_block_based_table_factory(&t);
    if name == CF_CHUNKS {
        // Values are 16-256 KiB and already compressed: keep them out of the
        // LSM so compaction moves only small blob indexes.
        o.set_write_buffer_size(32 << 20);
        o.set_max_write_buffer_number(2);
        o.set_enable_blob_files(blob_files);
        o.set_min_blob_size(1024);
        o.set_blob_file_size(256 << 20);
        o.set_blob_compression_type(DBCompressionType::None);
        // Blob garbage is collected only by `gc`: automatic blob GC rewrote
        // live chunks during ingest.
        o.set_enable_blob_gc(false);
        o.set_target_file_size_base(64 << 20);
    } else {
        o.set_write_buffer_size(8 << 20);
    }
    o
}

impl Store {
    /// Opens the store at `path` (a RocksDB directory), creating it if
    /// `options.create`.
    ///
    /// Creation is atomic: the store is made complete in a directory of
    /// its own beside `path` and renamed into place, so a process killed
    /// at any moment leaves either no store or one every opener reads.
    pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        if let Some(c) = options.chunking {
            c.validate().map_err(|e| OpenError::Unusable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        if !is_store(&path) {
            if !options.create || options.read_only {
                return Err(OpenError::NotFound { path });
            }
            create_atomically(&path, options)?;
        }
        let threads = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, 16);
        let mut db = open_db(&path, options, threads, true)?;
        if !options.read_only {
            migrate_records(&mut db).map_err(|e| open_error(&path, e))?;
        }
        let unusable = |reason: String| OpenError::Unusable {
            path: path.clone(),
            reason,
        };
        let meta = db.cf_handle(CF_META).expect("opened above");
        let get = |key: &[u8]| db.get_cf(meta, key).map_err(|e| open_error(&path, e));
        let chunking = match (get(KEY_FORMAT)?, get(KEY_CHUNKING)?) {
            (None, None) => {
                return Err(unusable(
                    "it has no format record (it was never completely created); move it aside and create it again".into(),
                ));
            }
            (Some(format), Some(chunking)) => {
                let format = <[u8; 4]>::try_from(format.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| unusable("its format record is damaged".into()))?;
                if format != FORMAT {
                    return Err(unusable(format!(
                        "it has format {format}, this utter reads format {FORMAT}; use a newer utter"
                    )));
                }
                let stored = Chunking::decode(&chunking)
                    .and_then(|c| c.validate().ok())
                    .ok_or_else(|| unusable("its chunking record is damaged".into()))?;
                if let Some(requested) = options.chunking
                    && requested != stored
                {
                    return Err(OpenError::ChunkingMismatch {
                        path,
                        stored,
                        requested,
                    });
                }
                stored
            }
            _ => return Err(unusable("its metadata is incomplete".into())),
        };
        let stats = match (
            get(KEY_CLEAN)?,
            get(KEY_STATS)?.as_deref().and_then(Stats::decode),
        ) {
            (Some(_), Some(stats)) => stats,
            // A reader beside a writer: the counters are the writer's.
            (_, Some(stats)) if options.read_only => stats,
            // Not closed cleanly: writes that bypassed the WAL may be gone,
            // so count again from what is there.
            _ => recount(&db).map_err(|e| open_error(&path, e))?,
        };
        if !options.read_only {
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.delete_cf_opt(meta, KEY_CLEAN, &sync)
                .map_err(|e| open_error(&path, e))?;
        }
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path,
                chunking,
                threads,
                zstd_level: options.zstd_level,
                writer: Mutex::new(stats),
                gc_guard: RwLock::new(()),
                unflushed: AtomicBool::new(false),
                read_only: options.read_only,
            }),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The chunk sizes recorded at creation.
    pub fn chunking(&self) -> Chunking {
        self.inner.chunking
    }

    /// Counters of what the store holds.
    pub fn stats(&self) -> Stats {
        *lock(&self.inner.writer)
    }

    /// Stores everything `reader` yields and pins the result.
    pub fn put(&self, reader: impl Read) -> Result<Put, Error> {
        self.put_observed(reader, PutOptions::default(), |_| {})
    }

    /// Stores everything `reader` yields, calling `progress` with the bytes
    /// read so far after each block. Returns once the manifest (and the pin,
    /// if asked for) is durable; the chunks it names are durable with it.
    ///
    /// Cutting runs on the calling thread; hashing and compression on worker
    /// threads; one writer thread commits each block as a RocksDB batch.
    pub fn put_observed(
        &self,
        reader: impl Read,
        options: PutOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<Put, Error> {
        let _no_gc = self
            .inner
            .gc_guard
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let inner = &*self.inner;
        let block_size = BLOCK_SIZE.max(4 * inner.chunking.max as usize);
        let mut cutter = Cutter::new(reader, inner.chunking, block_size);
        let workers = inner.threads;
        let buffers = workers * 2 + 2;

        let (job_tx, job_rx) = bounded::<(u64, Block)>(workers);
        let (done_tx, done_rx) = bounded::<Result<Done, Error>>(workers);
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(buffers);

        let (read_result, written) = std::thread::scope(|s| {
            for _ in 0..workers {
                let job_rx = job_rx.clone();
                let done_tx = done_tx.clone();
                s.spawn(move || inner.hash_worker(job_rx, done_tx));
            }
            drop((job_rx, done_tx));
            let writer = s.spawn(move || inner.write_blocks(done_rx, pool_tx));

            let mut made = 0;
            let mut seq = 0u64;
            let read_result = loop {
                let buf = if made < buffers {
                    made += 1;
                    cutter.new_buffer()
                } else {
                    match pool_rx.recv() {
                        Ok(buf) => buf,
                        Err(_) => break Ok(()), // the writer stopped; its error says why
                    }
                };
                match cutter.next_block(buf) {
                    Ok(Some(block)) => {
                        if job_tx.send((seq, block)).is_err() {
                            break Ok(());
                        }
                        seq += 1;
                        progress(cutter.bytes_read());
                    }
                    Ok(None) => break Ok(()),
                    Err(source) => {
                        break Err(Error::Input {
                            offset: cutter.bytes_read(),
                            source,
                        });
                    }
                }
            };
            drop(job_tx);
            let written = writer.join().unwrap_or(Err(Error::Panicked));
            (read_result, written.map(|w| (w, seq)))
        });
        read_result?;
        let (written, blocks) = written?;
        if written.blocks != blocks {
            return Err(Error::Panicked);
        }
        let manifest = Manifest::new(written.entries);
        let (id, manifest_bytes) = inner.commit_manifest(&manifest, options.pin)?;
        Ok(Put {
            id,
            manifest,
            new_chunks: written.new_chunks,
            new_bytes: written.new_bytes + manifest_bytes,
        })
    }

    /// Is this chunk stored?
    pub fn has(&self, id: &ChunkId) -> Result<bool, Error> {
        Ok(self.missing(std::slice::from_ref(id))?.is_empty())
    }

    /// The ids among `ids` that the store lacks, in the order given.
    pub fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Error> {
        let present = self.inner.present(ids)?;
        Ok(ids
            .iter()
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|(id, _)| *id)
            .collect())
    }

    /// Stores one chunk that arrived from elsewhere, after checking that
    /// `bytes` hash to `id`. Returns whether it was new.
    ///
    /// Pin its manifest first (pins may name manifests not yet stored):
    /// otherwise a `gc` can remove it before its manifest arrives. The chunk
    /// is durable once any manifest is written after it (or the store is
    /// closed), which is when a sync that fetched it is complete.
    pub fn put_chunk(&self, id: ChunkId, bytes: &[u8]) -> Result<bool, Error> {
        if bytes.is_empty() || bytes.len() > MAX_CHUNK_LEN as usize {
            return Err(Error::ChunkSize {
                id,
                len: bytes.len(),
            });
        }
        let actual = ChunkId::of(bytes);
        if actual != id {
            return Err(Error::HashMismatch {
                claimed: id,
                actual,
            });
        }
        let mut z = zstd::bulk::Compressor::new(self.inner.zstd_level).map_err(Error::Zstd)?;
        let stored = compress(&mut z, bytes);
        let chunk = NewChunk {
            id,
            len: bytes.len() as u32,
            stored: stored.map_or(Stored::Raw { offset: 0 }, Stored::Owned),
        };
        let (n, _) = self
            .inner
            .commit_chunks(bytes, std::slice::from_ref(&chunk))?;
        Ok(n == 1)
    }

    /// A chunk in the form it is stored and travels in: its plain length
    /// and its stored bytes (a zstd frame when that is shorter than the
    /// plain bytes, else the plain bytes), decoded and re-hashed against
    /// `id` before they are handed out.
    pub fn chunk_stored(&self, id: &ChunkId) -> Result<StoredChunk, Error> {
        self.read_stored(id, &mut Unzstd::default())
    }

    /// [`Store::chunk_stored`] of each id, in order.
    pub fn chunks_stored(&self, ids: &[ChunkId]) -> Vec<Result<StoredChunk, Error>> {
        let mut z = Unzstd::default();
        ids.iter().map(|id| self.read_stored(id, &mut z)).collect()
    }

    /// A chunk's plain length, from its length record.
    fn plain_len(&self, id: &ChunkId) -> Result<u32, Error> {
        let cf = self.inner.cf(CF_CHUNK_META);
        let meta = self
            .inner
            .db
            .get_pinned_cf(cf, id.as_bytes())
            .map_err(Error::db("looking up a chunk"))?
            .ok_or(Error::MissingChunk(*id))?;
        let (plain, _) = parse_chunk_meta(&meta).ok_or_else(|| Error::CorruptChunk {
            id: *id,
            reason: "its length record is damaged".into(),
        })?;
        Ok(plain)
    }

    fn read_stored(&self, id: &ChunkId, z: &mut Unzstd) -> Result<StoredChunk, Error> {
        let plain = self.plain_len(id)?;
        let stored = self
            .inner
            .db
            .get_pinned_cf(self.inner.cf(CF_CHUNKS), id.as_bytes())
            .map_err(Error::db("reading a chunk"))?
            .ok_or(Error::MissingChunk(*id))?
            .to_vec();
        let chunk = StoredChunk {
            id: *id,
            len: plain,
            stored,
        };
        chunk.decode(z).map_err(|e| match e {
            Error::HashMismatch { actual, .. } => Error::CorruptChunk {
                id: *id,
                reason: format!("its bytes hash to {actual}"),
            },
            e => e,
        })?;
        Ok(chunk)
    }

    /// Stores chunks that arrived from elsewhere in their stored form (see
    /// [`Store::chunk_stored`]): each is decoded (a zstd frame may not
    /// decode to more than its plain length) and hashed against its id
    /// first, and nothing is stored if any fails. Returns how many were
    /// new. As with [`Store::put_chunk`], pin their manifest first.
    pub fn put_chunks_stored(&self, chunks: Vec<StoredChunk>) -> Result<u64, Error> {
        let mut z = Unzstd::default();
        for c in &chunks {
            c.decode(&mut z)?;
        }
        // Checked: the bytes move into the batch as they are.
        let new: Vec<NewChunk> = chunks
            .into_iter()
            .map(|c| NewChunk {
                id: c.id,
                len: c.len,
                stored: Stored::Owned(c.stored),
            })
            .collect();
        Ok(self.inner.commit_chunks(&[], &new)?.0)
    }

    /// Stores a manifest that arrived from elsewhere (its chunks may follow).
    /// Refuses anything but the canonical encoding.
    pub fn put_manifest(&self, encoded: &[u8]) -> Result<ManifestId, Error> {
        let manifest = Manifest::decode(encoded)?;
        Ok(self.inner.commit_manifest(&manifest, false)?.0)
    }

    /// The manifest with this id, re-hashed.
    pub fn manifest(&self, id: &ManifestId) -> Result<Manifest, Error> {
        self.inner.manifest(id)
    }

    /// Is this manifest stored?
    pub fn has_manifest(&self, id: &ManifestId) -> Result<bool, Error> {
        let cf = self.inner.cf(CF_MANIFESTS);
        Ok(self
            .inner
            .db
            .get_pinned_cf(cf, id.as_bytes())
            .map_err(Error::db("looking up a manifest"))?
            .is_some())
    }

    /// A streaming reader of the blob `id` names. Chunks are fetched,
    /// decompressed and re-hashed ahead of the reader on worker threads, a
    /// bounded number at a time; a chunk that does not hash to its id is a
    /// read error naming it.
    pub fn get(&self, id: &ManifestId) -> Result<crate::BlobReader, Error> {
        let manifest = self.manifest(id)?;
        Ok(self.get_manifest(manifest))
    }

    /// Like [`Store::get`], for a manifest already in hand.
    pub fn get_manifest(&self, manifest: Manifest) -> crate::BlobReader {
        crate::BlobReader::new(self.clone(), manifest)
    }

    /// Reads one chunk, decompressed and re-hashed.
    pub fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        let plain = self.plain_len(id)?;
        self.inner.read_chunk(
            &mut zstd::bulk::Decompressor::new().map_err(Error::Zstd)?,
            id,
            plain,
        )
    }

    /// Writes and deletes records in one synced batch: after it returns,
    /// all of it survives a crash, or none of it did.
    pub fn write_records(&self, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Result<(), Error> {
        let cf = self.inner.cf(CF_RECORDS);
        let mut batch = WriteBatch::default();
        for (k, v) in puts {
            batch.put_cf(cf, k, v);
        }
        for k in deletes {
            batch.delete_cf(cf, k);
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.inner
            .db
            .write_opt(batch, &sync)
            .map_err(Error::db("writing records"))
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn records(&self, prefix: &[u8]) -> Result<Vec<Record>, Error> {
        let cf = self.inner.cf(CF_RECORDS);
        let mut out = Vec::new();
        let iter = self.inner.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(Error::db("reading records"))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Adds a pin on `id` (which need not be stored yet); returns the count.
    pub fn pin(&self, id: &ManifestId) -> Result<u64, Error> {
        self.inner.add_pin(id, 1)
    }

    /// Removes one pin from `id`; returns the count left.
    pub fn unpin(&self, id: &ManifestId) -> Result<u64, Error> {
        self.inner.add_pin(id, -1)
    }

    /// Every pinned manifest and its pin count.
    pub fn pins(&self) -> Result<Vec<(ManifestId, u64)>, Error> {
        let cf = self.inner.cf(CF_PINS);
        let mut out = Vec::new();
        for item in self.inner.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(Error::db("listing pins"))?;
            if let (Some(id), Ok(n)) = (ManifestId::from_slice(&k), <[u8; 8]>::try_from(&*v)) {
                out.push((id, u64::from_le_bytes(n)));
            }
        }
        Ok(out)
    }

    /// Removes every manifest that is neither pinned nor in `roots`, and
    /// every chunk no remaining manifest names, then compacts so the space
    /// returns to the file system. Blocks puts while it runs.
    pub fn gc(&self, roots: &[ManifestId]) -> Result<GcReport, Error> {
        let _exclusive = self
            .inner
            .gc_guard
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.gc(roots)
    }

    /// Reads back every chunk and manifest and checks each against its id.
    /// `progress` gets (items checked, items total).
    pub fn verify(&self, progress: impl FnMut(u64, u64)) -> Result<VerifyReport, Error> {
        self.inner.verify(progress)
    }

    pub(crate) fn read_chunk(
        &self,
        z: &mut zstd::bulk::Decompressor<'static>,
        entry: &Entry,
    ) -> Result<Vec<u8>, Error> {
        self.inner.read_chunk(z, &entry.id, entry.len)
    }

    pub(crate) fn threads(&self) -> usize {
        self.inner.threads
    }

    /// The counters as a crash recovery would recount them.
    #[cfg(test)]
    pub(crate) fn recount_for_test(&self) -> Stats {
        recount(&self.inner.db).unwrap()
    }

    #[cfg(test)]
    pub(crate) fn overwrite_chunk_for_test(&self, id: &ChunkId, bytes: &[u8]) {
        self.inner
            .db
            .put_cf(self.inner.cf(CF_CHUNKS), id.as_bytes(), bytes)
            .unwrap();
    }
}

/// Whether `path` holds a store: RocksDB writes `CURRENT` when it creates
/// a database, and a store is only ever renamed into place complete.
fn is_store(path: &Path) -> bool {
    path.join("CURRENT").exists()
}

/// Opens RocksDB at `path` with every column family it has (RocksDB
/// insists on opening those of other owners that share the data dir's
/// db too).
fn open_db(
    path: &Path,
    options: &OpenOptions,
    threads: usize,
    exists: bool,
) -> Result<DB, OpenError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(!exists);
    db_opts.create_missing_column_families(true);
    db_opts.increase_parallelism(threads as i32);
    db_opts.set_max_background_jobs(threads.max(2) as i32);
    db_opts.set_bytes_per_sync(4 << 20);
    db_opts.set_wal_bytes_per_sync(4 << 20);
    db_opts.set_max_total_wal_size(256 << 20);
    db_opts.set_keep_log_file_num(2);
    db_opts.set_max_log_file_size(1 << 20);
    db_opts.set_log_level(rocksdb::LogLevel::Warn);
    // Chunks and their length records bypass the WAL in large batches;
    // flushing every family together keeps them consistent after a crash.
    db_opts.set_atomic_flush(true);
    // New page-cache pages are the slowest part of writing on small
    // machines: flushes write blob files with O_DIRECT where it works.
    db_opts.set_use_direct_io_for_flush_and_compaction(direct_io_works(path));
    // Not `allow_mmap_reads`: mapped reads of cold blob files fault a page
    // at a time (chunk serving 3-4x slower from a cold store, though 7%
    // faster from a warm one; docs/decisions.md).
    let mut names: Vec<String> = OWN_CFS.iter().map(|s| s.to_string()).collect();
    if exists {
        for name in DB::list_cf(&db_opts, path).map_err(|e| open_error(path, e))? {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let cfs = names
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(n, cf_options(n, options.blob_files, &cache)));
    if options.read_only {
        DB::open_cf_descriptors_read_only(&db_opts, path, cfs, false)
    } else {
        DB::open_cf_descriptors(&db_opts, path, cfs)
    }
    .map_err(|e| open_error(path, e))
}

/// Makes a complete store (every family, the format and chunking records)
/// in a directory beside `path`, syncs it and renames it to `path`. A
/// directory at `path` without `CURRENT` is what a creation by an older
/// utter left when it was killed: RocksDB never wrote a database there, so
/// it is replaced. Leftovers of creations killed here are removed.
fn create_atomically(path: &Path, options: &OpenOptions) -> Result<(), OpenError> {
    let create_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OpenError::CreateDir { path, source }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(create_err(&parent))?;
    let name = path
        .file_name()
        .map_or_else(|| "db".into(), |n| n.to_string_lossy().into_owned());
    let prefix = format!(".{name}.creating-");
    sweep_creations(&parent, &prefix);
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(create_err(&tmp))?;
    {
        let db = open_db(&tmp, options, 1, false)?;
        let meta = db.cf_handle(CF_META).expect("created with every family");
        let chunking = options.chunking.unwrap_or_default();
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_FORMAT, FORMAT.to_le_bytes());
        batch.put_cf(meta, KEY_CHUNKING, chunking.encode());
        batch.put_cf(meta, KEY_STATS, Stats::default().encode());
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)
            .map_err(|e| open_error(&tmp, e))?;
        db.flush().map_err(|e| open_error(&tmp, e))?;
    }
    sync_dir(&tmp).map_err(create_err(&tmp))?;
    if path.exists() && !is_store(path) {
        std::fs::remove_dir_all(path).map_err(create_err(path))?;
    }
    match std::fs::rename(&tmp, path) {
        Ok(()) => {}
        // Another process created it first: use theirs.
        Err(_) if is_store(path) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(());
        }
        Err(e) => return Err(create_err(path)(e)),
    }
    sync_dir(&parent).map_err(create_err(&parent))
}

/// Removes `<prefix><pid>` directories of creations whose process is gone.
fn sweep_creations(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Moves the records of a store made before the family had its prefix.
fn migrate_records(db: &mut DB) -> Result<(), rocksdb::Error> {
    {
        let Some(old) = db.cf_handle(CF_RECORDS_OLD) else {
            return Ok(());
        };
        let new = db.cf_handle(CF_RECORDS).expect("opened above");
        let mut batch = WriteBatch::default();
        for item in db.iterator_cf(old, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            batch.put_cf(new, k, v);
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)?;
    }
    db.drop_cf(CF_RECORDS_OLD)
}

fn open_error(path: &Path, source: rocksdb::Error) -> OpenError {
    let text = source.to_string();
    if text.contains("LOCK")
        && (text.contains("lock") || text.contains("Resource temporarily unavailable"))
    {
        OpenError::Locked {
            path: path.to_path_buf(),
        }
    } else {
        OpenError::Db {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Compresses when that saves space.
fn compress(z: &mut zstd::bulk::Compressor<'static>, plain: &[u8]) -> Option<Vec<u8>> {
    match z.compress(plain) {
        Ok(c) if c.len() < plain.len() => Some(c),
        _ => None,
    }
}

/// A chunk as stored and sent between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Its id: BLAKE3 of the plain bytes.
    pub id: ChunkId,
    /// Its plain length.
    pub len: u32,
    /// A zstd frame shorter than `len`, or the `len` plain bytes.
    pub stored: Vec<u8>,
}

impl StoredChunk {
    /// The plain bytes, checked against the id.
    pub(crate) fn decode(&self, z: &mut Unzstd) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
        let size_err = |len| Error::ChunkSize { id: self.id, len };
        if self.len == 0 || self.len > MAX_CHUNK_LEN {
            return Err(size_err(self.len as usize));
        }
        let plain = match self.stored.len().cmp(&(self.len as usize)) {
            std::cmp::Ordering::Equal => std::borrow::Cow::Borrowed(&self.stored[..]),
            std::cmp::Ordering::Greater => return Err(size_err(self.stored.len())),
            std::cmp::Ordering::Less => {
                let mut out = Vec::with_capacity(self.len as usize);
                z.get()?
                    .decompress_to_buffer(&self.stored, &mut out)
                    .map_err(|e| Error::CorruptChunk {
                        id: self.id,
                        reason: format!("it does not decompress within its length: {e}"),
                    })?;
                if out.len() != self.len as usize {
                    return Err(size_err(out.len()));
                }
                std::borrow::Cow::Owned(out)
            }
        };
        let actual = ChunkId::of(&plain);
        if actual != self.id {
            return Err(Error::HashMismatch {
                claimed: self.id,
                actual,
            });
        }
        Ok(plain)
    }
}

/// A zstd decompressor made when the first compressed chunk needs it.
#[derive(Default)]
pub(crate) struct Unzstd(Option<zstd::bulk::Decompressor<'static>>);

impl Unzstd {
    fn get(&mut self) -> Result<&mut zstd::bulk::Decompressor<'static>, Error> {
        if self.0.is_none() {
            self.0 = Some(zstd::bulk::Decompressor::new().map_err(Error::Zstd)?);
        }
        Ok(self.0.as_mut().expect("made above"))
    }
}

enum Stored {
    /// The plain bytes, at this offset of the block.
    Raw { offset: u32 },
    /// The stored bytes, owned: a zstd frame strictly smaller than the
    /// plain bytes, or plain bytes that arrived in their stored form.
    Owned(Vec<u8>),
}

struct NewChunk {
    id: ChunkId,
    len: u32,
    stored: Stored,
}

impl NewChunk {
    fn bytes<'a>(&'a self, block: &'a [u8]) -> &'a [u8] {
        match &self.stored {
            Stored::Raw { offset } => {
                &block[*offset as usize..*offset as usize + self.len as usize]
            }
            Stored::Owned(b) => b,
        }
    }
}

/// A hashed block on its way to the writer.
struct Done {
    seq: u64,
    data: Vec<u8>,
    entries: Vec<Entry>,
    new: Vec<NewChunk>,
}

struct Written {
    entries: Vec<Entry>,
    blocks: u64,
    new_chunks: u64,
    new_bytes: u64,
}

impl Drop for Inner {
    /// A clean close: everything flushed, exact counters recorded.
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let stats = *lock(&self.writer);
        if self.flush_unflushed().is_err() {
            return;
        }
        let meta = self.cf(CF_META);
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_STATS, stats.encode());
        batch.put_cf(meta, KEY_CLEAN, []);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let _ = self.db.write_opt(batch, &sync);
    }
}

/// Counts chunks and manifests from scratch.
fn recount(db: &DB) -> Result<Stats, rocksdb::Error> {
    let mut s = Stats::default();
    let cf = |n| {
        db.cf_handle(n)
            .expect("own column families are opened with the store")
    };
    for item in db.iterator_cf(cf(CF_CHUNK_META), rocksdb::IteratorMode::Start) {
        let (_, v) = item?;
        let (plain, stored) = parse_chunk_meta(&v).unwrap_or((0, 0));
        s.chunks += 1;
        s.chunk_bytes += u64::from(plain);
        s.stored_bytes += u64::from(stored);
    }
    for item in db.iterator_cf(cf(CF_MANIFESTS), rocksdb::IteratorMode::Start) {
        let (_, v) = item?;
        s.manifests += 1;
        s.stored_bytes += v.len() as u64;
        s.logical_bytes += Manifest::decode(&v).map_or(0, |m| m.size());
    }
    Ok(s)
}

/// Whether files in `dir` can be opened with O_DIRECT (not on tmpfs, for
/// one).
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-io-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

impl Inner {
    /// Flushes chunks written without the WAL. Call with `writer` held.
    fn flush_unflushed(&self) -> Result<(), Error> {
        if self.unflushed.swap(false, Ordering::Relaxed) {
            let cfs = [self.cf(CF_CHUNKS), self.cf(CF_CHUNK_META), self.cf(CF_META)];
            if let Err(e) = self
                .db
                .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            {
                self.unflushed.store(true, Ordering::Relaxed);
                return Err(Error::Db {
                    doing: "flushing chunks",
                    source: e,
                });
            }
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("own column families are opened with the store")
    }

    fn present(&self, ids: &[ChunkId]) -> Result<Vec<bool>, Error> {
        let cf = self.cf(CF_CHUNK_META);
        self.db
            .batched_multi_get_cf(cf, ids.iter().map(|id| id.as_bytes()), false)
            .into_iter()
            .map(|r| {
                r.map(|v| v.is_some())
                    .map_err(Error::db("checking which chunks exist"))
            })
            .collect()
    }

    /// Hashes each chunk of a block; compresses those the store lacks.
    fn hash_worker(&self, jobs: Receiver<(u64, Block)>, done: Sender<Result<Done, Error>>) {
        let mut z = match zstd::bulk::Compressor::new(self.zstd_level) {
            Ok(z) => z,
            Err(e) => {
                let _ = done.send(Err(Error::Zstd(e)));
                return;
            }
        };
        for (seq, block) in jobs {
            let result = self.hash_block(&mut z, seq, block);
            if done.send(result).is_err() {
                return;
            }
        }
    }

    fn hash_block(
        &self,
        z: &mut zstd::bulk::Compressor<'static>,
        seq: u64,
        block: Block,
    ) -> Result<Done, Error> {
        let data = &block.data;
        let entries: Vec<Entry> = block
            .chunks
            .iter()
            .map(|&(off, len)| Entry {
                id: ChunkId::of(&data[off as usize..(off + len) as usize]),
                len,
            })
            .collect();
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let present = self.present(&ids)?;
        let mut seen = HashSet::new();
        let mut new = Vec::new();
        for ((entry, &(off, len)), present) in entries.iter().zip(&block.chunks).zip(present) {
            if present || !seen.insert(entry.id) {
                continue;
            }
            let plain = &data[off as usize..(off + len) as usize];
            let stored = compress(z, plain).map_or(Stored::Raw { offset: off }, Stored::Owned);
            new.push(NewChunk {
                id: entry.id,
                len,
                stored,
            });
        }
        Ok(Done {
            seq,
            data: block.data,
            entries,
            new,
        })
    }

    /// Commits blocks in order, returning each buffer to the cutter.
    fn write_blocks(
        &self,
        done: Receiver<Result<Done, Error>>,
        pool: Sender<Vec<u8>>,
    ) -> Result<Written, Error> {
        let mut w = Written {
            entries: Vec::new(),
            blocks: 0,
            new_chunks: 0,
            new_bytes: 0,
        };
        let mut pending = BTreeMap::new();
        for d in done {
            let d = d?;
            pending.insert(d.seq, d);
            while let Some(d) = pending.remove(&w.blocks) {
                let (n, bytes) = self.commit_chunks(&d.data, &d.new)?;
                w.new_chunks += n;
                w.new_bytes += bytes;
                w.entries.extend_from_slice(&d.entries);
                w.blocks += 1;
                let _ = pool.send(d.data);
            }
        }
        Ok(w)
    }

    /// Writes the chunks the store still lacks in one batch, without sync
    /// (the manifest's synced write makes them durable: the WAL is ordered).
    fn commit_chunks(&self, block: &[u8], new: &[NewChunk]) -> Result<(u64, u64), Error> {
        if new.is_empty() {
            return Ok((0, 0));
        }
        let mut stats = lock(&self.writer);
        // Another put may have stored some of these since the worker looked.
        let ids: Vec<ChunkId> = new.iter().map(|c| c.id).collect();
        let present = self.present(&ids)?;
        let (chunks, meta) = (self.cf(CF_CHUNKS), self.cf(CF_CHUNK_META));
        // Sized up front: growing a multi-megabyte batch copies it again.
        let capacity: usize = new.iter().map(|c| c.bytes(block).len() + 128).sum();
        let mut batch = WriteBatch::with_capacity_bytes(capacity + 64);
        let mut next = *stats;
        let (mut n, mut bytes) = (0u64, 0u64);
        for (c, present) in new.iter().zip(present) {
            if present {
                continue;
            }
            let stored = c.bytes(block);
            batch.put_cf(chunks, c.id.as_bytes(), stored);
            batch.put_cf(
                meta,
                c.id.as_bytes(),
                chunk_meta(c.len, stored.len() as u32),
            );
            n += 1;
            bytes += stored.len() as u64;
            next.chunks += 1;
            next.chunk_bytes += u64::from(c.len);
            next.stored_bytes += stored.len() as u64;
        }
        if n == 0 {
            return Ok((0, 0));
        }
        let mut options = WriteOptions::default();
        if bytes as usize >= WAL_BYPASS_BYTES {
            // Set before the write: a put that finds these chunks present
            // must flush before its manifest names them.
            self.unflushed.store(true, Ordering::Relaxed);
            options.disable_wal(true);
        }
        self.db
            .write_opt(batch, &options)
            .map_err(Error::db("writing chunks"))?;
        *stats = next;
        Ok((n, bytes))
    }

    /// Writes a manifest (if new) and optionally a pin, synced.
    fn commit_manifest(&self, manifest: &Manifest, pin: bool) -> Result<(ManifestId, u64), Error> {
        let encoded = manifest.encode();
        let id = ManifestId::of(&encoded);
        let mut stats = lock(&self.writer);
        self.flush_unflushed()?;
        let (cf, pins) = (self.cf(CF_MANIFESTS), self.cf(CF_PINS));
        let exists = self
            .db
            .get_pinned_cf(cf, id.as_bytes())
            .map_err(Error::db("looking up a manifest"))?
            .is_some();
        let mut batch = WriteBatch::default();
        let mut next = *stats;
        let mut grew = 0;
        if !exists {
            batch.put_cf(cf, id.as_bytes(), &encoded);
            next.manifests += 1;
            next.logical_bytes += manifest.size();
            next.stored_bytes += encoded.len() as u64;
            grew = encoded.len() as u64;
        }
        if pin {
            let count = self.pin_count(&id)? + 1;
            batch.put_cf(pins, id.as_bytes(), count.to_le_bytes());
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .write_opt(batch, &sync)
            .map_err(Error::db("writing a manifest"))?;
        *stats = next;
        Ok((id, grew))
    }

    fn pin_count(&self, id: &ManifestId) -> Result<u64, Error> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_PINS), id.as_bytes())
            .map_err(Error::db("reading a pin"))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(&*v).ok())
            .map_or(0, u64::from_le_bytes))
    }

    fn add_pin(&self, id: &ManifestId, delta: i64) -> Result<u64, Error> {
        let _stats = lock(&self.writer);
        let count = self.pin_count(id)?;
        let next = match count.checked_add_signed(delta) {
            Some(n) => n,
            None => return Err(Error::NotPinned(*id)),
        };
        let cf = self.cf(CF_PINS);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let r = if next == 0 {
            self.db.delete_cf_opt(cf, id.as_bytes(), &sync)
        } else {
            self.db
                .put_cf_opt(cf, id.as_bytes(), next.to_le_bytes(), &sync)
        };
        r.map_err(Error::db("writing a pin"))?;
        Ok(next)
    }

    fn manifest(&self, id: &ManifestId) -> Result<Manifest, Error> {
        let bytes = self
            .db
            .get_pinned_cf(self.cf(CF_MANIFESTS), id.as_bytes())
            .map_err(|e| Error::CorruptManifest {
                id: *id,
                reason: e.to_string(),
            })?
            .ok_or(Error::MissingManifest(*id))?;
        let actual = ManifestId::of(&bytes);
        if actual != *id {
            return Err(Error::CorruptManifest {
                id: *id,
                reason: format!("its bytes hash to {actual}"),
            });
        }
        Manifest::decode(&bytes).map_err(|e| Error::CorruptManifest {
            id: *id,
            reason: e.to_string(),
        })
    }

    fn read_chunk(
        &self,
        z: &mut zstd::bulk::Decompressor<'static>,
        id: &ChunkId,
        len: u32,
    ) -> Result<Vec<u8>, Error> {
        let corrupt = |reason: String| Error::CorruptChunk { id: *id, reason };
        let stored = self
            .db
            .get_pinned_cf(self.cf(CF_CHUNKS), id.as_bytes())
            .map_err(|e| corrupt(format!("the database cannot read it: {e}")))?
            .ok_or(Error::MissingChunk(*id))?;
        let plain = if stored.len() == len as usize {
            stored.to_vec()
        } else {
            let mut out = Vec::with_capacity(len as usize);
            z.decompress_to_buffer(&stored, &mut out)
                .map_err(|e| corrupt(format!("it does not decompress: {e}")))?;
            if out.len() != len as usize {
                return Err(corrupt(format!(
                    "it decompresses to {} bytes, not {len}",
                    out.len()
                )));
            }
            out
        };
        let actual = ChunkId::of(&plain);
        if actual != *id {
            return Err(corrupt(format!("its bytes hash to {actual}")));
        }
        Ok(plain)
    }

    fn gc(&self, roots: &[ManifestId]) -> Result<GcReport, Error> {
        let mut stats = lock(&self.writer);
        let mut live_manifests: HashSet<ManifestId> = roots.iter().copied().collect();
        for item in self
            .db
            .iterator_cf(self.cf(CF_PINS), rocksdb::IteratorMode::Start)
        {
            let (k, _) = item.map_err(Error::db("listing pins"))?;
            if let Some(id) = ManifestId::from_slice(&k) {
                live_manifests.insert(id);
            }
        }
        // Mark: a sorted list of live chunk ids (32 bytes each).
        let mut live: Vec<ChunkId> = Vec::new();
        let mut report = GcReport::default();
        let mut next = *stats;
        let mut batch = WriteBatch::default();
        let manifests = self.cf(CF_MANIFESTS);
        for item in self.db.iterator_cf(manifests, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(Error::db("listing manifests"))?;
            let id = ManifestId::from_slice(&k);
            if id.is_some_and(|id| live_manifests.contains(&id)) {
                // A damaged live manifest keeps everything it still names alive.
                let Ok(m) = Manifest::decode(&v) else {
                    continue;
                };
                live.extend(m.entries().iter().map(|e| e.id));
            } else {
                batch.delete_cf(manifests, &k);
                report.manifests += 1;
                next.manifests = next.manifests.saturating_sub(1);
                next.stored_bytes = next.stored_bytes.saturating_sub(v.len() as u64);
                next.logical_bytes = next
                    .logical_bytes
                    .saturating_sub(Manifest::decode(&v).map_or(0, |m| m.size()));
            }
        }
        live.sort_unstable();
        live.dedup();
        // Sweep.
        let (chunks, meta) = (self.cf(CF_CHUNKS), self.cf(CF_CHUNK_META));
        for item in self.db.iterator_cf(meta, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(Error::db("listing chunks"))?;
            let keep = ChunkId::from_slice(&k).is_some_and(|id| live.binary_search(&id).is_ok());
            if keep {
                continue;
            }
            let (plain, stored) = parse_chunk_meta(&v).unwrap_or((0, 0));
            batch.delete_cf(chunks, &k);
            batch.delete_cf(meta, &k);
            report.chunks += 1;
            report.bytes += u64::from(stored);
            next.chunks = next.chunks.saturating_sub(1);
            next.chunk_bytes = next.chunk_bytes.saturating_sub(u64::from(plain));
            next.stored_bytes = next.stored_bytes.saturating_sub(u64::from(stored));
        }
        if report.manifests + report.chunks == 0 {
            return Ok(report);
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .write_opt(batch, &sync)
            .map_err(Error::db("deleting garbage"))?;
        *stats = next;
        drop(stats);
        // Rewrite blob files so the space of deleted chunks returns to the
        // file system, then go back to leaving blobs alone.
        let blob_gc = |on: &str| {
            self.db.set_options_cf(
                chunks,
                &[
                    ("enable_blob_garbage_collection", on),
                    ("blob_garbage_collection_age_cutoff", "1.0"),
                ],
            )
        };
        blob_gc("true").map_err(Error::db("enabling blob garbage collection"))?;
        for cf in [chunks, meta, manifests] {
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        blob_gc("false").map_err(Error::db("disabling blob garbage collection"))?;
        Ok(report)
    }

    fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport, Error> {
        let total = {
            let s = lock(&self.writer);
            s.chunks + s.manifests
        };
        let mut report = VerifyReport::default();
        let meta = self.cf(CF_CHUNK_META);
        // Chunks: ids from the small meta family, bytes read and re-hashed on
        // worker threads so one damaged value is attributed to its id.
        let (job_tx, job_rx) = bounded::<Vec<(ChunkId, Result<u32, String>)>>(self.threads * 2);
        let (bad_tx, bad_rx) = crossbeam_channel::unbounded::<(ChunkId, String)>();
        let (count_tx, count_rx) = crossbeam_channel::unbounded::<u64>();
        let listed = std::thread::scope(|s| -> Result<(), Error> {
            for _ in 0..self.threads {
                let (job_rx, bad_tx, count_tx) = (job_rx.clone(), bad_tx.clone(), count_tx.clone());
                s.spawn(move || {
                    let Ok(mut z) = zstd::bulk::Decompressor::new() else {
                        return;
                    };
                    for batch in job_rx {
                        let n = batch.len() as u64;
                        for (id, len) in batch {
                            let problem = match len {
                                Ok(len) => {
                                    self.read_chunk(&mut z, &id, len).err().map(|e| match e {
                                        Error::CorruptChunk { reason, .. } => reason,
                                        Error::MissingChunk(_) => {
                                            "its bytes are missing".to_string()
                                        }
                                        e => e.to_string(),
                                    })
                                }
                                Err(reason) => Some(reason),
                            };
                            if let Some(p) = problem {
                                let _ = bad_tx.send((id, p));
                            }
                        }
                        let _ = count_tx.send(n);
                    }
                });
            }
            drop((job_rx, bad_tx, count_tx));
            let mut batch = Vec::with_capacity(64);
            let mut checked = 0;
            for item in self.db.iterator_cf(meta, rocksdb::IteratorMode::Start) {
                let (k, v) = item.map_err(Error::db("listing chunks"))?;
                let Some(id) = ChunkId::from_slice(&k) else {
                    continue;
                };
                let len = parse_chunk_meta(&v)
                    .map(|(plain, _)| plain)
                    .ok_or_else(|| "its length record is damaged".to_string());
                batch.push((id, len));
                if batch.len() == 64 {
                    let _ = job_tx.send(std::mem::replace(&mut batch, Vec::with_capacity(64)));
                }
                while let Ok(n) = count_rx.try_recv() {
                    checked += n;
                    progress(checked, total);
                }
            }
            if !batch.is_empty() {
                let _ = job_tx.send(batch);
            }
            drop(job_tx);
            for n in count_rx.iter() {
                checked += n;
                progress(checked, total);
            }
            report.chunks_checked = checked;
            Ok(())
        });
        listed?;
        report.bad_chunks = bad_rx.iter().collect();
        report.bad_chunks.sort();
        let bad: HashSet<ChunkId> = report.bad_chunks.iter().map(|(id, _)| *id).collect();

        // Manifests: hash, canonical form, and that every chunk they name is
        // stored and sound.
        let manifests = self.cf(CF_MANIFESTS);
        for item in self.db.iterator_cf(manifests, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(Error::db("listing manifests"))?;
            report.manifests_checked += 1;
            progress(report.chunks_checked + report.manifests_checked, total);
            let Some(id) = ManifestId::from_slice(&k) else {
                continue;
            };
            let actual = ManifestId::of(&v);
            if actual != id {
                report
                    .bad_manifests
                    .push((id, format!("its bytes hash to {actual}")));
                continue;
            }
            let m = match Manifest::decode(&v) {
                Ok(m) => m,
                Err(e) => {
                    report.bad_manifests.push((id, e.to_string()));
                    continue;
                }
            };
            let ids: Vec<ChunkId> = m.entries().iter().map(|e| e.id).collect();
            let lens =
                self.db
                    .batched_multi_get_cf(meta, ids.iter().map(|id| id.as_bytes()), false);
            let mut problems = Vec::new();
            for (e, len) in m.entries().iter().zip(lens) {
                let len = len.map_err(Error::db("looking up chunks"))?;
                match len.as_deref().and_then(parse_chunk_meta) {
                    None => problems.push(format!("chunk {} is missing", e.id)),
                    Some((plain, _)) if plain != e.len => problems.push(format!(
                        "chunk {} is {plain} bytes, the manifest says {}",
                        e.id, e.len
                    )),
                    Some(_) if bad.contains(&e.id) => {
                        problems.push(format!("chunk {} is damaged", e.id))
                    }
                    Some(_) => {}
                }
            }
            problems.dedup();
            if !problems.is_empty() {
                report.bad_manifests.push((id, problems.join("; ")));
            }
        }
        Ok(report)
    }
}

//! Objects go to disk in packs, one per write: a block's objects (its
//! commit, the trees it changed, the blobs it added) are held in memory by
//! gix while the block is built and written as one pack with its index
//! when something must be durable or visible (before a ref moves, before a
//! sync, before verification). A loose object is a file of its own, and
//! creating thousands of small files is what a ledger with a large state
//! spends its block time on; a pack is two files (no deltas: each object
//! zlib-compressed, as git stores base objects), which `git` and `gix`
//! both read.
//!
//! Packs are merged by size tier so their number stays bounded: the tier
//! of a pack is the number of hex digits of its object count, and once
//! [`PACKS_PER_TIER`] packs share a tier they and every smaller pack are
//! rewritten as one. Each object is rewritten once per tier, so the
//! amortised cost of merging grows with the logarithm of the ledger's
//! size. Packs a peer sent stay as they are while their `.keep` is there.

use std::path::{Path, PathBuf};

use gix::ObjectId;
use gix::objs::Kind;

use crate::repo::{Ledger, LedgerError};

/// How many packs of one size tier may accumulate before they merge.
pub const PACKS_PER_TIER: usize = 16;

fn io_err(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError {
    let path = path.to_path_buf();
    move |source| LedgerError::Io {
        doing,
        path,
        source,
    }
}

fn pack_type(kind: Kind) -> u8 {
    match kind {
        Kind::Commit => 1,
        Kind::Tree => 2,
        Kind::Blob => 3,
        Kind::Tag => 4,
    }
}

/// Writes pack entries with one compressor for all of them: a new zlib
/// state per object costs more than compressing a small object (its
/// tables are allocated and cleared), and blocks are mostly small objects.
pub(crate) struct EntryWriter {
    compress: gix::zlib::stream::deflate::Compress,
    buf: Box<[u8]>,
}

impl EntryWriter {
    pub(crate) fn new() -> Self {
        Self {
            compress: gix::zlib::stream::deflate::Compress::new(gix::zlib::Compression::BEST_SPEED),
            buf: vec![0; 32 << 10].into_boxed_slice(),
        }
    }

    /// Appends one entry, `kind` and `data` (header, then the zlib stream
    /// of the data) to `out`.
    pub(crate) fn entry(
        &mut self,
        kind: Kind,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), std::io::Error> {
        use gix::zlib::Status;
        use gix::zlib::stream::deflate::FlushCompress;
        entry_header(kind, data.len(), out);
        if data.len() < STORE_BELOW {
            stored_zlib(data, out);
            return Ok(());
        }
        self.compress.reset();
        let mut input = data;
        loop {
            let (was_in, was_out) = (self.compress.total_in(), self.compress.total_out());
            let status = self
                .compress
                .compress(input, &mut self.buf, FlushCompress::Finish)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let consumed = (self.compress.total_in() - was_in) as usize;
            let produced = (self.compress.total_out() - was_out) as usize;
            out.extend_from_slice(&self.buf[..produced]);
            input = &input[consumed..];
            match status {
                Status::StreamEnd => return Ok(()),
                _ if consumed == 0 && produced == 0 => {
                    return Err(std::io::Error::other("zlib made no progress"));
                }
                _ => {}
            }
        }
    }
}

/// Objects shorter than this go into a pack as stored (uncompressed)
/// zlib streams. Resetting a zlib state clears its hash table, 64 KiB,
/// which costs more than compressing a small object, and a block's small
/// objects (signed commits, trees of ids) barely compress; larger ones
/// (transaction files, big trees) are compressed.
pub(crate) const STORE_BELOW: usize = 2048;

/// `data` as a zlib stream of stored deflate blocks: the header, blocks of
/// at most 65,535 bytes, the Adler-32 of the data.
fn stored_zlib(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len() + 2 + 5 * (data.len() / 65_535 + 1) + 4);
    out.extend_from_slice(&[0x78, 0x01]);
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        // An empty stream still has one (final, empty) block.
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    // Sums stay below 2^32 for 5,552 bytes between reductions (zlib's NMAX).
    for run in data.chunks(5552) {
        for &x in run {
            a += u32::from(x);
            b += a;
        }
        a %= 65_521;
        b %= 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
}

/// The pack entry header: type and size, 4 bits then 7 bits per byte.
fn entry_header(kind: Kind, mut size: usize, out: &mut Vec<u8>) {
    let mut byte = (pack_type(kind) << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
}

/// A pack being built: its bytes so far and, per entry, what its index
/// records.
struct PackBuilder {
    bytes: Vec<u8>,
    /// Id, offset in the pack and CRC-32 of the entry's bytes.
    entries: Vec<(ObjectId, u64, u32)>,
    writer: EntryWriter,
}

impl PackBuilder {
    fn new() -> Self {
        let mut bytes = Vec::with_capacity(64 << 10);
        bytes.extend_from_slice(b"PACK");
        bytes.extend_from_slice(&2u32.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        Self {
            bytes,
            entries: Vec::new(),
            writer: EntryWriter::new(),
        }
    }

    /// Adds object `id`; the caller adds each id once.
    fn add(
        &mut self,
        id: ObjectId,
        kind: Kind,
        data: &[u8],
        objects: &Path,
    ) -> Result<(), LedgerError> {
        let offset = self.bytes.len();
        self.writer
            .entry(kind, data, &mut self.bytes)
            .map_err(io_err("compressing an object for a pack in", objects))?;
        let crc = crc32fast::hash(&self.bytes[offset..]);
        self.entries.push((id, offset as u64, crc));
        Ok(())
    }

    /// Finishes the pack (count, trailer) and its version 2 index, and
    /// writes both into `objects/pack` (each under a temporary name, then
    /// renamed: the pack first, as readers find packs by their index).
    /// Returns the index's path. Syncs nothing.
    fn write(mut self, objects: &Path) -> Result<PathBuf, LedgerError> {
        let count = u32::try_from(self.entries.len())
            .map_err(|_| LedgerError::Draft("too many objects for one pack".into()))?;
        self.bytes[8..12].copy_from_slice(&count.to_be_bytes());
        let trailer = sha1(&self.bytes, objects)?;
        self.bytes.extend_from_slice(trailer.as_bytes());
        let index = index_v2(&mut self.entries, trailer.as_bytes(), objects)?;

        let pack_dir = objects.join("pack");
        std::fs::create_dir_all(&pack_dir).map_err(io_err("creating", &pack_dir))?;
        let name = format!("pack-{}", trailer.to_hex());
        let index_path = pack_dir.join(format!("{name}.idx"));
        for (ext, bytes) in [("pack", &self.bytes), ("idx", &index)] {
            let path = pack_dir.join(format!("{name}.{ext}"));
            if path.exists() {
                continue; // the same objects, packed before
            }
            let tmp = pack_dir.join(format!("{name}.{ext}.{TMP}"));
            std::fs::write(&tmp, bytes).map_err(io_err("writing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err("renaming into place", &tmp))?;
        }
        Ok(index_path)
    }
}

/// The extension of a pack or index being written; [`Ledger::clear_stale_locks`]
/// removes those a killed writer left.
pub(crate) const TMP: &str = "tmp";

fn sha1(bytes: &[u8], objects: &Path) -> Result<ObjectId, LedgerError> {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(bytes);
    hasher.try_finalize().map_err(|e| LedgerError::Io {
        doing: "hashing a pack in",
        path: objects.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// A version 2 pack index, as `git index-pack` writes it: magic and
/// version, the fan-out table of 256 cumulative counts by first byte, the
/// sorted ids, their entries' CRC-32s, their offsets (31 bits, or an index
/// into a table of 64-bit offsets), the pack's trailer, and the index's
/// own SHA-1.
fn index_v2(
    entries: &mut [(ObjectId, u64, u32)],
    pack_trailer: &[u8],
    objects: &Path,
) -> Result<Vec<u8>, LedgerError> {
    entries.sort_unstable_by_key(|e| e.0);
    let mut out = Vec::with_capacity(8 + 1024 + entries.len() * 28 + 40);
    out.extend_from_slice(b"\xfftOc");
    out.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for (id, _, _) in entries.iter() {
        fanout[usize::from(id.as_bytes()[0])] += 1;
    }
    let mut total = 0u32;
    for n in fanout {
        total += n;
        out.extend_from_slice(&total.to_be_bytes());
    }
    for (id, _, _) in entries.iter() {
        out.extend_from_slice(id.as_bytes());
    }
    for (_, _, crc) in entries.iter() {
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for (_, offset, _) in entries.iter() {
        let small = if *offset < 0x8000_0000 {
            *offset as u32
        } else {
            let at = u32::try_from(large.len() / 8)
                .ok()
                .filter(|n| *n < 0x8000_0000)
                .ok_or_else(|| LedgerError::Draft("too many objects for one pack".into()))?;
            large.extend_from_slice(&offset.to_be_bytes());
            0x8000_0000 | at
        };
        out.extend_from_slice(&small.to_be_bytes());
    }
    out.extend_from_slice(&large);
    out.extend_from_slice(pack_trailer);
    let own = sha1(&out, objects)?;
    out.extend_from_slice(own.as_bytes());
    Ok(out)
}

/// When the pack directory last changed (a pack added or removed).
pub(crate) fn packs_changed_at(repo: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(repo.join("objects/pack"))
        .and_then(|m| m.modified())
        .ok()
}

/// A pack of the repository that may be merged: its index and about how
/// many objects it holds.
struct Pack {
    index: PathBuf,
    objects: u64,
}

/// The size tier of a pack of `objects` objects: its hex digits.
fn tier(objects: u64) -> u32 {
    objects.max(1).ilog(16)
}

/// The objects a version 2 index of `len` bytes names (header, fan-out,
/// 28 bytes per object, two trailing hashes; large offsets ignored).
fn indexed_objects(len: u64) -> u64 {
    len.saturating_sub(8 + 1024 + 40) / 28
}

impl Ledger {
    /// Writes the objects gix holds in memory (everything written since
    /// the last flush) as one pack, merges packs whose tier is full, and
    /// makes the new pack visible to this ledger's reads. Syncs nothing:
    /// [`Ledger::sync_all`] does. If the pack cannot be written, the
    /// objects stay in memory for the next try.
    pub(crate) fn flush_objects(&self) -> Result<(), LedgerError> {
        let objects_dir = self.path().join("objects");
        let Some(memory) = self.repo().objects.reset_object_memory() else {
            return Ok(());
        };
        let mut objects: Vec<_> = memory.iter().collect();
        let Some(first) = objects.iter().map(|(id, _)| **id).min() else {
            return Ok(());
        };
        objects.sort_unstable_by_key(|(id, _)| **id);
        let written = (|| {
            let mut pack = PackBuilder::new();
            for (id, (kind, data)) in &objects {
                pack.add(**id, *kind, data, &objects_dir)?;
            }
            pack.write(&objects_dir)
        })();
        if let Err(e) = written {
            for (id, (kind, data)) in objects {
                // Into memory again: the proxy's memory is still enabled.
                let _ = gix::objs::Write::write_buf_with_known_id(
                    &self.repo().objects,
                    *kind,
                    data,
                    *id,
                );
            }
            return Err(e);
        }
        self.see_new_packs(first)?;
        self.merge_packs()?;
        self.see_new_packs(first)
    }

    /// gix knows packs from a snapshot it refreshes only on a miss, and
    /// its write path checks existence without refreshing: look an object
    /// of the new pack up now, so the snapshot includes it before the next
    /// write asks whether a packed object exists.
    fn see_new_packs(&self, any_new: ObjectId) -> Result<(), LedgerError> {
        self.refresh_packs();
        self.reading(|| {
            if self.repo().has_object(any_new) {
                Ok(())
            } else {
                Err(LedgerError::Draft(format!(
                    "object {any_new} is missing right after packing it"
                )))
            }
        })
    }

    /// Makes gix read the pack directory again now (a lookup of an id no
    /// object has misses, and a miss loads what is new on disk). Called
    /// after packs are added and again after packs are removed, so that no
    /// refresh of gix's pack list sees both at once (see
    /// docs/decisions.md: gix can then lose a new pack's slot).
    pub(crate) fn refresh_packs(&self) {
        let _ = self
            .repo()
            .has_object(ObjectId::null(gix::hash::Kind::Sha1));
    }

    /// Runs `read`; if it fails, reads the pack directory again and runs
    /// it once more, and if it still fails and packs came or went since
    /// this ledger last opened its repository, opens it again and runs it
    /// a last time. gix-odb 0.87 can lose sight of a new pack for good:
    /// once a store has reused its index slots, a refresh that both adds
    /// packs and drops removed ones may put a new index in a slot it then
    /// clears. The ledger's own writes never refresh that way
    /// (`flush_objects` refreshes after adding and again after removing),
    /// but another `Ledger` on the same repository (a node keeps several)
    /// meets both at once, so reads that start from an id go through here.
    /// A miss for an id that is not there reopens at most once per change
    /// of the pack directory. See docs/decisions.md.
    pub(crate) fn reading<T>(
        &self,
        read: impl Fn() -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let outcome = read();
        if outcome.is_ok() {
            return outcome;
        }
        self.refresh_packs();
        let outcome = read();
        if outcome.is_ok() {
            return outcome;
        }
        let packs_now = packs_changed_at(self.path());
        if packs_now == self.packs_seen.get() || !self.reopen() {
            return outcome;
        }
        self.packs_seen.set(packs_now);
        read()
    }

    /// The packs that may be merged: all but those a `.keep` guards.
    fn mergeable_packs(&self) -> Result<Vec<Pack>, LedgerError> {
        let dir = self.path().join("objects/pack");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        let mut packs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let index = entry.path();
            if index.extension().is_none_or(|e| e != "idx")
                || index.with_extension("keep").exists()
                || !index.with_extension("pack").exists()
            {
                continue;
            }
            let len = entry.metadata().map_err(io_err("reading", &index))?.len();
            packs.push(Pack {
                index,
                objects: indexed_objects(len),
            });
        }
        Ok(packs)
    }

    /// Merges packs while some tier holds [`PACKS_PER_TIER`] of them: that
    /// tier's packs and all smaller ones become one pack, made durable
    /// before the packs it replaces are removed.
    fn merge_packs(&self) -> Result<(), LedgerError> {
        loop {
            let packs = self.mergeable_packs()?;
            let mut per_tier = std::collections::BTreeMap::<u32, usize>::new();
            for pack in &packs {
                *per_tier.entry(tier(pack.objects)).or_default() += 1;
            }
            let Some(full) = per_tier
                .iter()
                .find(|(_, n)| **n >= PACKS_PER_TIER)
                .map(|(t, _)| *t)
            else {
                return Ok(());
            };
            let merged: Vec<&Pack> = packs.iter().filter(|p| tier(p.objects) <= full).collect();
            self.rewrite_as_one(&merged)?;
        }
    }

    fn rewrite_as_one(&self, packs: &[&Pack]) -> Result<(), LedgerError> {
        let objects_dir = self.path().join("objects");
        let mut ids = std::collections::BTreeSet::new();
        for pack in packs {
            let index = gix_pack::index::File::at(&pack.index, gix::hash::Kind::Sha1).map_err(
                |source| LedgerError::Git {
                    doing: format!("reading pack index {}", pack.index.display()),
                    source: gix::Error::from_error(source),
                },
            )?;
            ids.extend(index.iter().map(|e| e.oid));
        }
        let mut merged = PackBuilder::new();
        for id in &ids {
            let (kind, data) = self.reading(|| {
                let repo = self.repo();
                let object = repo.find_object(*id).map_err(|source| LedgerError::Git {
                    doing: format!("reading object {id} to merge packs"),
                    source,
                })?;
                Ok((object.kind, object.detach().data))
            })?;
            merged.add(*id, kind, &data, &objects_dir)?;
        }
        let index = merged.write(&objects_dir)?;
        if self.is_durable() {
            crate::repo::sync_objects(&objects_dir)?;
        }
        self.refresh_packs();
        for pack in packs {
            if pack.index == index {
                continue; // the same objects merged into the same pack
            }
            for path in [pack.index.clone(), pack.index.with_extension("pack")] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing the merged pack", &path)(e)),
                }
            }
        }
        self.refresh_packs();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_headers_match_git() {
        let mut out = Vec::new();
        entry_header(Kind::Blob, 10, &mut out);
        assert_eq!(out, [0x3a]);
        out.clear();
        entry_header(Kind::Commit, 300, &mut out);
        // 300 = 0b1_0010_1100: low 4 bits 1100, then 10010.
        assert_eq!(out, [0x80 | 0x10 | 0x0c, 0x12]);
    }

    #[test]
    fn stored_zlib_streams_inflate_to_their_data() {
        use std::io::Read as _;
        for len in [0usize, 1, 100, STORE_BELOW - 1, 65_535, 65_536, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let mut stream = Vec::new();
            stored_zlib(&data, &mut stream);
            // flate2 checks the header, every block and the Adler-32.
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&stream[..])
                .read_to_end(&mut back)
                .unwrap_or_else(|e| panic!("{len} bytes: {e}"));
            assert_eq!(back, data, "{len} bytes");
        }
    }
}

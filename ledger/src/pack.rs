//! Packing loose objects, as `git gc` would: every block writes a handful of
//! loose objects (one file each); reading thousands of small files costs an
//! open and a map per object, and each takes a filesystem block. The ledger
//! moves them into one pack (no deltas: each object zlib-compressed, as git
//! stores base objects) with its index, which `git` and `gix` both read.

use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::objs::Kind;

use crate::repo::{Ledger, LedgerError};

/// Pack once this many objects were written since the last pack…
pub const PACK_AFTER_OBJECTS: usize = 16_384;
/// …or this many bytes.
pub const PACK_AFTER_BYTES: usize = 64 << 20;

fn io_err(
    doing: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> LedgerError {
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

impl Ledger {
    /// The ids of all loose objects.
    fn loose_objects(&self) -> Result<Vec<ObjectId>, LedgerError> {
        let objects = self.path().join("objects");
        let mut ids = Vec::new();
        for fan in 0..=255u8 {
            let dir = objects.join(format!("{fan:02x}"));
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("listing", &dir))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.len() != 38 {
                    continue; // temporary files of an interrupted write
                }
                if let Ok(id) = ObjectId::from_hex(format!("{fan:02x}{name}").as_bytes()) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Moves every loose object into a new pack with its index, makes it
    /// durable, then removes the loose copies. Returns how many objects
    /// moved. Readers never miss an object: the pack is complete and synced
    /// before any loose file goes.
    pub fn pack_loose(&self) -> Result<usize, LedgerError> {
        let ids = self.loose_objects()?;
        if ids.is_empty() {
            return Ok(0);
        }
        let count = u32::try_from(ids.len())
            .map_err(|_| LedgerError::Draft("too many loose objects for one pack".into()))?;
        let mut pack = Vec::with_capacity(1 << 20);
        pack.extend_from_slice(b"PACK");
        pack.extend_from_slice(&2u32.to_be_bytes());
        pack.extend_from_slice(&count.to_be_bytes());
        let objects = self.path().join("objects");
        let mut entries = EntryWriter::new();
        for id in &ids {
            let object = self
                .repo()
                .find_object(*id)
                .map_err(|source| LedgerError::Git {
                    doing: format!("reading loose object {id} to pack it"),
                    source,
                })?;
            entries
                .entry(object.kind, &object.data, &mut pack)
                .map_err(io_err("compressing an object for a pack in", &objects))?;
        }
        let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
        hasher.update(&pack);
        let trailer = hasher.try_finalize().map_err(|e| LedgerError::Io {
            doing: "hashing a pack in",
            path: objects.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        pack.extend_from_slice(trailer.as_bytes());

        let pack_dir = objects.join("pack");
        std::fs::create_dir_all(&pack_dir).map_err(io_err("creating", &pack_dir))?;
        let outcome = gix_pack::Bundle::write_to_directory(
            &mut &pack[..],
            Some(&pack_dir),
            &mut gix::progress::Discard,
            &AtomicBool::new(false),
            None::<gix::objs::find::Never>,
            gix::hash::Kind::Sha1,
            gix_pack::bundle::write::Options::default(),
        )
        .map_err(|source| LedgerError::Git {
            doing: "writing a pack".into(),
            source,
        })?;
        // The `.keep` guards a fetched pack until refs name its objects;
        // ours are already named.
        if let Some(keep) = outcome.keep_path {
            std::fs::remove_file(&keep).map_err(io_err("removing", &keep))?;
        }
        self.sync_all()?;
        for id in &ids {
            let hex = id.to_string();
            let path = objects.join(&hex[..2]).join(&hex[2..]);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing the packed loose object", &path)(e)),
            }
        }
        for fan in 0..=255u8 {
            // Only empty directories go; others hold objects written since.
            let _ = std::fs::remove_dir(objects.join(format!("{fan:02x}")));
        }
        // gix knows packs from a snapshot it refreshes only on a miss, and
        // its write path checks existence without refreshing: look one
        // moved object up now, so the snapshot includes the new pack before
        // the next write asks whether a packed object exists.
        if !self.repo().has_object(ids[0]) {
            return Err(LedgerError::Draft(format!(
                "object {} is missing right after packing it",
                ids[0]
            )));
        }
        Ok(ids.len())
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

//! Content-defined cutting over any `Read`, a block at a time.
//!
//! `fastcdc::v2020::StreamCDC` copies every chunk into a fresh `Vec` and
//! shifts its buffer after each one. Instead we read large blocks into
//! recycled buffers, cut each block with the slice chunker, and carry the
//! block's last chunk (whose end may only be the block's end, not a real cut
//! point) to the front of the next block. A cut point depends only on the
//! bytes from the chunk's start to at most `max` bytes on, so this finds
//! exactly the cut points of the streaming chunker; a test checks it against
//! `StreamCDC`.

use std::io::{self, Read};

use fastcdc::v2020::FastCDC;

use crate::Chunking;

/// A filled buffer and the chunks cut from it.
pub(crate) struct Block {
    /// Always `block_size` long; `filled` bytes are data.
    pub data: Vec<u8>,
    /// `(offset, len)` of each complete chunk, in order, covering `data[..end]`.
    pub chunks: Vec<(u32, u32)>,
}

pub(crate) struct Cutter<R> {
    reader: R,
    chunking: Chunking,
    block_size: usize,
    carry: Vec<u8>,
    eof: bool,
    bytes_read: u64,
}

impl<R: Read> Cutter<R> {
    pub fn new(reader: R, chunking: Chunking, block_size: usize) -> Self {
        assert!(
            block_size >= 2 * chunking.max as usize,
            "a block holds at least two maximal chunks"
        );
        Self {
            reader,
            chunking,
            block_size,
            carry: Vec::with_capacity(chunking.max as usize),
            eof: false,
            bytes_read: 0,
        }
    }

    /// Bytes read from the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// A fresh buffer of the right size for [`Cutter::next_block`].
    pub fn new_buffer(&self) -> Vec<u8> {
        vec![0; self.block_size]
    }

    /// Fills `buf` (from [`Cutter::new_buffer`] or a recycled block) and cuts
    /// it. `None` once the input is exhausted.
    pub fn next_block(&mut self, mut buf: Vec<u8>) -> io::Result<Option<Block>> {
        if self.eof && self.carry.is_empty() {
            return Ok(None);
        }
        debug_assert_eq!(buf.len(), self.block_size);
        let mut filled = self.carry.len();
        buf[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        while !self.eof && filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    filled += n;
                    self.bytes_read += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        let c = self.chunking;
        let mut chunks: Vec<(u32, u32)> = FastCDC::new(
            &buf[..filled],
            c.min as usize,
            c.avg as usize,
            c.max as usize,
        )
        .map(|ch| (ch.offset as u32, ch.length as u32))
        .collect();
        if !self.eof {
            let (offset, _) = chunks.pop().expect("a non-empty block has a chunk");
            self.carry.extend_from_slice(&buf[offset as usize..filled]);
        }
        Ok(Some(Block { data: buf, chunks }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::StreamCDC;

    /// Deterministic pseudo-random bytes with some repetition, so both
    /// content-defined and forced (max-size) cuts happen.
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 7 == 0 {
                out.extend(std::iter::repeat_n(0u8, (x % 5000) as usize));
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    fn ours(input: &[u8], c: Chunking, block: usize) -> Vec<(u64, usize)> {
        cuts(&mut Cutter::new(input, c, block))
    }

    /// Every chunk a cutter yields, as (offset in the input, length).
    fn cuts<R: Read>(cutter: &mut Cutter<R>) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let mut base = 0u64;
        let mut buf = cutter.new_buffer();
        while let Some(b) = cutter.next_block(buf).unwrap() {
            let block_start = base;
            for &(off, len) in &b.chunks {
                out.push((block_start + u64::from(off), len as usize));
                base = block_start + u64::from(off) + u64::from(len);
            }
            buf = b.data;
        }
        out
    }

    fn oracle(input: &[u8], c: Chunking) -> Vec<(u64, usize)> {
        StreamCDC::new(input, c.min as usize, c.avg as usize, c.max as usize)
            .map(|ch| {
                let ch = ch.unwrap();
                (ch.offset, ch.length)
            })
            .collect()
    }

    #[test]
    fn same_cuts_as_stream_cdc() {
        let small: Chunking = "64/256/1K".parse().unwrap();
        for (len, seed) in [
            (0, 1),
            (1, 2),
            (63, 3),
            (1024, 4),
            (100_000, 5),
            (1_000_003, 6),
        ] {
            let input = data(len, seed);
            let expected = oracle(&input, small);
            for block in [2048, 2050, 4096, 65536] {
                assert_eq!(
                    ours(&input, small, block),
                    expected,
                    "len {len} block {block}"
                );
            }
        }
        let input = data(3 << 20, 7);
        let expected = oracle(&input, Chunking::default());
        assert_eq!(ours(&input, Chunking::default(), 512 << 10), expected);
        assert_eq!(ours(&input, Chunking::default(), 4 << 20), expected);
    }

    #[test]
    fn blocks_cover_the_input_exactly() {
        let input = data(777_777, 9);
        let cuts = ours(&input, "64/256/1K".parse().unwrap(), 4096);
        let total: usize = cuts.iter().map(|c| c.1).sum();
        assert_eq!(total, input.len());
        assert!(cuts.iter().all(|c| c.1 <= 1024));
    }

    /// A reader that hands out one byte at a time and is interrupted often.
    struct Trickle<'a>(&'a [u8], u32);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1 % 3 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.0.len()).min(1 + (self.1 as usize % 700));
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_and_interrupted_reads_do_not_change_cuts() {
        let c: Chunking = "64/256/1K".parse().unwrap();
        let input = data(50_000, 11);
        let mut cutter = Cutter::new(Trickle(&input, 0), c, 4096);
        assert_eq!(cuts(&mut cutter), oracle(&input, c));
        assert_eq!(cutter.bytes_read(), input.len() as u64);
    }
}

//! A bounded in-memory pipe between two threads: one produces buffers (a
//! decompressor, a tar writer), the other reads them as a stream (the
//! chunkstore's `put`). Buffers return to the producer for reuse.

use std::io::{self, Read};

use crossbeam_channel::{Receiver, Sender, bounded};

/// The producing end. Dropping it ends the stream.
pub struct Writer {
    data: Sender<io::Result<Vec<u8>>>,
    pool: Receiver<Vec<u8>>,
}

/// The consuming end.
pub struct Reader {
    data: Receiver<io::Result<Vec<u8>>>,
    pool: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

/// A pipe holding at most `depth` buffers in flight.
pub fn pipe(depth: usize) -> (Writer, Reader) {
    let (data_tx, data_rx) = bounded(depth);
    let (pool_tx, pool_rx) = bounded(depth + 2);
    (
        Writer {
            data: data_tx,
            pool: pool_rx,
        },
        Reader {
            data: data_rx,
            pool: pool_tx,
            current: Vec::new(),
            pos: 0,
        },
    )
}

impl Writer {
    /// A buffer to fill: one the reader has returned (holding its old
    /// bytes, so resizing it up to its old length zeroes nothing), else a
    /// new empty one.
    pub fn buffer(&self, capacity: usize) -> Vec<u8> {
        self.pool
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// Sends a buffer; `false` when the reader is gone.
    pub fn send(&self, buf: Vec<u8>) -> bool {
        self.data.send(Ok(buf)).is_ok()
    }

    /// Ends the stream with an error the reader will see.
    pub fn fail(&self, e: io::Error) {
        let _ = self.data.send(Err(e));
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.data.recv() {
                Ok(Ok(next)) => {
                    let old = std::mem::replace(&mut self.current, next);
                    let _ = self.pool.try_send(old);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A `Write` onto a pipe, buffering into `chunk`-sized sends.
pub struct WriteAdapter {
    pipe: Writer,
    buf: Vec<u8>,
    chunk: usize,
}

impl WriteAdapter {
    /// Writes into `pipe` in pieces of `chunk` bytes.
    pub fn new(pipe: Writer, chunk: usize) -> Self {
        let mut buf = pipe.buffer(chunk);
        buf.clear();
        Self { pipe, buf, chunk }
    }

    /// Ends the stream with an error.
    pub fn fail(&self, e: io::Error) {
        self.pipe.fail(e);
    }
}

impl io::Write for WriteAdapter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut next = self.pipe.buffer(self.chunk);
        next.clear();
        let full = std::mem::replace(&mut self.buf, next);
        if self.pipe.send(full) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reader stopped",
            ))
        }
    }
}

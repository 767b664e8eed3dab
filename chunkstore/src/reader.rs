//! Streaming reads with bounded read-ahead.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::error::Error;
use crate::manifest::{Entry, Manifest};
use crate::store::Store;

/// Chunks fetched ahead of the reader, per worker thread.
const AHEAD_PER_WORKER: usize = 4;

type Fetched = (usize, Result<Vec<u8>, Error>);

/// Reads a blob chunk by chunk, verifying each chunk's hash before any of
/// its bytes are returned. Holds at most a few chunks per core in memory.
pub struct BlobReader {
    manifest: Arc<Manifest>,
    next_fetch: usize,
    next_out: usize,
    window: usize,
    jobs: Option<Sender<usize>>,
    results: Option<Receiver<Fetched>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    waiting: BTreeMap<usize, Result<Vec<u8>, Error>>,
    current: Vec<u8>,
    pos: usize,
    /// Set for blobs too small to be worth threads.
    inline: Option<(Store, zstd::bulk::Decompressor<'static>)>,
}

impl BlobReader {
    pub(crate) fn new(store: Store, manifest: Manifest) -> Self {
        let manifest = Arc::new(manifest);
        let workers = store.threads().min(manifest.entries().len());
        let (jobs_tx, jobs_rx) = unbounded::<usize>();
        let (results_tx, results) = bounded::<Fetched>(workers.max(1) * AHEAD_PER_WORKER);
        let inline = if workers <= 1 {
            zstd::bulk::Decompressor::new()
                .ok()
                .map(|z| (store.clone(), z))
        } else {
            None
        };
        let mut threads = Vec::new();
        if inline.is_none() {
            for _ in 0..workers {
                let (store, manifest, jobs_rx, results_tx) = (
                    store.clone(),
                    manifest.clone(),
                    jobs_rx.clone(),
                    results_tx.clone(),
                );
                threads.push(std::thread::spawn(move || {
                    fetch_worker(store, manifest, jobs_rx, results_tx)
                }));
            }
        }
        Self {
            manifest,
            next_fetch: 0,
            next_out: 0,
            window: workers.max(1) * AHEAD_PER_WORKER,
            jobs: Some(jobs_tx),
            results: Some(results),
            workers: threads,
            waiting: BTreeMap::new(),
            current: Vec::new(),
            pos: 0,
            inline,
        }
    }

    /// The size of the whole blob.
    pub fn size(&self) -> u64 {
        self.manifest.size()
    }

    /// The next verified chunk, `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let n = self.manifest.entries().len();
        if self.next_out >= n {
            return Ok(None);
        }
        if let Some((store, z)) = &mut self.inline {
            let entry: &Entry = &self.manifest.entries()[self.next_out];
            self.next_out += 1;
            return store.read_chunk(z, entry).map(Some);
        }
        while self.next_fetch < n && self.next_fetch < self.next_out + self.window {
            if let Some(jobs) = &self.jobs {
                let _ = jobs.send(self.next_fetch);
            }
            self.next_fetch += 1;
        }
        let result = loop {
            if let Some(r) = self.waiting.remove(&self.next_out) {
                break r;
            }
            match self.results.as_ref().map(Receiver::recv) {
                Some(Ok((i, r))) => {
                    self.waiting.insert(i, r);
                }
                _ => break Err(Error::Panicked),
            }
        };
        self.next_out += 1;
        result.map(Some)
    }

    /// Writes the rest of the blob to `out`, a chunk at a time. Returns the
    /// bytes written.
    pub fn copy_to(&mut self, mut out: impl Write) -> io::Result<u64> {
        let mut written = 0u64;
        if self.pos < self.current.len() {
            out.write_all(&self.current[self.pos..])?;
            written += (self.current.len() - self.pos) as u64;
            self.pos = self.current.len();
        }
        while let Some(chunk) = self.next_chunk()? {
            out.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        Ok(written)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.current.len() {
            match self.next_chunk()? {
                Some(chunk) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        // Closing both queues makes every worker's next send or receive
        // fail, so they exit; joining them means no thread still holds the
        // store when its owner drops it (RocksDB must close before exit).
        self.jobs = None;
        self.results = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn fetch_worker(
    store: Store,
    manifest: Arc<Manifest>,
    jobs: Receiver<usize>,
    results: Sender<Fetched>,
) {
    let Ok(mut z) = zstd::bulk::Decompressor::new() else {
        return;
    };
    for i in jobs {
        let r = store.read_chunk(&mut z, &manifest.entries()[i]);
        if results.send((i, r)).is_err() {
            return;
        }
    }
}

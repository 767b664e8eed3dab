//! Answering peers: heads and packs on the sync protocol; manifests,
//! chunks and images on the content protocol. Every request is checked
//! against its limits before any work; what is read from the store is
//! re-hashed on the way out (the chunk store's rule).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use utter_chunkstore::{ChunkId, ManifestId, Store};
use utter_images::{Digest, ImageDocs, Images};
use utter_ledger::{Ledger, LedgerError};

use crate::endpoint::{
    ALPN_CHUNKS, ALPN_CONSENSUS, ALPN_EXEC, ALPN_SYNC, Conn, Endpoint, NetError, Reply,
};
use crate::wire::{LayerRef, Message, What, code};

/// The smallest and largest pack batch a server makes.
pub const PACK_BATCH: (u64, u64) = (1 << 20, 64 << 20);
/// Chunks read from the store per step of an answer.
const CHUNK_STEP: usize = 32;

/// What a node serves from.
#[derive(Clone)]
pub struct Source {
    /// The ledger's directory.
    pub ledger_dir: PathBuf,
    /// The chunk store.
    pub store: Store,
    /// The image store.
    pub images: Images,
}

impl Source {
    fn ledger(&self) -> Result<Ledger, LedgerError> {
        Ledger::open(&self.ledger_dir, Arc::new(self.store.clone()))
    }
}

/// Serves every connection `endpoint` accepts until it closes.
pub async fn serve(endpoint: Endpoint, source: Source) {
    serve_with(endpoint, source, None, None).await;
}

/// Serves like [`serve`], and hands every connection for the consensus
/// protocol to `consensus` and for the exec protocol to `exec` (without
/// them, they are refused).
pub async fn serve_with(
    endpoint: Endpoint,
    source: Source,
    consensus: Option<tokio::sync::mpsc::UnboundedSender<Conn>>,
    exec: Option<tokio::sync::mpsc::UnboundedSender<Conn>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let source = source.clone();
        let consensus = consensus.clone();
        let exec = exec.clone();
        tokio::spawn(async move {
            let Ok((conn, alpn)) = incoming.connected().await else {
                return;
            };
            if alpn == ALPN_SYNC {
                serve_sync(conn, source).await;
            } else if alpn == ALPN_CHUNKS {
                serve_chunks(conn, source).await;
            } else if alpn == ALPN_CONSENSUS
                && let Some(to) = consensus
            {
                if let Err(tokio::sync::mpsc::error::SendError(conn)) = to.send(conn) {
                    conn.close("this node is stopping");
                }
            } else if alpn == ALPN_EXEC {
                match exec {
                    Some(to) => {
                        if let Err(tokio::sync::mpsc::error::SendError(conn)) = to.send(conn) {
                            conn.close("this node is stopping");
                        }
                    }
                    None => conn.close("this node runs no leases"),
                }
            } else {
                conn.close("unknown protocol");
            }
        });
    }
}

fn error(code: u16, message: impl Into<String>) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

async fn serve_sync(conn: Conn, source: Source) {
    // One ledger handle per connection, opened off the async threads.
    let opened = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.ledger()).await
    };
    let ledger = match opened {
        Ok(Ok(l)) => Arc::new(Mutex::new(l)),
        _ => {
            conn.close("this node cannot read its ledger");
            return;
        }
    };
    while let Some(next) = conn.next_request().await {
        let Ok((request, reply)) = next else {
            conn.close("that is not the sync protocol");
            return;
        };
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let _ = answer_sync(request, reply, ledger).await;
        });
    }
}

async fn answer_sync(
    request: Message,
    mut reply: Reply,
    ledger: Arc<Mutex<Ledger>>,
) -> Result<(), NetError> {
    // The frame goes first; a pack's bytes follow while they are written,
    // so the asker indexes one part as the next is compressed.
    let (frame_tx, frame_rx) = tokio::sync::oneshot::channel::<Message>();
    let (pieces_tx, mut pieces) = tokio::sync::mpsc::channel::<Vec<u8>>(PIECES_IN_FLIGHT);
    let work = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let mut frame = Some(frame_tx);
        let mut answer = |m: Message| {
            if let Some(tx) = frame.take() {
                let _ = tx.send(m);
            }
        };
        let planned = match request {
            Message::Heads => ledger.shared_refs().map(|refs| {
                answer(Message::HeadsAre {
                    chain: ledger.chain().to_string(),
                    genesis: ledger.genesis(),
                    refs,
                });
                None
            }),
            Message::Blocks {
                wants,
                haves,
                max_bytes,
            } => {
                let max = max_bytes.clamp(PACK_BATCH.0, PACK_BATCH.1);
                ledger.plan_blocks(&wants, &haves, max).map(Some)
            }
            Message::Notes { want, haves } => ledger.plan_notes(want, &haves).map(Some),
            _ => {
                answer(error(
                    code::BAD_REQUEST,
                    "this is the sync protocol: ask heads, blocks or notes",
                ));
                Ok(None)
            }
        };
        let mut plan = match planned {
            Ok(Some(plan)) => plan,
            Ok(None) => return Ok(()),
            Err(e) => {
                answer(error(code::INTERNAL, e.to_string()));
                return Ok(());
            }
        };
        if plan.commits.is_empty() {
            answer(error(
                code::BAD_REQUEST,
                "nothing to send: every block asked for is unknown here or already had",
            ));
            return Ok(());
        }
        let Ok(objects) = u32::try_from(plan.objects.len()) else {
            answer(error(code::INTERNAL, "too many objects for one pack"));
            return Ok(());
        };
        answer(Message::Pack {
            commits: std::mem::take(&mut plan.commits),
            objects,
            more: plan.more,
        });
        let mut out = Pieces {
            tx: pieces_tx,
            buf: Vec::with_capacity(PIECE),
        };
        ledger
            .write_planned(&plan, &mut out)
            .and_then(|_| out.send().map_err(|e| LedgerError::Draft(e.to_string())))
            .map_err(|e| e.to_string())
    });
    let frame = frame_rx
        .await
        .unwrap_or_else(|_| error(code::INTERNAL, "the request failed"));
    reply.frame(&frame).await?;
    while let Some(piece) = pieces.recv().await {
        // On error the writer stops: its next piece has nowhere to go.
        reply.owned_bytes(piece).await?;
    }
    match work.await {
        Ok(Ok(())) => reply.finish(),
        // Half a pack must not look like a whole one.
        _ => reply.abort(),
    }
    Ok(())
}

/// Bytes of a pack per piece handed to the sending side.
const PIECE: usize = 1 << 20;
/// Pieces written but not yet sent, at most: what bounds the server's
/// memory while a slow asker reads.
const PIECES_IN_FLIGHT: usize = 4;

/// Cuts what is written into pieces for the sending side.
struct Pieces {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(piece)
            .map_err(|_| std::io::Error::other("the asker went away"))
    }
}

impl std::io::Write for Pieces {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn serve_chunks(conn: Conn, source: Source) {
    while let Some(next) = conn.next_request().await {
        let Ok((request, reply)) = next else {
            conn.close("that is not the content protocol");
            return;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _ = answer_content(request, reply, source).await;
        });
    }
}

async fn answer_content(
    request: Message,
    mut reply: Reply,
    source: Source,
) -> Result<(), NetError> {
    match request {
        Message::Chunks(ids) => {
            // Each step is read while the one before it is sent.
            let read = |step: Vec<[u8; 32]>| {
                let store = source.store.clone();
                tokio::task::spawn_blocking(move || {
                    let ids: Vec<ChunkId> = step.iter().map(|h| ChunkId(*h)).collect();
                    store
                        .chunks_stored(&ids)
                        .into_iter()
                        .zip(step)
                        .map(|(read, h)| match read {
                            Ok(c) => Message::Chunk {
                                id: h,
                                len: c.len,
                                stored: c.stored,
                            },
                            Err(_) => Message::Missing {
                                what: What::Chunk,
                                id: h,
                            },
                        })
                        .collect::<Vec<_>>()
                })
            };
            let mut steps = ids.chunks(CHUNK_STEP).map(<[[u8; 32]]>::to_vec);
            let mut pending = steps.next().map(read);
            while let Some(task) = pending.take() {
                let frames = task.await.unwrap_or_default();
                pending = steps.next().map(read);
                for f in frames {
                    reply.send(f).await?;
                }
            }
        }
        Message::Manifests(ids) => {
            let store = source.store.clone();
            let frames = tokio::task::spawn_blocking(move || {
                ids.iter()
                    .map(|h| match store.manifest(&ManifestId(*h)) {
                        Ok(m) => Message::Manifest {
                            id: *h,
                            encoded: m.encode(),
                        },
                        Err(_) => Message::Missing {
                            what: What::Manifest,
                            id: *h,
                        },
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for f in &frames {
                reply.frame(f).await?;
            }
        }
        Message::Image(h) => {
            let images = source.images.clone();
            let frame = tokio::task::spawn_blocking(move || {
                let digest = Digest::from_bytes(h);
                let docs = images
                    .get(&digest.to_string())
                    .and_then(|image| ImageDocs::of(&images, &image));
                match docs {
                    Ok(docs) => Message::ImageIs {
                        manifest: docs.manifest,
                        config: docs.config,
                        layers: docs
                            .layers
                            .iter()
                            .map(|l| LayerRef {
                                diff_id: *l.diff_id.as_bytes(),
                                size: l.size,
                                blob: l.blob.0,
                            })
                            .collect(),
                    },
                    Err(_) => Message::Missing {
                        what: What::Image,
                        id: h,
                    },
                }
            })
            .await
            .unwrap_or_else(|_| error(code::INTERNAL, "the request failed"));
            reply.frame(&frame).await?;
        }
        _ => {
            reply
                .frame(&error(
                    code::BAD_REQUEST,
                    "this is the content protocol: ask manifests, chunks or an image",
                ))
                .await?;
        }
    }
    reply.finish();
    Ok(())
}

//! Answering peers: heads and packs on the sync protocol; manifests,
//! chunks and images on the content protocol. Every request is checked
//! against its limits before any work; what is read from the store is
//! re-hashed on the way out (the chunk store's rule).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use utter_chunkstore::{ChunkId, ManifestId, Store};
use utter_images::{Digest, ImageDocs, Images};
use utter_ledger::{Ledger, LedgerError};

use crate::endpoint::{ALPN_CHUNKS, ALPN_SYNC, Conn, Endpoint, NetError, Reply};
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
    while let Some(incoming) = endpoint.accept().await {
        let source = source.clone();
        tokio::spawn(async move {
            let Ok((conn, alpn)) = incoming.connected().await else {
                return;
            };
            if alpn == ALPN_SYNC {
                serve_sync(conn, source).await;
            } else if alpn == ALPN_CHUNKS {
                serve_chunks(conn, source).await;
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
    let work = move || -> Result<(Message, Vec<u8>), String> {
        let ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let internal = |e: LedgerError| e.to_string();
        match request {
            Message::Heads => Ok((
                Message::HeadsAre {
                    chain: ledger.chain().to_string(),
                    genesis: ledger.genesis(),
                    refs: ledger.shared_refs().map_err(internal)?,
                },
                Vec::new(),
            )),
            Message::Blocks {
                wants,
                haves,
                max_bytes,
            } => {
                let max = max_bytes.clamp(PACK_BATCH.0, PACK_BATCH.1);
                let plan = ledger.plan_blocks(&wants, &haves, max).map_err(internal)?;
                pack(&ledger, plan)
            }
            Message::Notes { want, haves } => {
                let plan = ledger.plan_notes(want, &haves).map_err(internal)?;
                pack(&ledger, plan)
            }
            _ => Ok((
                error(
                    code::BAD_REQUEST,
                    "this is the sync protocol: ask heads, blocks or notes",
                ),
                Vec::new(),
            )),
        }
    };
    let answer = tokio::task::spawn_blocking(work).await;
    let (frame, bytes) = match answer {
        Ok(Ok(a)) => a,
        Ok(Err(why)) => (error(code::INTERNAL, why), Vec::new()),
        Err(_) => (error(code::INTERNAL, "the request failed"), Vec::new()),
    };
    reply.frame(&frame).await?;
    if !bytes.is_empty() {
        reply.bytes(&bytes).await?;
    }
    reply.finish();
    Ok(())
}

fn pack(ledger: &Ledger, plan: utter_ledger::sync::PackPlan) -> Result<(Message, Vec<u8>), String> {
    if plan.commits.is_empty() {
        return Ok((
            error(
                code::BAD_REQUEST,
                "nothing to send: every block asked for is unknown here or already had",
            ),
            Vec::new(),
        ));
    }
    let mut bytes = Vec::with_capacity(plan.bytes as usize / 2);
    ledger
        .write_pack(&plan.objects, &mut bytes)
        .map_err(|e| e.to_string())?;
    let objects = u32::try_from(plan.objects.len()).map_err(|_| "too many objects".to_string())?;
    Ok((
        Message::Pack {
            commits: plan.commits,
            objects,
            more: plan.more,
        },
        bytes,
    ))
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
            for step in ids.chunks(CHUNK_STEP) {
                let step = step.to_vec();
                let store = source.store.clone();
                let frames = tokio::task::spawn_blocking(move || {
                    step.iter()
                        .map(|h| match store.chunk_stored(&ChunkId(*h)) {
                            Ok(c) => Message::Chunk {
                                id: *h,
                                len: c.len,
                                stored: c.stored,
                            },
                            Err(_) => Message::Missing {
                                what: What::Chunk,
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

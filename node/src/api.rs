//! The node's local HTTP/JSON API (127.0.0.1 only by default): the routes
//! and types of `utter_client::api`, version 1. Every error, including a
//! malformed query, an oversized body, an unknown route and a wrong
//! method, is an `ErrorBody` with a code and a message.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utter_client::api::{
    BLOCK_HEADER, Blocks, BlocksQuery, Dapps, ErrorBody, ErrorCode, ImageInfo, MAX_BLOCKS,
    MAX_BODY, MAX_IMAGE, MAX_LINES, MAX_WAIT, Nonce, NonceQuery, StateQuery, Status, Submitted,
    TxState, WaitQuery,
};
use utter_ledger::{MAIN, TxId};

use crate::pool::Admitted;
use crate::query::{self, QueryError};
use crate::run::{Shared, lock, seq_key};

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError(ErrorCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(ErrorCode::BadRequest, message.into())
    }

    fn internal(message: impl std::fmt::Display) -> Self {
        Self(ErrorCode::Internal, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            code: self.0,
            message: self.1,
        };
        (status, Json(body)).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(format!("the query is malformed: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(format!("the path is malformed: {}", r.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self(
                ErrorCode::TooLarge,
                format!(
                    "the body is larger than {MAX_BODY} bytes; send fewer transactions per request"
                ),
            )
        } else {
            Self::bad_request(format!("the body cannot be read: {}", r.body_text()))
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotOnMain(id) => Self(
                ErrorCode::NotOnMain,
                format!(
                    "block {id} is not on main (main moved to another line); follow again from the head"
                ),
            ),
            e => Self::internal(e),
        }
    }
}

type Node = State<Arc<Shared>>;
type Answer<T> = Result<Json<T>, ApiError>;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/nonce", get(nonce))
        .route("/v1/txs", post(submit))
        .route("/v1/txs/{id}", get(tx_status))
        .route("/v1/state/{dapp}/{*path}", get(state))
        .route("/v1/doors/rules", get(rules))
        .route("/v1/blocks", get(blocks))
        .route("/v1/dapps", get(dapps))
        .route("/v1/images", post(upload_image))
        .route("/v1/images/{digest}", get(image))
        .fallback(|| async {
            ApiError(
                ErrorCode::NotFound,
                "no such endpoint: see `utter node run --help` for the API".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError(
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that method: see `utter node run --help` for the API"
                    .into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn status(State(shared): Node) -> Json<Status> {
    let head = lock(&shared.head).clone();
    let mempool = lock(&shared.pool).len();
    Json(Status {
        chain: shared.chain.clone(),
        node: shared.node_key.clone(),
        height: head.height,
        head: head.id,
        mempool,
        blocks_made: head.blocks_made,
        consensus: lock(&shared.consensus).clone(),
    })
}

async fn nonce(State(shared): Node, q: Result<Query<NonceQuery>, QueryRejection>) -> Answer<Nonce> {
    let Query(q) = q?;
    let next = lock(&shared.pool).next_nonce(&q.signer);
    Ok(Json(Nonce {
        signer: q.signer,
        next,
    }))
}

async fn submit(State(shared): Node, body: Result<Bytes, BytesRejection>) -> Answer<Submitted> {
    let body = body?;
    let txs = tokio::task::spawn_blocking(move || admit(&shared, &body))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(Submitted { txs }))
}

/// Checks and admits the body's lines; answers only after the admitted
/// ones are synced to disk.
fn admit(shared: &Shared, body: &[u8]) -> Result<Vec<TxState>, ApiError> {
    let body = std::str::from_utf8(body).map_err(|_| {
        ApiError::bad_request(
            "the body is not UTF-8: send signed transaction lines (`utter tx sign`)",
        )
    })?;
    let lines: Vec<String> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(ApiError::bad_request(
            "the body holds no transactions: send signed transaction lines (`utter tx sign`)",
        ));
    }
    if lines.len() > MAX_LINES {
        return Err(ApiError(
            ErrorCode::TooLarge,
            format!(
                "{} transactions in one request; send at most {MAX_LINES}",
                lines.len()
            ),
        ));
    }
    submit_lines(shared, lines)
}

/// Admits this node's own signed lines (the API's, the lease agent's),
/// synced before it returns, and announces the new ones to the network.
pub(crate) fn submit_lines(shared: &Shared, lines: Vec<String>) -> Result<Vec<TxState>, ApiError> {
    let (states, new) = admit_lines(shared, lines, true)?;
    if !new.is_empty()
        && let Some(inputs) = shared.inputs.get()
    {
        let _ = inputs.send(crate::gossip::Input::Admitted {
            from: None,
            ids: new,
        });
    }
    Ok(states)
}

/// Admits signed lines (from the API or a peer): each checked, refused
/// with its reason or waiting in the pool, and with `durable` the new ones
/// synced to disk before this returns (a peer's are not: the node they
/// were submitted to keeps them, and sends them again when a channel
/// reopens). Returns each line's state and the ids newly admitted.
pub(crate) fn admit_lines(
    shared: &Shared,
    lines: Vec<String>,
    durable: bool,
) -> Result<(Vec<TxState>, Vec<TxId>), ApiError> {
    if !shared.producing.load(std::sync::atomic::Ordering::SeqCst) {
        let states = lines
            .iter()
            .map(|line| TxState::Refused {
                id: TxId::of_line(line),
                error: "this node follows the chain and makes no blocks (its key is not the chain's only validator); submit to a validator's node".into(),
            })
            .collect();
        return Ok((states, Vec::new()));
    }
    let ids: Vec<TxId> = lines.iter().map(TxId::of_line).collect();
    // A line pending or committed here needs no second signature check (a
    // peer sends its whole pool again each time a channel reopens).
    let known: Vec<bool> = {
        let pool = lock(&shared.pool);
        let recent = lock(&shared.recent);
        ids.iter()
            .map(|id| pool.get(id).is_some() || recent.get(id).is_some())
            .collect()
    };
    let mut checked = if known.contains(&true) {
        let fresh: Vec<String> = lines
            .iter()
            .zip(&known)
            .filter(|(_, k)| !**k)
            .map(|(l, _)| l.clone())
            .collect();
        utter_executor::verify_all(&fresh, &shared.chain)
    } else {
        utter_executor::verify_all(&lines, &shared.chain)
    }
    .into_iter();
    let _one_at_a_time = lock(&shared.admit);
    let mut out = Vec::with_capacity(lines.len());
    let mut new: Vec<(u64, TxId, String)> = Vec::new();
    {
        let mut pool = lock(&shared.pool);
        let recent = lock(&shared.recent);
        for ((line, id), known) in lines.into_iter().zip(ids).zip(known) {
            let checked = if known {
                None
            } else {
                Some(checked.next().expect("one verdict per line not known"))
            };
            if let Some(c) = recent.get(&id) {
                out.push(TxState::Committed {
                    id,
                    block: c.block,
                    height: c.height,
                    result: c.result.clone(),
                });
                continue;
            }
            if pool.get(&id).is_some() {
                out.push(TxState::Pending { id });
                continue;
            }
            // Known a moment ago, gone since (dropped from the pool): checked now.
            let checked = checked.unwrap_or_else(|| {
                utter_ledger::tx::verify_line(line.as_bytes(), &shared.chain, |_, _| false)
            });
            let stx = match checked {
                Ok(stx) => stx,
                Err(e) => {
                    out.push(TxState::Refused {
                        id,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            if let Some(image) = query::deploy_image(&stx.tx)
                && shared.images.get(image).is_err()
            {
                let error = utter_ledger::tx::TxError::ImageMissing {
                    image: image.to_string(),
                };
                out.push(TxState::Refused {
                    id,
                    error: error.to_string(),
                });
                continue;
            }
            match pool.admit(id, line.clone(), stx) {
                Ok(Admitted::New(seq)) => {
                    new.push((seq, id, line));
                    out.push(TxState::Pending { id });
                }
                Ok(Admitted::Duplicate) => out.push(TxState::Pending { id }),
                Err(why) => out.push(TxState::Refused {
                    id,
                    error: why.to_string(),
                }),
            }
        }
    }
    if new.is_empty() {
        return Ok((out, Vec::new()));
    }
    let seqs: Vec<u64> = new.iter().map(|(seq, ..)| *seq).collect();
    if !durable {
        lock(&shared.pool).made_durable(&seqs);
        return Ok((out, new.into_iter().map(|(_, id, _)| id).collect()));
    }
    let keys: Vec<Vec<u8>> = new.iter().map(|(seq, ..)| seq_key(*seq)).collect();
    let puts: Vec<(&[u8], &[u8])> = keys
        .iter()
        .zip(&new)
        .map(|(k, (_, _, line))| (k.as_slice(), line.as_bytes()))
        .collect();
    match shared.store.write_records(&puts, &[]) {
        Ok(()) => {
            lock(&shared.pool).made_durable(&seqs);
            shared.wake.notify_all();
            Ok((out, new.into_iter().map(|(_, id, _)| id).collect()))
        }
        Err(e) => {
            lock(&shared.pool).forget(&seqs);
            Err(ApiError(
                ErrorCode::Unavailable,
                format!("cannot write the mempool ({e}); nothing was admitted, send again"),
            ))
        }
    }
}

/// Where a transaction is. Both locks are held at once (in admission's
/// order): the producer adds results before it takes transactions out of
/// the pool, so a transaction is always found in one of them.
fn lookup(shared: &Shared, id: &TxId) -> Option<TxState> {
    let pool = lock(&shared.pool);
    let recent = lock(&shared.recent);
    if let Some(c) = recent.get(id) {
        return Some(TxState::Committed {
            id: *id,
            block: c.block,
            height: c.height,
            result: c.result.clone(),
        });
    }
    pool.get(id).map(|_| TxState::Pending { id: *id })
}

/// Waits until `done` holds or `wait` passes, waking on every block.
async fn until<T>(
    shared: &Shared,
    wait: u64,
    mut done: impl FnMut() -> Result<Option<T>, ApiError>,
    last: impl FnOnce() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_WAIT));
    let mut blocks = shared.blocks.subscribe();
    loop {
        blocks.borrow_and_update();
        if let Some(v) = done()? {
            return Ok(v);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || tokio::time::timeout(left, blocks.changed()).await.is_err() {
            return last();
        }
    }
}

async fn tx_status(
    State(shared): Node,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Answer<TxState> {
    let Path(id) = id?;
    let Query(q) = q?;
    let id: TxId = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    let unknown = || {
        ApiError(
            ErrorCode::UnknownTx,
            format!(
                "no transaction {id} is waiting or in the last blocks this node made; \
                 `utter log` and `utter show` list older blocks"
            ),
        )
    };
    let state = until(
        &shared,
        q.wait,
        || match lookup(&shared, &id) {
            // On a chain of several validators it may have gone to
            // another node: wait for the block that brings it.
            None if shared.inputs.get().is_some() => Ok(None),
            None => Err(unknown()),
            Some(s @ TxState::Committed { .. }) => Ok(Some(s)),
            Some(_) => Ok(None),
        },
        || lookup(&shared, &id).ok_or_else(unknown),
    )
    .await?;
    Ok(Json(state))
}

/// Reads the ledger on a blocking thread, through the API's handle.
async fn read<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&utter_ledger::Ledger) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&lock(&shared.ledger)))
        .await
        .map_err(ApiError::internal)?
}

async fn state(
    State(shared): Node,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((dapp, path)) = path?;
    let Query(q) = q?;
    let at = q.at.unwrap_or_else(|| MAIN.to_string());
    let (block, bytes) = read(&shared, move |ledger| {
        let id = ledger
            .resolve(&at)
            .map_err(|e| ApiError(ErrorCode::UnknownBlock, format!("{e}")))?;
        let block = ledger.block(id).map_err(ApiError::internal)?;
        let bytes = ledger
            .read_value(&block, &query::state_path(&dapp, &path))
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError(
                    ErrorCode::NoFile,
                    format!("no file {path} in dapp {dapp}'s state at {}", id.short()),
                )
            })?;
        Ok((id, bytes))
    })
    .await?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&block.to_string()) {
        headers.insert(BLOCK_HEADER, v);
    }
    Ok(response)
}

async fn rules(State(shared): Node) -> Answer<utter_client::api::RulesBundle> {
    let head = lock(&shared.head).id;
    let bundle = read(&shared, move |ledger| {
        let block = ledger.block(head).map_err(ApiError::internal)?;
        Ok(query::rules_bundle(ledger, &block)?)
    })
    .await?;
    Ok(Json(bundle))
}

async fn blocks(
    State(shared): Node,
    q: Result<Query<BlocksQuery>, QueryRejection>,
) -> Answer<Blocks> {
    let Query(q) = q?;
    let max = q.max.unwrap_or(MAX_BLOCKS).clamp(1, MAX_BLOCKS);
    let after = q.after;
    let answer = |shared: Arc<Shared>| async move {
        let head = lock(&shared.head).id;
        let blocks = read(&shared, move |ledger| {
            Ok(query::blocks_after(ledger, head, after, max)?)
        })
        .await?;
        Ok::<_, ApiError>(Blocks { blocks, head })
    };
    // Long poll: wait for a block after `after` when there is none yet.
    let first = answer(shared.clone()).await?;
    if !first.blocks.is_empty() || q.wait == 0 {
        return Ok(Json(first));
    }
    let moved_from = first.head;
    let changed = until(
        &shared,
        q.wait,
        || Ok((lock(&shared.head).id != moved_from).then_some(())),
        || Ok(()),
    )
    .await;
    changed?;
    Ok(Json(answer(shared).await?))
}

async fn dapps(State(shared): Node) -> Answer<Dapps> {
    let head = lock(&shared.head).id;
    let dapps = read(&shared, move |ledger| {
        let block = ledger.block(head).map_err(ApiError::internal)?;
        Ok(query::dapps(ledger, &block)?)
    })
    .await?;
    Ok(Json(dapps))
}

fn image_info(image: &utter_images::Image, new_bytes: u64) -> ImageInfo {
    ImageInfo {
        digest: image.id.to_string(),
        size: image.layers.iter().map(|l| l.size).sum(),
        new_bytes,
    }
}

async fn image(
    State(shared): Node,
    digest: Result<Path<String>, PathRejection>,
) -> Answer<ImageInfo> {
    let Path(digest) = digest?;
    match shared.images.get(&digest) {
        Ok(image) if image.id.to_string() == digest => Ok(Json(image_info(&image, 0))),
        _ => Err(ApiError(
            ErrorCode::UnknownImage,
            format!("this node has no image {digest}: upload it with `utter dapp deploy`"),
        )),
    }
}

/// Streams the body to a file beside the image store, then imports it as
/// an OCI archive (every digest checked; a bad archive stores nothing).
async fn upload_image(State(shared): Node, body: axum::body::Body) -> Answer<ImageInfo> {
    use std::io::Write;

    use http_body_util::BodyExt;

    // Writes are short and local: done in place on this worker.
    let disk = |f: &mut dyn FnMut() -> std::io::Result<()>| {
        tokio::task::block_in_place(f).map_err(ApiError::internal)
    };
    let uploads = shared.images.dir().join("uploads");
    disk(&mut || std::fs::create_dir_all(&uploads))?;
    let file = tempfile::Builder::new()
        .suffix(".tar")
        .tempfile_in(&uploads)
        .map_err(ApiError::internal)?;
    let (out, path) = file.into_parts();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut body = body;
    let mut size: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > MAX_IMAGE {
            return Err(ApiError(
                ErrorCode::TooLarge,
                format!("the image archive is larger than {MAX_IMAGE} bytes"),
            ));
        }
        disk(&mut || out.write_all(&data))?;
    }
    disk(&mut || out.flush())?;
    drop(out);
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let source = utter_images::Source::OciArchive {
            file: path.to_path_buf(),
            tag: None,
        };
        let imported = shared
            .images
            .import(
                &source,
                &utter_images::ImportOptions::default(),
                &mut |_| {},
            )
            .map_err(|e| {
                ApiError(
                    ErrorCode::BadImage,
                    format!("the upload is not an image this node can import: {e}"),
                )
            });
        drop(path);
        let imported = imported?;
        Ok(Json(image_info(&imported.image, imported.new_bytes)))
    })
    .await
    .map_err(ApiError::internal)?
}

//! The node's local HTTP/JSON API (127.0.0.1 only by default):
//! ```text
//! GET  /v1/status               {"chain","node","height","head","mempool","blocks_made"}
//! GET  /v1/nonce?signer=KEY     {"signer","next"}: above the chain's and the mempool's
//! POST /v1/txs                  body: signed transaction lines (JSON lines)
//!                               → {"txs":[{"id","status":"pending"|"committed"|"refused","error"?}]}
//! GET  /v1/txs/ID[?wait=SECS]   {"id","status":"pending"|"committed"|"unknown","block"?,"height"?,"result"?}
//! ```
//! Errors are `{"error": "…"}` with a 4xx or 5xx status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pool::Admitted;
use super::{Shared, lock, seq_key};

/// The most lines one `POST /v1/txs` takes.
pub const MAX_LINES: usize = 10_000;
/// The largest body `POST /v1/txs` takes.
const MAX_BODY: usize = 32 << 20;
/// The longest `?wait=`.
const MAX_WAIT: u64 = 300;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type Node = State<Arc<Shared>>;

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/nonce", get(nonce))
        .route("/v1/txs", post(submit))
        .route("/v1/txs/{id}", get(tx_status))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint: see `utter node run --help` for the API".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn status(State(shared): Node) -> Json<Value> {
    let head = lock(&shared.head).clone();
    let mempool = lock(&shared.pool).len();
    Json(json!({
        "chain": shared.chain,
        "node": shared.node_key,
        "height": head.height,
        "head": head.id.to_string(),
        "mempool": mempool,
        "blocks_made": head.blocks_made,
    }))
}

#[derive(Deserialize)]
struct NonceQuery {
    signer: String,
}

async fn nonce(State(shared): Node, Query(q): Query<NonceQuery>) -> Json<Value> {
    let next = lock(&shared.pool).next_nonce(&q.signer);
    Json(json!({"signer": q.signer, "next": next}))
}

async fn submit(State(shared): Node, body: String) -> Result<Json<Value>, ApiError> {
    let txs = tokio::task::spawn_blocking(move || admit(&shared, &body))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!({"txs": txs})))
}

/// Checks and admits the body's lines; answers only after the admitted
/// ones are synced to disk.
fn admit(shared: &Shared, body: &str) -> Result<Vec<Value>, ApiError> {
    let lines: Vec<String> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the body holds no transactions: send signed transaction lines (`utter tx sign`)"
                .into(),
        ));
    }
    if lines.len() > MAX_LINES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} transactions in one request; send at most {MAX_LINES}",
                lines.len()
            ),
        ));
    }
    let checked = utter_consensus::executor::verify_all(&lines, &shared.chain);
    let _one_at_a_time = lock(&shared.admit);
    let mut out = Vec::with_capacity(lines.len());
    let mut new: Vec<(u64, String)> = Vec::new();
    {
        let mut pool = lock(&shared.pool);
        let recent = lock(&shared.recent);
        for (line, checked) in lines.into_iter().zip(checked) {
            let id = blake3::hash(line.as_bytes()).to_hex().to_string();
            if let Some(c) = recent.get(&id) {
                out.push(
                    json!({"id": id, "status": "committed", "block": c.block.to_string(),
                                "height": c.height}),
                );
                continue;
            }
            let stx = match checked {
                Ok(stx) => stx,
                Err(e) => {
                    out.push(json!({"id": id, "status": "refused", "error": e.to_string()}));
                    continue;
                }
            };
            match pool.admit(id.clone(), line.clone(), stx) {
                Ok(Admitted::New(seq)) => {
                    new.push((seq, line));
                    out.push(json!({"id": id, "status": "pending"}));
                }
                Ok(Admitted::Duplicate) => out.push(json!({"id": id, "status": "pending"})),
                Err(why) => {
                    out.push(json!({"id": id, "status": "refused", "error": why.to_string()}));
                }
            }
        }
    }
    if new.is_empty() {
        return Ok(out);
    }
    let keys: Vec<Vec<u8>> = new.iter().map(|(seq, _)| seq_key(*seq)).collect();
    let puts: Vec<(&[u8], &[u8])> = keys
        .iter()
        .zip(&new)
        .map(|(k, (_, line))| (k.as_slice(), line.as_bytes()))
        .collect();
    let seqs: Vec<u64> = new.iter().map(|(seq, _)| *seq).collect();
    match shared.store.write_records(&puts, &[]) {
        Ok(()) => {
            lock(&shared.pool).made_durable(&seqs);
            shared.wake.notify_all();
            Ok(out)
        }
        Err(e) => {
            lock(&shared.pool).forget(&seqs);
            Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write the mempool ({e}); nothing was admitted, send again"),
            ))
        }
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: u64,
}

fn lookup(shared: &Shared, id: &str) -> Option<Value> {
    if let Some(c) = lock(&shared.recent).get(id) {
        return Some(json!({
            "id": id,
            "status": "committed",
            "block": c.block.to_string(),
            "height": c.height,
            "result": c.result,
        }));
    }
    lock(&shared.pool)
        .get(id)
        .map(|_| json!({"id": id, "status": "pending"}))
}

async fn tx_status(
    State(shared): Node,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<Value>, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(MAX_WAIT));
    let mut blocks = shared.blocks.subscribe();
    loop {
        blocks.borrow_and_update();
        match lookup(&shared, &id) {
            None => {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no transaction {id} is waiting or in the last blocks this node made; \
                         `utter log` and `utter show` list older blocks"
                    ),
                ));
            }
            Some(v) if v["status"] == "committed" => return Ok(Json(v)),
            Some(v) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(Json(v));
                }
                if tokio::time::timeout(left, blocks.changed()).await.is_err() {
                    return Ok(Json(v));
                }
            }
        }
    }
}

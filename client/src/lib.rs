//! The light client of an utter node's local API, and the API's types.
//!
//! - [`api`]: every request and answer of the node API (v1), shared with
//!   the server so the two cannot drift.
//! - [`Client`]: a blocking client: status, next nonce, submit signed
//!   lines, wait for a transaction, read a state file, read the doors'
//!   rules bundle, and follow main block by block ([`Client::follow`]).
//! - [`sign_requests`](utter_formats::tx::sign_requests) signs on the
//!   client, with `utter-formats` only.
//!
//! Light on purpose: a door controller on a Raspberry Pi links it. It
//! links no RocksDB, no git library, no container runtime and no terminal
//! UI (a test checks its dependency tree); a caller that wants a progress
//! bar gets callbacks.

pub mod api;

use std::io::Read;
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use api::{
    BLOCK_HEADER, BlockInfo, Blocks, Dapps, ErrorBody, ErrorCode, ImageInfo, MAX_LINES, MAX_WAIT,
    Nonce, RulesBundle, Status, Submitted, TxState,
};
pub use utter_formats::tx::{Request, sign_requests};
use utter_formats::{BlockId, TxId};

/// Where a node's API listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7447";

/// The most bytes of one answer this client reads (a state file may be
/// large; anything beyond is refused, not buffered).
const MAX_ANSWER: u64 = 256 << 20;

/// What went wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error(
        "no node answers at {base} ({source}): start one with `utter node run`, or pass --node URL"
    )]
    Unreachable {
        /// The node's address.
        base: String,
        /// Why the connection failed.
        source: Box<ureq::Error>,
    },
    /// The node answered with an error.
    #[error("the node refused {what}: {}", .body.message)]
    Api {
        /// What was asked.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The node's error.
        body: ErrorBody,
    },
    /// The node answered with something this client cannot read.
    #[error("the node at {base} answered {what} with something this client cannot read: {why}")]
    Protocol {
        /// The node's address.
        base: String,
        /// What was asked.
        what: &'static str,
        /// What was wrong with it.
        why: String,
    },
    /// A transaction was not committed in time.
    #[error(
        "transaction {id} was not committed within {} s; it still waits in the node's mempool (GET /v1/txs/{id} tells when it is in)",
        .waited.as_secs()
    )]
    NotCommitted {
        /// The transaction.
        id: TxId,
        /// How long the client waited.
        waited: Duration,
    },
    /// A rules bundle names a path outside its directory.
    #[error("the rules bundle names {0:?}, which is not a plain relative path; refusing it")]
    BadPath(String),
    /// Writing a rules bundle's files failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ClientError {
    /// The node's error code, when the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }
}

/// A state file read from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    /// The block it was read at.
    pub block: BlockId,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A blocking client of one node's API.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.base)
    }
}

/// The most lines sent in one request.
const BATCH: usize = 2_000;
const _: () = assert!(BATCH <= MAX_LINES);

impl Client {
    /// A client of the node at `url` (`http://HOST:PORT`; a bare
    /// `HOST:PORT` is taken as `http://`).
    pub fn new(url: &str) -> Self {
        let url = url.trim().trim_end_matches('/');
        let base = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(MAX_WAIT + 30)))
            .build()
            .into();
        Self { base, agent }
    }

    /// The node's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}/{path}", self.base, api::VERSION)
    }

    /// Sends a request; a success answer's response, else the node's error.
    fn send(
        &self,
        what: &'static str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let mut response = sent.map_err(|e| match e {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                ClientError::Unreachable {
                    base: self.base.clone(),
                    source: Box::new(e),
                }
            }
            e => ClientError::Protocol {
                base: self.base.clone(),
                what,
                why: e.to_string(),
            },
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: ErrorBody = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_json()
            .map_err(|e| ClientError::Protocol {
                base: self.base.clone(),
                what,
                why: format!("an error ({status}) without an error body: {e}"),
            })?;
        Err(ClientError::Api {
            what,
            status: status.as_u16(),
            body,
        })
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = self.send(what, sent)?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_json()
            .map_err(|e| ClientError::Protocol {
                base: self.base.clone(),
                what,
                why: e.to_string(),
            })
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Status, ClientError> {
        let sent = self.agent.get(self.url("status")).call();
        self.json("the status request", sent)
    }

    /// The nonce `signer`'s next transaction should use, counting the
    /// node's mempool.
    pub fn next_nonce(&self, signer: &str) -> Result<u64, ClientError> {
        let sent = self
            .agent
            .get(self.url("nonce"))
            .query("signer", signer)
            .call();
        let nonce: Nonce = self.json("the nonce request", sent)?;
        Ok(nonce.next)
    }

    /// Sends signed lines; one state per line, in order. Each state is the
    /// line's fate at once: `pending` (on disk in the mempool), `committed`
    /// (sent before), or `refused` with the reason.
    pub fn submit(&self, lines: &[String]) -> Result<Vec<TxState>, ClientError> {
        let mut out = Vec::with_capacity(lines.len());
        for batch in lines.chunks(BATCH) {
            let mut body = batch.join("\n");
            body.push('\n');
            let sent = self
                .agent
                .post(self.url("txs"))
                .content_type("application/x-ndjson")
                .send(body);
            let answer: Submitted = self.json("the transactions", sent)?;
            if answer.txs.len() != batch.len() {
                return Err(ClientError::Protocol {
                    base: self.base.clone(),
                    what: "the transactions",
                    why: format!(
                        "{} answers for {} transactions",
                        answer.txs.len(),
                        batch.len()
                    ),
                });
            }
            out.extend(answer.txs);
        }
        Ok(out)
    }

    /// `GET /v1/txs/ID?wait=SECS`: the transaction's state, once committed
    /// or when `wait` passes.
    pub fn wait(&self, id: TxId, wait: Duration) -> Result<TxState, ClientError> {
        let sent = self
            .agent
            .get(self.url(&format!("txs/{id}")))
            .query("wait", wait.as_secs().min(MAX_WAIT).to_string())
            .call();
        self.json("the transaction lookup", sent)
    }

    /// Waits until every id is committed, or `timeout` passes; one state
    /// per id, in order. `progress` hears how many are in so far.
    pub fn wait_all(
        &self,
        ids: &[TxId],
        timeout: Duration,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<TxState>, ClientError> {
        let started = Instant::now();
        let mut out = Vec::with_capacity(ids.len());
        for (done, id) in ids.iter().enumerate() {
            loop {
                let left = timeout.saturating_sub(started.elapsed());
                let state = self.wait(
                    *id,
                    left.clamp(Duration::from_secs(1), Duration::from_secs(60)),
                )?;
                if let TxState::Committed { .. } = state {
                    out.push(state);
                    break;
                }
                if started.elapsed() >= timeout {
                    return Err(ClientError::NotCommitted {
                        id: *id,
                        waited: started.elapsed(),
                    });
                }
            }
            progress(done + 1);
        }
        Ok(out)
    }

    /// Signs `requests` with `key` (nonces from the node, the node's chain,
    /// now), sends them, and returns each line with its state.
    pub fn sign_and_submit(
        &self,
        key: &utter_formats::Keypair,
        requests: Vec<Request>,
    ) -> Result<Vec<(String, TxState)>, SignAndSubmitError> {
        let status = self.status()?;
        let nonce = self.next_nonce(&key.public().to_openssh())?;
        let lines = sign_requests(key, &status.chain, nonce, utter_formats::now(), requests)?;
        let states = self.submit(&lines)?;
        Ok(lines.into_iter().zip(states).collect())
    }

    /// `GET /v1/images/DIGEST`: the image, if the node has it.
    pub fn image(&self, digest: &str) -> Result<Option<ImageInfo>, ClientError> {
        let sent = self.agent.get(self.url(&format!("images/{digest}"))).call();
        match self.json("the image lookup", sent) {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.code() == Some(ErrorCode::UnknownImage) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/images`: uploads an OCI archive (a tar of an OCI image
    /// layout, as `skopeo copy … oci-archive:` writes) for the node to
    /// import; what it stored.
    pub fn upload_image(&self, archive: &mut dyn Read) -> Result<ImageInfo, ClientError> {
        let sent = self
            .agent
            .post(self.url("images"))
            .content_type("application/x-tar")
            .send(ureq::SendBody::from_reader(archive));
        self.json("the image upload", sent)
    }

    /// `GET /v1/dapps`: the dapps deployed on main.
    pub fn dapps(&self) -> Result<Dapps, ClientError> {
        let sent = self.agent.get(self.url("dapps")).call();
        self.json("the dapp list", sent)
    }

    /// `GET /v1/state/DAPP/PATH`: a state file at main (or at `at`, a
    /// block id or branch); `None` when there is no such file.
    pub fn state(
        &self,
        dapp: &str,
        path: &str,
        at: Option<&str>,
    ) -> Result<Option<StateFile>, ClientError> {
        let what = "the state read";
        let mut request = self.agent.get(self.url(&format!("state/{dapp}/{path}")));
        if let Some(at) = at {
            request = request.query("at", at);
        }
        let mut response = match self.send(what, request.call()) {
            Err(e) if e.code() == Some(ErrorCode::NoFile) => return Ok(None),
            other => other?,
        };
        let protocol = |why: String| ClientError::Protocol {
            base: self.base.clone(),
            what,
            why,
        };
        let block = response
            .headers()
            .get(BLOCK_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| protocol(format!("no {BLOCK_HEADER} header")))?;
        let mut bytes = Vec::new();
        response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .reader()
            .read_to_end(&mut bytes)
            .map_err(|e| protocol(e.to_string()))?;
        Ok(Some(StateFile { block, bytes }))
    }

    /// `GET /v1/doors/rules`: the rules `doors::may_open` reads, as of
    /// main.
    pub fn rules(&self) -> Result<RulesBundle, ClientError> {
        let sent = self.agent.get(self.url("doors/rules")).call();
        self.json("the rules request", sent)
    }

    /// `GET /v1/blocks`: blocks of main after `after` (oldest first, at
    /// most `max`), waiting up to `wait` for one when there are none.
    pub fn blocks(
        &self,
        after: Option<BlockId>,
        wait: Duration,
        max: Option<usize>,
    ) -> Result<Blocks, ClientError> {
        let mut request = self
            .agent
            .get(self.url("blocks"))
            .query("wait", wait.as_secs().min(MAX_WAIT).to_string());
        if let Some(after) = after {
            request = request.query("after", after.to_string());
        }
        if let Some(max) = max {
            request = request.query("max", max.to_string());
        }
        self.json("the blocks request", request.call())
    }

    /// Follows main: yields every block committed after `after` (or, with
    /// `None`, the head and then every block after it), in order, waiting
    /// for new ones by long-polling. When main moves to a line that does
    /// not hold the last block yielded (a node that restarted on another
    /// chain), the next item is an error with code
    /// [`ErrorCode::NotOnMain`]; follow again from `None`.
    pub fn follow(&self, after: Option<BlockId>) -> Follow<'_> {
        Follow {
            client: self,
            after,
            started: after.is_some(),
            queue: std::collections::VecDeque::new(),
            poll: Duration::from_secs(30),
        }
    }
}

/// Why signing and submitting failed.
#[derive(Debug, thiserror::Error)]
pub enum SignAndSubmitError {
    /// Talking to the node.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Signing.
    #[error(transparent)]
    Sign(#[from] utter_formats::tx::SignError),
}

/// Main's blocks as they come: see [`Client::follow`].
#[derive(Debug)]
pub struct Follow<'c> {
    client: &'c Client,
    after: Option<BlockId>,
    started: bool,
    queue: std::collections::VecDeque<BlockInfo>,
    poll: Duration,
}

impl Follow<'_> {
    /// How long each long poll waits before asking again (default 30 s).
    pub fn poll(mut self, wait: Duration) -> Self {
        self.poll = wait.min(Duration::from_secs(MAX_WAIT));
        self
    }

    /// The last block yielded.
    pub fn last(&self) -> Option<BlockId> {
        self.after
    }
}

impl Iterator for Follow<'_> {
    type Item = Result<BlockInfo, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(block) = self.queue.pop_front() {
                self.after = Some(block.id);
                return Some(Ok(block));
            }
            // The first call without a starting block yields the head.
            let wait = if self.started {
                self.poll
            } else {
                Duration::ZERO
            };
            match self.client.blocks(self.after, wait, None) {
                Ok(answer) => {
                    self.started = true;
                    self.queue.extend(answer.blocks);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl RulesBundle {
    /// Writes the bundle's files under `dir` (one directory per dapp), the
    /// layout `doors::Rules::at(dir)` reads. Every name is checked first: a
    /// bundle that names a path outside `dir` writes nothing.
    pub fn write_to(&self, dir: &Path) -> Result<(), ClientError> {
        for name in self.files.keys() {
            let path = Path::new(name);
            let plain =
                !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain || name.contains('\\') {
                return Err(ClientError::BadPath(name.clone()));
            }
        }
        for (name, text) in &self.files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ClientError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            std::fs::write(&path, text).map_err(|source| ClientError::Write { path, source })?;
        }
        Ok(())
    }
}

//! `utter tx submit` and the client of a node's local API.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::chain::{self, load_key};
use crate::node::{DEFAULT_LISTEN, addr_file};
use crate::progress::Progress;

/// A client of a node's local API.
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

/// The most lines sent in one request.
const BATCH: usize = 2_000;

impl Client {
    /// The node given by `--node`/`UTTER_NODE`, else the one running on
    /// this data dir (`node.addr`), else the default address.
    pub fn new(data_dir: &Path, node: Option<&str>) -> Self {
        let base = match node {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => std::fs::read_to_string(addr_file(data_dir))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| format!("http://{DEFAULT_LISTEN}")),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(330)))
            .build()
            .into();
        Self { base, agent }
    }

    fn answer(
        &self,
        what: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut response = sent.map_err(|e| match e {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                anyhow::anyhow!(
                    "no node answers at {} ({e}): start one with `utter node run`, or pass --node URL",
                    self.base
                )
            }
            e => anyhow::anyhow!("{what} at {} failed: {e}", self.base),
        })?;
        let status = response.status();
        let body: Value = response.body_mut().read_json().with_context(|| {
            format!(
                "the node at {} answered {what} with something not JSON",
                self.base
            )
        })?;
        if !status.is_success() {
            let why = body["error"].as_str().unwrap_or("no reason given");
            bail!("the node refused {what} ({status}): {why}");
        }
        Ok(body)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Value> {
        let sent = self.agent.get(format!("{}/v1/status", self.base)).call();
        self.answer("the status request", sent)
    }

    /// The next nonce of `signer`, counting the node's mempool.
    pub fn next_nonce(&self, signer: &str) -> Result<u64> {
        let sent = self
            .agent
            .get(format!("{}/v1/nonce", self.base))
            .query("signer", signer)
            .call();
        self.answer("the nonce request", sent)?["next"]
            .as_u64()
            .context("the node's nonce answer has no number")
    }

    /// Sends signed lines; one answer per line, in order.
    pub fn submit(&self, lines: &[String]) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(lines.len());
        for batch in lines.chunks(BATCH) {
            let mut body = batch.join("\n");
            body.push('\n');
            let sent = self
                .agent
                .post(format!("{}/v1/txs", self.base))
                .content_type("application/x-ndjson")
                .send(body);
            let answer = self.answer("the transactions", sent)?;
            match answer["txs"].as_array() {
                Some(txs) if txs.len() == batch.len() => out.extend(txs.iter().cloned()),
                _ => bail!("the node's answer does not have one entry per transaction"),
            }
        }
        Ok(out)
    }

    /// `GET /v1/txs/ID?wait=SECS`.
    pub fn wait(&self, id: &str, secs: u64) -> Result<Value> {
        let sent = self
            .agent
            .get(format!("{}/v1/txs/{id}", self.base))
            .query("wait", secs.to_string())
            .call();
        self.answer("the transaction lookup", sent)
    }

    /// Waits until every id is committed (or `timeout` passes); one answer
    /// per id.
    pub fn wait_all(&self, ids: &[String], timeout: Duration, quiet: bool) -> Result<Vec<Value>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut progress = Progress::items("waiting for blocks", ids.len() as u64, quiet);
        let mut out = Vec::with_capacity(ids.len());
        for (done, id) in ids.iter().enumerate() {
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let v = self.wait(id, left.as_secs().clamp(1, 60))?;
                if v["status"] == "committed" {
                    out.push(v);
                    break;
                }
                if left.is_zero() {
                    bail!(
                        "transaction {id} was not committed within {} s; it still waits in the node's mempool (GET /v1/txs/{id} on the node's API tells when it is in)",
                        timeout.as_secs()
                    );
                }
            }
            progress.set(done as u64 + 1);
        }
        progress.finish();
        Ok(out)
    }
}

/// `utter tx submit`
#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    request: chain::RequestArgs,
    /// Wait until every transaction is in a block and print its result
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, seconds
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    timeout: u64,
    /// The node's API [default: the node running on this data dir, else
    /// http://127.0.0.1:7447]
    #[arg(long, env = "UTTER_NODE", value_name = "URL")]
    node: Option<String>,
    /// Print JSON: one object per transaction
    #[arg(long)]
    json: bool,
}

pub fn submit(data_dir: &Path, args: SubmitArgs) -> Result<ExitCode> {
    let key = load_key(data_dir, args.request.key.as_deref())?;
    let requests = args.request.requests()?;
    if requests.is_empty() {
        bail!("no transactions to send");
    }
    let client = Client::new(data_dir, args.node.as_deref());
    let status = client.status()?;
    let chain_id = status["chain"]
        .as_str()
        .context("the node's status names no chain")?;
    let signer = key.public().to_openssh();
    let nonce = client.next_nonce(&signer)?;
    let lines = chain::sign_requests(&key, chain_id, nonce, chain::now(), requests)?;
    let answers = client.submit(&lines)?;
    let mut failed = answers.iter().filter(|a| a["status"] == "refused").count();
    let results = if args.wait {
        let ids: Vec<String> = answers
            .iter()
            .filter(|a| a["status"] != "refused")
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
        let done = client.wait_all(&ids, Duration::from_secs(args.timeout), args.json)?;
        let mut by_id: std::collections::HashMap<String, Value> = done
            .into_iter()
            .filter_map(|v| v["id"].as_str().map(str::to_string).map(|id| (id, v)))
            .collect();
        answers
            .iter()
            .map(|a| {
                a["id"]
                    .as_str()
                    .and_then(|id| by_id.remove(id))
                    .unwrap_or_else(|| a.clone())
            })
            .collect::<Vec<_>>()
    } else {
        answers
    };
    failed += results
        .iter()
        .filter(|r| r["result"]["status"] == "rejected")
        .count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!(results))?);
    } else {
        for (i, r) in results.iter().enumerate() {
            println!("{:>4}  {}", i + 1, describe(r));
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One line for a submitted transaction's state.
pub fn describe(r: &Value) -> String {
    let short = r["id"].as_str().map_or("?", |id| &id[..id.len().min(12)]);
    match r["status"].as_str() {
        Some("committed") => {
            let res = &r["result"];
            let block = r["block"].as_str().unwrap_or("?");
            let at = format!(
                "block {} (height {})",
                &block[..block.len().min(12)],
                r["height"]
            );
            match res["status"].as_str() {
                Some("accepted") => match res.get("output") {
                    Some(out) if !out.is_null() => format!("accepted  {out}  {at}"),
                    _ => format!("accepted  {at}"),
                },
                Some("rejected") => format!(
                    "rejected  {}  {at}",
                    res["reason"].as_str().unwrap_or("no reason given")
                ),
                _ => format!("committed {at}"),
            }
        }
        Some("pending") => format!("pending   {short}"),
        Some("refused") => format!(
            "refused   {}",
            r["error"].as_str().unwrap_or("no reason given")
        ),
        _ => format!("unknown   {short}"),
    }
}

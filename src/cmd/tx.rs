//! `utter tx sign` (signed lines for `block propose`) and `utter tx submit`
//! (signed and sent to a running node through the client API).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use utter_client::api::TxState;
use utter_formats::tx::{Request, sign_requests};
use utter_formats::{Status, TxId};
use utter_ledger::MAIN;
use utter_node::Home;

use crate::ui::Progress;

/// `utter tx …`
#[derive(Subcommand)]
pub enum Command {
    /// Sign transactions and print their lines (one canonical JSON line
    /// each), ready for `utter block propose --txs`
    Sign(SignArgs),
    /// Sign transactions and send them to the running node (`utter node
    /// run`); with --wait, print each one's result once committed (exit 1
    /// if any was rejected or refused)
    Submit(SubmitArgs),
}

/// What to sign, and with which key (`tx sign` and `tx submit`).
#[derive(Args)]
pub struct RequestArgs {
    /// The dapp that handles it (with ACTION; or use --file)
    #[arg(required_unless_present = "file")]
    dapp: Option<String>,
    /// What the dapp should do
    #[arg(required_unless_present = "file")]
    action: Option<String>,
    /// The action's arguments, JSON
    #[arg(long, default_value = "{}", value_name = "JSON")]
    args: String,
    /// Many transactions: one JSON object per line, {"dapp","action","args"};
    /// they get consecutive nonces
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dapp", "action"])]
    file: Option<PathBuf>,
    /// The signer's OpenSSH ed25519 private key [default: the node key]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

impl RequestArgs {
    /// The requests of `--file` (one `{"dapp","action","args"}` per line),
    /// or the one given as DAPP ACTION --args.
    fn requests(&self) -> Result<Vec<Request>> {
        let Some(file) = &self.file else {
            let args = serde_json::from_str(&self.args)
                .with_context(|| format!("--args `{}` is not JSON", self.args))?;
            return Ok(vec![Request {
                dapp: self.dapp.clone().unwrap_or_default(),
                action: self.action.clone().unwrap_or_default(),
                args,
            }]);
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let mut requests = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let request: Request = serde_json::from_str(line).with_context(|| {
                format!(
                    "line {} of {} is not a request: each line is {{\"dapp\",\"action\",\"args\"}}",
                    n + 1,
                    file.display()
                )
            })?;
            requests.push(request);
        }
        Ok(requests)
    }
}

/// `utter tx sign`
#[derive(Args)]
pub struct SignArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// The (first) nonce [default: one above the highest the key used on main]
    #[arg(long, value_name = "N")]
    nonce: Option<u64>,
    /// The chain [default: the data directory's chain]
    #[arg(long, value_name = "NAME")]
    chain: Option<String>,
    /// The transaction time, Unix seconds [default: now]
    #[arg(long, value_name = "SECS")]
    time: Option<u64>,
}

/// `utter tx submit`
#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    request: RequestArgs,
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

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Sign(args) => sign(home, args),
        Command::Submit(args) => submit(home, args),
    }
}

fn sign(home: &Home, args: SignArgs) -> Result<ExitCode> {
    let key = home.load_key(args.request.key.as_deref())?;
    let signer = key.public().to_openssh();
    let requests = args.request.requests()?;
    let (chain, first_nonce) = match (&args.chain, args.nonce) {
        (Some(chain), Some(nonce)) => (chain.clone(), nonce),
        _ => {
            let l = &home.open_read_only()?.ledger;
            let chain = args.chain.clone().unwrap_or_else(|| l.chain().to_string());
            let nonce = match args.nonce {
                Some(n) => n,
                None => utter_executor::next_nonce(l, l.resolve(MAIN)?, &signer)?,
            };
            (chain, nonce)
        }
    };
    let time = args.time.unwrap_or_else(utter_formats::now);
    let mut out = std::io::stdout().lock();
    for line in sign_requests(&key, &chain, first_nonce, time, requests)? {
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn submit(home: &Home, args: SubmitArgs) -> Result<ExitCode> {
    let key = home.load_key(args.request.key.as_deref())?;
    let requests = args.request.requests()?;
    if requests.is_empty() {
        bail!("no transactions to send");
    }
    let client = home.client(args.node.as_deref());
    let sent = client.sign_and_submit(&key, requests)?;
    let answers: Vec<TxState> = sent.into_iter().map(|(_, state)| state).collect();
    let states = if args.wait {
        let ids: Vec<TxId> = answers
            .iter()
            .filter(|a| !matches!(a, TxState::Refused { .. }))
            .map(TxState::id)
            .collect();
        let mut progress = Progress::items("waiting for blocks", ids.len() as u64, args.json);
        let done = client.wait_all(&ids, Duration::from_secs(args.timeout), |n| {
            progress.set(n as u64)
        })?;
        progress.finish();
        let mut by_id: std::collections::HashMap<TxId, TxState> =
            done.into_iter().map(|s| (s.id(), s)).collect();
        answers
            .into_iter()
            .map(|a| by_id.remove(&a.id()).unwrap_or(a))
            .collect()
    } else {
        answers
    };
    let failed = states
        .iter()
        .filter(|s| match s {
            TxState::Refused { .. } => true,
            TxState::Committed { result, .. } => result.status == Status::Rejected,
            TxState::Pending { .. } => false,
        })
        .count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&states)?);
    } else {
        for (i, s) in states.iter().enumerate() {
            println!("{:>4}  {}", i + 1, describe(s));
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One line for a submitted transaction's state.
fn describe(state: &TxState) -> String {
    match state {
        TxState::Committed {
            block,
            height,
            result,
            ..
        } => {
            let at = format!("block {} (height {height})", block.short());
            match (&result.status, &result.output) {
                (Status::Accepted, Some(out)) => format!("accepted  {out}  {at}"),
                (Status::Accepted, None) => format!("accepted  {at}"),
                (Status::Rejected, _) => format!(
                    "rejected  {}  {at}",
                    result.reason.as_deref().unwrap_or("no reason given")
                ),
            }
        }
        TxState::Pending { id } => format!("pending   {}", id.short()),
        TxState::Refused { error, .. } => format!("refused   {error}"),
    }
}

//! `utter node run`: one node of a chain, until SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use utter_client::DEFAULT_ADDR;
use utter_node::p2p::P2pSettings;
use utter_node::{Home, Settings};

/// `utter node …`
#[derive(Subcommand)]
pub enum Command {
    /// Run the node: the local API, the mempool and the block producer,
    /// until SIGTERM or ctrl-c
    ///
    /// The API (JSON, errors as {"code","message"}): GET /v1/status; GET
    /// /v1/nonce?signer=KEY; POST /v1/txs with signed transaction lines
    /// (answered once they are on disk); GET /v1/txs/ID?wait=SECS; GET
    /// /v1/state/DAPP/PATH?at=BLOCK; GET /v1/doors/rules; GET
    /// /v1/blocks?after=ID&wait=SECS (main's blocks, oldest first). A node
    /// killed outright restarts with every accepted transaction committed
    /// or still waiting. With --p2p it serves peers over QUIC (TLS 1.3, its
    /// node key as the raw public key) and pulls from them every --sync-ms.
    Run(RunArgs),
}

/// `utter node run`
#[derive(Args)]
pub struct RunArgs {
    /// Address of the local API (port 0: any free port; the address is
    /// written to <data-dir>/node.addr)
    #[arg(long, default_value = DEFAULT_ADDR, value_name = "ADDR")]
    listen: SocketAddr,
    /// Cut a block this often when transactions wait (milliseconds)
    #[arg(long, default_value_t = 100, value_name = "MS")]
    block_ms: u64,
    /// Cut a block as soon as this many transactions wait; also the most
    /// one block takes
    #[arg(long, default_value_t = 1000, value_name = "N")]
    block_txs: usize,
    /// The most transactions the mempool holds; more are refused
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    mempool_max: usize,
    /// Print a line per block
    #[arg(long, short)]
    verbose: bool,
    /// Serve the ledger to peers over QUIC on HOST:PORT (UDP; port 0: any
    /// free port) and sync from them; how to clone this node is written to
    /// <data-dir>/node.p2p
    #[arg(long, value_name = "HOST:PORT")]
    p2p: Option<SocketAddr>,
    /// A peer to sync from (repeatable; remembered in the data dir)
    #[arg(long = "peer", value_name = "HOST:PORT", requires = "p2p")]
    peers: Vec<SocketAddr>,
    /// Let in only keys the chain names (validators, devices) and those
    /// `utter peers allow` added
    #[arg(long, requires = "p2p")]
    private: bool,
    /// On a chain of several validators: how long a round waits for a
    /// commit before the next validator leads (milliseconds; doubles per
    /// round that commits nothing)
    #[arg(long, default_value_t = 1500, value_name = "MS", requires = "p2p")]
    round_ms: u64,
    /// How often to pull from each peer (milliseconds)
    #[arg(long, default_value_t = 2000, value_name = "MS", requires = "p2p")]
    sync_ms: u64,
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    let Command::Run(args) = cmd;
    utter_node::run(
        home,
        Settings {
            listen: args.listen,
            block_every: Duration::from_millis(args.block_ms),
            block_txs: args.block_txs,
            mempool_max: args.mempool_max,
            verbose: args.verbose,
            round_timeout: Duration::from_millis(args.round_ms.max(50)),
            p2p: args.p2p.map(|listen| P2pSettings {
                listen,
                peers: args.peers.clone(),
                private: args.private,
                every: Duration::from_millis(args.sync_ms.max(100)),
            }),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

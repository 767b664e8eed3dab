//! `utter`: the command-line interface over the node library
//! (`utter-node`) and the client (`utter-client`).
//!
//! Thin: `main` parses arguments and hands each command group to its
//! module in `cmd/`, which calls the libraries and prints. Errors are
//! `anyhow` with context naming the file or id and, where the user can do
//! something, what to do.

mod blocks;
mod builtin;
mod cmd;
mod container;
mod early;
mod files;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use utter_node::Home;

/// utter: a content-chunked distributed ledger whose smart contracts are
/// Linux containers.
#[derive(Parser)]
#[command(name = "utter", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Data directory [default: $XDG_DATA_HOME/utter, or ~/.local/share/utter]
    #[arg(long, global = true, env = "UTTER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a fresh container of an image (no network, read-only
    /// image, memory/pids/CPU limits); stdio attached, exit code passed on
    Run(cmd::run::RunArgs),
    /// Dapps: make, test and run them, and deploy them on a chain
    #[command(subcommand)]
    Dapp(cmd::dapp::DappCommand),
    /// Store, read, check and collect content-defined chunks
    #[command(subcommand)]
    Chunks(cmd::chunks::Command),
    /// Import, build, export, unpack and list OCI images
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// Create or show the node's OpenSSH ed25519 key
    #[command(subcommand)]
    Key(cmd::key::Command),
    /// Create a data directory: node key, chunk store and a ledger with a
    /// signed genesis block
    Init(cmd::init::InitArgs),
    /// List blocks newest first, each with its signer and whether it is valid
    Log(cmd::log::LogArgs),
    /// Show one block: header, signature status, changed files, transactions
    Show(cmd::log::ShowArgs),
    /// Check every block on every branch: signatures, signers, parents,
    /// heights, layout, transactions (exit 1 naming the first bad block)
    Verify(cmd::verify::VerifyArgs),
    /// Sign transactions
    #[command(subcommand)]
    Tx(cmd::tx::Command),
    /// Make blocks from signed transactions
    #[command(subcommand)]
    Block(cmd::block::Command),
    /// The chain's configuration: show it, and change its validators with
    /// the approval of a quorum of them
    #[command(subcommand)]
    Chain(cmd::chain::Command),
    /// Read dapp state files
    #[command(subcommand)]
    State(cmd::state::Command),
    /// The makerspace's members
    #[command(subcommand)]
    Members(cmd::members::Command),
    /// The makerspace's doors and their access log
    #[command(subcommand)]
    Doors(cmd::doors::Command),
    /// The demo: a makerspace's day on a new chain, run on a devnet of four
    /// validators and two followers (in --data-dir, default ./demo-data,
    /// replaced on the next run)
    Demo(cmd::demo::DemoArgs),
    /// A chain of several validators (and followers) on this machine, each
    /// node a real process on loopback: up, status, down
    #[command(subcommand)]
    Devnet(cmd::devnet::Command),
    /// The makerspace's credits: balances and a ledger-cli export
    #[command(subcommand)]
    Accounting(cmd::accounting::Command),
    /// Run a node: the local API, the mempool and the block producer,
    /// and with --p2p the network
    #[command(subcommand)]
    Node(cmd::node::Command),
    /// Make a new node from a peer: the whole ledger, its certificates,
    /// images and chunks, verified (the peer's key pinned)
    Clone(cmd::net::CloneArgs),
    /// Pull once from peers (when no node runs on this data dir)
    Sync(cmd::net::SyncArgs),
    /// The peers this node knows, and the keys it lets in
    Peers(cmd::net::PeersArgs),
    /// Compute for hire: offer container capacity, open and pay leases,
    /// follow them
    #[command(subcommand)]
    Lease(cmd::lease::Command),
    /// (internal) Run dapp containers for another utter process over
    /// stdin/stdout
    #[command(hide = true)]
    SandboxHelper,
    /// (internal) One operation on a lease's container for the provider
    /// agent: a JSON request on stdin, the answer on stdout
    #[command(hide = true)]
    SandboxLease,
    /// (internal) A command in a lease's container on this process's
    /// stdio, for an exec session
    #[command(hide = true)]
    SandboxExec {
        /// The lease
        lease: String,
        /// The command
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// glibc's malloc makes up to 8 arenas per core, one for each thread that
/// finds the others busy, and each keeps what was freed in it: a node's
/// tokio, RocksDB and pull threads ended up holding 8 of them, 15-25 MiB of
/// a follower's resident memory (`./x bench doorbot`), which on a 1 GiB
/// board is what matters. Two are enough for 2-4 cores. An explicit
/// `MALLOC_ARENA_MAX` is left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fewer_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets an allocator parameter; it is called first
        // thing in main, before any other thread exists, and takes no
        // pointers.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fewer_malloc_arenas() {}

fn main() -> ExitCode {
    fewer_malloc_arenas();
    let cli = Cli::parse();
    if let Command::Demo(args) = cli.command {
        let dir = cli.data_dir.unwrap_or_else(|| PathBuf::from("demo-data"));
        return finish(cmd::demo::run(&dir, args));
    }
    let home = Home::resolve(cli.data_dir);
    let result = match cli.command {
        Command::Run(args) => exit_at_once(cmd::run::run(&home, args)),
        Command::Dapp(c) => exit_at_once(cmd::dapp::run(&home, c)),
        Command::Chunks(c) => cmd::chunks::run(&home, c),
        Command::Image(c) => cmd::image::run(&home, c),
        Command::Key(c) => cmd::key::run(&home, c),
        Command::Init(args) => cmd::init::run(&home, args),
        Command::Log(args) => cmd::log::log(&home, args),
        Command::Show(args) => cmd::log::show(&home, args),
        Command::Verify(args) => cmd::verify::run(&home, args),
        Command::Tx(c) => cmd::tx::run(&home, c),
        Command::Block(c) => cmd::block::run(&home, c),
        Command::Chain(c) => cmd::chain::run(&home, c),
        Command::Demo(_) => unreachable!("handled above"),
        Command::Devnet(c) => cmd::devnet::run(c),
        Command::Accounting(c) => cmd::accounting::run(&home, c),
        Command::Node(c) => cmd::node::run(&home, c),
        Command::Clone(args) => cmd::net::clone(&home, args),
        Command::Sync(args) => cmd::net::sync(&home, args),
        Command::Peers(args) => cmd::net::peers(&home, args),
        Command::SandboxHelper => home
            .serve_helper()
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Lease(c) => cmd::lease::run(&home, c),
        Command::SandboxLease => cmd::lease::serve(&home),
        Command::SandboxExec { lease, argv } => cmd::lease::sandbox(&home, &lease, &argv),
        Command::State(c) => cmd::state::run(&home, c),
        Command::Members(c) => cmd::members::run(&home, c),
        Command::Doors(c) => cmd::doors::run(&home, c),
    };
    finish(result)
}

/// Ends `utter run` and `utter dapp run`: prints the error as [`finish`]
/// does, flushes stdout and leaves with `_exit(2)`, without the exit
/// handlers. They are C++ static destructors, RocksDB's option tables, for
/// a store these commands never opened (`container::image_rootfs` re-executes
/// after unpacking rather than start a container from a process that
/// opened it), and they took about 0.4 ms of every one-off container run.
fn exit_at_once(result: anyhow::Result<u8>) -> ! {
    use std::io::Write;
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    #[allow(unsafe_code)]
    // SAFETY: `_exit` ends the process and touches no memory of it; stdout
    // is flushed above and stderr is unbuffered.
    unsafe {
        libc::_exit(i32::from(code))
    }
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

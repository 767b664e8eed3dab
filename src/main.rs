//! `utter`: the command-line interface and (later) the node daemon.
//!
//! Thin: parses arguments, opens the data directory, calls the library
//! crates and prints. Errors are `anyhow` with context naming the file or id
//! and, where the user can do something, what to do.

mod accounting;
mod chain;
mod chunks;
mod data_dir;
mod demo;
mod early;
mod governance;
mod image;
mod key;
mod ledger;
mod node;
mod progress;
mod query;
mod run;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Run(run::RunArgs),
    /// Run dapps outside a chain (one protocol invocation)
    #[command(subcommand)]
    Dapp(run::DappCommand),
    /// Store, read, check and collect content-defined chunks
    #[command(subcommand)]
    Chunks(chunks::Command),
    /// Import, build, export, unpack and list OCI images
    #[command(subcommand)]
    Image(image::Command),
    /// Create or show the node's OpenSSH ed25519 key
    #[command(subcommand)]
    Key(key::Command),
    /// Create a data directory: node key, chunk store and a ledger with a
    /// signed genesis block
    Init(ledger::InitArgs),
    /// List blocks newest first, each with its signer and whether it is valid
    Log(ledger::LogArgs),
    /// Show one block: header, signature status, changed files, transactions
    Show(ledger::ShowArgs),
    /// Check every block on every branch: signatures, signers, parents,
    /// heights, layout, transactions (exit 1 naming the first bad block)
    Verify(ledger::VerifyArgs),
    /// Sign transactions
    #[command(subcommand)]
    Tx(chain::TxCommand),
    /// Make blocks from signed transactions
    #[command(subcommand)]
    Block(chain::BlockCommand),
    /// The chain's configuration: show it, and change its validators with
    /// the approval of a quorum of them
    #[command(subcommand)]
    Chain(governance::Command),
    /// Read dapp state files
    #[command(subcommand)]
    State(query::StateCommand),
    /// The makerspace's members
    #[command(subcommand)]
    Members(query::MembersCommand),
    /// The makerspace's doors and their access log
    #[command(subcommand)]
    Doors(query::DoorsCommand),
    /// The demo: a makerspace on a new chain run through a real node (in
    /// --data-dir, default ./demo-data, replaced on the next run)
    Demo(demo::DemoArgs),
    /// The makerspace's credits: balances and a ledger-cli export
    #[command(subcommand)]
    Accounting(accounting::AccountingCommand),
    /// Run a node: the local API, the mempool and the block producer
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// (internal) Run dapp containers for another utter process over
    /// stdin/stdout
    #[command(hide = true)]
    SandboxHelper,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Demo(args) = cli.command {
        let dir = cli.data_dir.unwrap_or_else(|| PathBuf::from("demo-data"));
        return finish(demo::run(&dir, args));
    }
    let data_dir = data_dir::resolve(cli.data_dir);
    let result = match cli.command {
        Command::Run(args) => exit_at_once(run::run(&data_dir, args)),
        Command::Dapp(cmd) => exit_at_once(run::dapp(&data_dir, cmd)),
        Command::Chunks(cmd) => chunks::run(&data_dir, cmd),
        Command::Image(cmd) => image::run(&data_dir, cmd),
        Command::Key(cmd) => key::run(&data_dir, cmd),
        Command::Init(args) => ledger::init(&data_dir, args),
        Command::Log(args) => ledger::log(&data_dir, args),
        Command::Show(args) => ledger::show(&data_dir, args),
        Command::Verify(args) => ledger::verify(&data_dir, args),
        Command::Tx(cmd) => chain::tx(&data_dir, cmd),
        Command::Block(cmd) => chain::block(&data_dir, cmd),
        Command::Chain(cmd) => governance::run(&data_dir, cmd),
        Command::Demo(_) => unreachable!("handled above"),
        Command::Accounting(cmd) => accounting::run(&data_dir, cmd),
        Command::Node(cmd) => node::run(&data_dir, cmd),
        Command::SandboxHelper => chain::sandbox_helper(&data_dir),
        Command::State(cmd) => query::state(&data_dir, cmd),
        Command::Members(cmd) => query::members_cmd(&data_dir, cmd),
        Command::Doors(cmd) => query::doors_cmd(&data_dir, cmd),
    };
    finish(result)
}

/// Ends `utter run` and `utter dapp run`: prints the error as [`finish`]
/// does, flushes stdout and leaves with `_exit(2)`, without the exit
/// handlers. They are C++ static destructors, RocksDB's option tables, for
/// a store these commands never opened (`run::image_rootfs` re-executes
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

//! `utter chain …`: show `chain.toml`, approve a change of it, and make
//! the `chain set` transaction from a quorum of approvals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use utter_ledger::governance::{self, Approval, CHAIN_DAPP, SET_ACTION, SetArgs};
use utter_ledger::layout::{ChainConfig, Member};
use utter_ledger::{Ledger, MAIN};

use utter_node::Home;

use crate::ui::write_out;

/// `utter chain …`
#[derive(Subcommand)]
pub enum Command {
    /// Show main's chain.toml: epoch, validators and quorum (and, while a
    /// change is under way, the outgoing validators)
    Show(ShowArgs),
    /// Approve changing main's chain.toml to NEW (run by a validator, with
    /// its key); prints the approval to hand to `utter chain request`
    Approve(ApproveArgs),
    /// Make the `chain set` transaction from NEW and a quorum of approvals;
    /// prints one request line for `utter tx submit --file` (or `tx sign`)
    Request(RequestArgs),
}

/// `utter chain show`
#[derive(Args)]
pub struct ShowArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `utter chain approve`
#[derive(Args)]
pub struct ApproveArgs {
    /// The desired chain.toml: chain, quorum, validators, devices,
    /// test_dapps (utter sets epoch and outgoing)
    new: PathBuf,
    /// The validator's OpenSSH ed25519 private key [default: the node key]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Write the approval here instead of stdout
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print JSON (the approval, the block and epoch it is over, and the
    /// chain.toml it leads to)
    #[arg(long)]
    json: bool,
}

/// `utter chain request`
#[derive(Args)]
pub struct RequestArgs {
    /// The desired chain.toml the approvals were made for
    new: PathBuf,
    /// An approval file from `utter chain approve` (repeat: a quorum of the
    /// validators)
    #[arg(long = "approval", value_name = "FILE", required = true)]
    approvals: Vec<PathBuf>,
    /// Write the request line here instead of stdout
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Show(args) => show(home, args),
        Command::Approve(args) => approve(home, args),
        Command::Request(args) => request(home, args),
    }
}

fn names(members: &[Member]) -> String {
    let v: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    v.join(", ")
}

/// One line on who certifies blocks under `config`.
fn describe(config: &ChainConfig) -> String {
    let mut s = format!(
        "epoch {}: validators {} (quorum {} of {})",
        config.epoch,
        names(&config.validators),
        config.quorum,
        config.validators.len()
    );
    if !config.outgoing.is_empty() {
        s.push_str(&format!(
            ", with outgoing validators {} (quorum {} of {}) until a second change completes it",
            names(&config.outgoing),
            config.outgoing_quorum,
            config.outgoing.len()
        ));
    }
    s
}

fn main_config(ledger: &Ledger) -> Result<(utter_ledger::BlockId, ChainConfig)> {
    let main = ledger.resolve(MAIN)?;
    let config = ledger.chain_config(&ledger.block(main)?)?;
    Ok((main, config))
}

fn show(home: &Home, args: ShowArgs) -> Result<ExitCode> {
    let opened = home.open_read_only()?;
    let (main, config) = main_config(&opened.ledger)?;
    if args.json {
        let mut v = serde_json::to_value(&config)?;
        v["at"] = json!(main.to_string());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "# chain.toml at main ({}): {}",
            main.short(),
            describe(&config)
        );
        print!("{}", config.to_toml());
    }
    Ok(ExitCode::SUCCESS)
}

fn read_desired(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}: pass the desired chain.toml (start from `utter chain show`)",
            path.display()
        )
    })
}

fn approve(home: &Home, args: ApproveArgs) -> Result<ExitCode> {
    let key = home.load_key(args.key.as_deref())?;
    let opened = home.open_read_only()?;
    let (main, current) = main_config(&opened.ledger)?;
    let desired = read_desired(&args.new)?;
    let next = governance::next_config(&current, &desired)?;
    let me = key.public();
    let Some(member) = current
        .validators
        .iter()
        .find(|m| utter_ledger::key::Signer::parse(&m.key).as_ref() == Some(&me))
    else {
        bail!(
            "the key {} is not a validator in chain.toml epoch {}; only its validators ({}) approve changes",
            me.fingerprint(),
            current.epoch,
            names(&current.validators)
        );
    };
    let approval = Approval::sign(&key, &current, main, &next)?;
    let text = approval.encode();
    if args.json {
        let v = json!({
            "approval": text,
            "by": member.name,
            "at": main.to_string(),
            "epoch": current.epoch,
            "next": next.to_toml(),
        });
        write_out(args.output.as_deref(), &serde_json::to_string_pretty(&v)?)?;
    } else {
        write_out(args.output.as_deref(), &text)?;
    }
    eprintln!(
        "{} approves, over main {} ({}), the change to {}",
        member.name,
        main.short(),
        describe(&current),
        describe(&next)
    );
    if !next.outgoing.is_empty() {
        eprintln!(
            "once that is committed, approve the same chain.toml again to complete the change"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn request(home: &Home, args: RequestArgs) -> Result<ExitCode> {
    let desired = read_desired(&args.new)?;
    let mut approvals = Vec::new();
    for path in &args.approvals {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read approval {}", path.display()))?;
        let approval = Approval::parse(&text)
            .with_context(|| format!("{} is not an approval", path.display()))?;
        approvals.push((path, approval));
    }
    let (first_path, first) = &approvals[0];
    for (path, a) in &approvals[1..] {
        if a.at != first.at || a.epoch != first.epoch {
            bail!(
                "{} was given at block {} (epoch {}), but {} at block {} (epoch {}): every approval must be over the same block",
                path.display(),
                a.at.short(),
                a.epoch,
                first_path.display(),
                first.at.short(),
                first.epoch
            );
        }
    }
    // Check here what the executor will check, so a refusal names its
    // reason before anything is sent.
    let opened = home.open_read_only()?;
    let then = opened
        .ledger
        .block(first.at)
        .with_context(|| format!("the approvals were given at block {}", first.at))?;
    let current = opened.ledger.chain_config(&then)?;
    let signatures: Vec<String> = approvals.iter().map(|(_, a)| a.signature.clone()).collect();
    let (next, who) = governance::check_approvals(&current, first.at, &desired, &signatures)?;
    let line = json!({
        "dapp": CHAIN_DAPP,
        "action": SET_ACTION,
        "args": SetArgs {
            config: desired,
            at: first.at.to_string(),
            approvals: signatures,
        },
    });
    write_out(args.output.as_deref(), &format!("{line}\n"))?;
    eprintln!(
        "approved by {} of {} validators ({}): changes {} to {}",
        who.len(),
        current.validators.len(),
        who.join(", "),
        describe(&current),
        describe(&next)
    );
    Ok(ExitCode::SUCCESS)
}

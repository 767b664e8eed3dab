//! `utter init`: a data directory with a new chain (node key, chunk
//! store, the built-in dapps, a signed genesis block).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use utter_ledger::key::Signer;
use utter_ledger::layout::Member;
use utter_node::Home;
use utter_node::init::{InitOptions, init};

use crate::builtin::{BUILTIN, BUILTIN_TEST_DAPP};

/// `utter init`
#[derive(Args)]
pub struct InitArgs {
    /// The chain's name (also in every block and transaction)
    #[arg(long, default_value = "local", value_name = "NAME")]
    chain: String,
    /// Use this OpenSSH ed25519 private key (e.g. ~/.ssh/id_ed25519) as the
    /// node key; it is copied to keys/node. Default: keys/node, made if
    /// missing
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// This node's name in chain.toml
    #[arg(long, default_value = "node", value_name = "NAME")]
    name: String,
    /// Install a dapp in the genesis block: NAME=IMAGE (a tag or digest in
    /// this data directory's image store); repeatable; replaces a built-in
    /// dapp of the same name
    #[arg(long = "dapp", value_name = "NAME=IMAGE")]
    dapps: Vec<String>,
    /// Leave out the built-in makerspace dapps (membership, certifications,
    /// doors)
    #[arg(long)]
    no_builtin: bool,
    /// Another validator: NAME=KEY, KEY an OpenSSH public key
    /// (`ssh-ed25519 AAAA…`, as `utter key show` prints it); repeatable.
    /// The quorum is ⌊2n/3⌋+1 of the n validators, this node included
    #[arg(long = "validator", value_name = "NAME=KEY")]
    validators: Vec<String>,
    /// A device (a door controller's node): NAME=KEY; repeatable. Its key
    /// signs blocks on its own branch (`refs/heads/NAME`) while it is cut
    /// off, and the validators merge them into main
    #[arg(long = "device", value_name = "NAME=KEY")]
    devices: Vec<String>,
    /// Print JSON: chain, genesis block, public key
    #[arg(long)]
    json: bool,
}

/// `NAME=KEY` pairs of `flag`, each KEY an OpenSSH ed25519 public key.
fn members(flag: &str, pairs: &[String]) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    for v in pairs {
        let Some((name, key)) = v.split_once('=') else {
            bail!("{flag} {v:?} is not NAME=KEY (KEY as `utter key show` prints it)");
        };
        let Some(signer) = Signer::parse(key.trim()) else {
            bail!(
                "{flag} {name}: {key:?} is not an OpenSSH ed25519 public key (ssh-ed25519 AAAA…)"
            );
        };
        out.push(Member {
            name: name.to_string(),
            key: signer.to_openssh(),
        });
    }
    Ok(out)
}

pub fn run(home: &Home, args: InitArgs) -> Result<ExitCode> {
    let validators = members("--validator", &args.validators)?;
    let devices = members("--device", &args.devices)?;
    let mut dapps = Vec::new();
    for pair in &args.dapps {
        let Some((name, reference)) = pair.split_once('=') else {
            bail!("--dapp {pair:?} is not NAME=IMAGE (e.g. --dapp counter=counter:latest)");
        };
        dapps.push((name.to_string(), reference.to_string()));
    }
    let options = InitOptions {
        chain: args.chain.clone(),
        name: args.name.clone(),
        key: args.key.clone(),
        validators,
        devices,
        builtin: if args.no_builtin { &[] } else { &BUILTIN },
        test_dapp: Some(BUILTIN_TEST_DAPP),
        dapps,
        time: i64::try_from(utter_formats::now()).unwrap_or(i64::MAX),
    };
    let created = init(home, options)
        .with_context(|| format!("cannot create a chain in {}", home.root().display()))?;
    let key_path = home.key_path();
    if args.json {
        println!(
            "{}",
            json!({
                "chain": args.chain,
                "genesis": created.genesis.to_string(),
                "public_key": created.key.public().to_string(),
                "ledger": created.ledger_dir,
                "dapps": created.dapps,
            })
        );
    } else {
        println!("created chain {} in {}", args.chain, home.root().display());
        println!("genesis   {}", created.genesis);
        println!(
            "node key  {} ({})",
            created.key.public(),
            key_path.display()
        );
        if !created.dapps.is_empty() {
            println!("dapps     {}", created.dapps.join(", "));
        }
        println!("next: `utter log`, `utter verify`");
    }
    Ok(ExitCode::SUCCESS)
}

//! `utter key …`: the node's OpenSSH ed25519 key in `<data-dir>/keys/`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::json;
use utter_ledger::key::Keypair;
use utter_node::{Home, KEY_PRINCIPAL};

#[derive(Subcommand)]
pub enum Command {
    /// Create the node's ed25519 key (keys/node, keys/node.pub)
    ///
    /// Refuses to replace an existing key: blocks and transactions signed
    /// with it name it. Remove keys/node yourself if you really mean to.
    Gen {
        /// Print JSON: public key and file paths
        #[arg(long)]
        json: bool,
    },
    /// Print the node's public key
    Show {
        /// Print a line for an OpenSSH allowed-signers file, for
        /// `git verify-commit` (gpg.ssh.allowedSignersFile) and `ssh-keygen -Y verify`
        #[arg(long, conflicts_with_all = ["json", "fingerprint"])]
        allowed_signers: bool,
        /// Print the key's SHA256 fingerprint, as `ssh-keygen -l` does
        /// (what `utter clone` pins)
        #[arg(long, conflicts_with = "json")]
        fingerprint: bool,
        /// Print JSON: public key and file path
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    let path = home.key_path();
    match cmd {
        Command::Gen { json } => {
            if path.exists() {
                bail!(
                    "{} already exists; utter never replaces a node key (remove it yourself to make a new one)",
                    path.display()
                );
            }
            let key = Home::generate_key(&path)?;
            let pub_path = path.with_extension("pub");
            if json {
                println!(
                    "{}",
                    json!({"public_key": key.public().to_string(), "private_key_file": path, "public_key_file": pub_path})
                );
            } else {
                println!("{}", key.public());
                eprintln!("wrote {} and {}", path.display(), pub_path.display());
            }
        }
        Command::Show {
            allowed_signers,
            fingerprint,
            json,
        } => {
            if !path.exists() {
                bail!(
                    "no node key at {}: create one with `utter key gen` (or pass the right --data-dir)",
                    path.display()
                );
            }
            let key = Keypair::load(&path)?;
            if fingerprint {
                println!("{}", key.public().fingerprint());
            } else if allowed_signers {
                println!(
                    "{}",
                    key.public()
                        .allowed_signers_line(KEY_PRINCIPAL, &["git", "utter-tx"])
                );
            } else if json {
                println!(
                    "{}",
                    json!({"public_key": key.public().to_string(), "fingerprint": key.public().fingerprint(), "private_key_file": path})
                );
            } else {
                println!("{}", key.public());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

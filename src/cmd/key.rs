//! `utter key …`: the node's OpenSSH ed25519 key in `<data-dir>/keys/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use utter_ledger::key::Keypair;

/// The principal written in allowed-signers lines for the node key.
const PRINCIPAL: &str = "utter-node";

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
        #[arg(long, conflicts_with = "json")]
        allowed_signers: bool,
        /// Print JSON: public key and file path
        #[arg(long)]
        json: bool,
    },
}

/// Where the node key lives.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("node")
}

/// Writes `key` to `path` (0600) and its public half beside it.
pub fn save(path: &Path, key: &Keypair) -> Result<()> {
    let dir = path.parent().expect("keys/node has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    key.save(path)?;
    let public = format!("{} {PRINCIPAL}\n", key.public());
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, public)
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    Ok(())
}

/// Makes a new node key at `path`.
pub fn generate(path: &Path) -> Result<Keypair> {
    let key = Keypair::generate(PRINCIPAL)?;
    save(path, &key)?;
    Ok(key)
}

pub fn run(data_dir: &Path, cmd: Command) -> Result<ExitCode> {
    let path = key_path(data_dir);
    match cmd {
        Command::Gen { json } => {
            if path.exists() {
                bail!(
                    "{} already exists; utter never replaces a node key (remove it yourself to make a new one)",
                    path.display()
                );
            }
            let key = generate(&path)?;
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
            json,
        } => {
            if !path.exists() {
                bail!(
                    "no node key at {}: create one with `utter key gen` (or pass the right --data-dir)",
                    path.display()
                );
            }
            let key = Keypair::load(&path)?;
            if allowed_signers {
                println!(
                    "{}",
                    key.public()
                        .allowed_signers_line(PRINCIPAL, &["git", "utter-tx"])
                );
            } else if json {
                println!(
                    "{}",
                    json!({"public_key": key.public().to_string(), "private_key_file": path})
                );
            } else {
                println!("{}", key.public());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

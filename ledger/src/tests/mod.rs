//! Unit tests with real tools as oracles: `ssh-keygen` for keys and
//! transactions, `git` for blocks.

mod blocks;
mod certs;
mod hostile;

use std::sync::Arc;

use serde_json::json;
use tempfile::TempDir;
use utter_chunkstore::{OpenOptions, Store};

use crate::key::Keypair;
use crate::layout::{ChainConfig, DappConfig, Member};
use crate::tx::{SignedTx, Tx};
use crate::{Block, BlockId, Changes, Draft, Ledger, TxResult};

pub(crate) const CHAIN: &str = "makerspace";

/// Runs `cmd` with `input` on its stdin; returns its output.
pub(crate) fn with_stdin(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
pub(crate) const T0: i64 = 1_790_000_000;

/// A data directory with a chunkstore and a ledger: a validator key and a
/// door controller's device key, both listed in the genesis `chain.toml`.
pub(crate) struct Fixture {
    pub dir: TempDir,
    pub ledger: Ledger,
    pub key: Keypair,
    pub device: Keypair,
    pub genesis: Block,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let chunks = Arc::new(
            Store::open(
                dir.path().join("db"),
                &OpenOptions {
                    create: true,
                    ..OpenOptions::default()
                },
            )
            .unwrap(),
        );
        let key = Keypair::generate("validator").unwrap();
        let device = Keypair::generate("door").unwrap();
        let mut config = ChainConfig::single(CHAIN, "node-1", &key.public());
        config.devices.push(Member {
            name: "front-door".into(),
            key: device.public().to_openssh(),
        });
        let (mut ledger, genesis) = Ledger::create(
            &dir.path().join("ledger.git"),
            chunks,
            &config,
            Changes::new(),
            &key,
            T0,
        )
        .unwrap();
        // Tests make hundreds of blocks; the sync path has its own test.
        ledger.set_durable(false);
        Self {
            dir,
            ledger,
            key,
            device,
            genesis,
        }
    }

    pub fn repo_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ledger.git")
    }

    pub fn tx(&self, signer: &Keypair, nonce: u64) -> SignedTx {
        Tx {
            v: 1,
            chain: CHAIN.into(),
            dapp: "doors".into(),
            action: "access".into(),
            args: json!({"door": "front", "granted": true}),
            signer: signer.public().to_openssh(),
            nonce,
            time: 1_790_000_000 + nonce,
        }
        .sign(signer)
        .unwrap()
    }

    /// Writes a block on `parents` signed by `key`; every tx accepted.
    pub fn block_by(
        &self,
        key: &Keypair,
        parents: &[BlockId],
        changes: Changes,
        txs: Vec<SignedTx>,
    ) -> Block {
        let results = txs.iter().map(|t| TxResult::accepted(t.id())).collect();
        let txs = txs.iter().map(SignedTx::to_line).collect();
        let height = parents
            .iter()
            .map(|p| self.ledger.height(*p).unwrap() + 1)
            .max()
            .unwrap_or(0);
        self.ledger
            .write_block(
                &Draft {
                    parents: parents.to_vec(),
                    changes,
                    txs,
                    results,
                    text: format!("block {height}"),
                    time: T0 + height as i64,
                    round: None,
                },
                key,
            )
            .unwrap()
    }

    pub fn block(&self, parents: &[BlockId], changes: Changes, txs: Vec<SignedTx>) -> Block {
        self.block_by(&self.key, parents, changes, txs)
    }

    /// Moves `main` to `id` whatever it was.
    pub fn force_main(&self, id: BlockId) {
        let old = self.ledger.branch("main").unwrap().unwrap();
        self.ledger
            .set_ref("refs/heads/main", id, Some(old))
            .unwrap();
    }
}

pub(crate) fn dapp_config() -> DappConfig {
    DappConfig {
        image: format!("sha256:{}", "ab".repeat(32)),
        owners: Vec::new(),
        permissions: Default::default(),
        deployed_at: None,
        upgraded_at: None,
    }
}

pub(crate) fn git(repo: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    cmd.arg("--git-dir")
        .arg(repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo);
    cmd
}

//! A data directory and everything in it. [`Home`] is the only place that
//! opens the chunk store, the ledger, the image store and the node key, and
//! that starts the container helper.
//!
//! ```text
//! <data-dir>/            --data-dir, UTTER_DATA_DIR, default $XDG_DATA_HOME/utter
//!   db/                  one RocksDB (created whole, then renamed into place)
//!   ledger.git/          bare git repository of blocks (`utter init`)
//!   checkouts/<dapp>/    the executor's copy of each dapp's state
//!   keys/node, node.pub  the node's OpenSSH ed25519 key
//!   images/              image index, documents, rootfs cache
//!   node.addr            where a running node's API listens
//!   vote-tip             a validator's last vote (proof of merge)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use utter_chunkstore::{Chunking, OpenError, OpenOptions, Store};
use utter_images::Images;
use utter_ledger::key::{KeyError, Keypair};
use utter_ledger::{Ledger, LedgerError};
use utter_runtime::{Helper, HelperError, Runtime};

use crate::NodeImages;

/// The principal written in allowed-signers lines for the node key.
pub const KEY_PRINCIPAL: &str = "utter-node";

/// What a command needed that the data directory does not have yet; says
/// what makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A chain (`utter init`).
    Ledger,
    /// Stored chunks (`utter chunks put`).
    Chunks,
    /// Images (`utter image import`).
    Images,
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Need::Ledger => "create one with `utter init` (or pass the right --data-dir)",
            Need::Chunks => "store something first (`utter chunks put FILE`) or pass --data-dir",
            Need::Images => {
                "import or build an image first (`utter image import SOURCE`) or pass --data-dir"
            }
        })
    }
}

/// Why a part of the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Nothing there yet.
    #[error("no {} in {}: {need}", if *.need == Need::Ledger { "ledger" } else { "utter data" }, .dir.display())]
    Missing {
        /// The data directory.
        dir: PathBuf,
        /// What would make it.
        need: Need,
    },
    /// The chunk store.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The image store.
    #[error(transparent)]
    Images(#[from] utter_images::Error),
    /// The key.
    #[error("cannot load the key {}: make one with `utter key gen` or pass --key FILE", .path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
    /// Writing a key.
    #[error("cannot write the key {}", .path.display())]
    WriteKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The container helper.
    #[error("cannot start the container helper: {0}")]
    Helper(#[from] HelperError),
    /// The container runtime.
    #[error("cannot set up the container runtime: {0}")]
    Runtime(#[source] utter_runtime::RunError),
    /// The helper's side: its pipe to the parent, or its set-up.
    #[error("the container helper failed: {0}")]
    HelperIo(#[source] std::io::Error),
    /// Finding the executable that serves `sandbox-helper`.
    #[error("cannot find the utter executable: {0}")]
    Exe(#[source] std::io::Error),
}

/// The chunk store and the ledger of a data directory, opened together
/// (RocksDB allows one opener per directory, and the ledger keeps its
/// large values in the store).
pub struct Opened {
    /// The chunk store.
    pub store: Store,
    /// The ledger.
    pub ledger: Ledger,
}

/// A data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
    /// The executable whose `sandbox-helper` command creates containers.
    helper_exe: Option<PathBuf>,
}

impl Home {
    /// `dir` made absolute: libcontainer briefly changes the process's
    /// working directory while it creates a container.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            root: std::path::absolute(&dir).unwrap_or(dir),
            helper_exe: None,
        }
    }

    /// `--data-dir`, else `$XDG_DATA_HOME/utter`, else
    /// `~/.local/share/utter`, else `./utter-data` when there is no home.
    pub fn resolve(flag: Option<PathBuf>) -> Self {
        let env_dir = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = flag
            .or_else(|| env_dir("XDG_DATA_HOME").map(|x| x.join("utter")))
            .or_else(|| env_dir("HOME").map(|h| h.join(".local/share/utter")))
            .unwrap_or_else(|| PathBuf::from("utter-data"));
        Self::new(dir)
    }

    /// Runs containers through `exe sandbox-helper` rather than the
    /// current executable's (tests and benchmarks, whose executable is not
    /// `utter`).
    pub fn with_helper(mut self, exe: impl Into<PathBuf>) -> Self {
        self.helper_exe = Some(exe.into());
        self
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The RocksDB directory.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    /// The ledger's bare git repository.
    pub fn ledger_dir(&self) -> PathBuf {
        self.root.join("ledger.git")
    }

    /// The executor's state checkouts (rebuilt whenever an executor starts).
    pub fn checkouts(&self) -> PathBuf {
        self.root.join("checkouts")
    }

    /// The image store (index, documents, rootfs cache).
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The node key.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("keys").join("node")
    }

    /// The keys a `--private` node lets in besides the chain's (`utter
    /// peers allow`), one OpenSSH public key per line.
    pub fn allowed_peers(&self) -> PathBuf {
        self.root.join("allowed_peers")
    }

    /// A validator's vote tip: the last block it voted for, synced before
    /// the vote left.
    pub fn vote_tip_file(&self) -> PathBuf {
        self.root.join("vote-tip")
    }

    /// Where a running node writes its API address (`http://…`).
    pub fn addr_file(&self) -> PathBuf {
        self.root.join("node.addr")
    }

    /// Where a running node with `--p2p` writes how to clone it:
    /// `SHA256:FINGERPRINT@HOST:PORT`.
    pub fn p2p_file(&self) -> PathBuf {
        self.root.join("node.p2p")
    }

    /// The API address of the node running on this data directory, if one
    /// wrote it.
    pub fn node_url(&self) -> Option<String> {
        std::fs::read_to_string(self.addr_file())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// A client of the node at `url` (`--node`, `UTTER_NODE`), else of the
    /// node running on this data directory, else of the default address.
    pub fn client(&self, url: Option<&str>) -> utter_client::Client {
        match url {
            Some(url) => utter_client::Client::new(url),
            None => utter_client::Client::new(
                &self
                    .node_url()
                    .unwrap_or_else(|| utter_client::DEFAULT_ADDR.to_string()),
            ),
        }
    }

    /// The container runtime's directory for this data directory, named by
    /// a hash of its path so two data directories never share containers.
    pub fn runtime_dir(&self) -> PathBuf {
        // FNV-1a: stable across builds, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.root.as_os_str().as_encoded_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Self::runtime_base().join(format!("{hash:016x}"))
    }

    /// The directory that holds every data directory's runtime directory:
    /// `/run/utter` as root (like runc's `/run/runc`, kept on a tmpfs),
    /// else `$XDG_RUNTIME_DIR/utter`, else `/tmp/utter-<uid>`.
    pub fn runtime_base() -> PathBuf {
        let uid = rustix::process::geteuid();
        if uid.is_root() {
            return PathBuf::from("/run/utter");
        }
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(dir) if Path::new(&dir).is_dir() => PathBuf::from(dir).join("utter"),
            _ => PathBuf::from(format!("/tmp/utter-{}", uid.as_raw())),
        }
    }

    /// Opens the chunk store: for writing (created when `create`), or read
    /// only, beside a running node. `need` says what would have made it.
    pub fn store(
        &self,
        need: Need,
        create: bool,
        read_only: bool,
        chunking: Option<Chunking>,
    ) -> Result<Store, HomeError> {
        let options = OpenOptions {
            create,
            read_only,
            chunking,
            ..OpenOptions::default()
        };
        match Store::open(self.db(), &options) {
            Ok(store) => Ok(store),
            Err(OpenError::NotFound { .. }) => Err(HomeError::Missing {
                dir: self.root.clone(),
                need,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The ledger over `store`.
    pub fn ledger(&self, store: &Store) -> Result<Ledger, HomeError> {
        match Ledger::open(&self.ledger_dir(), Arc::new(store.clone())) {
            Ok(ledger) => Ok(ledger),
            Err(LedgerError::NoLedger(_)) => Err(HomeError::Missing {
                dir: self.root.clone(),
                need: Need::Ledger,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The store (for writing) and the ledger.
    /// Holding the store for writing makes this process the ledger's only
    /// writer, so lock files a killed writer left are cleared here.
    pub fn open(&self) -> Result<Opened, HomeError> {
        let store = self.store(Need::Ledger, false, false, None)?;
        let ledger = self.ledger(&store)?;
        ledger.clear_stale_locks()?;
        Ok(Opened { store, ledger })
    }

    /// [`Home::open`] for reading only: works beside a running node.
    pub fn open_read_only(&self) -> Result<Opened, HomeError> {
        let store = self.store(Need::Ledger, false, true, None)?;
        let ledger = self.ledger(&store)?;
        Ok(Opened { store, ledger })
    }

    /// The image store over `store`.
    pub fn images(&self, store: &Store) -> Result<Images, HomeError> {
        Ok(Images::open(self.images_dir(), store.clone())?)
    }

    /// The image store as the executor sees it.
    pub fn node_images(&self, store: &Store) -> Result<NodeImages, HomeError> {
        Ok(NodeImages::new(self.images(store)?))
    }

    /// The node key, or the key file given.
    pub fn load_key(&self, path: Option<&Path>) -> Result<Keypair, HomeError> {
        let path = path.map_or_else(|| self.key_path(), Path::to_path_buf);
        Keypair::load(&path).map_err(|source| HomeError::Key { path, source })
    }

    /// Writes `key` to `path` (0600) and its public half beside it, each
    /// through a temporary file and a rename: a crash leaves the old file
    /// or the new one, never half of one. The public half goes first, so a
    /// private key never lacks it.
    pub fn save_key(path: &Path, key: &Keypair) -> Result<(), HomeError> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| HomeError::WriteKey {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| fail(e.into()))?;
        let public = format!("{} {KEY_PRINCIPAL}\n", key.public());
        let pub_path = path.with_extension("pub");
        let tmp_pub = path.with_extension("pub.tmp");
        std::fs::write(&tmp_pub, public).map_err(|e| fail(e.into()))?;
        std::fs::rename(&tmp_pub, &pub_path).map_err(|e| fail(e.into()))?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        key.save(&tmp).map_err(|e| fail(e.into()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail(e.into()))?;
        std::fs::rename(&tmp, path).map_err(|e| fail(e.into()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(e.into()))
    }

    /// Makes a new node key at `path`.
    pub fn generate_key(path: &Path) -> Result<Keypair, HomeError> {
        let key = Keypair::generate(KEY_PRINCIPAL).map_err(|source| HomeError::Key {
            path: path.to_path_buf(),
            source,
        })?;
        Self::save_key(path, &key)?;
        Ok(key)
    }

    /// Starts the container helper for this data directory: `utter
    /// --data-dir DIR sandbox-helper`, a child that never opens RocksDB
    /// (libcontainer's children would hang in RocksDB's exit handler).
    pub fn spawn_helper(&self) -> Result<Helper, HomeError> {
        Ok(Helper::spawn(self.helper_command("sandbox-helper")?)?)
    }

    /// `exe --data-dir DIR <command>`: a child of the executable that
    /// creates containers (`sandbox-helper`, `sandbox-lease`).
    pub fn helper_command(&self, command: &str) -> Result<std::process::Command, HomeError> {
        let exe = match &self.helper_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(HomeError::Exe)?,
        };
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--data-dir").arg(&self.root).arg(command);
        Ok(cmd)
    }

    /// The container runtime of this data directory, for a process that
    /// creates containers itself (the helper, `utter run`).
    pub fn runtime(&self) -> Result<Runtime, HomeError> {
        utter_runtime::runtime_base(&Self::runtime_base()).map_err(HomeError::Runtime)?;
        Runtime::open(self.runtime_dir()).map_err(HomeError::Runtime)
    }

    /// The helper's side (`utter sandbox-helper`): serves dapp runs on
    /// stdin/stdout until stdin closes. Never opens RocksDB; dies with its
    /// parent, so a helper never outlives its node holding containers.
    pub fn serve_helper(&self) -> Result<(), HomeError> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| HomeError::HelperIo(e.into()))?;
        let runtime = self.runtime()?.with_network_ahead();
        let stdin = std::io::stdin().lock();
        let stdout = std::io::stdout().lock();
        utter_runtime::helper::serve(&runtime, stdin, stdout).map_err(HomeError::HelperIo)?;
        Ok(())
    }
}

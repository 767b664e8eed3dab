//! Creating a data directory (`utter init`): the node key, the chunk
//! store, the built-in dapps as images, and a ledger with a signed genesis.
//!
//! Crash-atomic: the key is written through a rename, the store is
//! created whole and renamed into place, and the ledger is made in a
//! directory of its own and renamed to `ledger.git` last. A process killed
//! at any moment leaves a data directory that either has no ledger (run
//! `utter init` again: it reuses the key and the store) or a complete one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use utter_images::{BuildInput, BuildOptions, Images};
use utter_ledger::key::Keypair;
use utter_ledger::layout::{ChainConfig, DappConfig, LayoutError, Member, check_name};
use utter_ledger::{BlockId, Changes, Ledger, LedgerError};

use crate::home::{Home, HomeError, Need};

/// What to create.
#[derive(Debug, Clone)]
pub struct InitOptions<'a> {
    /// The chain's name.
    pub chain: String,
    /// This node's name in `chain.toml`.
    pub name: String,
    /// An existing OpenSSH key to use as the node key (copied to
    /// `keys/node`); else the data dir's, made when missing.
    pub key: Option<PathBuf>,
    /// Other validators (the quorum is ⌊2n/3⌋+1 of all of them).
    pub validators: Vec<Member>,
    /// Devices (door controllers' nodes): keys that may sign blocks on
    /// their own side branch, merged into main by the validators.
    pub devices: Vec<Member>,
    /// Built-in dapps to package and install: (name, static executable).
    pub builtin: &'a [(&'a str, &'a [u8])],
    /// The built-in test dapp to list in `chain.toml`, if installed.
    pub test_dapp: Option<&'a str>,
    /// More dapps: (name, image reference in this data dir's image store);
    /// one may replace a built-in of the same name.
    pub dapps: Vec<(String, String)>,
    /// The genesis block's time, Unix seconds.
    pub time: i64,
}

/// What was created.
#[derive(Debug)]
pub struct Created {
    /// The genesis block.
    pub genesis: BlockId,
    /// The node key.
    pub key: Keypair,
    /// The ledger's directory.
    pub ledger_dir: PathBuf,
    /// The dapps installed at genesis, in order.
    pub dapps: Vec<String>,
}

/// Why a data directory could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// There is a chain here already.
    #[error("{} already holds a ledger; use another --data-dir to start a new chain", .0.display())]
    Exists(PathBuf),
    /// A name or the validators break a rule.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The validators given do not make a chain.
    #[error("the validators given do not make a chain: {0}")]
    Validators(LayoutError),
    /// `--key` and `keys/node` differ.
    #[error("{} already holds a different node key; remove it or use it (drop --key)", .0.display())]
    OtherKey(PathBuf),
    /// A key file given cannot be read.
    #[error("cannot read the key {}: {source}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: utter_ledger::key::KeyError,
    },
    /// The data directory.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// Packaging a built-in dapp.
    #[error("cannot package the built-in dapp {name}: {source}")]
    Builtin {
        /// The dapp.
        name: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `--dapp` image that is not in the image store.
    #[error("no image {reference} for dapp {name}: build or import it first ({source})")]
    NoImage {
        /// The dapp.
        name: String,
        /// The reference given.
        reference: String,
        /// Why.
        source: utter_images::Error,
    },
    /// Writing the genesis block.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Moving the finished ledger into place.
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InitError + 'a {
    move |source| InitError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The node key `init` uses: `--key`'s (copied in), the data dir's, or a
/// new one.
pub(crate) fn node_key(home: &Home, given: Option<&Path>) -> Result<Keypair, InitError> {
    let node_key = home.key_path();
    let load = |path: &Path| {
        Keypair::load(path).map_err(|source| InitError::Key {
            path: path.to_path_buf(),
            source,
        })
    };
    match given {
        Some(path) => {
            let given = load(path)?;
            if node_key.exists() {
                if load(&node_key)?.public() != given.public() {
                    return Err(InitError::OtherKey(node_key));
                }
            } else {
                Home::save_key(&node_key, &given)?;
            }
            Ok(given)
        }
        None if node_key.exists() => load(&node_key),
        None => Ok(Home::generate_key(&node_key)?),
    }
}

/// Packages each built-in dapp as a one-file image tagged `utter/<name>`
/// (reproducible: the same executable makes the same image id) and
/// returns (name, image id) pairs.
fn builtin_images(
    home: &Home,
    images: &Images,
    builtin: &[(&str, &[u8])],
) -> Result<Vec<(String, String)>, InitError> {
    // What an init killed here left is of no use.
    if let Ok(entries) = std::fs::read_dir(home.images_dir()) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("builtin-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = home
        .images_dir()
        .join(format!("builtin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let mut out = Vec::new();
    let result = (|| {
        for (name, bytes) in builtin {
            let file = dir.join(name);
            std::fs::write(&file, bytes).map_err(io("write", &file))?;
            let options = BuildOptions {
                entrypoint: vec![format!("/{name}")],
                cmd: Vec::new(),
                env: Vec::new(),
                workdir: None,
                tags: vec![format!("utter/{name}")],
            };
            let built = images
                .build(&BuildInput::Binary(file), &options, &mut |_| {})
                .map_err(|e| InitError::Builtin {
                    name: name.to_string(),
                    source: Box::new(e),
                })?;
            out.push((name.to_string(), built.image.id.to_string()));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| out)
}

/// Creates the data directory `home` with a new chain.
pub fn init(home: &Home, options: InitOptions<'_>) -> Result<Created, InitError> {
    let ledger_dir = home.ledger_dir();
    if ledger_dir.exists() {
        return Err(InitError::Exists(home.root().to_path_buf()));
    }
    check_name("chain", &options.chain)?;
    check_name("node", &options.name)?;
    let key = node_key(home, options.key.as_deref())?;
    let mut config = ChainConfig::single(&options.chain, &options.name, &key.public());
    config.validators.extend(options.validators.iter().cloned());
    config.devices.extend(options.devices.iter().cloned());
    config.quorum = ChainConfig::min_quorum(config.validators.len());
    config.check().map_err(InitError::Validators)?;

    let store = home.store(Need::Ledger, true, false, None)?;
    let images = home.images(&store)?;
    let mut chosen = builtin_images(home, &images, options.builtin)?;
    for (name, reference) in &options.dapps {
        let image = images.get(reference).map_err(|source| InitError::NoImage {
            name: name.clone(),
            reference: reference.clone(),
            source,
        })?;
        chosen.retain(|(n, _)| n != name);
        chosen.push((name.clone(), image.id.to_string()));
    }
    let mut changes = Changes::new();
    let owner = key.public().to_openssh();
    for (name, image) in &chosen {
        let dapp = DappConfig {
            image: image.clone(),
            owners: vec![owner.clone()],
            permissions: Default::default(),
            deployed_at: None,
            upgraded_at: None,
        };
        changes.set_dapp(name, &dapp)?;
    }
    let names: Vec<String> = chosen.into_iter().map(|(n, _)| n).collect();
    if let Some(test) = options.test_dapp
        && names.iter().any(|n| n == test)
    {
        config.test_dapps.push(test.to_string());
    }

    // The ledger is made beside its place and moved there whole.
    let making = home.root().join(".ledger.git.creating");
    if making.exists() {
        std::fs::remove_dir_all(&making).map_err(io("remove", &making))?;
    }
    let (ledger, genesis) = Ledger::create(
        &making,
        Arc::new(store.clone()),
        &config,
        changes,
        &key,
        options.time,
    )?;
    drop(ledger);
    std::fs::rename(&making, &ledger_dir).map_err(io("move the new ledger to", &ledger_dir))?;
    std::fs::File::open(home.root())
        .and_then(|d| d.sync_all())
        .map_err(io("sync", home.root()))?;
    Ok(Created {
        genesis: genesis.id,
        key,
        ledger_dir,
        dapps: names,
    })
}

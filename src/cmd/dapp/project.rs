//! A dapp project on disk (`utter dapp new` writes one): `utter-dapp.toml`,
//! a build step that makes the image's files, and fixtures of blocks with
//! the results and state they must give. `utter dapp test` builds the
//! image, checks it against the protocol (the conformance checks of
//! `docs/dapp-protocol.md`) and runs every fixture through a real
//! container; `utter dapp deploy` ships the same image.
//!
//! ```text
//! utter-dapp.toml          name, rootfs, build, entrypoint
//! fixtures/keys/<who>      OpenSSH keys fixtures sign with ("as": "<who>")
//! fixtures/<NN-name>/
//!   txs.jsonl              {"action", "args", "as"?} per line; "$key:<who>" in
//!                          args becomes that key's public half
//!   results.jsonl          the result line each transaction must get
//!   after/                 (optional) the whole state the block must leave
//!   before/                (optional) the state to start from (else the
//!                          previous fixture's)
//!   chain/                 (optional) other dapps' state, at /chain
//! fixtures/chain/          (optional) /chain for fixtures without their own
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use serde_json::Value;
use utter_formats::Keypair;
use utter_formats::tx::{Request, sign_requests};
use utter_images::{BuildInput, BuildOptions, Image, Images};
use utter_node::{Home, Need};
use utter_runtime::dapp::{Context, Entry, Invocation};
use utter_runtime::{Helper, ImageProcess, Limits, Ran};

/// The project file's name.
pub const PROJECT_FILE: &str = "utter-dapp.toml";
/// The chain fixtures run on.
const FIXTURE_CHAIN: &str = "fixtures";
/// Block time of the first fixture (2025-01-01); each next one is a minute on.
const FIXTURE_TIME: u64 = 1_735_689_600;

/// `utter-dapp.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// The dapp's name (what `utter dapp deploy` deploys it as by default).
    pub name: String,
    /// The directory that becomes the image's rootfs, after `build`.
    #[serde(default = "default_rootfs")]
    pub rootfs: PathBuf,
    /// Run in the project directory before the image is built.
    #[serde(default)]
    pub build: Vec<String>,
    /// What the container runs; `apply` or `test` is appended.
    pub entrypoint: Vec<String>,
    /// `K=V` environment of the dapp.
    #[serde(default)]
    pub env: Vec<String>,
}

fn default_rootfs() -> PathBuf {
    PathBuf::from("rootfs")
}

/// A project directory and its file.
pub struct Project {
    pub dir: PathBuf,
    pub file: ProjectFile,
}

impl Project {
    /// Reads `dir/utter-dapp.toml`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(PROJECT_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a dapp project: it has no {PROJECT_FILE} (`utter dapp new NAME` makes one)",
                dir.display()
            )
        })?;
        let file: ProjectFile =
            toml::from_str(&text).with_context(|| format!("{} is invalid", path.display()))?;
        utter_formats::config::check_name("dapp", &file.name)
            .with_context(|| format!("{}: name", path.display()))?;
        if file.entrypoint.is_empty() {
            bail!(
                "{}: entrypoint is empty; name the program the container runs",
                path.display()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// Runs the build step, then builds the image into `images`.
    pub fn build_image(&self, images: &Images, quiet: bool) -> Result<Image> {
        if let Some((program, args)) = self.file.build.split_first() {
            if !quiet {
                eprintln!("building: {}", self.file.build.join(" "));
            }
            let status = Command::new(program)
                .args(args)
                .current_dir(&self.dir)
                .stdin(std::process::Stdio::null())
                .stdout(if quiet {
                    std::process::Stdio::null()
                } else {
                    std::process::Stdio::inherit()
                })
                .status()
                .with_context(|| format!("cannot run the build step `{program}`"))?;
            if !status.success() {
                bail!(
                    "the build step `{}` failed ({status}); fix it and run again",
                    self.file.build.join(" ")
                );
            }
        }
        let rootfs = self.dir.join(&self.file.rootfs);
        if !rootfs.is_dir() {
            bail!(
                "{} does not exist: the build step should make it (rootfs = {:?} in {PROJECT_FILE})",
                rootfs.display(),
                self.file.rootfs
            );
        }
        let built = images
            .build(
                &BuildInput::Dir(rootfs),
                &BuildOptions {
                    entrypoint: self.file.entrypoint.clone(),
                    env: self.file.env.clone(),
                    tags: vec![self.file.name.clone()],
                    ..BuildOptions::default()
                },
                &mut |_| {},
            )
            .context("cannot build the image")?;
        Ok(built.image)
    }
}

/// A data dir of its own for building and running outside any chain: an
/// image store, and a container helper that never opened RocksDB.
pub struct Scratch {
    _dir: tempfile::TempDir,
    pub home: Home,
    pub images: Images,
}

impl Scratch {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("utter-dapp-")
            .tempdir()
            .context("cannot make a scratch directory")?;
        let home = Home::new(dir.path());
        let store = home.store(Need::Images, true, false, None)?;
        let images = home.images(&store)?;
        Ok(Self {
            _dir: dir,
            home,
            images,
        })
    }
}

/// One image ready to run: its rootfs and process.
pub struct Runnable {
    pub name: String,
    pub rootfs: PathBuf,
    pub process: ImageProcess,
}

impl Runnable {
    pub fn of(images: &Images, image: &Image, name: &str) -> Result<Self> {
        let rootfs = images
            .rootfs(image)
            .with_context(|| format!("cannot unpack {name}'s image"))?;
        let process = ImageProcess::from_config(&images.config(image)?);
        if process.command.is_empty() {
            bail!("{name}'s image has no entrypoint: a dapp image needs one");
        }
        Ok(Self {
            name: name.to_string(),
            rootfs,
            process,
        })
    }

    /// Runs one entry on `state` (a directory); the run, not yet released.
    pub fn invoke(
        &self,
        helper: &mut Helper,
        entry: Entry,
        state: &Path,
        chain: Option<&Path>,
        txs: Vec<u8>,
        height: u64,
    ) -> Result<Ran> {
        let invocation = Invocation {
            rootfs: self.rootfs.clone(),
            command: self.process.command.clone(),
            env: self.process.env.clone(),
            cwd: self.process.cwd.clone(),
            state: state.to_path_buf(),
            chain: chain.map(Path::to_path_buf),
            context: Context {
                chain: FIXTURE_CHAIN.into(),
                dapp: self.name.clone(),
                entry,
                height,
                time: FIXTURE_TIME + 60 * (height - 1),
                parent: String::new(),
                proposer: String::new(),
            },
            txs,
            limits: Limits::default(),
            scratch: 64 << 20,
            changed: None,
        };
        Ok(helper.invoke(&invocation)?)
    }
}

/// The result lines of a run, each parsed (a line that is not JSON is kept
/// as a string so the diff shows it).
pub fn result_lines(ran: &Ran) -> Result<Vec<Value>> {
    let bytes = ran.read_results()?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
        .collect())
}

/// Files of a state directory: relative path → bytes (symlinks as
/// `-> target`).
pub fn tree(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path)?;
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

/// One line of a fixture's `txs.jsonl`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureTx {
    action: String,
    #[serde(default)]
    args: Value,
    /// Which key of `fixtures/keys/` signs it (default `author`).
    #[serde(default, rename = "as")]
    signer: Option<String>,
}

/// The fixtures' keys, by name.
pub struct Keys(BTreeMap<String, Keypair>);

impl Keys {
    pub fn load(dir: &Path) -> Result<Self> {
        let mut keys = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = Keypair::load(&path)
                    .with_context(|| format!("{} is not an OpenSSH ed25519 key", path.display()))?;
                keys.insert(name, key);
            }
        }
        Ok(Self(keys))
    }

    fn get(&self, name: &str) -> Result<&Keypair> {
        self.0.get(name).with_context(|| {
            format!(
                "no key {name:?} in fixtures/keys/ (make one with `ssh-keygen -t ed25519 -N '' -f fixtures/keys/{name}`)"
            )
        })
    }

    /// Replaces `"$key:<who>"` strings anywhere in `v` with that key.
    fn substitute(&self, v: &mut Value) -> Result<()> {
        match v {
            Value::String(s) => {
                if let Some(who) = s.strip_prefix("$key:") {
                    *s = self.get(who)?.public().to_openssh();
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.substitute(item)?;
                }
            }
            Value::Object(map) => {
                for item in map.values_mut() {
                    self.substitute(item)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads a fixture's `txs.jsonl` and signs each line as a block carries
/// it (nonces per signer, counted across fixtures in `nonces`).
pub fn fixture_txs(
    path: &Path,
    dapp: &str,
    keys: &Keys,
    nonces: &mut BTreeMap<String, u64>,
    height: u64,
) -> Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut tx: FixtureTx = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected {{\"action\", \"args\", \"as\"?}}",
                path.display(),
                n + 1
            )
        })?;
        keys.substitute(&mut tx.args)?;
        let who = tx.signer.unwrap_or_else(|| "author".to_string());
        let key = keys.get(&who)?;
        let nonce = nonces.entry(who).or_insert(0);
        *nonce += 1;
        let lines = sign_requests(
            key,
            FIXTURE_CHAIN,
            *nonce,
            FIXTURE_TIME + 60 * (height - 1),
            [Request {
                dapp: dapp.to_string(),
                action: tx.action,
                args: tx.args,
            }],
        )?;
        for l in lines {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// Expected result lines of a fixture (absent file: none expected).
pub fn expected_results(path: &Path) -> Result<Option<Vec<Value>>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line)
                .with_context(|| format!("{} line {} is not JSON", path.display(), n + 1))?,
        );
    }
    Ok(Some(out))
}

/// The differences between expected and actual results, one line each.
pub fn diff_results(expected: &[Value], actual: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e == a => {}
            (Some(e), Some(a)) => {
                out.push(format!("tx {}:\n  expected {e}\n  got      {a}", i + 1))
            }
            (Some(e), None) => out.push(format!("tx {}: expected {e}, got no result line", i + 1)),
            (None, Some(a)) => out.push(format!("tx {}: got {a}, expected no line", i + 1)),
            (None, None) => {}
        }
    }
    out
}

/// The differences between two state trees, one line each.
pub fn diff_trees(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let show = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim_end();
        if s.chars().count() > 120 {
            format!("{:?}…", s.chars().take(120).collect::<String>())
        } else {
            format!("{s:?}")
        }
    };
    let mut out = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => out.push(format!("- {path} (expected, not there)")),
            Some(a) if a != e => out.push(format!(
                "~ {path}:\n  expected {}\n  got      {}",
                show(e),
                show(a)
            )),
            Some(_) => {}
        }
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            out.push(format!("+ {path} (not expected): {}", show(a)));
        }
    }
    out
}

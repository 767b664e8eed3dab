//! The dapp side of utter's dapp protocol.
//!
//! A dapp is a program in an OCI image. For each block that has
//! transactions for it, utter runs its entrypoint once with the argument
//! `apply`; to check a new state it runs it with `test`. Inside the
//! container:
//! ```text
//! /block/context.json   {"chain","dapp","entry","height","time","parent","proposer"}
//! /block/txs.jsonl      one signed transaction per line: {"sig":…,"tx":{…}}
//! /block/results.jsonl  the dapp writes one line per transaction, in order:
//!                       {"status":"accepted"[,"output":…]} or
//!                       {"status":"rejected","reason":"…"}
//! /state/…              the dapp's files; changes become the next state
//! ```
//! There is no network and no clock but the block's `time`; the same
//! inputs must give the same state and results.
//!
//! This crate reads the context and transactions, gives a write-back view
//! of `/state` and writes the results; [`run`] does all of it around a
//! closure per transaction. It depends on `serde_json` only and links
//! statically. Outside a container, `UTTER_BLOCK` and `UTTER_STATE` point
//! it at other directories (for a dapp's own tests).
//!
//! Depends on no other utter crate.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

pub use serde_json::{Value, json};

/// Where the block directory is in a container.
pub const BLOCK_DIR: &str = "/block";
/// The file of the block directory that lists, for the `test` entry,
/// what the block changed: `<dapp>/<path>` per line, `<dapp>/` for a
/// whole dapp. See [`changed`].
pub const CHANGED_FILE: &str = "changed.txt";

/// Where the state is in a container.
pub const STATE_DIR: &str = "/state";
/// Where every dapp's state as of the parent block is, read-only.
pub const CHAIN_DIR: &str = "/chain";

/// An error of the protocol: a file missing or malformed. A dapp reports
/// it on stderr and exits non-zero, which fails the block.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Error {
    /// An error with this message (a broken invariant, a damaged file).
    pub fn from_message(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

fn io_error(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let text = format!("cannot {what} {}", path.display());
    move |e| Error(format!("{text}: {e}"))
}

/// `/block/context.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The chain id.
    pub chain: String,
    /// This dapp's name on the chain.
    pub dapp: String,
    /// `apply` or `test`.
    pub entry: String,
    /// The block's height.
    pub height: u64,
    /// The block's time, Unix seconds.
    pub time: u64,
    /// The parent block's id (hex).
    pub parent: String,
    /// The proposer's key.
    pub proposer: String,
}

/// One transaction for this dapp.
#[derive(Debug, Clone, PartialEq)]
pub struct Tx {
    /// Its position in the block's `txs.jsonl` (0-based).
    pub index: usize,
    /// What to do.
    pub action: String,
    /// Arguments (any JSON).
    pub args: Value,
    /// The signer's key, `ssh-ed25519 AAAA…`: who sent it.
    pub signer: String,
    /// The signer's nonce.
    pub nonce: u64,
    /// When the signer made it, Unix seconds.
    pub time: u64,
}

/// A well-formed, made-up `ssh-ed25519` key number `n`, for dapps' own
/// tests (it signs nothing; dapps only compare and file keys).
pub fn test_key(n: u8) -> String {
    format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{n:03}key")
}

impl Tx {
    /// A transaction as a dapp sees it, for a dapp's own tests: index 0,
    /// nonce 1, time 1.
    pub fn new(signer: &str, action: &str, args: Value) -> Self {
        Self {
            index: 0,
            action: action.into(),
            args,
            signer: signer.into(),
            nonce: 1,
            time: 1,
        }
    }

    /// `args.<name>` as a string, or the reason to reject the transaction.
    pub fn str_arg(&self, name: &str) -> Result<&str, String> {
        self.args
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("args.{name} must be a string"))
    }

    /// `args.<name>` as a whole number, or the reason to reject.
    pub fn u64_arg(&self, name: &str) -> Result<u64, String> {
        self.args
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("args.{name} must be a whole number"))
    }

    /// `args.<name>` as a list of strings (missing: empty), or the reason
    /// to reject.
    pub fn strs_arg(&self, name: &str) -> Result<Vec<String>, String> {
        match self.args.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("args.{name} must be a list of strings")),
            Some(_) => Err(format!("args.{name} must be a list of strings")),
        }
    }
}

/// A transaction's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Applied, with an optional output for the sender.
    Accepted(Option<Value>),
    /// Not applied, and why.
    Rejected(String),
}

impl Outcome {
    /// The `results.jsonl` line (no newline).
    pub fn to_line(&self) -> String {
        let value = match self {
            Outcome::Accepted(None) => json!({"status": "accepted"}),
            Outcome::Accepted(Some(output)) => json!({"status": "accepted", "output": output}),
            Outcome::Rejected(reason) => json!({"status": "rejected", "reason": reason}),
        };
        value.to_string()
    }
}

/// The block: context and transactions.
#[derive(Debug, Clone)]
pub struct Block {
    /// The context.
    pub context: Context,
    /// The transactions, in order.
    pub txs: Vec<Tx>,
    dir: PathBuf,
}

fn str_field(v: &Value, key: &str, what: &str) -> Result<String, Error> {
    v.get(key)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| Error(format!("{what} has no string {key:?}")))
}

fn u64_field(v: &Value, key: &str, what: &str) -> Result<u64, Error> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| Error(format!("{what} has no integer {key:?}")))
}

/// For the `test` entry: what the block changed (`<dapp>/<path>`, or
/// `<dapp>/` for a whole dapp), read from `/block/changed.txt` (or
/// `$UTTER_BLOCK`'s); `None` when utter did not say, and then a test
/// checks everything. A rule over state the block did not change held at
/// the parent block and still holds.
pub fn changed() -> Result<Option<Vec<String>>, Error> {
    let dir = std::env::var_os("UTTER_BLOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BLOCK_DIR));
    let path = dir.join(CHANGED_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.lines().map(str::to_string).collect())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", &path)(e)),
    }
}

/// `dir/xx/<name><ext>`: the place of one of very many files of a kind
/// (one per lease, say), fanned out over 256 subdirectories `xx` by a
/// hash of `name` (FNV-1a). A block that changes one file rewrites a
/// tree of a few entries and one of 256, not one of every file, so its
/// cost does not grow with how many there are.
pub fn fan_out(dir: &str, name: &str, ext: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{dir}/{:02x}/{name}{ext}", h & 0xff)
}

/// The names of the files under a [`fan_out`] directory `dir` with
/// extension `ext`, sorted (every subdirectory looked in, so files
/// written and not flushed yet are listed too).
pub fn fanned_names(state: &mut State, dir: &str, ext: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for shard in 0..=255u8 {
        for file in state.list(&format!("{dir}/{shard:02x}"))? {
            if let Some(name) = file.strip_suffix(ext) {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Block {
    /// Reads `/block` (or `$UTTER_BLOCK`).
    pub fn read() -> Result<Self, Error> {
        let dir = std::env::var_os("UTTER_BLOCK")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(BLOCK_DIR));
        Self::read_from(&dir)
    }

    /// Reads a block directory.
    pub fn read_from(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("context.json");
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error(format!("{} is not JSON: {e}", path.display())))?;
        let what = "context.json";
        let context = Context {
            chain: str_field(&v, "chain", what)?,
            dapp: str_field(&v, "dapp", what)?,
            entry: str_field(&v, "entry", what)?,
            height: u64_field(&v, "height", what)?,
            time: u64_field(&v, "time", what)?,
            parent: str_field(&v, "parent", what)?,
            proposer: str_field(&v, "proposer", what)?,
        };
        let path = dir.join("txs.jsonl");
        let file = fs::File::open(&path).map_err(io_error("open", &path))?;
        let mut txs = Vec::new();
        for (index, line) in io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io_error("read", &path))?;
            let what = format!("transaction {index}");
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| Error(format!("{what} is not JSON: {e}")))?;
            let tx = v
                .get("tx")
                .ok_or_else(|| Error(format!("{what} has no \"tx\"")))?;
            txs.push(Tx {
                index,
                action: str_field(tx, "action", &what)?,
                args: tx.get("args").cloned().unwrap_or(Value::Null),
                signer: str_field(tx, "signer", &what)?,
                nonce: u64_field(tx, "nonce", &what)?,
                time: u64_field(tx, "time", &what)?,
            });
        }
        Ok(Self {
            context,
            txs,
            dir: dir.to_path_buf(),
        })
    }

    /// Writes `results.jsonl`: one line per outcome, in order.
    pub fn write_results(&self, outcomes: &[Outcome]) -> Result<(), Error> {
        let path = self.dir.join("results.jsonl");
        let mut text = String::with_capacity(outcomes.len() * 24);
        for outcome in outcomes {
            text.push_str(&outcome.to_line());
            text.push('\n');
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        file.write_all(text.as_bytes())
            .map_err(io_error("write", &path))
    }
}

/// `YYYY-MM-DD` (UTC) of Unix time `time`.
pub fn date(time: u64) -> String {
    let days = (time / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The dapp's state: files under `/state`, read on first use and written
/// back by [`State::flush`], so a block touching one file a thousand times
/// writes it once.
#[derive(Debug)]
pub struct State {
    /// The directory (`None`: a state held in memory, see
    /// [`State::in_memory`]).
    root: Option<PathBuf>,
    cache: BTreeMap<String, Option<Vec<u8>>>,
    dirty: BTreeMap<String, Option<Vec<u8>>>,
    /// How to undo the current transaction's changes, newest last (see
    /// [`State::begin`]); `None` outside a transaction.
    undo: Option<Vec<Undo>>,
    /// Paths the current transaction changed, and whether their whole
    /// earlier value is saved in `undo`.
    touched: BTreeMap<String, bool>,
}

/// One step back.
#[derive(Debug)]
enum Undo {
    /// Put back the earlier pending change (`None`: there was none).
    Restore(String, Option<Option<Vec<u8>>>),
    /// Cut an appended-to value back to this length.
    Truncate(String, usize),
}

impl State {
    /// `/state` (or `$UTTER_STATE`).
    pub fn open() -> Self {
        let root = std::env::var_os("UTTER_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(STATE_DIR));
        Self::at(root)
    }

    /// Another dapp's state as of the parent block, `/chain/<dapp>` (or
    /// `$UTTER_CHAIN/<dapp>`), for reading: changes to it are never
    /// written.
    pub fn of_dapp(dapp: &str) -> Self {
        let root = std::env::var_os("UTTER_CHAIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(CHAIN_DIR));
        Self::at(root.join(dapp))
    }

    /// A state directory.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Some(root.into()),
            cache: BTreeMap::new(),
            dirty: BTreeMap::new(),
            undo: None,
            touched: BTreeMap::new(),
        }
    }

    /// A state held in memory alone: `files` (relative path → bytes) is
    /// the whole of it, reads never touch a disk and [`State::flush`]
    /// writes nothing. A door controller decides over one of these.
    pub fn in_memory(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let mut state = Self {
            root: None,
            cache: BTreeMap::new(),
            dirty: BTreeMap::new(),
            undo: None,
            touched: BTreeMap::new(),
        };
        for (path, bytes) in files {
            if Self::check(&path).is_ok() {
                state.cache.insert(path, Some(bytes));
            }
        }
        state
    }

    fn check(path: &str) -> Result<(), Error> {
        let p = Path::new(path);
        let plain = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
        if plain {
            Ok(())
        } else {
            Err(Error(format!(
                "{path:?} is not a relative path inside the state"
            )))
        }
    }

    /// The bytes of `path` (relative), or `None` when there is no such file.
    pub fn get(&mut self, path: &str) -> Result<Option<&[u8]>, Error> {
        Self::check(path)?;
        if let Some(v) = self.dirty.get(path) {
            return Ok(v.as_deref());
        }
        if !self.cache.contains_key(path) {
            let Some(root) = &self.root else {
                return Ok(None);
            };
            let full = root.join(path);
            let value = match fs::read(&full) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_error("read", &full)(e)),
            };
            self.cache.insert(path.to_string(), value);
        }
        Ok(self.cache[path].as_deref())
    }

    /// The JSON value in `path`, or `None` when there is no such file. A
    /// file that is not JSON is an error (a damaged state fails the block).
    pub fn get_json(&mut self, path: &str) -> Result<Option<Value>, Error> {
        match self.get(path)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes)
                .map(Some)
                .map_err(|e| Error(format!("{path} is not JSON: {e}"))),
        }
    }

    /// Sets `path` to `value` as JSON (keys sorted, so the same value is
    /// always the same bytes).
    pub fn put_json(&mut self, path: &str, value: &Value) -> Result<(), Error> {
        let mut bytes = serde_json::to_vec(value).expect("a JSON value serializes");
        bytes.push(b'\n');
        self.put(path, bytes)
    }

    /// Sets `path` to `bytes` (written by [`State::flush`]).
    pub fn put(&mut self, path: &str, bytes: impl Into<Vec<u8>>) -> Result<(), Error> {
        Self::check(path)?;
        self.save_whole(path);
        self.dirty.insert(path.to_string(), Some(bytes.into()));
        Ok(())
    }

    /// Removes `path` (at [`State::flush`]).
    pub fn remove(&mut self, path: &str) -> Result<(), Error> {
        Self::check(path)?;
        self.save_whole(path);
        self.dirty.insert(path.to_string(), None);
        Ok(())
    }

    /// Adds `bytes` at the end of `path` (creating it). Costs the bytes
    /// added, not the file's size: a log written line by line stays cheap.
    pub fn append(&mut self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        Self::check(path)?;
        if !matches!(self.dirty.get(path), Some(Some(_))) {
            let base = self.get(path)?.map(<[u8]>::to_vec).unwrap_or_default();
            self.save_whole(path);
            self.dirty.insert(path.to_string(), Some(base));
        }
        let value = self
            .dirty
            .get_mut(path)
            .and_then(Option::as_mut)
            .expect("made pending above");
        if let Some(undo) = &mut self.undo
            && !self.touched.contains_key(path)
        {
            undo.push(Undo::Truncate(path.to_string(), value.len()));
            self.touched.insert(path.to_string(), false);
        }
        value.extend_from_slice(bytes);
        Ok(())
    }

    /// In a transaction, saves `path`'s pending value before it is
    /// replaced (once per transaction).
    fn save_whole(&mut self, path: &str) {
        if let Some(undo) = &mut self.undo
            && self.touched.get(path) != Some(&true)
        {
            undo.push(Undo::Restore(
                path.to_string(),
                self.dirty.get(path).cloned(),
            ));
            self.touched.insert(path.to_string(), true);
        }
    }

    /// Starts a transaction: [`State::rollback`] undoes every change made
    /// after this, [`State::commit`] keeps them. Costs what the
    /// transaction changes, not what the block changed before it.
    pub fn begin(&mut self) {
        self.undo = Some(Vec::new());
        self.touched.clear();
    }

    /// Keeps the transaction's changes.
    pub fn commit(&mut self) {
        self.undo = None;
        self.touched.clear();
    }

    /// Undoes the transaction's changes.
    pub fn rollback(&mut self) {
        for step in self.undo.take().unwrap_or_default().into_iter().rev() {
            match step {
                Undo::Restore(path, Some(value)) => {
                    self.dirty.insert(path, value);
                }
                Undo::Restore(path, None) => {
                    self.dirty.remove(&path);
                }
                Undo::Truncate(path, len) => {
                    if let Some(Some(v)) = self.dirty.get_mut(&path) {
                        v.truncate(len);
                    }
                }
            }
        }
        self.touched.clear();
    }

    /// The file names in directory `dir` ("" for the top), sorted, with
    /// pending writes and removals of files directly in `dir` applied.
    pub fn list(&mut self, dir: &str) -> Result<Vec<String>, Error> {
        if !dir.is_empty() {
            Self::check(dir)?;
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut names: Vec<String> = match &self.root {
            None => self
                .cache
                .iter()
                .filter(|(_, v)| v.is_some())
                .filter_map(|(path, _)| path.strip_prefix(&prefix))
                // A file deeper down shows its directory, as on disk.
                .filter_map(|name| name.split('/').next())
                .map(str::to_string)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            Some(root) => {
                let full = root.join(dir);
                match fs::read_dir(&full) {
                    Ok(entries) => entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(io_error("list", &full)(e)),
                }
            }
        };
        for (path, value) in &self.dirty {
            if let Some(name) = path.strip_prefix(&prefix).filter(|n| !n.contains('/')) {
                names.retain(|n| n != name);
                if value.is_some() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Writes pending changes to the directory (a state in memory keeps
    /// them in memory).
    pub fn flush(&mut self) -> Result<(), Error> {
        for (path, value) in std::mem::take(&mut self.dirty) {
            let Some(root) = &self.root else {
                self.cache.insert(path, value);
                continue;
            };
            let full = root.join(&path);
            match &value {
                Some(bytes) => {
                    if let Some(parent) = full.parent() {
                        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
                    }
                    fs::write(&full, bytes).map_err(io_error("write", &full))?;
                }
                None => match fs::remove_file(&full) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("remove", &full)(e)),
                },
            }
            self.cache.insert(path, value);
        }
        Ok(())
    }
}

/// The whole protocol around two functions: `apply` is called once per
/// transaction (in order; its state changes are kept only when it returns
/// `Accepted`), `test` once for the `test` entry. Returns the process's
/// exit code; errors go to stderr.
///
/// ```no_run
/// use utter_dapp_sdk::{Outcome, run};
/// fn main() -> std::process::ExitCode {
///     run(
///         |_ctx, tx, state| match tx.action.as_str() {
///             "touch" => state.put("touched", "yes").map(|()| Outcome::Accepted(None)),
///             other => Ok(Outcome::Rejected(format!("unknown action {other}"))),
///         },
///         |_ctx, _state| Ok(()),
///     )
/// }
/// ```
pub fn run<A, T>(mut apply: A, test: T) -> ExitCode
where
    A: FnMut(&Context, &Tx, &mut State) -> Result<Outcome, Error>,
    T: FnOnce(&Context, &mut State) -> Result<(), Error>,
{
    match run_inner(&mut apply, test) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dapp error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner<A, T>(apply: &mut A, test: T) -> Result<(), Error>
where
    A: FnMut(&Context, &Tx, &mut State) -> Result<Outcome, Error>,
    T: FnOnce(&Context, &mut State) -> Result<(), Error>,
{
    let block = Block::read()?;
    let mut state = State::open();
    let entry = std::env::args()
        .nth(1)
        .unwrap_or_else(|| block.context.entry.clone());
    match entry.as_str() {
        "apply" => {
            let mut outcomes = Vec::with_capacity(block.txs.len());
            for tx in &block.txs {
                state.begin();
                let outcome = apply(&block.context, tx, &mut state)?;
                if matches!(outcome, Outcome::Rejected(_)) {
                    state.rollback();
                } else {
                    state.commit();
                }
                outcomes.push(outcome);
            }
            state.flush()?;
            block.write_results(&outcomes)
        }
        "test" => test(&block.context, &mut state),
        other => Err(Error(format!(
            "unknown entry {other:?}: expected apply or test"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_dir(txs: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("context.json"),
            r#"{"chain":"c","dapp":"d","entry":"apply","height":3,"time":7,"parent":"ab","proposer":"k"}"#,
        )
        .expect("write");
        fs::write(dir.path().join("txs.jsonl"), txs).expect("write");
        fs::write(dir.path().join("results.jsonl"), "").expect("write");
        dir
    }

    #[test]
    fn fan_out_places_are_stable_and_listed_back() {
        // The place is part of every chain's state: it never changes.
        assert_eq!(
            fan_out("leases", "lease-0123456789abcdef", ".json"),
            "leases/68/lease-0123456789abcdef.json"
        );
        let mut st = State::in_memory([]);
        for n in ["b", "a", "c"] {
            st.put(&fan_out("d", n, ".json"), b"{}".to_vec()).unwrap();
        }
        st.put("d/other.txt", b"x".to_vec()).unwrap();
        assert_eq!(
            fanned_names(&mut st, "d", ".json").unwrap(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn reads_a_block_and_writes_results() {
        let dir = block_dir(concat!(
            r#"{"sig":"s","tx":{"v":1,"chain":"c","dapp":"d","action":"add","args":{"n":2},"signer":"k1","nonce":1,"time":5}}"#,
            "\n",
            r#"{"sig":"s","tx":{"v":1,"chain":"c","dapp":"d","action":"x","args":null,"signer":"k2","nonce":9,"time":6}}"#,
            "\n"
        ));
        let block = Block::read_from(dir.path()).expect("block");
        assert_eq!(block.context.height, 3);
        assert_eq!(block.txs.len(), 2);
        assert_eq!(block.txs[0].args["n"], 2);
        assert_eq!(block.txs[1].signer, "k2");
        block
            .write_results(&[
                Outcome::Accepted(Some(json!(4))),
                Outcome::Rejected("no".into()),
            ])
            .expect("results");
        assert_eq!(
            fs::read_to_string(dir.path().join("results.jsonl")).expect("read"),
            "{\"output\":4,\"status\":\"accepted\"}\n{\"reason\":\"no\",\"status\":\"rejected\"}\n"
        );
    }

    #[test]
    fn bad_blocks_are_errors_naming_the_line() {
        let dir = block_dir("{\"tx\":{\"action\":\"a\"}}\n");
        let err = Block::read_from(dir.path()).expect_err("missing fields");
        assert!(err.to_string().contains("transaction 0"), "{err}");
        let dir = block_dir("not json\n");
        assert!(Block::read_from(dir.path()).is_err());
    }

    #[test]
    fn state_writes_back_and_refuses_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("old"), "1").expect("write");
        let mut state = State::at(dir.path());
        assert_eq!(state.get("old").expect("get"), Some(&b"1"[..]));
        assert_eq!(state.get("new").expect("get"), None);
        state.put("a/b", "x").expect("put");
        state.remove("old").expect("remove");
        assert_eq!(state.list("a").expect("list"), vec!["b"]);
        assert!(state.list("").expect("list").is_empty(), "old is removed");
        assert!(
            !dir.path().join("a").exists(),
            "nothing written before flush"
        );
        state.flush().expect("flush");
        assert_eq!(
            fs::read_to_string(dir.path().join("a/b")).expect("read"),
            "x"
        );
        assert!(!dir.path().join("old").exists());
        // A rejected transaction's changes are undone; earlier ones stay.
        state.put("log", "1\n").expect("put");
        state.begin();
        state.append("log", b"2\n").expect("append");
        state.put("other", "x").expect("put");
        state.commit();
        state.begin();
        state.append("log", b"3\n").expect("append");
        state.put("log", "replaced").expect("put");
        state.append("log", b"+4").expect("append");
        state.remove("other").expect("remove");
        state.append("new", b"n").expect("append");
        state.rollback();
        assert_eq!(state.get("log").expect("get"), Some(&b"1\n2\n"[..]));
        assert_eq!(state.get("other").expect("get"), Some(&b"x"[..]));
        assert_eq!(state.get("new").expect("get"), None);
        state.append("a/b", b"y").expect("append to a flushed file");
        state.flush().expect("flush");
        assert_eq!(
            fs::read_to_string(dir.path().join("a/b")).expect("read"),
            "xy"
        );
        for bad in ["../x", "/etc/passwd", "", "a/../../b"] {
            assert!(state.put(bad, "x").is_err(), "{bad}");
            assert!(state.get(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_state_in_memory_reads_and_lists_like_the_same_files_on_disk() {
        let files = [
            ("doors/front.json", "{}"),
            ("bookings/front/1.json", "{}"),
            ("bookings/lathe/2.json", "{}"),
            ("salt", "ab"),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            fs::write(full, text).expect("write");
        }
        let mut disk = State::at(dir.path());
        let mut memory = State::in_memory(
            files
                .iter()
                .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
                .chain([("../escape".to_string(), b"x".to_vec())]),
        );
        for dir in ["", "bookings", "bookings/front", "doors", "nothing"] {
            assert_eq!(
                memory.list(dir).expect("list"),
                disk.list(dir).expect("list"),
                "{dir:?}"
            );
        }
        for path in ["salt", "doors/front.json", "missing", "bookings"] {
            assert_eq!(
                memory.get(path).expect("get").map(<[u8]>::to_vec),
                disk.get(path).ok().flatten().map(<[u8]>::to_vec),
                "{path}"
            );
        }
        assert!(memory.get("../escape").is_err());
        memory.put("new", "n").expect("put");
        memory.flush().expect("flush");
        assert_eq!(memory.get("new").expect("get"), Some(&b"n"[..]));
    }
}

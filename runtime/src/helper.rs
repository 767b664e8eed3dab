//! The container helper: a child process that runs dapp invocations for a
//! process that may not create containers itself.
//!
//! libcontainer's helper processes leave through `exit()`, which runs the
//! exit handlers of the process they were forked from; a process that
//! opened RocksDB (the node, the executor) would hang there. So such a
//! process starts a helper (`utter sandbox-helper`, a process that never
//! opens RocksDB) and sends it invocations over a pipe:
//!
//! ```text
//! parent → helper   {"invoke":{…Invocation…}}\n      run one dapp
//!                   {"release":7}\n                   drop run 7's scratch
//! helper → parent   {"ran":{"id":7,"finished":…,"results":"<path>","upper":"<path>","changes":[…]}}\n
//!                   {"error":"<why the container could not run>"}\n
//! ```
//!
//! A run's scratch (results and changed files) stays mounted until the
//! parent releases it; the parent reads the files directly from the paths
//! given (same user, same host), so no state bytes cross the pipe. When the
//! parent closes the pipe the helper drops every run and exits; when the
//! parent dies the kernel kills the helper (`PR_SET_PDEATHSIG`).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio as ProcessStdio};

use serde::{Deserialize, Serialize};

use crate::container::{Finished, Sandbox};
use crate::dapp::{Change, DappRun, Invocation, StateError, apply_changes, invoke};

/// A request as the helper reads it.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Request {
    Invoke(Box<Invocation>),
    Release(u64),
}

/// The same request as the parent writes it, borrowing the invocation
/// (its transactions can be megabytes; they are not copied to be sent).
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Sent<'a> {
    Invoke(&'a Invocation),
    Release(u64),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Response {
    Ran(Ran),
    Error(String),
}

/// One finished invocation, as the helper reports it. Its files stay
/// readable until [`Helper::release`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Ran {
    /// The helper's number for the run.
    pub id: u64,
    /// How the container ended, with what it printed.
    pub finished: Finished,
    /// Where `/block/results.jsonl` is, as the dapp wrote it.
    pub results: PathBuf,
    /// The overlay's upper directory: the changed files' bytes.
    pub upper: PathBuf,
    /// The changed paths, parents before children.
    pub changes: Vec<Change>,
}

impl Ran {
    /// The results file's bytes.
    pub fn read_results(&self) -> Result<Vec<u8>, StateError> {
        std::fs::read(&self.results).map_err(|source| StateError::Io {
            what: "read",
            path: self.results.clone(),
            source,
        })
    }

    /// The new bytes of changed file `path`.
    pub fn file(&self, path: &str) -> Result<Vec<u8>, StateError> {
        let full = self.upper.join(path);
        std::fs::read(&full).map_err(|source| StateError::Io {
            what: "read",
            path: full,
            source,
        })
    }

    /// Applies the changes to `dir`, a copy of the state the dapp ran on.
    pub fn apply_to(&self, dir: &Path) -> Result<(), StateError> {
        apply_changes(&self.upper, &self.changes, dir)
    }
}

/// Why the helper could not run an invocation.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper process could not be started.
    #[error("cannot start the container helper ({command}): {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: io::Error,
    },
    /// The helper exited or its pipe broke; start a new one.
    #[error("the container helper stopped ({0}); see its messages above")]
    Gone(String),
    /// The helper ran, but this invocation could not run (no such
    /// entrypoint, a bad state directory, a failure creating the
    /// container).
    #[error("{0}")]
    Invoke(String),
}

/// The parent's end: a running helper process.
#[derive(Debug)]
pub struct Helper {
    child: Child,
    input: Option<BufWriter<ChildStdin>>,
    output: BufReader<ChildStdout>,
    line: String,
}

impl Helper {
    /// Starts `command` (which must end up in [`serve`]) with piped stdin
    /// and stdout; stderr is inherited so its messages reach the operator.
    pub fn spawn(mut command: Command) -> Result<Self, HelperError> {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(ProcessStdio::piped())
            .stdout(ProcessStdio::piped())
            .stderr(ProcessStdio::inherit())
            .spawn()
            .map_err(|source| HelperError::Spawn {
                command: name,
                source,
            })?;
        let input = child.stdin.take().expect("stdin is piped");
        let output = child.stdout.take().expect("stdout is piped");
        Ok(Self {
            child,
            input: Some(BufWriter::new(input)),
            output: BufReader::new(output),
            line: String::new(),
        })
    }

    fn send(&mut self, request: &Sent<'_>) -> Result<(), HelperError> {
        let input = self
            .input
            .as_mut()
            .ok_or_else(|| HelperError::Gone("its input is closed".into()))?;
        let gone = |e: io::Error| HelperError::Gone(e.to_string());
        serde_json::to_writer(&mut *input, request)
            .map_err(|e| HelperError::Gone(e.to_string()))?;
        input.write_all(b"\n").map_err(gone)?;
        input.flush().map_err(gone)
    }

    /// Runs one invocation in a fresh container.
    pub fn invoke(&mut self, invocation: &Invocation) -> Result<Ran, HelperError> {
        self.send(&Sent::Invoke(invocation))?;
        self.line.clear();
        let n = self
            .output
            .read_line(&mut self.line)
            .map_err(|e| HelperError::Gone(e.to_string()))?;
        if n == 0 {
            let status = self
                .child
                .try_wait()
                .ok()
                .flatten()
                .map_or_else(|| "it closed its output".into(), |s| s.to_string());
            return Err(HelperError::Gone(status));
        }
        match serde_json::from_str(&self.line) {
            Ok(Response::Ran(ran)) => Ok(ran),
            Ok(Response::Error(why)) => Err(HelperError::Invoke(why)),
            Err(e) => Err(HelperError::Gone(format!("it answered nonsense: {e}"))),
        }
    }

    /// Lets the helper remove a run's scratch (results and changed files).
    pub fn release(&mut self, ran: Ran) -> Result<(), HelperError> {
        self.send(&Sent::Release(ran.id))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing its input ends the helper's loop; it removes every
        // scratch it holds before it exits.
        drop(self.input.take());
        let _ = self.child.wait();
    }
}

/// The helper's end: answers requests from `input` on `output` until
/// `input` ends, running each invocation in `sandbox`.
pub fn serve<S: Sandbox + ?Sized>(
    sandbox: &S,
    input: impl BufRead,
    mut output: impl Write,
) -> io::Result<()> {
    let mut runs: HashMap<u64, DappRun> = HashMap::new();
    let mut next = 0u64;
    for line in input.lines() {
        let line = line?;
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!("the helper cannot read this request: {e}")),
            Ok(Request::Release(id)) => {
                runs.remove(&id);
                continue;
            }
            Ok(Request::Invoke(invocation)) => match invoke(sandbox, &invocation) {
                Err(e) => Response::Error(e.to_string()),
                Ok(run) => {
                    next += 1;
                    let ran = Ran {
                        id: next,
                        finished: run.finished.clone(),
                        results: run.results_path(),
                        upper: run.upper().to_path_buf(),
                        changes: run.changes.clone(),
                    };
                    runs.insert(next, run);
                    Response::Ran(ran)
                }
            },
        };
        serde_json::to_writer(&mut output, &response)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}

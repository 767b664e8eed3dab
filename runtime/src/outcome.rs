//! How a container run ended, as a value with a message for dapp authors.

use std::fmt;
use std::time::Duration;

/// How a container's process ended. A dapp that breaks a limit is an
/// outcome, not an error: the caller decides what it means (a block fails,
/// a lease stops) and the node carries on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The entrypoint exited with this code.
    Exited(i32),
    /// The wall-clock limit passed; the whole container was killed.
    TimedOut(Duration),
    /// The kernel's OOM killer killed a process of the container.
    OutOfMemory {
        /// The memory limit, bytes.
        limit: u64,
    },
    /// A `fork`/`clone` failed because the container had its maximum number
    /// of processes and threads.
    PidsLimit {
        /// The pids limit.
        limit: u64,
    },
    /// stdout and stderr together passed the capture cap; the container was
    /// killed and the first `cap` bytes kept.
    OutputTruncated {
        /// The cap, bytes.
        cap: u64,
    },
    /// The entrypoint was killed by this signal (not by utter).
    Crashed(i32),
}

impl Outcome {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    /// The exit code a command-line tool should pass on, as a shell would:
    /// the code, 128 + signal for a crash, 124 for a timeout (like
    /// `timeout(1)`), 137 for a kill for memory or output, 125 for the pids
    /// limit.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::TimedOut(_) => 124,
            Outcome::OutOfMemory { .. } | Outcome::OutputTruncated { .. } => 137,
            Outcome::PidsLimit { .. } => 125,
            Outcome::Crashed(signal) => 128 + signal,
        }
    }

    /// A short machine-readable name (`exited`, `timed-out`, …) for `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Exited(_) => "exited",
            Outcome::TimedOut(_) => "timed-out",
            Outcome::OutOfMemory { .. } => "out-of-memory",
            Outcome::PidsLimit { .. } => "pids-limit",
            Outcome::OutputTruncated { .. } => "output-truncated",
            Outcome::Crashed(_) => "crashed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(0) => write!(f, "exited with code 0"),
            Outcome::Exited(code) => write!(f, "exited with code {code}"),
            Outcome::TimedOut(after) => write!(
                f,
                "still running after {:.1} s, the time limit, so the container was killed; \
                 make the work smaller or raise the limit (--timeout)",
                after.as_secs_f64()
            ),
            Outcome::OutOfMemory { limit } => write!(
                f,
                "killed for using more than its memory limit of {} MiB; \
                 use less memory or raise the limit (--memory)",
                limit / (1024 * 1024)
            ),
            Outcome::PidsLimit { limit } => write!(
                f,
                "tried to run more than {limit} processes and threads at once, the pids limit; \
                 start fewer or raise the limit (--pids)"
            ),
            Outcome::OutputTruncated { cap } => write!(
                f,
                "wrote more than {} KiB to stdout and stderr, the output cap, so it was killed; \
                 write less (results go to /block/results.jsonl, not stdout)",
                cap / 1024
            ),
            Outcome::Crashed(signal) => {
                write!(f, "killed by signal {signal} ({})", signal_name(*signal))
            }
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        31 => "SIGSYS: a system call the sandbox forbids",
        _ => "unknown signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit_and_the_fix() {
        let oom = Outcome::OutOfMemory {
            limit: 64 * 1024 * 1024,
        };
        assert!(oom.to_string().contains("64 MiB"));
        assert!(oom.to_string().contains("--memory"));
        assert!(
            Outcome::TimedOut(Duration::from_secs(2))
                .to_string()
                .contains("--timeout")
        );
        assert_eq!(Outcome::Crashed(11).exit_code(), 139);
        assert!(Outcome::Crashed(11).to_string().contains("SIGSEGV"));
        assert!(Outcome::Exited(0).success());
        assert!(!Outcome::Exited(3).success());
        assert_eq!(Outcome::Exited(3).exit_code(), 3);
    }
}

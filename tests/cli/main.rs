//! End-to-end tests of the `utter` binary, read like transcripts: each runs
//! the real binary on a real data directory.

#![allow(clippy::unwrap_used)] // test helpers panic with the failing call in the message

mod chain;
mod chunks;
mod client;
mod consensus;
mod crash;
mod dapps;
mod devnet;
mod doorbot;
mod governance;
mod image;
mod key;
mod lease;
mod ledger;
mod net;
mod node;
mod rootless;
mod run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use utter_testkit::noise;

/// `utter --data-dir DIR …`
pub fn utter(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_utter"));
    c.arg("--data-dir").arg(data_dir);
    c.env_remove("UTTER_DATA_DIR");
    c
}

/// Runs and returns the output, whatever the status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the utter binary runs")
}

/// Runs and insists on success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs and insists on failure; returns stderr and stdout together.
pub fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "{cmd:?} succeeded but should fail");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// Writes `bytes` to `dir/name`.
pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

/// An OpenSSH key made by ssh-keygen itself; (private key file, public key).
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let mut parts = public.split_whitespace();
    let key = format!("{} {}", parts.next().unwrap(), parts.next().unwrap());
    (path, key)
}

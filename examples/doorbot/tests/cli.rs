//! The `doorbot` binary as an installer meets it: enrolling, a wrong or
//! missing config, the wiring check and the lock, with the development
//! backends (stdin reader, printed outputs).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn doorbot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_doorbot"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("doorbot.toml");
    std::fs::write(
        &path,
        format!(
            "door = \"front\"\nnode = \"http://127.0.0.1:9\"\nkey = {:?}\nstate_dir = {:?}\n[reader]\nkind = \"stdin\"\n[outputs]\nkind = \"print\"\n",
            dir.join("doorbot.key"),
            dir.join("state")
        ),
    )
    .unwrap();
    path
}

#[test]
fn enroll_makes_the_key_once_and_prints_the_request_an_admin_submits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let out = doorbot(&["enroll", "--door", "front", "--config", cfg, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["made"], true);
    assert_eq!(first["request"]["action"], "authorize-controller");
    assert_eq!(first["request"]["args"]["door"], "front");
    // ssh-keygen reads the key it made (the format is OpenSSH's).
    let pubkey = Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(dir.path().join("doorbot.key"))
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    assert!(
        String::from_utf8_lossy(&pubkey.stdout).starts_with(first["public"].as_str().unwrap()),
        "{}",
        String::from_utf8_lossy(&pubkey.stdout)
    );
    let out = doorbot(&["enroll", "--door", "front", "--config", cfg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("kept the controller's key"), "{text}");
    assert!(
        text.contains("utter tx submit doors authorize-controller"),
        "{text}"
    );
    assert!(
        text.contains(first["public"].as_str().unwrap()),
        "the same key: {text}"
    );
    let out = doorbot(&["enroll", "--door", "Front Door", "--config", cfg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a-z"));
}

#[test]
fn a_missing_or_wrong_config_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = doorbot(&["run", "--config", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.toml") && err.contains("examples/doorbot"),
        "{err}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "door = \"front\"\n").unwrap();
    let err = String::from_utf8_lossy(&doorbot(&["run", "-c", bad.to_str().unwrap()]).stderr)
        .into_owned();
    assert!(err.contains("missing field"), "{err}");
    // Run without a key: refused, naming enroll; the strike was set off first.
    let cfg = config(dir.path());
    let out = doorbot(&["run", "-c", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("doorbot enroll --door front"), "{err}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("strike off"), "{printed}");
    assert!(!printed.contains("strike on"), "{printed}");
    let out = doorbot(&["status", "-c", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has not run"));
}

#[test]
fn test_relay_switches_each_output_in_turn_and_lock_switches_all_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = doorbot(&["test-relay", "-c", cfg.to_str().unwrap(), "--secs", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seq: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect();
    let mut want: Vec<String> = ["strike", "green", "red", "beeper"]
        .iter()
        .map(|n| format!("{n} off"))
        .collect();
    for n in ["strike", "green", "red", "beeper"] {
        want.push(format!("{n} on"));
        want.push(format!("{n} off"));
    }
    want.extend(
        ["strike", "green", "red", "beeper"]
            .iter()
            .map(|n| format!("{n} off")),
    );
    assert_eq!(seq, want);
    let out = doorbot(&["lock", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(" on"), "{text}");
}

//! The light client stays light: a door controller on a Raspberry Pi links
//! `utter-client` (and with it `utter-formats`), so neither may pull in
//! RocksDB, gix, libcontainer or a terminal UI. `cargo tree` is the oracle.

use super::*;

/// The crates `package` links (normal dependencies, this workspace's lock).
fn linked(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
        ])
        .arg(package)
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_client_and_the_formats_link_no_rocksdb_gix_libcontainer_or_indicatif() {
    for package in ["utter-client", "utter-formats"] {
        let crates = linked(package);
        assert!(
            crates.iter().any(|c| c == "ssh-key"),
            "{package}'s tree was read: {crates:?}"
        );
        for c in &crates {
            let heavy = c.contains("rocksdb")
                || c == "gix"
                || c.starts_with("gix-")
                || c.contains("libcontainer")
                || c == "indicatif"
                || c == "tokio"
                || c.starts_with("utter-")
                    && !["utter-client", "utter-formats"].contains(&c.as_str());
            assert!(!heavy, "{package} links {c}");
        }
    }
}

/// The door controller on a Pi: the client, the formats and the doors
/// dapp's decision (which needs only the dapp SDK), nothing heavier.
#[test]
fn the_door_controller_links_the_client_and_the_doors_decision_only() {
    let crates = linked("utter-doorbot");
    for needed in ["utter-client", "utter-doors", "gpiocdev", "evdev"] {
        assert!(crates.iter().any(|c| c == needed), "{needed}: {crates:?}");
    }
    let allowed = [
        "utter-doorbot",
        "utter-client",
        "utter-formats",
        "utter-doors",
        "utter-membership",
        "utter-certifications",
        "utter-accounting",
        "utter-dapp-sdk",
    ];
    for c in &crates {
        let heavy = c.contains("rocksdb")
            || c == "gix"
            || c.starts_with("gix-")
            || c.contains("libcontainer")
            || c == "tokio"
            || c == "quinn"
            || c.starts_with("utter-") && !allowed.contains(&c.as_str());
        assert!(!heavy, "doorbot links {c}");
    }
}

//! Builds the built-in dapps as static executables and puts them in
//! `OUT_DIR`, so `utter init` can package each as an OCI image: one
//! `utter` binary carries its makerspace dapps.
//!
//! They are built by a nested `cargo rustc` with `-C
//! target-feature=+crt-static` (a dapp image holds one file and no libc)
//! into `<target>/dapps`, a target directory of its own, so the outer
//! build's lock is never waited for and later builds are incremental.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, binary) of every built-in dapp.
const DAPPS: [(&str, &str); 6] = [
    ("utter-membership", "membership"),
    ("utter-certifications", "certifications"),
    ("utter-doors", "doors"),
    ("utter-accounting", "accounting"),
    ("utter-leases", "leases"),
    ("utter-invariants", "invariants"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    for dir in [
        "dapps/sdk",
        "dapps/membership",
        "dapps/certifications",
        "dapps/doors",
        "dapps/accounting",
        "dapps/leases",
        "dapps/invariants",
    ] {
        println!("cargo:rerun-if-changed={}", manifest.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("Cargo.lock").display()
    );
    // OUT_DIR is <target>/<profile>/build/utter-<hash>/out.
    let target = out
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.join("target"))
        .join("dapps");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (package, bin) in DAPPS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&manifest)
            .args([
                "rustc",
                "--quiet",
                "--offline",
                "--locked",
                "-p",
                package,
                "--bin",
                bin,
            ])
            .arg("--target-dir")
            .arg(&target)
            .args([
                "--",
                "-C",
                "target-feature=+crt-static",
                "-C",
                "strip=symbols",
            ]);
        // The outer build's wrappers (clippy-driver) and its flags for the
        // build script are not for the dapps.
        for var in [
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET_DIR",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd.status().expect("cargo runs");
        assert!(
            status.success(),
            "building the built-in dapp {bin} statically failed"
        );
        let built = target.join("debug").join(bin);
        std::fs::copy(&built, out.join(bin)).expect("copy the built dapp into OUT_DIR");
    }
}

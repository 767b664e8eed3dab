//! Reproducible test data for utter's tests and benchmarks. A dev-dependency
//! only: no product crate links it.

use std::io::{self, Read};

/// An endless stream of incompressible bytes (xorshift64), the same for the
/// same seed.
#[derive(Debug, Clone)]
pub struct Noise {
    state: u64,
    /// Bytes of the current word not yet handed out.
    word: [u8; 8],
    used: usize,
}

impl Noise {
    /// A stream for `seed`; any seed works, including 0.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() && self.used < 8 {
            buf[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let mut words = buf[i..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word().to_le_bytes();
            rest.copy_from_slice(&self.word[..rest.len()]);
            self.used = rest.len();
        }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill(buf);
        Ok(buf.len())
    }
}

/// `len` incompressible bytes for `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    Noise::new(seed).fill(&mut out);
    out
}

/// The workspace of the test that runs now. Cargo sets `CARGO_MANIFEST_DIR`
/// for test processes; the path compiled in (`env!`) may belong to another
/// checkout that shares the target directory, because cargo reuses test
/// binaries across checkouts whose sources are identical.
pub fn workspace() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| {
            dir.ancestors()
                .find(|d| d.join("Cargo.lock").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("testkit is inside the workspace")
                .to_path_buf()
        })
}

/// Builds `bin` of workspace package `package` as a static executable (glibc,
/// `-C target-feature=+crt-static`) and returns its path: a program that
/// can be the only file of a container image. Built once per test process
/// into `<target>/static`, a target directory of its own so the ordinary
/// build is not disturbed.
pub fn static_binary(package: &str, bin: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    use std::sync::Mutex;
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(name, _)| name == bin) {
        return path.clone();
    }
    let workspace = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&workspace)
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
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {bin} statically failed");
    let path = target.join("debug").join(bin);
    built.push((bin.to_string(), path.clone()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_of_any_size_give_the_same_stream() {
        let whole = noise(10_000, 42);
        let mut n = Noise::new(42);
        let mut pieces = Vec::new();
        for size in (1..200).cycle() {
            let mut buf = vec![0; size.min(10_000 - pieces.len())];
            n.fill(&mut buf);
            pieces.extend_from_slice(&buf);
            if pieces.len() == 10_000 {
                break;
            }
        }
        assert_eq!(pieces, whole);
        assert_ne!(noise(64, 1), noise(64, 2));
    }

    #[test]
    fn noise_does_not_compress() {
        let data = noise(1 << 16, 7);
        let distinct = data.iter().collect::<std::collections::HashSet<_>>().len();
        assert_eq!(distinct, 256);
    }
}

//! kill -9 during ingest: nothing that was acknowledged is lost, and the
//! store verifies after every crash.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use std::path::{Path, PathBuf};

use super::*;

#[test]
fn kill_9_during_ingest_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut acknowledged: Vec<(String, PathBuf)> = Vec::new();
    let mut x: u64 = 0x1234_5678;
    let trials = 24;
    let mut killed_mid_put = 0;
    for trial in 0..trials {
        // Several new files per run, so the kill lands before, during and
        // between puts.
        let files: Vec<_> = (0..4)
            .map(|i| {
                let seed = (trial * 10 + i) as u64;
                file(
                    tmp.path(),
                    &format!("t{trial}-{i}"),
                    &noise((4 + 2 * i) << 20, seed),
                )
            })
            .collect();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % 250);

        let mut child = utter(&data)
            .args(["chunks", "put", "--json"])
            .args(&files)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let started = Instant::now();
        while started.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let lines = lines.join().unwrap();
        if !status.success() && lines.len() < files.len() {
            killed_mid_put += 1;
        }
        let new: Vec<(String, PathBuf)> = lines
            .iter()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap();
                (
                    v["manifest"].as_str().unwrap().to_string(),
                    v["file"].as_str().unwrap().into(),
                )
            })
            .collect();

        // After each crash the store opens, verifies, and every acknowledged
        // put reads back exactly.
        let out = run(utter(&data).args(["chunks", "verify"]));
        if data.join("db").exists() {
            assert!(
                out.status.success(),
                "trial {trial}: verify failed after kill at {delay:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (id, path) in &new {
            assert_reads_back(&data, id, path, trial);
        }
        acknowledged.extend(new);
    }
    // Later crashes did not disturb earlier acknowledged puts.
    for (id, path) in &acknowledged {
        assert_reads_back(&data, id, path, trials);
    }
    assert!(
        killed_mid_put >= trials / 3,
        "only {killed_mid_put} kills interrupted a put"
    );
    assert!(
        !acknowledged.is_empty(),
        "some puts completed before their kill"
    );
}

fn assert_reads_back(data: &Path, id: &str, path: &Path, trial: usize) {
    let got = utter(data).args(["chunks", "get", id]).output().unwrap();
    assert!(
        got.status.success(),
        "trial {trial}: acknowledged {id} unreadable: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(
        got.stdout == std::fs::read(path).unwrap(),
        "trial {trial}: {id} differs"
    );
}

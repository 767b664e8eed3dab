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

/// Runs `cmd`, kills it with SIGKILL after `delay` (or lets it finish);
/// whether it was killed before it finished.
fn kill_after(cmd: &mut Command, delay: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    child.wait().unwrap();
    !finished
}

/// After a kill during creation every command either opens the data dir or
/// says it holds no data yet; never anything half made.
fn opens_or_is_absent(data: &Path, args: &[&str], absent: &str, trial: &str) -> bool {
    let out = run(utter(data).args(args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains(absent),
        "{trial}: `utter {}` after the kill: {err}",
        args.join(" ")
    );
    out.status.success()
}

#[test]
fn kill_9_while_a_data_dir_is_created_leaves_none_or_a_whole_one() {
    let tmp = tempfile::tempdir().unwrap();
    let input = file(tmp.path(), "input", &noise(6 << 20, 7));
    let (mut killed_chunks, mut killed_init, mut complete) = (0, 0, 0);
    // Delays spread over the whole creation, from before RocksDB exists to
    // after the genesis block.
    for trial in 0..24u64 {
        let delay = Duration::from_millis(trial * trial * 3 / 2);
        let data = tmp.path().join(format!("chunks-{trial}"));
        if kill_after(utter(&data).args(["chunks", "put"]).arg(&input), delay) {
            killed_chunks += 1;
        }
        let name = format!("chunks put killed at {delay:?}");
        opens_or_is_absent(&data, &["chunks", "verify"], "no utter data in", &name);
        opens_or_is_absent(&data, &["chunks", "stats"], "no utter data in", &name);
        // A new put completes on whatever the kill left.
        ok(utter(&data).args(["chunks", "put"]).arg(&input));
        ok(utter(&data).args(["chunks", "verify"]));

        let data = tmp.path().join(format!("init-{trial}"));
        if kill_after(utter(&data).args(["init", "--chain", "c"]), delay * 3) {
            killed_init += 1;
        }
        let name = format!("init killed at {:?}", delay * 3);
        opens_or_is_absent(&data, &["chunks", "stats"], "no utter data in", &name);
        if opens_or_is_absent(&data, &["log"], "no ledger in", &name) {
            complete += 1;
        } else {
            // No chain yet: init again finishes the job with what is there.
            ok(utter(&data).args(["init", "--chain", "c"]));
        }
        let verified = ok(utter(&data).args(["verify"]));
        assert!(verified.contains("all valid"), "{name}: {verified}");
    }
    assert!(
        killed_chunks >= 4 && killed_init >= 4,
        "the kills should land during creation: chunks {killed_chunks}, init {killed_init}"
    );
    assert!(complete >= 1, "some inits finish before their kill");
}

//! `utter chunks …`

use std::io::Write;
use std::process::Stdio;

use serde_json::Value;

use super::*;

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn put_get_stats_verify_transcript() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let max = 256 << 10;
    let v1 = noise(5 << 20, 1);
    let mut v2 = v1.clone();
    v2.splice(1 << 20..1 << 20, *b"inserted");
    let inputs = [
        ("empty", Vec::new()),
        ("one-byte", vec![b'x']),
        ("boundaries", vec![0u8; 3 * max]),
        ("v1", v1),
        ("v2", v2),
    ];

    // $ utter chunks put empty one-byte boundaries v1 v2 --json
    let mut cmd = utter(&data);
    cmd.args(["chunks", "put", "--json"]);
    for (name, bytes) in &inputs {
        cmd.arg(file(tmp.path(), name, bytes));
    }
    let puts = json_lines(&ok(&mut cmd));
    assert_eq!(puts.len(), inputs.len());
    for (p, (name, bytes)) in puts.iter().zip(&inputs) {
        assert_eq!(p["size"], bytes.len() as u64, "{name}");
        assert_eq!(p["manifest"].as_str().unwrap().len(), 64);
    }
    assert_eq!(puts[0]["chunks"], 0, "an empty file has no chunks");
    assert_eq!(puts[1]["chunks"], 1);
    assert_eq!(puts[2]["chunks"], 3, "exactly three maximal chunks");
    assert_eq!(puts[2]["new_chunks"], 1, "the three are the same chunk");
    assert!(
        puts[4]["new_chunks"].as_u64().unwrap() <= 2,
        "v2 shares all but the edited chunk: {}",
        puts[4]
    );
    assert!(puts[4]["new_bytes"].as_u64().unwrap() < 600 << 10);

    // $ utter chunks get MANIFEST -o FILE   (and to stdout)
    for (p, (name, bytes)) in puts.iter().zip(&inputs) {
        let id = p["manifest"].as_str().unwrap();
        let out = tmp.path().join(format!("{name}.out"));
        ok(utter(&data).args(["chunks", "get", id, "-o"]).arg(&out));
        assert_eq!(&std::fs::read(&out).unwrap(), bytes, "{name}");
        let stdout = utter(&data).args(["chunks", "get", id]).output().unwrap();
        assert!(stdout.status.success());
        assert_eq!(&stdout.stdout, bytes, "{name} via stdout");
    }

    // $ utter chunks stats --json
    let stats: Value =
        serde_json::from_str(&ok(utter(&data).args(["chunks", "stats", "--json"]))).unwrap();
    let logical: u64 = inputs.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(stats["logical_bytes"], logical);
    assert_eq!(stats["manifests"], 5);
    let stored = stats["stored_bytes"].as_u64().unwrap();
    assert!(
        stored < logical - (5 << 20) + (1 << 20),
        "v2 and the zeros dedupe: {stats}"
    );
    let new_total: u64 = puts.iter().map(|p| p["new_bytes"].as_u64().unwrap()).sum();
    assert_eq!(stored, new_total, "new_bytes adds up to stored_bytes");

    // $ utter chunks verify
    let out = run(utter(&data).args(["chunks", "verify"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("all verify"));

    // Storing stdin gives the same manifest as the file.
    let mut child = utter(&data)
        .args(["chunks", "put", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&inputs[3].1).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        puts[3]["manifest"].as_str().unwrap()
    );
}

#[test]
fn bad_inputs_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // Nothing stored yet.
    let err = fails(utter(&data).args(["chunks", "stats"]));
    assert!(
        err.contains("no utter data in") && err.contains("chunks put"),
        "{err}"
    );
    assert!(!data.exists(), "reading must not create the data dir");

    // Missing and unreadable inputs; nothing is stored when one is bad.
    let good = file(tmp.path(), "good", b"hello");
    let err = fails(
        utter(&data)
            .args(["chunks", "put"])
            .arg(&good)
            .arg(tmp.path().join("nope")),
    );
    assert!(err.contains("cannot open") && err.contains("nope"), "{err}");
    assert!(!data.exists(), "a bad argument stores nothing");
    let err = fails(utter(&data).args(["chunks", "put"]).arg(tmp.path()));
    assert!(err.contains("is a directory"), "{err}");

    // Ids that are not ids, and ids that are not stored.
    ok(utter(&data).args(["chunks", "put"]).arg(&good));
    let err = fails(utter(&data).args(["chunks", "get", "xyz"]));
    assert!(err.contains("64 hex digits"), "{err}");
    let absent = "ab".repeat(32);
    let err = fails(utter(&data).args(["chunks", "get", &absent]));
    assert!(
        err.contains(&absent) && err.contains("not in the store"),
        "{err}"
    );
    let err = fails(utter(&data).args(["chunks", "unpin", &absent]));
    assert!(err.contains("not pinned"), "{err}");

    // Chunk sizes are fixed when the store is made.
    let other = tmp.path().join("other");
    ok(utter(&other)
        .args(["chunks", "put", "--chunking", "2K/8K/32K"])
        .arg(&good));
    let err = fails(
        utter(&other)
            .args(["chunks", "put", "--chunking", "16K/64K/256K"])
            .arg(&good),
    );
    assert!(
        err.contains("2K/8K/32K") && err.contains("16K/64K/256K"),
        "{err}"
    );
    ok(utter(&other).args(["chunks", "put"]).arg(&good));
    let err = fails(
        utter(&other)
            .args(["chunks", "put", "--chunking", "64K/16K/256K"])
            .arg(&good),
    );
    assert!(err.contains("MIN <= AVG <= MAX"), "{err}");
}

#[test]
fn a_store_in_use_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut holder = utter(&data)
        .args(["chunks", "put", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(&noise(1 << 20, 2)).unwrap();
    // Wait until the holder has the database open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let err = loop {
        let out = run(utter(&data).args(["chunks", "stats"]));
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        if text.contains("in use") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(err.contains("in use by another process"), "{err}");
    drop(stdin);
    assert!(holder.wait().unwrap().success());
    ok(utter(&data).args(["chunks", "verify"]));
}

#[test]
fn a_flipped_byte_on_disk_is_reported_by_get_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let input = file(tmp.path(), "in", &noise(8 << 20, 3));
    let id = ok(utter(&data).args(["chunks", "put"]).arg(&input))
        .trim()
        .to_string();
    // Reopening replays the write-ahead log into table and blob files.
    ok(utter(&data).args(["chunks", "verify"]));

    let blob = std::fs::read_dir(data.join("db"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "blob"))
        .expect("chunk bytes live in a RocksDB blob file");
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();

    let out = run(utter(&data).args(["chunks", "verify"]));
    assert!(!out.status.success(), "verify must fail");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("bad chunk "))
        .collect();
    assert_eq!(bad.len(), 1, "{report}");
    let chunk = &bad[0]["bad chunk ".len().."bad chunk ".len() + 64];
    assert!(report.contains(&format!("bad manifest {id}")), "{report}");

    let target = tmp.path().join("out");
    let err = fails(utter(&data).args(["chunks", "get", &id, "-o"]).arg(&target));
    assert!(err.contains(chunk) && err.contains("corrupt"), "{err}");
    assert!(!target.exists(), "no partial output");

    let json: Value = serde_json::from_str(&String::from_utf8_lossy(
        &run(utter(&data).args(["chunks", "verify", "--json"])).stdout,
    ))
    .unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["bad_chunks"][0]["id"], chunk);
}

#[test]
fn gc_removes_only_what_is_unpinned() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let a = file(tmp.path(), "a", &noise(2 << 20, 4));
    let b = file(tmp.path(), "b", &noise(2 << 20, 5));
    let ida = ok(utter(&data).args(["chunks", "put"]).arg(&a))
        .trim()
        .to_string();
    let idb = ok(utter(&data).args(["chunks", "put", "--no-pin"]).arg(&b))
        .trim()
        .to_string();
    let gc: Value =
        serde_json::from_str(&ok(utter(&data).args(["chunks", "gc", "--json"]))).unwrap();
    assert_eq!(gc["manifests"], 1);
    assert!(gc["bytes"].as_u64().unwrap() >= 2 << 20);
    fails(utter(&data).args(["chunks", "get", &idb]));
    ok(utter(&data)
        .args(["chunks", "get", &ida, "-o"])
        .arg(tmp.path().join("a.out")));
    assert_eq!(
        std::fs::read(tmp.path().join("a.out")).unwrap(),
        std::fs::read(&a).unwrap()
    );
    assert_eq!(
        ok(utter(&data).args(["chunks", "pins"])).trim(),
        format!("{ida} 1")
    );
    ok(utter(&data).args(["chunks", "unpin", &ida]));
    ok(utter(&data).args(["chunks", "gc"]));
    let stats: Value =
        serde_json::from_str(&ok(utter(&data).args(["chunks", "stats", "--json"]))).unwrap();
    assert_eq!(
        (stats["chunks"].as_u64(), stats["stored_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    // The space comes back to the file system, not just out of the counters.
    let on_disk: u64 = std::fs::read_dir(data.join("db"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(on_disk < 1 << 20, "{on_disk} bytes left after gc of 4 MiB");
}

#[test]
fn streaming_a_gigabyte_stays_under_256_mib_resident() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut child = utter(&data)
        .args(["chunks", "put", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..64 {
            stdin.write_all(&noise(16 << 20, 100 + i)).unwrap();
        }
    });
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak_kib = peak_kib.max(l.split_whitespace().nth(1).unwrap().parse().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let put: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(put["size"], 1u64 << 30);
    assert!(peak_kib > 0, "sampled the child's memory");
    assert!(peak_kib < 256 * 1024, "peak RSS {peak_kib} KiB");
}

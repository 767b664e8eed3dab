//! `utter run` and `utter dapp run`: a transcript of what a dapp author
//! types, with real containers (CI runs as root).

use std::io::Write;
use std::process::Stdio;

use super::*;

/// A data dir with `bb` (busybox with every applet, entrypoint /bin/sh),
/// `counter` (the Rust dapp, static) and `hello` (the busybox shell dapp).
pub(crate) fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let tree = dir.path().join("bb");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::create_dir_all(tree.join("dapp")).expect("mkdir");
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = tree.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).expect("symlink");
        }
    }
    ok(utter(&data).args(["image", "build"]).arg(&tree).args([
        "--entrypoint",
        "/bin/sh",
        "--tag",
        "bb",
    ]));
    std::fs::copy(
        utter_testkit::workspace().join("dapps/hello-sh/main.sh"),
        tree.join("dapp/main.sh"),
    )
    .expect("copy");
    ok(utter(&data).args(["image", "build"]).arg(&tree).args([
        "--entrypoint",
        r#"["/bin/sh","/dapp/main.sh"]"#,
        "--tag",
        "hello",
    ]));
    let counter = utter_testkit::static_binary("utter-counter", "counter");
    ok(utter(&data)
        .args(["image", "build", "--binary"])
        .arg(counter)
        .args(["--tag", "counter"]));
    dir
}

fn tx(action: &str, args: &str, nonce: u32) -> String {
    format!(
        r#"{{"sig":"-","tx":{{"action":"{action}","args":{args},"chain":"local","dapp":"d","nonce":{nonce},"signer":"ssh-ed25519 AAAAk","time":1,"v":1}}}}"#
    )
}

#[test]
fn run_passes_stdio_and_exit_code_through() {
    let dir = setup();
    let data = dir.path().join("data");
    let mut child = utter(&data)
        .args([
            "run",
            "bb",
            "--",
            "/bin/sh",
            "-c",
            "tr a-z A-Z; echo to-stderr >&2; exit 42",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"shout\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));

    // The image's own entrypoint and cmd when no command is given.
    let out = run(utter(&data).args(["run", "bb"]).stdin(Stdio::null()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_reports_limits_and_bad_input() {
    let dir = setup();
    let data = dir.path().join("data");
    let out = run(utter(&data).args([
        "run",
        "--timeout",
        "300ms",
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "while :; do :; done",
    ]));
    assert_eq!(out.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&out.stderr).contains("time limit"));

    let out = run(utter(&data).args([
        "run",
        "--json",
        "--pids",
        "8",
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "while :; do sleep 9 & done",
    ]));
    assert_eq!(out.status.code(), Some(125));
    let json = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["outcome"], "pids-limit", "{json}");
    assert!(v["message"].as_str().expect("message").contains("--pids"));

    let json = ok(utter(&data).args(["run", "--json", "bb", "--", "/bin/echo", "hi"]));
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(
        (v["outcome"].as_str(), v["stdout"].as_str()),
        (Some("exited"), Some("hi\n"))
    );

    let err = fails(utter(&data).args(["run", "bb", "--", "/no/such"]));
    assert!(err.contains("the image has no /no/such"), "{err}");
    let err = fails(utter(&data).args(["run", "nope", "--", "true"]));
    assert!(err.contains("no image `nope`"), "{err}");
    let err = fails(utter(&data).args(["run", "--memory", "lots", "bb"]));
    assert!(err.contains("is not a size"), "{err}");
    let err = fails(utter(&data).args(["run", "--cpus", "0", "bb"]));
    assert!(err.contains("--cpus"), "{err}");
}

#[test]
fn dapp_run_applies_a_block_to_a_state_directory() {
    let dir = setup();
    let data = dir.path().join("data");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let txs = [
        tx("add", r#"{"name":"visits","by":5}"#, 1),
        tx("add", r#"{"name":"visits"}"#, 2),
        tx("add", r#"{"name":"NO"}"#, 3),
    ]
    .join("\n");
    let txs = file(dir.path(), "txs.jsonl", format!("{txs}\n").as_bytes());
    let dapp = |extra: &[&str]| {
        let mut c = utter(&data);
        c.args(["dapp", "run", "counter", "--state"])
            .arg(&state)
            .arg("--txs")
            .arg(&txs)
            .args(extra);
        c
    };
    // --dry-run prints the results and leaves the state alone.
    let out = ok(&mut dapp(&["--dry-run"]));
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(!state.join("counters").exists());

    let out = ok(&mut dapp(&[]));
    let results: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(results[0]["output"], 5);
    assert_eq!(results[1]["output"], 6);
    assert_eq!(results[2]["status"], "rejected");
    assert_eq!(
        std::fs::read_to_string(state.join("counters/visits")).expect("state"),
        "6"
    );

    let json = ok(&mut dapp(&["--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["results"][1]["output"], 12);
    assert_eq!(v["changes"][1]["path"], "counters/visits");
    assert_eq!(v["state_written"], true);

    // The test entry: a damaged counter fails it and nothing is written.
    ok(utter(&data)
        .args(["dapp", "run", "counter", "--entry", "test", "--state"])
        .arg(&state));
    std::fs::write(state.join("counters/bad"), "x").expect("write");
    let err = fails(
        utter(&data)
            .args(["dapp", "run", "counter", "--entry", "test", "--state"])
            .arg(&state),
    );
    assert!(err.contains("counters/bad does not hold a number"), "{err}");
}

#[test]
fn dapp_run_any_language_and_bad_input() {
    let dir = setup();
    let data = dir.path().join("data");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let txs = file(
        dir.path(),
        "txs.jsonl",
        format!(
            "{}\n{}\n",
            tx("hello", r#"{"name":"Ada"}"#, 1),
            tx("hello", r#"{"name":"Linus"}"#, 2)
        )
        .as_bytes(),
    );
    let out = ok(utter(&data)
        .args(["dapp", "run", "hello", "--state"])
        .arg(&state)
        .arg("--txs")
        .arg(&txs));
    assert!(
        out.contains("hello, Ada") && out.contains("hello, Linus"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("greetings")).expect("state"),
        "2\n"
    );

    // A dapp that fails leaves the state as it was.
    let before = std::fs::read(state.join("greetings")).expect("read");
    let err = fails(
        utter(&data)
            .args(["dapp", "run", "bb", "--state"])
            .arg(&state)
            .arg("--txs")
            .arg(&txs),
    );
    assert!(err.contains("state left as it was"), "{err}");
    assert_eq!(
        std::fs::read(state.join("greetings")).expect("read"),
        before
    );

    let bad = file(dir.path(), "bad.jsonl", b"{\"ok\":1}\nnot json\n");
    let err = fails(
        utter(&data)
            .args(["dapp", "run", "hello", "--state"])
            .arg(&state)
            .arg("--txs")
            .arg(&bad),
    );
    assert!(
        err.contains("line 2") && err.contains("is not JSON"),
        "{err}"
    );
    let err = fails(
        utter(&data)
            .args(["dapp", "run", "hello", "--txs"])
            .arg(&txs)
            .arg("--state")
            .arg(dir.path().join("nope")),
    );
    assert!(err.contains("does not exist"), "{err}");
    let err = fails(
        utter(&data)
            .args(["dapp", "run", "hello", "--state"])
            .arg(&state),
    );
    assert!(err.contains("--txs"), "{err}");
    let ctx = file(dir.path(), "ctx.json", b"{\"height\":1}");
    let err = fails(
        utter(&data)
            .args(["dapp", "run", "hello", "--entry", "test", "--context"])
            .arg(&ctx)
            .arg("--state")
            .arg(&state),
    );
    assert!(err.contains("is not a dapp context"), "{err}");
}

//! The dapp protocol: /state overlay, /block, results, changed paths.

use std::fs;
use std::path::Path;

use utter_runtime::dapp::{Change, ChangeKind, Context, DappRun, Entry, Invocation, invoke};
use utter_runtime::spec::DEFAULT_PATH;
use utter_runtime::{Limits, Outcome};

use crate::{env, rootfs, shared, text};

fn context(entry: Entry) -> Context {
    Context {
        chain: "test".into(),
        dapp: "counter".into(),
        entry,
        height: 4,
        time: 1_700_000_000,
        parent: "00".repeat(20),
        proposer: "ssh-ed25519 AAAAtest".into(),
    }
}

/// A transaction line as the ledger writes it (the signature is not
/// checked by dapps; the executor has done that).
fn tx(action: &str, args: &str) -> String {
    format!(
        r#"{{"sig":"-----BEGIN SSH SIGNATURE-----","tx":{{"action":"{action}","args":{args},"chain":"test","dapp":"counter","nonce":1,"signer":"ssh-ed25519 AAAAk","time":1,"v":1}}}}"#
    )
}

fn invocation(command: &[&str], state: &Path, entry: Entry, txs: &[String]) -> Invocation {
    Invocation {
        rootfs: rootfs().to_path_buf(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: vec![DEFAULT_PATH.into()],
        cwd: "/".into(),
        state: state.to_path_buf(),
        chain: None,
        context: context(entry),
        txs: txs
            .iter()
            .map(|t| format!("{t}\n"))
            .collect::<String>()
            .into_bytes(),
        limits: Limits::default(),
        scratch: 64 << 20,
        changed: None,
    }
}

/// Insists the dapp exited 0, showing its stderr otherwise.
fn succeeded(run: &DappRun) {
    assert_eq!(
        run.finished.outcome,
        Outcome::Exited(0),
        "{}",
        text(&run.finished.stderr)
    );
}

/// The results lines, parsed.
fn results(run: &DappRun) -> Vec<serde_json::Value> {
    text(&run.results)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = fs::read_dir(dir).expect("read").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("inside").display().to_string();
            if p.is_dir() {
                out.push((rel, "/".into()));
                walk(base, &p, out);
            } else {
                out.push((rel, fs::read_to_string(&p).expect("read")));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

#[test]
fn counter_applies_a_block_and_reports_changed_paths() {
    let _g = shared();
    let e = env();
    let state = e.dir.path().join("state");
    fs::create_dir_all(state.join("counters")).expect("mkdir");
    fs::write(state.join("counters/visits"), "5").expect("write");
    fs::write(state.join("counters/old"), "9").expect("write");
    let before = tree(&state);
    let txs = [
        tx("add", r#"{"name":"visits","by":2}"#),
        tx("add", r#"{"name":"new"}"#),
        tx("add", r#"{"name":"Bad Name"}"#),
        tx("reset", r#"{"name":"old"}"#),
        tx("fly", r#"{"name":"visits"}"#),
        tx("add", r#"{"name":"visits","by":18446744073709551615}"#),
    ];
    let run = invoke(
        &e.rt,
        &invocation(&["/counter"], &state, Entry::Apply, &txs),
    )
    .expect("invoke");
    succeeded(&run);
    let results = results(&run);
    assert_eq!(results.len(), txs.len());
    assert_eq!(
        results[0],
        serde_json::json!({"status": "accepted", "output": 7})
    );
    assert_eq!(
        results[1],
        serde_json::json!({"status": "accepted", "output": 1})
    );
    assert_eq!(results[2]["status"], "rejected");
    assert_eq!(results[3], serde_json::json!({"status": "accepted"}));
    assert!(
        results[4]["reason"]
            .as_str()
            .expect("reason")
            .contains("unknown action")
    );
    assert!(
        results[5]["reason"]
            .as_str()
            .expect("reason")
            .contains("overflow")
    );
    assert_eq!(
        run.changes,
        vec![
            Change {
                path: "counters".into(),
                kind: ChangeKind::Dir { opaque: false }
            },
            Change {
                path: "counters/new".into(),
                kind: ChangeKind::File { executable: false }
            },
            Change {
                path: "counters/old".into(),
                kind: ChangeKind::Removed
            },
            Change {
                path: "counters/visits".into(),
                kind: ChangeKind::File { executable: false }
            },
        ]
    );
    assert_eq!(run.file("counters/visits").expect("file"), b"7");
    // The lower state is untouched until the caller applies the changes.
    assert_eq!(tree(&state), before);
    run.apply_to(&state).expect("apply");
    assert_eq!(
        tree(&state),
        vec![
            ("counters".into(), "/".into()),
            ("counters/new".into(), "1".into()),
            ("counters/visits".into(), "7".into()),
        ]
    );
}

#[test]
fn counter_test_entry_checks_invariants() {
    let _g = shared();
    let e = env();
    let state = e.dir.path().join("state");
    fs::create_dir_all(state.join("counters")).expect("mkdir");
    fs::write(state.join("counters/a"), "12").expect("write");
    let ok = invoke(&e.rt, &invocation(&["/counter"], &state, Entry::Test, &[])).expect("invoke");
    succeeded(&ok);
    assert!(ok.changes.is_empty());
    fs::write(state.join("counters/b"), "twelve").expect("write");
    let bad = invoke(&e.rt, &invocation(&["/counter"], &state, Entry::Test, &[])).expect("invoke");
    assert_eq!(bad.finished.outcome, Outcome::Exited(1));
    assert!(text(&bad.finished.stderr).contains("counters/b does not hold a number"));
}

#[test]
fn hello_sh_is_a_dapp_in_shell() {
    let _g = shared();
    let e = env();
    let state = e.dir.path().join("state");
    fs::create_dir_all(&state).expect("mkdir");
    let txs = [
        tx("hello", r#"{"name":"Ada"}"#),
        tx("hello", r#"{"name":"x\"y"}"#),
        tx("wave", r#"{"name":"Bob"}"#),
        tx("hello", r#"{"name":"Grace Hopper"}"#),
    ];
    let cmd = ["/bin/sh", "/dapp/main.sh"];
    let run = invoke(&e.rt, &invocation(&cmd, &state, Entry::Apply, &txs)).expect("invoke");
    succeeded(&run);
    let lines = results(&run);
    assert_eq!(lines[0]["output"], "hello, Ada");
    assert_eq!(lines[1]["status"], "rejected");
    assert_eq!(lines[2]["status"], "rejected");
    assert_eq!(lines[3]["output"], "hello, Grace Hopper");
    run.apply_to(&state).expect("apply");
    assert_eq!(
        fs::read_to_string(state.join("greetings")).expect("read"),
        "2\n"
    );
    assert_eq!(
        fs::read_to_string(state.join("guests")).expect("read"),
        "Ada\nGrace Hopper\n"
    );
    let test = invoke(&e.rt, &invocation(&cmd, &state, Entry::Test, &[])).expect("invoke");
    succeeded(&test);
}

#[test]
fn overlay_records_whiteouts_opaque_dirs_links_and_modes() {
    let _g = shared();
    let e = env();
    let state = e.dir.path().join("state");
    fs::create_dir_all(state.join("d/sub")).expect("mkdir");
    fs::write(state.join("d/sub/gone"), "x").expect("write");
    fs::write(state.join("keep"), "k").expect("write");
    fs::write(state.join("rm-me"), "r").expect("write");
    let script = "[ \"$1\" = apply ] || exit 9; cd /state && rm -rf d && mkdir d && echo n > d/new && \
                  rm rm-me && ln -s keep link && echo '#!' > tool && chmod 755 tool && \
                  : > /block/results.jsonl";
    let run = invoke(
        &e.rt,
        &invocation(
            &["/bin/sh", "-c", script, "dapp"],
            &state,
            Entry::Apply,
            &[],
        ),
    )
    .expect("invoke");
    succeeded(&run);
    let kinds: Vec<(&str, &ChangeKind)> = run
        .changes
        .iter()
        .map(|c| (c.path.as_str(), &c.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("d", &ChangeKind::Dir { opaque: true }),
            ("d/new", &ChangeKind::File { executable: false }),
            (
                "link",
                &ChangeKind::Symlink {
                    target: "keep".into()
                }
            ),
            ("rm-me", &ChangeKind::Removed),
            ("tool", &ChangeKind::File { executable: true }),
        ]
    );
    run.apply_to(&state).expect("apply");
    assert!(!state.join("d/sub").exists());
    assert!(!state.join("rm-me").exists());
    assert_eq!(
        fs::read_link(state.join("link")).expect("link").to_str(),
        Some("keep")
    );
}

#[test]
fn block_is_read_only_but_results_and_state_are_not() {
    let _g = shared();
    let e = env();
    let state = e.dir.path().join("state");
    fs::create_dir_all(&state).expect("mkdir");
    let script = "cat /block/context.json; echo; echo x >> /block/txs.jsonl 2>&1 || echo txs-ro; \
                  touch /block/new 2>/dev/null || echo block-ro; echo '{\"status\":\"accepted\"}' > /block/results.jsonl";
    let run = invoke(
        &e.rt,
        &invocation(
            &["/bin/sh", "-c", script, "dapp"],
            &state,
            Entry::Apply,
            &[tx("a", "{}")],
        ),
    )
    .expect("invoke");
    let out = text(&run.finished.stdout);
    assert!(
        out.contains("\"height\":4") && out.contains("\"entry\":\"apply\""),
        "{out}"
    );
    assert!(out.contains("txs-ro") && out.contains("block-ro"), "{out}");
    assert_eq!(text(&run.results), "{\"status\":\"accepted\"}\n");
}

#[test]
fn writing_more_than_the_scratch_space_fails_the_dapp_not_the_disk() {
    let _g = shared();
    let e = env();
    let state = e.dir.path().join("state");
    fs::create_dir_all(&state).expect("mkdir");
    let mut inv = invocation(
        &[
            "/bin/sh",
            "-c",
            "head -c 100000000 /dev/zero > /state/big",
            "dapp",
        ],
        &state,
        Entry::Apply,
        &[],
    );
    inv.scratch = 4 << 20;
    let run = invoke(&e.rt, &inv).expect("invoke");
    assert_eq!(run.finished.outcome, Outcome::Exited(1));
    assert!(
        text(&run.finished.stderr).contains("error"),
        "{}",
        text(&run.finished.stderr)
    );
}

#[test]
fn a_missing_state_directory_is_a_clear_error() {
    let _g = shared();
    let e = env();
    let err = invoke(
        &e.rt,
        &invocation(&["/counter"], &e.dir.path().join("nope"), Entry::Apply, &[]),
    )
    .expect_err("no state dir");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn the_helper_runs_invocations_with_chain_state_and_answers_bad_requests() {
    let _g = shared();
    let e = env();
    let state = e.dir.path().join("state");
    let chain = e.dir.path().join("chain");
    fs::create_dir_all(&state).expect("mkdir");
    fs::create_dir_all(chain.join("other")).expect("mkdir");
    fs::write(chain.join("other/x"), "from another dapp").expect("write");
    let mut reads = invocation(
        &[
            "/bin/sh",
            "-c",
            "touch /chain/other/y 2>/dev/null && exit 9; \
             cat /chain/other/x > /state/seen; \
             echo '{\"status\":\"accepted\"}' > /block/results.jsonl",
            "dapp",
        ],
        &state,
        Entry::Apply,
        &[tx("look", "{}")],
    );
    reads.chain = Some(chain.clone());
    let missing = invocation(
        &["/bin/true"],
        &e.dir.path().join("nope"),
        Entry::Apply,
        &[],
    );
    let mut input = String::from("not a request\n");
    for inv in [&reads, &missing] {
        input.push_str(&serde_json::json!({ "invoke": inv_json(inv) }).to_string());
        input.push('\n');
    }
    input.push_str("{\"release\":1}\n");
    let mut output = Vec::new();
    utter_runtime::helper::serve(&e.rt, input.as_bytes(), &mut output).expect("serve");
    let answers: Vec<serde_json::Value> = text(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each answer is JSON"))
        .collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(
        answers[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read this request")),
        "{answers:?}"
    );
    let ran = &answers[1]["ran"];
    assert_eq!(
        ran["finished"]["outcome"],
        serde_json::json!({"exited": 0}),
        "{ran}"
    );
    assert_eq!(ran["changes"][0]["path"], "seen", "{ran}");
    let upper = std::path::PathBuf::from(ran["upper"].as_str().expect("upper"));
    assert!(
        !upper.exists(),
        "released and dropped runs leave no scratch behind"
    );
    assert!(
        answers[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot use") && e.contains("nope")),
        "{answers:?}"
    );
    assert!(!chain.join("other/y").exists(), "/chain is read-only");
    assert!(
        !state.join("seen").exists(),
        "the lower state is never changed"
    );
}

fn inv_json(inv: &Invocation) -> serde_json::Value {
    serde_json::to_value(inv).expect("an invocation serializes")
}

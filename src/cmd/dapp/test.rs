//! `utter dapp test` (a project's fixtures through a real container) and
//! `utter dapp check` (the protocol's conformance checks on any image).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use utter_formats::Keypair;
use utter_formats::tx::{Request, sign_requests};
use utter_node::{Home, Need};
use utter_runtime::Helper;
use utter_runtime::dapp::Entry;

use super::project::{
    Keys, PROJECT_FILE, Project, Runnable, Scratch, diff_results, diff_trees, expected_results,
    fixture_txs, result_lines, tree,
};
use crate::container::finished_json;
use crate::files::copy_tree;

/// Arguments of `utter dapp test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// The project directory [default: the current directory]
    dir: Option<PathBuf>,
    /// Write what the dapp did as the fixtures' expected results and
    /// state (review the change with your version control)
    #[arg(long)]
    update: bool,
    /// Print one JSON object: the checks and fixtures with their diffs
    #[arg(long)]
    json: bool,
}

/// Arguments of `utter dapp check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// A project directory, or an image in the data dir (tag, digest or
    /// digest prefix)
    target: String,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

/// One conformance check or fixture, and what went wrong.
#[derive(Debug, Serialize)]
struct Verdict {
    name: String,
    passed: bool,
    /// Why not, one line per difference.
    problems: Vec<String>,
}

impl Verdict {
    fn new(name: impl Into<String>, problems: Vec<String>) -> Self {
        Self {
            name: name.into(),
            passed: problems.is_empty(),
            problems,
        }
    }
}

fn print(verdicts: &[Verdict], json: bool, what: &str) -> Result<u8> {
    let failed = verdicts.iter().filter(|v| !v.passed).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "passed": failed == 0,
                "checks": verdicts,
            }))?
        );
    } else {
        for v in verdicts {
            println!("{} {}", if v.passed { "ok  " } else { "FAIL" }, v.name);
            for p in &v.problems {
                for line in p.lines() {
                    println!("       {line}");
                }
            }
        }
        println!(
            "{what}: {} passed, {failed} failed",
            verdicts.len() - failed
        );
    }
    Ok(u8::from(failed > 0))
}

/// A fresh empty state directory.
fn empty_state(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Why a finished run is not a success, with the tail of its stderr.
fn failure(ran: &utter_runtime::Ran) -> Option<String> {
    if ran.finished.outcome.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&ran.finished.stderr);
    let tail: String = err
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Some(format!(
        "{}: {tail}",
        finished_json(&ran.finished)["outcome"]
    ))
}

/// Whether a result line is what the protocol allows: an object with
/// `status` accepted or rejected, a `reason` string when rejected, and
/// nothing but `status`, `reason` and `output`.
fn result_problem(line: &Value) -> Option<String> {
    let Some(obj) = line.as_object() else {
        return Some(format!("{line} is not a JSON object"));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "status" | "reason" | "output"))
    {
        return Some(format!(
            "{line} has field {k:?}; only status, reason and output are allowed"
        ));
    }
    match obj.get("status").and_then(Value::as_str) {
        Some("accepted") => None,
        Some("rejected") if obj.get("reason").is_some_and(Value::is_string) => None,
        Some("rejected") => Some(format!("{line} is rejected without a reason string")),
        _ => Some(format!("{line} has no status \"accepted\" or \"rejected\"")),
    }
}

/// The conformance checks of `docs/dapp-protocol.md` on one image.
fn conformance(helper: &mut Helper, dapp: &Runnable, scratch: &Path) -> Result<Vec<Verdict>> {
    let mut out = Vec::new();
    // 1. An empty block.
    let state = empty_state(scratch, "conform-empty")?;
    let ran = dapp.invoke(helper, Entry::Apply, &state, None, Vec::new(), 1)?;
    let mut problems: Vec<String> = failure(&ran).into_iter().collect();
    let lines = result_lines(&ran)?;
    if problems.is_empty() && !lines.is_empty() {
        problems.push(format!(
            "it wrote {} result lines for no transaction",
            lines.len()
        ));
    }
    helper.release(ran)?;
    out.push(Verdict::new(
        "apply with no transactions exits 0 and writes no result",
        problems,
    ));

    // 2. Actions no dapp knows: one rejected line each, twice the same.
    let key = Keypair::generate("conformance")?;
    let unknown = |n: u64| Request {
        dapp: dapp.name.clone(),
        action: format!("utter-conformance-unknown-{n}"),
        args: serde_json::json!({"n": n}),
    };
    let lines = sign_requests(&key, "fixtures", 1, 1_735_689_600, (1..=2).map(unknown))?;
    let txs = format!("{}\n", lines.join("\n")).into_bytes();
    let mut runs = Vec::new();
    for round in 0..2 {
        let state = empty_state(scratch, &format!("conform-unknown-{round}"))?;
        let ran = dapp.invoke(helper, Entry::Apply, &state, None, txs.clone(), 1)?;
        let problem = failure(&ran);
        let results = result_lines(&ran)?;
        let changes: BTreeMap<String, Vec<u8>> = ran
            .changes
            .iter()
            .map(|c| {
                let bytes = ran.file(&c.path).unwrap_or_default();
                (format!("{} {:?}", c.path, c.kind), bytes)
            })
            .collect();
        helper.release(ran)?;
        runs.push((problem, results, changes));
    }
    let (problem, results, _) = &runs[0];
    let mut problems: Vec<String> = problem.iter().cloned().collect();
    if problems.is_empty() {
        if results.len() != 2 {
            problems.push(format!(
                "it wrote {} result lines for 2 transactions; the protocol wants one per transaction",
                results.len()
            ));
        }
        for line in results {
            if let Some(p) = result_problem(line) {
                problems.push(p);
            } else if line["status"] != "rejected" {
                problems.push(format!("an unknown action was not rejected: {line}"));
            }
        }
    }
    out.push(Verdict::new(
        "apply rejects each unknown action with one well-formed result line",
        problems,
    ));
    let same = runs[0].1 == runs[1].1 && runs[0].2 == runs[1].2;
    out.push(Verdict::new(
        "the same block twice gives the same results and state",
        if same {
            Vec::new()
        } else {
            vec!["two runs of one block differ: the dapp is not deterministic".to_string()]
        },
    ));

    // 3. The invariants hold on an empty state.
    let state = empty_state(scratch, "conform-test")?;
    let ran = dapp.invoke(helper, Entry::Test, &state, None, Vec::new(), 1)?;
    let problems: Vec<String> = failure(&ran).into_iter().collect();
    helper.release(ran)?;
    out.push(Verdict::new("test on an empty state exits 0", problems));
    Ok(out)
}

/// `utter dapp check`.
pub fn check(home: &Home, args: CheckArgs) -> Result<u8> {
    let dir = Path::new(&args.target);
    let work = tempfile::tempdir()?;
    if dir.join(PROJECT_FILE).is_file() {
        let project = Project::open(dir)?;
        let scratch = Scratch::new()?;
        let image = project.build_image(&scratch.images, args.json)?;
        let dapp = Runnable::of(&scratch.images, &image, &project.file.name)?;
        let mut helper = scratch.home.spawn_helper()?;
        let verdicts = conformance(&mut helper, &dapp, work.path())?;
        return print(&verdicts, args.json, "conformance");
    }
    if dir.is_dir() {
        bail!(
            "{} has no {PROJECT_FILE}: give a dapp project directory or an image of the data dir",
            dir.display()
        );
    }
    let store = home.store(Need::Images, false, true, None)?;
    let images = home.images(&store)?;
    let image = images.get(&args.target)?;
    // A tag `utter/membership:v2` names the dapp `membership`.
    let name = image
        .tags
        .first()
        .and_then(|t| t.rsplit('/').next())
        .map(|t| t.split(':').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| "dapp".to_string());
    let dapp = Runnable::of(&images, &image, &name)?;
    let mut helper = home.spawn_helper()?;
    let verdicts = conformance(&mut helper, &dapp, work.path())?;
    print(&verdicts, args.json, "conformance")
}

/// The fixture directories, in name order.
fn fixtures(project: &Project) -> Result<Vec<PathBuf>> {
    let dir = project.dir.join("fixtures");
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "keys" && n != "chain"))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    Ok(out)
}

/// `utter dapp test`.
pub fn test(args: TestArgs) -> Result<u8> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let project = Project::open(&dir)?;
    let scratch = Scratch::new()?;
    let image = project.build_image(&scratch.images, args.json)?;
    let dapp = Runnable::of(&scratch.images, &image, &project.file.name)?;
    let mut helper = scratch.home.spawn_helper()?;
    let work = tempfile::tempdir()?;
    let mut verdicts = conformance(&mut helper, &dapp, work.path())?;

    let keys = Keys::load(&project.dir.join("fixtures/keys"))?;
    let mut nonces = BTreeMap::new();
    let state = empty_state(work.path(), "state")?;
    let fixtures = fixtures(&project)?;
    if fixtures.is_empty() {
        verdicts.push(Verdict::new(
            "fixtures",
            vec![
                "there are no fixtures: add fixtures/01-NAME/txs.jsonl (see `utter dapp new`)"
                    .into(),
            ],
        ));
    }
    for (i, fixture) in fixtures.iter().enumerate() {
        let name = fixture
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let height = i as u64 + 1;
        let before = fixture.join("before");
        if before.is_dir() {
            std::fs::remove_dir_all(&state)?;
            copy_tree(&before, &state)?;
        }
        // Other dapps' state at /chain: the fixture's own, else the shared one.
        let chain = [fixture.join("chain"), project.dir.join("fixtures/chain")]
            .into_iter()
            .find(|d| d.is_dir())
            .unwrap_or_default();
        let txs = fixture_txs(
            &fixture.join("txs.jsonl"),
            &project.file.name,
            &keys,
            &mut nonces,
            height,
        )
        .with_context(|| format!("fixture {name}"))?;
        let ran = dapp.invoke(
            &mut helper,
            Entry::Apply,
            &state,
            (!chain.as_os_str().is_empty()).then_some(chain.as_path()),
            txs,
            height,
        )?;
        let mut problems = Vec::new();
        if let Some(why) = failure(&ran) {
            problems.push(format!("apply failed {why}"));
            helper.release(ran)?;
            verdicts.push(Verdict::new(format!("fixture {name}"), problems));
            continue;
        }
        let actual = result_lines(&ran)?;
        ran.apply_to(&state)
            .with_context(|| format!("fixture {name}: cannot write the new state"))?;
        helper.release(ran)?;
        let results_file = fixture.join("results.jsonl");
        let after = fixture.join("after");
        if args.update {
            let text: String = actual.iter().map(|v| format!("{v}\n")).collect();
            std::fs::write(&results_file, text)?;
            let _ = std::fs::remove_dir_all(&after);
            copy_tree(&state, &after)?;
        }
        match expected_results(&results_file)? {
            Some(expected) => problems.extend(diff_results(&expected, &actual)),
            None => problems.push(format!(
                "no results.jsonl: write the expected result lines (or run with --update); got {} lines",
                actual.len()
            )),
        }
        if after.is_dir() {
            problems.extend(diff_trees(&tree(&after)?, &tree(&state)?));
        }
        let ran = dapp.invoke(
            &mut helper,
            Entry::Test,
            &state,
            (!chain.as_os_str().is_empty()).then_some(chain.as_path()),
            Vec::new(),
            height,
        )?;
        if let Some(why) = failure(&ran) {
            problems.push(format!("test failed on the new state {why}"));
        }
        helper.release(ran)?;
        verdicts.push(Verdict::new(format!("fixture {name}"), problems));
    }
    if !args.json {
        eprintln!(
            "image {} ({})",
            image.id,
            crate::ui::human(image.layers.iter().map(|l| l.size).sum())
        );
    }
    print(&verdicts, args.json, &format!("dapp {}", project.file.name))
}

//! {{name}}: an utter dapp in Rust.
//!
//! apply: each transaction `greet {"name": "Ada"}` appends the name to
//!        /state/guests and counts greetings in /state/greetings; its
//!        output is "hello, Ada". Names are 1-32 letters, digits, space,
//!        - or _.
//! test:  /state/greetings equals the number of lines in /state/guests.

use std::fs;
use std::process::ExitCode;

use serde_json::{Value, json};

fn dir(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn valid(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" _-".contains(&b))
}

fn count(state: &str) -> u64 {
    fs::read_to_string(format!("{state}/greetings"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn apply() -> Result<(), String> {
    let state = dir("UTTER_STATE", "/state");
    let block = dir("UTTER_BLOCK", "/block");
    let txs = fs::read_to_string(format!("{block}/txs.jsonl"))
        .map_err(|e| format!("cannot read the transactions: {e}"))?;
    let mut n = count(&state);
    let mut added = String::new();
    let mut results = String::new();
    for line in txs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("a transaction is not JSON: {e}"))?;
        let tx = &v["tx"];
        let result = if tx["action"] != "greet" {
            json!({"status": "rejected", "reason": "unknown action: this dapp knows greet"})
        } else {
            match tx["args"]["name"].as_str() {
                Some(name) if valid(name) => {
                    n += 1;
                    added.push_str(name);
                    added.push('\n');
                    json!({"status": "accepted", "output": format!("hello, {name}")})
                }
                _ => json!({"status": "rejected",
                            "reason": "args.name must be 1-32 letters, digits, space, - or _"}),
            }
        };
        results.push_str(&result.to_string());
        results.push('\n');
    }
    let io = |e: std::io::Error| e.to_string();
    if !added.is_empty() {
        let mut guests = fs::read_to_string(format!("{state}/guests")).unwrap_or_default();
        guests.push_str(&added);
        fs::write(format!("{state}/guests"), guests).map_err(io)?;
    }
    fs::write(format!("{state}/greetings"), format!("{n}\n")).map_err(io)?;
    fs::write(format!("{block}/results.jsonl"), results).map_err(io)
}

fn test() -> Result<(), String> {
    let state = dir("UTTER_STATE", "/state");
    let n = count(&state);
    let lines = fs::read_to_string(format!("{state}/guests"))
        .unwrap_or_default()
        .lines()
        .count() as u64;
    if n != lines {
        return Err(format!("greetings says {n} but guests has {lines} lines"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let done = match std::env::args().nth(1).as_deref() {
        Some("apply") => apply(),
        Some("test") => test(),
        _ => {
            eprintln!("usage: {{name}} apply|test");
            return ExitCode::from(2);
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
    }
}

//! `counter`: an example dapp. State: one file per counter,
//! `counters/<name>`, holding its value in decimal.
//!
//! Actions:
//! - `add {"name": "visits", "by": 3}`: adds `by` (default 1) to the
//!   counter; the output is the new value. Rejected when the name is not
//!   1–64 of `[a-z0-9_-]`, `by` is not a whole number, or the sum overflows.
//! - `reset {"name": "visits"}`: removes the counter.
//!
//! `test` checks that every counter holds a number.
//!
//! Build it statically and package it:
//! ```text
//! cargo rustc -p utter-counter --bin counter -- -C target-feature=+crt-static
//! utter image build --binary target/debug/counter --tag counter
//! ```

use std::process::ExitCode;

use utter_dapp_sdk::{Error, Outcome, State, Tx, Value, json, run};

fn name(tx: &Tx) -> Result<&str, String> {
    let name = tx
        .args
        .get("name")
        .and_then(Value::as_str)
        .ok_or("args.name must be a string")?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "{name:?} is not a counter name: use 1-64 of a-z, 0-9, - and _"
        ))
    }
}

fn value(state: &mut State, path: &str) -> Result<u64, Error> {
    match state.get(path)? {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::from_message(format!("{path} does not hold a number"))),
    }
}

fn apply(tx: &Tx, state: &mut State) -> Result<Outcome, Error> {
    let name = match name(tx) {
        Ok(name) => name,
        Err(reason) => return Ok(Outcome::Rejected(reason)),
    };
    let path = format!("counters/{name}");
    match tx.action.as_str() {
        "add" => {
            let by = match tx.args.get("by") {
                None => 1,
                Some(v) => match v.as_u64() {
                    Some(by) => by,
                    None => return Ok(Outcome::Rejected("args.by must be a whole number".into())),
                },
            };
            let Some(new) = value(state, &path)?.checked_add(by) else {
                return Ok(Outcome::Rejected(format!("{name} would overflow")));
            };
            state.put(&path, new.to_string())?;
            Ok(Outcome::Accepted(Some(json!(new))))
        }
        "reset" => {
            state.remove(&path)?;
            Ok(Outcome::Accepted(None))
        }
        other => Ok(Outcome::Rejected(format!(
            "unknown action {other:?}: expected add or reset"
        ))),
    }
}

fn main() -> ExitCode {
    run(
        |_ctx, tx, state| apply(tx, state),
        |_ctx, state| {
            for name in state.list("counters")? {
                value(state, &format!("counters/{name}"))?;
            }
            Ok(())
        },
    )
}

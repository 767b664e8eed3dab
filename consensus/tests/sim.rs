//! The seed sweep: thousands of simulated networks, each checked for safety
//! on every commit and for liveness after its last heal.
//!
//! `cargo test -p utter-consensus --test sim` runs 10,000 seeds;
//! `-- --ignored` runs 200,000 more; `SEED=n` runs one and prints it,
//! `SIM_TRACE=1` with it prints every event and action, and
//! `SET_CHANGES=k SPARES=s` override the scenario's.

use std::process::ExitCode;
use std::time::Instant;

use utter_consensus::sim::{Scenario, Sim};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test NAME` passes NAME to every test binary: run only when it
    // names this sweep (or nothing).
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-')) {
        if !"simulated_seeds".contains(filter.as_str()) && !"sim".contains(filter.as_str()) {
            return ExitCode::SUCCESS;
        }
    }
    if let Some(seed) = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        let mut sc = Scenario::random(seed);
        // The unit tests' sweeps over forced changes reproduce with these.
        let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        sc.set_changes = var("SET_CHANGES").unwrap_or(sc.set_changes);
        sc.spares = var("SPARES").unwrap_or(sc.spares);
        println!("{sc:?}");
        let sim = Sim::new(sc);
        let sim = if std::env::var_os("SIM_TRACE").is_some() {
            sim.traced()
        } else {
            sim
        };
        return match sim.run() {
            Ok(r) => {
                println!(
                    "ok: {} events, {} blocks, {} commits",
                    r.events, r.blocks, r.commits
                );
                ExitCode::SUCCESS
            }
            Err((f, _)) => {
                println!("fails: {f:?}");
                ExitCode::FAILURE
            }
        };
    }
    let seeds = if args
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored")
    {
        10_000..210_000
    } else {
        0..10_000
    };
    let started = Instant::now();
    let (mut safety, mut liveness, mut events) = (0u64, 0u64, 0u64);
    let n = seeds.end - seeds.start;
    for seed in seeds {
        match Sim::new(Scenario::random(seed)).run() {
            Ok(r) => events += r.events,
            Err((f, r)) => {
                events += r.events;
                if f.is_safety() {
                    safety += 1;
                } else {
                    liveness += 1;
                }
                eprintln!(
                    "seed {seed} fails: {f:?}\n  reproduce: SEED={seed} cargo test -p utter-consensus --test sim"
                );
            }
        }
    }
    eprintln!(
        "({events} machine events in {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    println!("simulated {n} seeds: {safety} safety violations, {liveness} liveness failures");
    if safety + liveness == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

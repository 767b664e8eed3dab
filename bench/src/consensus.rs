//! `utter-bench consensus`: the proof-of-merge state machine driven by the
//! simulator on a steady network. Execution is not included: validation
//! and block building answer after a fixed 0.2–3 ms of simulated time and
//! cost no real time, so the real time measured is the machines' own.

use std::time::Duration;

use anyhow::{Result, bail};
use utter_consensus::sim::{Scenario, Sim};

pub fn run(validators: u32, txs: u32) -> Result<()> {
    let link = Duration::from_millis(1);
    let sc = Scenario::steady(validators, txs, link, Duration::from_secs(10));
    let report = match Sim::new(sc).run() {
        Ok(r) => r,
        Err((f, _)) => bail!("the simulation failed: {f:?}"),
    };
    let commits_per_node = report.commits as f64 / f64::from(validators);
    let machine = report.machine_time.as_secs_f64();
    let mut lat = report.commit_latencies.clone();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let rtt = 2.0 * link.as_secs_f64() * 1000.0;
    println!(
        "# utter-bench consensus: {validators} validators, {} ms links (round trip {rtt} ms), {txs} txs over 10 s simulated",
        link.as_millis()
    );
    println!("# no execution: validation and proposal building answer in 0.2-3 ms simulated");
    println!();
    println!("blocks committed (per node)         {commits_per_node:>10.0}");
    println!("machine events                      {:>10}", report.events);
    println!(
        "machine time, all nodes             {:>10.1} ms",
        machine * 1000.0
    );
    println!(
        "consensus work per block            {:>10.1} µs per node   (all events of one node / its commits)",
        machine * 1e6 / f64::from(validators) / commits_per_node.max(1.0)
    );
    println!(
        "events/s on one core                {:>10.0}           (target >= 100,000)",
        report.events as f64 / machine
    );
    println!(
        "submit -> commit p50 / p99          {:>7.1} / {:.1} ms = {:.1} / {:.1} round trips",
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        pct(0.5).as_secs_f64() * 1000.0 / rtt,
        pct(0.99).as_secs_f64() * 1000.0 / rtt
    );
    Ok(())
}

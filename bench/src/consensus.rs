//! `utter-bench consensus`: the proof-of-merge state machine driven by the
//! simulator on a steady network. Execution is not included: validation
//! and block building answer after a fixed 0.2–3 ms of simulated time and
//! cost no real time, so the real time measured is the machines' own.

use std::time::Duration;

use anyhow::{Result, bail};
use utter_consensus::sim::{Scenario, Sim};
use utter_consensus::{
    BlockId, Config, Event, Header, Kind, Machine, Message, NodeId, Persisted, TxId, Vote,
};

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
    println!();
    memory()
}

/// One validator's machine through 20,000 committed blocks of 100
/// transactions each, with pruning (the default `keep`) and without (its
/// peer, `keep` = all): the blocks it holds and this process's resident
/// memory at 1,000, 5,000 and 20,000 blocks.
fn memory() -> Result<()> {
    println!("# memory: validator 0 of 4, blocks of 100 transactions committed by 1, 2 and 3");
    println!(
        "{:<24} {:>8} {:>14} {:>12}",
        "keep", "blocks", "machine holds", "process RSS"
    );
    for (name, keep) in [
        ("64 heights (default)", Config::KEEP),
        ("everything (no pruning)", u64::MAX),
    ] {
        for (at, held, rss) in drive(keep, 20_000, &[1_000, 5_000, 20_000]) {
            println!(
                "{:<24} {at:>8} {held:>8} blocks {:>9.1} MiB",
                name,
                rss as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(())
}

fn drive(keep: u64, blocks: u32, at: &[u32]) -> Vec<(u32, usize, u64)> {
    let n = 4u32;
    let id = |b: u32| {
        let mut bytes = [0x5au8; 20];
        bytes[..4].copy_from_slice(&b.to_be_bytes());
        BlockId::from_sha1(bytes)
    };
    let genesis = BlockId::from_sha1([0; 20]);
    let mut cfg = Config::new(0, (0..n).collect());
    cfg.keep = keep;
    let mut m = Machine::new(
        cfg,
        Persisted {
            genesis,
            main: genesis,
            vote_tip: None,
            blocks: Vec::new(),
            mempool: Vec::new(),
        },
        Duration::ZERO,
    );
    // Rounds validator 0 does not lead, so no proposal of its own waits.
    let round_of = |b: u32| u64::from((b - 1) / 3 * 4 + (b - 1) % 3 + 1);
    let mut parent = genesis;
    let mut out = Vec::new();
    for b in 1..=blocks {
        let round = round_of(b);
        let header = Header {
            id: id(b),
            parents: vec![parent],
            round,
            proposer: (round % u64::from(n)) as NodeId,
            kind: Kind::Proposal,
            txs: (0..100)
                .map(|i| TxId::of_line(format!("{b}/{i}")))
                .collect(),
            validators: None,
        };
        let from = header.proposer;
        m.handle(
            Duration::ZERO,
            Event::Received {
                from,
                message: Message::Block(header),
            },
        );
        m.handle(
            Duration::ZERO,
            Event::Validated {
                block: id(b),
                valid: true,
            },
        );
        for voter in 1..n {
            m.handle(
                Duration::ZERO,
                Event::Received {
                    from: voter,
                    message: Message::Vote(Vote {
                        voter,
                        block: id(b),
                    }),
                },
            );
        }
        m.drain().for_each(drop);
        parent = id(b);
        if at.contains(&b) {
            out.push((b, m.footprint().blocks, rss()));
        }
    }
    out
}

/// This process's resident set, bytes (`VmRSS` of /proc/self/status).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

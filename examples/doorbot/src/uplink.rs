//! The controller's link to its node, through the client crate only, on
//! two threads so neither waits for the other and neither is on the
//! decision path:
//!
//! - **follow**: long-polls main's blocks; on every new head it fetches
//!   the rules bundle, saves the durable copy and hands it to the
//!   controller (a revocation takes effect with the block that carries
//!   it); it reports whether the node is in touch with the network.
//! - **send**: submits the journal's unsent lines (woken at once by a new
//!   event, else every second), and marks those main holds.
//!
//! A node that is down is an error these threads retry, never a reason
//! to stop deciding.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use utter_client::Client;
use utter_client::api::{ErrorCode, TxState};

use crate::config::Config;
use crate::journal::Journal;
use crate::rules::Copy;

/// What the node link tells the controller.
#[derive(Debug)]
pub enum Update {
    /// New rules (already saved).
    Rules(Box<Copy>),
    /// The node answered: whether it is in touch with the network, and
    /// whether main is the rules' block.
    Node {
        /// In touch with validators (or a chain of one).
        online: bool,
        /// Main is the block of the rules the controller has.
        current: bool,
    },
    /// The node did not answer.
    Unreachable(String),
    /// The rules could not be saved (the disk): they are not used.
    SaveFailed(String),
    /// Refused lines (the reason), counted as handled.
    Refused(String),
}

/// Starts both threads. `wake` is signalled by the controller after each
/// recorded event.
pub fn start(
    config: &Config,
    journal: Arc<Mutex<Journal>>,
    have: Option<String>,
    updates: Sender<Update>,
    wake: Receiver<()>,
) {
    let c = config.clone();
    let u = updates.clone();
    std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || follow(&c, have, &u))
        .expect("a thread starts");
    let c = config.clone();
    std::thread::Builder::new()
        .name("send".into())
        .spawn(move || send(&c, &journal, &updates, &wake))
        .expect("a thread starts");
}

fn client(config: &Config) -> Result<Client, String> {
    config.node_addr().map(|a| Client::new(&a))
}

fn follow(config: &Config, mut have: Option<String>, updates: &Sender<Update>) {
    let dir: PathBuf = config.state_dir.clone();
    let mut backoff = Duration::from_millis(200);
    let mut fresh_saved = 0;
    loop {
        let step = (|| -> Result<(), String> {
            let client = client(config)?;
            let status = client.status().map_err(|e| e.to_string())?;
            let online = status.consensus.as_ref().is_none_or(|c| c.peers > 0);
            let head = status.head.to_string();
            if have.as_deref() != Some(head.as_str()) {
                let bundle = client.rules().map_err(|e| e.to_string())?;
                let copy = Copy::new(&status.chain, bundle);
                if let Err(e) = copy.save(&dir) {
                    let _ = updates.send(Update::SaveFailed(e.to_string()));
                    return Err(e.to_string());
                }
                have = Some(copy.bundle.block.to_string());
                if updates.send(Update::Rules(Box::new(copy))).is_err() {
                    return Ok(());
                }
            }
            let current = have.as_deref() == Some(head.as_str());
            if updates.send(Update::Node { online, current }).is_err() {
                return Ok(());
            }
            let now = utter_formats::now();
            if online && current && now >= fresh_saved + 60 {
                if let Err(e) = crate::rules::save_fresh(&dir, now) {
                    let _ = updates.send(Update::SaveFailed(format!(
                        "cannot save {}: {e}",
                        dir.display()
                    )));
                }
                fresh_saved = now;
            }
            // Wait for the next block (or 2 s, to report again).
            let _ = client.blocks(Some(status.head), Duration::from_secs(2), Some(1));
            Ok(())
        })();
        match step {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(why) => {
                if updates.send(Update::Unreachable(why)).is_err() {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn send(
    config: &Config,
    journal: &Arc<Mutex<Journal>>,
    updates: &Sender<Update>,
    wake: &Receiver<()>,
) {
    let lock = || journal.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match wake.recv_timeout(Duration::from_secs(1)) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            _ => while wake.try_recv().is_ok() {},
        }
        let Ok(client) = client(config) else { continue };
        // Unsent lines, oldest first.
        loop {
            let unsent = lock().unsent(500);
            let Some((first, _)) = unsent.first() else {
                break;
            };
            let first = *first;
            let lines: Vec<String> = unsent.into_iter().map(|(_, l)| l).collect();
            let Ok(states) = client.submit(&lines) else {
                break; // the node is down: next time
            };
            for s in &states {
                if let TxState::Refused { id, error } = s {
                    // A line refused for a replay was on the chain already;
                    // any other refusal would refuse it for ever.
                    let _ = updates.send(Update::Refused(format!("{id}: {error}")));
                }
            }
            let moved = lock().sent(first + states.len());
            if let Some(c) = moved
                && let Err(e) = Journal::save_cursor(&config.state_dir, c)
            {
                eprintln!("doorbot: {e}");
                break;
            }
        }
        // Sent lines that main holds now.
        let unconfirmed = lock().unconfirmed(200);
        let mut upto = None;
        for (i, id, line) in unconfirmed {
            let state = match client.wait(id, Duration::ZERO) {
                // Not a transaction the node knows (it forgot a block's
                // results long after): asking again tells.
                Err(e) if e.code() == Some(ErrorCode::UnknownTx) => {
                    client.submit(&[line]).ok().and_then(|mut s| s.pop())
                }
                other => other.ok(),
            };
            match state {
                // Refused now means it is on the chain already (a replay).
                Some(TxState::Committed { .. } | TxState::Refused { .. }) => upto = Some(i + 1),
                _ => break,
            }
        }
        if let Some(upto) = upto {
            let moved = lock().committed(upto);
            match moved.map(|c| c.map(|c| Journal::save_cursor(&config.state_dir, c))) {
                Ok(Some(Err(e))) | Err(e) => eprintln!("doorbot: {e}"),
                _ => {}
            }
        }
    }
}

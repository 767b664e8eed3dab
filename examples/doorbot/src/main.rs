//! The door controller: reads badges, decides offline with the doors dapp's
//! rules, drives a relay and logs every event to the ledger, failing secure.
//!
//! Talks to a node only through utter's client API.
//!
//! Not built yet: this example is filled by the doorbot issue.

fn main() {
    eprintln!("doorbot is not built yet: see the doorbot issue");
    std::process::exit(2);
}

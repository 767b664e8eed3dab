//! Proof of merge: a deterministic, sans-IO state machine (events in,
//! actions out, `now` passed in) and the block executor.
//!
//! May use `utter-ledger` and `utter-runtime`. The state machine
//! ([`machine`]) does no IO, reads no clock and draws no randomness;
//! [`sim`] drives many machines over a simulated network from a seed.
//! [`executor`] makes and re-executes blocks, running dapps through a
//! [`executor::Host`] (a helper process: containers are never created by a
//! process that opened RocksDB).

pub mod executor;
pub mod machine;
pub mod sim;

pub use executor::{
    ExecError, Executor, Host, Images, Nonces, Proposed, Refused, Timings, Verdict,
};
pub use machine::{
    Action, Config, Event, Header, Kind, Machine, Message, NodeId, Persisted, TxId, Validators,
    Vote,
};

#[cfg(test)]
mod tests;

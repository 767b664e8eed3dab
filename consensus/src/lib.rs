//! Proof of merge: a deterministic, sans-IO state machine (events in,
//! actions out, `now` passed in) and, later, the block executor.
//!
//! May use `utter-ledger` (and `utter-runtime` for the executor); the state
//! machine itself does no IO, reads no clock and draws no randomness.
//! [`sim`] drives many machines over a simulated network from a seed.

pub mod machine;
pub mod sim;

pub use machine::{
    Action, Config, Event, Header, Kind, Machine, Message, NodeId, Persisted, TxId, Vote,
};

#[cfg(test)]
mod tests;

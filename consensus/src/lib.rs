//! Proof of merge: a deterministic, sans-IO state machine (events in,
//! actions out, `now` passed in) and a simulator that drives many of them.
//!
//! Uses only `utter-formats` (block and transaction ids, `chain.toml`).
//! The state machine ([`machine`]) does no IO, reads no clock and draws no
//! randomness; [`sim`] drives many machines over a simulated network from
//! a seed. Running dapps, writing blocks and sending messages are the
//! driver's (the executor crate and the node): consensus asks for them as
//! [`Action`]s and hears their outcome as [`Event`]s.

pub mod machine;
mod mempool;
pub mod sim;

pub use machine::{
    Action, Anchor, BlockId, Config, Event, Footprint, Header, Kind, Machine, Message, NodeId,
    Persisted, TxId, Validators, Vote,
};

#[cfg(test)]
mod tests;

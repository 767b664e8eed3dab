//! Proof of merge: a deterministic, sans-IO state machine (events in, actions
//! out, `now` passed in) and the block executor.
//!
//! May use `utter-ledger` and `utter-runtime`; the state machine itself does
//! no IO, reads no clock and draws no randomness.
//!
//! Not built yet: this crate is filled by the consensus issues.

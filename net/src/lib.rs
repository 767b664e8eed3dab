//! The network: QUIC (quinn) transport keyed by node ed25519 keys, and the
//! sync protocol (branch heads, missing git objects, missing chunks) as a
//! sans-IO core with a thin driver.
//!
//! May use `utter-ledger` and `utter-chunkstore`; the only crate that knows
//! about quinn.
//!
//! Not built yet: this crate is filled by the network issue.

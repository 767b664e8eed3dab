//! The dapp side of the protocol: read `/block/context.json`, iterate
//! `/block/txs.jsonl`, read and write files under `/state`, write
//! `/block/results.jsonl`.
//!
//! Depends on no other utter crate, so a dapp links nothing but this.
//!
//! Not built yet: this crate is filled by the runtime issue.

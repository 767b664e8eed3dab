//! A running utter node, as a library the `utter` binary (and tests, and
//! later the network driver) call.
//!
//! - [`Home`]: a data directory, and the only place that opens its chunk
//!   store, ledger, image store and key, and starts the container helper.
//! - [`init`]: creates a data directory, crash-atomically.
//! - [`pool`]: the mempool's rules (no IO); [`run`] the node itself: the
//!   persisted mempool, the block producer and the local HTTP API (whose
//!   types are `utter_client::api`, shared with the client).
//! - [`query`]: reading state, members, the door log, the doors' rules
//!   bundle and main's blocks off the ledger.
//! - [`verify`]: re-executing a whole ledger.
//! - [`NodeImages`]: the image store as the executor sees it.
//! - [`leases`]: the provider agent: runs, freezes, thaws and removes the
//!   containers of the leases this node's key provides, heartbeats and
//!   settles them; [`exec`]: `utter lease exec` sessions, for the
//!   lease's owner only.
//! - [`consensus`]: proof of merge's disk side: a block's header from its
//!   signed commit, the vote tip file, the machine's state rebuilt from the
//!   ledger after a restart.
//!
//! Uses every layer below (ledger, images, runtime, executor, chunkstore)
//! and the client's API types. Never creates a container itself: the
//! executor runs dapps through the helper process [`Home::spawn_helper`]
//! starts, because libcontainer's children would hang in RocksDB's exit
//! handlers.

mod api;
pub mod consensus;
pub mod exec;
mod gossip;
mod home;
mod images;
pub mod init;
pub mod leases;
pub mod p2p;
pub mod pool;
pub mod ports;
mod producer;
pub mod query;
mod run;
mod side;
mod validator;
pub mod verify;

pub use home::{Home, HomeError, KEY_PRINCIPAL, Need, Opened};
pub use images::NodeImages;
pub use run::{NodeError, Settings, run};

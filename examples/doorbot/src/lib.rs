//! doorbot: a makerspace door (or tool) controller for a Raspberry Pi,
//! built on utter. It decides every badge locally with the doors dapp's
//! own `may_open` over the rules bundle of the latest block it has, keeps
//! working while the network (or its node) is down, records each event
//! signed with its device key, and fails secure.
//!
//! It talks to its node only through the client crate (`utter-client`),
//! and decides with the doors dapp's library (`utter-doors`, which needs
//! only the dapp SDK): no RocksDB, git or container runtime on the door.
//!
//! - [`core`]: the controller, sans IO (phases, timings, LED and beep
//!   codes), tested with a virtual clock.
//! - [`badge`]: card numbers (never kept) and salted badge hashes.
//! - [`readers`]: RDM6300 serial, Wiegand on GPIO, keyboard-wedge evdev,
//!   stdin; their decoders are pure.
//! - [`outputs`]: strike, LEDs, beeper on GPIO (uAPI v2), a printer, a
//!   recorder; all off at start and on drop.
//! - [`rules`]: the durable rules copy and [`rules::Gate`], the decision
//!   that fails secure.
//! - [`journal`]: the synced event journal, written before the door acts.
//! - [`uplink`]: following main and sending events, on threads of their own.
//! - [`run`]: the driver; [`config`]: `doorbot.toml`; [`notify`]: systemd.

pub mod badge;
pub mod config;
pub mod core;
pub mod durable;
pub mod journal;
pub mod notify;
pub mod outputs;
pub mod readers;
pub mod rules;
pub mod run;
pub mod uplink;

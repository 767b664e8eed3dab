//! One module per command group: each parses its arguments, calls the
//! libraries and prints. Commands never import each other; what several
//! share lives beside this module (`ui`, `container`, `blocks`), and the
//! one thing `lease` takes from `dapp` is its image upload
//! ([`dapp::image_on_node`]).

pub mod accounting;
pub mod block;
pub mod chain;
pub mod chunks;
pub mod dapp;
pub mod demo;
pub mod devnet;
pub mod doors;
pub mod image;
pub mod init;
pub mod key;
pub mod lease;
pub mod log;
pub mod members;
pub mod net;
pub mod node;
pub mod run;
pub mod state;
pub mod tx;
pub mod verify;

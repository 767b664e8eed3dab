//! Keys and transactions against `ssh-keygen`, the oracle.

#![allow(clippy::unwrap_used)]

mod config;
mod keys;

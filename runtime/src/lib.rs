//! The runtime: runs an image's entrypoint in a fresh, isolated youki
//! (libcontainer) container and returns its outcome as a value.
//!
//! - [`spec`]: what to run ([`Job`]), its [`Limits`], and the OCI runtime
//!   spec that enforces them (namespaces, no capabilities, seccomp, cgroup
//!   limits, read-only rootfs). Pure.
//! - [`container`]: the driver ([`Runtime`]), which runs a job in this
//!   process with libcontainer, waits under the limits, and removes every
//!   trace of the container whatever happened.
//! - [`dapp`]: the dapp protocol's host side: `/state` as an overlay over a
//!   read-only checkout, `/block` with the context and transactions, the
//!   results and the changed paths read back.
//! - [`helper`]: a child process that runs dapp invocations for a process
//!   that may not create containers (one that opened RocksDB).
//! - [`detached`]: long-running containers for compute leases: start,
//!   status, exec (a tenant process), stop.
//! - [`image`]: the process an image's config describes.
//! - [`outcome`]: how a run ended ([`Outcome`]), with messages for dapp
//!   authors.
//!
//! May use `utter-images` (for a rootfs); must not know about the ledger,
//! consensus or the network.

pub mod container;
pub mod dapp;
pub mod detached;
pub mod helper;
pub mod image;
pub mod outcome;
pub mod spec;

pub use container::{
    Finished, RunError, Runtime, Sandbox, Scratch, Stdio, detect_privilege, own_cgroup_procs,
    prewarm_cgroup_migration, runtime_base,
};
pub use dapp::{Change, ChangeKind, Context, DappRun, Entry, Invocation, invoke};
pub use helper::{Helper, HelperError, Ran};
pub use image::ImageProcess;
pub use outcome::Outcome;
pub use spec::{Job, Limits, Mount, Privilege};

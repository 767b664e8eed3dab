//! The executor's two seams: [`Host`] runs dapp invocations (the real one
//! is a helper process that creates containers), [`Images`] finds a dapp's
//! rootfs (the real one is the node's image store).

use std::error::Error as StdError;
use std::path::PathBuf;

use utter_runtime::dapp::Invocation;
use utter_runtime::{Helper, HelperError, ImageProcess, Ran};

/// Runs dapp invocations: the seam between the executor and containers.
/// The real one is [`Helper`], a process that never opened RocksDB; tests
/// use a fake that plays a dapp in-process.
pub trait Host {
    /// Runs one invocation to its end.
    fn invoke(&mut self, invocation: &Invocation) -> Result<Ran, HelperError>;
    /// Frees a finished run's scratch once its files are read.
    fn release(&mut self, ran: Ran);
}

impl Host for Helper {
    fn invoke(&mut self, invocation: &Invocation) -> Result<Ran, HelperError> {
        Helper::invoke(self, invocation)
    }

    fn release(&mut self, ran: Ran) {
        // A helper that is gone has dropped its runs already.
        let _ = Helper::release(self, ran);
    }
}

/// Why a dapp's image cannot be run on this node. The transactions of
/// that dapp are rejected with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The node's image store does not have it.
    #[error("{0}; import it with `utter image import`")]
    Missing(#[source] Box<dyn StdError + Send + Sync>),
    /// It is there but cannot be read or unpacked.
    #[error("{0}")]
    Damaged(#[source] Box<dyn StdError + Send + Sync>),
    /// Its config names nothing to run.
    #[error("the image has no entrypoint")]
    NoEntrypoint,
}

/// Where dapp images come from: the node's image store.
pub trait Images {
    /// The unpacked rootfs and process of image `digest` (`sha256:…`).
    fn rootfs(&mut self, digest: &str) -> Result<(PathBuf, ImageProcess), ImageError>;
}

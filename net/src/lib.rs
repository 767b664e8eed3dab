//! utter nodes talking: QUIC (quinn) with TLS 1.3 raw public keys — a
//! node's TLS key is its OpenSSH ed25519 node key — and the protocols that
//! bring one node's ledger, certificates, images and chunks to another.
//!
//! - [`wire`]: the frames, encoded and decoded without IO, every size
//!   checked before anything is buffered.
//! - [`sync`]: one sync pass as a state machine without IO.
//! - [`peers`]: the peer table's rules (backoff, pinning) and where it is
//!   kept.
//! - [`tls`]: the TLS identity and the key checks of both ends.
//! - [`endpoint`]: the QUIC endpoint and framed request streams with a
//!   deadline on every read (the thin async driver).
//! - [`serve`]: answering peers from a node's ledger and stores.
//! - [`fetch`]: carrying out a sync pass against a peer.
//! - [`push`]: a proposal sent whole beside its announcement, and taken
//!   in by its receivers without a pull.
//! - [`exec`]: the exec protocol's frames (a command in a lease's
//!   container, by the key that owns the lease).
//!
//! The only crate that knows quinn and rustls. Uses the ledger, the chunk
//! store and the image store; knows nothing of consensus, the executor or
//! the node's API. What a peer sends is trusted only as far as its
//! signatures and hashes go: packs are indexed by gix-pack (every object
//! hashed), blocks verified before any ref moves, chunks and manifests
//! hashed on arrival, images checked against their digests.

pub mod endpoint;
pub mod exec;
pub mod fetch;
pub mod peers;
pub mod push;
pub mod serve;
pub mod sync;
pub mod tls;
pub mod wire;

pub use endpoint::{
    ALPN_CHUNKS, ALPN_CONSENSUS, ALPN_EXEC, ALPN_SYNC, Channel, Conn, Endpoint, Inbound, NetError,
    StreamRecv, StreamSend,
};
pub use fetch::{Pass, PassError, Passed, Progress};
pub use tls::{Gate, Identity};

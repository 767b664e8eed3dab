//! The QUIC endpoint: one UDP socket that serves peers and connects to
//! them, TLS 1.3 with raw public keys ([`crate::tls`]), one ALPN per
//! protocol, and framed request streams with a deadline on every read.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use utter_formats::Signer;

use crate::tls::{Gate, Identity, SERVER_NAME, TlsError};
use crate::wire::{Decoder, MAX_FRAME, MAX_REQUEST, Message, WireError};

/// The sync protocol: heads and packs.
pub const ALPN_SYNC: &[u8] = b"utter-sync/1";
/// The content protocol: manifests, chunks, images.
pub const ALPN_CHUNKS: &[u8] = b"utter-chunks/1";
/// The consensus protocol: one channel per connection, from the dialer
/// to the listener, carrying `Hello` then transactions, announcements
/// and votes ([`Conn::open_channel`], [`Conn::accept_channel`]).
pub const ALPN_CONSENSUS: &[u8] = b"utter-consensus/1";
/// The exec protocol: a command in a lease's container, by the key that
/// owns the lease ([`crate::exec`]).
pub const ALPN_EXEC: &[u8] = b"utter-exec/1";

/// How long a read may wait for the peer before the stream is given up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong on the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The socket.
    #[error("cannot use UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection could not be made or broke.
    #[error("{addr}: {why}")]
    Connection {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The peer did not answer in time.
    #[error("{addr} did not answer within {} s", .after.as_secs())]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// How long was waited.
        after: Duration,
    },
    /// The peer sent bytes that are not the protocol.
    #[error("{addr} sent what is not the protocol: {source}")]
    Wire {
        /// The peer.
        addr: SocketAddr,
        /// What was wrong.
        source: WireError,
    },
    /// The peer sent more than the limit.
    #[error("{addr} sent more than {limit} bytes where that is the most")]
    TooMuch {
        /// The peer.
        addr: SocketAddr,
        /// The limit.
        limit: u64,
    },
}

impl NetError {
    /// Whether the peer is to blame (a broken protocol, a stall, too much).
    pub fn peer_is_at_fault(&self) -> bool {
        matches!(
            self,
            NetError::Timeout { .. } | NetError::Wire { .. } | NetError::TooMuch { .. }
        )
    }
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        Duration::from_secs(30)
            .try_into()
            .expect("30 s fits a QUIC idle timeout"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Windows large enough for a full link on one stream, bounded per
    // connection.
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t
}

/// A QUIC endpoint with this node's identity.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    identity: Identity,
    read_timeout: Duration,
}

impl Endpoint {
    /// Serves `alpns` on `addr` (UDP) to the keys `gate` lets in, and
    /// connects from the same socket.
    pub fn serve(
        addr: SocketAddr,
        identity: Identity,
        alpns: &[&[u8]],
        gate: Gate,
    ) -> Result<Self, NetError> {
        let tls = identity.server_config(alpns, gate)?;
        let quic = QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(Arc::new(transport()));
        let inner = quinn::Endpoint::server(config, addr)
            .map_err(|source| NetError::Bind { addr, source })?;
        Ok(Self {
            inner,
            identity,
            read_timeout: READ_TIMEOUT,
        })
    }

    /// An endpoint that only connects (an ephemeral port).
    pub fn client(identity: Identity, ipv6: bool) -> Result<Self, NetError> {
        let addr: SocketAddr = if ipv6 {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let inner =
            quinn::Endpoint::client(addr).map_err(|source| NetError::Bind { addr, source })?;
        Ok(Self {
            inner,
            identity,
            read_timeout: READ_TIMEOUT,
        })
    }

    /// Gives up a read after `timeout` instead of [`READ_TIMEOUT`].
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The local address.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.inner.local_addr().map_err(|source| NetError::Bind {
            addr: "0.0.0.0:0".parse().expect("an address"),
            source,
        })
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Connects to `addr` for protocol `alpn`, requiring the server's key
    /// to have fingerprint `pin` when given.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
        pin: Option<String>,
    ) -> Result<Conn, NetError> {
        let tls = self.identity.client_config(alpn, pin)?;
        let quic = QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(transport()));
        let fail = |why: String| NetError::Connection { addr, why };
        let connecting = self
            .inner
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| fail(e.to_string()))?;
        let conn = handshake(connecting, addr).await?;
        let peer = crate::tls::peer_key(&conn)
            .ok_or_else(|| fail("the peer proved no ed25519 key".into()))?;
        Ok(Conn {
            conn,
            peer,
            addr,
            read_timeout: self.read_timeout,
        })
    }

    /// The next incoming connection; `None` once the endpoint is closed.
    /// Its handshake is finished by [`Incoming::connected`], on a task of
    /// its own so a slow peer holds up no other.
    pub async fn accept(&self) -> Option<Incoming> {
        let read_timeout = self.read_timeout;
        self.inner.accept().await.map(|i| Incoming(i, read_timeout))
    }

    /// Stops serving and closes every connection.
    pub fn close(&self) {
        self.inner.close(0u32.into(), b"closing");
    }

    /// Waits until every connection is closed.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }
}

/// A connection being accepted.
#[derive(Debug)]
pub struct Incoming(quinn::Incoming, Duration);

impl Incoming {
    /// Finishes the handshake: the connection and the protocol it chose.
    pub async fn connected(self) -> Result<(Conn, Vec<u8>), NetError> {
        let addr = self.0.remote_address();
        let fail = |why: String| NetError::Connection { addr, why };
        let conn = handshake(self.0, addr).await?;
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol)
            .ok_or_else(|| fail("no protocol was chosen".into()))?;
        let peer = crate::tls::peer_key(&conn)
            .ok_or_else(|| fail("the peer proved no ed25519 key".into()))?;
        Ok((
            Conn {
                conn,
                peer,
                addr,
                read_timeout: self.1,
            },
            alpn,
        ))
    }
}

fn describe_read_error(e: &quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(c) => describe_connection_error(c),
        other => format!("the stream broke: {other}"),
    }
}

fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Waits for a handshake, at most [`CONNECT_TIMEOUT`].
async fn handshake(
    connecting: impl IntoFuture<Output = Result<quinn::Connection, quinn::ConnectionError>>,
    addr: SocketAddr,
) -> Result<quinn::Connection, NetError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(NetError::Timeout {
            addr,
            after: CONNECT_TIMEOUT,
        }),
        Ok(Err(e)) => Err(NetError::Connection {
            addr,
            why: describe_connection_error(&e),
        }),
        Ok(Ok(c)) => Ok(c),
    }
}

fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => format!(
            "the peer refused this node's key in the TLS handshake ({c}): it lets in only keys its chain names and keys its operator allowed (`utter peers allow KEY` there)"
        ),
        quinn::ConnectionError::TransportError(t) if is_crypto(t.code) => format!(
            "the TLS handshake failed ({t}): the peer's key is not the one pinned (check the SHA256 fingerprint)"
        ),
        quinn::ConnectionError::ConnectionClosed(c) => {
            format!("the peer closed the connection ({c})")
        }
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "the peer closed the connection: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        quinn::ConnectionError::TimedOut => "the peer did not answer (timed out)".into(),
        other => other.to_string(),
    }
}

/// A connection to a peer whose key is known.
#[derive(Clone, Debug)]
pub struct Conn {
    conn: quinn::Connection,
    peer: Signer,
    addr: SocketAddr,
    read_timeout: Duration,
}

impl Conn {
    /// The peer's key, as proved in the handshake.
    pub fn peer(&self) -> &Signer {
        &self.peer
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes received on this connection so far, as UDP payload: what
    /// the peer's packets carried, QUIC framing and TLS included.
    pub fn wire_bytes(&self) -> u64 {
        self.conn.stats().udp_rx.bytes
    }

    /// Closes the connection, telling the peer why.
    pub fn close(&self, why: &str) {
        self.conn.close(1u32.into(), why.as_bytes());
    }

    /// Sends `request` on a new stream; returns the stream to read the
    /// answer from.
    pub async fn ask(&self, request: &Message) -> Result<Answer, NetError> {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| NetError::Connection {
                addr: self.addr,
                why: describe_connection_error(&e),
            })?;
        let fail = |why: String| NetError::Connection {
            addr: self.addr,
            why: format!("cannot send a request: {why}"),
        };
        send.write_all(&request.encode())
            .await
            .map_err(|e| fail(e.to_string()))?;
        send.finish().map_err(|e| fail(e.to_string()))?;
        Ok(Answer {
            recv,
            decoder: Decoder::new(MAX_FRAME),
            addr: self.addr,
            timeout: self.read_timeout,
        })
    }

    /// The next request a peer opened a stream for, and where to answer.
    pub async fn next_request(&self) -> Option<Result<(Message, Reply), NetError>> {
        let (send, mut recv) = match self.conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return None,
        };
        let mut decoder = Decoder::new(MAX_REQUEST);
        let read = read_frame(&mut recv, &mut decoder, self.addr, self.read_timeout).await;
        Some(read.and_then(|m| match m {
            Some(m) if m.is_request() => Ok((
                m,
                Reply {
                    send,
                    addr: self.addr,
                },
            )),
            Some(m) => Err(NetError::Wire {
                addr: self.addr,
                source: WireError::Malformed {
                    kind: "request",
                    why: format!("{m:?} is not a request"),
                },
            }),
            None => Err(NetError::Wire {
                addr: self.addr,
                source: WireError::Truncated(0),
            }),
        }))
    }
}

impl Conn {
    /// Opens the connection's channel: a stream of frames to the peer
    /// that stays open while the connection does.
    pub async fn open_channel(&self) -> Result<Channel, NetError> {
        let (send, _recv) = self.conn.open_bi().await.map_err(|e| self.lost(&e))?;
        Ok(Channel {
            send,
            addr: self.addr,
        })
    }

    /// Waits for the peer to open its channel.
    pub async fn accept_channel(&self) -> Result<Inbound, NetError> {
        let (_send, recv) = self.conn.accept_bi().await.map_err(|e| self.lost(&e))?;
        Ok(Inbound {
            recv,
            decoder: Decoder::new(MAX_REQUEST),
            addr: self.addr,
        })
    }

    fn lost(&self, e: &quinn::ConnectionError) -> NetError {
        NetError::Connection {
            addr: self.addr,
            why: describe_connection_error(e),
        }
    }

    /// Waits until the connection is closed, by either side.
    pub async fn closed(&self) -> String {
        describe_connection_error(&self.conn.closed().await)
    }
}

impl Conn {
    /// Opens a stream of raw bytes both ways (an exec session).
    pub async fn open_stream(&self) -> Result<(StreamSend, StreamRecv), NetError> {
        let (send, recv) = self.conn.open_bi().await.map_err(|e| self.lost(&e))?;
        Ok(self.halves(send, recv))
    }

    /// Waits for the peer to open a stream of raw bytes; `None` once the
    /// connection is closed.
    pub async fn accept_stream(&self) -> Option<(StreamSend, StreamRecv)> {
        let (send, recv) = self.conn.accept_bi().await.ok()?;
        Some(self.halves(send, recv))
    }

    fn halves(&self, send: quinn::SendStream, recv: quinn::RecvStream) -> (StreamSend, StreamRecv) {
        (
            StreamSend {
                send,
                addr: self.addr,
            },
            StreamRecv {
                recv,
                addr: self.addr,
            },
        )
    }
}

/// The sending half of a raw stream.
#[derive(Debug)]
pub struct StreamSend {
    send: quinn::SendStream,
    addr: SocketAddr,
}

impl StreamSend {
    /// Sends `bytes`, waiting while the peer's window is full.
    pub async fn write(&mut self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.send
            .write_chunk(bytes.into())
            .await
            .map_err(|e| NetError::Connection {
                addr: self.addr,
                why: format!("cannot send: {e}"),
            })
    }

    /// Ends this direction of the stream, once what was sent arrived.
    pub async fn finish(mut self) {
        let _ = self.send.finish();
        let _ = self.send.stopped().await;
    }
}

/// The receiving half of a raw stream.
#[derive(Debug)]
pub struct StreamRecv {
    recv: quinn::RecvStream,
    addr: SocketAddr,
}

impl StreamRecv {
    /// The next bytes, waiting as long as `timeout`; `None` when the peer
    /// finished its half.
    pub async fn read(&mut self, timeout: Duration) -> Result<Option<bytes::Bytes>, NetError> {
        let addr = self.addr;
        match tokio::time::timeout(timeout, self.recv.read_chunk(1 << 16, true)).await {
            Err(_) => Err(NetError::Timeout {
                addr,
                after: timeout,
            }),
            Ok(Err(e)) => Err(NetError::Connection {
                addr,
                why: describe_read_error(&e),
            }),
            Ok(Ok(chunk)) => Ok(chunk.map(|c| c.bytes)),
        }
    }
}

/// The sending end of a channel.
#[derive(Debug)]
pub struct Channel {
    send: quinn::SendStream,
    addr: SocketAddr,
}

impl Channel {
    /// Sends one frame (at most [`MAX_REQUEST`] bytes, what the other end
    /// accepts).
    pub async fn send(&mut self, m: &Message) -> Result<(), NetError> {
        self.send_bytes(&m.encode()).await
    }

    /// Sends a frame already encoded ([`Message::encode`]).
    pub async fn send_bytes(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.send
            .write_all(frame)
            .await
            .map_err(|e| NetError::Connection {
                addr: self.addr,
                why: format!("cannot send: {e}"),
            })
    }
}

/// The receiving end of a channel. Reads wait as long as the connection
/// lives (an idle channel is normal; QUIC's keep-alive and idle timeout
/// find a dead peer).
#[derive(Debug)]
pub struct Inbound {
    recv: quinn::RecvStream,
    decoder: Decoder,
    addr: SocketAddr,
}

impl Inbound {
    /// The next frame; `None` when the peer finished the channel.
    pub async fn next(&mut self) -> Result<Option<Message>, NetError> {
        read_frame(&mut self.recv, &mut self.decoder, self.addr, Duration::MAX).await
    }
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut Decoder,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Option<Message>, NetError> {
    loop {
        if let Some(m) = decoder
            .frame()
            .map_err(|source| NetError::Wire { addr, source })?
        {
            return Ok(Some(m));
        }
        // Chunks as quinn holds them: no buffer to fill, one copy in.
        let wanted = decoder.wanted().min(1 << 20);
        match tokio::time::timeout(timeout, recv.read_chunk(wanted, true)).await {
            Err(_) => {
                return Err(NetError::Timeout {
                    addr,
                    after: timeout,
                });
            }
            Ok(Err(e)) => {
                return Err(NetError::Connection {
                    addr,
                    why: describe_read_error(&e),
                });
            }
            Ok(Ok(None)) => {
                decoder
                    .finish()
                    .map_err(|source| NetError::Wire { addr, source })?;
                return Ok(None);
            }
            Ok(Ok(Some(chunk))) => decoder.feed(&chunk.bytes),
        }
    }
}

/// The answer side of a request stream.
#[derive(Debug)]
pub struct Answer {
    recv: quinn::RecvStream,
    decoder: Decoder,
    addr: SocketAddr,
    timeout: Duration,
}

impl Answer {
    /// The next answer frame; `None` at the end of the stream.
    pub async fn frame(&mut self) -> Result<Option<Message>, NetError> {
        read_frame(&mut self.recv, &mut self.decoder, self.addr, self.timeout).await
    }

    /// The next piece of the raw bytes after the last frame, as quinn
    /// holds it (no copy); `None` at the end of the stream.
    pub async fn piece(&mut self) -> Result<Option<bytes::Bytes>, NetError> {
        let first = self.decoder.take_rest();
        if !first.is_empty() {
            return Ok(Some(first.into()));
        }
        let addr = self.addr;
        match tokio::time::timeout(self.timeout, self.recv.read_chunk(1 << 20, true)).await {
            Err(_) => Err(NetError::Timeout {
                addr,
                after: self.timeout,
            }),
            Ok(Err(e)) => Err(NetError::Connection {
                addr,
                why: describe_read_error(&e),
            }),
            Ok(Ok(chunk)) => Ok(chunk.map(|c| c.bytes)),
        }
    }

    /// The raw bytes after the last frame, to the end of the stream, into
    /// `out`; refuses more than `limit`. Returns how many.
    pub async fn rest_into(
        &mut self,
        out: &mut (impl std::io::Write + Send),
        limit: u64,
    ) -> Result<u64, NetError> {
        let addr = self.addr;
        let mut total = 0u64;
        while let Some(piece) = self.piece().await? {
            total += piece.len() as u64;
            if total > limit {
                return Err(NetError::TooMuch { addr, limit });
            }
            out.write_all(&piece).map_err(|e| NetError::Connection {
                addr,
                why: format!("cannot keep what arrived: {e}"),
            })?;
        }
        Ok(total)
    }

    /// Stops reading: the peer's further sends on this stream fail.
    pub fn stop(&mut self) {
        let _ = self.recv.stop(0u32.into());
    }
}

/// Where to answer one request.
#[derive(Debug)]
pub struct Reply {
    send: quinn::SendStream,
    addr: SocketAddr,
}

impl Reply {
    /// Sends a frame.
    pub async fn frame(&mut self, m: &Message) -> Result<(), NetError> {
        // Handed to quinn as is, not copied into its buffer.
        self.send
            .write_chunk(m.encode().into())
            .await
            .map_err(|e| NetError::Connection {
                addr: self.addr,
                why: format!("cannot answer: {e}"),
            })
    }

    /// Sends a frame it owns: a chunk's bytes go to quinn uncopied.
    pub async fn send(&mut self, m: Message) -> Result<(), NetError> {
        let Message::Chunk { id, len, stored } = m else {
            return self.frame(&m).await;
        };
        let header = Message::chunk_header(&id, len, stored.len());
        self.send
            .write_all_chunks(&mut [header.into(), stored.into()])
            .await
            .map_err(|e| NetError::Connection {
                addr: self.addr,
                why: format!("cannot answer: {e}"),
            })
    }

    /// Sends raw bytes (a pack after its `Pack` frame).
    pub async fn bytes(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| NetError::Connection {
                addr: self.addr,
                why: format!("cannot answer: {e}"),
            })
    }

    /// Sends raw bytes it owns, handed to quinn uncopied.
    pub async fn owned_bytes(&mut self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.send
            .write_chunk(bytes.into())
            .await
            .map_err(|e| NetError::Connection {
                addr: self.addr,
                why: format!("cannot answer: {e}"),
            })
    }

    /// Breaks the answer off: the asker sees a reset stream, never an
    /// answer that merely ends early.
    pub fn abort(mut self) {
        let _ = self.send.reset(0u32.into());
    }

    /// Ends the answer.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

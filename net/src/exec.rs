//! The exec protocol (`utter-exec/1`): a command run in a lease's
//! container on the provider's node, by the key that owns the lease.
//!
//! One bidirectional stream per session. The client's first frame is a
//! [`Frame::Request`]; the server answers [`Frame::Refused`] (and ends) or
//! [`Frame::Started`], then sends the command's output and at last its
//! [`Frame::Exit`]; the client sends its input, then [`Frame::StdinEnd`].
//! Who asks is the key proved in the TLS handshake, never a field of the
//! request. Frames are encoded and decoded here without IO, every length
//! checked before anything is buffered.

use serde::{Deserialize, Serialize};

/// The largest frame either end accepts: a request with its command line,
/// or one piece of output.
pub const MAX_EXEC_FRAME: usize = 256 << 10;

/// What the client asks to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The lease whose container runs it.
    pub lease: String,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Run it on a terminal of this size (`-t`); without, on pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WindowSize>,
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// One frame of an exec session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → server, first: what to run.
    Request(ExecRequest),
    /// Server → client: not run, or ended by the provider (the lease
    /// halted), and why; the last frame.
    Refused(String),
    /// Server → client: the command started.
    Started,
    /// Client → server: bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// Client → server: stdin is closed.
    StdinEnd,
    /// Server → client: bytes the command wrote to stdout.
    Stdout(Vec<u8>),
    /// Server → client: bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// Server → client, last: the command's exit code.
    Exit(i32),
    /// Client → server: the terminal's new size.
    Resize(WindowSize),
}

/// A frame that is not the exec protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecWireError {
    /// A frame longer than [`MAX_EXEC_FRAME`].
    #[error("an exec frame of {0} bytes (at most {MAX_EXEC_FRAME})")]
    TooLong(usize),
    /// An unknown frame kind.
    #[error("an exec frame of unknown kind {0}")]
    Kind(u8),
    /// A frame whose body does not fit its kind.
    #[error("a malformed {kind} frame: {why}")]
    Malformed {
        /// The frame's kind.
        kind: &'static str,
        /// What was wrong.
        why: String,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended {0} bytes into a frame")]
    Truncated(usize),
}

const REQUEST: u8 = 1;
const REFUSED: u8 = 2;
const STARTED: u8 = 3;
const STDIN: u8 = 4;
const STDIN_END: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const EXIT: u8 = 8;
const RESIZE: u8 = 9;

impl Frame {
    /// The frame as bytes: its kind, its body's length (u32, big-endian)
    /// and its body.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Request(r) => (
                REQUEST,
                serde_json::to_vec(r).expect("a request encodes").into(),
            ),
            Frame::Refused(why) => (REFUSED, why.as_bytes().into()),
            Frame::Started => (STARTED, (&[][..]).into()),
            Frame::Stdin(b) => (STDIN, b.as_slice().into()),
            Frame::StdinEnd => (STDIN_END, (&[][..]).into()),
            Frame::Stdout(b) => (STDOUT, b.as_slice().into()),
            Frame::Stderr(b) => (STDERR, b.as_slice().into()),
            Frame::Exit(code) => (EXIT, code.to_be_bytes().to_vec().into()),
            Frame::Resize(w) => {
                let mut b = w.rows.to_be_bytes().to_vec();
                b.extend_from_slice(&w.cols.to_be_bytes());
                (RESIZE, b.into())
            }
        };
        let len = u32::try_from(body.len()).expect("frames are small");
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode(kind: u8, body: &[u8]) -> Result<Self, ExecWireError> {
        let malformed = |kind: &'static str, why: String| ExecWireError::Malformed { kind, why };
        let empty = |name: &'static str, f: Frame| {
            if body.is_empty() {
                Ok(f)
            } else {
                Err(malformed(name, format!("{} bytes of body", body.len())))
            }
        };
        match kind {
            REQUEST => serde_json::from_slice(body)
                .map(Frame::Request)
                .map_err(|e| malformed("request", e.to_string())),
            REFUSED => String::from_utf8(body.to_vec())
                .map(Frame::Refused)
                .map_err(|e| malformed("refused", e.to_string())),
            STARTED => empty("started", Frame::Started),
            STDIN => Ok(Frame::Stdin(body.to_vec())),
            STDIN_END => empty("stdin-end", Frame::StdinEnd),
            STDOUT => Ok(Frame::Stdout(body.to_vec())),
            STDERR => Ok(Frame::Stderr(body.to_vec())),
            EXIT => <[u8; 4]>::try_from(body)
                .map(|b| Frame::Exit(i32::from_be_bytes(b)))
                .map_err(|_| malformed("exit", format!("{} bytes, not 4", body.len()))),
            RESIZE => <[u8; 4]>::try_from(body)
                .map(|b| {
                    Frame::Resize(WindowSize {
                        rows: u16::from_be_bytes([b[0], b[1]]),
                        cols: u16::from_be_bytes([b[2], b[3]]),
                    })
                })
                .map_err(|_| malformed("resize", format!("{} bytes, not 4", body.len()))),
            other => Err(ExecWireError::Kind(other)),
        }
    }
}

/// Cuts frames out of the bytes a stream delivers.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Bytes that arrived.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived; an error for bytes that
    /// are not the protocol (checked before the body is buffered).
    pub fn frame(&mut self) -> Result<Option<Frame>, ExecWireError> {
        let Some(head) = self.buf.get(..5) else {
            return Ok(None);
        };
        let kind = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_EXEC_FRAME {
            return Err(ExecWireError::TooLong(len));
        }
        if !(REQUEST..=RESIZE).contains(&kind) {
            return Err(ExecWireError::Kind(kind));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let frame = Frame::decode(kind, &self.buf[5..5 + len]);
        self.buf.drain(..5 + len);
        frame.map(Some)
    }

    /// The stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), ExecWireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ExecWireError::Truncated(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_round_trips_fed_a_byte_at_a_time() {
        let frames = [
            Frame::Request(ExecRequest {
                lease: "l-1".into(),
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                tty: None,
            }),
            Frame::Request(ExecRequest {
                lease: "l-2".into(),
                argv: vec!["sh".into()],
                tty: Some(WindowSize { rows: 24, cols: 80 }),
            }),
            Frame::Resize(WindowSize {
                rows: 50,
                cols: 132,
            }),
            Frame::Refused("no".into()),
            Frame::Started,
            Frame::Stdin(b"in".to_vec()),
            Frame::StdinEnd,
            Frame::Stdout(b"out".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Exit(-9),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        for b in bytes {
            d.feed(&[b]);
            while let Some(f) = d.frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        d.finish().unwrap();
    }

    #[test]
    fn bad_frames_are_errors_before_their_body_is_kept() {
        let mut d = FrameDecoder::default();
        d.feed(&[STDOUT, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.frame(), Err(ExecWireError::TooLong(u32::MAX as usize)));
        let mut d = FrameDecoder::default();
        d.feed(&[42, 0, 0, 0, 0]);
        assert_eq!(d.frame(), Err(ExecWireError::Kind(42)));
        let mut d = FrameDecoder::default();
        d.feed(&[EXIT, 0, 0, 0, 1, 7]);
        assert!(matches!(d.frame(), Err(ExecWireError::Malformed { .. })));
        let mut d = FrameDecoder::default();
        d.feed(&[REQUEST, 0, 0, 0, 2, b'{', b'}']);
        assert!(matches!(d.frame(), Err(ExecWireError::Malformed { .. })));
        let mut d = FrameDecoder::default();
        d.feed(&[STDIN, 0, 0, 0, 9, 1]);
        assert_eq!(d.frame(), Ok(None));
        assert_eq!(d.finish(), Err(ExecWireError::Truncated(6)));
    }
}

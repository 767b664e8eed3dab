//! systemd's notify protocol (`sd_notify`): `READY=1` once the strike is
//! off and the reader open, `WATCHDOG=1` from the deciding loop each
//! second (a loop that hangs is restarted by systemd, `WatchdogSec=`),
//! `STOPPING=1` at the end. Without `$NOTIFY_SOCKET` it does nothing.

use std::os::unix::net::UnixDatagram;

/// A socket to systemd, if it gave one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|name| {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = match name.strip_prefix('@') {
                Some(abstract_name) => {
                    std::os::unix::net::SocketAddr::from_abstract_name(abstract_name).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&name).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Self { socket }
    }

    /// Sends one state line; errors are ignored (systemd may be gone).
    pub fn send(&self, state: &str) {
        if let Some((s, addr)) = &self.socket {
            let _ = s.send_to_addr(state.as_bytes(), addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_speaks_to_the_socket_systemd_names() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            socket: Some((
                UnixDatagram::unbound().expect("socket"),
                std::os::unix::net::SocketAddr::from_pathname(&path).expect("addr"),
            )),
        };
        n.send("READY=1");
        let mut buf = [0u8; 32];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1");
        Notifier { socket: None }.send("WATCHDOG=1");
    }
}

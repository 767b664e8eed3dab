//! Exec sessions: `utter lease exec` served on the provider's node.
//!
//! A session is one QUIC stream of the exec protocol
//! ([`utter_net::exec`]). Who asks is the key the client proved in the TLS
//! handshake; [`admit`] (no IO, tested alone) lets in only the lease's
//! owner, on the lease's provider, while the lease runs. The command runs
//! in the lease's container through a child, `utter sandbox-exec` (the
//! node never creates a container itself), on pipes or, with `-t`, on a
//! pseudo-terminal whose size the client keeps. The session ends when the
//! command does, when the client goes, or when the lease stops running
//! (it ran dry, or it ended): its moment is known in advance from the
//! lease, and every new block is looked at for a top-up or a close.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::sync::mpsc;
use utter_formats::key::Signer;
use utter_leases::{Lease, Status};
use utter_net::exec::{ExecRequest, Frame, FrameDecoder, MAX_EXEC_FRAME, WindowSize};
use utter_net::{Conn, StreamRecv, StreamSend};

use crate::home::Home;
use crate::run::{Shared, lock};

/// How long a client may take to ask, once connected.
const ASK_WITHIN: Duration = Duration::from_secs(10);
/// How long output may still drain after the command exited (a process
/// it left in the background can hold its output open for ever).
const DRAIN: Duration = Duration::from_secs(2);
/// Output is read and sent in pieces of at most this.
const PIECE: usize = 32 << 10;

/// Whether `peer` may run a command in lease `id` (`lease`, as main has
/// it) on the provider whose key is `me`, at `now`; why not, naming the
/// keys, when it may not.
pub fn admit(
    lease: Option<&Lease>,
    id: &str,
    peer: &Signer,
    me: &str,
    now: u64,
) -> Result<(), String> {
    let fingerprint =
        |key: &str| Signer::parse(key).map_or_else(|| key.to_string(), |s| s.fingerprint());
    let Some(l) = lease else {
        return Err(format!(
            "there is no lease {id:?} on this chain; `utter lease status` lists yours"
        ));
    };
    if l.provider != me {
        return Err(format!(
            "lease {id} is provided by {}, not by this node ({}): connect to its provider's node",
            fingerprint(&l.provider),
            fingerprint(me)
        ));
    }
    if Signer::parse(&l.owner).as_ref() != Some(peer) {
        return Err(format!(
            "key {} does not own lease {id}: only its owner, {}, may log in",
            peer.fingerprint(),
            fingerprint(&l.owner)
        ));
    }
    let v = l.view(now);
    match v.status {
        Status::Running | Status::Low | Status::Unheard => Ok(()),
        Status::Pending => Err(format!(
            "lease {id} has not started yet: its provider starts it within seconds, try again"
        )),
        Status::Halted => Err(format!(
            "lease {id} ran dry and is halted (its files are kept): top it up with \
             `utter lease top-up {id} CREDITS` and it resumes"
        )),
        Status::Destroyed | Status::Closed => Err(format!(
            "lease {id} has ended ({}); open a new one with `utter lease open`",
            serde_json::to_value(v.status)
                .ok()
                .and_then(|s| s.as_str().map(str::to_string))
                .unwrap_or_default()
        )),
    }
}

/// Starts serving exec sessions on `runtime`: every connection sent to
/// the returned channel is one client.
pub(crate) fn start(
    runtime: &tokio::runtime::Runtime,
    home: Home,
    shared: Arc<Shared>,
    me: String,
) -> mpsc::UnboundedSender<Conn> {
    let (conns, mut inbound) = mpsc::unbounded_channel::<Conn>();
    runtime.spawn(async move {
        while let Some(conn) = inbound.recv().await {
            let (home, shared, me) = (home.clone(), shared.clone(), me.clone());
            tokio::spawn(async move {
                // Sessions on one connection, one after another.
                while let Some((send, recv)) = conn.accept_stream().await {
                    session(&conn, send, recv, &home, &shared, &me).await;
                }
            });
        }
    });
    conns
}

/// Lease `id` as main has it now, or `None` for a name that is no lease.
fn lease_now(shared: &Shared, id: &str) -> Option<Lease> {
    if !id.starts_with("lease-") || !utter_accounting::is_escrow_name(id) {
        return None;
    }
    crate::leases::lease_at_main(&lock(&shared.ledger), id)
}

/// Whether the session may go on; the lease as read.
async fn check(shared: &Arc<Shared>, id: &str, peer: &Signer, me: &str) -> Result<Lease, String> {
    let (shared, id2, peer, me) = (shared.clone(), id.to_string(), peer.clone(), me.to_string());
    tokio::task::spawn_blocking(move || {
        let lease = lease_now(&shared, &id2);
        admit(lease.as_ref(), &id2, &peer, &me, utter_formats::now())
            .map(|()| lease.expect("admitted"))
    })
    .await
    .unwrap_or_else(|e| Err(format!("cannot read lease {id}: {e}")))
}

async fn send_frame(send: &mut StreamSend, frame: &Frame) -> bool {
    send.write(frame.encode()).await.is_ok()
}

/// Reads the client's first frame, a request.
async fn ask(recv: &mut StreamRecv, decoder: &mut FrameDecoder) -> Result<ExecRequest, String> {
    loop {
        match decoder.frame() {
            Ok(Some(Frame::Request(r))) => return Ok(r),
            Ok(Some(other)) => {
                return Err(format!("a session starts with a request, not {other:?}"));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match recv.read(ASK_WITHIN).await {
            Ok(Some(bytes)) => decoder.feed(&bytes),
            Ok(None) => return Err("the stream ended before a request".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn session(
    conn: &Conn,
    mut send: StreamSend,
    mut recv: StreamRecv,
    home: &Home,
    shared: &Arc<Shared>,
    me: &str,
) {
    let mut decoder = FrameDecoder::default();
    let request = match ask(&mut recv, &mut decoder).await {
        Ok(r) => r,
        Err(why) => {
            let _ = send_frame(&mut send, &Frame::Refused(why)).await;
            send.finish().await;
            return;
        }
    };
    let peer = conn.peer().clone();
    let id = request.lease.clone();
    let refuse = |why: String| {
        eprintln!(
            "exec: refused {} from {} ({}): {why}",
            id,
            peer.fingerprint(),
            conn.addr()
        );
        Frame::Refused(why)
    };
    let mut lease = match check(shared, &id, &peer, me).await {
        Ok(l) => l,
        Err(why) => {
            let _ = send_frame(&mut send, &refuse(why)).await;
            send.finish().await;
            return;
        }
    };
    if request.argv.is_empty() {
        let _ = send_frame(&mut send, &refuse("no command to run".into())).await;
        send.finish().await;
        return;
    }
    let mut running = match Running::spawn(home, &request) {
        Ok(r) => r,
        Err(why) => {
            let _ = send_frame(&mut send, &refuse(why)).await;
            send.finish().await;
            return;
        }
    };
    eprintln!(
        "exec: {} runs {:?} in {id} for {}",
        conn.addr(),
        request.argv,
        peer.fingerprint()
    );
    if !send_frame(&mut send, &Frame::Started).await {
        running.kill();
        return;
    }
    let mut blocks = shared.blocks.subscribe();
    let mut client_open = true;
    let end = loop {
        let runs_out = lease.view(utter_formats::now()).runs_out_at;
        let until = runs_out.map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Duration::from_secs(t).saturating_sub(now)
        });
        tokio::select! {
            out = running.output.recv() => match out {
                Some(Frame::Exit(code)) => break Some(Frame::Exit(code)),
                Some(frame) => if !send_frame(&mut send, &frame).await {
                    break None;
                },
                None => break Some(Frame::Exit(255)),
            },
            got = recv.read(Duration::from_secs(u64::from(u32::MAX))), if client_open => match got {
                Ok(Some(bytes)) => {
                    decoder.feed(&bytes);
                    loop {
                        match decoder.frame() {
                            Ok(Some(Frame::Stdin(b))) => running.stdin(b),
                            Ok(Some(Frame::StdinEnd)) => running.stdin_end(),
                            Ok(Some(Frame::Resize(w))) => running.resize(w),
                            Ok(None) => break,
                            Ok(Some(other)) => {
                                client_open = false;
                                running.kill();
                                eprintln!("exec: {} sent {other:?} inside a session", conn.addr());
                                break;
                            }
                            Err(e) => {
                                client_open = false;
                                running.kill();
                                eprintln!("exec: {} sent bad frames: {e}", conn.addr());
                                break;
                            }
                        }
                    }
                }
                // The client finished its half: the command runs on.
                Ok(None) => {
                    client_open = false;
                    running.stdin_end();
                }
                Err(_) => {
                    running.kill();
                    break None;
                }
            },
            () = sleep_for(until) => {
                match check(shared, &id, &peer, me).await {
                    Ok(l) => lease = l,
                    Err(why) => { running.kill(); break Some(refuse(format!("the session ended: {why}"))) }
                }
            }
            changed = blocks.changed() => {
                if changed.is_err() {
                    running.kill();
                    break Some(Frame::Refused("the provider's node is stopping".into()));
                }
                match check(shared, &id, &peer, me).await {
                    Ok(l) => lease = l,
                    Err(why) => { running.kill(); break Some(refuse(format!("the session ended: {why}"))) }
                }
            }
        }
    };
    if let Some(frame) = end {
        if send_frame(&mut send, &frame).await {
            send.finish().await;
        }
    }
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        // A moment that passed: look again a little later, not in a spin.
        Some(d) => tokio::time::sleep(d.max(Duration::from_millis(100))).await,
        None => std::future::pending().await,
    }
}

/// The command, running in its `utter sandbox-exec` child.
struct Running {
    pidfd: Option<OwnedFd>,
    /// Output frames, then the exit.
    output: mpsc::Receiver<Frame>,
    stdin: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    /// The terminal's master side, with `-t`.
    master: Option<Arc<OwnedFd>>,
}

impl Running {
    fn spawn(home: &Home, request: &ExecRequest) -> Result<Self, String> {
        let mut cmd = home
            .helper_command("sandbox-exec")
            .map_err(|e| format!("cannot run the exec helper: {e}"))?;
        cmd.arg(&request.lease).arg("--").args(&request.argv);
        let (tx, output) = mpsc::channel(16);
        let mut readers = Vec::new();
        let (child, stdin, master) = match request.tty {
            Some(size) => {
                let (master, slave) =
                    open_pty(size).map_err(|e| format!("cannot open a terminal: {e}"))?;
                let dup = |fd: &OwnedFd| {
                    fd.try_clone()
                        .map_err(|e| format!("cannot dup a terminal: {e}"))
                };
                cmd.stdin(Stdio::from(dup(&slave)?))
                    .stdout(Stdio::from(dup(&slave)?))
                    .stderr(Stdio::from(slave));
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start the exec helper: {e}"))?;
                drop(cmd);
                let master = Arc::new(master);
                let reader = std::fs::File::from(dup(&master)?);
                readers.push(pump(reader, tx.clone(), Frame::Stdout));
                let writer = std::fs::File::from(dup(&master)?);
                (child, writer, Some(master))
            }
            None => {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start the exec helper: {e}"))?;
                let out = child.stdout.take().expect("piped");
                let err = child.stderr.take().expect("piped");
                readers.push(pump(out, tx.clone(), Frame::Stdout));
                readers.push(pump(err, tx.clone(), Frame::Stderr));
                let stdin = child.stdin.take().expect("piped");
                (child, std::fs::File::from(OwnedFd::from(stdin)), None)
            }
        };
        let pidfd =
            Pid::from_raw(child.id() as i32).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
        let (stdin_tx, stdin_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let mut stdin = stdin;
                for bytes in stdin_rx {
                    if stdin.write_all(&bytes).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        std::thread::Builder::new()
            .name("exec-wait".into())
            .spawn(move || wait(child, readers, &tx))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(Self {
            pidfd,
            output,
            stdin: Some(stdin_tx),
            master,
        })
    }

    fn stdin(&mut self, bytes: Vec<u8>) {
        if let Some(s) = &self.stdin {
            let _ = s.send(bytes);
        }
    }

    fn stdin_end(&mut self) {
        // On a terminal the command reads end of input as ^D, which the
        // client sends itself; closing the master would hang it up.
        if self.master.is_none() {
            self.stdin = None;
        }
    }

    fn resize(&mut self, w: WindowSize) {
        if let Some(m) = &self.master {
            let _ = rustix::termios::tcsetwinsize(&**m, winsize(w));
        }
    }

    fn kill(&mut self) {
        if let Some(fd) = &self.pidfd {
            let _ = pidfd_send_signal(fd, Signal::KILL);
        }
        self.stdin = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn winsize(w: WindowSize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: w.rows,
        ws_col: w.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A new pseudo-terminal of `size`: (master, slave).
fn open_pty(size: WindowSize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(std::ffi::OsStr::new(
            std::str::from_utf8(name.as_bytes()).map_err(std::io::Error::other)?,
        ))?;
    rustix::termios::tcsetwinsize(&master, winsize(size))?;
    Ok((master, slave.into()))
}

/// Sends what `from` yields as frames made by `frame` until it ends; the
/// handle ends when it did.
fn pump(
    mut from: impl Read + Send + 'static,
    to: mpsc::Sender<Frame>,
    frame: fn(Vec<u8>) -> Frame,
) -> std::sync::mpsc::Receiver<()> {
    let (done, ended) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("exec-output".into())
        .spawn(move || {
            let mut buf = vec![0u8; PIECE.min(MAX_EXEC_FRAME)];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.blocking_send(frame(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = done.send(());
        });
    if spawned.is_err() {
        eprintln!("exec: cannot start a thread for output");
    }
    ended
}

/// Waits for the child, lets its output drain, and sends its exit code.
fn wait(mut child: Child, readers: Vec<std::sync::mpsc::Receiver<()>>, to: &mpsc::Sender<Frame>) {
    let code = match child.wait() {
        Ok(status) => status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        }),
        Err(_) => 255,
    };
    let until = std::time::Instant::now() + DRAIN;
    for r in readers {
        let _ = r.recv_timeout(until.saturating_duration_since(std::time::Instant::now()));
    }
    let _ = to.blocking_send(Frame::Exit(code));
}

#[cfg(test)]
mod tests {
    use super::*;
    use utter_leases::{Phase, Terms};
    use utter_ledger::key::Keypair;

    fn key(name: &str) -> Signer {
        Keypair::generate(name).expect("key").public()
    }

    fn lease(provider: &Signer, owner: &Signer) -> Lease {
        Lease {
            id: "lease-1".into(),
            offer: "o".into(),
            provider: provider.to_openssh(),
            owner: owner.to_openssh(),
            image: "sha256:00".into(),
            terms: Terms {
                millicpu: 100,
                memory: 16 << 20,
                pids: 8,
                disk: 0,
                price: 60,
                grace: 100,
                ports: Vec::new(),
            },
            warn: 10,
            opened: 1_000,
            deposits: 30,
            billed: 0,
            at: 1_000,
            heard: Some(1_000),
            phase: Phase::Running,
            unheard: 0,
            warned: false,
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn only_the_owner_gets_in_on_the_provider_while_the_lease_runs() {
        let (provider, owner, stranger) = (key("p"), key("o"), key("s"));
        let me = provider.to_openssh();
        let l = lease(&provider, &owner);
        let now = 1_001;
        assert_eq!(admit(Some(&l), "lease-1", &owner, &me, now), Ok(()));
        // Another key: refused, both keys named.
        let why = admit(Some(&l), "lease-1", &stranger, &me, now).unwrap_err();
        assert!(why.contains(&stranger.fingerprint()), "{why}");
        assert!(why.contains(&owner.fingerprint()), "{why}");
        // Not this node's lease.
        let why = admit(Some(&l), "lease-1", &owner, &stranger.to_openssh(), now).unwrap_err();
        assert!(why.contains("not by this node"), "{why}");
        // 30 credits at 60 a minute: dry after 30 s.
        let dry = l.view(now).runs_out_at.expect("runs out");
        assert_eq!(dry, 1_030);
        let why = admit(Some(&l), "lease-1", &owner, &me, dry + 1).unwrap_err();
        assert!(why.contains("top it up"), "{why}");
        let why = admit(None, "lease-2", &owner, &me, now).unwrap_err();
        assert!(why.contains("no lease"), "{why}");
        let pending = Lease {
            phase: Phase::Pending,
            heard: None,
            ..l
        };
        let why = admit(Some(&pending), "lease-1", &owner, &me, now).unwrap_err();
        assert!(why.contains("not started"), "{why}");
    }
}

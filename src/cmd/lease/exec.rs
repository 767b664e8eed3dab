//! `utter lease exec`: a command in a lease's container, over QUIC to the
//! provider's node, as the key that owns the lease (the TLS client key is
//! the caller's SSH key; the provider's key, read from the lease, is
//! pinned). With `-t` on a terminal: raw mode here, the window size sent
//! at the start and on every change. The remote exit code is passed on;
//! a refusal (or the provider ending the session) exits 255, as `ssh`
//! does.
//!
//! `utter sandbox-exec` is the provider's side: a child of the node that
//! runs the command in the container on its own stdio.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use utter_formats::key::Signer;
use utter_leases::Lease;
use utter_net::exec::{ExecRequest, Frame, FrameDecoder, WindowSize};
use utter_net::{ALPN_EXEC, Endpoint, Identity};
use utter_node::Home;
use utter_runtime::Stdio;

/// The exit code of a session that did not run, or was ended by the
/// provider.
const REFUSED: u8 = 255;
/// The exit code of a command that could not be started in the
/// container (not in the image, say), as a shell gives it.
const CANNOT_START: u8 = 127;

/// `utter lease exec`
#[derive(Args)]
pub struct ExecArgs {
    /// The lease
    lease: String,
    /// Run on a terminal (interactive: a shell, an editor), the window
    /// size kept
    #[arg(short = 't', long)]
    tty: bool,
    /// The key that opened the lease [default: the node key]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The provider node's QUIC address, HOST:PORT [default: the node
    /// running on this data dir, when it is the provider]
    #[arg(long, value_name = "ADDR")]
    at: Option<SocketAddr>,
    /// The node's API, to read the lease [default: the node running on
    /// this data dir]
    #[arg(long, value_name = "URL", env = "UTTER_NODE")]
    node: Option<String>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn exec(home: &Home, args: ExecArgs) -> Result<ExitCode> {
    let client = home.client(args.node.as_deref());
    let Some(lease) =
        super::read::<Lease>(&client, "leases", &utter_leases::lease_path(&args.lease))?
    else {
        bail!(
            "there is no lease {:?} on the chain; `utter lease status` lists yours",
            args.lease
        );
    };
    let provider = Signer::parse(&lease.provider)
        .with_context(|| format!("lease {}'s provider key is damaged", lease.id))?;
    let addr = match args.at {
        Some(addr) => addr,
        None => local_provider(home, &provider, &lease.id)?,
    };
    let key = home.load_key(args.key.as_deref())?;
    let identity = Identity::new(&key)?;
    let tty = args.tty && rustix::termios::isatty(std::io::stdin());
    let size = tty.then(|| window_size().unwrap_or(WindowSize { rows: 24, cols: 80 }));
    let request = ExecRequest {
        lease: lease.id.clone(),
        argv: args.command,
        tty: if args.tty {
            Some(size.unwrap_or(WindowSize { rows: 24, cols: 80 }))
        } else {
            None
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Raw mode only once connected, restored on every way out.
    let raw = tty.then(RawMode::enter).transpose()?;
    let result = runtime.block_on(session(identity, addr, provider, request, tty));
    drop(raw);
    match result {
        Ok(Ended::Exit(code)) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Ok(Ended::Refused(why)) => {
            eprintln!("error: {why}");
            Ok(ExitCode::from(REFUSED))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(REFUSED))
        }
    }
}

/// The QUIC address of the node on this data dir, which must be lease
/// `id`'s provider.
fn local_provider(home: &Home, provider: &Signer, id: &str) -> Result<SocketAddr> {
    let path = home.p2p_file();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no node with --p2p runs on {} ({} is missing): pass the provider's address with --at HOST:PORT",
            home.root().display(),
            path.display()
        )
    })?;
    let target: utter_node::p2p::Target = text
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
    if target.fingerprint != provider.fingerprint() {
        bail!(
            "the node on {} ({}) is not lease {id}'s provider ({}): pass the provider's address with --at HOST:PORT",
            home.root().display(),
            target.fingerprint,
            provider.fingerprint()
        );
    }
    Ok(target.addr)
}

enum Ended {
    Exit(i32),
    Refused(String),
}

async fn session(
    identity: Identity,
    addr: SocketAddr,
    provider: Signer,
    request: ExecRequest,
    tty: bool,
) -> Result<Ended> {
    let endpoint = Endpoint::client(identity, addr.is_ipv6())?;
    let conn = endpoint
        .connect(addr, ALPN_EXEC, Some(provider.fingerprint()))
        .await
        .with_context(|| format!("cannot reach the provider's node at {addr}"))?;
    let (mut send, mut recv) = conn.open_stream().await?;
    send.write(Frame::Request(request).encode()).await?;
    // Input: a thread reads stdin (it blocks); frames go out from here.
    let (input, mut inputs) = tokio::sync::mpsc::channel::<Frame>(16);
    let stdin_input = input.clone();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = stdin_input.blocking_send(Frame::StdinEnd);
                        break;
                    }
                    Ok(n) => {
                        if stdin_input
                            .blocking_send(Frame::Stdin(buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        })
        .context("cannot start a thread")?;
    let mut resized = if tty {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .context("cannot watch the window size")?,
        )
    } else {
        None
    };
    let mut decoder = FrameDecoder::default();
    let mut started = false;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        while let Some(frame) = decoder.frame()? {
            match frame {
                Frame::Started => started = true,
                Frame::Stdout(b) => {
                    out.write_all(&b)?;
                    out.flush()?;
                }
                Frame::Stderr(b) => {
                    err.write_all(&b)?;
                    err.flush()?;
                }
                Frame::Exit(code) => return Ok(Ended::Exit(code)),
                Frame::Refused(why) => return Ok(Ended::Refused(why)),
                other => bail!("the provider's node sent {other:?}, which only a client sends"),
            }
        }
        tokio::select! {
            got = recv.read(Duration::from_secs(u64::from(u32::MAX))) => match got? {
                Some(bytes) => decoder.feed(&bytes),
                None => {
                    decoder.finish()?;
                    bail!(
                        "the provider's node ended the session without an exit code{}",
                        if started { "" } else { " (the command never started)" }
                    );
                }
            },
            Some(frame) = inputs.recv() => send.write(frame.encode()).await?,
            Some(()) = async {
                match &mut resized {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(w) = window_size() {
                    let _ = input.send(Frame::Resize(w)).await;
                }
            }
        }
    }
}

/// This terminal's size.
fn window_size() -> Option<WindowSize> {
    let w = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (w.ws_row > 0 && w.ws_col > 0).then_some(WindowSize {
        rows: w.ws_row,
        cols: w.ws_col,
    })
}

/// The local terminal in raw mode (keys go to the remote side as typed),
/// restored when dropped.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Result<Self> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

/// `utter sandbox-exec` (internal): runs `argv` in lease `name`'s
/// container on this process's stdio and exits with its code. On a
/// terminal it makes the terminal its session's, so a shell gets job
/// control.
pub fn sandbox(home: &Home, name: &str, argv: &[String]) -> Result<ExitCode> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let stdin = std::io::stdin();
    if rustix::termios::isatty(&stdin) {
        rustix::process::setsid().context("cannot start a session")?;
        rustix::process::ioctl_tiocsctty(&stdin).context("cannot take the terminal")?;
    }
    let rt = home.runtime()?;
    match rt.exec(
        name,
        argv,
        Stdio::Inherit,
        Duration::from_secs(u64::from(u32::MAX)),
        0,
    ) {
        Ok(finished) => Ok(ExitCode::from(
            finished.outcome.exit_code().clamp(0, 255) as u8
        )),
        // As a shell says a command it cannot start.
        Err(e) => {
            eprintln!("error: cannot run {argv:?} in lease {name}: {e}");
            Ok(ExitCode::from(CANNOT_START))
        }
    }
}

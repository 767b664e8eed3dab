//! `doorbot`: the door (or tool) controller's command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use utter_doorbot::config::{Config, DEFAULT_PATH};
use utter_doorbot::core::Lines;
use utter_doorbot::outputs::{NAMES, Outputs};
use utter_doorbot::run::{self, Status, unix_now};
use utter_formats::Keypair;

/// A makerspace door or tool controller on utter: decides every badge
/// locally, keeps working offline, records every event on the ledger, and
/// fails secure.
#[derive(Parser)]
#[command(name = "doorbot", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the strike is off until a member's badge opens it)
    Run {
        /// The config
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Make this controller's key (once) and print the request an admin
    /// submits to let it log events for the door
    Enroll {
        /// The door (or tool) as the doors dapp names it
        #[arg(long)]
        door: String,
        /// Where the key goes (default: the config's `key`, else
        /// /etc/utter/doorbot.key)
        #[arg(long)]
        key: Option<PathBuf>,
        /// The config, to take the key's path from
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show the running controller: rules and their age, the node, events
    /// queued, the last events
    Status {
        /// The config
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Switch each output on in turn (strike, green, red, beeper), to check
    /// the wiring; stop `doorbot run` first
    TestRelay {
        /// The config
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// How long each stays on, seconds
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
    /// Switch every output off and exit (systemd's ExecStopPost, so the
    /// strike is off however `run` ended)
    Lock {
        /// The config
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// glibc's malloc makes up to 8 arenas per core, one for each thread that
/// finds the others busy, and each keeps what was freed in it: a node's
/// tokio, RocksDB and pull threads ended up holding 8 of them, 15-25 MiB of
/// a follower's resident memory (`./x bench doorbot`), which on a 1 GiB
/// board is what matters. Two are enough for 2-4 cores. An explicit
/// `MALLOC_ARENA_MAX` is left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fewer_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets an allocator parameter; it is called first
        // thing in main, before any other thread exists, and takes no
        // pointers.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fewer_malloc_arenas() {}

fn main() -> ExitCode {
    fewer_malloc_arenas();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("doorbot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())
                    .context("cannot handle signals")?;
            }
            let backend = run::backend(&config)?;
            let stdin = matches!(config.reader, utter_doorbot::readers::ReaderConfig::Stdin);
            match run::run(&config, backend, stop)? {
                run::Ended::Stopped => Ok(ExitCode::SUCCESS),
                run::Ended::ReaderClosed if stdin => Ok(ExitCode::SUCCESS),
                run::Ended::ReaderClosed => bail!("the badge reader stopped: the strike is off"),
            }
        }
        Command::Enroll {
            door,
            key,
            config,
            json,
        } => enroll(&door, key, &config, json),
        Command::Status { config, json } => status(&Config::load(&config)?, json),
        Command::TestRelay { config, secs } => {
            let config = Config::load(&config)?;
            let mut out = Outputs::new(run::backend(&config)?).map_err(anyhow::Error::msg)?;
            for (i, name) in NAMES.iter().enumerate() {
                let mut lines = Lines::default();
                match i {
                    0 => lines.strike = true,
                    1 => lines.green = true,
                    2 => lines.red = true,
                    _ => lines.beeper = true,
                }
                eprintln!("{name} on for {secs} s");
                out.apply(lines).map_err(anyhow::Error::msg)?;
                std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
                out.apply(Lines::default()).map_err(anyhow::Error::msg)?;
            }
            eprintln!("every output off");
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock { config } => {
            let config = Config::load(&config)?;
            // Requesting the lines sets them off; dropping keeps them off.
            drop(Outputs::new(run::backend(&config)?).map_err(anyhow::Error::msg)?);
            eprintln!("every output off");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn enroll(door: &str, key: Option<PathBuf>, config: &Path, json: bool) -> Result<ExitCode> {
    if !utter_doors::is_door(door) {
        bail!("door {door:?} must be 1-64 of a-z, 0-9, - and _ (as the doors dapp names it)");
    }
    let path = match key {
        Some(k) => k,
        None => Config::load(config)
            .map(|c| c.key)
            .unwrap_or_else(|_| PathBuf::from("/etc/utter/doorbot.key")),
    };
    let (keypair, made) = if path.exists() {
        (
            Keypair::load(&path).with_context(|| format!("the key {}", path.display()))?,
            false,
        )
    } else {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let k = Keypair::generate(&format!("doorbot {door}"))?;
        k.save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        (k, true)
    };
    let public = keypair.public().to_openssh();
    let args = serde_json::json!({"door": door, "key": public});
    let command =
        format!("utter tx submit doors authorize-controller --key ADMIN_KEY --args '{args}'");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "key_file": path,
                "made": made,
                "public": public,
                "fingerprint": keypair.public().fingerprint(),
                "request": {"dapp": "doors", "action": "authorize-controller", "args": args},
            })
        );
    } else {
        println!(
            "{} the controller's key {} ({})",
            if made { "made" } else { "kept" },
            path.display(),
            keypair.public().fingerprint()
        );
        println!("an admin lets it log events for {door} with:\n  {command}");
        println!(
            "and, for its events to be kept while offline, its node is a device of the chain (utter init --device NAME=NODE_KEY)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(config: &Config, json: bool) -> Result<ExitCode> {
    let Some(s) = run::read_status(&config.state_dir) else {
        bail!(
            "no status in {}: `doorbot run --config …` has not run with this state_dir",
            config.state_dir.display()
        );
    };
    let running = unix_now().saturating_sub(s.updated) <= 5
        && Path::new(&format!("/proc/{}", s.pid)).exists();
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["running"] = serde_json::json!(running);
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    print_status(&s, running);
    Ok(if running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn print_status(s: &Status, running: bool) {
    let now = unix_now();
    let ago = |t: u64| human(now.saturating_sub(t));
    println!(
        "{} ({:?}): {}",
        s.door,
        s.mode,
        if running {
            format!("{}, {:?}", s.phase, s.health)
        } else {
            format!("NOT RUNNING (last seen {} ago)", ago(s.updated))
        }
    );
    match (&s.rules_block, s.rules_height, s.rules_time) {
        (Some(b), Some(h), Some(t)) => println!(
            "rules:  block {} (height {h}), {} old; current as of {} ago",
            &b[..12.min(b.len())],
            ago(t),
            s.fresh_at.map_or("never".into(), ago)
        ),
        _ => println!("rules:  none yet (every badge is denied)"),
    }
    println!(
        "node:   {}",
        match (s.node_reachable, s.online) {
            (true, true) => "reachable, online".to_string(),
            (true, false) => "reachable, cut off from the network".to_string(),
            _ => "unreachable".to_string(),
        }
    );
    if let Some(e) = &s.last_error {
        println!("last problem: {e}");
    }
    println!(
        "events: {} queued for the node, {} waiting for main, {} on main{}",
        s.queued,
        s.unconfirmed,
        s.committed,
        if s.unrecorded > 0 {
            format!(", {} cards denied unrecorded (no rules)", s.unrecorded)
        } else {
            String::new()
        }
    );
    for e in &s.last_events {
        println!(
            "  {} ago  {:<7} {}  {}{}",
            ago(e.time),
            if e.granted { "open" } else { "DENIED" },
            e.badge,
            e.reason,
            e.session
                .as_ref()
                .map_or(String::new(), |x| format!(" [session {x}]"))
        );
    }
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} d", s / 86_400),
    }
}

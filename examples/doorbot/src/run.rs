//! `doorbot run`: the driver around [`Core`]. One thread decides; the
//! reader, the inputs and the node link are threads that send to it.
//!
//! Order on a read: hash the card (it is never kept), decide with the
//! rules in memory, **write the event to the journal before the outputs
//! change**, drive them, then sync the journal to the disk (see
//! [`crate::journal`]). An event that cannot be written keeps the door
//! shut. Any output error faults the controller: strike off, exit,
//! and systemd (or whoever runs it) starts it again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use serde::{Deserialize, Serialize};
use utter_formats::Keypair;

use crate::config::Config;
use crate::core::{Core, Health, Millis, Outcome, Read};
use crate::journal::{Cursor, Journal, Recorded};
use crate::outputs::{Backend, Outputs, OutputsConfig};
use crate::readers::{self, Seen};
use crate::rules::{self, Copy, Gate};
use crate::uplink::{self, Update};

/// The status file `doorbot run` keeps and `doorbot status` reads.
pub const STATUS: &str = "status.json";

/// What `doorbot status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The door.
    pub door: String,
    /// `door` or `tool`.
    pub mode: crate::core::Mode,
    /// The running process.
    pub pid: u32,
    /// When this was written, Unix seconds.
    pub updated: u64,
    /// ready, open, denied, read-error, in-use, fault.
    pub phase: String,
    /// online, offline, no-rules.
    pub health: Health,
    /// The rules' block, if any.
    pub rules_block: Option<String>,
    /// Its height.
    pub rules_height: Option<u64>,
    /// Its time, Unix seconds.
    pub rules_time: Option<u64>,
    /// When the rules were last known current.
    pub fresh_at: Option<u64>,
    /// Whether the node answers.
    pub node_reachable: bool,
    /// Whether the node is in touch with the network.
    pub online: bool,
    /// The last problem with the node or the disk.
    pub last_error: Option<String>,
    /// Events recorded and not yet at the node.
    pub queued: usize,
    /// At the node, not yet on main.
    pub unconfirmed: usize,
    /// Events on main.
    pub committed: usize,
    /// Cards read with no salt to name them (denied, not recorded).
    pub unrecorded: u64,
    /// The last events, newest last.
    pub last_events: Vec<Recorded>,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    utter_formats::now()
}

/// How a run ended (a fault is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `stop` was set (SIGTERM, SIGINT).
    Stopped,
    /// The badge reader ended (stdin closed, a device gone).
    ReaderClosed,
}

/// Runs the controller until `stop` is set, the reader ends or a fault.
/// `backend` drives the outputs (the config's, or a test's).
pub fn run(
    config: &Config,
    backend: Box<dyn Backend>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Ended> {
    // Strike off before anything else can fail.
    let outputs = Outputs::new(backend).map_err(anyhow::Error::msg)?;
    let (seen_tx, seen_rx) = crossbeam_channel::bounded::<Seen>(64);
    readers::start(&config.reader, seen_tx)?;
    run_with(config, outputs, seen_rx, stop)
}

/// [`run`] with the reads from `seen_rx` (a reader's thread, a test's
/// fake reader).
pub fn run_with(
    config: &Config,
    mut outputs: Outputs,
    seen_rx: Receiver<Seen>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Ended> {
    use anyhow::Context as _;
    let key = Keypair::load(&config.key).with_context(|| {
        format!(
            "the controller's key {}: make it with `doorbot enroll --door {}`",
            config.key.display(),
            config.door
        )
    })?;
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let journal = Journal::open(dir)?;
    // The journal is synced to the disk on a thread of its own, right
    // after each event, so the door's thread never waits for the disk.
    let (sync_tx, sync_rx) = crossbeam_channel::bounded::<()>(1);
    let (sync_err_tx, sync_err) = crossbeam_channel::unbounded::<String>();
    let file = journal.sync_handle()?;
    std::thread::Builder::new()
        .name("journal-sync".into())
        .spawn(move || {
            while sync_rx.recv().is_ok() {
                if let Err(e) = file.sync_data() {
                    let _ = sync_err_tx.send(e.to_string());
                }
            }
        })?;
    let journal = Arc::new(Mutex::new(journal));
    let (status_tx, status_rx) = crossbeam_channel::bounded::<Status>(1);
    let status_dir = dir.clone();
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            while let Ok(status) = status_rx.recv() {
                let bytes = serde_json::to_vec_pretty(&status).expect("a status serializes");
                let path = status_dir.join(STATUS);
                let tmp = status_dir.join(".status.json.tmp");
                if let Err(e) =
                    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path))
                {
                    eprintln!("doorbot: cannot write {}: {e}", path.display());
                }
            }
        })?;
    let mut gate = Gate::new(
        &config.door,
        config.max_offline,
        config.offline_roles.clone(),
    );
    let (copy, damage) = Copy::load(dir);
    for d in &damage {
        eprintln!("doorbot: {d}");
    }
    let mut last_error = damage.first().map(ToString::to_string);
    if let Some(copy) = &copy {
        gate.set(copy);
        if let Some(at) = rules::load_fresh(dir) {
            gate.fresh_since(at);
        }
        eprintln!(
            "doorbot: rules of block {} (height {}) from disk",
            copy.bundle.block, copy.bundle.height
        );
    } else {
        eprintln!("doorbot: no rules yet: every badge is denied until the node sends them");
    }

    let inputs = start_inputs(config)?;
    let (up_tx, up_rx) = crossbeam_channel::unbounded::<Update>();
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
    uplink::start(
        config,
        journal.clone(),
        copy.as_ref().map(|c| c.bundle.block.to_string()),
        up_tx,
        wake_rx,
    );

    let clock = Instant::now();
    let ms = || clock.elapsed().as_millis() as Millis;
    let mut core = Core::new(config.timing, config.mode, inputs.has_activity);
    let (mut reachable, mut online, mut unrecorded) = (false, false, 0u64);
    let mut last_status = None::<Instant>;
    let watchdog = crate::notify::Notifier::from_env();
    watchdog.send("READY=1");
    eprintln!(
        "doorbot: {} ({:?}) ready; key {}",
        config.door,
        config.mode,
        key.public().fingerprint()
    );

    let health = |gate: &Gate, online: bool| {
        if !gate.usable(unix_now()) {
            Health::NoRules
        } else if online {
            Health::Online
        } else {
            Health::Offline
        }
    };

    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(Ended::Stopped);
        }
        let mut record = None;
        let mut written = false;
        select! {
            recv(seen_rx) -> seen => match seen {
                Err(_) => break Ok(Ended::ReaderClosed),
                Ok(seen) => {
                    let now = ms();
                    let read = match seen {
                        Seen::Card(card) => match gate.salt() {
                            Some(salt) => Read::Badge(salt.badge(card)),
                            None => Read::Unsalted,
                        },
                        Seen::Error(why) => Read::Error(why),
                    };
                    let wall = unix_now();
                    match core.read(now, read, |b| gate.decide(b, wall)) {
                        Outcome::Decided(ev) => record = Some((ev, wall)),
                        Outcome::DeniedUnrecorded => {
                            unrecorded += 1;
                            eprintln!("doorbot: denied a card: no rules (no salt) yet to name it");
                        }
                        Outcome::ReadError => eprintln!("doorbot: read error"),
                        Outcome::Ignored => {}
                    }
                }
            },
            recv(up_rx) -> u => match u {
                Ok(Update::Rules(copy)) => {
                    gate.set(&copy);
                    eprintln!("doorbot: rules of block {} (height {})", copy.bundle.block, copy.bundle.height);
                }
                Ok(Update::Node { online: o, current }) => {
                    reachable = true;
                    online = o;
                    if o && current {
                        // In memory here; the follow thread saves it.
                        gate.fresh(unix_now());
                    }
                }
                Ok(Update::Unreachable(why)) => {
                    if reachable || last_error.as_deref() != Some(why.as_str()) {
                        eprintln!("doorbot: the node: {why}");
                    }
                    reachable = false;
                    online = false;
                    last_error = Some(why);
                }
                Ok(Update::SaveFailed(why)) => last_error = Some(why),
                Ok(Update::Refused(why)) => {
                    eprintln!("doorbot: the node refused an event: {why}");
                    last_error = Some(why);
                }
                Err(_) => break Err(anyhow::anyhow!("the node link stopped")),
            },
            recv(inputs.rx) -> i => match i {
                Ok(Input::Contact(open)) => core.contact(open),
                Ok(Input::Activity) => core.activity(ms()),
                Err(_) => break Err(anyhow::anyhow!("the door contact input stopped")),
            },
            default(Duration::from_millis(10)) => {}
        }
        let now = ms();
        core.set_health(health(&gate, online));
        if let Some(ev) = core.tick(now) {
            record = Some((ev, unix_now()));
        }
        if let Some((ev, wall)) = record {
            let chain = gate.chain().unwrap_or_default().to_string();
            let recorded = journal.lock().unwrap_or_else(|e| e.into_inner()).record(
                &key,
                &chain,
                &config.door,
                &ev,
                wall,
            );
            match recorded {
                Ok(id) => {
                    written = true;
                    let _ = wake_tx.try_send(());
                    eprintln!(
                        "doorbot: {} {} ({}) [{}]",
                        if ev.granted { "granted" } else { "denied" },
                        ev.badge.short(),
                        ev.reason,
                        id
                    );
                }
                Err(e) => {
                    // Not on disk: it must not take effect.
                    core.unrecorded(now);
                    eprintln!("doorbot: {e}: the door stays shut");
                    last_error = Some(e.to_string());
                }
            }
        }
        if let Err(e) = outputs.apply(core.lines(now)) {
            core.fault();
            outputs.all_off();
            break Err(anyhow::anyhow!("an output failed ({e}): the strike is off"));
        }
        if written {
            let _ = sync_tx.try_send(());
        }
        if let Ok(e) = sync_err.try_recv() {
            eprintln!("doorbot: cannot sync the event journal: {e}");
            last_error = Some(format!("cannot sync the event journal: {e}"));
        }
        if last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_status = Some(Instant::now());
            watchdog.send("WATCHDOG=1");
            let j = journal.lock().unwrap_or_else(|e| e.into_inner());
            let Cursor { sent, committed } = j.cursor();
            let block = gate.block();
            let status = Status {
                door: config.door.clone(),
                mode: config.mode,
                pid: std::process::id(),
                updated: unix_now(),
                phase: core.phase_name().into(),
                health: core.health(),
                rules_block: block.map(|b| b.0.to_string()),
                rules_height: block.map(|b| b.1),
                rules_time: block.map(|b| b.2),
                fresh_at: gate.fresh_at(),
                node_reachable: reachable,
                online,
                last_error: last_error.clone(),
                queued: j.len() - sent,
                unconfirmed: sent - committed,
                committed,
                unrecorded,
                last_events: j.last(10),
            };
            drop(j);
            // Written by a thread of its own: the door's never waits for
            // the disk.
            let _ = status_tx.try_send(status);
        }
    };
    outputs.all_off();
    watchdog.send("STOPPING=1");
    result
}

/// An input line's change.
#[derive(Debug)]
enum Input {
    Contact(bool),
    Activity,
}

struct Inputs {
    rx: Receiver<Input>,
    has_activity: bool,
}

/// The door contact and activity inputs, when the GPIO config has them.
fn start_inputs(config: &Config) -> anyhow::Result<Inputs> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let OutputsConfig::Gpio {
        chip,
        contact,
        activity,
        ..
    } = &config.outputs
    else {
        // No inputs: the sender stays alive so the channel never ends.
        std::mem::forget(tx);
        return Ok(Inputs {
            rx,
            has_activity: false,
        });
    };
    let lines: Vec<_> = contact.iter().chain(activity.iter()).copied().collect();
    if lines.is_empty() {
        std::mem::forget(tx);
        return Ok(Inputs {
            rx,
            has_activity: false,
        });
    }
    let request = crate::outputs::Gpio::inputs(chip, &lines, "doorbot-inputs")?;
    let (contact, activity) = (contact.map(|l| l.line), activity.map(|l| l.line));
    std::thread::Builder::new()
        .name("inputs".into())
        .spawn(move || {
            loop {
                let Ok(e) = request.read_edge_event() else {
                    return;
                };
                let active = e.kind == gpiocdev::line::EdgeKind::Rising;
                let input = if Some(e.offset) == contact {
                    Input::Contact(active)
                } else if Some(e.offset) == activity {
                    Input::Activity
                } else {
                    continue;
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
        })?;
    Ok(Inputs {
        rx,
        has_activity: activity.is_some(),
    })
}

/// The configured outputs' backend.
pub fn backend(config: &Config) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match &config.outputs {
        OutputsConfig::Print => Box::new(crate::outputs::Print),
        OutputsConfig::Gpio {
            chip,
            strike,
            green,
            red,
            beeper,
            ..
        } => Box::new(crate::outputs::Gpio::open(
            chip,
            [Some(*strike), *green, *red, *beeper],
            "doorbot",
        )?),
    })
}

/// Reads the status file of the controller in `dir`.
pub fn read_status(dir: &Path) -> Option<Status> {
    serde_json::from_slice(&std::fs::read(dir.join(STATUS)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::badge::{CardNumber, Salt};
    use crate::outputs::Recorder;
    use crate::rules::Copy;
    use std::collections::BTreeMap;
    use utter_client::api::RulesBundle;
    use utter_dapp_sdk::{State, Tx, json};

    const SALT: &str = "00112233445566778899aabbccddeeff";
    const ADA: u64 = 1; // admin
    const MAX: u64 = 2; // member
    const SUE: u64 = 3; // suspended

    fn hash(card: u64) -> String {
        Salt::from_file(SALT)
            .expect("salt")
            .badge(CardNumber::from_value(card))
            .as_str()
            .to_string()
    }

    /// A makerspace made by the dapps themselves, as a node's rules bundle
    /// dated `time`.
    fn bundle(time: u64) -> RulesBundle {
        let dir = tempfile::tempdir().expect("tmp");
        let (m_dir, d_dir) = (dir.path().join("membership"), dir.path().join("doors"));
        let mut members = State::at(&m_dir);
        let mut doors = State::at(&d_dir);
        let key = utter_dapp_sdk::test_key;
        let admin = key(1);
        let txs = [
            json!({"key": admin, "name": "Ada", "salt": SALT, "roles": ["admin"]}),
            json!({"key": key(2), "name": "Max"}),
            json!({"key": key(3), "name": "Sue"}),
        ];
        for args in txs {
            utter_membership::apply(&Tx::new(&admin, "add-member", args), &mut members)
                .expect("add");
        }
        for (who, card) in [(1, ADA), (2, MAX), (3, SUE)] {
            let args = json!({"key": key(who), "badge": hash(card)});
            utter_membership::apply(&Tx::new(&admin, "add-badge", args), &mut members)
                .expect("badge");
        }
        utter_membership::apply(
            &Tx::new(&admin, "suspend", json!({"key": key(3)})),
            &mut members,
        )
        .expect("suspend");
        members.flush().expect("flush");
        utter_doors::apply(
            time,
            &Tx::new(&admin, "define-door", json!({"name": "front"})),
            &mut doors,
            &mut members,
        )
        .expect("door");
        doors.flush().expect("flush");
        let mut files = BTreeMap::new();
        for (dapp, root) in [("membership", &m_dir), ("doors", &d_dir)] {
            let mut stack = vec![root.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).expect("read_dir") {
                    let p = e.expect("entry").path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        let rel = p
                            .strip_prefix(root)
                            .expect("inside")
                            .to_string_lossy()
                            .into_owned();
                        files.insert(
                            format!("{dapp}/{rel}"),
                            std::fs::read_to_string(&p).expect("text"),
                        );
                    }
                }
            }
        }
        RulesBundle {
            block: "00".repeat(20).parse().expect("id"),
            height: 7,
            time: time as i64,
            files,
        }
    }

    struct Bot {
        dir: tempfile::TempDir,
        rec: Recorder,
        reads: Option<crossbeam_channel::Sender<Seen>>,
        stop: Arc<AtomicBool>,
        ended: Option<std::thread::JoinHandle<anyhow::Result<Ended>>>,
    }

    /// A controller with no node (nothing listens on port 9) and, when
    /// given, rules on disk as a node once sent them.
    fn bot(rules: Option<(RulesBundle, u64)>, extra: &str) -> Bot {
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("key");
        Keypair::generate("door")
            .expect("key")
            .save(&key)
            .expect("save");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("mkdir");
        if let Some((bundle, fresh)) = rules {
            Copy::new("space", bundle).save(&state).expect("save");
            rules::save_fresh(&state, fresh).expect("fresh");
        }
        let config = Config::parse(&format!(
            "door = \"front\"\nnode = \"http://127.0.0.1:9\"\nkey = {key:?}\nstate_dir = {state:?}\n{extra}\n[reader]\nkind = \"stdin\"\n[outputs]\nkind = \"print\"\n"
        ))
        .expect("config");
        let rec = Recorder::default();
        let outputs = Outputs::new(Box::new(rec.clone())).expect("outputs");
        let (tx, rx) = crossbeam_channel::bounded(64);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let ended = std::thread::spawn(move || run_with(&config, outputs, rx, s));
        Bot {
            dir,
            rec,
            reads: Some(tx),
            stop,
            ended: Some(ended),
        }
    }

    impl Bot {
        fn card(&self, n: u64) {
            self.reads
                .as_ref()
                .expect("reader")
                .send(Seen::Card(CardNumber::from_value(n)))
                .expect("send");
        }

        fn journal(&self) -> Vec<Recorded> {
            Journal::open(&self.dir.path().join("state"))
                .expect("journal")
                .last(100)
        }

        /// Waits for `done`, up to 10 s.
        fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
            let t = Instant::now();
            while !done(self) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "waited 10 s for {what}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        fn end(mut self) -> anyhow::Result<Ended> {
            self.stop.store(true, Ordering::SeqCst);
            let r = self
                .ended
                .take()
                .expect("running")
                .join()
                .expect("no panic");
            assert_eq!(self.rec.levels(), [false; 4], "every output off at the end");
            r
        }
    }

    #[test]
    fn offline_on_rules_from_disk_a_member_opens_a_suspended_one_is_denied_and_both_are_journaled()
    {
        let now = unix_now();
        let b = bot(Some((bundle(now - 60), now - 60)), "");
        b.card(MAX);
        b.until("the strike", |b| b.rec.strike());
        assert_eq!(b.journal().len(), 1, "recorded before the strike moved");
        b.until("the relock", |b| !b.rec.strike());
        b.card(SUE);
        b.until("the second event", |b| b.journal().len() == 2);
        let j = b.journal();
        assert!(
            j[0].granted && j[0].reason.contains("Max may enter"),
            "{j:?}"
        );
        assert!(!j[1].granted && j[1].reason.contains("suspended"), "{j:?}");
        let log = b.rec.log.lock().expect("log").clone();
        assert_eq!(
            log.iter().filter(|(i, on)| *i == 0 && *on).count(),
            1,
            "opened once"
        );
        assert_eq!(b.end().expect("ran"), Ended::Stopped);
    }

    #[test]
    fn with_no_rules_everyone_is_denied_and_nothing_is_recorded() {
        let b = bot(None, "");
        b.card(ADA);
        b.until("the red light", |b| b.rec.levels()[2]);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!b.rec.strike());
        assert!(b.journal().is_empty());
        b.end().expect("ran");
    }

    #[test]
    fn rules_older_than_max_offline_admit_only_the_offline_roles() {
        let old = unix_now() - 8 * 86_400;
        let b = bot(
            Some((bundle(old), old)),
            "offline_roles = [\"admin\"]\n[timing]\nopen_ms = 50\ndeny_ms = 50\n",
        );
        b.card(MAX);
        b.until("Max's event", |b| b.journal().len() == 1);
        // Reads during the back-off are ignored: badge until one is taken.
        b.until("Ada's event", |b| {
            b.card(ADA);
            std::thread::sleep(Duration::from_millis(20));
            b.journal().len() == 2
        });
        let j = b.journal();
        assert!(
            !j[0].granted && j[0].reason.contains("only admin may enter"),
            "{j:?}"
        );
        assert!(
            j[1].granted && j[1].reason.contains("admitted as admin"),
            "{j:?}"
        );
        b.end().expect("ran");
    }

    #[test]
    fn a_damaged_rules_file_falls_back_to_the_one_before_and_never_to_nobody() {
        let now = unix_now();
        let dir = tempfile::tempdir().expect("tmp");
        let mut newer = bundle(now);
        Copy::new("space", bundle(now - 10))
            .save(dir.path())
            .expect("save");
        newer.height = 8;
        Copy::new("space", newer).save(dir.path()).expect("save");
        // Truncated, as a broken SD card might leave it.
        let path = dir.path().join(rules::FILE);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        let (copy, damage) = Copy::load(dir.path());
        assert_eq!(copy.expect("the previous copy").bundle.height, 7);
        assert!(damage[0].to_string().contains("damaged"), "{}", damage[0]);
        // A flipped byte inside a member's record: the hash catches it.
        let mut copy = Copy::new("space", bundle(now));
        let file = copy.bundle.files.values_mut().next().expect("a file");
        file.push(' ');
        std::fs::write(&path, serde_json::to_vec(&copy).expect("json")).expect("write");
        std::fs::remove_file(dir.path().join("rules.prev.json")).expect("rm");
        let (none, damage) = Copy::load(dir.path());
        assert!(none.is_none());
        assert!(damage[0].to_string().contains("hash"), "{}", damage[0]);
    }

    #[test]
    fn an_output_that_fails_stops_the_controller_with_every_line_off() {
        let now = unix_now();
        let b = bot(Some((bundle(now), now)), "");
        b.rec.fail_on.store(true, Ordering::SeqCst);
        b.card(MAX);
        let mut b = b;
        let ended = b.ended.take().expect("running").join().expect("no panic");
        let err = ended.expect_err("a fault");
        assert!(err.to_string().contains("the strike is off"), "{err}");
        assert_eq!(b.rec.levels(), [false; 4]);
    }

    #[test]
    fn a_reader_that_dies_in_the_middle_of_an_open_leaves_the_strike_off() {
        let now = unix_now();
        let mut b = bot(Some((bundle(now), now)), "");
        b.card(MAX);
        b.until("the strike", |b| b.rec.strike());
        // The reader's thread panics: its end of the channel drops.
        let reads = b.reads.take().expect("reader");
        let _ = std::thread::spawn(move || {
            let _keep = reads;
            panic!("the reader thread dies");
        })
        .join();
        let ended = b.ended.take().expect("running").join().expect("no panic");
        assert_eq!(ended.expect("ended"), Ended::ReaderClosed);
        assert_eq!(
            b.rec.levels(),
            [false; 4],
            "the open was cut short, strike off"
        );
    }
}

//! The provider agent: a node whose key provides leases (the `leases`
//! dapp's offers) runs them.
//!
//! It watches main and keeps each of its leases' containers where the
//! lease is, by [`plan`] (no IO, tested alone): started when a lease opens
//! (detached, with the lease's memory, pids and CPU, no network, a
//! writable `/data` kept under the data dir), frozen the second a lease
//! runs dry (the moment is known in advance, so the agent wakes for it),
//! thawed when a top-up resumes it, removed when it ends. It heartbeats
//! its leases every [`HEARTBEAT_EVERY`] seconds (billing runs only while
//! heartbeats come), claims top-ups paid into escrow, and settles earnings
//! (`accounting escrow-settle`), all as transactions signed with the node
//! key and admitted to this node's own mempool.
//!
//! Containers outlive the node (they are detached): a restarted node lists
//! them and adopts the ones its leases own, so a lease is never lost or
//! doubled by a restart. Containers are created by a one-shot child,
//! `utter sandbox-lease` ([`serve_op`]), since the node itself never
//! creates one (see the crate's docs).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utter_dapp_sdk::State;
use utter_executor::Images as _;
use utter_formats::tx::{Request, sign_requests};
use utter_leases::{HEARTBEAT_EVERY, Lease};
use utter_ledger::key::Keypair;
use utter_ledger::{Block, Ledger, MAIN};
use utter_membership::key_id;
use utter_runtime::spec::{Limits, Mount};
use utter_runtime::{Job, Runtime};

use crate::NodeImages;
use crate::home::{Home, HomeError};
use crate::query::state_path;
use crate::run::{Shared, lock};

/// The leases dapp's name on a chain.
pub const LEASES: &str = "leases";
/// How long a removed lease's container gets to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A lease's container as the helper starts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseSpec {
    /// The unpacked image.
    pub rootfs: PathBuf,
    /// What runs.
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<String>,
    /// Its working directory.
    pub cwd: String,
    /// The host directory mounted writable at `/data`.
    pub data: PathBuf,
    /// Memory, bytes.
    pub memory: u64,
    /// Processes at once.
    pub pids: u64,
    /// CPU, thousandths of a core.
    pub millicpu: u64,
}

impl LeaseSpec {
    /// The runtime's job.
    pub fn job(&self, name: &str) -> Job {
        Job {
            rootfs: self.rootfs.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            hostname: name.to_string(),
            mounts: vec![Mount::Bind {
                source: self.data.clone(),
                target: "/data".into(),
                writable: true,
            }],
            limits: Limits {
                memory: self.memory,
                pids: self.pids,
                cpus: self.millicpu as f64 / 1000.0,
                // A lease ends by being removed, not by a clock.
                timeout: Duration::from_secs(u64::from(u32::MAX)),
                output: 1 << 20,
                tmp: 16 << 20,
            },
        }
    }
}

/// One thing the helper does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseOp {
    /// Start a lease's container.
    Start {
        /// The lease.
        name: String,
        /// What to run.
        spec: LeaseSpec,
    },
    /// Freeze it.
    Freeze {
        /// The lease.
        name: String,
    },
    /// Thaw it.
    Thaw {
        /// The lease.
        name: String,
    },
    /// Stop and remove it.
    Remove {
        /// The lease.
        name: String,
    },
    /// The log of its main process.
    Log {
        /// The lease.
        name: String,
    },
    /// Every lease container and where it is.
    List,
    /// The host pid of its main process.
    Pid {
        /// The lease.
        name: String,
    },
}

/// Where a lease's container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Have {
    /// Running.
    Running,
    /// Frozen.
    Frozen,
    /// Its main process ended.
    Exited,
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseAnswer {
    /// Done.
    Done,
    /// The containers.
    Listed(BTreeMap<String, Have>),
    /// A log.
    Log(String),
    /// A pid.
    Pid(i32),
    /// Why not.
    Error(String),
}

/// The helper's side (`utter sandbox-lease`): does `op` with this data
/// dir's runtime.
pub fn serve_op(home: &Home, op: LeaseOp) -> LeaseAnswer {
    let rt = match home.runtime() {
        Ok(rt) => rt,
        Err(e) => return LeaseAnswer::Error(e.to_string()),
    };
    let done = |r: Result<(), utter_runtime::RunError>| match r {
        Ok(()) => LeaseAnswer::Done,
        Err(e) => LeaseAnswer::Error(e.to_string()),
    };
    match op {
        LeaseOp::Start { name, spec } => {
            if let Err(e) = std::fs::create_dir_all(&spec.data) {
                return LeaseAnswer::Error(format!("cannot make {}: {e}", spec.data.display()));
            }
            done(rt.start(&name, &spec.job(&name)).map(|_| ()))
        }
        LeaseOp::Freeze { name } => done(rt.freeze(&name)),
        LeaseOp::Thaw { name } => done(rt.thaw(&name)),
        LeaseOp::Remove { name } => done(rt.stop(&name, STOP_GRACE).map(|_| ())),
        LeaseOp::Log { name } => match rt.log(&name) {
            Ok(bytes) => LeaseAnswer::Log(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => LeaseAnswer::Error(e.to_string()),
        },
        LeaseOp::List => LeaseAnswer::Listed(list(&rt)),
        LeaseOp::Pid { name } => match rt.status(&name) {
            Ok(
                utter_runtime::detached::Status::Running(pid)
                | utter_runtime::detached::Status::Frozen(pid),
            ) => LeaseAnswer::Pid(pid),
            Ok(utter_runtime::detached::Status::Stopped) => {
                LeaseAnswer::Error(format!("the container of {name} has stopped"))
            }
            Err(e) => LeaseAnswer::Error(e.to_string()),
        },
    }
}

fn list(rt: &Runtime) -> BTreeMap<String, Have> {
    use utter_runtime::detached::Status;
    rt.detached()
        .into_iter()
        .filter(|n| n.starts_with("lease-"))
        .filter_map(|n| {
            let have = match rt.status(&n).ok()? {
                Status::Running(_) => Have::Running,
                Status::Frozen(_) => Have::Frozen,
                Status::Stopped => Have::Exited,
            };
            Some((n, have))
        })
        .collect()
}

/// Asks a one-shot `utter sandbox-lease` child to do `op`.
pub fn run_op(home: &Home, op: &LeaseOp) -> Result<LeaseAnswer, HomeError> {
    let mut child = home
        .helper_command("sandbox-lease")?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(HomeError::HelperIo)?;
    let text = serde_json::to_vec(op).expect("ops encode");
    {
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&text).map_err(HomeError::HelperIo)?;
    }
    let out = child.wait_with_output().map_err(HomeError::HelperIo)?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        HomeError::HelperIo(std::io::Error::other(format!(
            "the lease helper answered nonsense ({e}); it exited with {}",
            out.status
        )))
    })
}

/// What to do to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start the lease's container.
    Start(String),
    /// Freeze it: the lease ran dry.
    Freeze(String),
    /// Thaw it: a top-up resumed the lease.
    Thaw(String),
    /// Remove it: the lease ended, or no lease owns it.
    Remove(String),
}

/// What the agent should do now, and when to look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Container steps, in lease order.
    pub steps: Vec<Step>,
    /// The next moment a lease changes by itself (runs out, or its grace
    /// ends), Unix seconds.
    pub wake_at: Option<u64>,
}

/// Brings containers (`have`) to where the leases (`leases`, by id: this
/// provider's, and every lease a container is named for) are at `now`.
pub fn plan(now: u64, leases: &BTreeMap<String, Lease>, have: &BTreeMap<String, Have>) -> Plan {
    use utter_leases::Status as S;
    let mut p = Plan::default();
    let mut wake = |t: Option<u64>| {
        if let Some(t) = t {
            p.wake_at = Some(p.wake_at.map_or(t, |w: u64| w.min(t)));
        }
    };
    let mut steps = Vec::new();
    for (id, l) in leases {
        let v = l.view(now);
        let got = have.get(id).copied();
        match v.status {
            S::Closed | S::Destroyed => {
                if got.is_some() {
                    steps.push(Step::Remove(id.clone()));
                }
            }
            S::Halted => {
                wake(v.destroy_at);
                if got == Some(Have::Running) {
                    steps.push(Step::Freeze(id.clone()));
                }
            }
            S::Pending | S::Running | S::Low | S::Unheard => {
                wake(v.runs_out_at);
                match got {
                    None => steps.push(Step::Start(id.clone())),
                    Some(Have::Frozen) => steps.push(Step::Thaw(id.clone())),
                    Some(Have::Running | Have::Exited) => {}
                }
            }
        }
    }
    for id in have.keys() {
        if !leases.contains_key(id) {
            steps.push(Step::Remove(id.clone()));
        }
    }
    p.steps = steps;
    p
}

/// One look at main: this provider's leases, their escrows and settle
/// records.
#[derive(Debug, Default)]
struct Snapshot {
    leases: BTreeMap<String, Lease>,
    /// Per lease: (escrow paid in, escrow paid out), when the escrow is open.
    escrows: BTreeMap<String, (u64, u64)>,
    /// Per lease: (earned, closed) as its settle record says.
    settle: BTreeMap<String, (u64, bool)>,
}

/// A JSON record of `dapp`'s state at `block`: `Ok(None)` when it is not
/// there (or not the record's shape), `Err` when the ledger could not be
/// read, which must not be taken for "not there".
fn read_json<T: serde::de::DeserializeOwned>(
    ledger: &Ledger,
    block: &Block,
    dapp: &str,
    path: &str,
) -> Result<Option<T>, utter_ledger::LedgerError> {
    let Some(bytes) = ledger.read_value(block, &state_path(dapp, path))? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

fn snapshot(ledger: &Ledger, key: &str, extra: &BTreeSet<String>) -> Option<Snapshot> {
    let block = ledger.block(ledger.resolve(MAIN).ok()?).ok()?;
    let id = key_id(key)?;
    // A read that fails gives no snapshot: a lease missing from a partial
    // one would have its container removed.
    let open = fanned_names(ledger, &block, &utter_leases::provided_dir(&id), ".json")?;
    let mut s = Snapshot::default();
    for lease in open.iter().chain(extra) {
        let Some(l) =
            read_json::<Lease>(ledger, &block, LEASES, &utter_leases::lease_path(lease)).ok()?
        else {
            continue;
        };
        if l.provider != key {
            continue;
        }
        let path = format!("escrows/{lease}.json");
        if let Ok(Some(bytes)) = ledger.read_value(&block, &state_path("accounting", &path)) {
            let mut st = State::in_memory([(path, bytes)]);
            if let Ok(Some(e)) = utter_accounting::escrow(&mut st, lease) {
                s.escrows.insert(lease.clone(), (e.paid_in, e.paid));
            }
        }
        // The settle record, read as accounting reads it.
        let path = utter_accounting::lease_settle_path(lease);
        if let Ok(Some(bytes)) = ledger.read_value(&block, &state_path(LEASES, &path)) {
            let mut st = State::in_memory([(path, bytes)]);
            if let Ok(Some(settle)) = utter_accounting::lease_settle(&mut st, lease) {
                s.settle
                    .insert(lease.clone(), (settle.earned, settle.closed));
            }
        }
        s.leases.insert(lease.clone(), l);
    }
    Some(s)
}

/// The names in a leases-dapp directory fanned out by
/// [`utter_dapp_sdk::fan_out`] at `block`: only the shards that exist are
/// read. `None` when the ledger could not be read.
fn fanned_names(ledger: &Ledger, block: &Block, dir: &str, ext: &str) -> Option<Vec<String>> {
    let dir = state_path(LEASES, dir);
    let mut names = Vec::new();
    for shard in ledger.list(block, &dir).ok()?.unwrap_or_default() {
        let files = ledger.list(block, &format!("{dir}/{}", shard.name)).ok()?;
        for file in files.unwrap_or_default() {
            if let Some(name) = file.name.strip_suffix(ext) {
                names.push(name.to_string());
            }
        }
    }
    Some(names)
}

/// Lease `id` as main has it.
pub(crate) fn lease_at_main(ledger: &Ledger, id: &str) -> Option<Lease> {
    let block = ledger.block(ledger.resolve(MAIN).ok()?).ok()?;
    read_json(ledger, &block, LEASES, &utter_leases::lease_path(id))
        .ok()
        .flatten()
}

/// The open lease escrows at main that pay `key` (read once at start: a
/// lease that ended while the node was down still gets settled).
fn lease_escrows_to(ledger: &Ledger, key: &str) -> BTreeSet<String> {
    let Some(block) = ledger.resolve(MAIN).and_then(|id| ledger.block(id)).ok() else {
        return BTreeSet::new();
    };
    let dir = state_path("accounting", "escrows");
    let entries = ledger.list(&block, &dir).ok().flatten().unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| e.name.strip_suffix(".json"))
        .filter(|name| name.starts_with("lease-"))
        .filter(|name| {
            let path = format!("escrows/{name}.json");
            let Ok(Some(bytes)) = ledger.read_value(&block, &state_path("accounting", &path))
            else {
                return false;
            };
            let mut st = State::in_memory([(path, bytes)]);
            matches!(utter_accounting::escrow(&mut st, name), Ok(Some(e)) if e.lease && e.payee == key)
        })
        .map(str::to_string)
        .collect()
}

/// The agent's memory between looks.
struct Agent {
    home: Home,
    shared: Arc<Shared>,
    key: Keypair,
    signer: String,
    images: NodeImages,
    nonce: u64,
    last_beat: u64,
    /// Leases whose container could not start, with why (said once).
    failed: BTreeMap<String, String>,
    /// Transactions sent, (lease, what), so the same one is not sent again
    /// each look.
    sent: BTreeSet<(String, String)>,
    /// The lease containers as last listed (`None`: not listed yet).
    have: Option<BTreeMap<String, Have>>,
    /// Leases whose escrow may still owe this provider: every lease seen,
    /// until its escrow closes (an ended lease leaves the provider's open
    /// list before its last settle). `None`: not read from the chain yet.
    settling: Option<BTreeSet<String>>,
    /// Forwarded inbound ports (`None`: this node forwards none).
    ports: Option<crate::ports::Ports>,
    /// Leases whose ports could not be forwarded, with why (said once).
    port_failed: BTreeMap<String, String>,
    verbose: bool,
}

impl Agent {
    fn say(&self, what: &str) {
        eprintln!("leases: {what}");
    }

    fn op(&mut self, op: &LeaseOp, what: &str) -> bool {
        match run_op(&self.home, op) {
            Ok(LeaseAnswer::Done) => {
                if self.verbose {
                    self.say(what);
                }
                true
            }
            Ok(LeaseAnswer::Error(e)) => {
                self.say(&format!("cannot {what}: {e}"));
                false
            }
            Ok(other) => {
                self.say(&format!("cannot {what}: the helper answered {other:?}"));
                false
            }
            Err(e) => {
                self.say(&format!("cannot {what}: {e}"));
                false
            }
        }
    }

    fn spec(&mut self, l: &Lease) -> Result<LeaseSpec, String> {
        let (rootfs, process) = self.images.rootfs(&l.image).map_err(|e| {
            format!(
                "image {} is not on this node ({e}); the customer uploads it with `utter lease open`",
                l.image
            )
        })?;
        Ok(LeaseSpec {
            rootfs,
            args: process.default_args,
            env: process.env,
            cwd: process.cwd,
            data: data_dir(&self.home, &l.id),
            memory: l.terms.memory,
            pids: l.terms.pids,
            millicpu: l.terms.millicpu,
        })
    }

    /// Signs `requests` with the node key and admits them to this node's
    /// pool; says why not when it cannot.
    fn submit(&mut self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let first = (self.nonce + 1).max(now_us);
        let n = requests.len() as u64;
        let lines = match sign_requests(
            &self.key,
            &self.shared.chain,
            first,
            utter_formats::now(),
            requests,
        ) {
            Ok(lines) => lines,
            Err(e) => return self.say(&format!("cannot sign: {e}")),
        };
        self.nonce = first + n - 1;
        match crate::api::submit_lines(&self.shared, lines) {
            Ok(states) => {
                for s in states {
                    if let utter_client::api::TxState::Refused { error, .. } = s {
                        self.say(&format!("a transaction was refused: {error}"));
                    }
                }
            }
            Err(e) => self.say(&format!("cannot submit: {e:?}")),
        }
    }

    fn list(&mut self) -> Option<BTreeMap<String, Have>> {
        match run_op(&self.home, &LeaseOp::List) {
            Ok(LeaseAnswer::Listed(have)) => Some(have),
            Ok(other) => {
                self.say(&format!("cannot list containers: {other:?}"));
                None
            }
            Err(e) => {
                self.say(&format!("cannot list containers: {e}"));
                None
            }
        }
    }

    /// Forwards the published ports of the leases that run here (and
    /// stops forwarding those of leases that do not); returns the
    /// endpoints to record, of leases whose record says otherwise.
    fn forward(
        &mut self,
        snap: &Snapshot,
        running: &BTreeSet<String>,
        now: u64,
    ) -> BTreeMap<String, Vec<String>> {
        use utter_leases::Status as S;
        let mut announce = BTreeMap::new();
        let Some(mut ports) = self.ports.take() else {
            return announce;
        };
        let wanted: BTreeMap<&String, &Lease> = snap
            .leases
            .iter()
            .filter(|(id, l)| {
                !l.terms.ports.is_empty()
                    && running.contains(*id)
                    && matches!(
                        l.view(now).status,
                        S::Pending | S::Running | S::Low | S::Unheard
                    )
            })
            .collect();
        for id in ports.forwarded() {
            if !wanted.contains_key(&id) {
                ports.close(&id);
                if self.verbose {
                    self.say(&format!(
                        "{id}: its ports are not forwarded while it does not run"
                    ));
                }
            }
        }
        for (id, l) in wanted {
            if ports.endpoints(id).is_none() {
                let opened = match run_op(&self.home, &LeaseOp::Pid { name: id.clone() }) {
                    Ok(LeaseAnswer::Pid(pid)) => ports
                        .open(id, &lease_dir(self.home.root(), id), pid, &l.terms.ports)
                        .map(|e| e.to_vec())
                        .map_err(|e| e.to_string()),
                    Ok(other) => Err(format!("the helper answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                match opened {
                    Ok(endpoints) => {
                        self.port_failed.remove(id);
                        let pairs: Vec<String> = l
                            .terms
                            .ports
                            .iter()
                            .zip(&endpoints)
                            .map(|(p, e)| format!("{e} -> {p}"))
                            .collect();
                        self.say(&format!("{id}: forwarding {}", pairs.join(", ")));
                    }
                    Err(why) => {
                        if self.port_failed.insert(id.clone(), why.clone()).is_none() {
                            self.say(&format!("cannot forward the ports of {id}: {why}"));
                        }
                        continue;
                    }
                }
            }
            let endpoints = ports.endpoints(id).expect("forwarded").to_vec();
            if endpoints != l.endpoints
                && self
                    .sent
                    .insert((id.clone(), format!("ports {endpoints:?}")))
            {
                announce.insert(id.clone(), endpoints);
            }
        }
        ports.tidy();
        self.ports = Some(ports);
        announce
    }

    /// One look at main and the containers; returns when to look again
    /// at the latest.
    fn look(&mut self) -> Option<u64> {
        let now = utter_formats::now();
        if self.have.is_none() {
            // After a start: adopt what a node before this one left.
            self.have = Some(self.list()?);
        }
        let containers: BTreeSet<String> =
            self.have.iter().flatten().map(|(k, _)| k.clone()).collect();
        let snap = {
            let ledger = lock(&self.shared.ledger);
            let settling = self
                .settling
                .get_or_insert_with(|| lease_escrows_to(&ledger, &self.signer));
            let known = containers.union(settling).cloned().collect();
            snapshot(&ledger, &self.signer, &known)?
        };
        if let Some(settling) = &mut self.settling {
            settling.extend(snap.leases.keys().cloned());
            settling.retain(|id| snap.escrows.contains_key(id));
        }
        if snap.leases.is_empty() && containers.is_empty() {
            // Not a provider (yet): nothing to run, nothing to list.
            return Some(now + HEARTBEAT_EVERY);
        }
        let have = self.list()?;
        self.sent.retain(|(id, _)| snap.leases.contains_key(id));
        let p = plan(now, &snap.leases, &have);
        let mut started = false;
        let mut running: BTreeSet<String> = have.keys().cloned().collect();
        for step in &p.steps {
            match step {
                Step::Start(id) => {
                    let l = &snap.leases[id];
                    match self.spec(l) {
                        Ok(spec) => {
                            let op = LeaseOp::Start {
                                name: id.clone(),
                                spec,
                            };
                            if self.op(&op, &format!("start {id}")) {
                                self.say(&format!("started {id} ({})", l.image));
                                self.failed.remove(id);
                                running.insert(id.clone());
                                started = true;
                            }
                        }
                        Err(why) => {
                            if self.failed.insert(id.clone(), why.clone()).is_none() {
                                self.say(&format!("cannot start {id}: {why}"));
                            }
                        }
                    }
                }
                Step::Freeze(id) => {
                    if self.op(
                        &LeaseOp::Freeze { name: id.clone() },
                        &format!("freeze {id}"),
                    ) {
                        self.say(&format!("{id} ran dry: frozen, files kept"));
                    }
                }
                Step::Thaw(id) => {
                    if self.op(&LeaseOp::Thaw { name: id.clone() }, &format!("thaw {id}")) {
                        self.say(&format!("{id} topped up: thawed"));
                    }
                }
                Step::Remove(id) => {
                    if self.op(
                        &LeaseOp::Remove { name: id.clone() },
                        &format!("remove {id}"),
                    ) {
                        self.say(&format!("{id} ended: container removed"));
                        running.remove(id);
                        let _ = std::fs::remove_dir_all(lease_dir(self.home.root(), id));
                    }
                }
            }
        }
        self.have = Some(
            running
                .iter()
                .map(|id| (id.clone(), Have::Running))
                .collect(),
        );
        let announce = self.forward(&snap, &running, now);
        let mut requests = Vec::new();
        // Heartbeats: every lease whose container this node holds, and
        // (to record it, and so settle it) every lease that ended by
        // itself.
        let unrecorded_end = |l: &Lease| {
            !matches!(l.phase, utter_leases::Phase::Ended { .. }) && l.view(now).status.ended()
        };
        let mut due = started || !announce.is_empty() || now >= self.last_beat + HEARTBEAT_EVERY;
        for (id, l) in &snap.leases {
            if unrecorded_end(l) && self.sent.insert((id.clone(), "end".into())) {
                due = true;
            }
        }
        if due {
            let beat: Vec<String> = snap
                .leases
                .iter()
                .filter(|(id, l)| {
                    !matches!(l.phase, utter_leases::Phase::Ended { .. })
                        && (running.contains(*id) || unrecorded_end(l))
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !beat.is_empty() {
                self.last_beat = now;
                let mut args = serde_json::json!({ "leases": beat });
                let announce: BTreeMap<_, _> = announce
                    .into_iter()
                    .filter(|(id, _)| beat.contains(id))
                    .collect();
                if !announce.is_empty() {
                    args["ports"] = serde_json::json!(announce);
                }
                requests.push(Request {
                    dapp: LEASES.into(),
                    action: "heartbeat".into(),
                    args,
                });
            }
        }
        // Top-ups paid into escrow that the lease has not counted yet.
        for (id, l) in &snap.leases {
            if let Some((paid_in, _)) = snap.escrows.get(id)
                && *paid_in > l.deposits
                && !l.view(now).status.ended()
                && self.sent.insert((id.clone(), format!("top-up {paid_in}")))
            {
                requests.push(Request {
                    dapp: LEASES.into(),
                    action: "top-up".into(),
                    args: serde_json::json!({ "lease": id }),
                });
            }
        }
        // Earnings not paid out yet, and ended leases' escrows to close.
        let settle: Vec<String> = snap
            .settle
            .iter()
            .filter(|(id, (earned, closed))| {
                snap.escrows
                    .get(*id)
                    .is_some_and(|(_, paid)| *earned > *paid || *closed)
                    && self
                        .sent
                        .insert(((*id).clone(), format!("settle {earned} {closed}")))
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !settle.is_empty() {
            requests.push(Request {
                dapp: "accounting".into(),
                action: "escrow-settle".into(),
                args: serde_json::json!({ "names": settle }),
            });
        }
        self.submit(requests);
        Some(
            p.wake_at
                .unwrap_or(u64::MAX)
                .min(self.last_beat + HEARTBEAT_EVERY),
        )
    }
}

/// Whether the chain at main has a `leases` dapp.
pub(crate) fn chain_has_leases(ledger: &Ledger) -> bool {
    ledger
        .resolve(MAIN)
        .and_then(|id| ledger.block(id))
        .ok()
        .and_then(|b| ledger.list(&b, &format!("dapps/{LEASES}")).ok().flatten())
        .is_some()
}

/// Runs the agent until the node stops: looks at main on every new block,
/// at every moment a lease changes by itself, and every heartbeat period.
pub(crate) fn run(
    home: Home,
    shared: Arc<Shared>,
    key: Keypair,
    ports: Option<crate::ports::Ports>,
    verbose: bool,
) {
    let images = NodeImages::new(shared.images.clone());
    let signer = key.public().to_openssh();
    let mut agent = Agent {
        home,
        shared: shared.clone(),
        key,
        signer,
        images,
        nonce: 0,
        last_beat: 0,
        failed: BTreeMap::new(),
        sent: BTreeSet::new(),
        have: None,
        settling: None,
        ports,
        port_failed: BTreeMap::new(),
        verbose,
    };
    let mut blocks = shared.blocks.subscribe();
    let mut next = 0u64;
    while !shared.stopping.load(Ordering::SeqCst) {
        let changed = blocks.has_changed().unwrap_or(false);
        if changed {
            blocks.borrow_and_update();
        }
        let now = utter_formats::now();
        if changed || now >= next {
            next = agent.look().unwrap_or(now + 1).max(now + 1).min(now + 5);
            // A lease that runs out at `next` is frozen within the second.
            if next <= now {
                next = now + 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host directory of lease `id`'s `/data` (kept while it is frozen,
/// removed with its container).
pub fn data_dir(home: &Home, id: &str) -> PathBuf {
    lease_dir(home.root(), id).join("data")
}

fn lease_dir(root: &Path, id: &str) -> PathBuf {
    root.join("leases").join(id)
}

#[cfg(test)]
mod tests;

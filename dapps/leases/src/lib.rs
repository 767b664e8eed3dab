//! `leases`: compute for hire. Providers publish **offers** of container
//! capacity; anyone with credits opens a **lease** on one, paying into a
//! lease escrow of the `accounting` dapp; the balance drains with chain
//! time while the provider runs the container, and the customer logs in
//! with the key that paid.
//!
//! # Money and time
//! A lease's balance is a pure function of the chain's time (block time),
//! its price and its deposits: [`Lease::view`] gives it at any moment, and
//! the moment it runs out is known in advance ([`View::runs_out_at`]).
//! Nothing waits for a withdrawal: the provider's earnings up to the
//! latest transaction that touched the lease are in `settle/<id>.json`,
//! which `accounting escrow-settle` (anyone may send it) pays out, and a
//! lease that runs dry is halted at the exact second it did, whoever
//! records it and whenever. Nothing is done per block for leases that did
//! not change.
//!
//! - Billing starts at the provider's first heartbeat (`started`): a lease
//!   the provider never runs costs nothing.
//! - Time more than [`HEARTBEAT_WINDOW`] seconds after the provider's last
//!   heartbeat is not billed, and counts against the provider's uptime.
//! - At zero the lease is **halted** (the container frozen, files kept,
//!   billing stopped). A top-up within the offer's grace period resumes
//!   it; after the grace period it is **destroyed** and closed, and what
//!   was paid in and not earned goes back to the payer.
//! - `close` by the owner ends it at once; the rest is returned.
//!
//! # Karma
//! - A provider's **uptime** is billed time over billed plus unheard time.
//! - A payer may hold [`Payer::limit`] leases at once: [`BASE_LEASES`],
//!   plus one per lease they paid through (closed by them), plus one per
//!   [`CREDITS_PER_LEASE`] credits spent on leases, minus one per lease
//!   destroyed after its grace period; never below one, never above
//!   [`MAX_LEASES`]. A new key may hold only a few.
//!
//! # State (JSON)
//! ```text
//! offers/<name>.json      Offer: terms, images allowed, capacity, open leases
//! leases/xx/<id>.json     Lease: terms copied from the offer, deposits,
//!                         billed seconds, the phase
//! events/xx/<id>.jsonl    every transition with its time: opened, started,
//!                         low, halted, top-up, resumed, closed, destroyed
//! settle/xx/<id>.json     {"lease","earned","closed"}: read by accounting
//! providers/<key id>.json Provider: billed and unheard seconds, leases served
//! open/<key id>/xx/<id>.json  a marker per lease of that provider not ended
//! payers/<key id>.json    Payer: open leases, paid through, spent, destroyed
//! ```
//! A lease's id is its escrow's name (`lease-…`). The per-lease
//! directories are fanned out (`xx`: [`utter_dapp_sdk::fan_out`];
//! [`lease_path`], [`events_path`], [`utter_accounting::lease_settle_path`],
//! [`provided_path`]),
//! so a block that changes a few leases costs the same with 10 or 10,000.
//!
//! # Actions
//! - `offer {name, millicpu, memory, pids, disk, price, grace, images,
//!   location, capacity, ports?}` creates or changes the signer's offer (a
//!   change never alters open leases); `withdraw {name}` takes it off the
//!   market.
//! - `open {lease, offer, image, warn?}`: `lease` is an escrow the signer
//!   opened with `accounting escrow-open {…, lease: true}` to the offer's
//!   provider less than [`CLAIM_WINDOW`] seconds before.
//! - `top-up {lease}` (anyone): counts what `accounting escrow-add` added.
//! - `heartbeat {leases, ports?}` (the provider): its containers run;
//!   `ports` (`{lease: ["host:port", …]}`) says where its node forwards
//!   each published port of a lease from (recorded as its `endpoints`).
//! - `close {lease}` (the owner).
//!
//! Depends on `utter-dapp-sdk`, `utter-membership` and `utter-accounting`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utter_accounting::{escrow, is_escrow_name};
use utter_dapp_sdk::{Context, Error, Outcome, State, Tx, Value, json};
use utter_membership::{key_id, member};

/// Seconds after a heartbeat that are billed without another one.
pub const HEARTBEAT_WINDOW: u64 = 90;
/// How often a provider's node sends heartbeats, seconds.
pub const HEARTBEAT_EVERY: u64 = 30;
/// A lease escrow must be claimed by `open` this many seconds after it
/// opened (accounting returns an unclaimed one after twice as long).
pub const CLAIM_WINDOW: u64 = 300;
/// The default warning, seconds of runway left, when a lease turns low.
pub const DEFAULT_WARN: u64 = 600;
/// Leases a key may hold at once with no karma.
pub const BASE_LEASES: u64 = 3;
/// Credits spent on leases that earn one more lease at once.
pub const CREDITS_PER_LEASE: u64 = 100;
/// Leases one key may ever hold at once.
pub const MAX_LEASES: u64 = 1000;
/// Leases one offer may run at once.
pub const MAX_CAPACITY: u64 = 1000;
/// The longest grace period, seconds (30 days).
pub const MAX_GRACE: u64 = 30 * 86_400;
/// Leases one heartbeat may name.
pub const MAX_HEARTBEAT: usize = 1000;
/// The largest price per minute.
pub const MAX_PRICE: u64 = 1_000_000;

/// What a lease gets, copied from its offer when it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// CPU, thousandths of a core.
    pub millicpu: u64,
    /// Memory, bytes.
    pub memory: u64,
    /// Processes and threads at once.
    pub pids: u64,
    /// Disk for the lease's `/data`, bytes.
    pub disk: u64,
    /// Credits per minute.
    pub price: u64,
    /// Seconds a halted lease waits for a top-up before it is destroyed.
    pub grace: u64,
    /// Container ports the provider's node forwards to.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A provider's offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Its name, chosen by the provider.
    pub name: String,
    /// The provider's key (its node key): who runs the leases and is paid.
    pub provider: String,
    /// What each lease gets.
    #[serde(flatten)]
    pub terms: Terms,
    /// Image digests allowed (`sha256:…`), or `any`.
    pub images: Vec<String>,
    /// Where the provider is, free text.
    pub location: String,
    /// Leases it runs at once.
    pub capacity: u64,
    /// Its leases not ended, oldest first.
    pub open: Vec<String>,
    /// Off the market: no new leases.
    pub withdrawn: bool,
    /// Block time of its last change.
    pub changed: u64,
}

impl Offer {
    /// Whether a lease may run `digest`.
    pub fn allows(&self, digest: &str) -> bool {
        self.images.iter().any(|i| i == "any" || i == digest)
    }
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// Closed by its owner.
    Closed,
    /// Halted for longer than its grace period.
    Destroyed,
}

/// Where a lease is, as last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Phase {
    /// Opened; the provider has not started it yet (not billed).
    Pending,
    /// Started; billed while heartbeats come.
    Running,
    /// Ran dry at `since`: frozen, not billed.
    Halted {
        /// When it ran out.
        since: u64,
    },
    /// Over.
    Ended {
        /// When.
        at: u64,
        /// How.
        how: End,
    },
}

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id, the name of its escrow.
    pub id: String,
    /// The offer it was opened on.
    pub offer: String,
    /// The provider's key.
    pub provider: String,
    /// The key that opened it: the one that may log in and close it.
    pub owner: String,
    /// The image digest it runs.
    pub image: String,
    /// Its terms, as the offer said when it opened.
    pub terms: Terms,
    /// Seconds of runway left at which it turns low.
    pub warn: u64,
    /// Block time it opened.
    pub opened: u64,
    /// Credits paid in and counted so far.
    pub deposits: u64,
    /// Seconds billed up to `at`.
    pub billed: u64,
    /// The time `billed` is counted to.
    pub at: u64,
    /// The provider's last heartbeat.
    pub heard: Option<u64>,
    /// Where it is.
    pub phase: Phase,
    /// Seconds it was not billed for want of heartbeats.
    pub unheard: u64,
    /// The low warning was recorded (since the last top-up that lifted it).
    pub warned: bool,
    /// Where the provider's node forwards the lease's ports from
    /// (`host:port`, one per port of its terms), as its heartbeat said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// What a lease is at one moment, derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for the provider to start it.
    Pending,
    /// Running and billed.
    Running,
    /// Running with less than its warning's runway left.
    Low,
    /// Started, but the provider's heartbeats stopped: not billed.
    Unheard,
    /// Ran dry: frozen until a top-up or the end of the grace period.
    Halted,
    /// Halted past its grace period.
    Destroyed,
    /// Closed by its owner.
    Closed,
}

impl Status {
    /// Whether it is over.
    pub fn ended(self) -> bool {
        matches!(self, Status::Destroyed | Status::Closed)
    }

    /// Whether its container should run (not frozen, not gone).
    pub fn runs(self) -> bool {
        matches!(self, Status::Running | Status::Low | Status::Unheard)
    }
}

/// A lease at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Where it is.
    pub status: Status,
    /// Credits counted in, not yet used.
    pub balance: u64,
    /// Credits used (earned by the provider).
    pub used: u64,
    /// Seconds billed.
    pub billed: u64,
    /// When it runs out if heartbeats go on (`None`: halted, ended, or
    /// free).
    pub runs_out_at: Option<u64>,
    /// When it halted, if halted.
    pub halted_since: Option<u64>,
    /// When it will be destroyed, if halted.
    pub destroy_at: Option<u64>,
    /// When it ended, if it did.
    pub ended_at: Option<u64>,
}

/// What a checkpoint changed, for the karma records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Moved {
    billed: u64,
    unheard: u64,
    ended: Option<End>,
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened (block time, or the exact second derived).
    pub time: u64,
    /// `opened`, `started`, `low`, `halted`, `top-up`, `resumed`, `closed`
    /// or `destroyed`.
    pub event: String,
    /// Credits, for a top-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
}

impl Lease {
    /// Credits `secs` seconds cost.
    pub fn cost(&self, secs: u64) -> u64 {
        u64::try_from(u128::from(self.terms.price) * u128::from(secs) / 60).unwrap_or(u64::MAX)
    }

    /// The most seconds the deposits pay for (`None`: free).
    fn max_secs(&self) -> Option<u64> {
        (self.terms.price > 0).then(|| {
            u64::try_from(u128::from(self.deposits) * 60 / u128::from(self.terms.price))
                .unwrap_or(u64::MAX)
        })
    }

    /// When a running lease runs out, heartbeats permitting.
    fn runs_out(&self) -> Option<u64> {
        self.max_secs()
            .map(|max| self.at.saturating_add(max.saturating_sub(self.billed)))
    }

    /// Billing stops here without another heartbeat.
    fn lapse(&self) -> u64 {
        self.heard
            .unwrap_or(self.at)
            .saturating_add(HEARTBEAT_WINDOW)
    }

    /// What the lease is at time `t`: a pure function of the record.
    pub fn view(&self, t: u64) -> View {
        let mut view = View {
            status: Status::Pending,
            balance: 0,
            used: 0,
            billed: self.billed,
            runs_out_at: None,
            halted_since: None,
            destroy_at: None,
            ended_at: None,
        };
        let halted = |view: &mut View, since: u64| {
            view.halted_since = Some(since);
            let end = since.saturating_add(self.terms.grace);
            if t >= end {
                view.status = Status::Destroyed;
                view.ended_at = Some(end);
            } else {
                view.status = Status::Halted;
                view.destroy_at = Some(end);
            }
        };
        match self.phase {
            Phase::Pending => view.status = Status::Pending,
            Phase::Ended { at, how } => {
                view.status = match how {
                    End::Closed => Status::Closed,
                    End::Destroyed => Status::Destroyed,
                };
                view.ended_at = Some(at);
            }
            Phase::Halted { since } => halted(&mut view, since),
            Phase::Running => {
                let t = t.max(self.at);
                let lapse = self.lapse();
                let bill_end = t.min(lapse).max(self.at);
                match self.runs_out() {
                    Some(out) if out <= bill_end => {
                        view.billed = self.max_secs().unwrap_or(self.billed).max(self.billed);
                        halted(&mut view, out);
                    }
                    out => {
                        view.billed = self.billed + (bill_end - self.at);
                        view.runs_out_at = out;
                        view.status = if t > lapse {
                            Status::Unheard
                        } else if out.is_some_and(|o| o.saturating_sub(t) <= self.warn) {
                            Status::Low
                        } else {
                            Status::Running
                        };
                    }
                }
            }
        }
        view.used = self.cost(view.billed).min(self.deposits);
        view.balance = self.deposits - view.used;
        view
    }

    /// The events that time alone makes by `t` and no transaction has
    /// recorded yet (the low warning, the halt, the destruction), at the
    /// seconds the chain will record them.
    pub fn events_due(&self, t: u64) -> Vec<Event> {
        let mut events = Vec::new();
        self.clone().checkpoint(t, &mut events);
        events
    }

    /// Records what happened up to `t`: the low warning, a halt at the
    /// second it ran out, billed and unheard time, the end of the grace
    /// period.
    fn checkpoint(&mut self, t: u64, events: &mut Vec<Event>) -> Moved {
        let mut moved = Moved::default();
        if self.phase == Phase::Running {
            let t = t.max(self.at);
            let lapse = self.lapse();
            let bill_end = t.min(lapse).max(self.at);
            let out = self.runs_out();
            if !self.warned
                && let Some(out) = out
            {
                let low = out.saturating_sub(self.warn).max(self.at);
                if low <= bill_end {
                    self.warned = true;
                    events.push(event(low, "low"));
                }
            }
            match out {
                Some(out) if out <= bill_end => {
                    moved.billed = out - self.at;
                    self.billed += moved.billed;
                    self.at = out;
                    self.phase = Phase::Halted { since: out };
                    events.push(event(out, "halted"));
                }
                _ => {
                    moved.billed = bill_end - self.at;
                    moved.unheard = t.saturating_sub(lapse.max(self.at));
                    self.billed += moved.billed;
                    self.unheard += moved.unheard;
                    self.at = t;
                }
            }
        }
        if let Phase::Halted { since } = self.phase {
            let end = since.saturating_add(self.terms.grace);
            if t >= end {
                self.phase = Phase::Ended {
                    at: end,
                    how: End::Destroyed,
                };
                events.push(event(end, "destroyed"));
                moved.ended = Some(End::Destroyed);
            }
        }
        moved
    }

    /// Counts credits paid into the escrow since the last count (`paid_in`
    /// is the escrow's total); a halted lease inside its grace period
    /// resumes at `t` if they pay for time.
    fn claim(&mut self, paid_in: u64, t: u64, events: &mut Vec<Event>) {
        if paid_in > self.deposits && !matches!(self.phase, Phase::Ended { .. }) {
            let added = paid_in - self.deposits;
            self.deposits = paid_in;
            events.push(Event {
                time: t,
                event: "top-up".into(),
                amount: Some(added),
            });
            if self.phase == Phase::Running
                && self
                    .runs_out()
                    .is_none_or(|out| out.saturating_sub(t) > self.warn)
            {
                self.warned = false;
            }
        }
        if let Phase::Halted { since } = self.phase
            && t < since.saturating_add(self.terms.grace)
            && self.max_secs().is_none_or(|max| max > self.billed)
        {
            self.phase = Phase::Running;
            self.at = t;
            self.heard = Some(t);
            self.warned = false;
            events.push(event(t, "resumed"));
        }
    }
}

fn event(time: u64, name: &str) -> Event {
    Event {
        time,
        event: name.into(),
        amount: None,
    }
}

/// A provider's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Its key.
    pub key: String,
    /// Seconds billed over all its leases.
    pub billed: u64,
    /// Seconds its started leases went without heartbeats.
    pub unheard: u64,
    /// Leases it started.
    pub served: u64,
}

impl Provider {
    /// Uptime in thousandths (`None`: no history yet).
    pub fn uptime_permille(&self) -> Option<u64> {
        let total = u128::from(self.billed) + u128::from(self.unheard);
        (total > 0).then(|| u64::try_from(u128::from(self.billed) * 1000 / total).unwrap_or(1000))
    }
}

/// A payer's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    /// Its key.
    pub key: String,
    /// Its leases not ended.
    pub open: Vec<String>,
    /// Leases it closed itself.
    pub paid_through: u64,
    /// Credits its leases used.
    pub spent: u64,
    /// Times its leases halted.
    pub halts: u64,
    /// Its leases destroyed after their grace period.
    pub destroyed: u64,
}

impl Payer {
    /// Leases it may hold at once (see the crate's docs).
    pub fn limit(&self) -> u64 {
        (BASE_LEASES + self.paid_through + self.spent / CREDITS_PER_LEASE)
            .saturating_sub(self.destroyed)
            .clamp(1, MAX_LEASES)
    }
}

fn load<T: DeserializeOwned>(state: &mut State, path: &str) -> Result<Option<T>, Error> {
    match state.get_json(path)? {
        None => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| Error::from_message(format!("{path} is damaged: {e}"))),
    }
}

fn save<T: Serialize>(state: &mut State, path: &str, value: &T) -> Result<(), Error> {
    let v = serde_json::to_value(value)
        .map_err(|e| Error::from_message(format!("cannot encode {path}: {e}")))?;
    state.put_json(path, &v)
}

fn is_name(s: &str) -> bool {
    is_escrow_name(s)
}

/// Offer `name`.
pub fn offer(state: &mut State, name: &str) -> Result<Option<Offer>, Error> {
    if !is_name(name) {
        return Ok(None);
    }
    load(state, &format!("offers/{name}.json"))
}

/// Every offer, by name.
pub fn offers(state: &mut State) -> Result<Vec<Offer>, Error> {
    let mut out = Vec::new();
    for file in state.list("offers")? {
        let name = file.trim_end_matches(".json").to_string();
        if let Some(o) = offer(state, &name)? {
            out.push(o);
        }
    }
    Ok(out)
}

/// Lease `id`.
pub fn lease(state: &mut State, id: &str) -> Result<Option<Lease>, Error> {
    if !is_name(id) {
        return Ok(None);
    }
    load(state, &lease_path(id))
}

/// Where lease `id`'s record is.
pub fn lease_path(id: &str) -> String {
    utter_dapp_sdk::fan_out("leases", id, ".json")
}

/// The directory of provider `key_id`'s leases not ended: one marker per
/// lease, fanned out ([`provided_path`]), so a provider with 10,000 leases
/// rewrites a small tree, not a list of 10,000, when one of them changes.
pub fn provided_dir(key_id: &str) -> String {
    format!("open/{key_id}")
}

/// The marker of lease `lease` among provider `key_id`'s open leases.
pub fn provided_path(key_id: &str, lease: &str) -> String {
    utter_dapp_sdk::fan_out(&provided_dir(key_id), lease, ".json")
}

/// The leases of the provider with `key` not ended, sorted.
pub fn provider_leases(state: &mut State, key: &str) -> Result<Vec<String>, Error> {
    match key_id(key) {
        Some(id) => utter_dapp_sdk::fanned_names(state, &provided_dir(&id), ".json"),
        None => Ok(Vec::new()),
    }
}

/// Where lease `id`'s events are.
pub fn events_path(id: &str) -> String {
    utter_dapp_sdk::fan_out("events", id, ".jsonl")
}

/// Every lease, by id (reads them all: for listings, not per block).
pub fn leases(state: &mut State) -> Result<Vec<Lease>, Error> {
    let mut out = Vec::new();
    for id in utter_dapp_sdk::fanned_names(state, "leases", ".json")? {
        if let Some(l) = lease(state, &id)? {
            out.push(l);
        }
    }
    Ok(out)
}

/// Lease `id`'s recorded transitions, oldest first.
pub fn events(state: &mut State, id: &str) -> Result<Vec<Event>, Error> {
    if !is_name(id) {
        return Ok(Vec::new());
    }
    let path = events_path(id);
    let text = String::from_utf8_lossy(state.get(&path)?.unwrap_or_default()).into_owned();
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|e| Error::from_message(format!("{path} line {}: {e}", n + 1)))
        })
        .collect()
}

/// The record of the provider with `key` (empty when it has none).
pub fn provider(state: &mut State, key: &str) -> Result<Provider, Error> {
    let Some(id) = key_id(key) else {
        return Ok(Provider::default());
    };
    Ok(
        load(state, &format!("providers/{id}.json"))?.unwrap_or_else(|| Provider {
            key: key.to_string(),
            ..Provider::default()
        }),
    )
}

/// The record of the payer with `key` (empty when it has none).
pub fn payer(state: &mut State, key: &str) -> Result<Payer, Error> {
    let Some(id) = key_id(key) else {
        return Ok(Payer::default());
    };
    Ok(
        load(state, &format!("payers/{id}.json"))?.unwrap_or_else(|| Payer {
            key: key.to_string(),
            ..Payer::default()
        }),
    )
}

/// The other dapps' states leases reads, as of the parent block.
pub struct Chain<'a> {
    /// The membership dapp's.
    pub members: &'a mut State,
    /// The accounting dapp's (the lease escrows).
    pub accounts: &'a mut State,
}

type Verdict = Result<Option<Value>, String>;

macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        }
    };
}

/// Applies one transaction.
pub fn apply(
    ctx: &Context,
    tx: &Tx,
    state: &mut State,
    chain: Chain<'_>,
) -> Result<Outcome, Error> {
    let mut act = Act {
        t: ctx.time,
        tx,
        state,
        chain,
    };
    let verdict = match tx.action.as_str() {
        "offer" => act.offer(),
        "withdraw" => act.withdraw(),
        "open" => act.open(),
        "top-up" => act.top_up(),
        "heartbeat" => act.heartbeat(),
        "close" => act.close(),
        other => Ok(Err(format!(
            "unknown action {other:?}: expected offer, withdraw, open, top-up, heartbeat or close"
        ))),
    }?;
    Ok(match verdict {
        Ok(out) => Outcome::Accepted(out),
        Err(reason) => Outcome::Rejected(reason),
    })
}

struct Act<'a> {
    t: u64,
    tx: &'a Tx,
    state: &'a mut State,
    chain: Chain<'a>,
}

fn u64_in(tx: &Tx, name: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let n = tx.u64_arg(name)?;
    if !(lo..=hi).contains(&n) {
        return Err(format!("args.{name} must be between {lo} and {hi}"));
    }
    Ok(n)
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Act<'_> {
    fn active_signer(&mut self) -> Result<Result<(), String>, Error> {
        Ok(match member(self.chain.members, &self.tx.signer)? {
            Some(m) if m.active => Ok(()),
            Some(m) => Err(format!("{} is suspended", m.name)),
            None => Err(format!("{} is not a member", self.tx.signer)),
        })
    }

    fn lease_arg(&mut self) -> Result<Result<Lease, String>, Error> {
        let id = match self.tx.str_arg("lease") {
            Ok(id) => id.to_string(),
            Err(e) => return Ok(Err(e)),
        };
        Ok(lease(self.state, &id)?.ok_or_else(|| format!("there is no lease {id:?}")))
    }

    /// The lease escrow's total paid in, as of the parent block (0 when it
    /// is gone).
    fn paid_in(&mut self, id: &str) -> Result<u64, Error> {
        Ok(escrow(self.chain.accounts, id)?
            .filter(|e| e.lease)
            .map_or(0, |e| e.paid_in))
    }

    /// Brings `l` up to now (halts, ends, top-ups), saves it with its
    /// events, settle record and karma, and returns it.
    fn touch(&mut self, mut l: Lease, heartbeat: bool) -> Result<Lease, Error> {
        let mut events = Vec::new();
        let before = l.clone();
        let moved = l.checkpoint(self.t, &mut events);
        let paid_in = self.paid_in(&l.id)?;
        l.claim(paid_in, self.t, &mut events);
        let mut started = false;
        if heartbeat {
            match l.phase {
                Phase::Pending => {
                    l.phase = Phase::Running;
                    l.at = self.t;
                    l.heard = Some(self.t);
                    events.push(event(self.t, "started"));
                    started = true;
                }
                Phase::Running => l.heard = Some(self.t),
                _ => {}
            }
        }
        if l != before {
            self.save_lease(&l, &events, moved, started)?;
        }
        Ok(l)
    }

    fn save_lease(
        &mut self,
        l: &Lease,
        events: &[Event],
        moved: Moved,
        started: bool,
    ) -> Result<(), Error> {
        save(self.state, &lease_path(&l.id), l)?;
        let mut lines = Vec::new();
        for e in events {
            let text = serde_json::to_string(e)
                .map_err(|e| Error::from_message(format!("cannot encode an event: {e}")))?;
            lines.extend_from_slice(text.as_bytes());
            lines.push(b'\n');
        }
        if !lines.is_empty() {
            self.state.append(&events_path(&l.id), &lines)?;
        }
        let ended = matches!(l.phase, Phase::Ended { .. });
        let used = l.cost(l.billed).min(l.deposits);
        self.state.put_json(
            &utter_accounting::lease_settle_path(&l.id),
            &json!({"lease": l.id, "earned": used, "closed": ended}),
        )?;
        let halted = events.iter().filter(|e| e.event == "halted").count() as u64;
        if moved.billed > 0 || moved.unheard > 0 || started || moved.ended.is_some() {
            let mut p = provider(self.state, &l.provider)?;
            p.billed += moved.billed;
            p.unheard += moved.unheard;
            p.served += u64::from(started);
            if moved.ended.is_some() {
                let id = key_id(&p.key).expect("providers have valid keys");
                self.state.remove(&provided_path(&id, &l.id))?;
            }
            self.save_provider(&p)?;
        }
        if halted > 0 || moved.ended.is_some() {
            let mut payer = payer(self.state, &l.owner)?;
            payer.halts += halted;
            if let Some(how) = moved.ended {
                payer.open.retain(|id| id != &l.id);
                payer.spent += used;
                match how {
                    End::Closed => payer.paid_through += 1,
                    End::Destroyed => payer.destroyed += 1,
                }
            }
            self.save_payer(&payer)?;
        }
        if moved.ended.is_some()
            && let Some(mut o) = offer(self.state, &l.offer)?
        {
            o.open.retain(|id| id != &l.id);
            save(self.state, &format!("offers/{}.json", o.name), &o)?;
        }
        Ok(())
    }

    fn save_provider(&mut self, p: &Provider) -> Result<(), Error> {
        let id = key_id(&p.key).expect("providers have valid keys");
        save(self.state, &format!("providers/{id}.json"), p)
    }

    fn save_payer(&mut self, p: &Payer) -> Result<(), Error> {
        let id = key_id(&p.key).expect("payers have valid keys");
        save(self.state, &format!("payers/{id}.json"), p)
    }

    /// Leases in `ids` not ended once brought up to now.
    fn live(&mut self, ids: &[String]) -> Result<usize, Error> {
        let mut n = 0;
        for id in ids {
            if let Some(l) = lease(self.state, id)? {
                let l = self.touch(l, false)?;
                n += usize::from(!matches!(l.phase, Phase::Ended { .. }));
            }
        }
        Ok(n)
    }

    fn offer(&mut self) -> Result<Verdict, Error> {
        check!(self.active_signer()?);
        let tx = self.tx;
        let name = check!(tx.str_arg("name"));
        if !is_name(name) {
            return Ok(Err("args.name must be 1-64 of a-z 0-9 - _".into()));
        }
        let terms = Terms {
            millicpu: check!(u64_in(tx, "millicpu", 10, 256_000)),
            memory: check!(u64_in(tx, "memory", 16 << 20, 1 << 40)),
            pids: check!(u64_in(tx, "pids", 8, 1 << 20)),
            disk: check!(u64_in(tx, "disk", 0, 1 << 44)),
            price: check!(u64_in(tx, "price", 1, MAX_PRICE)),
            grace: check!(u64_in(tx, "grace", 0, MAX_GRACE)),
            ports: match tx.args.get("ports") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) if a.len() <= 8 => check!(
                    a.iter()
                        .map(|p| p
                            .as_u64()
                            .and_then(|p| u16::try_from(p).ok())
                            .filter(|p| *p > 0))
                        .collect::<Option<Vec<u16>>>()
                        .ok_or_else(|| "args.ports must be ports 1-65535".to_string())
                ),
                Some(_) => return Ok(Err("args.ports must list at most 8 ports".into())),
            },
        };
        let images = check!(tx.strs_arg("images"));
        if images.is_empty()
            || images.len() > 32
            || !images.iter().all(|i| i == "any" || is_digest(i))
        {
            return Ok(Err(
                "args.images must list 1-32 image digests (sha256:…) or \"any\"".into(),
            ));
        }
        let location = check!(tx.str_arg("location")).to_string();
        if location.len() > 100 || location.chars().any(char::is_control) {
            return Ok(Err(
                "args.location must be at most 100 printable characters".into(),
            ));
        }
        let capacity = check!(u64_in(tx, "capacity", 1, MAX_CAPACITY));
        let open = match offer(self.state, name)? {
            Some(o) if o.provider != tx.signer => {
                return Ok(Err(format!("offer {name} belongs to another provider")));
            }
            Some(o) => o.open,
            None => Vec::new(),
        };
        let o = Offer {
            name: name.to_string(),
            provider: tx.signer.clone(),
            terms,
            images,
            location,
            capacity,
            open,
            withdrawn: false,
            changed: self.t,
        };
        save(self.state, &format!("offers/{name}.json"), &o)?;
        Ok(Ok(None))
    }

    fn withdraw(&mut self) -> Result<Verdict, Error> {
        let name = check!(self.tx.str_arg("name")).to_string();
        let Some(mut o) = offer(self.state, &name)? else {
            return Ok(Err(format!("there is no offer {name:?}")));
        };
        if o.provider != self.tx.signer {
            return Ok(Err(format!("only its provider may withdraw offer {name}")));
        }
        o.withdrawn = true;
        o.changed = self.t;
        save(self.state, &format!("offers/{name}.json"), &o)?;
        Ok(Ok(None))
    }

    fn open(&mut self) -> Result<Verdict, Error> {
        check!(self.active_signer()?);
        let tx = self.tx;
        let id = check!(tx.str_arg("lease")).to_string();
        if !id.starts_with("lease-") || !is_name(&id) {
            return Ok(Err(
                "args.lease must be the escrow's name: lease- and up to 58 of a-z 0-9 - _".into(),
            ));
        }
        if lease(self.state, &id)?.is_some() {
            return Ok(Err(format!("lease {id} exists already")));
        }
        let name = check!(tx.str_arg("offer")).to_string();
        let Some(mut o) = offer(self.state, &name)? else {
            return Ok(Err(format!("there is no offer {name:?}")));
        };
        if o.withdrawn {
            return Ok(Err(format!("offer {name} was withdrawn by its provider")));
        }
        let image = check!(tx.str_arg("image")).to_string();
        if !is_digest(&image) {
            return Ok(Err("args.image must be an image digest, sha256:…".into()));
        }
        if !o.allows(&image) {
            return Ok(Err(format!("offer {name} does not run image {image}")));
        }
        let warn = match tx.args.get("warn") {
            None | Some(Value::Null) => DEFAULT_WARN,
            Some(_) => check!(u64_in(tx, "warn", 0, MAX_GRACE)),
        };
        let Some(e) = escrow(self.chain.accounts, &id)? else {
            return Ok(Err(format!(
                "there is no escrow {id}: open it first with accounting escrow-open \
                 {{name: {id}, payee: the provider, amount, lease: true}}"
            )));
        };
        if !e.lease || e.payer != tx.signer || e.payee != o.provider {
            return Ok(Err(format!(
                "escrow {id} is not a lease escrow from you to offer {name}'s provider"
            )));
        }
        if self.t >= e.opened + CLAIM_WINDOW {
            return Ok(Err(format!(
                "escrow {id} opened more than {CLAIM_WINDOW} s ago; accounting returns it \
                 to you: open a new one"
            )));
        }
        // At least a second of running (a minute is not required: short
        // leases are how a customer tries an offer).
        if u128::from(e.paid_in) * 60 < u128::from(o.terms.price) {
            return Ok(Err(format!(
                "escrow {id} holds {} credits, less than one second of offer {name} \
                 ({} credits a minute)",
                e.paid_in, o.terms.price
            )));
        }
        if self.live(&o.open.clone())? as u64 >= o.capacity {
            return Ok(Err(format!(
                "offer {name} is at capacity ({} leases); try another offer or later",
                o.capacity
            )));
        }
        // `live` may have ended some of them.
        o = offer(self.state, &name)?.expect("it was there");
        let mut p = payer(self.state, &tx.signer)?;
        let held = self.live(&p.open.clone())? as u64;
        p = payer(self.state, &tx.signer)?;
        if held >= p.limit() {
            return Ok(Err(format!(
                "your key may hold {} leases at once and holds {held}: close one, or earn \
                 more by paying leases through",
                p.limit()
            )));
        }
        let l = Lease {
            id: id.clone(),
            offer: name.clone(),
            provider: o.provider.clone(),
            owner: tx.signer.clone(),
            image,
            terms: o.terms.clone(),
            warn,
            opened: self.t,
            deposits: e.paid_in,
            billed: 0,
            at: self.t,
            heard: None,
            phase: Phase::Pending,
            unheard: 0,
            warned: false,
            endpoints: Vec::new(),
        };
        o.open.push(id.clone());
        save(self.state, &format!("offers/{name}.json"), &o)?;
        p.open.push(id.clone());
        self.save_payer(&p)?;
        let prov = provider(self.state, &o.provider)?;
        self.save_provider(&prov)?;
        let provider_id = key_id(&o.provider).expect("providers have valid keys");
        self.state
            .put_json(&provided_path(&provider_id, &id), &json!({"lease": id}))?;
        self.save_lease(&l, &[event(self.t, "opened")], Moved::default(), false)?;
        Ok(Ok(Some(json!({"lease": id, "deposits": l.deposits}))))
    }

    fn top_up(&mut self) -> Result<Verdict, Error> {
        let l = check!(self.lease_arg()?);
        if matches!(l.phase, Phase::Ended { .. }) {
            return Ok(Err(format!("lease {} has ended", l.id)));
        }
        let l = self.touch(l, false)?;
        if let Phase::Ended { .. } = l.phase {
            return Ok(Ok(Some(json!({"status": "destroyed"}))));
        }
        let v = l.view(self.t);
        Ok(Ok(Some(json!({"status": v.status, "balance": v.balance,
                            "runs_out_at": v.runs_out_at}))))
    }

    fn heartbeat(&mut self) -> Result<Verdict, Error> {
        let ids = check!(self.tx.strs_arg("leases"));
        if ids.is_empty() || ids.len() > MAX_HEARTBEAT {
            return Ok(Err(format!(
                "args.leases must list 1-{MAX_HEARTBEAT} leases"
            )));
        }
        let mut endpoints = check!(endpoints_arg(self.tx, &ids));
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            let Some(l) = lease(self.state, id)? else {
                return Ok(Err(format!("there is no lease {id:?}")));
            };
            if l.provider != self.tx.signer {
                return Ok(Err(format!(
                    "lease {id} is run by another provider; only its provider sends its heartbeats"
                )));
            }
            let given = endpoints.remove(id);
            if let Some(e) = &given
                && e.len() != l.terms.ports.len()
            {
                return Ok(Err(format!(
                    "args.ports.{id} names {} addresses; lease {id} publishes {} ports",
                    e.len(),
                    l.terms.ports.len()
                )));
            }
            let mut l = self.touch(l, true)?;
            if let Some(e) = given
                && e != l.endpoints
            {
                l.endpoints = e;
                save(self.state, &lease_path(id), &l)?;
            }
            out.push(json!({"lease": id, "status": l.view(self.t).status}));
        }
        Ok(Ok(Some(Value::Array(out))))
    }

    fn close(&mut self) -> Result<Verdict, Error> {
        let l = check!(self.lease_arg()?);
        if l.owner != self.tx.signer {
            return Ok(Err(format!(
                "only the key that opened lease {} may close it",
                l.id
            )));
        }
        if matches!(l.phase, Phase::Ended { .. }) {
            return Ok(Err(format!("lease {} has ended already", l.id)));
        }
        let mut l = self.touch(l, false)?;
        if matches!(l.phase, Phase::Ended { .. }) {
            return Ok(Ok(Some(json!({"status": "destroyed"}))));
        }
        l.phase = Phase::Ended {
            at: self.t,
            how: End::Closed,
        };
        let moved = Moved {
            ended: Some(End::Closed),
            ..Moved::default()
        };
        self.save_lease(&l, &[event(self.t, "closed")], moved, false)?;
        let v = l.view(self.t);
        Ok(Ok(Some(
            json!({"used": v.used, "returned": l.deposits - v.used}),
        )))
    }
}

/// A heartbeat's `ports`: `{lease: ["host:port", …]}`, for leases the
/// heartbeat names, each address a socket address.
fn endpoints_arg(
    tx: &Tx,
    ids: &[String],
) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let mut out = std::collections::BTreeMap::new();
    let Some(given) = tx.args.get("ports") else {
        return Ok(out);
    };
    let Value::Object(given) = given else {
        return Err("args.ports must be an object of lease: [\"host:port\", …]".into());
    };
    for (id, addrs) in given {
        if !ids.contains(id) {
            return Err(format!(
                "args.ports names lease {id}, which args.leases does not"
            ));
        }
        let addrs = addrs
            .as_array()
            .filter(|a| a.len() <= 8)
            .and_then(|a| {
                a.iter()
                    .map(|v| {
                        v.as_str()
                            .filter(|s| s.parse::<std::net::SocketAddr>().is_ok())
                            .map(str::to_string)
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| format!("args.ports.{id} must list at most 8 addresses host:port"))?;
        out.insert(id.clone(), addrs);
    }
    Ok(out)
}

/// The leases' invariants at time `now`: every record parses, no lease
/// used more than was paid in, and every settle record says what its
/// lease earned.
pub fn test(now: u64, state: &mut State) -> Result<(), Error> {
    for l in leases(state)? {
        if l.cost(l.billed) > l.deposits {
            return Err(Error::from_message(format!(
                "lease {} used {} credits of {} paid in",
                l.id,
                l.cost(l.billed),
                l.deposits
            )));
        }
        let settle = state
            .get_json(&utter_accounting::lease_settle_path(&l.id))?
            .and_then(|v| v.get("earned").and_then(Value::as_u64));
        let recorded = l.cost(l.billed).min(l.deposits);
        if settle != Some(recorded) {
            return Err(Error::from_message(format!(
                "lease {}'s settle record says {settle:?}, its record {recorded}",
                l.id
            )));
        }
        let _ = l.view(now);
    }
    offers(state)?;
    Ok(())
}

#[cfg(test)]
mod tests;

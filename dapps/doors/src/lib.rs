//! `doors`: doors and the rules to open them, the controllers (device
//! keys) that may log events for a door, the access log, and
//! [`may_open`], the decision a door controller makes offline.
//!
//! State:
//! ```text
//! doors/<door>.json              {"name","roles":[…],"certs":[…],"schedule":null|{"days":[1-7],"from":min,"to":min},"controllers":[…],"dues":bool}
//! log/<door>/<YYYY-MM-DD>.jsonl  one event per line, in block order (a
//!                                day past 256 KiB goes on in
//!                                <YYYY-MM-DD>~001.jsonl, ~002, …):
//!                                {"time","badge","member","granted","reason","controller","session"?}
//! ```
//! A door opens for an active member's badge when the member has one of
//! `roles` (none listed: any member), every certification in `certs`
//! valid at that time, dues paid past that time when `dues` is set (the
//! accounting dapp's `dues/`), and the time is inside `schedule` (days
//! 1 = Monday … 7 = Sunday, minutes of the day UTC, `from` inclusive,
//! `to` exclusive; null: always). While the reservations dapp holds a
//! booking of the door (`bookings/<door>/<from>.json`, `{"member","name",
//! "from","to"}`) that covers the time, it opens for the booker only: a
//! booked tool's lockout honours the booking.
//!
//! Actions:
//! - `define-door {name, roles?, certs?, schedule?, dues?}` (admin; keeps the
//!   door's controllers)
//! - `authorize-controller {door, key}`, `revoke-controller {door, key}` (admin)
//! - `access {door, badge, time, granted, reason, member?, session?}` (an
//!   authorized controller of that door): logs an event the controller
//!   decided, offline or not; events are never refused for being old.
//!   `session` is `"start"` or `"end"` for a tool's session (a lockout
//!   controller's power on and off).
//!
//! Depends on `utter-dapp-sdk`, `utter-membership`,
//! `utter-certifications` and `utter-accounting` (to read their states).

use utter_certifications::{cert, is_tool};
use utter_dapp_sdk::{Error, Outcome, State, Tx, Value, json};
use utter_membership::{key_id, member, member_by_badge};

/// Events may carry a time at most this far after the block's (clock skew).
pub const MAX_SKEW: u64 = 300;

/// When a door is open to its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// 1 = Monday … 7 = Sunday.
    pub days: Vec<u8>,
    /// First minute of the day (UTC) it opens.
    pub from: u16,
    /// First minute it no longer opens.
    pub to: u16,
}

/// A door's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    /// Its name.
    pub name: String,
    /// The member needs one of these (empty: any member).
    pub roles: Vec<String>,
    /// The member needs all of these, valid.
    pub certs: Vec<String>,
    /// When it opens (`None`: always).
    pub schedule: Option<Schedule>,
    /// Device keys that log its events.
    pub controllers: Vec<String>,
    /// The member's dues must be paid (the accounting dapp's `dues/`).
    pub dues: bool,
}

impl Door {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "roles": self.roles,
            "certs": self.certs,
            "schedule": self.schedule.as_ref().map(|s| json!({"days": s.days, "from": s.from, "to": s.to})),
            "controllers": self.controllers,
            "dues": self.dues,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let strs = |x: &Value| -> Option<Vec<String>> {
            x.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        Some(Self {
            name: v.get("name")?.as_str()?.to_string(),
            roles: strs(v.get("roles")?)?,
            certs: strs(v.get("certs")?)?,
            schedule: match v.get("schedule")? {
                Value::Null => None,
                s => Some(parse_schedule(s).ok()?),
            },
            controllers: strs(v.get("controllers")?)?,
            dues: match v.get("dues") {
                None => false,
                Some(d) => d.as_bool()?,
            },
        })
    }
}

fn parse_schedule(v: &Value) -> Result<Schedule, String> {
    const WHAT: &str = "args.schedule must be {\"days\":[1-7…],\"from\":minute,\"to\":minute} (minutes of the day, UTC)";
    let days: Vec<u8> = v
        .get("days")
        .and_then(Value::as_array)
        .ok_or(WHAT)?
        .iter()
        .map(|d| d.as_u64().filter(|d| (1..=7).contains(d)).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or(WHAT)?;
    let minute = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .filter(|m| *m <= 1440)
            .map(|m| m as u16)
            .ok_or(WHAT)
    };
    let (from, to) = (minute("from")?, minute("to")?);
    if from >= to || days.is_empty() {
        return Err(WHAT.into());
    }
    let mut days = days;
    days.sort_unstable();
    days.dedup();
    Ok(Schedule { days, from, to })
}

/// A door name: 1-64 of `a-z 0-9 - _`.
pub fn is_door(s: &str) -> bool {
    is_tool(s)
}

/// Reads door `name` (`None`: not defined).
pub fn door(state: &mut State, name: &str) -> Result<Option<Door>, Error> {
    if !is_door(name) {
        return Ok(None);
    }
    let p = format!("doors/{name}.json");
    match state.get_json(&p)? {
        None => Ok(None),
        Some(v) => Door::from_json(&v)
            .map(Some)
            .ok_or_else(|| Error::from_message(format!("{p} is not a door"))),
    }
}

/// Whether a door opens, and why: a value the controller acts on and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Open the door.
    pub granted: bool,
    /// Why, for the log and the person at the door.
    pub reason: String,
    /// The badge's member, when known.
    pub member: Option<String>,
}

fn deny(reason: impl Into<String>, member: Option<&str>) -> Decision {
    Decision {
        granted: false,
        reason: reason.into(),
        member: member.map(str::to_string),
    }
}

/// Day of the week (1 = Monday … 7 = Sunday) and minute of the day, UTC.
pub fn weekday_minute(time: u64) -> (u8, u16) {
    let day = time / 86_400;
    // 1970-01-01 was a Thursday.
    (((day + 3) % 7 + 1) as u8, ((time % 86_400) / 60) as u16)
}

pub use utter_dapp_sdk::date;

/// The states a door decision reads: doors, membership, certifications
/// and accounting (for dues).
#[derive(Debug)]
pub struct Rules {
    /// The doors dapp's state.
    pub doors: State,
    /// The membership dapp's state.
    pub members: State,
    /// The certifications dapp's state.
    pub certs: State,
    /// The accounting dapp's state.
    pub accounts: State,
    /// The reservations dapp's state (its `bookings/`).
    pub bookings: State,
}

impl Rules {
    /// The dapps' states under `root`, one directory per dapp (`/chain`
    /// in a container, a node's checkouts, a doorbot's copy).
    pub fn at(root: &std::path::Path) -> Self {
        Self {
            doors: State::at(root.join("doors")),
            members: State::at(root.join("membership")),
            certs: State::at(root.join("certifications")),
            accounts: State::at(root.join("accounting")),
            bookings: State::at(root.join("reservations")),
        }
    }

    /// The rules held in memory: `files` maps `<dapp>/<path>` to the
    /// file's bytes (a node's rules bundle); names of other dapps, or
    /// without a dapp, are left out.
    pub fn in_memory<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut by_dapp: [Vec<(String, Vec<u8>)>; 5] = Default::default();
        for (name, bytes) in files {
            let Some((dapp, path)) = name.split_once('/') else {
                continue;
            };
            let i = match dapp {
                "doors" => 0,
                "membership" => 1,
                "certifications" => 2,
                "accounting" => 3,
                "reservations" => 4,
                _ => continue,
            };
            by_dapp[i].push((path.to_string(), bytes.to_vec()));
        }
        let [doors, members, certs, accounts, bookings] = by_dapp.map(State::in_memory);
        Self {
            doors,
            members,
            certs,
            accounts,
            bookings,
        }
    }
}

/// May `badge` open `door` at `time`? Fails secure: anything unreadable or
/// unknown keeps the door shut, with the reason.
pub fn may_open(rules: &mut Rules, door_name: &str, badge: &str, time: u64) -> Decision {
    let Rules {
        doors,
        members,
        certs,
        accounts,
        bookings,
    } = rules;
    match decide(doors, members, certs, accounts, door_name, badge, time)
        .and_then(|d| honour_bookings(d, bookings, door_name, time))
    {
        Ok(d) => d,
        Err(e) => deny(
            format!("the rules cannot be read ({e}); the door stays shut"),
            None,
        ),
    }
}

fn decide(
    doors: &mut State,
    members: &mut State,
    certs: &mut State,
    accounts: &mut State,
    door_name: &str,
    badge: &str,
    time: u64,
) -> Result<Decision, Error> {
    let Some(d) = door(doors, door_name)? else {
        return Ok(deny(format!("there is no door {door_name:?}"), None));
    };
    if !utter_membership::is_badge(badge) {
        return Ok(deny("not a badge hash", None));
    }
    let Some(m) = member_by_badge(members, badge)? else {
        return Ok(deny("unknown badge", None));
    };
    let who = Some(m.key.as_str());
    if !m.active {
        return Ok(deny(format!("{} is suspended", m.name), who));
    }
    if !d.roles.is_empty() && !d.roles.iter().any(|r| m.has_role(r)) {
        return Ok(deny(
            format!("{} needs the role {}", d.name, d.roles.join(" or ")),
            who,
        ));
    }
    for tool in &d.certs {
        match cert(certs, &m.key, tool)? {
            None => {
                return Ok(deny(format!("{} is not certified for {tool}", m.name), who));
            }
            Some(c) if !c.valid_at(time) => {
                return Ok(deny(
                    format!("{}'s {tool} certification has expired", m.name),
                    who,
                ));
            }
            Some(_) => {}
        }
    }
    if d.dues {
        match utter_accounting::paid_until(accounts, &m.key)? {
            None => {
                return Ok(deny(format!("{} has not paid dues", m.name), who));
            }
            Some(until) if until <= time => {
                return Ok(deny(
                    format!("{}'s dues ran out on {}", m.name, date(until)),
                    who,
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(s) = &d.schedule {
        let (day, minute) = weekday_minute(time);
        if !s.days.contains(&day) || minute < s.from || minute >= s.to {
            return Ok(deny(format!("outside {}'s opening hours", d.name), who));
        }
    }
    Ok(Decision {
        granted: true,
        reason: format!("{} may enter", m.name),
        member: m.key.clone().into(),
    })
}

/// A granted decision stays granted only for whoever booked the door at
/// `time`, if anyone did.
fn honour_bookings(
    decision: Decision,
    bookings: &mut State,
    door: &str,
    time: u64,
) -> Result<Decision, Error> {
    if !decision.granted {
        return Ok(decision);
    }
    for file in bookings.list(&format!("bookings/{door}"))? {
        let path = format!("bookings/{door}/{file}");
        let Some(b) = bookings.get_json(&path)? else {
            continue;
        };
        let (Some(from), Some(to), Some(member)) =
            (b["from"].as_u64(), b["to"].as_u64(), b["member"].as_str())
        else {
            return Err(Error::from_message(format!("{path} is not a booking")));
        };
        if from <= time && time < to && decision.member.as_deref() != Some(member) {
            let (_, minute) = weekday_minute(to);
            return Ok(deny(
                format!(
                    "{door} is booked by {} until {:02}:{:02} UTC",
                    b["name"].as_str().unwrap_or("another member"),
                    minute / 60,
                    minute % 60
                ),
                decision.member.as_deref(),
            ));
        }
    }
    Ok(decision)
}

/// Applies one transaction at block time `now`; `members` is the
/// membership dapp's state.
pub fn apply(now: u64, tx: &Tx, state: &mut State, members: &mut State) -> Result<Outcome, Error> {
    let verdict = match tx.action.as_str() {
        "define-door" | "authorize-controller" | "revoke-controller" => {
            if !member(members, &tx.signer)?.is_some_and(|m| m.is_admin()) {
                Err(format!(
                    "only an active admin may {}; the signer is not one",
                    tx.action
                ))
            } else if tx.action == "define-door" {
                define(tx, state)?
            } else {
                controller(tx, state, tx.action == "authorize-controller")?
            }
        }
        "access" => access(now, tx, state)?,
        other => Err(format!(
            "unknown action {other:?}: expected define-door, authorize-controller, \
             revoke-controller or access"
        )),
    };
    Ok(match verdict {
        Ok(out) => Outcome::Accepted(out),
        Err(reason) => Outcome::Rejected(reason),
    })
}

type Verdict = Result<Option<Value>, String>;

fn define(tx: &Tx, state: &mut State) -> Result<Verdict, Error> {
    let parsed = (|| {
        let name = tx.str_arg("name")?;
        if !is_door(name) {
            return Err(format!(
                "args.name {name:?} must be 1-64 of a-z, 0-9, - and _"
            ));
        }
        let mut roles = tx.strs_arg("roles")?;
        roles.sort();
        roles.dedup();
        let mut certs = tx.strs_arg("certs")?;
        if let Some(c) = certs.iter().find(|c| !is_tool(c)) {
            return Err(format!(
                "certification {c:?} must be 1-64 of a-z, 0-9, - and _"
            ));
        }
        certs.sort();
        certs.dedup();
        let schedule = match tx.args.get("schedule") {
            None | Some(Value::Null) => None,
            Some(s) => Some(parse_schedule(s)?),
        };
        let dues = match tx.args.get("dues") {
            None | Some(Value::Null) => false,
            Some(d) => d.as_bool().ok_or("args.dues must be true or false")?,
        };
        Ok((name.to_string(), roles, certs, schedule, dues))
    })();
    let (name, roles, certs, schedule, dues) = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let controllers = door(state, &name)?
        .map(|d| d.controllers)
        .unwrap_or_default();
    let d = Door {
        name: name.clone(),
        roles,
        certs,
        schedule,
        controllers,
        dues,
    };
    state.put_json(&format!("doors/{name}.json"), &d.to_json())?;
    Ok(Ok(None))
}

fn controller(tx: &Tx, state: &mut State, add: bool) -> Result<Verdict, Error> {
    let (name, key) = match (tx.str_arg("door"), tx.str_arg("key")) {
        (Ok(n), Ok(k)) => (n.to_string(), k.to_string()),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
    };
    if key_id(&key).is_none() {
        return Ok(Err(format!(
            "args.key {key:?} is not an ssh-ed25519 public key"
        )));
    }
    let Some(mut d) = door(state, &name)? else {
        return Ok(Err(format!("there is no door {name:?}; define it first")));
    };
    let has = d.controllers.contains(&key);
    match (add, has) {
        (true, true) => return Ok(Err("that controller is already authorized".into())),
        (false, false) => return Ok(Err("that key is not a controller of this door".into())),
        (true, false) => {
            d.controllers.push(key);
            d.controllers.sort();
        }
        (false, true) => d.controllers.retain(|k| *k != key),
    }
    state.put_json(&format!("doors/{name}.json"), &d.to_json())?;
    Ok(Ok(None))
}

fn access(now: u64, tx: &Tx, state: &mut State) -> Result<Verdict, Error> {
    let parsed = (|| {
        let name = tx.str_arg("door")?.to_string();
        let badge = tx.str_arg("badge")?.to_string();
        let time = tx.u64_arg("time")?;
        let granted = tx
            .args
            .get("granted")
            .and_then(Value::as_bool)
            .ok_or("args.granted must be true or false")?;
        let reason = tx.str_arg("reason")?.to_string();
        if reason.len() > 200 {
            return Err("args.reason is longer than 200 bytes".to_string());
        }
        if !utter_membership::is_badge(&badge) {
            return Err(
                "args.badge must be a badge hash (64 hex digits), never a card number".into(),
            );
        }
        if time > now + MAX_SKEW {
            return Err(format!(
                "args.time {time} is more than {MAX_SKEW} s after the block's time {now}: fix the controller's clock"
            ));
        }
        let member = tx
            .args
            .get("member")
            .and_then(Value::as_str)
            .map(str::to_string);
        let session = match tx.args.get("session") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "start" || s == "end" => Some(s.clone()),
            Some(_) => return Err("args.session must be \"start\" or \"end\"".to_string()),
        };
        Ok((name, badge, time, granted, reason, member, session))
    })();
    let (name, badge, time, granted, reason, member, session) = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let Some(d) = door(state, &name)? else {
        return Ok(Err(format!("there is no door {name:?}")));
    };
    if !d.controllers.contains(&tx.signer) {
        return Ok(Err(format!(
            "the signer is not an authorized controller of {name}"
        )));
    }
    let path = log_part(state, &name, &date(time))?;
    let mut event = json!({
        "time": time,
        "badge": badge,
        "member": member,
        "granted": granted,
        "reason": reason,
        "controller": tx.signer,
    });
    if let Some(session) = session {
        event["session"] = json!(session);
    }
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    state.append(&path, &line)?;
    Ok(Ok(None))
}

/// A log file grows to about this size; then the day goes on in the next
/// part, so no block rewrites a large file.
pub const LOG_PART_BYTES: usize = 256 << 10;

/// The name of part `n` of a day's log: `<date>.jsonl`, then
/// `<date>~001.jsonl`, … (they sort in order).
pub fn log_part_name(day: &str, n: usize) -> String {
    if n == 0 {
        format!("{day}.jsonl")
    } else {
        format!("{day}~{n:03}.jsonl")
    }
}

/// The log file an event of `day` at door `name` goes to: the day's last
/// part, or a new one when that is full.
fn log_part(state: &mut State, name: &str, day: &str) -> Result<String, Error> {
    let path = |n| format!("log/{name}/{}", log_part_name(day, n));
    let mut n = 0;
    while state.get(&path(n + 1))?.is_some() {
        n += 1;
    }
    match state.get(&path(n))? {
        Some(bytes) if bytes.len() >= LOG_PART_BYTES => Ok(path(n + 1)),
        _ => Ok(path(n)),
    }
}

/// A log file name: `YYYY-MM-DD.jsonl` or `YYYY-MM-DD~NNN.jsonl`.
pub fn is_log_file(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".jsonl") else {
        return false;
    };
    let (day, part) = stem.split_once('~').unwrap_or((stem, "001"));
    let b = day.as_bytes();
    day.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && part.len() == 3
        && part.bytes().all(|c| c.is_ascii_digit())
        && part != "000"
}

/// The `test` entry: every door parses, every log line names its door and
/// parses.
pub fn test(state: &mut State) -> Result<(), Error> {
    for file in state.list("doors")? {
        let name = file.trim_end_matches(".json");
        if door(state, name)?.is_none() {
            return Err(Error::from_message(format!("doors/{file} is not a door")));
        }
    }
    for name in state.list("log")? {
        if door(state, &name)?.is_none() {
            return Err(Error::from_message(format!(
                "log/{name} is the log of a door that is not defined"
            )));
        }
        // Names only: events are checked when they are written, and a
        // test that read every event would cost more each block.
        for file in state.list(&format!("log/{name}"))? {
            if !is_log_file(&file) {
                return Err(Error::from_message(format!(
                    "log/{name}/{file} is not a day's log (YYYY-MM-DD[~NNN].jsonl)"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use utter_dapp_sdk::test_key as key;

    fn tx(signer: &str, action: &str, args: Value) -> Tx {
        Tx::new(signer, action, args)
    }

    fn accepted(out: Result<Outcome, Error>) {
        let out = out.expect("apply");
        assert!(matches!(out, Outcome::Accepted(_)), "{out:?}");
    }

    /// Applies `t` at MONDAY and insists it is rejected for `why`.
    fn rejected(w: &mut World, t: &Tx, why: &str) {
        let out = apply(MONDAY, t, &mut w.rules.doors, &mut w.rules.members).expect("apply");
        assert!(
            matches!(&out, Outcome::Rejected(r) if r.contains(why)),
            "{out:?} (expected a rejection for {why:?})"
        );
    }

    /// Monday 2026-11-23 10:00 UTC and Saturday 2026-11-28 10:00 UTC.
    const MONDAY: u64 = 1_795_428_000;
    const SATURDAY: u64 = 1_795_860_000;
    /// Certifications are made at `CERTIFIED`; an expiring one lapses
    /// before MONDAY.
    const CERTIFIED: u64 = MONDAY - 100_000;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum CertState {
        Missing,
        Valid,
        Expired,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum DuesState {
        Never,
        Paid,
        Lapsed,
    }

    struct World {
        _dir: tempfile::TempDir,
        rules: Rules,
    }

    fn world(active: bool, has_role: bool, cert: CertState, dues: DuesState, badge: &str) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let Rules {
            mut members,
            mut certs,
            mut doors,
            mut accounts,
            bookings,
        } = Rules::at(dir.path());
        let (admin, m) = (key(1), key(2));
        let salt = "00112233445566778899aabbccddeeff";
        accepted(utter_membership::apply(
            &tx(
                &admin,
                "add-member",
                json!({"key": admin, "name": "Ada", "salt": salt, "roles": ["trainer", "treasurer"]}),
            ),
            &mut members,
        ));
        let roles: Vec<&str> = if has_role { vec!["woodshop"] } else { vec![] };
        accepted(utter_membership::apply(
            &tx(
                &admin,
                "add-member",
                json!({"key": m, "name": "Max", "roles": roles}),
            ),
            &mut members,
        ));
        accepted(utter_membership::apply(
            &tx(&admin, "add-badge", json!({"key": m, "badge": badge})),
            &mut members,
        ));
        members.flush().expect("flush");
        if cert != CertState::Missing {
            let expires = if cert == CertState::Expired {
                json!(CERTIFIED + 10)
            } else {
                Value::Null
            };
            accepted(utter_certifications::apply(
                CERTIFIED,
                &tx(
                    &admin,
                    "certify",
                    json!({"member": m, "tool": "saw", "expires": expires}),
                ),
                &mut certs,
                &mut members,
            ));
            certs.flush().expect("flush");
        }
        if dues != DuesState::Never {
            let time = if dues == DuesState::Paid {
                MONDAY - 86_400
            } else {
                MONDAY - 2 * utter_accounting::MONTH
            };
            let ctx = utter_dapp_sdk::Context {
                chain: "c".into(),
                dapp: "accounting".into(),
                entry: "apply".into(),
                height: 1,
                time,
                parent: "p".into(),
                proposer: "k".into(),
            };
            for t in [
                tx(&admin, "mint", json!({"to": m, "amount": 100})),
                tx(&admin, "set-dues", json!({"per_month": 10})),
                tx(&m, "pay-dues", json!({"months": 1})),
            ] {
                let chain = utter_accounting::Chain {
                    members: &mut members,
                    leases: &mut State::in_memory([]),
                };
                accepted(utter_accounting::apply(&ctx, &t, &mut accounts, chain));
            }
            accounts.flush().expect("flush");
        }
        if !active {
            accepted(utter_membership::apply(
                &tx(&admin, "suspend", json!({"key": m})),
                &mut members,
            ));
            members.flush().expect("flush");
        }
        // Sixteen doors: every combination of a role rule, a
        // certification rule, opening hours and dues.
        for n in 0..16u8 {
            let schedule = if n & 4 != 0 {
                json!({"days": [1, 2, 3, 4, 5], "from": 480, "to": 1200})
            } else {
                Value::Null
            };
            let args = json!({
                "name": format!("d{n}"),
                "roles": if n & 1 != 0 { json!(["woodshop"]) } else { json!([]) },
                "certs": if n & 2 != 0 { json!(["saw"]) } else { json!([]) },
                "schedule": schedule,
                "dues": n & 8 != 0,
            });
            accepted(apply(
                MONDAY,
                &tx(&admin, "define-door", args),
                &mut doors,
                &mut members,
            ));
        }
        doors.flush().expect("flush");
        World {
            _dir: dir,
            rules: Rules {
                doors,
                members,
                certs,
                accounts,
                bookings,
            },
        }
    }

    /// What the rules say, written out independently of `decide`.
    #[allow(clippy::too_many_arguments)]
    fn oracle(
        door: Option<u8>,
        badge_ok: bool,
        known: bool,
        active: bool,
        has_role: bool,
        cert: CertState,
        dues: DuesState,
        time: u64,
    ) -> (bool, &'static str) {
        let Some(n) = door else {
            return (false, "there is no door");
        };
        if !badge_ok {
            return (false, "not a badge hash");
        }
        if !known {
            return (false, "unknown badge");
        }
        if !active {
            return (false, "is suspended");
        }
        if n & 1 != 0 && !has_role {
            return (false, "needs the role woodshop");
        }
        if n & 2 != 0 {
            match cert {
                CertState::Missing => return (false, "is not certified for saw"),
                CertState::Expired => return (false, "certification has expired"),
                CertState::Valid => {}
            }
        }
        if n & 8 != 0 {
            match dues {
                DuesState::Never => return (false, "has not paid dues"),
                DuesState::Lapsed => return (false, "dues ran out on"),
                DuesState::Paid => {}
            }
        }
        if n & 4 != 0 && time == SATURDAY {
            return (false, "opening hours");
        }
        (true, "may enter")
    }

    #[test]
    fn may_open_follows_every_rule_in_every_combination() {
        let badge = "ab".repeat(32);
        let other = "cd".repeat(32);
        let mut checked = 0;
        for active in [true, false] {
            for has_role in [true, false] {
                for (cert, dues) in [CertState::Missing, CertState::Valid, CertState::Expired]
                    .into_iter()
                    .flat_map(|c| {
                        [DuesState::Never, DuesState::Paid, DuesState::Lapsed].map(|d| (c, d))
                    })
                {
                    let mut w = world(active, has_role, cert, dues, &badge);
                    let mut copy = in_memory(w._dir.path());
                    for door in (0..16).map(Some).chain([None]) {
                        let name = door.map_or("nope".to_string(), |n| format!("d{n}"));
                        for (b, badge_ok, known) in [
                            (badge.as_str(), true, true),
                            (other.as_str(), true, false),
                            ("12345678", false, false),
                        ] {
                            for time in [MONDAY, SATURDAY] {
                                let d = may_open(&mut w.rules, &name, b, time);
                                assert_eq!(d, may_open(&mut copy, &name, b, time), "in memory");
                                let (granted, why) = oracle(
                                    door, badge_ok, known, active, has_role, cert, dues, time,
                                );
                                assert_eq!(
                                    (d.granted, d.reason.contains(why)),
                                    (granted, true),
                                    "door {name} badge {b} active {active} role {has_role} cert {cert:?} \
                                     dues {dues:?} time {time}: {d:?}, expected {granted} ({why})"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 2 * 3 * 3 * 17 * 3 * 2);
    }

    /// Every file under `dir`, as `<dapp>/<path>` (a rules bundle), in
    /// memory.
    fn in_memory(dir: &std::path::Path) -> Rules {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
            for e in std::fs::read_dir(dir).expect("read_dir") {
                let path = e.expect("entry").path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let name = path.strip_prefix(root).expect("inside").to_string_lossy();
                    out.push((name.into_owned(), std::fs::read(&path).expect("read")));
                }
            }
        }
        let mut files = Vec::new();
        walk(dir, dir, &mut files);
        assert!(files.len() > 3, "the world has files");
        Rules::in_memory(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
    }

    #[test]
    fn a_long_day_goes_on_in_a_new_part_and_only_log_names_pass() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = State::at(dir.path());
        let day = "2026-11-23";
        assert_eq!(
            log_part(&mut s, "d", day).expect("part"),
            "log/d/2026-11-23.jsonl"
        );
        s.append("log/d/2026-11-23.jsonl", &vec![b'x'; LOG_PART_BYTES])
            .expect("append");
        assert_eq!(
            log_part(&mut s, "d", day).expect("part"),
            "log/d/2026-11-23~001.jsonl"
        );
        s.append("log/d/2026-11-23~001.jsonl", b"y")
            .expect("append");
        assert_eq!(
            log_part(&mut s, "d", day).expect("part"),
            "log/d/2026-11-23~001.jsonl"
        );
        assert!(
            log_part_name(day, 0) < log_part_name(day, 1),
            "parts sort in order"
        );
        assert!(log_part_name(day, 1) < log_part_name(day, 2));
        for good in [
            "2026-11-23.jsonl",
            "2026-11-23~001.jsonl",
            "2026-11-23~999.jsonl",
        ] {
            assert!(is_log_file(good), "{good}");
        }
        for bad in [
            "2026-11-23",
            "2026-11-23~000.jsonl",
            "2026-11-23~1.jsonl",
            "x.jsonl",
            "2026_11_23.jsonl",
        ] {
            assert!(!is_log_file(bad), "{bad}");
        }
    }

    #[test]
    fn a_booked_door_opens_for_its_booker_only_while_the_booking_lasts() {
        let badge = "ab".repeat(32);
        let mut w = world(true, true, CertState::Valid, DuesState::Paid, &badge);
        assert!(may_open(&mut w.rules, "d0", &badge, MONDAY).granted);
        let book = |w: &mut World, member: &str, from: u64, to: u64| {
            w.rules
                .bookings
                .put_json(
                    &format!("bookings/d0/{from}.json"),
                    &json!({"member": member, "name": "Ada", "from": from, "to": to}),
                )
                .expect("put");
            w.rules.bookings.flush().expect("flush");
        };
        // Someone else's booking around the time: shut, and said why.
        book(&mut w, &key(1), MONDAY - 60, MONDAY + 3600);
        let d = may_open(&mut w.rules, "d0", &badge, MONDAY);
        assert!(
            !d.granted && d.reason.contains("booked by Ada until 11:00 UTC"),
            "{d:?}"
        );
        // Once it has ended, open again; a booking of one's own opens.
        assert!(may_open(&mut w.rules, "d0", &badge, MONDAY + 3600).granted);
        book(&mut w, &key(2), MONDAY + 7200, MONDAY + 9000);
        assert!(may_open(&mut w.rules, "d0", &badge, MONDAY + 7300).granted);
        // A damaged booking keeps the door shut.
        w.rules
            .bookings
            .put("bookings/d0/9.json", "{}")
            .expect("put");
        w.rules.bookings.flush().expect("flush");
        let d = may_open(&mut w.rules, "d0", &badge, MONDAY + 7300);
        assert!(!d.granted && d.reason.contains("stays shut"), "{d:?}");
    }

    #[test]
    fn damaged_rules_keep_the_door_shut() {
        let badge = "ab".repeat(32);
        let mut w = world(true, true, CertState::Valid, DuesState::Paid, &badge);
        w.rules.doors.put("doors/d0.json", "not json").expect("put");
        w.rules.doors.flush().expect("flush");
        let d = may_open(&mut w.rules, "d0", &badge, MONDAY);
        assert!(
            !d.granted && d.reason.contains("the door stays shut"),
            "{d:?}"
        );
    }

    #[test]
    fn only_a_doors_controllers_log_its_events() {
        let badge = "ab".repeat(32);
        let mut w = world(true, true, CertState::Valid, DuesState::Paid, &badge);
        let (admin, ctl, stranger) = (key(1), key(9), key(8));
        let event = json!({"door": "d0", "badge": badge, "time": MONDAY - 86_400 * 3,
                           "granted": true, "reason": "Max may enter"});
        rejected(
            &mut w,
            &tx(&ctl, "access", event.clone()),
            "not an authorized controller",
        );
        rejected(
            &mut w,
            &tx(
                &stranger,
                "authorize-controller",
                json!({"door": "d0", "key": ctl}),
            ),
            "only an active admin",
        );
        accepted(apply(
            MONDAY,
            &tx(
                &admin,
                "authorize-controller",
                json!({"door": "d0", "key": ctl}),
            ),
            &mut w.rules.doors,
            &mut w.rules.members,
        ));
        // An event from three days ago (the controller was offline) is kept.
        accepted(apply(
            MONDAY,
            &tx(&ctl, "access", event),
            &mut w.rules.doors,
            &mut w.rules.members,
        ));
        let future = json!({"door": "d0", "badge": badge, "time": MONDAY + 3600,
                            "granted": true, "reason": "x"});
        rejected(&mut w, &tx(&ctl, "access", future), "clock");
        // A tool's session: its start and end are marked; nothing else is.
        let mut session = json!({"door": "d0", "badge": badge, "time": MONDAY - 86_400 * 3 + 60,
                                 "granted": true, "reason": "session started", "session": "start"});
        accepted(apply(
            MONDAY,
            &tx(&ctl, "access", session.clone()),
            &mut w.rules.doors,
            &mut w.rules.members,
        ));
        session["session"] = json!("middle");
        rejected(&mut w, &tx(&ctl, "access", session), "args.session");
        w.rules.doors.flush().expect("flush");
        let log = w
            .rules
            .doors
            .get("log/d0/2026-11-20.jsonl")
            .expect("read")
            .expect("logged");
        let lines: Vec<Value> = String::from_utf8_lossy(log)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].get("session"), None, "{}", lines[0]);
        assert_eq!(lines[1]["session"], "start");
        test(&mut w.rules.doors).expect("invariants hold");
    }

    #[test]
    fn dates_and_weekdays_are_utc() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(MONDAY), "2026-11-23");
        assert_eq!(weekday_minute(MONDAY), (1, 600));
        assert_eq!(weekday_minute(SATURDAY), (6, 600));
        assert_eq!(weekday_minute(0), (4, 0));
    }
}

//! The controller itself, sans IO: badge reads, the door contact and the
//! clock go in; what to record and the level of every output line at any
//! moment come out. No thread, no file and no clock lives here, so every
//! timing is tested with a virtual clock (`Millis` is whatever monotonic
//! milliseconds the driver counts).
//!
//! Phases:
//! ```text
//! Ready ──granted──> Open (strike on, open_ms; relocks early once the
//!   │                      door contact has opened and closed again)
//!   ├──denied──> Denied (deny_ms back-off)
//!   ├──read error──> ReadError (error_ms back-off)
//!   └──granted, tool mode──> Session (power on until the member badges
//!                             out or idle_ms passes without activity)
//! any ──fault──> Fault (strike off for good: the driver exits)
//! ```
//! Reads that arrive while the door is open or backing off are ignored,
//! never queued: the reader is flushed.

use utter_doors::Decision;

use crate::badge::Badge;

/// Monotonic milliseconds (the driver's clock; a test's virtual one).
pub type Millis = u64;

/// How long each phase lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// The strike stays energised this long after a grant (default 4 s).
    pub open_ms: u64,
    /// After a deny, reads are ignored this long (default 2 s).
    pub deny_ms: u64,
    /// After a read error, reads are ignored this long (default 3 s).
    pub error_ms: u64,
    /// Tool mode: the session ends after this long without activity
    /// (without an activity input: this long after it started; default
    /// 30 min).
    pub idle_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            open_ms: 4_000,
            deny_ms: 2_000,
            error_ms: 3_000,
            idle_ms: 30 * 60 * 1_000,
        }
    }
}

/// A door (strike) or a tool (power relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A door: open for `open_ms` on a grant.
    Door,
    /// A tool lockout: power on for a session.
    Tool,
}

/// How the controller stands with its rules, for the ready pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Rules current, node in touch with the network.
    Online,
    /// Deciding on the last rules it has; events queue.
    Offline,
    /// No rules, or rules older than `max_offline`: nearly everyone is
    /// denied.
    NoRules,
}

/// One read from a badge reader, already hashed (see [`crate::badge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// A card, hashed with the chain's salt.
    Badge(Badge),
    /// A card was read, but there is no salt yet (no rules ever arrived):
    /// it cannot even be named, so it is denied and not recorded.
    Unsalted,
    /// The reader saw something that is not a card (bad checksum, bad
    /// parity, a garbled frame).
    Error(String),
}

/// A tool session's edge, as the doors dapp records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// The power went on.
    Start,
    /// The power went off.
    End,
}

impl Session {
    /// `"start"` or `"end"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Session::Start => "start",
            Session::End => "end",
        }
    }
}

/// An event for the ledger: the doors dapp's `access` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The badge's hash.
    pub badge: Badge,
    /// Its member, when known.
    pub member: Option<String>,
    /// Whether the door opened (or the tool's power went on).
    pub granted: bool,
    /// Why, for the log.
    pub reason: String,
    /// A tool session's start or end.
    pub session: Option<Session>,
}

/// What a read came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ignored: the door is open or backing off (or a tool is in use by
    /// someone else).
    Ignored,
    /// Decided: record this (before the outputs change).
    Decided(Event),
    /// Denied, but nothing to record (no salt to name the badge).
    DeniedUnrecorded,
    /// A read error: nothing to record.
    ReadError,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Ready,
    Open {
        since: Millis,
        door_opened: bool,
    },
    Denied {
        since: Millis,
    },
    ReadError {
        since: Millis,
    },
    Session {
        since: Millis,
        badge: Badge,
        member: Option<String>,
        last_activity: Millis,
    },
    Fault,
}

/// The level of every output at one moment (`true`: active).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lines {
    /// The strike (door) or the power relay (tool).
    pub strike: bool,
    /// Green LED.
    pub green: bool,
    /// Red LED.
    pub red: bool,
    /// Beeper.
    pub beeper: bool,
}

/// The controller.
#[derive(Debug)]
pub struct Core {
    timing: Timing,
    mode: Mode,
    phase: Phase,
    health: Health,
    /// Whether an activity input exists (tool mode's idle rule).
    has_activity: bool,
}

impl Core {
    /// A controller at rest: strike off, no rules until told.
    pub fn new(timing: Timing, mode: Mode, has_activity: bool) -> Self {
        Self {
            timing,
            mode,
            phase: Phase::Ready,
            health: Health::NoRules,
            has_activity,
        }
    }

    /// How the rules stand (changes the ready pattern only).
    pub fn set_health(&mut self, health: Health) {
        self.health = health;
    }

    /// The health last set.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Whether a read now would be taken (not open, not backing off).
    pub fn takes_reads(&self, now: Millis) -> bool {
        match &self.phase {
            Phase::Ready => true,
            Phase::Session { .. } => true,
            Phase::Fault => false,
            p => self.phase_end(p).is_some_and(|end| now >= end),
        }
    }

    fn phase_end(&self, phase: &Phase) -> Option<Millis> {
        match phase {
            Phase::Open { since, .. } => Some(since + self.timing.open_ms),
            Phase::Denied { since } => Some(since + self.timing.deny_ms),
            Phase::ReadError { since } => Some(since + self.timing.error_ms),
            _ => None,
        }
    }

    /// A read at `now`; `decide` answers for a badge (the rules, failing
    /// secure). Call [`Core::tick`] first so an elapsed phase has ended.
    pub fn read(
        &mut self,
        now: Millis,
        read: Read,
        decide: impl FnOnce(&Badge) -> Decision,
    ) -> Outcome {
        // An expired phase ends before the read counts (a tick may not
        // have come yet).
        let _ = self.tick(now);
        if let Phase::Session {
            badge,
            member,
            since,
            ..
        } = &self.phase
        {
            return match read {
                Read::Badge(b) if &b == badge => {
                    let minutes = now.saturating_sub(*since) / 60_000;
                    let event = Event {
                        badge: b,
                        member: member.clone(),
                        granted: true,
                        reason: format!("session ended: badged out after {minutes} min"),
                        session: Some(Session::End),
                    };
                    self.phase = Phase::Ready;
                    Outcome::Decided(event)
                }
                // Someone else's badge (or noise) while the tool runs.
                _ => Outcome::Ignored,
            };
        }
        if !self.takes_reads(now) {
            return Outcome::Ignored;
        }
        match read {
            Read::Error(_) => {
                self.phase = Phase::ReadError { since: now };
                Outcome::ReadError
            }
            Read::Unsalted => {
                self.phase = Phase::Denied { since: now };
                Outcome::DeniedUnrecorded
            }
            Read::Badge(badge) => {
                let d = decide(&badge);
                let session = match (d.granted, self.mode) {
                    (true, Mode::Tool) => {
                        self.phase = Phase::Session {
                            since: now,
                            badge: badge.clone(),
                            member: d.member.clone(),
                            last_activity: now,
                        };
                        Some(Session::Start)
                    }
                    (true, Mode::Door) => {
                        self.phase = Phase::Open {
                            since: now,
                            door_opened: false,
                        };
                        None
                    }
                    (false, _) => {
                        self.phase = Phase::Denied { since: now };
                        None
                    }
                };
                Outcome::Decided(Event {
                    badge,
                    member: d.member,
                    granted: d.granted,
                    reason: d.reason,
                    session,
                })
            }
        }
    }

    /// The decided event could not be recorded: it must not take effect.
    /// The door stays shut (a read-error back-off), the tool stays off.
    pub fn unrecorded(&mut self, now: Millis) {
        if !matches!(self.phase, Phase::Fault) {
            self.phase = Phase::ReadError { since: now };
        }
    }

    /// The clock moved: phases that ran out end. A tool session that
    /// idled out ends with an event to record.
    pub fn tick(&mut self, now: Millis) -> Option<Event> {
        if let Some(end) = self.phase_end(&self.phase)
            && now >= end
        {
            self.phase = Phase::Ready;
        }
        if let Phase::Session {
            since,
            badge,
            member,
            last_activity,
        } = &self.phase
        {
            let from = if self.has_activity {
                *last_activity
            } else {
                *since
            };
            if now >= from + self.timing.idle_ms {
                let event = Event {
                    badge: badge.clone(),
                    member: member.clone(),
                    granted: true,
                    reason: format!(
                        "session ended: idle for {} min",
                        self.timing.idle_ms / 60_000
                    ),
                    session: Some(Session::End),
                };
                self.phase = Phase::Ready;
                return Some(event);
            }
        }
        None
    }

    /// The door contact changed (`open`: the door is open). A door that
    /// opened and closed again relocks at once.
    pub fn contact(&mut self, open: bool) {
        if let Phase::Open { door_opened, .. } = &mut self.phase {
            if open {
                *door_opened = true;
            } else if *door_opened {
                self.phase = Phase::Ready;
            }
        }
    }

    /// The tool ran (its activity input): the idle clock starts again.
    pub fn activity(&mut self, now: Millis) {
        if let Phase::Session { last_activity, .. } = &mut self.phase {
            *last_activity = now;
        }
    }

    /// Something went wrong that the controller cannot go on from: strike
    /// off, red on, reads refused, until the process starts again.
    pub fn fault(&mut self) {
        self.phase = Phase::Fault;
    }

    /// Whether the controller has faulted.
    pub fn faulted(&self) -> bool {
        self.phase == Phase::Fault
    }

    /// Whether the strike (or the tool's power) is on.
    pub fn energised(&self, now: Millis) -> bool {
        self.lines(now).strike
    }

    /// Every output's level at `now` (the LED and beep codes of the
    /// README: ready blinks green, offline adds a red blink, no rules
    /// blinks red; granted is green with one beep, denied red with three,
    /// a read error a fast red blink with a long beep).
    pub fn lines(&self, now: Millis) -> Lines {
        let blink = |period: u64, on: u64, offset: u64| (now + period - offset) % period < on;
        match &self.phase {
            Phase::Fault => Lines {
                red: true,
                ..Lines::default()
            },
            Phase::Ready => match self.health {
                Health::Online => Lines {
                    green: blink(1_000, 100, 0),
                    ..Lines::default()
                },
                Health::Offline => Lines {
                    green: blink(1_000, 100, 0),
                    red: blink(1_000, 100, 500),
                    ..Lines::default()
                },
                Health::NoRules => Lines {
                    red: blink(1_000, 500, 0),
                    ..Lines::default()
                },
            },
            Phase::Open { since, .. } => Lines {
                strike: true,
                green: true,
                red: false,
                beeper: now.saturating_sub(*since) < 150,
            },
            Phase::Session { since, .. } => Lines {
                strike: true,
                green: true,
                red: false,
                beeper: now.saturating_sub(*since) < 150,
            },
            Phase::Denied { since } => {
                let t = now.saturating_sub(*since);
                Lines {
                    red: true,
                    beeper: t < 600 && t % 200 < 100,
                    ..Lines::default()
                }
            }
            Phase::ReadError { since } => {
                let t = now.saturating_sub(*since);
                Lines {
                    red: t % 250 < 125,
                    beeper: t < 500,
                    ..Lines::default()
                }
            }
        }
    }

    /// A name for the phase (status, logs).
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Ready => "ready",
            Phase::Open { .. } => "open",
            Phase::Denied { .. } => "denied",
            Phase::ReadError { .. } => "read-error",
            Phase::Session { .. } => "in-use",
            Phase::Fault => "fault",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::badge::{CardNumber, Salt};

    fn badge(n: u64) -> Badge {
        Salt::from_file("00112233445566778899aabbccddeeff")
            .expect("salt")
            .badge(CardNumber::from_value(n))
    }

    fn grant(_: &Badge) -> Decision {
        Decision {
            granted: true,
            reason: "Ada may enter".into(),
            member: Some("ssh-ed25519 AAAA".into()),
        }
    }

    fn refuse(_: &Badge) -> Decision {
        Decision {
            granted: false,
            reason: "Sue is suspended".into(),
            member: None,
        }
    }

    fn door() -> Core {
        let mut c = Core::new(Timing::default(), Mode::Door, false);
        c.set_health(Health::Online);
        c
    }

    /// Every millisecond in `range` where the strike is on.
    fn strike_on(c: &mut Core, range: std::ops::Range<u64>) -> Vec<u64> {
        range
            .filter(|t| {
                let _ = c.tick(*t);
                c.energised(*t)
            })
            .collect()
    }

    #[test]
    fn a_grant_opens_for_exactly_4_s_with_one_beep_and_a_flood_of_reads_is_ignored() {
        let mut c = door();
        assert!(
            strike_on(&mut c, 0..1_000).is_empty(),
            "the strike starts off"
        );
        let out = c.read(1_000, Read::Badge(badge(1)), grant);
        assert!(
            matches!(&out, Outcome::Decided(e) if e.granted && e.session.is_none()),
            "{out:?}"
        );
        // A flood while open: every read ignored, never decided.
        for t in (1_001..5_000).step_by(7) {
            let out = c.read(t, Read::Badge(badge(t)), |_| panic!("decided while open"));
            assert_eq!(out, Outcome::Ignored, "at {t}");
        }
        let on = strike_on(&mut c, 1_000..7_000);
        assert_eq!((on[0], *on.last().expect("on")), (1_000, 4_999));
        assert_eq!(on.len(), 4_000);
        let beeps = (1_000..5_000).filter(|t| c.lines(*t).beeper).count();
        assert_eq!(beeps, 0, "the open is over: its beep is not heard again");
        // The next read after the 4 s is taken.
        assert!(matches!(
            c.read(5_000, Read::Badge(badge(2)), grant),
            Outcome::Decided(_)
        ));
        let beeps = (5_000..9_000).filter(|t| c.lines(*t).beeper).count();
        assert_eq!(beeps, 150, "one 150 ms beep for a grant");
        assert!((5_000..9_000).all(|t| c.lines(t).green && !c.lines(t).red));
    }

    #[test]
    fn a_deny_backs_off_2_s_with_three_beeps_and_a_read_error_3_s() {
        let mut c = door();
        let out = c.read(0, Read::Badge(badge(1)), refuse);
        assert!(matches!(&out, Outcome::Decided(e) if !e.granted), "{out:?}");
        assert!(strike_on(&mut c, 0..3_000).is_empty(), "a deny never opens");
        let mut c = door();
        let _ = c.read(0, Read::Badge(badge(1)), refuse);
        for t in [1, 500, 1_999] {
            assert_eq!(
                c.read(t, Read::Badge(badge(2)), grant),
                Outcome::Ignored,
                "{t}"
            );
        }
        let beeps: Vec<u64> = (0..2_000).filter(|t| c.lines(*t).beeper).collect();
        let starts: Vec<u64> = beeps
            .iter()
            .copied()
            .filter(|t| *t == 0 || !beeps.contains(&(t - 1)))
            .collect();
        assert_eq!(starts, vec![0, 200, 400], "three beeps");
        assert!((0..2_000).all(|t| c.lines(t).red && !c.lines(t).green));
        assert!(matches!(
            c.read(2_000, Read::Badge(badge(2)), grant),
            Outcome::Decided(_)
        ));

        let mut c = door();
        assert_eq!(
            c.read(0, Read::Error("checksum".into()), |_| panic!("no card")),
            Outcome::ReadError
        );
        assert_eq!(
            c.read(2_999, Read::Badge(badge(1)), grant),
            Outcome::Ignored
        );
        assert!(strike_on(&mut c, 0..3_000).is_empty());
        assert_eq!(
            (0..3_000).filter(|t| c.lines(*t).beeper).count(),
            500,
            "a long beep"
        );
        assert!(matches!(
            c.read(3_000, Read::Badge(badge(1)), grant),
            Outcome::Decided(_)
        ));
        // A card with no salt to name it is denied and backs off like one.
        let mut c = door();
        assert_eq!(c.read(0, Read::Unsalted, grant), Outcome::DeniedUnrecorded);
        assert_eq!(
            c.read(1_999, Read::Badge(badge(1)), grant),
            Outcome::Ignored
        );
    }

    #[test]
    fn the_door_contact_relocks_once_the_door_has_opened_and_closed() {
        let mut c = door();
        let _ = c.read(0, Read::Badge(badge(1)), grant);
        c.contact(false); // closed without having opened: nothing
        assert!(c.energised(100));
        c.contact(true);
        assert!(c.energised(600), "held open: still on");
        c.contact(false);
        assert!(!c.energised(700), "closed again: relocked at once");
        assert!(matches!(
            c.read(701, Read::Badge(badge(2)), grant),
            Outcome::Decided(_)
        ));
    }

    #[test]
    fn a_tool_runs_until_its_member_badges_out_or_it_idles_and_logs_both_ends() {
        let mut c = Core::new(Timing::default(), Mode::Tool, true);
        let out = c.read(0, Read::Badge(badge(1)), grant);
        assert!(
            matches!(&out, Outcome::Decided(e) if e.session == Some(Session::Start)),
            "{out:?}"
        );
        assert!(c.energised(60_000), "stays on past the door's 4 s");
        // Someone else's badge while it runs: ignored, power stays on.
        assert_eq!(
            c.read(61_000, Read::Badge(badge(2)), |_| panic!("decided")),
            Outcome::Ignored
        );
        assert!(c.energised(61_001));
        let out = c.read(120_000, Read::Badge(badge(1)), |_| {
            panic!("no decision to end")
        });
        match out {
            Outcome::Decided(e) => {
                assert_eq!(e.session, Some(Session::End));
                assert!(e.reason.contains("badged out after 2 min"), "{}", e.reason);
            }
            other => panic!("{other:?}"),
        }
        assert!(!c.energised(120_001));
        // Idle: activity keeps it on, then 30 min without ends it.
        let _ = c.read(200_000, Read::Badge(badge(1)), grant);
        let idle = Timing::default().idle_ms;
        c.activity(200_000 + idle - 1);
        assert_eq!(
            c.tick(200_000 + idle),
            None,
            "activity moved the idle clock"
        );
        let ended = c.tick(200_000 + 2 * idle - 1);
        assert!(
            matches!(&ended, Some(e) if e.session == Some(Session::End)),
            "{ended:?}"
        );
        assert!(!c.energised(200_000 + 2 * idle));
        // Without an activity input the session lasts idle_ms from its start.
        let mut c = Core::new(Timing::default(), Mode::Tool, false);
        let _ = c.read(0, Read::Badge(badge(1)), grant);
        c.activity(idle - 1);
        assert!(c.tick(idle).is_some());
        // A tool denied stays off.
        let mut c = Core::new(Timing::default(), Mode::Tool, false);
        let _ = c.read(0, Read::Badge(badge(1)), refuse);
        assert!(!c.energised(1));
    }

    #[test]
    fn ready_patterns_say_online_offline_and_no_rules() {
        let count = |c: &Core, f: fn(Lines) -> bool| (0..10_000).filter(|t| f(c.lines(*t))).count();
        let mut c = door();
        assert_eq!((count(&c, |l| l.green), count(&c, |l| l.red)), (1_000, 0));
        c.set_health(Health::Offline);
        assert_eq!(
            (count(&c, |l| l.green), count(&c, |l| l.red)),
            (1_000, 1_000)
        );
        assert!(
            (0..1_000).all(|t| !(c.lines(t).green && c.lines(t).red)),
            "they alternate"
        );
        c.set_health(Health::NoRules);
        assert_eq!((count(&c, |l| l.green), count(&c, |l| l.red)), (0, 5_000));
        assert_eq!(count(&c, |l| l.strike || l.beeper), 0);
    }

    #[test]
    fn a_fault_or_an_unrecorded_grant_leaves_the_strike_off() {
        let mut c = door();
        let _ = c.read(0, Read::Badge(badge(1)), grant);
        c.unrecorded(0);
        assert!(
            !c.energised(0),
            "a grant that could not be recorded does not open"
        );
        assert_eq!(
            c.read(2_999, Read::Badge(badge(1)), grant),
            Outcome::Ignored
        );
        let _ = c.read(3_000, Read::Badge(badge(1)), grant);
        assert!(c.energised(3_001));
        c.fault();
        assert!(c.faulted());
        assert!(!c.energised(3_002));
        assert_eq!(
            c.lines(3_002),
            Lines {
                red: true,
                ..Lines::default()
            }
        );
        assert_eq!(
            c.read(10_000, Read::Badge(badge(1)), grant),
            Outcome::Ignored
        );
        assert_eq!(c.tick(1 << 40), None);
        assert!(c.faulted(), "a fault lasts until the process starts again");
    }
}

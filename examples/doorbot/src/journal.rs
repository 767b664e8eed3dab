//! The event journal: every decided event, signed with the controller's
//! key, is written to `events.jsonl` **before** the door opens, so an
//! event the door acted on is never lost to a crash, a kill -9 or a
//! watchdog restart a moment later (the kernel holds the write); it is
//! synced to the disk right after the outputs moved, so the strike does
//! not wait for an SD card's flush (tens of milliseconds), and only a
//! power cut inside those few milliseconds could lose that one event. `events.cursor` counts how many lines the node holds
//! (its mempool is durable; offline, its side branch keeps them) and how
//! many are on main. Lines are sent again from the cursor after a
//! restart; the node answers a line it has with its state, so nothing is
//! recorded twice.
//!
//! Nonces are the larger of the last one plus one and the time in
//! microseconds: increasing, never reused even if the journal is lost, and
//! known without asking the node (which may be down).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use utter_formats::tx::{Request, sign_requests};
use utter_formats::{Keypair, SignedTx, TxId};

use crate::core::Event;

/// The journal's file.
pub const FILE: &str = "events.jsonl";
const CURSOR: &str = "events.cursor";
const DONE: &str = "events.done.jsonl";
/// A journal whose lines are all on main is started afresh past this size.
const ROTATE_BYTES: u64 = 4 << 20;

/// How far the journal's lines have gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Lines the node accepted (or answered for).
    pub sent: usize,
    /// Lines on main.
    pub committed: usize,
}

/// One recorded event, for the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The transaction.
    pub id: TxId,
    /// When it was decided, Unix seconds.
    pub time: u64,
    /// Opened or not.
    pub granted: bool,
    /// Why.
    pub reason: String,
    /// The badge's first digits.
    pub badge: String,
    /// `"start"`/`"end"` of a tool session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Recorded {
    fn of(line: &str) -> Option<Self> {
        let stx: SignedTx = serde_json::from_str(line).ok()?;
        let a = &stx.tx.args;
        Some(Self {
            id: TxId::of_line(line),
            time: a["time"].as_u64()?,
            granted: a["granted"].as_bool()?,
            reason: a["reason"].as_str()?.to_string(),
            badge: a["badge"].as_str()?.chars().take(12).collect(),
            session: a["session"].as_str().map(str::to_string),
        })
    }
}

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing it.
    #[error("the event journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Signing the event.
    #[error("cannot sign the event: {0}")]
    Sign(#[from] utter_formats::tx::SignError),
}

/// The journal of one controller.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: std::fs::File,
    /// Every line (signed transaction) in the file, in order.
    lines: Vec<String>,
    cursor: Cursor,
    last_nonce: u64,
    /// Lines of the file that are not transactions (damage), skipped.
    pub damaged: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Opens (or starts) the journal in `dir`. A last line cut short (the
    /// process died while writing it, before the door acted) is cut off.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join(FILE);
        let text = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            f.set_len(whole as u64).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
            eprintln!(
                "doorbot: cut a half-written last line off {} (written as the process died, never acted on)",
                path.display()
            );
        }
        let mut lines = Vec::new();
        let mut damaged = 0;
        let mut last_nonce = 0;
        for line in String::from_utf8_lossy(&text[..whole]).lines() {
            match serde_json::from_str::<SignedTx>(line) {
                Ok(stx) => {
                    last_nonce = last_nonce.max(stx.tx.nonce);
                    lines.push(line.to_string());
                }
                Err(_) => damaged += 1,
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        crate::durable::sync_dir(dir).map_err(io(dir))?;
        let mut cursor: Cursor = std::fs::read(dir.join(CURSOR))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // A journal started afresh after its cursor was saved, or a cursor
        // from a damaged file: never past the end.
        cursor.sent = cursor.sent.min(lines.len());
        cursor.committed = cursor.committed.min(cursor.sent);
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            lines,
            cursor,
            last_nonce,
            damaged,
        })
    }

    /// Signs `event` (decided at `time`, for `door` on `chain`) and
    /// appends it; returns its id once the kernel has it (a crash of
    /// this process cannot lose it). [`Journal::sync`] puts it on disk.
    pub fn record(
        &mut self,
        key: &Keypair,
        chain: &str,
        door: &str,
        event: &Event,
        time: u64,
    ) -> Result<TxId, JournalError> {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let nonce = (self.last_nonce + 1).max(micros);
        let mut args = json!({
            "door": door,
            "badge": event.badge.as_str(),
            "time": time,
            "granted": event.granted,
            "reason": clip(&event.reason, 200),
            "member": event.member,
        });
        if let Some(s) = event.session {
            args["session"] = json!(s.as_str());
        }
        let request = Request::new("doors", "access", args);
        let line = sign_requests(key, chain, nonce, time, [request])?
            .pop()
            .expect("one request, one line");
        let path = self.dir.join(FILE);
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(io(&path))?;
        self.last_nonce = nonce;
        let id = Recorded::of(&line)
            .map(|r| r.id)
            .expect("a line it signed parses");
        self.lines.push(line);
        Ok(id)
    }

    /// Lines the node does not hold yet, with their indexes.
    pub fn unsent(&self, max: usize) -> Vec<(usize, String)> {
        self.lines
            .iter()
            .enumerate()
            .skip(self.cursor.sent)
            .take(max)
            .map(|(i, l)| (i, l.clone()))
            .collect()
    }

    /// Lines the node holds that are not on main yet: their indexes, ids
    /// and lines.
    pub fn unconfirmed(&self, max: usize) -> Vec<(usize, TxId, String)> {
        (self.cursor.committed..self.cursor.sent)
            .take(max)
            .map(|i| (i, TxId::of_line(&self.lines[i]), self.lines[i].clone()))
            .collect()
    }

    /// The node holds every line before `upto`; the cursor to save with
    /// [`Journal::save_cursor`] (outside the lock: the door never waits for
    /// the uplink's disk), if it moved.
    pub fn sent(&mut self, upto: usize) -> Option<Cursor> {
        if upto <= self.cursor.sent {
            return None;
        }
        self.cursor.sent = upto.min(self.lines.len());
        Some(self.cursor)
    }

    /// Main holds every line before `upto`; the cursor to save, if it
    /// moved. A journal all on main that grew large starts afresh (the old
    /// one kept as `events.done.jsonl`).
    pub fn committed(&mut self, upto: usize) -> Result<Option<Cursor>, JournalError> {
        if upto <= self.cursor.committed {
            return Ok(None);
        }
        self.cursor.committed = upto.min(self.cursor.sent);
        let path = self.dir.join(FILE);
        let size = self.file.metadata().map_err(io(&path))?.len();
        if self.cursor.committed == self.lines.len() && size > ROTATE_BYTES {
            std::fs::rename(&path, self.dir.join(DONE)).map_err(io(&path))?;
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            crate::durable::sync_dir(&self.dir).map_err(io(&path))?;
            self.lines.clear();
            self.cursor = Cursor::default();
        }
        Ok(Some(self.cursor))
    }

    /// Saves `cursor` durably in `dir` (by one thread only: the uplink's).
    pub fn save_cursor(dir: &Path, cursor: Cursor) -> Result<(), JournalError> {
        let path = dir.join(CURSOR);
        let bytes = serde_json::to_vec(&cursor).expect("a cursor serializes");
        crate::durable::write(&path, &bytes).map_err(io(&path))
    }

    /// A handle on the journal's file to sync it from another thread
    /// (the door's thread never waits for the disk).
    pub fn sync_handle(&self) -> Result<std::fs::File, JournalError> {
        self.file.try_clone().map_err(io(&self.dir.join(FILE)))
    }

    /// How far the lines have gone.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Lines in the journal.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The last `n` events, newest last.
    pub fn last(&self, n: usize) -> Vec<Recorded> {
        let from = self.lines.len().saturating_sub(n);
        self.lines[from..]
            .iter()
            .filter_map(|l| Recorded::of(l))
            .collect()
    }

    /// Every transaction id, in order (tests, `doorbot status --json`).
    pub fn ids(&self) -> Vec<TxId> {
        self.lines
            .iter()
            .filter_map(|l| Recorded::of(l).map(|r| r.id))
            .collect()
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::badge::{CardNumber, Salt};

    fn event(granted: bool) -> Event {
        let salt = Salt::from_file("00112233445566778899aabbccddeeff").expect("salt");
        Event {
            badge: salt.badge(CardNumber::from_value(7)),
            member: None,
            granted,
            reason: "x".repeat(300),
            session: None,
        }
    }

    #[test]
    fn events_survive_a_restart_and_a_torn_last_line_is_cut() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = Keypair::generate("door").expect("key");
        let mut j = Journal::open(dir.path()).expect("open");
        let a = j
            .record(&key, "c", "front", &event(true), 100)
            .expect("record");
        let b = j
            .record(&key, "c", "front", &event(false), 101)
            .expect("record");
        let c = j.sent(1).expect("moved");
        Journal::save_cursor(dir.path(), c).expect("saved");
        drop(j);
        // A half-written line at the end, as a kill -9 mid-write leaves.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .expect("open");
        f.write_all(br#"{"sig":"#).expect("write");
        drop(f);
        let mut j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.ids(), vec![a, b]);
        assert_eq!(j.damaged, 0);
        assert_eq!(
            j.cursor(),
            Cursor {
                sent: 1,
                committed: 0
            }
        );
        assert_eq!(j.unsent(10).len(), 1);
        assert_eq!(j.unconfirmed(10)[0].1, a);
        let last = j.last(5);
        assert_eq!(last.len(), 2);
        assert_eq!(
            last[0].reason.len(),
            200,
            "reasons are clipped to what the dapp takes"
        );
        // Nonces go up across the restart.
        let c = j
            .record(&key, "c", "front", &event(true), 102)
            .expect("record");
        let nonces: Vec<u64> = j
            .lines
            .iter()
            .map(|l| serde_json::from_str::<SignedTx>(l).expect("tx").tx.nonce)
            .collect();
        assert!(nonces.windows(2).all(|w| w[0] < w[1]), "{nonces:?}");
        assert_eq!(j.ids().last(), Some(&c));
        assert_eq!(
            j.sent(3),
            Some(Cursor {
                sent: 3,
                committed: 0
            })
        );
        assert_eq!(j.sent(2), None, "never back");
        j.committed(3).expect("committed");
        assert!(j.unconfirmed(10).is_empty());
    }
}

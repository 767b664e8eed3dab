//! `doorbot.toml`: which door, which node, which key, which hardware.
//!
//! ```toml
//! door = "front"                 # the door (or tool) as the doors dapp names it
//! mode = "door"                  # or "tool": a lockout's power relay
//! node = "http://127.0.0.1:7447" # the follower node's API (or node_addr_file)
//! key = "/etc/utter/doorbot.key" # the controller's key (doorbot enroll makes it)
//! state_dir = "/var/lib/doorbot" # the rules copy and the event journal
//! max_offline = "7d"             # rules older than this admit only offline_roles
//! offline_roles = ["admin"]
//!
//! [timing]                       # the defaults
//! open_ms = 4000
//! deny_ms = 2000
//! error_ms = 3000
//! idle_ms = 1800000
//!
//! [reader]
//! kind = "serial"                # stdin | serial | evdev | wiegand
//! path = "/dev/ttyAMA0"
//!
//! [outputs]
//! kind = "gpio"                  # print | gpio
//! chip = "/dev/gpiochip0"
//! strike = { line = 17, active_low = true }
//! green = { line = 27 }
//! red = { line = 22 }
//! beeper = { line = 23 }
//! contact = { line = 24, active_low = true }   # optional
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::{Mode, Timing};
use crate::outputs::OutputsConfig;
use crate::readers::ReaderConfig;

/// Where `doorbot` looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/utter/doorbot.toml";

/// The whole config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The door (or tool) this controller drives.
    pub door: String,
    /// Door or tool.
    #[serde(default = "door_mode")]
    pub mode: Mode,
    /// The node's API address (`http://127.0.0.1:PORT`).
    #[serde(default)]
    pub node: Option<String>,
    /// A file holding the node's API address (`<data dir>/node.addr`),
    /// read again on every reconnection; used when `node` is not set.
    #[serde(default)]
    pub node_addr_file: Option<PathBuf>,
    /// The controller's OpenSSH ed25519 key.
    pub key: PathBuf,
    /// The rules copy, the journal and the status.
    pub state_dir: PathBuf,
    /// Rules not known current for longer than this admit only
    /// `offline_roles` (`"7d"`, `"12h"`, `"90m"`, `"30s"`, or seconds).
    #[serde(default = "seven_days", with = "duration")]
    pub max_offline: u64,
    /// Roles still admitted on stale rules.
    #[serde(default)]
    pub offline_roles: Vec<String>,
    /// Phase lengths.
    #[serde(default)]
    pub timing: Timing,
    /// The badge reader.
    pub reader: ReaderConfig,
    /// The strike, LEDs and beeper.
    pub outputs: OutputsConfig,
}

fn door_mode() -> Mode {
    Mode::Door
}

fn seven_days() -> u64 {
    7 * 86_400
}

/// Why a config is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable.
    #[error(
        "cannot read the config {path}: {source} (make one from examples/doorbot/doorbot.toml)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a config.
    #[error("the config {path} is not valid: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|why| ConfigError::Invalid {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Parses and checks a config's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        if !utter_doors::is_door(&c.door) {
            return Err(format!(
                "door {:?} must be 1-64 of a-z, 0-9, - and _ (as the doors dapp names it)",
                c.door
            ));
        }
        if c.node.is_none() && c.node_addr_file.is_none() {
            return Err(
                "set node (the node's API, http://127.0.0.1:PORT) or node_addr_file".into(),
            );
        }
        if c.timing.open_ms == 0 || c.timing.idle_ms == 0 {
            return Err("timing.open_ms and timing.idle_ms must be more than 0".into());
        }
        Ok(c)
    }

    /// The node's API address now.
    pub fn node_addr(&self) -> Result<String, String> {
        if let Some(n) = &self.node {
            return Ok(n.clone());
        }
        let file = self.node_addr_file.as_deref().unwrap_or(Path::new(""));
        std::fs::read_to_string(file)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                format!(
                    "cannot read the node's address from {}: {e}",
                    file.display()
                )
            })
    }
}

/// `"7d"`, `"12h"`, `"90m"`, `"30s"` or a number of seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

mod duration {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{secs}s"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Secs(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Secs(n) => Ok(n),
            Either::Text(t) => super::parse_duration(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration: write 7d, 12h, 90m, 30s or seconds"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
door = "front"
node = "http://127.0.0.1:7447"
key = "/etc/utter/doorbot.key"
state_dir = "/var/lib/doorbot"
max_offline = "7d"
offline_roles = ["admin"]

[reader]
kind = "wiegand"
chip = "/dev/gpiochip0"
d0 = 5
d1 = 6

[outputs]
kind = "gpio"
chip = "/dev/gpiochip0"
strike = { line = 17, active_low = true }
green = { line = 27 }
contact = { line = 24, active_low = true }
"#;

    #[test]
    fn a_config_parses_with_defaults_and_mistakes_are_named() {
        let c = Config::parse(FULL).expect("parses");
        assert_eq!(c.max_offline, 7 * 86_400);
        assert_eq!(c.mode, Mode::Door);
        assert_eq!(c.timing, Timing::default());
        assert!(matches!(
            c.reader,
            ReaderConfig::Wiegand { d0: 5, d1: 6, .. }
        ));
        for (bad, says) in [
            (
                FULL.replace("door = \"front\"", "door = \"Front Door\""),
                "a-z",
            ),
            (FULL.replace("\"7d\"", "\"a week\""), "not a duration"),
            (FULL.replace("kind = \"wiegand\"", "kind = \"nfc\""), "nfc"),
            (
                FULL.replace("node = \"http://127.0.0.1:7447\"", ""),
                "node_addr_file",
            ),
            (format!("{FULL}\nstrik = 1"), "strik"),
        ] {
            let err = Config::parse(&bad).expect_err(says);
            assert!(err.contains(says), "{says}: {err}");
        }
        for (t, secs) in [
            ("30", 30),
            ("30s", 30),
            ("90m", 5_400),
            ("12h", 43_200),
            ("7d", 604_800),
        ] {
            assert_eq!(parse_duration(t), Some(secs), "{t}");
        }
        assert_eq!(parse_duration("7w"), None);
    }

    #[test]
    fn the_example_config_shipped_beside_the_unit_parses() {
        let c = Config::parse(include_str!("../doorbot.toml")).expect("the example parses");
        assert_eq!((c.door.as_str(), c.max_offline), ("front", 7 * 86_400));
        assert_eq!(c.reader, ReaderConfig::Stdin);
    }
}

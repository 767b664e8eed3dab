//! The outputs: strike (or a tool's power relay), green and red LEDs, the
//! beeper, and the optional inputs beside them (door contact, a tool's
//! activity). Backends: GPIO lines through the character device (uAPI v2,
//! each line active-high or active-low as the config says), a printer
//! for development that writes each transition with its time, and a
//! recorder for tests.
//!
//! [`Outputs`] is the one way to drive them, and it fails secure: the
//! strike starts off, and dropping it (a return, an error, a panic that
//! unwinds) turns every line off first.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::core::Lines;

/// One line of a GPIO chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// Its offset on the chip.
    pub line: u32,
    /// Active when low (relay boards that pull in on 0 V).
    #[serde(default)]
    pub active_low: bool,
}

/// Which outputs, from the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OutputsConfig {
    /// Print each transition with its time on standard output.
    Print,
    /// GPIO lines on one chip.
    Gpio {
        /// The chip, e.g. `/dev/gpiochip0`.
        chip: PathBuf,
        /// The strike relay (door) or the power relay (tool).
        strike: Line,
        /// Green LED.
        green: Option<Line>,
        /// Red LED.
        red: Option<Line>,
        /// Beeper.
        beeper: Option<Line>,
        /// Door contact, an input: active while the door is open.
        contact: Option<Line>,
        /// A tool's activity (a current sensor), an input: active while
        /// it runs.
        activity: Option<Line>,
    },
}

/// The outputs' names, in the order `Lines` holds them.
pub const NAMES: [&str; 4] = ["strike", "green", "red", "beeper"];

fn levels(l: Lines) -> [bool; 4] {
    [l.strike, l.green, l.red, l.beeper]
}

/// A backend: sets one output.
pub trait Backend: Send {
    /// Sets output `which` (an index into [`NAMES`]) active or not.
    fn set(&mut self, which: usize, active: bool) -> Result<(), String>;
}

/// The outputs, driven by levels; all off at start and on drop.
pub struct Outputs {
    backend: Box<dyn Backend>,
    now: [bool; 4],
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outputs({:?})", self.now)
    }
}

impl Outputs {
    /// Takes `backend` and sets every output off.
    pub fn new(mut backend: Box<dyn Backend>) -> Result<Self, String> {
        for i in 0..4 {
            backend.set(i, false)?;
        }
        Ok(Self {
            backend,
            now: [false; 4],
        })
    }

    /// Sets the outputs that differ from `lines`.
    pub fn apply(&mut self, lines: Lines) -> Result<(), String> {
        for (i, want) in levels(lines).into_iter().enumerate() {
            if self.now[i] != want {
                self.backend.set(i, want)?;
                self.now[i] = want;
            }
        }
        Ok(())
    }

    /// Every output off (the strike first).
    pub fn all_off(&mut self) {
        for i in 0..4 {
            // Off is tried even when it failed before.
            let _ = self.backend.set(i, false);
            self.now[i] = false;
        }
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        self.all_off();
    }
}

/// Prints `HH:MM:SS.mmm strike on` for each transition.
#[derive(Debug, Default)]
pub struct Print;

impl Backend for Print {
    fn set(&mut self, which: usize, active: bool) -> Result<(), String> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let day = ms % 86_400_000;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:02}:{:02}:{:02}.{:03} {} {}",
            day / 3_600_000,
            day / 60_000 % 60,
            day / 1_000 % 60,
            day % 1_000,
            NAMES[which],
            if active { "on" } else { "off" }
        )
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot print to standard output: {e}"))
    }
}

/// Records every transition (tests): `(output, active)`, and can be made
/// to fail.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// The transitions so far.
    pub log: Arc<Mutex<Vec<(usize, bool)>>>,
    /// While set, setting an output on fails (off always works, as a
    /// relay driver's off is its default).
    pub fail_on: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    /// The level each output has now.
    pub fn levels(&self) -> [bool; 4] {
        let mut now = [false; 4];
        for (i, on) in self.log.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            now[*i] = *on;
        }
        now
    }

    /// Whether the strike is on now.
    pub fn strike(&self) -> bool {
        self.levels()[0]
    }
}

impl Backend for Recorder {
    fn set(&mut self, which: usize, active: bool) -> Result<(), String> {
        if active && self.fail_on.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(format!("{} cannot be set (test)", NAMES[which]));
        }
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((which, active));
        Ok(())
    }
}

/// GPIO output lines on one chip.
#[derive(Debug)]
pub struct Gpio {
    request: gpiocdev::Request,
    offsets: [Option<u32>; 4],
}

/// Why the GPIO lines could not be had.
#[derive(Debug, thiserror::Error)]
#[error("GPIO lines on {chip}: {source} (is another doorbot running, or the chip wrong?)")]
pub struct GpioError {
    chip: PathBuf,
    source: gpiocdev::Error,
}

impl Gpio {
    /// Requests the output lines, every one inactive from the start.
    pub fn open(
        chip: &std::path::Path,
        lines: [Option<Line>; 4],
        consumer: &str,
    ) -> Result<Self, GpioError> {
        let mut b = gpiocdev::Request::builder();
        b.on_chip(chip).with_consumer(consumer);
        for l in lines.iter().flatten() {
            b.with_line(l.line)
                .as_output(gpiocdev::line::Value::Inactive);
            if l.active_low {
                b.as_active_low();
            } else {
                b.as_active_high();
            }
        }
        let request = b.request().map_err(|source| GpioError {
            chip: chip.to_path_buf(),
            source,
        })?;
        Ok(Self {
            request,
            offsets: lines.map(|l| l.map(|l| l.line)),
        })
    }

    /// Requests input lines (door contact, activity) with edge events on
    /// both edges.
    pub fn inputs(
        chip: &std::path::Path,
        lines: &[Line],
        consumer: &str,
    ) -> Result<gpiocdev::Request, GpioError> {
        let mut b = gpiocdev::Request::builder();
        b.on_chip(chip).with_consumer(consumer);
        for l in lines {
            b.with_line(l.line)
                .as_input()
                .with_edge_detection(gpiocdev::line::EdgeDetection::BothEdges)
                .with_debounce_period(std::time::Duration::from_millis(20));
            if l.active_low {
                b.as_active_low();
            } else {
                b.as_active_high();
            }
        }
        b.request().map_err(|source| GpioError {
            chip: chip.to_path_buf(),
            source,
        })
    }
}

impl Backend for Gpio {
    fn set(&mut self, which: usize, active: bool) -> Result<(), String> {
        let Some(offset) = self.offsets[which] else {
            return Ok(()); // not wired
        };
        let value = if active {
            gpiocdev::line::Value::Active
        } else {
            gpiocdev::line::Value::Inactive
        };
        self.request
            .set_value(offset, value)
            .map_err(|e| format!("GPIO line {offset} ({}): {e}", NAMES[which]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_start_off_change_only_what_differs_and_drop_to_off() {
        let rec = Recorder::default();
        let mut out = Outputs::new(Box::new(rec.clone())).expect("outputs");
        assert_eq!(
            rec.log.lock().expect("log").len(),
            4,
            "every line set off first"
        );
        let open = Lines {
            strike: true,
            green: true,
            red: false,
            beeper: true,
        };
        out.apply(open).expect("apply");
        out.apply(open).expect("apply");
        assert_eq!(rec.log.lock().expect("log").len(), 7, "three changes, once");
        assert_eq!(rec.levels(), [true, true, false, true]);
        drop(out);
        assert_eq!(rec.levels(), [false; 4], "dropped: all off");
    }

    #[test]
    fn a_panic_while_the_strike_is_on_leaves_it_off() {
        let rec = Recorder::default();
        let (inside, after) = (rec.clone(), rec.clone());
        let result = std::panic::catch_unwind(move || {
            let mut out = Outputs::new(Box::new(rec)).expect("outputs");
            out.apply(Lines {
                strike: true,
                ..Lines::default()
            })
            .expect("apply");
            assert!(inside.strike());
            panic!("a bug in the middle of an open");
        });
        assert!(result.is_err());
        assert_eq!(after.levels(), [false; 4], "the unwind turned it off");
    }
}

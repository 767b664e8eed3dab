//! Badge readers: the decoders (pure, tested on their framing) and the
//! Linux backends around them, each a thread that sends what it reads.
//!
//! - RDM6300 125 kHz serial readers: STX, 10 hex digits (a version byte
//!   and the 32-bit card id), 2 hex digits of checksum (the XOR of the
//!   five bytes), ETX, at 9600 baud. The checksum is compared: a frame
//!   that does not match is a read error, never a card.
//! - Wiegand 26 and 34 on two GPIO lines (D0, D1) through the GPIO
//!   character device (uAPI v2 edge events): a falling edge on D0 is a 0,
//!   on D1 a 1; a frame ends after 25 ms of quiet. Both parity bits are
//!   checked (the first even over the first half, the last odd over the
//!   second).
//! - USB keyboard-wedge readers through evdev, grabbed so their keystrokes
//!   never reach a console: digits, then Enter.
//! - Lines of digits on stdin, for development.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::badge::CardNumber;

/// What a reader saw.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// A card.
    Card(CardNumber),
    /// A frame that is not a card, and why.
    Error(String),
}

/// Which reader, from the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ReaderConfig {
    /// Lines of digits on standard input (development).
    Stdin,
    /// An RDM6300 on a serial port.
    Serial {
        /// The port, e.g. `/dev/ttyAMA0` or `/dev/ttyUSB0`.
        path: PathBuf,
    },
    /// A keyboard-wedge reader.
    Evdev {
        /// Its event device, e.g. `/dev/input/by-id/usb-…-event-kbd`.
        path: PathBuf,
    },
    /// A Wiegand reader on two GPIO lines.
    Wiegand {
        /// The GPIO chip, e.g. `/dev/gpiochip0`.
        chip: PathBuf,
        /// The D0 line's offset.
        d0: u32,
        /// The D1 line's offset.
        d1: u32,
    },
}

// ---------------------------------------------------------------- RDM6300

const STX: u8 = 0x02;
const ETX: u8 = 0x03;

/// The RDM6300 framing, fed byte by byte.
#[derive(Debug, Default)]
pub struct Rdm6300 {
    frame: Option<Vec<u8>>,
}

impl Rdm6300 {
    /// One byte from the port; a card or an error when a frame ends.
    pub fn byte(&mut self, b: u8) -> Option<Seen> {
        match (b, &mut self.frame) {
            (STX, _) => {
                let broken = self.frame.replace(Vec::with_capacity(12)).is_some();
                broken.then(|| Seen::Error("a frame started inside another".into()))
            }
            (ETX, Some(_)) => {
                let frame = self.frame.take().unwrap_or_default();
                Some(Self::decode(&frame))
            }
            (_, Some(frame)) => {
                frame.push(b);
                if frame.len() > 12 {
                    self.frame = None;
                    return Some(Seen::Error("a frame longer than 12 digits".into()));
                }
                None
            }
            // Noise between frames.
            (_, None) => None,
        }
    }

    fn decode(frame: &[u8]) -> Seen {
        if frame.len() != 12 {
            return Seen::Error(format!("a frame of {} digits, not 12", frame.len()));
        }
        let mut bytes = [0u8; 6];
        for (i, pair) in frame.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).unwrap_or("");
            match u8::from_str_radix(text, 16) {
                Ok(v) if text.bytes().all(|c| c.is_ascii_hexdigit()) => bytes[i] = v,
                _ => return Seen::Error("a frame with a digit that is not hex".into()),
            }
        }
        let sum = bytes[..5].iter().fold(0, |a, b| a ^ b);
        if sum != bytes[5] {
            return Seen::Error(format!(
                "checksum {:02X} does not match the card's {sum:02X}",
                bytes[5]
            ));
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        Seen::Card(CardNumber::from_value(u64::from(id)))
    }

    /// Makes the frame a reader sends for `version` and `id` (tests, the
    /// benchmark's fake reader).
    pub fn frame(version: u8, id: u32) -> Vec<u8> {
        let b = id.to_be_bytes();
        let sum = version ^ b[0] ^ b[1] ^ b[2] ^ b[3];
        let mut out = vec![STX];
        out.extend(format!("{version:02X}{id:08X}{sum:02X}").bytes());
        out.push(ETX);
        out
    }
}

// ---------------------------------------------------------------- Wiegand

/// The quiet that ends a Wiegand frame.
pub const WIEGAND_GAP_NS: u64 = 25_000_000;

/// Wiegand framing over edge events.
#[derive(Debug, Default)]
pub struct Wiegand {
    bits: Vec<bool>,
    last_ns: Option<u64>,
}

impl Wiegand {
    /// A pulse: `one` is a D1 pulse, at `ns` on the line's clock. A gap
    /// before it ends the frame before (returned).
    pub fn pulse(&mut self, one: bool, ns: u64) -> Option<Seen> {
        let ended = match self.last_ns {
            Some(last) if ns.saturating_sub(last) >= WIEGAND_GAP_NS => self.end(),
            _ => None,
        };
        self.bits.push(one);
        self.last_ns = Some(ns);
        if self.bits.len() > 64 {
            self.bits.clear();
            return Some(Seen::Error("more than 64 Wiegand bits".into()));
        }
        ended
    }

    /// Time passed without pulses: the frame ends if the gap is long
    /// enough.
    pub fn quiet(&mut self, ns: u64) -> Option<Seen> {
        match self.last_ns {
            Some(last) if ns.saturating_sub(last) >= WIEGAND_GAP_NS => self.end(),
            _ => None,
        }
    }

    fn end(&mut self) -> Option<Seen> {
        self.last_ns = None;
        let bits = std::mem::take(&mut self.bits);
        if bits.is_empty() {
            return None;
        }
        Some(Self::decode(&bits))
    }

    fn decode(bits: &[bool]) -> Seen {
        let n = bits.len();
        if n != 26 && n != 34 {
            return Seen::Error(format!("{n} Wiegand bits, not 26 or 34"));
        }
        let data = &bits[1..n - 1];
        let half = data.len() / 2;
        let ones = |b: &[bool]| b.iter().filter(|x| **x).count();
        let even_ok = (ones(&data[..half]) + usize::from(bits[0])) % 2 == 0;
        let odd_ok = (ones(&data[half..]) + usize::from(bits[n - 1])) % 2 == 1;
        if !even_ok || !odd_ok {
            return Seen::Error(format!("a Wiegand {n} frame with bad parity"));
        }
        let value = data.iter().fold(0u64, |v, b| (v << 1) | u64::from(*b));
        Seen::Card(CardNumber::from_value(value))
    }

    /// The bits a reader sends for `value` in an `n`-bit frame (26 or 34),
    /// parity included.
    pub fn frame(n: usize, value: u64) -> Vec<bool> {
        let data: Vec<bool> = (0..n - 2).rev().map(|i| (value >> i) & 1 == 1).collect();
        let half = data.len() / 2;
        let ones = |b: &[bool]| b.iter().filter(|x| **x).count();
        let mut bits = vec![ones(&data[..half]) % 2 == 1];
        bits.extend(&data);
        bits.push(ones(&data[half..]) % 2 == 0);
        bits
    }
}

// ---------------------------------------------------------------- keyboard

/// Linux key codes a keyboard-wedge reader types.
const KEY_ENTER: u16 = 28;
const KEY_KPENTER: u16 = 96;

fn digit_of(code: u16) -> Option<u8> {
    match code {
        // KEY_1 … KEY_9, KEY_0
        2..=10 => Some(b'1' + (code - 2) as u8),
        11 => Some(b'0'),
        // KEY_KP7 KEY_KP8 KEY_KP9 _ KEY_KP4 KEY_KP5 KEY_KP6 _ KEY_KP1 KEY_KP2 KEY_KP3 KEY_KP0
        71 => Some(b'7'),
        72 => Some(b'8'),
        73 => Some(b'9'),
        75 => Some(b'4'),
        76 => Some(b'5'),
        77 => Some(b'6'),
        79 => Some(b'1'),
        80 => Some(b'2'),
        81 => Some(b'3'),
        82 => Some(b'0'),
        _ => None,
    }
}

/// Key presses of a keyboard-wedge reader: digits, then Enter.
#[derive(Debug, Default)]
pub struct Keys {
    digits: Vec<u8>,
    garbled: bool,
}

impl Keys {
    /// A key press (`code`, a Linux key code; releases and repeats are
    /// not fed).
    pub fn press(&mut self, code: u16) -> Option<Seen> {
        if code == KEY_ENTER || code == KEY_KPENTER {
            let digits = std::mem::take(&mut self.digits);
            let garbled = std::mem::take(&mut self.garbled);
            if digits.is_empty() && !garbled {
                return None;
            }
            let text = String::from_utf8(digits).unwrap_or_default();
            return Some(match CardNumber::from_digits(&text) {
                Some(card) if !garbled => Seen::Card(card),
                _ => Seen::Error("the reader typed something that is not a card number".into()),
            });
        }
        match digit_of(code) {
            Some(d) => self.digits.push(d),
            // Shift and the like are harmless; anything else garbles.
            None if matches!(code, 42 | 54) => {}
            None => self.garbled = true,
        }
        None
    }
}

// ---------------------------------------------------------------- backends

/// Why a reader could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// Opening or reading the device.
    #[error("badge reader {path}: {source}")]
    Device {
        /// The device.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The GPIO lines.
    #[error("Wiegand lines {d0} and {d1} on {chip}: {source}")]
    Gpio {
        /// The chip.
        chip: PathBuf,
        /// D0.
        d0: u32,
        /// D1.
        d1: u32,
        /// What failed.
        source: gpiocdev::Error,
    },
}

fn device(path: &Path) -> impl FnOnce(std::io::Error) -> ReaderError + '_ {
    move |source| ReaderError::Device {
        path: path.to_path_buf(),
        source,
    }
}

/// Starts the configured reader on a thread of its own; what it sees goes
/// to `out`. The device is opened (and grabbed, configured) before this
/// returns, so a missing device is an error here, not later.
pub fn start(config: &ReaderConfig, out: Sender<Seen>) -> Result<(), ReaderError> {
    match config {
        ReaderConfig::Stdin => {
            spawn("reader-stdin", move || stdin(out));
            Ok(())
        }
        ReaderConfig::Serial { path } => {
            let port = open_serial(path)?;
            let path = path.clone();
            spawn("reader-serial", move || serial(port, &path, out));
            Ok(())
        }
        ReaderConfig::Evdev { path } => {
            let mut dev = evdev::Device::open(path).map_err(device(path))?;
            dev.grab().map_err(device(path))?;
            let path = path.clone();
            spawn("reader-evdev", move || keyboard(dev, &path, out));
            Ok(())
        }
        ReaderConfig::Wiegand { chip, d0, d1 } => {
            let gpio = |source| ReaderError::Gpio {
                chip: chip.clone(),
                d0: *d0,
                d1: *d1,
                source,
            };
            let request = gpiocdev::Request::builder()
                .on_chip(chip)
                .with_consumer("doorbot-wiegand")
                .with_lines(&[*d0, *d1])
                .as_input()
                .with_edge_detection(gpiocdev::line::EdgeDetection::FallingEdge)
                .with_event_clock(gpiocdev::line::EventClock::Monotonic)
                .request()
                .map_err(gpio)?;
            let (d0, d1) = (*d0, *d1);
            spawn("reader-wiegand", move || wiegand(request, d1, d0, out));
            Ok(())
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("a thread starts");
}

fn stdin(out: Sender<Seen>) {
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let seen = match CardNumber::from_digits(text) {
            Some(card) => Seen::Card(card),
            None => Seen::Error("a line that is not a card number".into()),
        };
        if out.send(seen).is_err() {
            return;
        }
    }
    // Standard input closed: the channel's end tells the controller.
}

/// Opens a serial port raw at 9600 baud, 8N1.
pub fn open_serial(path: &Path) -> Result<std::fs::File, ReaderError> {
    use rustix::termios::{self, OptionalActions};
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path)
        .map_err(device(path))?;
    let mut t = termios::tcgetattr(&port).map_err(|e| device(path)(e.into()))?;
    t.make_raw();
    t.set_speed(9600).map_err(|e| device(path)(e.into()))?;
    t.control_modes |= termios::ControlModes::CLOCAL | termios::ControlModes::CREAD;
    t.control_modes
        .remove(termios::ControlModes::CSTOPB | termios::ControlModes::PARENB);
    termios::tcsetattr(&port, OptionalActions::Now, &t).map_err(|e| device(path)(e.into()))?;
    Ok(port)
}

use std::os::unix::fs::OpenOptionsExt as _;

fn serial(mut port: std::fs::File, path: &Path, out: Sender<Seen>) {
    let mut decoder = Rdm6300::default();
    let mut buf = [0u8; 64];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) => {
                // A pty whose other end is not open yet, or closed.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc_eio()) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                eprintln!("doorbot: badge reader {}: {e}", path.display());
                return;
            }
        };
        for b in &buf[..n] {
            if let Some(seen) = decoder.byte(*b)
                && out.send(seen).is_err()
            {
                return;
            }
        }
    }
}

/// EIO: what reading a pty's slave gives while no master holds it.
fn libc_eio() -> i32 {
    rustix::io::Errno::IO.raw_os_error()
}

fn keyboard(mut dev: evdev::Device, path: &Path, out: Sender<Seen>) {
    let mut keys = Keys::default();
    loop {
        let events = match dev.fetch_events() {
            Ok(events) => events,
            Err(e) => {
                eprintln!("doorbot: badge reader {}: {e}", path.display());
                return;
            }
        };
        for e in events {
            // Key presses only (value 1; 0 is a release, 2 a repeat).
            if e.event_type() == evdev::EventType::KEY
                && e.value() == 1
                && let Some(seen) = keys.press(e.code())
                && out.send(seen).is_err()
            {
                return;
            }
        }
    }
}

fn wiegand(request: gpiocdev::Request, d1: u32, d0: u32, out: Sender<Seen>) {
    let mut decoder = Wiegand::default();
    loop {
        match request.wait_edge_event(Duration::from_millis(30)) {
            Ok(true) => match request.read_edge_event() {
                Ok(e) => {
                    debug_assert!(e.offset == d0 || e.offset == d1);
                    if let Some(seen) = decoder.pulse(e.offset == d1, e.timestamp_ns)
                        && out.send(seen).is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("doorbot: Wiegand reader: {e}");
                    return;
                }
            },
            Ok(false) => {
                // The monotonic clock the events use, near enough: the
                // gap is 25 ms and the wait 30.
                let now = monotonic_ns();
                if let Some(seen) = decoder.quiet(now)
                    && out.send(seen).is_err()
                {
                    return;
                }
            }
            Err(e) => {
                eprintln!("doorbot: Wiegand reader: {e}");
                return;
            }
        }
    }
}

/// CLOCK_MONOTONIC, the clock the edge events carry.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(value: u64) -> Seen {
        Seen::Card(CardNumber::from_value(value))
    }

    #[test]
    fn rdm6300_frames_are_checked_and_noise_between_them_is_skipped() {
        let mut d = Rdm6300::default();
        let mut feed =
            |bytes: &[u8]| -> Vec<Seen> { bytes.iter().filter_map(|b| d.byte(*b)).collect() };
        let good = Rdm6300::frame(0x1A, 0x00BC_614E);
        assert_eq!(feed(&good), vec![card(12_345_678)]);
        // Noise before a frame, and the same frame twice (a held card).
        let mut noisy = b"\xff\x00zz".to_vec();
        noisy.extend(&good);
        noisy.extend(&good);
        assert_eq!(feed(&noisy), vec![card(12_345_678), card(12_345_678)]);
        // A flipped checksum digit: refused, not a card.
        let mut bad = good.clone();
        bad[11] = if bad[11] == b'0' { b'1' } else { b'0' };
        match &feed(&bad)[..] {
            [Seen::Error(why)] => assert!(why.contains("checksum"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A flipped id digit: the checksum catches it.
        let mut bad = good.clone();
        bad[5] = if bad[5] == b'9' { b'8' } else { b'9' };
        assert!(matches!(&feed(&bad)[..], [Seen::Error(_)]));
        // Short, long, not hex, interrupted.
        assert!(matches!(&feed(b"\x021234\x03")[..], [Seen::Error(_)]));
        assert!(matches!(
            &feed(b"\x021234567890ABCD\x03")[..],
            [Seen::Error(_)]
        ));
        assert!(matches!(
            &feed(b"\x02G234567890AB\x03")[..],
            [Seen::Error(_)]
        ));
        let mut cut = good[..6].to_vec();
        cut.extend(&good);
        assert_eq!(
            feed(&cut).len(),
            2,
            "the cut frame is an error and the next frame still reads"
        );
    }

    fn pulses(d: &mut Wiegand, bits: &[bool], start_ns: u64) -> Vec<Seen> {
        let mut out: Vec<Seen> = bits
            .iter()
            .enumerate()
            .filter_map(|(i, b)| d.pulse(*b, start_ns + i as u64 * 2_000_000))
            .collect();
        out.extend(d.quiet(start_ns + 200_000_000));
        out
    }

    #[test]
    fn wiegand_26_and_34_decode_and_bad_parity_is_refused() {
        let mut d = Wiegand::default();
        let w26 = Wiegand::frame(26, (37 << 16) | 4_242);
        assert_eq!(w26.len(), 26);
        assert_eq!(pulses(&mut d, &w26, 0), vec![card((37 << 16) | 4_242)]);
        let w34 = Wiegand::frame(34, 0xDEAD_BEEF);
        assert_eq!(pulses(&mut d, &w34, 1_000_000_000), vec![card(0xDEAD_BEEF)]);
        // A flipped data bit in each half, and each parity bit.
        for i in [0, 3, 20, 25] {
            let mut bad = w26.clone();
            bad[i] = !bad[i];
            match &pulses(&mut d, &bad, 10_000_000_000 * (i as u64 + 1))[..] {
                [Seen::Error(why)] => assert!(why.contains("parity"), "{why}"),
                other => panic!("bit {i}: {other:?}"),
            }
        }
        // Wrong lengths.
        assert!(matches!(
            &pulses(&mut d, &w26[..20], 900_000_000_000)[..],
            [Seen::Error(_)]
        ));
        // Two frames back to back: the gap splits them.
        let mut two = Vec::new();
        for (i, b) in w26.iter().enumerate() {
            two.extend(d.pulse(*b, 1_000_000_000_000 + i as u64 * 2_000_000));
        }
        for (i, b) in w34.iter().enumerate() {
            two.extend(d.pulse(*b, 1_000_100_000_000 + i as u64 * 2_000_000));
        }
        two.extend(d.quiet(1_000_300_000_000));
        assert_eq!(two, vec![card((37 << 16) | 4_242), card(0xDEAD_BEEF)]);
    }

    #[test]
    fn a_keyboard_wedge_types_digits_then_enter() {
        let mut k = Keys::default();
        let mut typed =
            |codes: &[u16]| -> Vec<Seen> { codes.iter().filter_map(|c| k.press(*c)).collect() };
        // 0012345678 on the top row, then Enter.
        assert_eq!(
            typed(&[11, 11, 2, 3, 4, 5, 6, 7, 8, 9, KEY_ENTER]),
            vec![card(12_345_678)]
        );
        // The keypad, and Shift along the way.
        assert_eq!(
            typed(&[82, 42, 79, 80, 81, 75, 76, 77, 71, 72, 73, KEY_KPENTER]),
            vec![Seen::Card(
                CardNumber::from_digits("0123456789").expect("digits")
            )]
        );
        // A letter garbles the read; Enter alone is nothing.
        assert!(matches!(
            &typed(&[2, 30, 3, KEY_ENTER])[..],
            [Seen::Error(_)]
        ));
        assert!(typed(&[KEY_ENTER]).is_empty());
    }

    #[test]
    fn the_serial_backend_reads_real_frames_over_a_pty_and_refuses_a_bad_checksum() {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        use std::io::Write as _;
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("a pty");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let slave = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = PathBuf::from(slave.to_string_lossy().into_owned());
        let (tx, rx) = crossbeam_channel::unbounded();
        start(
            &ReaderConfig::Serial {
                path: slave.clone(),
            },
            tx,
        )
        .expect("the port opens at 9600 raw");
        // The port is raw at 9600 baud, as the RDM6300 needs.
        let port = std::fs::File::open(&slave).expect("open");
        let t = rustix::termios::tcgetattr(&port).expect("tcgetattr");
        assert_eq!(t.output_speed(), 9600);
        assert!(
            !t.local_modes.contains(rustix::termios::LocalModes::ICANON),
            "raw"
        );
        let mut master = std::fs::File::from(master);
        let mut bad = Rdm6300::frame(0x1A, 42);
        bad[11] ^= 1;
        for frame in [Rdm6300::frame(0x1A, 0x00BC_614E), bad, Rdm6300::frame(0, 7)] {
            master.write_all(&frame).expect("write");
        }
        let got: Vec<Seen> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a read"))
            .collect();
        assert_eq!(got[0], card(12_345_678));
        assert!(
            matches!(&got[1], Seen::Error(why) if why.contains("checksum")),
            "{:?}",
            got[1]
        );
        assert_eq!(got[2], card(7));
        let missing = start(
            &ReaderConfig::Serial {
                path: "/dev/no-such-tty".into(),
            },
            crossbeam_channel::unbounded().0,
        );
        let err = missing.expect_err("no such port").to_string();
        assert!(err.contains("/dev/no-such-tty"), "{err}");
    }

    #[test]
    fn evdev_and_gpio_readers_name_a_missing_device() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let err = start(
            &ReaderConfig::Evdev {
                path: "/dev/input/no-such-event".into(),
            },
            tx.clone(),
        )
        .expect_err("no device")
        .to_string();
        assert!(err.contains("no-such-event"), "{err}");
        let err = start(
            &ReaderConfig::Wiegand {
                chip: "/dev/no-such-gpiochip".into(),
                d0: 1,
                d1: 2,
            },
            tx,
        )
        .expect_err("no chip")
        .to_string();
        assert!(err.contains("no-such-gpiochip"), "{err}");
        if Path::new("/sys/kernel/config/gpio-sim").exists() || Path::new("/dev/uinput").exists() {
            eprintln!("gpio-sim or uinput exists here, but no hardware test is written for it yet");
        } else {
            eprintln!(
                "skipped: no gpio-sim and no uinput on this kernel: the evdev and GPIO backends are tested on their decoding only"
            );
        }
    }
}

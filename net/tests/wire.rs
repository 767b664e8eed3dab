//! The wire format, data-driven: each `tests/wire/*.case` holds bytes (hex
//! lines after `> `) and, after `---`, what decoding them gives: one line
//! per frame, or the error. Frames that decode are encoded again and must
//! give the same bytes. `UPDATE_EXPECT=1 cargo test -p utter-net --test
//! wire` rewrites the expectations (then review the diff).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use utter_net::wire::{Decoder, MAX_FRAME};

fn run(bytes: &[u8]) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut decoder = Decoder::new(MAX_FRAME);
    decoder.feed(bytes);
    let mut lines = Vec::new();
    let mut frames = Vec::new();
    loop {
        match decoder.frame() {
            Ok(Some(m)) => {
                frames.push(m.encode());
                lines.push(format!("{m:?}"));
            }
            Ok(None) => {
                if let Err(e) = decoder.finish() {
                    lines.push(format!("error: {e}"));
                }
                break;
            }
            Err(e) => {
                lines.push(format!("error: {e}"));
                break;
            }
        }
    }
    (lines, frames)
}

#[test]
fn every_case_decodes_as_written_beside_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "the cases are there: {cases:?}");
    let mut failures = Vec::new();
    for path in &cases {
        let text = std::fs::read_to_string(path).unwrap();
        let (head, expected) = text.split_once("---\n").unwrap();
        let hex: String = head.lines().filter_map(|l| l.strip_prefix("> ")).collect();
        let bytes = hex::decode(hex.trim()).unwrap();
        let (lines, frames) = run(&bytes);
        let got = lines.join("\n") + "\n";
        if !lines.iter().any(|l| l.starts_with("error")) {
            assert_eq!(
                frames.concat(),
                bytes,
                "{}: encoding what was decoded gives other bytes",
                path.display()
            );
        }
        if got != expected {
            if update {
                std::fs::write(path, format!("{head}---\n{got}")).unwrap();
            } else {
                failures.push(format!(
                    "{}:\n  expected: {expected:?}\n  got:      {got:?}",
                    path.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_frame_arriving_byte_by_byte_decodes_the_same() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire/heads_are.case"),
    )
    .unwrap();
    let hex: String = text.lines().filter_map(|l| l.strip_prefix("> ")).collect();
    let bytes = hex::decode(hex).unwrap();
    let mut decoder = Decoder::new(MAX_FRAME);
    let mut got = None;
    for (i, b) in bytes.iter().enumerate() {
        assert!(decoder.wanted() >= 1);
        decoder.feed(&[*b]);
        if let Some(m) = decoder.frame().unwrap() {
            assert_eq!(i, bytes.len() - 1, "complete only at the last byte");
            got = Some(m);
        }
    }
    assert_eq!(got.unwrap().encode(), bytes);
    decoder.finish().unwrap();
}

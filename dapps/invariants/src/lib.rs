//! `invariants`: the rules that hold across the makerspace dapps, checked
//! over every proposed state by the executor (it is a test dapp).
//!
//! - Each dapp's own rules: membership (every badge belongs to exactly one
//!   member), certifications, doors (every logged event names a defined
//!   door), accounting (no balance below zero, the books balance).
//! - Across dapps: every balance, paid-until and certification belongs to
//!   a member.
//!
//! A missing dapp (not installed on this chain) has an empty state and
//! passes. Depends on the SDK and the four dapps' libraries.

use std::path::Path;

use utter_dapp_sdk::{CHAIN_DIR, Error, State};
use utter_doors::Rules;
use utter_membership::{member, member_path};

/// Checks the dapps' states under `/chain` (or `$UTTER_CHAIN`).
pub fn check_chain() -> Result<(), Error> {
    let root = std::env::var_os("UTTER_CHAIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| CHAIN_DIR.into());
    check(&root)
}

/// Checks the dapps' states under `root` (one directory per dapp).
pub fn check(root: &Path) -> Result<(), Error> {
    let mut r = Rules::at(root);
    let within = |dapp: &str, e: Error| Error::from_message(format!("{dapp}: {e}"));
    utter_membership::test(&mut r.members).map_err(|e| within("membership", e))?;
    utter_certifications::test(&mut r.certs).map_err(|e| within("certifications", e))?;
    utter_doors::test(&mut r.doors).map_err(|e| within("doors", e))?;
    utter_accounting::test(&mut r.accounts).map_err(|e| within("accounting", e))?;
    for (key, _) in utter_accounting::balances(&mut r.accounts)? {
        if member(&mut r.members, &key)?.is_none() {
            return Err(Error::from_message(format!(
                "accounting: {key} holds credits but is not a member"
            )));
        }
    }
    let is_member = |members: &mut State, id: &str| -> Result<bool, Error> {
        Ok(members.get(&member_path(id))?.is_some())
    };
    for id in r.accounts.list("dues")? {
        if !is_member(&mut r.members, &id)? {
            return Err(Error::from_message(format!(
                "accounting: dues/{id} names no member"
            )));
        }
    }
    for id in r.certs.list("certs")? {
        if !is_member(&mut r.members, &id)? {
            return Err(Error::from_message(format!(
                "certifications: certs/{id} names no member"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI001key";
    const ID: &str = "AAAAC3NzaC1lZDI1NTE5AAAAI001key";

    fn good(root: &Path) {
        write(
            root,
            &format!("membership/members/{ID}.json"),
            &format!(
                r#"{{"key":"{KEY}","name":"Ada","roles":["admin"],"status":"active","badges":[]}}"#
            ),
        );
        write(
            root,
            &format!("accounting/balances/{ID}.json"),
            &format!(r#"{{"key":"{KEY}","balance":7}}"#),
        );
        write(root, "accounting/totals.json", r#"{"issued":7,"dues":0}"#);
        write(
            root,
            "doors/doors/front.json",
            r#"{"name":"front","roles":[],"certs":[],"schedule":null,"controllers":[]}"#,
        );
        write(
            root,
            "doors/log/front/2026-11-23.jsonl",
            r#"{"time":1,"badge":"x","member":null,"granted":false,"reason":"unknown badge","controller":"k"}"#,
        );
    }

    #[test]
    fn an_empty_chain_and_a_sound_one_pass() {
        let dir = tempfile::tempdir().expect("tmp");
        check(dir.path()).expect("nothing installed");
        good(dir.path());
        check(dir.path()).expect("sound");
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases: [(&str, &str, &str); 5] = [
            (
                "accounting/totals.json",
                r#"{"issued":9,"dues":0}"#,
                "do not balance",
            ),
            (
                "doors/log/back/2026-11-23.jsonl",
                "{}",
                "door that is not defined",
            ),
            ("membership/badges/abc", "nobody\n", "names no member"),
            ("accounting/dues/Zm9v", "5\n", "dues/Zm9v names no member"),
            (
                "certifications/certs/Zm9v/saw.json",
                r#"{"tool":"saw","member":"ssh-ed25519 Zm9v","by":"x","since":1,"expires":null}"#,
                "certs/Zm9v names no member",
            ),
        ];
        for (path, text, want) in cases {
            let dir = tempfile::tempdir().expect("tmp");
            good(dir.path());
            write(dir.path(), path, text);
            let err = check(dir.path()).expect_err(path);
            assert!(
                err.to_string().contains(want),
                "{path}: {err} (expected {want})"
            );
        }
        let dir = tempfile::tempdir().expect("tmp");
        good(dir.path());
        write(
            dir.path(),
            &format!("accounting/balances/{ID}.json"),
            &format!(r#"{{"key":"{KEY}","balance":-7}}"#),
        );
        let err = check(dir.path()).expect_err("negative");
        assert!(err.to_string().contains("non-negative"), "{err}");
    }
}

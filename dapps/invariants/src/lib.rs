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

/// Checks the dapps' states under `/chain` (or `$UTTER_CHAIN`), the rules
/// over what the block changed (every rule when utter did not say).
pub fn check_chain() -> Result<(), Error> {
    let root = std::env::var_os("UTTER_CHAIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| CHAIN_DIR.into());
    check(&root, utter_dapp_sdk::changed()?.as_deref())
}

/// Checks the dapps' states under `root` (one directory per dapp): every
/// rule that reads a dapp in `changed` (`<dapp>/…` lines), or every rule
/// when `changed` is `None`. A rule over dapps the block left alone held
/// at the parent block, which was checked, and holds still; so a block
/// that changes only leases costs no scan of the members or the books.
pub fn check(root: &Path, changed: Option<&[String]>) -> Result<(), Error> {
    let touched = |dapps: &[&str]| {
        changed.is_none_or(|c| {
            c.iter().any(|p| {
                dapps
                    .iter()
                    .any(|d| p.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
            })
        })
    };
    let mut r = Rules::at(root);
    let within = |dapp: &str, e: Error| Error::from_message(format!("{dapp}: {e}"));
    if touched(&["membership"]) {
        utter_membership::test(&mut r.members).map_err(|e| within("membership", e))?;
    }
    if touched(&["certifications"]) {
        utter_certifications::test(&mut r.certs).map_err(|e| within("certifications", e))?;
    }
    if touched(&["doors"]) {
        utter_doors::test(&mut r.doors).map_err(|e| within("doors", e))?;
    }
    if touched(&["accounting"]) {
        utter_accounting::test(&mut r.accounts).map_err(|e| within("accounting", e))?;
    }
    if touched(&["accounting", "membership"]) {
        accounts_are_members(&mut r)?;
    }
    if touched(&["certifications", "membership"]) {
        for id in r.certs.list("certs")? {
            if !is_member(&mut r.members, &id)? {
                return Err(Error::from_message(format!(
                    "certifications: certs/{id} names no member"
                )));
            }
        }
    }
    Ok(())
}

fn is_member(members: &mut State, id: &str) -> Result<bool, Error> {
    Ok(members.get(&member_path(id))?.is_some())
}

/// Every balance and every dues record belongs to a member.
fn accounts_are_members(r: &mut Rules) -> Result<(), Error> {
    for (key, _) in utter_accounting::balances(&mut r.accounts)? {
        if member(&mut r.members, &key)?.is_none() {
            return Err(Error::from_message(format!(
                "accounting: {key} holds credits but is not a member"
            )));
        }
    }
    for id in r.accounts.list("dues")? {
        if !is_member(&mut r.members, &id)? {
            return Err(Error::from_message(format!(
                "accounting: dues/{id} names no member"
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
        check(dir.path(), None).expect("nothing installed");
        good(dir.path());
        check(dir.path(), None).expect("sound");
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
            let err = check(dir.path(), None).expect_err(path);
            assert!(
                err.to_string().contains(want),
                "{path}: {err} (expected {want})"
            );
            // A block that changed the broken file is caught by the same
            // rule; one that changed only another dapp checks nothing of it.
            let err = check(dir.path(), Some(&[path.to_string()])).expect_err(path);
            assert!(err.to_string().contains(want), "{path}: {err}");
            check(dir.path(), Some(&["leases/leases/l.json".to_string()]))
                .expect("a block of leases alone does not read the others");
        }
        let dir = tempfile::tempdir().expect("tmp");
        good(dir.path());
        write(
            dir.path(),
            &format!("accounting/balances/{ID}.json"),
            &format!(r#"{{"key":"{KEY}","balance":-7}}"#),
        );
        let err = check(dir.path(), None).expect_err("negative");
        assert!(err.to_string().contains("non-negative"), "{err}");
    }
}

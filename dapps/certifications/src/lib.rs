//! `certifications`: trainers certify members for a tool or an area, with
//! an optional expiry.
//!
//! State: `certs/<member id>/<tool>.json` =
//! `{"tool","member","by","since","expires"}` (`expires` is Unix seconds or
//! null; member ids as in `utter-membership`).
//!
//! Actions (the signer must be an active member with role `trainer` or
//! `admin`, read from the membership dapp's state):
//! - `certify {member, tool, expires?}`: the member must be active.
//! - `revoke {member, tool}`
//!
//! Depends on `utter-dapp-sdk` and `utter-membership` (to read members).

use utter_dapp_sdk::{Error, Outcome, State, Tx, Value, json};
use utter_membership::{ADMIN, key_id, member};

/// The role that certifies.
pub const TRAINER: &str = "trainer";

/// A certification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// The tool or area.
    pub tool: String,
    /// Who certified.
    pub by: String,
    /// When (block time).
    pub since: u64,
    /// Valid until (exclusive), if it expires.
    pub expires: Option<u64>,
}

impl Cert {
    /// Valid at `time`.
    pub fn valid_at(&self, time: u64) -> bool {
        self.expires.is_none_or(|e| time < e)
    }
}

/// A tool name: 1-64 of `a-z 0-9 - _`.
pub fn is_tool(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn path(member_id: &str, tool: &str) -> String {
    format!("certs/{member_id}/{tool}.json")
}

/// The certification of `member` (a key) for `tool`, valid or not.
pub fn cert(state: &mut State, member: &str, tool: &str) -> Result<Option<Cert>, Error> {
    let (Some(id), true) = (key_id(member), is_tool(tool)) else {
        return Ok(None);
    };
    let p = path(&id, tool);
    let Some(v) = state.get_json(&p)? else {
        return Ok(None);
    };
    let parse = || -> Option<Cert> {
        Some(Cert {
            tool: v.get("tool")?.as_str()?.to_string(),
            by: v.get("by")?.as_str()?.to_string(),
            since: v.get("since")?.as_u64()?,
            expires: match v.get("expires")? {
                Value::Null => None,
                e => Some(e.as_u64()?),
            },
        })
    };
    parse()
        .map(Some)
        .ok_or_else(|| Error::from_message(format!("{p} is not a certification")))
}

/// Applies one transaction at block time `now`; `members` is the
/// membership dapp's state.
pub fn apply(now: u64, tx: &Tx, state: &mut State, members: &mut State) -> Result<Outcome, Error> {
    let signer = member(members, &tx.signer)?;
    if !signer
        .as_ref()
        .is_some_and(|m| m.active && (m.has_role(TRAINER) || m.has_role(ADMIN)))
    {
        return Ok(Outcome::Rejected(format!(
            "only an active trainer or admin may {}; the signer is not one",
            tx.action
        )));
    }
    let args = (|| {
        let key = tx.str_arg("member")?;
        let tool = tx.str_arg("tool")?;
        if !is_tool(tool) {
            return Err(format!(
                "args.tool {tool:?} must be 1-64 of a-z, 0-9, - and _"
            ));
        }
        let id = key_id(key).ok_or_else(|| format!("args.member {key:?} is not a key"))?;
        Ok((key.to_string(), tool.to_string(), id))
    })();
    let (key, tool, id) = match args {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::Rejected(e)),
    };
    match tx.action.as_str() {
        "certify" => {
            match member(members, &key)? {
                Some(m) if m.active => {}
                Some(_) => return Ok(Outcome::Rejected(format!("{key} is suspended"))),
                None => return Ok(Outcome::Rejected(format!("{key} is not a member"))),
            }
            let expires = match tx.args.get("expires") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(e) if e > now => Some(e),
                    _ => {
                        return Ok(Outcome::Rejected(
                            "args.expires must be a time (Unix seconds) after the block's".into(),
                        ));
                    }
                },
            };
            state.put_json(
                &path(&id, &tool),
                &json!({"tool": tool, "member": key, "by": tx.signer, "since": now, "expires": expires}),
            )?;
            Ok(Outcome::Accepted(None))
        }
        "revoke" => {
            if cert(state, &key, &tool)?.is_none() {
                return Ok(Outcome::Rejected(format!(
                    "{key} holds no {tool} certification"
                )));
            }
            state.remove(&path(&id, &tool))?;
            Ok(Outcome::Accepted(None))
        }
        other => Ok(Outcome::Rejected(format!(
            "unknown action {other:?}: expected certify or revoke"
        ))),
    }
}

/// The `test` entry: every certification file parses.
pub fn test(state: &mut State) -> Result<(), Error> {
    for id in state.list("certs")? {
        for file in state.list(&format!("certs/{id}"))? {
            let p = format!("certs/{id}/{file}");
            let v = state
                .get_json(&p)?
                .ok_or_else(|| Error::from_message(format!("{p} vanished")))?;
            let member = v.get("member").and_then(Value::as_str).unwrap_or("");
            let tool = file.trim_end_matches(".json");
            if key_id(member).as_deref() != Some(id.as_str())
                || cert(state, member, tool)?.is_none()
            {
                return Err(Error::from_message(format!(
                    "{p} is not a certification of {id}"
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

    fn run(
        certs: &mut State,
        members: &mut State,
        signer: &str,
        action: &str,
        args: Value,
    ) -> String {
        let out = apply(100, &tx(signer, action, args), certs, members).expect("apply");
        certs.flush().expect("flush");
        reason(out)
    }

    fn reason(out: Outcome) -> String {
        match out {
            Outcome::Rejected(r) => r,
            Outcome::Accepted(_) => "accepted".into(),
        }
    }

    #[test]
    fn trainers_certify_and_revoke_active_members_only() {
        let (d1, d2) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let mut members = State::at(d1.path());
        let mut certs = State::at(d2.path());
        let (admin, trainer, m, s) = (key(1), key(2), key(3), key(4));
        let salt = "00112233445566778899aabbccddeeff";
        for t in [
            tx(
                &admin,
                "add-member",
                json!({"key": admin, "name": "Ada", "salt": salt}),
            ),
            tx(
                &admin,
                "add-member",
                json!({"key": trainer, "name": "Tia", "roles": ["trainer"]}),
            ),
            tx(&admin, "add-member", json!({"key": m, "name": "Max"})),
            tx(&admin, "add-member", json!({"key": s, "name": "Sue"})),
            tx(&admin, "suspend", json!({"key": s})),
        ] {
            let out = utter_membership::apply(&t, &mut members).expect("apply");
            assert!(matches!(out, Outcome::Accepted(_)), "{out:?}");
            members.flush().expect("flush");
        }
        for (signer, args, expected) in [
            (
                &m,
                json!({"member": m, "tool": "saw"}),
                "only an active trainer",
            ),
            (&trainer, json!({"member": s, "tool": "saw"}), "suspended"),
            (
                &trainer,
                json!({"member": key(9), "tool": "saw"}),
                "not a member",
            ),
            (&trainer, json!({"member": m, "tool": "Saw!"}), "args.tool"),
            (
                &trainer,
                json!({"member": m, "tool": "saw", "expires": 50}),
                "after the block",
            ),
            (
                &trainer,
                json!({"member": m, "tool": "saw", "expires": 200}),
                "accepted",
            ),
        ] {
            let got = run(&mut certs, &mut members, signer, "certify", args);
            assert!(got.contains(expected), "{got} (expected {expected})");
        }
        let c = cert(&mut certs, &m, "saw")
            .expect("read")
            .expect("certified");
        assert!(c.valid_at(199) && !c.valid_at(200));
        assert_eq!(c.by, trainer);
        test(&mut certs).expect("invariants hold");
        assert_eq!(
            run(
                &mut certs,
                &mut members,
                &admin,
                "revoke",
                json!({"member": m, "tool": "saw"})
            ),
            "accepted"
        );
        assert!(
            run(
                &mut certs,
                &mut members,
                &admin,
                "revoke",
                json!({"member": m, "tool": "saw"})
            )
            .contains("holds no saw")
        );
        assert!(cert(&mut certs, &m, "saw").expect("read").is_none());
    }
}

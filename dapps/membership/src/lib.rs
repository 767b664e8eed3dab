//! `membership`: a makerspace's members, keyed by their public key.
//!
//! State (all JSON, keys sorted):
//! ```text
//! salt                    the chain's badge salt (hex), set by the first admin
//! members/<id>.json       {"key","name","roles":[…],"status":"active"|"suspended","badges":[…]}
//! badges/<hash>           the id of the member the badge belongs to
//! ```
//! `<id>` is the key's base64 with `/` → `_` and `+` → `-` ([`key_id`]).
//! A badge is only ever a hash, `BLAKE3(salt ‖ card number)` in hex,
//! computed by whoever reads the card; the number never reaches the chain.
//!
//! Actions (only active admins change others):
//! - `add-member {key, name, roles?}`: the first member must be the signer,
//!   an `admin`, and bring the salt: `{…, "salt": "<hex>"}`.
//! - `update-member {key, name?, roles?}`
//! - `suspend {key}`, `reinstate {key}`
//! - `add-badge {key, badge}`, `remove-badge {key, badge}`
//! - `set-admin {key, admin: bool}`
//!
//! No action may leave the space without an active admin. `test` checks
//! that every badge belongs to exactly one member and every member file is
//! well-formed.
//!
//! Depends on `utter-dapp-sdk` only; other dapps and the doorbot use this
//! crate to read members.

use utter_dapp_sdk::{Error, Outcome, State, Tx, Value, json};

/// The role that may change other members.
pub const ADMIN: &str = "admin";

/// A member record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `ssh-ed25519 AAAA…`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Roles, sorted: `admin`, `trainer`, `treasurer`, or the space's own.
    pub roles: Vec<String>,
    /// Active, or suspended (doors stay shut).
    pub active: bool,
    /// Badge hashes, sorted.
    pub badges: Vec<String>,
}

impl Member {
    /// Has this role.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// An active admin.
    pub fn is_admin(&self) -> bool {
        self.active && self.has_role(ADMIN)
    }

    fn to_json(&self) -> Value {
        json!({
            "key": self.key,
            "name": self.name,
            "roles": self.roles,
            "status": if self.active { "active" } else { "suspended" },
            "badges": self.badges,
        })
    }

    /// Parses a `members/<id>.json` value.
    pub fn from_json(v: &Value) -> Option<Self> {
        let strs = |name: &str| -> Option<Vec<String>> {
            v.get(name)?
                .as_array()?
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        Some(Self {
            key: v.get("key")?.as_str()?.to_string(),
            name: v.get("name")?.as_str()?.to_string(),
            roles: strs("roles")?,
            active: match v.get("status")?.as_str()? {
                "active" => true,
                "suspended" => false,
                _ => return None,
            },
            badges: strs("badges")?,
        })
    }
}

/// The state file name of a key: its base64 made file-safe; `None` when
/// `key` is not `ssh-ed25519 <base64>`.
pub fn key_id(key: &str) -> Option<String> {
    let b64 = key.strip_prefix("ssh-ed25519 ")?;
    let ok = !b64.is_empty()
        && b64.len() <= 128
        && b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    ok.then(|| {
        b64.trim_end_matches('=')
            .replace('/', "_")
            .replace('+', "-")
    })
}

/// Path of a member's record.
pub fn member_path(id: &str) -> String {
    format!("members/{id}.json")
}

/// Reads the member with `key` from a membership state (`None`: no such
/// member). A damaged record is an error.
pub fn member(state: &mut State, key: &str) -> Result<Option<Member>, Error> {
    let Some(id) = key_id(key) else {
        return Ok(None);
    };
    read_member(state, &id)
}

fn read_member(state: &mut State, id: &str) -> Result<Option<Member>, Error> {
    let path = member_path(id);
    match state.get_json(&path)? {
        None => Ok(None),
        Some(v) => Member::from_json(&v)
            .map(Some)
            .ok_or_else(|| Error::from_message(format!("{path} is not a member record"))),
    }
}

/// The member a badge hash belongs to.
pub fn member_by_badge(state: &mut State, badge: &str) -> Result<Option<Member>, Error> {
    if !is_badge(badge) {
        return Ok(None);
    }
    let Some(id) = state.get(&format!("badges/{badge}"))? else {
        return Ok(None);
    };
    let id = String::from_utf8_lossy(id).trim().to_string();
    read_member(state, &id)
}

/// A badge hash: 64 lowercase hex digits.
pub fn is_badge(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err("args.name must be 1-100 printable characters".into());
    }
    Ok(())
}

fn check_roles(roles: &[String]) -> Result<Vec<String>, String> {
    let mut roles = roles.to_vec();
    for r in &roles {
        let ok = !r.is_empty()
            && r.len() <= 32
            && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        if !ok {
            return Err(format!("role {r:?} must be 1-32 of a-z and -"));
        }
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

fn active_admins(state: &mut State) -> Result<usize, Error> {
    let mut n = 0;
    for name in state.list("members")? {
        let id = name.trim_end_matches(".json").to_string();
        if read_member(state, &id)?.is_some_and(|m| m.is_admin()) {
            n += 1;
        }
    }
    Ok(n)
}

fn save(state: &mut State, m: &Member) -> Result<(), Error> {
    let id = key_id(&m.key).expect("stored members have valid keys");
    state.put_json(&member_path(&id), &m.to_json())
}

/// Applies one transaction.
pub fn apply(tx: &Tx, state: &mut State) -> Result<Outcome, Error> {
    match run(tx, state)? {
        Ok(out) => Ok(Outcome::Accepted(out)),
        Err(reason) => Ok(Outcome::Rejected(reason)),
    }
}

type Verdict = Result<Option<Value>, String>;

fn run(tx: &Tx, state: &mut State) -> Result<Verdict, Error> {
    let key = match tx.str_arg("key") {
        Ok(k) => k.to_string(),
        Err(e) => return Ok(Err(e)),
    };
    if key_id(&key).is_none() {
        return Ok(Err(format!(
            "args.key {key:?} is not an ssh-ed25519 public key"
        )));
    }
    let signer = member(state, &tx.signer)?;
    let target = member(state, &key)?;
    let first = state.list("members")?.is_empty();
    if tx.action == "add-member" && first {
        return bootstrap(tx, state, &key);
    }
    if !signer.as_ref().is_some_and(Member::is_admin) {
        return Ok(Err(format!(
            "only an active admin may {}; the signer is not one",
            tx.action
        )));
    }
    let admins = active_admins(state)?;
    let result = match (tx.action.as_str(), target) {
        ("add-member", Some(_)) => Err(format!("{key} is already a member")),
        ("add-member", None) => match new_member(tx, &key) {
            Err(e) => Err(e),
            Ok(m) => {
                save(state, &m)?;
                Ok(Some(json!({"member": m.name})))
            }
        },
        (_, None) => Err(format!("{key} is not a member")),
        (action, Some(mut m)) => {
            let was_admin = m.is_admin();
            let change = match action {
                "update-member" => (|| {
                    if tx.args.get("name").is_some() {
                        let name = tx.str_arg("name")?;
                        check_name(name)?;
                        m.name = name.to_string();
                    }
                    if tx.args.get("roles").is_some() {
                        m.roles = check_roles(&tx.strs_arg("roles")?)?;
                    }
                    Ok(())
                })(),
                "suspend" => {
                    m.active = false;
                    Ok(())
                }
                "reinstate" => {
                    m.active = true;
                    Ok(())
                }
                "set-admin" => match tx.args.get("admin").and_then(Value::as_bool) {
                    Some(true) => {
                        m.roles.push(ADMIN.into());
                        m.roles = check_roles(&m.roles).expect("roles were valid");
                        Ok(())
                    }
                    Some(false) => {
                        m.roles.retain(|r| r != ADMIN);
                        Ok(())
                    }
                    None => Err("args.admin must be true or false".into()),
                },
                "add-badge" | "remove-badge" => badge(tx, state, &mut m, action == "add-badge")?,
                other => Err(format!(
                    "unknown action {other:?}: expected add-member, update-member, suspend, \
                     reinstate, add-badge, remove-badge or set-admin"
                )),
            };
            match change {
                Err(e) => Err(e),
                Ok(()) if was_admin && !m.is_admin() && admins <= 1 => {
                    Err("that would leave no active admin: make another member admin first".into())
                }
                Ok(()) => {
                    save(state, &m)?;
                    Ok(None)
                }
            }
        }
    };
    Ok(result)
}

fn new_member(tx: &Tx, key: &str) -> Result<Member, String> {
    let name = tx.str_arg("name")?;
    check_name(name)?;
    Ok(Member {
        key: key.to_string(),
        name: name.to_string(),
        roles: check_roles(&tx.strs_arg("roles")?)?,
        active: true,
        badges: Vec::new(),
    })
}

fn badge(
    tx: &Tx,
    state: &mut State,
    m: &mut Member,
    add: bool,
) -> Result<Result<(), String>, Error> {
    let badge = match tx.str_arg("badge") {
        Ok(b) if is_badge(b) => b.to_string(),
        Ok(_) => {
            return Ok(Err(
                "args.badge must be a badge hash (64 hex digits), never a card number".into(),
            ));
        }
        Err(e) => return Ok(Err(e)),
    };
    let path = format!("badges/{badge}");
    let id = key_id(&m.key).expect("stored members have valid keys");
    let owner = state
        .get(&path)?
        .map(|b| String::from_utf8_lossy(b).trim().to_string());
    if add {
        match owner {
            Some(o) if o == id => return Ok(Err("the member already has this badge".into())),
            Some(_) => return Ok(Err("this badge belongs to another member".into())),
            None => {}
        }
        state.put(&path, format!("{id}\n"))?;
        m.badges.push(badge);
        m.badges.sort();
    } else {
        if owner.as_deref() != Some(id.as_str()) {
            return Ok(Err("the member has no such badge".into()));
        }
        state.remove(&path)?;
        m.badges.retain(|b| *b != badge);
    }
    Ok(Ok(()))
}

fn bootstrap(tx: &Tx, state: &mut State, key: &str) -> Result<Verdict, Error> {
    if key != tx.signer {
        return Ok(Err(
            "the first member must add themselves (args.key = the signer's key)".into(),
        ));
    }
    let checked = (|| {
        let name = tx.str_arg("name")?;
        check_name(name)?;
        let mut roles = check_roles(&tx.strs_arg("roles")?)?;
        if !roles.iter().any(|r| r == ADMIN) {
            roles.push(ADMIN.into());
            roles.sort();
        }
        let salt = tx.str_arg("salt")?;
        let ok = (32..=128).contains(&salt.len())
            && salt.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err("args.salt must be 32-128 lowercase hex digits (random, made once)".into());
        }
        Ok((name.to_string(), roles, salt.to_string()))
    })();
    let (name, roles, salt) = match checked {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    state.put("salt", format!("{salt}\n"))?;
    let m = Member {
        key: key.to_string(),
        name: name.clone(),
        roles,
        active: true,
        badges: Vec::new(),
    };
    save(state, &m)?;
    Ok(Ok(Some(json!({"member": name, "first_admin": true}))))
}

/// The `test` entry: every badge belongs to exactly one member, and the
/// member lists it; every record parses.
pub fn test(state: &mut State) -> Result<(), Error> {
    let mut seen = std::collections::BTreeMap::new();
    for name in state.list("members")? {
        let id = name.trim_end_matches(".json").to_string();
        let m = read_member(state, &id)?
            .ok_or_else(|| Error::from_message(format!("{name} vanished")))?;
        if key_id(&m.key).as_deref() != Some(id.as_str()) {
            return Err(Error::from_message(format!(
                "members/{name} holds the key of another member"
            )));
        }
        for b in &m.badges {
            if let Some(other) = seen.insert(b.clone(), id.clone()) {
                return Err(Error::from_message(format!(
                    "badge {b} belongs to both {other} and {id}"
                )));
            }
        }
    }
    for b in state.list("badges")? {
        match seen.get(&b) {
            None => {
                return Err(Error::from_message(format!(
                    "badges/{b} names no member that lists it"
                )));
            }
            Some(id) => {
                let owner = state.get(&format!("badges/{b}"))?.unwrap_or_default();
                if String::from_utf8_lossy(owner).trim() != id {
                    return Err(Error::from_message(format!(
                        "badges/{b} names another member than the one that lists it"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test key: `ssh-ed25519` and a made-up base64 body.
    pub fn key(n: u8) -> String {
        format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{n:03}/+key")
    }

    fn tx(signer: &str, action: &str, args: Value) -> Tx {
        Tx::new(signer, action, args)
    }

    fn ok(state: &mut State, t: Tx) {
        let out = apply(&t, state).expect("apply");
        assert!(
            matches!(out, Outcome::Accepted(_)),
            "{} refused: {out:?}",
            t.action
        );
        state.flush().expect("flush");
    }

    fn refused(state: &mut State, t: Tx) -> String {
        match apply(&t, state).expect("apply") {
            Outcome::Rejected(r) => r,
            out => panic!("{} accepted: {out:?}", t.action),
        }
    }

    const SALT: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn the_first_admin_bootstraps_then_only_admins_change_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = State::at(dir.path());
        let (a, b, c) = (key(1), key(2), key(3));
        let r = refused(
            &mut s,
            tx(
                &a,
                "add-member",
                json!({"key": b, "name": "Bo", "salt": SALT}),
            ),
        );
        assert!(r.contains("must add themselves"), "{r}");
        let r = refused(
            &mut s,
            tx(&a, "add-member", json!({"key": a, "name": "Ada"})),
        );
        assert!(r.contains("salt"), "{r}");
        ok(
            &mut s,
            tx(
                &a,
                "add-member",
                json!({"key": a, "name": "Ada", "salt": SALT}),
            ),
        );
        assert!(
            member(&mut s, &a)
                .expect("read")
                .expect("member")
                .is_admin()
        );
        ok(
            &mut s,
            tx(
                &a,
                "add-member",
                json!({"key": b, "name": "Bo", "roles": ["trainer"]}),
            ),
        );
        let r = refused(
            &mut s,
            tx(&b, "add-member", json!({"key": c, "name": "Cy"})),
        );
        assert!(r.contains("only an active admin"), "{r}");
        let r = refused(
            &mut s,
            tx(&a, "add-member", json!({"key": b, "name": "Bo"})),
        );
        assert!(r.contains("already a member"), "{r}");
        let r = refused(
            &mut s,
            tx(&a, "add-member", json!({"key": "not a key", "name": "X"})),
        );
        assert!(r.contains("not an ssh-ed25519 public key"), "{r}");
        let r = refused(
            &mut s,
            tx(
                &a,
                "add-member",
                json!({"key": c, "name": "Cy", "roles": ["Bad Role"]}),
            ),
        );
        assert!(r.contains("role"), "{r}");
        let r = refused(&mut s, tx(&a, "fly", json!({"key": b})));
        assert!(r.contains("unknown action"), "{r}");

        // The last admin cannot remove or suspend themselves.
        let r = refused(&mut s, tx(&a, "suspend", json!({"key": a})));
        assert!(r.contains("no active admin"), "{r}");
        let r = refused(
            &mut s,
            tx(&a, "set-admin", json!({"key": a, "admin": false})),
        );
        assert!(r.contains("no active admin"), "{r}");
        ok(
            &mut s,
            tx(&a, "set-admin", json!({"key": b, "admin": true})),
        );
        ok(&mut s, tx(&b, "suspend", json!({"key": a})));
        let r = refused(&mut s, tx(&a, "reinstate", json!({"key": a})));
        assert!(
            r.contains("only an active admin"),
            "a suspended admin is no admin: {r}"
        );
        ok(&mut s, tx(&b, "reinstate", json!({"key": a})));
        ok(
            &mut s,
            tx(&a, "update-member", json!({"key": b, "name": "Bo B."})),
        );
        assert_eq!(
            member(&mut s, &b).expect("read").expect("member").name,
            "Bo B."
        );
        test(&mut s).expect("invariants hold");
    }

    #[test]
    fn badges_are_hashes_and_belong_to_one_member() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = State::at(dir.path());
        let (a, b) = (key(1), key(2));
        ok(
            &mut s,
            tx(
                &a,
                "add-member",
                json!({"key": a, "name": "Ada", "salt": SALT}),
            ),
        );
        ok(
            &mut s,
            tx(&a, "add-member", json!({"key": b, "name": "Bo"})),
        );
        let h = "ab".repeat(32);
        let r = refused(
            &mut s,
            tx(&a, "add-badge", json!({"key": b, "badge": "0004123456"})),
        );
        assert!(r.contains("never a card number"), "{r}");
        ok(&mut s, tx(&a, "add-badge", json!({"key": b, "badge": h})));
        let r = refused(&mut s, tx(&a, "add-badge", json!({"key": a, "badge": h})));
        assert!(r.contains("belongs to another member"), "{r}");
        assert_eq!(
            member_by_badge(&mut s, &h)
                .expect("read")
                .expect("member")
                .key,
            b
        );
        test(&mut s).expect("invariants hold");
        let r = refused(
            &mut s,
            tx(&a, "remove-badge", json!({"key": a, "badge": h})),
        );
        assert!(r.contains("no such badge"), "{r}");
        ok(
            &mut s,
            tx(&a, "remove-badge", json!({"key": b, "badge": h})),
        );
        assert!(member_by_badge(&mut s, &h).expect("read").is_none());
        // A damaged index is what `test` is for.
        s.put(&format!("badges/{}", "cd".repeat(32)), "nobody\n")
            .expect("put");
        s.flush().expect("flush");
        assert!(test(&mut s).is_err());
    }

    #[test]
    fn key_ids_are_file_names() {
        assert_eq!(key_id("ssh-ed25519 AB/c+d=="), Some("AB_c-d".into()));
        for bad in [
            "ssh-rsa AAAA",
            "ssh-ed25519 ",
            "ssh-ed25519 a b",
            "ssh-ed25519 ../x",
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }
}

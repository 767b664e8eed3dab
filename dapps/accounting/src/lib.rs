//! `accounting`: credit balances kept as double-entry postings.
//!
//! Credits are whole numbers (commodity `CR`). Every accepted transaction
//! is one journal entry whose postings sum to zero over these accounts:
//! ```text
//! members:<id>      a member's credits (never below zero)
//! escrow:<name>     credits held for a lease or a job (never below zero)
//! equity:issued     where minted credits come from (its balance is minus
//!                   everything minted)
//! income:dues       where dues go
//! ```
//! State (JSON, keys sorted):
//! ```text
//! balances/<id>.json           {"key","balance"}: a member's credits
//! escrows/<name>.json          {"name","payer","payee","amount","opened"
//!                               [,"lease":true,"paid_in","paid"]}
//! totals.json                  {"issued","dues"}: credits minted, dues paid
//! config.json                  {"dues_per_month"}
//! dues/<id>                    Unix time the member's dues are paid until
//! journal/<YYYY-MM-DD>.jsonl   one entry per line, in block order:
//!                              {"height","index","time","action","signer","memo",
//!                               "postings":[{"account","amount"}…]}
//! ```
//! `<id>` is the member's key id as in `utter-membership`.
//!
//! Actions (signers and recipients must be members, read from the
//! membership dapp's state as of the parent block):
//! - `mint {to, amount, memo?}` (an active `treasurer`)
//! - `transfer {to, amount, memo?}` from the signer's balance
//! - `escrow-open {name, payee, amount}` from the signer's balance
//! - `escrow-release {name, pay}`: `pay` to the payee, the rest back to
//!   the payer; signed by the payer or a treasurer (not a lease's escrow)
//! - `escrow-open {name, payee, amount, lease: true}` opens a **lease
//!   escrow**: the credits a compute lease drains. Only the `leases`
//!   dapp's record decides where they go; no one may release them:
//!   - `escrow-add {name, amount}`: any member adds credits to a lease
//!     escrow (a top-up; the `leases` dapp counts it from then on)
//!   - `escrow-settle {names}`: anyone moves, per lease escrow, what the
//!     `leases` dapp's `settle/<name>.json` (as of the parent block) says
//!     the provider has earned and was not paid yet; when that record says
//!     the lease is closed, the rest goes back to the payer and the escrow
//!     closes. A lease escrow no lease claimed is returned to the payer
//!     [`UNCLAIMED`] seconds after it opened.
//! - `set-dues {per_month}` (a treasurer)
//! - `pay-dues {months, member?}`: `months` × the dues from the signer's
//!   balance; extends the member's (default: the signer's) paid-until by
//!   30 days a month from the later of now and the current paid-until
//!
//! No balance ever goes below zero: a transaction that would overdraw is
//! rejected, and [`test`] checks every balance and that the accounts
//! balance (members + escrows + dues = issued).
//!
//! Depends on `utter-dapp-sdk` and `utter-membership`; reads the `leases`
//! dapp's settle records by their documented path (no crate dependency,
//! since `utter-leases` reads these escrows).

use utter_dapp_sdk::{Context, Error, Outcome, State, Tx, Value, date, json};
use utter_membership::{Member, key_id, member};

/// The role that mints credits and sets the dues.
pub const TREASURER: &str = "treasurer";
/// The commodity of credits in exported journals.
pub const COMMODITY: &str = "CR";
/// The largest amount one transaction may move (keeps every sum far from
/// overflow and inside what ledger-cli reads).
pub const MAX_AMOUNT: u64 = 1_000_000_000_000;
/// Days a month of dues lasts.
pub const MONTH: u64 = 30 * 86_400;
/// Months of dues one transaction may pay.
pub const MAX_MONTHS: u64 = 24;
/// Seconds after which a lease escrow that no lease claimed goes back to
/// its payer (the `leases` dapp claims one only in its first half).
pub const UNCLAIMED: u64 = 600;
/// Escrows one `escrow-settle` may name.
pub const MAX_SETTLE: usize = 256;

/// `members:<id>`: the account of a member.
pub fn member_account(id: &str) -> String {
    format!("members:{id}")
}

fn balance_path(id: &str) -> String {
    format!("balances/{id}.json")
}

fn escrow_path(name: &str) -> String {
    format!("escrows/{name}.json")
}

/// An escrow name: 1-64 of `a-z 0-9 - _`.
pub fn is_escrow_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The credits of the member with `key` (0 when it has none).
pub fn balance(state: &mut State, key: &str) -> Result<u64, Error> {
    let Some(id) = key_id(key) else {
        return Ok(0);
    };
    balance_of(state, &id)
}

fn balance_of(state: &mut State, id: &str) -> Result<u64, Error> {
    let path = balance_path(id);
    match state.get_json(&path)? {
        None => Ok(0),
        Some(v) => v.get("balance").and_then(Value::as_u64).ok_or_else(|| {
            Error::from_message(format!("{path} has no whole, non-negative balance"))
        }),
    }
}

/// Every member balance: (key, credits), in key-id order.
pub fn balances(state: &mut State) -> Result<Vec<(String, u64)>, Error> {
    let mut out = Vec::new();
    for file in state.list("balances")? {
        let id = file.trim_end_matches(".json").to_string();
        let path = balance_path(&id);
        let v = state
            .get_json(&path)?
            .ok_or_else(|| Error::from_message(format!("{path} vanished")))?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| key_id(k).as_deref() == Some(id.as_str()))
            .ok_or_else(|| Error::from_message(format!("{path} holds another member's key")))?
            .to_string();
        out.push((key, balance_of(state, &id)?));
    }
    Ok(out)
}

/// Unix time the member's dues are paid until (`None`: never paid).
pub fn paid_until(state: &mut State, key: &str) -> Result<Option<u64>, Error> {
    let Some(id) = key_id(key) else {
        return Ok(None);
    };
    let path = format!("dues/{id}");
    match state.get(&path)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8_lossy(bytes)
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::from_message(format!("{path} is not a Unix time"))),
    }
}

/// An open escrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escrow {
    /// Its name.
    pub name: String,
    /// Who paid in (gets the rest back).
    pub payer: String,
    /// Who is paid on release.
    pub payee: String,
    /// Credits held.
    pub amount: u64,
    /// Block time it was opened.
    pub opened: u64,
    /// A lease escrow: the `leases` dapp's record decides where it goes.
    pub lease: bool,
    /// Credits ever paid in (the opening amount and every `escrow-add`).
    pub paid_in: u64,
    /// Credits paid out to the payee so far.
    pub paid: u64,
}

impl Escrow {
    fn to_json(&self) -> Value {
        if self.lease {
            json!({"name": self.name, "payer": self.payer, "payee": self.payee,
                   "amount": self.amount, "opened": self.opened, "lease": true,
                   "paid_in": self.paid_in, "paid": self.paid})
        } else {
            json!({"name": self.name, "payer": self.payer, "payee": self.payee,
                   "amount": self.amount, "opened": self.opened})
        }
    }

    fn from_json(v: &Value) -> Option<Self> {
        let amount = v.get("amount")?.as_u64()?;
        let lease = match v.get("lease") {
            None => false,
            Some(b) => b.as_bool()?,
        };
        let (paid_in, paid) = if lease {
            (v.get("paid_in")?.as_u64()?, v.get("paid")?.as_u64()?)
        } else {
            (amount, 0)
        };
        if lease && paid_in.checked_sub(paid) != Some(amount) {
            return None;
        }
        Some(Self {
            name: v.get("name")?.as_str()?.to_string(),
            payer: v.get("payer")?.as_str()?.to_string(),
            payee: v.get("payee")?.as_str()?.to_string(),
            amount,
            opened: v.get("opened")?.as_u64()?,
            lease,
            paid_in,
            paid,
        })
    }
}

/// What the `leases` dapp's `settle/<name>.json` says of a lease escrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettle {
    /// Credits the provider has earned in all.
    pub earned: u64,
    /// The lease is over: what was not earned goes back to the payer.
    pub closed: bool,
}

/// Where the `leases` dapp keeps the settle record of lease `name` (in
/// its state): `settle/xx/<name>.json`, fanned out.
pub fn lease_settle_path(name: &str) -> String {
    utter_dapp_sdk::fan_out("settle", name, ".json")
}

/// The `leases` dapp's settle record for escrow `name` (`leases` is that
/// dapp's state as of the parent block).
pub fn lease_settle(leases: &mut State, name: &str) -> Result<Option<LeaseSettle>, Error> {
    if !is_escrow_name(name) {
        return Ok(None);
    }
    let path = lease_settle_path(name);
    let Some(v) = leases.get_json(&path)? else {
        return Ok(None);
    };
    let earned = v.get("earned").and_then(Value::as_u64);
    let closed = v.get("closed").and_then(Value::as_bool);
    match (earned, closed) {
        (Some(earned), Some(closed)) => Ok(Some(LeaseSettle { earned, closed })),
        _ => Err(Error::from_message(format!(
            "the leases dapp's {path} is not a settle record"
        ))),
    }
}

/// The open escrow `name`.
pub fn escrow(state: &mut State, name: &str) -> Result<Option<Escrow>, Error> {
    if !is_escrow_name(name) {
        return Ok(None);
    }
    let path = escrow_path(name);
    match state.get_json(&path)? {
        None => Ok(None),
        Some(v) => Escrow::from_json(&v)
            .map(Some)
            .ok_or_else(|| Error::from_message(format!("{path} is not an escrow"))),
    }
}

/// Credits minted, and dues paid, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Every credit ever minted.
    pub issued: u64,
    /// Every credit paid as dues.
    pub dues: u64,
}

/// The totals.
pub fn totals(state: &mut State) -> Result<Totals, Error> {
    match state.get_json("totals.json")? {
        None => Ok(Totals::default()),
        Some(v) => {
            let field = |name| v.get(name).and_then(Value::as_u64);
            match (field("issued"), field("dues")) {
                (Some(issued), Some(dues)) => Ok(Totals { issued, dues }),
                _ => Err(Error::from_message("totals.json is damaged")),
            }
        }
    }
}

/// The dues per month (`None`: not set yet).
pub fn dues_per_month(state: &mut State) -> Result<Option<u64>, Error> {
    Ok(state
        .get_json("config.json")?
        .and_then(|v| v.get("dues_per_month").and_then(Value::as_u64)))
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The block's height.
    pub height: u64,
    /// The transaction's position in the block.
    pub index: usize,
    /// The block's time.
    pub time: u64,
    /// The action.
    pub action: String,
    /// Who signed it.
    pub signer: String,
    /// A note from the signer, or a description.
    pub memo: String,
    /// (account, amount): they sum to zero.
    pub postings: Vec<(String, i64)>,
}

impl Entry {
    fn to_json(&self) -> Value {
        let postings: Vec<Value> = self
            .postings
            .iter()
            .map(|(a, n)| json!({"account": a, "amount": n}))
            .collect();
        json!({"height": self.height, "index": self.index, "time": self.time,
               "action": self.action, "signer": self.signer, "memo": self.memo,
               "postings": postings})
    }

    /// Parses a journal line's value.
    pub fn from_json(v: &Value) -> Option<Self> {
        let postings = v
            .get("postings")?
            .as_array()?
            .iter()
            .map(|p| {
                Some((
                    p.get("account")?.as_str()?.to_string(),
                    p.get("amount")?.as_i64()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            height: v.get("height")?.as_u64()?,
            index: usize::try_from(v.get("index")?.as_u64()?).ok()?,
            time: v.get("time")?.as_u64()?,
            action: v.get("action")?.as_str()?.to_string(),
            signer: v.get("signer")?.as_str()?.to_string(),
            memo: v.get("memo")?.as_str()?.to_string(),
            postings,
        })
    }
}

/// Every journal entry, oldest first.
pub fn journal(state: &mut State) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::new();
    for file in state.list("journal")? {
        let path = format!("journal/{file}");
        let text = String::from_utf8_lossy(state.get(&path)?.unwrap_or_default()).into_owned();
        for (n, line) in text.lines().enumerate() {
            let entry = serde_json::from_str::<Value>(line)
                .ok()
                .as_ref()
                .and_then(Entry::from_json)
                .ok_or_else(|| {
                    Error::from_message(format!("{path} line {} is not a journal entry", n + 1))
                })?;
            out.push(entry);
        }
    }
    Ok(out)
}

type Verdict = Result<Option<Value>, String>;

/// The other dapps' states accounting reads, as of the parent block.
pub struct Chain<'a> {
    /// The membership dapp's.
    pub members: &'a mut State,
    /// The leases dapp's (its settle records).
    pub leases: &'a mut State,
}

/// Applies one transaction.
pub fn apply(
    ctx: &Context,
    tx: &Tx,
    state: &mut State,
    chain: Chain<'_>,
) -> Result<Outcome, Error> {
    Ok(match run(ctx, tx, state, chain)? {
        Ok(out) => Outcome::Accepted(out),
        Err(reason) => Outcome::Rejected(reason),
    })
}

fn amount_arg(tx: &Tx, name: &str, zero_ok: bool) -> Result<u64, String> {
    let n = tx.u64_arg(name)?;
    if n > MAX_AMOUNT || (n == 0 && !zero_ok) {
        return Err(format!(
            "args.{name} must be between {} and {MAX_AMOUNT} credits",
            u64::from(!zero_ok)
        ));
    }
    Ok(n)
}

fn memo_arg(tx: &Tx) -> Result<Option<String>, String> {
    match tx.args.get("memo") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 200 && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err("args.memo must be at most 200 printable characters".into()),
    }
}

/// The active member with `key`, or why not.
fn active_member(
    members: &mut State,
    key: &str,
    who: &str,
) -> Result<Result<Member, String>, Error> {
    Ok(match member(members, key)? {
        Some(m) if m.active => Ok(m),
        Some(m) => Err(format!("{who} {} is suspended", m.name)),
        None => Err(format!("{who} {key} is not a member")),
    })
}

struct Books<'a> {
    state: &'a mut State,
}

impl Books<'_> {
    fn id(key: &str) -> String {
        key_id(key).expect("members have valid keys")
    }

    fn credit(&mut self, key: &str, n: u64) -> Result<(), Error> {
        let id = Self::id(key);
        let balance = balance_of(self.state, &id)?
            .checked_add(n)
            .ok_or_else(|| Error::from_message(format!("{id}'s balance overflows")))?;
        self.state
            .put_json(&balance_path(&id), &json!({"key": key, "balance": balance}))
    }

    /// Takes `n` from `key`'s balance, or says why it cannot.
    fn debit(&mut self, key: &str, name: &str, n: u64) -> Result<Result<(), String>, Error> {
        let id = Self::id(key);
        let balance = balance_of(self.state, &id)?;
        if balance < n {
            return Ok(Err(format!(
                "{name} has {balance} {COMMODITY}, which is less than {n} {COMMODITY}"
            )));
        }
        self.state.put_json(
            &balance_path(&id),
            &json!({"key": key, "balance": balance - n}),
        )?;
        Ok(Ok(()))
    }

    fn totals(&mut self, change: impl FnOnce(&mut Totals)) -> Result<(), Error> {
        let mut t = totals(self.state)?;
        change(&mut t);
        self.state
            .put_json("totals.json", &json!({"issued": t.issued, "dues": t.dues}))
    }

    fn record(
        &mut self,
        ctx: &Context,
        tx: &Tx,
        memo: String,
        postings: Vec<(String, i64)>,
    ) -> Result<(), Error> {
        debug_assert_eq!(postings.iter().map(|(_, n)| n).sum::<i64>(), 0);
        let entry = Entry {
            height: ctx.height,
            index: tx.index,
            time: ctx.time,
            action: tx.action.clone(),
            signer: tx.signer.clone(),
            memo,
            postings,
        };
        let path = format!("journal/{}.jsonl", date(ctx.time));
        let mut line = entry.to_json().to_string().into_bytes();
        line.push(b'\n');
        self.state.append(&path, &line)
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).expect("amounts are at most MAX_AMOUNT")
}

/// `Ok(v)` gives `v`; `Err(reason)` rejects the transaction with it.
macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        }
    };
}

/// One transaction being applied: its context, the books, the members'
/// state and who signed it.
struct Act<'a> {
    ctx: &'a Context,
    tx: &'a Tx,
    books: Books<'a>,
    members: &'a mut State,
    leases: &'a mut State,
    signer: Member,
    treasurer: bool,
}

fn run(ctx: &Context, tx: &Tx, state: &mut State, chain: Chain<'_>) -> Result<Verdict, Error> {
    let signer = check!(active_member(chain.members, &tx.signer, "the signer")?);
    let mut act = Act {
        ctx,
        tx,
        books: Books { state },
        members: chain.members,
        leases: chain.leases,
        treasurer: signer.has_role(TREASURER),
        signer,
    };
    match tx.action.as_str() {
        "mint" => act.mint(),
        "transfer" => act.transfer(),
        "escrow-open" => act.escrow_open(),
        "escrow-release" => act.escrow_release(),
        "escrow-add" => act.escrow_add(),
        "escrow-settle" => act.escrow_settle(),
        "set-dues" => act.set_dues(),
        "pay-dues" => act.pay_dues(),
        other => Ok(Err(format!(
            "unknown action {other:?}: expected mint, transfer, escrow-open, escrow-release, \
             escrow-add, escrow-settle, set-dues or pay-dues"
        ))),
    }
}

impl Act<'_> {
    /// The active member named by argument `arg`.
    fn member_arg(&mut self, arg: &str, who: &str) -> Result<Result<Member, String>, Error> {
        let key = match self.tx.str_arg(arg) {
            Ok(key) => key,
            Err(reason) => return Ok(Err(reason)),
        };
        active_member(self.members, key, who)
    }

    fn record(&mut self, memo: String, postings: Vec<(String, i64)>) -> Result<(), Error> {
        self.books.record(self.ctx, self.tx, memo, postings)
    }

    fn mint(&mut self) -> Result<Verdict, Error> {
        if !self.treasurer {
            return Ok(Err(format!(
                "only a treasurer may mint; {} is not one",
                self.signer.name
            )));
        }
        let to = check!(self.member_arg("to", "the recipient")?);
        let n = check!(amount_arg(self.tx, "amount", false));
        let memo = check!(memo_arg(self.tx)).unwrap_or_else(|| format!("minted for {}", to.name));
        if totals(self.books.state)?.issued.checked_add(n).is_none() {
            return Ok(Err(
                "that would mint more credits than can be counted".into()
            ));
        }
        self.books.credit(&to.key, n)?;
        self.books.totals(|t| t.issued += n)?;
        let postings = vec![
            (member_account(&Books::id(&to.key)), signed(n)),
            ("equity:issued".to_string(), -signed(n)),
        ];
        self.record(memo, postings)?;
        Ok(Ok(Some(
            json!({"balance": balance(self.books.state, &to.key)?}),
        )))
    }

    fn transfer(&mut self) -> Result<Verdict, Error> {
        let to = check!(self.member_arg("to", "the recipient")?);
        let signer = self.signer.clone();
        if to.key == signer.key {
            return Ok(Err("a transfer to yourself changes nothing".into()));
        }
        let n = check!(amount_arg(self.tx, "amount", false));
        let memo = check!(memo_arg(self.tx))
            .unwrap_or_else(|| format!("{} pays {}", signer.name, to.name));
        check!(self.books.debit(&signer.key, &signer.name, n)?);
        self.books.credit(&to.key, n)?;
        let postings = vec![
            (member_account(&Books::id(&to.key)), signed(n)),
            (member_account(&Books::id(&signer.key)), -signed(n)),
        ];
        self.record(memo, postings)?;
        Ok(Ok(Some(
            json!({"balance": balance(self.books.state, &signer.key)?}),
        )))
    }

    fn escrow_open(&mut self) -> Result<Verdict, Error> {
        let name = check!(self.tx.str_arg("name"));
        if !is_escrow_name(name) {
            return Ok(Err("args.name must be 1-64 of a-z 0-9 - _".into()));
        }
        if escrow(self.books.state, name)?.is_some() {
            return Ok(Err(format!("escrow {name} is already open")));
        }
        let payee = check!(self.member_arg("payee", "the payee")?);
        let n = check!(amount_arg(self.tx, "amount", false));
        let lease = match self.tx.args.get("lease") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Ok(Err("args.lease must be true or false".into())),
        };
        let signer = self.signer.clone();
        check!(self.books.debit(&signer.key, &signer.name, n)?);
        let e = Escrow {
            name: name.to_string(),
            payer: signer.key.clone(),
            payee: payee.key.clone(),
            amount: n,
            opened: self.ctx.time,
            lease,
            paid_in: n,
            paid: 0,
        };
        self.books
            .state
            .put_json(&escrow_path(name), &e.to_json())?;
        let postings = vec![
            (format!("escrow:{name}"), signed(n)),
            (member_account(&Books::id(&signer.key)), -signed(n)),
        ];
        let memo = format!("{} holds {n} {COMMODITY} for {}", signer.name, payee.name);
        self.record(memo, postings)?;
        Ok(Ok(None))
    }

    fn escrow_release(&mut self) -> Result<Verdict, Error> {
        let name = check!(self.tx.str_arg("name"));
        let Some(e) = escrow(self.books.state, name)? else {
            return Ok(Err(format!("there is no open escrow {name:?}")));
        };
        if e.lease {
            return Ok(Err(format!(
                "escrow {name} holds a compute lease's credits, which only the lease's \
                 record releases: close the lease (utter lease close {name}) and settle it"
            )));
        }
        if e.payer != self.signer.key && !self.treasurer {
            return Ok(Err(format!(
                "only the payer or a treasurer may release escrow {name}"
            )));
        }
        let pay = check!(amount_arg(self.tx, "pay", true));
        if pay > e.amount {
            return Ok(Err(format!(
                "escrow {name} holds {} {COMMODITY}, less than {pay} {COMMODITY}",
                e.amount
            )));
        }
        let back = e.amount - pay;
        let mut postings = vec![(format!("escrow:{name}"), -signed(e.amount))];
        if pay > 0 {
            self.books.credit(&e.payee, pay)?;
            postings.push((member_account(&Books::id(&e.payee)), signed(pay)));
        }
        if back > 0 {
            self.books.credit(&e.payer, back)?;
            postings.push((member_account(&Books::id(&e.payer)), signed(back)));
        }
        self.books.state.remove(&escrow_path(name))?;
        let memo = format!("escrow {name}: {pay} {COMMODITY} paid, {back} {COMMODITY} returned");
        self.record(memo, postings)?;
        Ok(Ok(None))
    }

    fn escrow_add(&mut self) -> Result<Verdict, Error> {
        let name = check!(self.tx.str_arg("name"));
        let Some(mut e) = escrow(self.books.state, name)? else {
            return Ok(Err(format!("there is no open escrow {name:?}")));
        };
        if !e.lease {
            return Ok(Err(format!(
                "escrow {name} is not a lease's; only a lease escrow takes top-ups"
            )));
        }
        let n = check!(amount_arg(self.tx, "amount", false));
        if e.paid_in + n > MAX_AMOUNT {
            return Ok(Err(format!(
                "escrow {name} would hold more than {MAX_AMOUNT} {COMMODITY}"
            )));
        }
        let signer = self.signer.clone();
        check!(self.books.debit(&signer.key, &signer.name, n)?);
        e.amount += n;
        e.paid_in += n;
        self.books
            .state
            .put_json(&escrow_path(name), &e.to_json())?;
        let postings = vec![
            (format!("escrow:{name}"), signed(n)),
            (member_account(&Books::id(&signer.key)), -signed(n)),
        ];
        let memo = format!("{} tops up lease {name} by {n} {COMMODITY}", signer.name);
        self.record(memo, postings)?;
        Ok(Ok(Some(json!({"amount": e.amount, "paid_in": e.paid_in}))))
    }

    /// Settles each named lease escrow by the leases dapp's record; says
    /// per escrow what it paid and returned.
    fn escrow_settle(&mut self) -> Result<Verdict, Error> {
        let names = check!(self.tx.strs_arg("names"));
        if names.is_empty() || names.len() > MAX_SETTLE {
            return Ok(Err(format!("args.names must list 1-{MAX_SETTLE} escrows")));
        }
        let mut done = Vec::new();
        for name in &names {
            let Some(mut e) = escrow(self.books.state, name)? else {
                done.push(json!({"name": name, "settled": "no open escrow"}));
                continue;
            };
            if !e.lease {
                return Ok(Err(format!(
                    "escrow {name} is not a lease's; release it with escrow-release"
                )));
            }
            let (earned, closed) = match lease_settle(self.leases, name)? {
                Some(s) => (s.earned.min(e.paid_in), s.closed),
                None if self.ctx.time >= e.opened + UNCLAIMED => (0, true),
                None => {
                    done.push(json!({"name": name, "settled": "no lease claimed it yet"}));
                    continue;
                }
            };
            let pay = earned.saturating_sub(e.paid).min(e.amount);
            let back = if closed { e.amount - pay } else { 0 };
            if pay == 0 && !closed {
                done.push(json!({"name": name, "paid": 0}));
                continue;
            }
            let mut postings = vec![(format!("escrow:{name}"), -signed(pay + back))];
            if pay > 0 {
                self.books.credit(&e.payee, pay)?;
                postings.push((member_account(&Books::id(&e.payee)), signed(pay)));
            }
            if back > 0 {
                self.books.credit(&e.payer, back)?;
                postings.push((member_account(&Books::id(&e.payer)), signed(back)));
            }
            e.amount -= pay + back;
            e.paid += pay;
            if closed {
                self.books.state.remove(&escrow_path(name))?;
            } else {
                self.books
                    .state
                    .put_json(&escrow_path(name), &e.to_json())?;
            }
            let memo = if closed {
                format!("lease {name}: {pay} {COMMODITY} earned, {back} {COMMODITY} returned")
            } else {
                format!("lease {name}: {pay} {COMMODITY} earned")
            };
            if pay + back > 0 {
                self.record(memo, postings)?;
            }
            done.push(json!({"name": name, "paid": pay, "returned": back, "closed": closed}));
        }
        Ok(Ok(Some(Value::Array(done))))
    }

    fn set_dues(&mut self) -> Result<Verdict, Error> {
        if !self.treasurer {
            return Ok(Err(format!(
                "only a treasurer may set the dues; {} is not one",
                self.signer.name
            )));
        }
        let n = check!(amount_arg(self.tx, "per_month", false));
        self.books
            .state
            .put_json("config.json", &json!({"dues_per_month": n}))?;
        Ok(Ok(None))
    }

    fn pay_dues(&mut self) -> Result<Verdict, Error> {
        let whom = match self.tx.args.get("member") {
            None | Some(Value::Null) => self.signer.clone(),
            Some(_) => check!(self.member_arg("member", "the member")?),
        };
        let months = check!(self.tx.u64_arg("months"));
        if !(1..=MAX_MONTHS).contains(&months) {
            return Ok(Err(format!("args.months must be 1-{MAX_MONTHS}")));
        }
        let Some(price) = dues_per_month(self.books.state)? else {
            return Ok(Err(
                "the treasurer has not set the dues yet (set-dues)".into()
            ));
        };
        let cost = price * months;
        if cost > MAX_AMOUNT {
            return Ok(Err(format!(
                "{months} months of dues cost more than {MAX_AMOUNT} {COMMODITY}"
            )));
        }
        let signer = self.signer.clone();
        check!(self.books.debit(&signer.key, &signer.name, cost)?);
        let until = paid_until(self.books.state, &whom.key)?
            .unwrap_or(0)
            .max(self.ctx.time)
            + months * MONTH;
        self.books.state.put(
            &format!("dues/{}", Books::id(&whom.key)),
            format!("{until}\n"),
        )?;
        self.books.totals(|t| t.dues += cost)?;
        let postings = vec![
            ("income:dues".to_string(), signed(cost)),
            (member_account(&Books::id(&signer.key)), -signed(cost)),
        ];
        let memo = format!("{months} months of dues for {}", whom.name);
        self.record(memo, postings)?;
        Ok(Ok(Some(json!({"paid_until": until}))))
    }
}

/// The books' invariants: every balance and escrow is a whole,
/// non-negative number of credits, and members + escrows + dues = issued.
pub fn test(state: &mut State) -> Result<(), Error> {
    let mut held: u128 = 0;
    for (_, n) in balances(state)? {
        held += u128::from(n);
    }
    for file in state.list("escrows")? {
        let name = file.trim_end_matches(".json");
        let e = escrow(state, name)?
            .ok_or_else(|| Error::from_message(format!("escrows/{file} is not an open escrow")))?;
        held += u128::from(e.amount);
    }
    let t = totals(state)?;
    if held + u128::from(t.dues) != u128::from(t.issued) {
        return Err(Error::from_message(format!(
            "the books do not balance: members and escrows hold {held} {COMMODITY} and \
             {} {COMMODITY} went to dues, but {} {COMMODITY} were minted",
            t.dues, t.issued
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

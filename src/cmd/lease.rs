//! `utter lease …`: compute for hire. Providers offer container capacity
//! (`offer`, `withdraw`); customers find it (`offers`), pay into a lease
//! (`open`, `top-up`, `close`) and follow it (`status`). Everything is a
//! transaction of the `leases` dapp (and of `accounting` for the credits),
//! signed with the caller's key and sent to the node; reads go through
//! the node's API, so any node of the chain answers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utter_client::Client;
use utter_client::api::TxState;
use utter_formats::Status;
use utter_formats::tx::Request;
use utter_leases::{Event, Lease, Offer, Payer, Provider};
use utter_ledger::MAIN;
use utter_membership::key_id;
use utter_node::Home;
use utter_node::leases::{LeaseAnswer, LeaseOp, run_op};
use utter_node::query::materialize;

use crate::container::{parse_duration, parse_size};

mod exec;
use crate::ui::{Progress, human, utc};
pub use exec::sandbox;

/// `utter lease …`
#[derive(Subcommand)]
pub enum Command {
    /// Offer this node's container capacity (create or change an offer;
    /// open leases keep the terms they opened with)
    Offer(OfferArgs),
    /// Take an offer off the market (its open leases run on)
    Withdraw {
        /// The offer
        name: String,
        #[command(flatten)]
        send: SendArgs,
    },
    /// The market: every offer with its provider's uptime
    Offers(OffersArgs),
    /// Open a lease on an offer: the deposit moves into the lease's escrow
    Open(OpenArgs),
    /// Add credits to a lease (any key may); a halted lease resumes
    TopUp {
        /// The lease
        lease: String,
        /// Credits to add
        amount: u64,
        #[command(flatten)]
        send: SendArgs,
    },
    /// A lease's state, balance now and when it runs out (default: every
    /// lease the key holds)
    Status {
        /// The lease
        lease: Option<String>,
        /// Whose leases [default: the node key]
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// The node's API [default: the node running on this data dir]
        #[arg(long, value_name = "URL", env = "UTTER_NODE")]
        node: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Close a lease: what it did not use goes back to the payer at once
    Close {
        /// The lease
        lease: String,
        #[command(flatten)]
        send: SendArgs,
    },
    /// Run a command in a lease's container, as the key that opened it:
    /// over QUIC to the provider's node, the exit code passed on
    Exec(exec::ExecArgs),
    /// What a lease's program printed (on the provider's node)
    Logs {
        /// The lease
        lease: String,
    },
}

/// Who signs and where it goes.
#[derive(Args)]
pub struct SendArgs {
    /// The signer's OpenSSH ed25519 private key [default: the node key]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The node's API [default: the node running on this data dir]
    #[arg(long, value_name = "URL", env = "UTTER_NODE")]
    node: Option<String>,
    /// How long to wait for each block, seconds
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `utter lease offer`
#[derive(Args)]
pub struct OfferArgs {
    /// The offer's name (a-z 0-9 - _)
    name: String,
    /// CPUs per lease, e.g. 0.5
    #[arg(long, default_value = "0.5")]
    cpu: f64,
    /// Memory per lease, e.g. 256M
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    memory: u64,
    /// Processes per lease
    #[arg(long, default_value_t = 64)]
    pids: u64,
    /// Disk per lease for its /data, e.g. 1G
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    disk: u64,
    /// Credits per minute
    #[arg(long)]
    price: u64,
    /// How long a lease that ran dry stays frozen for a top-up before it
    /// is destroyed, e.g. 1h
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
    /// An image digest leases may run (repeatable) [default: any image]
    #[arg(long = "image", value_name = "DIGEST")]
    images: Vec<String>,
    /// Where the provider is
    #[arg(long, default_value = "")]
    location: String,
    /// Leases at once
    #[arg(long, default_value_t = 4)]
    capacity: u64,
    /// A container port this node forwards to from its own address, e.g.
    /// 8080 for a web app (repeatable, at most 8; `lease status` shows
    /// where each is reached)
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    #[command(flatten)]
    send: SendArgs,
}

/// How `lease offers` sorts.
#[derive(Clone, Copy, ValueEnum)]
pub enum Sort {
    /// Cheapest first
    Price,
    /// Best uptime first
    Uptime,
}

/// `utter lease offers`
#[derive(Args)]
pub struct OffersArgs {
    /// At least this many CPUs
    #[arg(long)]
    cpu: Option<f64>,
    /// At least this much memory, e.g. 512M
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Offers that run this image digest
    #[arg(long, value_name = "DIGEST")]
    image: Option<String>,
    /// At most this many credits a minute
    #[arg(long)]
    max_price: Option<u64>,
    /// Location containing this text
    #[arg(long)]
    location: Option<String>,
    /// Order
    #[arg(long, value_enum, default_value = "price")]
    sort: Sort,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `utter lease open`
#[derive(Args)]
pub struct OpenArgs {
    /// The offer
    offer: String,
    /// The image: a sha256:… digest the provider's node has, a dapp project
    /// directory or an archive (oci:DIR, oci-archive:FILE,
    /// docker-archive:FILE), uploaded to the node when it lacks it
    #[arg(long)]
    image: String,
    /// Credits to pay in
    #[arg(long)]
    deposit: u64,
    /// Turn low (a warning) at this much runway left, e.g. 10m
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    warn: Duration,
    #[command(flatten)]
    send: SendArgs,
}

pub fn run(home: &Home, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Offer(args) => offer(home, args),
        Command::Withdraw { name, send } => {
            let tx = request("leases", "withdraw", json!({ "name": name }));
            let out = Sender::new(home, &send)?.send_all(vec![tx])?;
            say(&send, &out, &format!("offer {name} withdrawn"))
        }
        Command::Offers(args) => offers(home, &args),
        Command::Open(args) => open(home, args),
        Command::TopUp {
            lease,
            amount,
            send,
        } => top_up(home, &lease, amount, &send),
        Command::Status {
            lease,
            key,
            node,
            json,
        } => status(home, lease.as_deref(), key, node.as_deref(), json),
        Command::Close { lease, send } => close(home, &lease, &send),
        Command::Exec(args) => exec::exec(home, args),
        Command::Logs { lease } => logs(home, &lease),
    }
}

fn request(dapp: &str, action: &str, args: Value) -> Request {
    Request {
        dapp: dapp.into(),
        action: action.into(),
        args,
    }
}

/// Signs, sends and waits.
struct Sender {
    key: utter_ledger::key::Keypair,
    client: Client,
    timeout: Duration,
    quiet: bool,
}

impl Sender {
    fn new(home: &Home, args: &SendArgs) -> Result<Self> {
        Ok(Self {
            key: home.load_key(args.key.as_deref())?,
            client: home.client(args.node.as_deref()),
            timeout: Duration::from_secs(args.timeout),
            quiet: args.json,
        })
    }

    /// Sends `requests` (consecutive nonces) and waits for their blocks;
    /// fails naming the first one refused or rejected.
    fn send_all(&self, requests: Vec<Request>) -> Result<Vec<Value>> {
        let what: Vec<String> = requests
            .iter()
            .map(|r| format!("{} {}", r.dapp, r.action))
            .collect();
        let sent = self.client.sign_and_submit(&self.key, requests)?;
        let ids: Vec<_> = sent.iter().map(|(_, s)| s.id()).collect();
        let mut progress = Progress::items("waiting for the block", ids.len() as u64, self.quiet);
        let done = self
            .client
            .wait_all(&ids, self.timeout, |n| progress.set(n as u64))?;
        progress.finish();
        let mut out = Vec::new();
        for (what, id) in what.iter().zip(&ids) {
            let state = done.iter().find(|s| s.id() == *id);
            match state {
                Some(TxState::Committed { result, .. }) if result.status == Status::Accepted => {
                    out.push(result.output.clone().unwrap_or(Value::Null));
                }
                Some(TxState::Committed { result, .. }) => bail!(
                    "{what} was rejected: {}",
                    result.reason.as_deref().unwrap_or("no reason given")
                ),
                Some(TxState::Refused { error, .. }) => bail!("{what} was refused: {error}"),
                _ => bail!(
                    "{what} is not in a block after {} s; see `utter tx submit --wait` or raise --timeout",
                    self.timeout.as_secs()
                ),
            }
        }
        Ok(out)
    }

    /// A state file of the chain at main, as the node reads it.
    fn read<T: DeserializeOwned>(&self, dapp: &str, path: &str) -> Result<Option<T>> {
        read(&self.client, dapp, path)
    }
}

fn read<T: DeserializeOwned>(client: &Client, dapp: &str, path: &str) -> Result<Option<T>> {
    let Some(file) = client.state(dapp, path, None)? else {
        return Ok(None);
    };
    serde_json::from_slice(&file.bytes)
        .map(Some)
        .with_context(|| format!("{dapp}'s {path} on the node is damaged"))
}

fn say(args: &SendArgs, out: &[Value], text: &str) -> Result<ExitCode> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(out)?);
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn offer(home: &Home, args: OfferArgs) -> Result<ExitCode> {
    if !(args.cpu > 0.0 && args.cpu <= 256.0) {
        bail!("--cpu must be more than 0 and at most 256");
    }
    let images = if args.images.is_empty() {
        vec!["any".to_string()]
    } else {
        args.images.clone()
    };
    let tx = request(
        "leases",
        "offer",
        json!({
            "name": args.name, "millicpu": (args.cpu * 1000.0).round() as u64,
            "memory": args.memory, "pids": args.pids, "disk": args.disk,
            "price": args.price, "grace": args.grace.as_secs(), "images": images,
            "location": args.location, "capacity": args.capacity, "ports": args.ports,
        }),
    );
    let out = Sender::new(home, &args.send)?.send_all(vec![tx])?;
    say(
        &args.send,
        &out,
        &format!(
            "offer {}: {} CPU, {} memory, {} credits a minute, {} at once; this node runs its leases",
            args.name,
            args.cpu,
            human(args.memory),
            args.price,
            args.capacity
        ),
    )
}

/// The `leases` dapp's state at main of this data dir's ledger.
fn local_state(home: &Home) -> Result<(tempfile::TempDir, utter_dapp_sdk::State)> {
    let ledger = home.open_read_only()?.ledger;
    let block = ledger.block(ledger.resolve(MAIN)?)?;
    let dir = tempfile::tempdir().context("cannot make a scratch directory")?;
    materialize(&ledger, &block, "leases", dir.path())?;
    let state = utter_dapp_sdk::State::at(dir.path().join("leases"));
    Ok((dir, state))
}

fn offers(home: &Home, args: &OffersArgs) -> Result<ExitCode> {
    let (_dir, mut state) = local_state(home)?;
    let mut rows: Vec<(Offer, Provider)> = Vec::new();
    for o in utter_leases::offers(&mut state)? {
        let keep = !o.withdrawn
            && args
                .cpu
                .is_none_or(|c| o.terms.millicpu as f64 >= c * 1000.0)
            && args.memory.is_none_or(|m| o.terms.memory >= m)
            && args.max_price.is_none_or(|p| o.terms.price <= p)
            && args.image.as_ref().is_none_or(|i| o.allows(i))
            && args
                .location
                .as_ref()
                .is_none_or(|l| o.location.to_lowercase().contains(&l.to_lowercase()));
        if keep {
            let p = utter_leases::provider(&mut state, &o.provider)?;
            rows.push((o, p));
        }
    }
    match args.sort {
        Sort::Price => rows.sort_by_key(|(o, _)| (o.terms.price, o.name.clone())),
        Sort::Uptime => rows.sort_by_key(|(o, p)| {
            (
                std::cmp::Reverse(p.uptime_permille().unwrap_or(0)),
                o.terms.price,
            )
        }),
    }
    if args.json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(o, p)| {
                json!({"offer": o, "free": o.capacity.saturating_sub(o.open.len() as u64),
                       "uptime_permille": p.uptime_permille(), "served": p.served})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no offers match; providers publish them with `utter lease offer`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:>5} {:>8} {:>6} {:>9} {:>5} {:>7} {:>6}  LOCATION",
        "OFFER", "CPU", "MEMORY", "PIDS", "CR/MIN", "FREE", "UPTIME", "GRACE"
    );
    for (o, p) in &rows {
        println!(
            "{:<16} {:>5} {:>8} {:>6} {:>9} {:>5} {:>7} {:>6}  {}",
            o.name,
            o.terms.millicpu as f64 / 1000.0,
            human(o.terms.memory),
            o.terms.pids,
            o.terms.price,
            o.capacity.saturating_sub(o.open.len() as u64),
            p.uptime_permille()
                .map_or("new".to_string(), |u| format!("{:.1}%", u as f64 / 10.0)),
            format!("{}m", o.terms.grace / 60),
            o.location
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn new_lease_id() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("lease-{}", hex::encode(bytes))
}

fn open(home: &Home, args: OpenArgs) -> Result<ExitCode> {
    let s = Sender::new(home, &args.send)?;
    let Some(o) = s.read::<Offer>("leases", &format!("offers/{}.json", args.offer))? else {
        bail!(
            "there is no offer {:?}; `utter lease offers` lists them",
            args.offer
        );
    };
    if o.withdrawn {
        bail!("offer {} was withdrawn by its provider", o.name);
    }
    // What the deposit runs for (a free offer: as long as it is open).
    let seconds = (o.terms.price > 0).then(|| args.deposit * 60 / o.terms.price);
    if seconds == Some(0) {
        bail!(
            "--deposit {} pays for no time on offer {} ({} credits a minute); deposit more",
            args.deposit,
            o.name,
            o.terms.price
        );
    }
    let image = super::dapp::image_on_node(&s.client, &args.image, args.send.json)?;
    if !o.allows(&image) {
        bail!("offer {} does not run image {image}", o.name);
    }
    let id = new_lease_id();
    s.send_all(vec![request(
        "accounting",
        "escrow-open",
        json!({"name": id, "payee": o.provider, "amount": args.deposit, "lease": true}),
    )])
    .context("paying the deposit into the lease's escrow")?;
    let out = s
        .send_all(vec![request(
            "leases",
            "open",
            json!({"lease": id, "offer": o.name, "image": image, "warn": args.warn.as_secs()}),
        )])
        .with_context(|| {
            format!(
                "the deposit is in escrow {id}; accounting returns it to you {} minutes after it opened",
                utter_accounting::UNCLAIMED / 60
            )
        })?;
    if args.send.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"lease": id, "open": out}))?
        );
    } else {
        let runs = match seconds {
            Some(s) if s < 120 => format!("{s} seconds"),
            Some(s) => format!("{} minutes", s / 60),
            None => "as long as it is open (a free offer)".into(),
        };
        println!(
            "lease {id} open on {}: {} credits pay for {runs} once the provider starts it",
            o.name, args.deposit
        );
        println!("follow it with `utter lease status {id}`");
    }
    Ok(ExitCode::SUCCESS)
}

fn top_up(home: &Home, lease: &str, amount: u64, args: &SendArgs) -> Result<ExitCode> {
    let s = Sender::new(home, args)?;
    let Some(l) = s.read::<Lease>("leases", &utter_leases::lease_path(lease))? else {
        bail!("there is no lease {lease:?}");
    };
    if l.view(utter_formats::now()).status.ended() {
        bail!("lease {lease} has ended; open a new one");
    }
    s.send_all(vec![request(
        "accounting",
        "escrow-add",
        json!({"name": lease, "amount": amount}),
    )])?;
    let out = s.send_all(vec![request("leases", "top-up", json!({ "lease": lease }))])?;
    let runs_out = out
        .first()
        .and_then(|v| v.get("runs_out_at"))
        .and_then(Value::as_i64);
    say(
        args,
        &out,
        &match runs_out {
            Some(t) => format!(
                "lease {lease} topped up by {amount}; runs out at {}",
                utc(t)
            ),
            None => format!("lease {lease} topped up by {amount}"),
        },
    )
}

fn close(home: &Home, lease: &str, args: &SendArgs) -> Result<ExitCode> {
    let s = Sender::new(home, args)?;
    let mut out = s.send_all(vec![request("leases", "close", json!({ "lease": lease }))])?;
    // The rest goes back now rather than at the provider's next settle.
    out.extend(s.send_all(vec![request(
        "accounting",
        "escrow-settle",
        json!({ "names": [lease] }),
    )])?);
    let returned = out
        .first()
        .and_then(|v| v.get("returned"))
        .and_then(Value::as_u64);
    say(
        args,
        &out,
        &match returned {
            Some(n) => format!("lease {lease} closed; {n} credits went back to the payer"),
            None => format!("lease {lease} closed"),
        },
    )
}

fn status(
    home: &Home,
    lease: Option<&str>,
    key: Option<PathBuf>,
    node: Option<&str>,
    as_json: bool,
) -> Result<ExitCode> {
    let client = home.client(node);
    let ids = match lease {
        Some(id) => vec![id.to_string()],
        None => {
            let key = home.load_key(key.as_deref())?.public().to_openssh();
            let id = key_id(&key).context("the key is not an ed25519 key")?;
            let payer: Option<Payer> = read(&client, "leases", &format!("payers/{id}.json"))?;
            payer.map(|p| p.open).unwrap_or_default()
        }
    };
    let now = utter_formats::now();
    let mut rows = Vec::new();
    for id in &ids {
        let Some(l) = read::<Lease>(&client, "leases", &utter_leases::lease_path(id))? else {
            bail!("there is no lease {id:?}");
        };
        let mut events: Vec<Event> = client
            .state("leases", &utter_leases::events_path(id), None)?
            .map(|f| {
                String::from_utf8_lossy(&f.bytes)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default();
        // What chain time has done since the last transaction on it.
        events.extend(l.events_due(now));
        rows.push((l.clone(), l.view(now), events));
    }
    if as_json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(l, v, e)| json!({"lease": l, "now": now, "view": v, "events": e}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("the key holds no open leases; `utter lease offers` lists what is for hire");
    }
    let at = |t: Option<u64>| t.map_or("-".to_string(), |t| utc(t as i64));
    for (l, v, events) in &rows {
        println!("{}  on {}  {:?}", l.id, l.offer, v.status);
        println!(
            "  balance    {} of {} credits paid in ({} used)",
            v.balance, l.deposits, v.used
        );
        println!("  price      {} credits a minute", l.terms.price);
        match v.status {
            utter_leases::Status::Halted => {
                println!("  halted at  {}", at(v.halted_since));
                println!("  destroyed  {} unless topped up", at(v.destroy_at));
            }
            s if s.ended() => println!("  ended at   {}", at(v.ended_at)),
            _ => println!("  runs out   {}", at(v.runs_out_at)),
        }
        for (i, port) in l.terms.ports.iter().enumerate() {
            match l.endpoints.get(i) {
                Some(e) => println!("  port {port:<5} reached at {e}"),
                None => println!("  port {port:<5} not forwarded yet"),
            }
        }
        if lease.is_some() {
            for e in events {
                println!(
                    "  {}  {}{}",
                    at(Some(e.time)),
                    e.event,
                    e.amount.map_or(String::new(), |a| format!(" {a}"))
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(home: &Home, lease: &str) -> Result<ExitCode> {
    match run_op(
        home,
        &LeaseOp::Log {
            name: lease.to_string(),
        },
    )? {
        LeaseAnswer::Log(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        LeaseAnswer::Error(e) => {
            bail!("no log of lease {lease} on this node ({e}); run it on the provider's data dir")
        }
        other => bail!("the lease helper answered {other:?}"),
    }
}

/// `utter sandbox-lease` (internal): one container operation for the
/// provider agent, a JSON [`LeaseOp`] on stdin, the answer on stdout.
pub fn serve(home: &Home) -> Result<ExitCode> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
    let answer = match serde_json::from_str::<LeaseOp>(&text) {
        Ok(op) => utter_node::leases::serve_op(home, op),
        Err(e) => LeaseAnswer::Error(format!("the lease helper cannot read this request: {e}")),
    };
    println!("{}", serde_json::to_string(&answer)?);
    Ok(ExitCode::SUCCESS)
}

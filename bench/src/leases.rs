//! Compute leases, as their users meet them, on a real node (`utter node
//! run --p2p`, the provider agent running real containers):
//!
//! - **Block time with many open leases**: a chain holding `leases` open
//!   leases (opened by real transactions, 3 per payer key, on offers of a
//!   provider whose containers run elsewhere), then blocks where a few
//!   leases change (heartbeats), beside the same blocks on a chain of 10
//!   leases, in the same run. Target: at most 1.2x.
//! - **Halt latency**: leases on this node's own offer, deposits staggered
//!   so they run dry a second apart; from the second a lease runs out (as
//!   its record says, chain time) to its container seen frozen in the
//!   cgroup freezer. Target: p99 at most 1 s.
//! - **Login**: `utter lease exec LEASE -- true` (QUIC, the key that paid,
//!   a command in the lease's container) beside `ssh -i KEY root@127.0.0.1
//!   true` to OpenSSH's sshd on loopback, started here with a key. Target:
//!   at most 1.0x.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use utter_client::Client;
use utter_client::api::TxState;
use utter_formats::tx::{Request, sign_requests};
use utter_ledger::key::Keypair;
use utter_node::leases::{Have, LeaseAnswer, LeaseOp, run_op};

use crate::node::{Node, utter};
use crate::utter_bin;

/// Options of `utter-bench leases`.
pub struct Options {
    /// Open leases on the big chain.
    pub leases: usize,
    /// Blocks timed on each chain.
    pub blocks: usize,
    /// Leases that run dry, for the halt latency.
    pub halts: usize,
    /// Round trips timed for the login.
    pub runs: usize,
    /// The wait between opening the leases and timing blocks.
    pub settle: Duration,
    pub work: Option<PathBuf>,
}

const SALT: &str = "00112233445566778899aabbccddeeff";
/// Leases a new key may hold at once (the leases dapp's `BASE_LEASES`).
const PER_PAYER: usize = utter_leases::BASE_LEASES as usize;

pub fn run(opts: Options) -> Result<()> {
    let bin = utter_bin()?;
    let tmp = tempfile::tempdir()?;
    let work = crate::work_dir(opts.work.clone(), tmp.path())?;
    println!(
        "## leases: compute leases on `utter node run --p2p` (real containers, real transactions)"
    );
    let (small, big) = block_times(&bin, &work, opts.leases, opts.blocks, opts.settle)?;
    let ratio = big.0 / small.0;
    println!("                                          measured        target");
    println!(
        "block of 5 heartbeats, {:>6} leases open  {:>7.1} ms  (p90 {:.1})",
        opts.leases, big.0, big.1
    );
    println!(
        "block of 5 heartbeats,     10 leases open  {:>7.1} ms  (p90 {:.1})",
        small.0, small.1
    );
    println!(
        "ratio                                     {ratio:>7.2}x        <= 1.2x   {}",
        met(ratio <= 1.2)
    );
    halts_and_login(&bin, &work.join("provider"), opts.halts, opts.runs)?;
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A chain on a running node, and the signers' next nonces.
struct Chain {
    client: Client,
    name: String,
    node_key: Keypair,
    nonces: BTreeMap<String, u64>,
    /// Leases opened so far (their ids are numbered).
    opened: usize,
    /// The node's log.
    log: PathBuf,
    _node: Node,
}

impl Chain {
    /// `utter node run --p2p --verbose` on `data` (made by `utter init
    /// --chain name`); the node key made admin and treasurer.
    fn start(bin: &Path, data: &Path, name: &str) -> Result<Self> {
        let node = crate::dapps::start(bin, data, &["--verbose", "--block-ms", "20"])?;
        let client = Client::new(std::fs::read_to_string(data.join("node.addr"))?.trim());
        let node_key = Keypair::load(&data.join("keys/node")).context("the node key")?;
        let mut chain = Self {
            client,
            name: name.to_string(),
            node_key,
            nonces: BTreeMap::new(),
            opened: 0,
            log: data.join("node.log"),
            _node: node,
        };
        let me = chain.node_key.public().to_openssh();
        let key = chain.node_key.clone();
        chain.send(
            &key,
            vec![request(
                "membership",
                "add-member",
                json!({"key": me, "name": "Provider", "roles": ["admin", "treasurer"], "salt": SALT}),
            )],
        )?;
        Ok(chain)
    }

    /// Signs `requests` with `key`, submits them and waits until all are
    /// committed; each must be accepted.
    fn send(&mut self, key: &Keypair, requests: Vec<Request>) -> Result<()> {
        let ids = self.submit(key, requests)?;
        let states = self
            .client
            .wait_all(&ids, Duration::from_secs(600), |_| {})?;
        for s in states {
            if let TxState::Committed { result, .. } = s
                && result.status != utter_formats::Status::Accepted
            {
                bail!("a transaction was rejected: {:?}", result.reason);
            }
        }
        Ok(())
    }

    /// Signs and submits; the ids, without waiting.
    fn submit(
        &mut self,
        key: &Keypair,
        requests: Vec<Request>,
    ) -> Result<Vec<utter_formats::TxId>> {
        let signer = key.public().to_openssh();
        let next = self.nonces.entry(signer).or_insert(1);
        let n = requests.len() as u64;
        let lines = sign_requests(key, &self.name, *next, utter_formats::now(), requests)?;
        *next += n;
        self.client
            .submit(&lines)?
            .into_iter()
            .map(|s| match s {
                TxState::Pending { id } => Ok(id),
                other => bail!("not admitted: {other:?}"),
            })
            .collect()
    }

    /// `count` new member keys with 1000 credits each.
    fn payers(&mut self, count: usize) -> Result<Vec<Keypair>> {
        let keys: Vec<Keypair> = (0..count)
            .map(|i| Keypair::generate(&format!("payer{i}")))
            .collect::<Result<_, _>>()?;
        let admin = self.node_key.clone();
        // Members first: a block's dapps see the state of the block before.
        for chunk in keys.chunks(1000) {
            let reqs = chunk
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    request(
                        "membership",
                        "add-member",
                        json!({"key": k.public().to_openssh(), "name": format!("Payer {i}")}),
                    )
                })
                .collect();
            self.send(&admin, reqs)?;
        }
        for chunk in keys.chunks(1000) {
            let reqs = chunk
                .iter()
                .map(|k| {
                    request(
                        "accounting",
                        "mint",
                        json!({"to": k.public().to_openssh(), "amount": 1000}),
                    )
                })
                .collect();
            self.send(&admin, reqs)?;
        }
        Ok(keys)
    }

    /// An offer of `provider`.
    fn offer(&mut self, provider: &Keypair, name: &str, capacity: usize) -> Result<()> {
        self.send(
            provider,
            vec![request(
                "leases",
                "offer",
                json!({"name": name, "millicpu": 100, "memory": 32 << 20, "pids": 16,
                       "disk": 0, "price": 60, "grace": 600, "images": ["any"],
                       "location": "bench", "capacity": capacity}),
            )],
        )
    }

    /// Opens `count` leases, `per` for each payer in `payers` in turn
    /// (`deposit(n)` on `offers(n)` for the n-th); their ids.
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        payers: &[Keypair],
        per: usize,
        count: usize,
        provider: &str,
        offers: &dyn Fn(usize) -> String,
        image: &str,
        deposit: &dyn Fn(usize) -> u64,
    ) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut plan = Vec::new();
        for (p, key) in payers.iter().enumerate() {
            for j in 0..per {
                let n = p * per + j;
                // Named for this run: containers of an earlier run on the
                // same data dir path are never taken for these.
                let id = format!("lease-b{:x}-{:06}", std::process::id(), self.opened + n);
                plan.push((key, id, offers(n), deposit(n)));
            }
        }
        plan.truncate(count);
        self.opened += plan.len();
        // Escrows first, then the leases on them, many signers per round.
        for round in plan.chunks(1500) {
            let mut pending = Vec::new();
            for (key, id, _, amount) in round {
                pending.extend(self.submit(
                    key,
                    vec![request(
                        "accounting",
                        "escrow-open",
                        json!({"name": id, "payee": provider, "amount": amount, "lease": true}),
                    )],
                )?);
            }
            for s in self
                .client
                .wait_all(&pending, Duration::from_secs(600), |_| {})?
            {
                if let TxState::Committed { result, .. } = s
                    && result.status != utter_formats::Status::Accepted
                {
                    bail!("an escrow did not open: {:?}", result.reason);
                }
            }
            let mut pending = Vec::new();
            for (key, id, offer, _) in round {
                pending.extend(self.submit(
                    key,
                    vec![request(
                        "leases",
                        "open",
                        json!({"lease": id, "offer": offer, "image": image, "warn": 2}),
                    )],
                )?);
                ids.push(id.clone());
            }
            for s in self
                .client
                .wait_all(&pending, Duration::from_secs(600), |_| {})?
            {
                if let TxState::Committed { result, .. } = s
                    && result.status != utter_formats::Status::Accepted
                {
                    bail!("a lease did not open: {:?}", result.reason);
                }
            }
        }
        Ok(ids)
    }

    fn lease(&self, id: &str) -> Result<Option<utter_leases::Lease>> {
        let Some(f) = self
            .client
            .state("leases", &utter_leases::lease_path(id), None)?
        else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&f.bytes)?))
    }
}

fn request(dapp: &str, action: &str, args: Value) -> Request {
    Request {
        dapp: dapp.into(),
        action: action.into(),
        args,
    }
}

/// A busybox image whose main process sleeps, built on `data`'s node.
fn sleeper(bin: &Path, data: &Path) -> Result<String> {
    let app = data.with_extension("app");
    let _ = std::fs::remove_dir_all(&app);
    std::fs::create_dir_all(app.join("bin"))?;
    std::fs::copy("/bin/busybox", app.join("bin/busybox")).context("busybox-static")?;
    for applet in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", app.join("bin").join(applet))?;
    }
    let out = utter(
        bin,
        data,
        &[
            "image",
            "build",
            &app.display().to_string(),
            "--entrypoint",
            r#"["/bin/sleep"]"#,
            "--cmd",
            r#"["100000000"]"#,
            "--tag",
            "sleeper",
            "--json",
        ],
    )?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["id"].as_str().context("no image id")?.to_string())
}

/// A chain holding `leases` open leases of a provider that is not its
/// node (they wait for it, opened; the node runs no container): the
/// chain, the provider's key, the leases.
fn lease_chain(bin: &Path, data: &Path, leases: usize) -> Result<(Chain, Keypair, Vec<String>)> {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(data);
    utter(bin, data, &["init", "--chain", "bench-leases"])?;
    // The image goes in before the node opens the store.
    let image = sleeper(bin, data)?;
    let mut chain = Chain::start(bin, data, "bench-leases")?;
    let provider = Keypair::generate("provider")?;
    let provider_pub = provider.public().to_openssh();
    let admin = chain.node_key.clone();
    chain.send(
        &admin,
        vec![request(
            "membership",
            "add-member",
            json!({"key": provider_pub, "name": "Far provider"}),
        )],
    )?;
    let payers = chain.payers(leases.div_ceil(PER_PAYER))?;
    let per_offer = utter_leases::MAX_CAPACITY as usize;
    let offers = (payers.len() * PER_PAYER).div_ceil(per_offer);
    for o in 0..offers {
        chain.offer(&provider, &format!("o{o}"), per_offer)?;
    }
    let ids = chain.open(
        &payers,
        PER_PAYER,
        leases,
        &provider_pub,
        &|n| format!("o{}", n / per_offer),
        &image,
        &|_| 300,
    )?;
    eprintln!(
        "{}: {} leases open ({} payers) in {:.0} s",
        data.display(),
        ids.len(),
        payers.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((chain, provider, ids))
}

/// (median, p90) block time, ms, of `blocks` blocks of 5 heartbeats on a
/// chain of 10 leases and on one of `leases`, the two nodes running side
/// by side and taking turns block by block, so both meet the same noise.
fn block_times(
    bin: &Path,
    work: &Path,
    leases: usize,
    blocks: usize,
    settle: Duration,
) -> Result<((f64, f64), (f64, f64))> {
    let mut small = lease_chain(bin, &work.join("small"), 10)?;
    let mut big = lease_chain(bin, &work.join("big"), leases)?;
    if !settle.is_zero() {
        eprintln!(
            "waiting {} s before timing blocks (--settle)",
            settle.as_secs()
        );
        std::thread::sleep(settle);
    }
    for b in 0..=blocks {
        for (chain, provider, ids) in [&mut small, &mut big] {
            // 5 leases spread over the chain change: their heartbeats.
            let reqs = (0..5)
                .map(|i| {
                    let id = &ids[((b * 5 + i) * 7919) % ids.len()];
                    request("leases", "heartbeat", json!({"leases": [id]}))
                })
                .collect();
            chain.send(provider, reqs)?;
        }
    }
    let mut out = Vec::new();
    for (chain, _, _) in [small, big] {
        let log = chain.log.clone();
        drop(chain);
        let times = crate::dapps::block_times(&log, 5)?;
        ensure!(
            times.len() > blocks,
            "{} logged {} blocks of 5, not {}",
            log.display(),
            times.len(),
            blocks + 1
        );
        // The first warms up.
        let t = sorted(times[times.len() - blocks..].iter().map(|t| t.0).collect());
        out.push((percentile(&t, 0.5), percentile(&t, 0.9)));
    }
    Ok((out[0], out[1]))
}

/// Halt latency, then `lease exec` beside ssh, on a node that provides.
fn halts_and_login(bin: &Path, data: &Path, halts: usize, runs: usize) -> Result<()> {
    let _ = std::fs::remove_dir_all(data);
    utter(bin, data, &["init", "--chain", "bench-provider"])?;
    let image = sleeper(bin, data)?;
    let home = utter_node::Home::new(data).with_helper(bin);
    // Dropped after the node stops (declared before it).
    let _cleanup = Cleanup(&home);
    let mut chain = Chain::start(bin, data, "bench-provider")?;
    let me = chain.node_key.clone();
    chain.offer(&me, "here", halts + 1)?;
    let payers = chain.payers(halts.div_ceil(PER_PAYER) + 1)?;
    let (login_payer, payers) = payers.split_last().context("payers")?;
    // One credit a second; 20 s, then one more second each.
    let ids = chain.open(
        payers,
        PER_PAYER,
        halts,
        &me.public().to_openssh(),
        &|_| "here".into(),
        &image,
        &|n| 20 + n as u64,
    )?;
    let login = chain.open(
        std::slice::from_ref(login_payer),
        1,
        1,
        &me.public().to_openssh(),
        &|_| "here".into(),
        &image,
        &|_| 1000,
    )?;
    let login = login[0].clone();
    // Where the containers are, as the provider agent's helper lists them.
    let list = || list_containers(&home);
    // Each seen frozen: when.
    let mut frozen: BTreeMap<String, std::time::SystemTime> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180 + halts as u64);
    while frozen.len() < ids.len() {
        ensure!(
            Instant::now() < deadline,
            "only {} of {} leases froze",
            frozen.len(),
            ids.len()
        );
        // Seen when the list is back: a latency is never under-counted.
        let have = list()?;
        let now = std::time::SystemTime::now();
        for id in &ids {
            if !frozen.contains_key(id) && have.get(id) == Some(&Have::Frozen) {
                frozen.insert(id.clone(), now);
            }
        }
    }
    let mut late = Vec::new();
    for (id, at) in &frozen {
        let l = chain.lease(id)?.context("a lease vanished")?;
        let secs = at.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let v = l.view(secs as u64 + 1);
        let Some(halted) = v.halted_since else {
            bail!("{id} is frozen but {:?} at {secs:.1}: {l:?}", v.status);
        };
        late.push((secs - halted as f64) * 1e3);
    }
    let late = sorted(late);
    println!(
        "halt latency, {} leases: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms   target p99 <= 1000 ms  {}",
        late.len(),
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late.last().copied().unwrap_or(f64::NAN),
        met(percentile(&late, 0.99) <= 1000.0)
    );

    // Login, once the lease runs.
    let key_file = data.with_extension("payer");
    login_payer.save(&key_file)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while chain
        .lease(&login)?
        .is_none_or(|l| !l.view(utter_formats::now()).status.runs())
        || list()?.get(&login) != Some(&Have::Running)
    {
        ensure!(Instant::now() < deadline, "lease {login} never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut exec = Command::new(bin);
    exec.arg("--data-dir")
        .arg(data)
        .args(["lease", "exec", &login, "--key"])
        .arg(&key_file)
        .args(["--", "true"]);
    let utter_times = time_runs(&mut exec, runs)?;
    let sshd = Sshd::start(&data.with_extension("ssh"), login_payer)?;
    let mut ssh = sshd.ssh(&key_file);
    ssh.arg("true");
    let ssh_times = time_runs(&mut ssh, runs)?;
    drop(sshd);
    let (u, s) = (percentile(&utter_times, 0.5), percentile(&ssh_times, 0.5));
    println!(
        "`utter lease exec LEASE -- true`  p50 {u:>6.1} ms  p90 {:>6.1} ms  (QUIC, the paying key, in the lease's container)",
        percentile(&utter_times, 0.9)
    );
    println!(
        "`ssh root@127.0.0.1 true`          p50 {s:>6.1} ms  p90 {:>6.1} ms  (OpenSSH, a key, on the host)",
        percentile(&ssh_times, 0.9)
    );
    println!(
        "ratio                              {:>6.2}x           target <= 1.0x  {}",
        u / s,
        met(u / s <= 1.0)
    );
    Ok(())
}

fn list_containers(home: &utter_node::Home) -> Result<BTreeMap<String, Have>> {
    match run_op(home, &LeaseOp::List)? {
        LeaseAnswer::Listed(have) => Ok(have),
        other => bail!("the lease helper answered {other:?}"),
    }
}

/// Removes the lease containers of a data dir when dropped: they outlive
/// their node, by design.
struct Cleanup<'a>(&'a utter_node::Home);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in list_containers(self.0).unwrap_or_default().keys() {
            let _ = run_op(self.0, &LeaseOp::Remove { name: name.clone() });
        }
    }
}

/// Runs `cmd` `runs` times (after one warm-up), each must succeed; sorted
/// wall times, ms.
fn time_runs(cmd: &mut Command, runs: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..=runs {
        let t = Instant::now();
        let o = cmd.stdin(Stdio::null()).output()?;
        ensure!(
            o.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if i > 0 {
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(sorted(out))
}

/// OpenSSH's sshd on loopback, letting in one key; killed when dropped.
struct Sshd {
    child: std::process::Child,
    port: u16,
}

impl Sshd {
    fn start(dir: &Path, key: &Keypair) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all("/run/sshd")?;
        let host = dir.join("host");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host)
            .output()?;
        ensure!(out.status.success(), "ssh-keygen failed");
        let auth = dir.join("authorized_keys");
        std::fs::write(&auth, format!("{}\n", key.public().to_openssh()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nUseDNS no\nPermitRootLogin prohibit-password\nStrictModes no\n",
                host.display(),
                auth.display(),
                dir.join("sshd.pid").display()
            ),
        )?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log"))?)
            .spawn()
            .context("sshd (Debian's openssh-server) runs")?;
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                started.elapsed() < Duration::from_secs(20),
                "sshd did not listen: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port })
    }

    fn ssh(&self, key: &Path) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            // Debian's ssh_config asks for GSSAPI first: off, so ssh is
            // timed at its quickest.
            .args(["-o", "GSSAPIAuthentication=no"])
            .arg("root@127.0.0.1");
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

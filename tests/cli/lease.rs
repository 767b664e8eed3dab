//! Compute leases end to end: a real node is the provider (its agent runs
//! the lease's container with libcontainer), customers are ssh-keygen keys,
//! and chain time drives the money. A lease runs, drains, halts frozen with
//! its files and processes kept, resumes on another key's top-up, and is
//! destroyed after its grace period; a closed lease returns exactly what
//! it did not use; a provider node killed with SIGKILL adopts its running
//! container on restart and bills it once; `ledger` reads the payments
//! and earnings balanced; only the key that opened a lease logs in (`lease
//! exec` over QUIC, on pipes or a terminal, the exit code passed on), and
//! its session ends when the lease runs dry.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::node::{Node, SALT, accepted, public_key, submit};
use super::*;

/// Waits up to `secs` for `f` to give something.
fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`until`], and on a timeout the balances, the lease records and the
/// node's log.
fn until_or<T>(what: &str, secs: u64, m: &Market, id: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let log = std::fs::read_to_string(m.data.with_extension("log")).unwrap_or_default();
            let leases = utter(&m.data)
                .args(["lease", "status", id, "--json"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            panic!(
                "timed out after {secs} s waiting for {what}\nbalances: {}\nleases: {leases:?}\nnode log:\n{log}",
                m.balances()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Builds, in `data`'s image store, an image of busybox's shell and a few
/// applets (plus `files`, path and text) at `app` that runs `script`;
/// its digest.
fn busybox_image(data: &Path, app: &Path, script: &str, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", app.join("bin/busybox")).expect("busybox-static is installed");
    for applet in ["sh", "sleep", "echo", "cat", "stty", "true", "httpd", "nc"] {
        std::os::unix::fs::symlink("busybox", app.join("bin").join(applet)).unwrap();
    }
    for (path, text) in files {
        let path = app.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let built: Value = serde_json::from_str(&ok(utter(data)
        .args(["image", "build"])
        .arg(app)
        .args(["--entrypoint", r#"["/bin/sh","-c"]"#, "--cmd"])
        .arg(json!([script]).to_string())
        .args(["--json"])))
    .unwrap();
    built["id"].as_str().unwrap().to_string()
}

struct Market {
    tmp: tempfile::TempDir,
    data: PathBuf,
    node: Option<Node>,
    provider: String,
    alice: PathBuf,
    bob: PathBuf,
    image: String,
    /// An image serving a page on port 8080.
    web: String,
}

/// A chain whose node key is the treasurer and the provider; Alice and
/// Bob with 1000 credits each; a busybox image that counts into /data/n.
fn market() -> Market {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(utter(&data).args(["init", "--chain", "market"]));
    let script = "echo started; echo kept > /data/file; i=$(cat /data/n 2>/dev/null || echo 0); \
                  while :; do i=$((i+1)); echo $i > /data/n; sleep 0.1; done";
    let image = busybox_image(&data, &tmp.path().join("app"), script, &[]);
    let web = busybox_image(
        &data,
        &tmp.path().join("web"),
        "exec httpd -f -p 8080 -h /www",
        &[("www/index.html", "served from a lease\n")],
    );
    let node = Node::start(&data, &["--p2p", "127.0.0.1:0"]);
    let provider = public_key(&data);
    let (alice, alice_key) = ssh_key(tmp.path(), "alice");
    let (bob, bob_key) = ssh_key(tmp.path(), "bob");
    accepted(submit(
        &data,
        None,
        "membership",
        "add-member",
        json!({"key": provider, "name": "Provider", "roles": ["admin", "treasurer"], "salt": SALT}),
    ));
    for (key, name) in [(&alice_key, "Alice"), (&bob_key, "Bob")] {
        accepted(submit(
            &data,
            None,
            "membership",
            "add-member",
            json!({"key": key, "name": name}),
        ));
        accepted(submit(
            &data,
            None,
            "accounting",
            "mint",
            json!({"to": key, "amount": 1000}),
        ));
    }
    Market {
        tmp,
        data,
        node: Some(node),
        provider,
        alice,
        bob,
        image,
        web,
    }
}

/// Lease containers outlive their node (by design): each test removes
/// its own when it ends, as the node's helper does.
impl Drop for Market {
    fn drop(&mut self) {
        drop(self.node.take());
        let op = |json: &str| -> Option<Value> {
            let mut child = utter(&self.data)
                .arg("sandbox-lease")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()?;
            std::io::Write::write_all(&mut child.stdin.take()?, json.as_bytes()).ok()?;
            serde_json::from_slice(&child.wait_with_output().ok()?.stdout).ok()
        };
        let Some(listed) = op(r#""list""#) else {
            return;
        };
        for name in listed["listed"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            op(&json!({"remove": {"name": name}}).to_string());
        }
        // The node's ports namespace, if a test left it.
        let _ = Command::new("ip")
            .args(["netns", "del", &utter_node::ports::netns_name(&self.data)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Market {
    fn lease(&self) -> Command {
        let mut c = utter(&self.data);
        c.arg("lease");
        c
    }

    /// `lease status ID --json`: (status, balance, the lease's view).
    fn status(&self, id: &str) -> (String, u64, Value) {
        let v: Value =
            serde_json::from_str(&ok(self.lease().args(["status", id, "--json"]))).unwrap();
        let view = v[0]["view"].clone();
        (
            view["status"].as_str().unwrap().to_string(),
            view["balance"].as_u64().unwrap(),
            v[0].clone(),
        )
    }

    /// Waits for the lease to run: "running", or already "low" (a lease
    /// with seconds of runway can pass its warning before a loaded machine
    /// polls it).
    fn wait_live(&self, id: &str, secs: u64) -> Value {
        until(&format!("lease {id} to run"), secs, || {
            let (s, _, v) = self.status(id);
            (s == "running" || s == "low").then_some(v)
        })
    }

    fn wait_status(&self, id: &str, want: &str, secs: u64) -> Value {
        until(&format!("lease {id} to be {want}"), secs, || {
            let (s, _, v) = self.status(id);
            (s == want).then_some(v)
        })
    }

    /// What the lease's program counted so far (from its /data on the host).
    fn count(&self, id: &str) -> u64 {
        std::fs::read_to_string(self.data.join("leases").join(id).join("data/n"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn counting(&self, id: &str) -> bool {
        let a = self.count(id);
        until(&format!("{id} to count"), 10, || {
            (self.count(id) > a).then_some(())
        });
        true
    }

    fn balances(&self) -> Value {
        serde_json::from_str(&ok(utter(&self.data).args([
            "accounting",
            "balances",
            "--json",
        ])))
        .unwrap()
    }

    fn open(&self, offer: &str, deposit: u64, key: &Path) -> String {
        self.open_image(offer, deposit, key, &self.image)
    }

    fn open_image(&self, offer: &str, deposit: u64, key: &Path, image: &str) -> String {
        let v: Value = serde_json::from_str(&ok(self
            .lease()
            .args(["open", offer, "--image", image, "--warn", "3s"])
            .args(["--deposit", &deposit.to_string(), "--json", "--key"])
            .arg(key)))
        .unwrap();
        v["lease"].as_str().unwrap().to_string()
    }
}

fn credits(balances: &Value, name: &str) -> i64 {
    balances["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .map_or(0, |a| a["balance"].as_i64().unwrap())
}

fn events(status: &Value) -> Vec<String> {
    status["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_lease_drains_halts_frozen_resumes_on_a_top_up_and_is_destroyed_after_grace() {
    let m = market();
    // 60 credits a minute: one a second.
    ok(m.lease().args([
        "offer",
        "small",
        "--cpu",
        "0.25",
        "--memory",
        "64M",
        "--pids",
        "32",
        "--price",
        "60",
        "--grace",
        "6s",
        "--capacity",
        "2",
        "--location",
        "Ghent",
    ]));
    let listed = ok(m.lease().args(["offers"]));
    assert!(
        listed.contains("small") && listed.contains("Ghent"),
        "{listed}"
    );
    let err = fails(
        m.lease()
            .args(["open", "nope", "--image", &m.image, "--deposit", "5"]),
    );
    assert!(err.contains("there is no offer"), "{err}");

    let id = m.open("small", 8, &m.alice);
    m.wait_live(&id, 60);
    assert!(m.counting(&id));
    let log = ok(m.lease().args(["logs", &id]));
    assert_eq!(log, "started\n");

    // 8 credits run 8 s; then it is frozen: files and processes kept, no
    // CPU, not billed.
    let halted = m.wait_status(&id, "halted", 30);
    assert_eq!(halted["view"]["balance"], 0);
    let frozen_at = until("the container to be frozen", 5, || {
        let a = m.count(&id);
        std::thread::sleep(Duration::from_millis(500));
        (m.count(&id) == a).then_some(a)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(m.count(&id), frozen_at, "a halted lease ran on");
    let file = m.data.join("leases").join(&id).join("data/file");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");

    // Bob, not the owner, tops it up inside the grace period: it resumes
    // where it was (the same process counts on).
    ok(m.lease().args(["top-up", &id, "5", "--key"]).arg(&m.bob));
    m.wait_live(&id, 60);
    assert!(m.counting(&id));
    assert!(m.count(&id) > frozen_at);
    assert_eq!(
        ok(m.lease().args(["logs", &id])),
        "started\n",
        "not restarted"
    );

    // Nobody tops it up again: halted, then destroyed after 6 s of grace.
    m.wait_status(&id, "halted", 30);
    let gone = m.wait_status(&id, "destroyed", 30);
    until("the container and its files to be removed", 20, || {
        (!file.exists()).then_some(())
    });
    let names = events(&gone);
    for e in [
        "opened",
        "started",
        "low",
        "halted",
        "top-up",
        "resumed",
        "halted",
        "destroyed",
    ] {
        assert!(names.contains(&e.to_string()), "{e} in {names:?}");
    }
    let err = fails(m.lease().args(["top-up", &id, "5", "--key"]).arg(&m.bob));
    assert!(err.contains("has ended"), "{err}");

    // The provider earned all 13 credits paid in, settled by its agent.
    let b = until_or("the provider's earnings to be settled", 60, &m, &id, || {
        let b = m.balances();
        (credits(&b, "Provider") == 13).then_some(b)
    });
    assert_eq!(credits(&b, "Alice"), 1000 - 8);
    assert_eq!(credits(&b, "Bob"), 1000 - 5);
}

#[test]
fn close_returns_the_rest_and_a_provider_killed_mid_lease_adopts_its_container() {
    let mut m = market();
    ok(m.lease().args([
        "offer",
        "one",
        "--price",
        "60",
        "--grace",
        "1m",
        "--capacity",
        "1",
        "--memory",
        "64M",
    ]));
    let id = m.open("one", 600, &m.alice);
    m.wait_status(&id, "running", 30);
    assert!(m.counting(&id));
    // The offer is full.
    let err = fails(
        m.lease()
            .args([
                "open",
                "one",
                "--image",
                &m.image,
                "--deposit",
                "60",
                "--key",
            ])
            .arg(&m.bob),
    );
    assert!(err.contains("at capacity"), "{err}");

    // The provider's node dies; its container does not.
    m.node.take().unwrap().kill_9();
    assert!(m.counting(&id), "the lease runs on while its node is down");
    m.node = Some(Node::start(&m.data, &["--p2p", "127.0.0.1:0"]));
    std::thread::sleep(Duration::from_secs(2));
    assert!(m.counting(&id));
    assert_eq!(
        ok(m.lease().args(["logs", &id])),
        "started\n",
        "the restarted node adopted the container rather than start another"
    );

    // Only the owner closes it; the rest goes back at once, exactly.
    let err = fails(m.lease().args(["close", &id, "--key"]).arg(&m.bob));
    assert!(err.contains("only the key that opened"), "{err}");
    let out: Value = serde_json::from_str(&ok(m
        .lease()
        .args(["close", &id, "--json", "--key"])
        .arg(&m.alice)))
    .unwrap();
    let returned = out[0]["returned"].as_u64().unwrap();
    let used = out[0]["used"].as_u64().unwrap();
    assert_eq!(returned + used, 600);
    assert!(used >= 2, "it ran a few seconds: {used}");
    let (status, _, _) = m.status(&id);
    assert_eq!(status, "closed");
    let b = until("the escrow to settle", 30, || {
        let b = m.balances();
        (credits(&b, "Provider") == used as i64).then_some(b)
    });
    assert_eq!(credits(&b, "Alice"), 1000 - used as i64);
    let dir = m.data.join("leases").join(&id);
    until("the container to be removed", 20, || {
        (!dir.exists()).then_some(())
    });

    // ledger-cli reads the books: the payment and the earnings balance,
    // the escrow is empty.
    let journal = m.tmp.path().join("books.ledger");
    ok(utter(&m.data)
        .args(["accounting", "export", "--format", "ledger", "-o"])
        .arg(&journal));
    let out = Command::new("ledger")
        .arg("-f")
        .arg(&journal)
        .args(["balance", "--flat", "--empty", "escrow"])
        .output()
        .expect("ledger runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("escrow:{id}")), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains(&id))
            .all(|l| l.trim_start().starts_with('0')),
        "the lease's escrow ends at zero: {text}"
    );
    drop(m.node.take());
    ok(utter(&m.data).args(["verify", "--reexecute"]));
    let _ = &m.provider;
}

/// `ssh-keygen -l`'s fingerprint of the key at `path`.
fn fingerprint(path: &Path) -> String {
    let out = ok(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub")));
    out.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn only_the_key_that_paid_logs_in_and_its_session_ends_when_the_lease_runs_dry() {
    let m = market();
    until("the node to serve QUIC", 30, || {
        m.data.join("node.p2p").exists().then_some(())
    });
    ok(m.lease()
        .args(["offer", "shell", "--price", "60", "--grace", "1m"]));
    let id = m.open("shell", 600, &m.alice);
    m.wait_status(&id, "running", 30);
    let exec = |key: &Path, args: &[&str]| {
        let mut c = m.lease();
        c.args(["exec", &id, "--key"]).arg(key).args(args);
        c
    };

    // The owner: its container's files, stdout and stderr apart, the exit
    // code passed on.
    let out = run(exec(
        &m.alice,
        &["--", "sh", "-c", "cat /data/file; echo oops >&2; exit 7"],
    )
    .stdin(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // Input goes in, to its end.
    let mut child = exec(&m.alice, &["--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    {
        let mut stdin = child.stdin.take().unwrap();
        let input = input.clone();
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input).unwrap());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "cat gave back what it was sent");

    // -t: a terminal of the size asked (24x80 when this side has none).
    let out = run(exec(&m.alice, &["-t", "--", "stty", "size"]).stdin(std::process::Stdio::null()));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "24 80");

    // A command the image lacks: 127, as a shell says it.
    let out = run(exec(&m.alice, &["--", "no-such-command"]).stdin(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-command"),
        "{out:?}"
    );

    // Someone else's key: refused, both keys named, nothing run.
    let out = run(exec(&m.bob, &["--", "sh", "-c", "echo ran > /data/bob"])
        .stdin(std::process::Stdio::null()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("does not own"), "{err}");
    assert!(err.contains(&fingerprint(&m.bob)), "{err}");
    assert!(err.contains(&fingerprint(&m.alice)), "{err}");
    assert!(!m.data.join("leases").join(&id).join("data/bob").exists());

    // A stranger's bytes on the exec protocol: refused with the reason,
    // and the node serves the owner after them.
    for (bytes, why) in [
        (vec![42u8, 0, 0, 0, 0], "unknown kind"),
        (vec![6, 0xff, 0xff, 0xff, 0xff], "bytes (at most"),
        (
            utter_net::exec::Frame::Stdin(b"x".to_vec()).encode(),
            "starts with a request",
        ),
        (vec![1, 0, 0, 0, 2, b'{', b'}'], "malformed request"),
    ] {
        let got = hostile_exec(&m, &m.bob, bytes);
        assert!(got.contains(why), "{why}: {got}");
    }
    let out = run(exec(&m.alice, &["--", "echo", "still"]).stdin(std::process::Stdio::null()));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still\n", "{out:?}");

    // A lease that runs dry ends its sessions: 10 credits, 10 s.
    let dry = m.open("shell", 10, &m.alice);
    m.wait_live(&dry, 60);
    let started = Instant::now();
    let mut c = m.lease();
    c.args(["exec", &dry, "--key"])
        .arg(&m.alice)
        .args(["--", "sleep", "300"]);
    let out = run(c.stdin(std::process::Stdio::null()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("ran dry"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "{err}");
    m.wait_status(&dry, "halted", 60);
    // And a halted lease lets nobody in until it is topped up.
    let out = run(exec(&m.alice, &["--", "true"]).stdin(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut c = m.lease();
    c.args(["exec", &dry, "--key"])
        .arg(&m.alice)
        .args(["--", "true"]);
    let err =
        String::from_utf8_lossy(&run(c.stdin(std::process::Stdio::null())).stderr).into_owned();
    assert!(err.contains("top it up"), "{err}");
}

/// Sends `bytes` on an exec stream to the market's node as `key`; what
/// the node answered.
fn hostile_exec(m: &Market, key: &Path, bytes: Vec<u8>) -> String {
    use utter_net::exec::{Frame, FrameDecoder};
    use utter_net::{ALPN_EXEC, Endpoint, Identity};
    let target = std::fs::read_to_string(m.data.join("node.p2p")).unwrap();
    let addr: std::net::SocketAddr = target.trim().rsplit_once('@').unwrap().1.parse().unwrap();
    let key = utter_ledger::key::Keypair::load(key).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let endpoint = Endpoint::client(Identity::new(&key).unwrap(), false).unwrap();
        let conn = endpoint.connect(addr, ALPN_EXEC, None).await.unwrap();
        let (mut send, mut recv) = conn.open_stream().await.unwrap();
        send.write(bytes).await.unwrap();
        let mut d = FrameDecoder::default();
        loop {
            match recv.read(Duration::from_secs(20)).await {
                Ok(Some(b)) => d.feed(&b),
                Ok(None) => return "the stream ended".to_string(),
                Err(e) => return e.to_string(),
            }
            match d.frame() {
                Ok(Some(Frame::Refused(why))) => return why,
                Ok(Some(other)) => return format!("{other:?}"),
                Ok(None) => {}
                Err(e) => return e.to_string(),
            }
        }
    })
}

#[test]
fn thirty_small_leases_run_at_once_on_one_provider() {
    let m = market();
    ok(m.lease().args([
        "offer",
        "tiny",
        "--price",
        "6",
        "--grace",
        "1m",
        "--capacity",
        "30",
        "--memory",
        "16M",
        "--pids",
        "8",
        "--cpu",
        "0.05",
    ]));
    // A new key holds at most 3 leases: ten customers.
    let mut keys = Vec::new();
    for i in 0..10 {
        let (path, key) = ssh_key(m.tmp.path(), &format!("c{i}"));
        accepted(submit(
            &m.data,
            None,
            "membership",
            "add-member",
            json!({"key": key, "name": format!("Customer {i}")}),
        ));
        keys.push((path, key));
    }
    for (_, key) in &keys {
        accepted(submit(
            &m.data,
            None,
            "accounting",
            "mint",
            json!({"to": key, "amount": 100}),
        ));
    }
    let mut ids = Vec::new();
    for (path, _) in &keys {
        for _ in 0..3 {
            ids.push(m.open("tiny", 30, path));
        }
    }
    assert_eq!(ids.len(), 30);
    for id in &ids {
        m.wait_status(id, "running", 60);
    }
    // Every one runs its own program on its own /data, at once.
    for id in &ids {
        assert!(m.counting(id), "{id}");
    }
    // The offer is full.
    let err = fails(
        m.lease()
            .args([
                "open",
                "tiny",
                "--image",
                &m.image,
                "--deposit",
                "30",
                "--key",
            ])
            .arg(&m.bob),
    );
    assert!(err.contains("at capacity"), "{err}");
}

/// An HTTP GET of `/` from `addr`: the answer, when one came.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut got = String::new();
    s.read_to_string(&mut got).ok()?;
    (!got.is_empty()).then_some(got)
}

#[test]
fn a_published_port_serves_the_lease_s_web_app_and_the_lease_reaches_nothing() {
    let mut m = market();
    let err = fails(
        m.lease()
            .args(["offer", "bad", "--price", "6", "--port", "0"]),
    );
    assert!(err.contains("--port"), "{err}");
    ok(m.lease().args([
        "offer", "web", "--price", "6", "--grace", "1m", "--port", "8080",
    ]));
    let id = m.open_image("web", 600, &m.alice, &m.web);
    m.wait_live(&id, 60);
    let endpoint = until_or("the port to be forwarded", 60, &m, &id, || {
        let (_, _, v) = m.status(&id);
        v["lease"]["endpoints"][0].as_str().map(str::to_string)
    });
    let listed = ok(m.lease().args(["status", &id]));
    assert!(
        listed.contains(&format!("port 8080  reached at {endpoint}")),
        "{listed}"
    );
    let page = until("the web app to answer", 30, || http_get(&endpoint));
    assert!(page.contains("served from a lease"), "{page}");

    // From inside: no host service, not even on the link's other end, and
    // no route anywhere else.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port().to_string();
    let endpoint_port = endpoint.rsplit_once(':').unwrap().1.to_string();
    let nc = |to: &str, port: &str| {
        run(m
            .lease()
            .args(["exec", &id, "--key"])
            .arg(&m.alice)
            .args(["--", "sh", "-c"])
            .arg(format!(
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {to} {port}"
            ))
            .stdin(std::process::Stdio::null()))
    };
    // nc works in there: the lease's own server answers it.
    let out = nc("127.0.0.1", "8080");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("served from a lease"),
        "{out:?}"
    );
    for (to, port) in [
        ("10.213.0.1", &port),
        ("10.213.0.1", &endpoint_port),
        ("192.0.2.1", &port),
    ] {
        let out = nc(to, port);
        assert_eq!(out.status.code(), Some(1), "reached {to}:{port}? {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            ["refused", "unreachable", "timed out"]
                .iter()
                .any(|w| err.contains(w)),
            "{to}:{port}: {err}"
        );
    }
    assert!(host.accept().is_err(), "the lease reached the host");

    // The provider killed and restarted: the same address serves again.
    m.node.take().unwrap().kill_9();
    m.node = Some(Node::start(&m.data, &["--p2p", "127.0.0.1:0"]));
    let page = until("the web app to answer after the restart", 60, || {
        http_get(&endpoint)
    });
    assert!(page.contains("served from a lease"), "{page}");
    let (_, _, v) = m.status(&id);
    assert_eq!(v["lease"]["endpoints"][0], endpoint.as_str());

    // Closed: the port is gone, and so is the node's ports namespace.
    ok(m.lease().args(["close", &id, "--key"]).arg(&m.alice));
    let netns = utter_node::ports::netns_name(&m.data);
    until("the forward and the namespace to be removed", 60, || {
        let listed = run(Command::new("ip").args(["netns", "list"]));
        let gone = !String::from_utf8_lossy(&listed.stdout).contains(&netns);
        (gone && http_get(&endpoint).is_none()).then_some(())
    });
}

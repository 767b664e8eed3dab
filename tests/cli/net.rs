//! Nodes talking, as an operator runs them: `utter node run --p2p`, `utter
//! clone`, `utter sync`, `utter peers`, with real processes on loopback and
//! in network namespaces the test makes (and removes) itself. Oracles: git
//! (`fsck --strict`, every ref the same on both sides), `utter chunks
//! verify`, `utter verify --reexecute` (the images came and run there).

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

const SALT: &str = "00112233445566778899aabbccddeeff";

/// A node process; SIGTERM and wait on drop.
pub(crate) struct Node {
    child: Child,
    data: PathBuf,
}

impl Node {
    /// `utter node run` on loopback with `--p2p` (and `extra`), optionally
    /// inside network namespace `ns`.
    pub(crate) fn start(data: &Path, ns: Option<&str>, p2p: &str, extra: &[&str]) -> Self {
        Self::start_env(data, ns, p2p, extra, &[])
    }

    /// Like `start`, with these environment variables set for the node.
    pub(crate) fn start_env(
        data: &Path,
        ns: Option<&str>,
        p2p: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        for f in ["node.addr", "node.p2p"] {
            let _ = std::fs::remove_file(data.join(f));
        }
        let mut cmd = in_ns(ns, data);
        cmd.envs(env.iter().copied());
        cmd.args(["node", "run", "--listen", "127.0.0.1:0", "--block-ms", "20"])
            .args(["--p2p", p2p, "--sync-ms", "200"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the node starts");
        let started = Instant::now();
        while !data.join("node.p2p").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("the node exited with {status}: {err}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the node never served"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            data: data.to_path_buf(),
        }
    }

    /// `SHA256:…@HOST:PORT`, to clone it.
    pub(crate) fn target(&self) -> String {
        std::fs::read_to_string(self.data.join("node.p2p"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub(crate) fn addr(&self) -> String {
        self.target().split_once('@').unwrap().1.to_string()
    }

    /// SIGTERM, wait, and what it wrote to stderr.
    pub(crate) fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        std::mem::forget(self);
        err
    }

    /// The node's API.
    pub(crate) fn client(&self) -> utter_client::Client {
        utter_client::Client::new(
            std::fs::read_to_string(self.data.join("node.addr"))
                .unwrap()
                .trim(),
        )
    }

    pub(crate) fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `utter --data-dir DATA`, inside network namespace `ns` when given.
/// Entered with `nsenter --net` rather than `ip netns exec`, which also
/// mounts a sysfs of its own and so hides the host's cgroup hierarchies
/// the containers need.
pub(crate) fn in_ns(ns: Option<&str>, data: &Path) -> Command {
    match ns {
        None => utter(data),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .args([env!("CARGO_BIN_EXE_utter"), "--data-dir"])
                .arg(data);
            c.env_remove("UTTER_DATA_DIR");
            c
        }
    }
}

pub(crate) fn key_of(data: &Path) -> String {
    let v: Value = serde_json::from_str(&ok(utter(data).args(["key", "show", "--json"]))).unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

/// main of a data dir, read with git.
pub(crate) fn git_main(data: &Path) -> String {
    refs(data)
        .into_iter()
        .find(|(n, _)| n == "refs/heads/main")
        .map(|(_, id)| id)
        .unwrap_or_default()
}

/// Every ref of a ledger, with git.
fn refs(data: &Path) -> Vec<(String, String)> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(data.join("ledger.git"))
        .args(["for-each-ref", "--format=%(refname) %(objectname)"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

fn fsck(data: &Path) {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(data.join("ledger.git"))
        .args(["fsck", "--strict"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git fsck --strict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `data`'s main is `main` (a node there syncs).
pub(crate) fn wait_for_main(data: &Path, main: &str) {
    let started = Instant::now();
    while git_main(data) != main {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never reached main {main}",
            data.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Submits a transaction to the node on `data` and waits for its block.
fn submit(data: &Path, ns: Option<&str>, dapp: &str, action: &str, args: Value) {
    ok(in_ns(ns, data).args([
        "tx",
        "submit",
        dapp,
        action,
        "--args",
        &args.to_string(),
        "--wait",
    ]));
}

#[test]
fn nodes_clone_follow_and_agree_with_git_as_the_oracle() {
    let dir = run::setup();
    let a = dir.path().join("data");
    ok(utter(&a).args(["init", "--chain", "space", "--dapp", "counter=counter"]));
    let na = Node::start(&a, None, "127.0.0.1:0", &[]);
    let admin = key_of(&a);
    submit(
        &a,
        None,
        "membership",
        "add-member",
        json!({"key": admin, "name": "Ada", "salt": SALT}),
    );
    submit(&a, None, "counter", "add", json!({"name": "visits"}));

    // A clone: the ledger, the images (the counter runs there), verified.
    let b = dir.path().join("b");
    let out = ok(utter(&b).args(["clone", "--json", &na.target()]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["chain"], "space");
    assert!(v["chunks"].as_u64().unwrap() > 0, "images came: {v}");
    assert_eq!(git_main(&b), git_main(&a));
    fsck(&b);
    let verified = ok(utter(&b).args(["verify", "--reexecute"]));
    assert!(
        verified.contains("each gives exactly its state"),
        "{verified}"
    );
    ok(utter(&b).args(["chunks", "verify"]));

    // B follows A; C clones from B (which serves what it has).
    let nb = Node::start(&b, None, "127.0.0.1:0", &["--peer", &na.addr()]);
    let c = dir.path().join("c");
    ok(utter(&c).args(["clone", &nb.target()]));
    submit(&a, None, "counter", "add", json!({"name": "visits"}));
    let main = git_main(&a);
    wait_for_main(&b, &main);
    // C pulls once from B.
    let synced = ok(utter(&c).args(["sync", "--json", &nb.addr()]));
    assert!(synced.contains("\"ok\":true"), "{synced}");
    assert_eq!(git_main(&c), main);
    // Every ref agrees (certificates of a one-validator chain: none).
    assert_eq!(refs(&b), refs(&a));
    assert_eq!(refs(&c), refs(&a));
    fsck(&c);
    // B refuses transactions it cannot put in a block, and says where to.
    let out = run(utter(&b).args([
        "tx",
        "submit",
        "counter",
        "add",
        "--args",
        r#"{"name":"x"}"#,
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("submit to a validator"));
    // The peers each side knows.
    let peers = ok(utter(&b).args(["peers", "--json"]));
    let peer: Value = serde_json::from_str(peers.lines().next().unwrap()).unwrap();
    assert_eq!(peer["addr"], na.addr());
    assert_eq!(peer["key"], admin);
    drop(nb);
    drop(na);
    let verified = ok(utter(&c).args(["verify", "--reexecute"]));
    assert!(verified.contains("re-executed 3 blocks"), "{verified}");
}

#[test]
fn a_private_node_lets_in_only_keys_the_chain_names_or_its_operator_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    ok(utter(&a).args(["init", "--chain", "space"]));
    let na = Node::start(&a, None, "127.0.0.1:0", &["--private"]);
    let b = tmp.path().join("b");
    ok(utter(&b).args(["key", "gen"]));
    let err = fails(utter(&b).args(["clone", &na.target()]));
    assert!(err.contains("refused this node's key"), "{err}");
    assert!(err.contains("utter peers allow"), "{err}");
    assert!(!b.join("ledger.git").exists());
    let allowed = ok(utter(&a).args(["peers", "allow", &key_of(&b)]));
    assert!(allowed.contains("allowed"), "{allowed}");
    ok(utter(&b).args(["clone", &na.target()]));
    assert_eq!(git_main(&b), git_main(&a));
    // A fingerprint that is not the peer's is refused by the cloner.
    let c = tmp.path().join("c");
    let wrong = format!("SHA256:{}@{}", "A".repeat(43), na.addr());
    let err = fails(utter(&c).args(["clone", &wrong]));
    assert!(err.contains("not the one pinned"), "{err}");
    // Bad input gets a clear error.
    let err = fails(utter(&c).args(["clone", "127.0.0.1:9"]));
    assert!(err.contains("SHA256:FINGERPRINT@HOST:PORT"), "{err}");
    let err = fails(utter(&c).args(["peers", "allow", "not a key"]));
    assert!(err.contains("not an OpenSSH ed25519 public key"), "{err}");
}

#[test]
fn a_clone_killed_mid_transfer_resumes_without_fetching_again_what_it_has() {
    let dir = run::setup();
    let a = dir.path().join("data");
    // An image with a 48 MiB layer of noise, deployed at genesis.
    let tree = dir.path().join("big");
    std::fs::create_dir_all(&tree).unwrap();
    file(&tree, "noise", &noise(48 << 20, 9));
    ok(utter(&a).args(["image", "build"]).arg(&tree).args([
        "--entrypoint",
        "/noise",
        "--tag",
        "big",
    ]));
    ok(utter(&a).args(["init", "--chain", "space", "--dapp", "big=big"]));
    let v: Value =
        serde_json::from_str(&ok(utter(&a).args(["image", "inspect", "big", "--json"]))).unwrap();
    let big = v["id"].as_str().unwrap().to_string();
    let na = Node::start(&a, None, "127.0.0.1:0", &[]);
    let full = |data: &Path| -> Value {
        serde_json::from_str(&ok(utter(data).args(["clone", "--json", &na.target()]))).unwrap()
    };
    let reference = full(&dir.path().join("reference"));
    let total = reference["chunks"].as_u64().unwrap();
    assert!(total > 100, "{reference}");

    // Kill clones until one dies with some chunks stored and no ledger.
    let b = dir.path().join("b");
    let mut delay = Duration::from_millis(40);
    let killed_mid = loop {
        let _ = std::fs::remove_dir_all(&b);
        let mut child = utter(&b)
            .args(["clone", &na.target()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        child.wait().unwrap();
        let stats: Value = if b.join("db").exists() {
            serde_json::from_str(&ok(utter(&b).args(["chunks", "stats", "--json"]))).unwrap()
        } else {
            json!({"chunks": 0})
        };
        let stored = stats["chunks"].as_u64().unwrap_or(0);
        if !b.join("ledger.git").exists() && stored > 10 {
            break stored;
        }
        assert!(
            delay < Duration::from_secs(20),
            "no kill landed mid-transfer"
        );
        delay += Duration::from_millis(40);
    };
    // The next clone takes only what is missing, and the result verifies.
    let resumed = full(&b);
    let fetched = resumed["chunks"].as_u64().unwrap();
    assert!(
        fetched + killed_mid <= total + 8,
        "the resumed clone fetched {fetched} of {total} chunks, {killed_mid} were already there"
    );
    assert_eq!(git_main(&b), git_main(&a));
    fsck(&b);
    ok(utter(&b).args(["chunks", "verify"]));
    let verified = ok(utter(&b).args(["verify"]));
    assert!(verified.contains("all valid"), "{verified}");
    let images = ok(utter(&b).args(["image", "ls", "--json"]));
    assert!(images.contains(&big), "the big image is there: {images}");
}

/// Network namespaces joined by veth pairs to a bridge in a namespace of
/// their own; all removed on drop.
pub(crate) struct Lan {
    prefix: String,
    nodes: usize,
}

impl Lan {
    fn ip(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `n` hosts 10.77.0.1 … 10.77.0.n, links delayed and lossy by `netem`.
    pub(crate) fn new(n: usize, netem: &[&str]) -> Option<Self> {
        // Unique per LAN: tests run in parallel in one process.
        static LANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n_lan = LANS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let prefix = format!("ut{}l{n_lan}", std::process::id() % 100_000);
        let lan = Self {
            prefix: prefix.clone(),
            nodes: n,
        };
        let sw = format!("{prefix}sw");
        if !Self::ip(&["netns", "add", &sw]) {
            return None;
        }
        assert!(Self::ip(&[
            "-n", &sw, "link", "add", "br0", "type", "bridge"
        ]));
        assert!(Self::ip(&["-n", &sw, "link", "set", "br0", "up"]));
        for i in 1..=n {
            let ns = lan.ns(i);
            assert!(Self::ip(&["netns", "add", &ns]));
            let (host, port) = (format!("h{i}"), format!("p{i}"));
            assert!(Self::ip(&[
                "link", "add", &host, "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
                &sw
            ]));
            assert!(Self::ip(&[
                "-n", &sw, "link", "set", &port, "master", "br0", "up"
            ]));
            assert!(Self::ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{i}/24"),
                "dev",
                &host
            ]));
            assert!(Self::ip(&["-n", &ns, "link", "set", &host, "up"]));
            assert!(Self::ip(&["-n", &ns, "link", "set", "lo", "up"]));
            if !netem.is_empty() {
                let mut args = vec![
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &host, "root", "netem",
                ];
                args.extend_from_slice(netem);
                let impaired = Command::new("ip")
                    .args(&args)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !impaired {
                    // Some kernels (this VM's) have no sch_netem.
                    eprintln!("tc netem is not available on this kernel: the links run unimpaired");
                }
            }
        }
        Some(lan)
    }

    pub(crate) fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Cuts the hosts apart: each group gets a bridge of its own (the
    /// first keeps `br0`); hosts in no group are cut off alone.
    pub(crate) fn partition(&self, groups: &[&[usize]]) {
        let sw = self.switch();
        for i in 1..=self.nodes {
            let g = groups.iter().position(|g| g.contains(&i));
            let bridge = match g {
                Some(0) => "br0".to_string(),
                Some(g) => format!("br{g}"),
                None => format!("cut{i}"),
            };
            if bridge != "br0" {
                let _ = Command::new("ip")
                    .args(["-n", &sw, "link", "add", &bridge, "type", "bridge"])
                    .stderr(Stdio::null())
                    .status();
                assert!(Self::ip(&["-n", &sw, "link", "set", &bridge, "up"]));
            }
            assert!(Self::ip(&[
                "-n",
                &sw,
                "link",
                "set",
                &format!("p{i}"),
                "master",
                &bridge
            ]));
        }
    }

    /// Every host on `br0` again.
    pub(crate) fn heal(&self) {
        self.partition(&[&(1..=self.nodes).collect::<Vec<_>>()]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}sw", self.prefix)])
            .status();
    }
}

#[test]
fn three_nodes_in_network_namespaces_clone_and_follow_over_a_lossy_link() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let dir = run::setup();
    let a = dir.path().join("data");
    ok(utter(&a).args(["init", "--chain", "space", "--dapp", "counter=counter"]));
    let lan = Lan::new(3, &["delay", "5ms", "loss", "1%"]).expect("ip netns works as root");
    let (ns1, ns2, ns3) = (lan.ns(1), lan.ns(2), lan.ns(3));
    let n1 = Node::start(&a, Some(&ns1), "10.77.0.1:7448", &[]);
    submit(&a, Some(&ns1), "counter", "add", json!({"name": "visits"}));
    let b = dir.path().join("b");
    ok(in_ns(Some(&ns2), &b).args(["clone", &n1.target()]));
    let n2 = Node::start(
        &b,
        Some(&ns2),
        "10.77.0.2:7448",
        &["--peer", "10.77.0.1:7448"],
    );
    let c = dir.path().join("c");
    ok(in_ns(Some(&ns3), &c).args(["clone", &n2.target()]));
    let n3 = Node::start(
        &c,
        Some(&ns3),
        "10.77.0.3:7448",
        &["--peer", "10.77.0.2:7448"],
    );
    // New blocks on the first reach the third through the second.
    submit(&a, Some(&ns1), "counter", "add", json!({"name": "visits"}));
    submit(&a, Some(&ns1), "counter", "add", json!({"name": "visits"}));
    let main = git_main(&a);
    wait_for_main(&b, &main);
    wait_for_main(&c, &main);
    assert_eq!(refs(&c), refs(&a));
    drop(n3);
    drop(n2);
    n1.kill_9();
    fsck(&c);
    // The image came with the chain and runs on the third host.
    let verified = ok(in_ns(Some(&ns3), &c).args(["verify", "--reexecute"]));
    assert!(verified.contains("re-executed 3 blocks"), "{verified}");
    drop(lan);
}

#[test]
fn a_node_following_fetches_a_dapp_deployed_by_transaction_and_reexecutes_its_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    ok(utter(&a).args(["init", "--chain", "space"]));
    let na = Node::start(&a, None, "127.0.0.1:0", &[]);
    let b = tmp.path().join("b");
    ok(utter(&b).args(["clone", &na.target()]));
    let nb = Node::start(&b, None, "127.0.0.1:0", &["--peer", &na.addr()]);
    ok(utter(&a)
        .current_dir(tmp.path())
        .args(["dapp", "new", "hello", "--lang", "sh"]));
    let project = tmp.path().join("hello");
    ok(utter(&a).args(["dapp", "deploy", "hello"]).arg(&project));
    submit(&a, None, "hello", "greet", json!({"name": "Ada"}));
    let main = git_main(&a);
    wait_for_main(&b, &main);
    drop(nb);
    drop(na);
    // B fetched the image the deploy named: its blocks re-execute there.
    let verified = ok(utter(&b).args(["verify", "--reexecute"]));
    assert!(
        verified.contains("each gives exactly its state"),
        "{verified}"
    );
    assert_eq!(refs(&b), refs(&a));
    fsck(&b);
}

/// A validator of a chain of two writes a block no quorum voted for (with
/// `utter block propose`, as a Byzantine validator could) and serves it
/// as its main. A clone and a later sync take its blocks but never move
/// their main past what a certificate commits (here: genesis).
#[test]
fn a_main_no_quorum_certified_does_not_become_a_followers_main() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    ok(utter(&b).args(["key", "gen"]));
    ok(utter(&a)
        .args(["init", "--no-builtin", "--chain", "pair", "--validator"])
        .arg(format!("b={}", key_of(&b))));
    let genesis = git_main(&a);
    let lines = ok(utter(&a).args(["tx", "sign", "chain", "set", "--args", r#"{"text":"x"}"#]));
    let lines: Vec<String> = lines.lines().map(str::to_string).collect();
    let block = chain::propose(&a, &lines);
    let uncertified = block["block"].as_str().unwrap().to_string();
    assert_eq!(
        git_main(&a),
        uncertified,
        "block propose moved a's own main"
    );

    let node = Node::start(&a, None, "127.0.0.1:0", &[]);
    ok(utter(&c).args(["clone", &node.target()]));
    assert_eq!(
        git_main(&c),
        genesis,
        "the clone's main is what is certified"
    );
    let out = ok(utter(&c).args(["sync", &node.addr(), "--json"]));
    assert_eq!(
        git_main(&c),
        genesis,
        "a sync does not move it either: {out}"
    );
    // The block itself is here (it verifies), just not main.
    assert!(
        Command::new("git")
            .arg("--git-dir")
            .arg(c.join("ledger.git"))
            .args(["cat-file", "-e", &uncertified])
            .status()
            .unwrap()
            .success()
    );
}

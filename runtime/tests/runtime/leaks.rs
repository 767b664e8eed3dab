//! Whatever fails, nothing is left behind: no container state, job
//! directory, mount, cgroup or process.

use std::fs;
use std::path::Path;
use std::time::Duration;

use utter_runtime::dapp::{Context, Entry, Invocation, invoke};
use utter_runtime::spec::DEFAULT_PATH;
use utter_runtime::{Limits, Sandbox, Stdio};

use crate::{env, exclusive, job, rootfs, sh};

#[derive(Debug, PartialEq, Eq)]
struct Counts {
    state: usize,
    jobs: usize,
    mounts: usize,
    cgroups: Vec<(String, usize)>,
    children: usize,
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn count(state: &Path, jobs: &Path) -> Counts {
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .count();
    // Every hierarchy: each v1 controller's, the unified one, and the
    // root itself when it is the unified one.
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies: Vec<String> = fs::read_dir(root)
        .expect("/sys/fs/cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    hierarchies.sort();
    hierarchies.push(String::new());
    let mut cgroups = Vec::new();
    for controller in hierarchies {
        let dir = root.join(&controller).join("utter");
        let dirs = fs::read_dir(&dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        cgroups.push((controller, dirs));
    }
    let me = std::process::id().to_string();
    let children = fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")
                        .map(|(_, rest)| rest.split(' ').nth(1) == Some(me.as_str()))
                })
                .unwrap_or(false)
        })
        .count();
    Counts {
        state: entries(state),
        jobs: entries(jobs),
        mounts,
        cgroups,
        children,
    }
}

#[test]
fn failing_runs_leave_nothing_behind() {
    let _g = exclusive();
    let e = env();
    let before = count(e.rt.state_dir(), e.rt.jobs_dir());
    for _ in 0..2 {
        let mut timeout = sh("sleep 100 & sleep 100");
        timeout.limits.timeout = Duration::from_millis(200);
        let mut oom = job(&["/hostile", "alloc"]);
        oom.limits.memory = 32 << 20;
        let mut bomb = sh("while :; do sleep 100 & done");
        bomb.limits.pids = 8;
        bomb.limits.timeout = Duration::from_secs(2);
        let mut flood = sh("yes");
        flood.limits.output = 4096;
        let mut bad_mount = sh("true");
        bad_mount.mounts.push(utter_runtime::Mount::Bind {
            source: "/no/such/dir".into(),
            target: "/x".into(),
            writable: false,
        });
        let mut file_in_the_way = sh("true");
        file_in_the_way.mounts.push(utter_runtime::Mount::Bind {
            source: e.dir.path().to_path_buf(),
            target: "/hostile".into(),
            writable: false,
        });
        for j in [
            timeout,
            oom,
            bomb,
            flood,
            sh("kill -KILL $$"),
            job(&["/missing"]),
            job(&["/bin"]),
            bad_mount,
            file_in_the_way,
        ] {
            let _ = e.rt.run(&j, Stdio::Capture);
        }
        let state = e.dir.path().join("state");
        fs::create_dir_all(&state).expect("mkdir");
        let inv = Invocation {
            rootfs: rootfs().to_path_buf(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "mknod /state/p p; exit 4".into(),
                "x".into(),
            ],
            env: vec![DEFAULT_PATH.into()],
            cwd: "/".into(),
            state,
            chain: None,
            context: Context {
                chain: "c".into(),
                dapp: "d".into(),
                entry: Entry::Apply,
                height: 1,
                time: 0,
                parent: String::new(),
                proposer: String::new(),
            },
            txs: Vec::new(),
            limits: Limits::default(),
            scratch: 1 << 20,
            changed: None,
        };
        drop(invoke(&e.rt, &inv));
        e.rt.start("leaky", &sh("sleep 1000")).expect("start");
        e.rt.stop("leaky", Duration::ZERO).expect("stop");
    }
    let after = count(e.rt.state_dir(), e.rt.jobs_dir());
    if before != after {
        let me = std::process::id().to_string();
        for entry in fs::read_dir("/proc").expect("proc").flatten() {
            if let Ok(stat) = fs::read_to_string(entry.path().join("stat")) {
                if stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.split(' ').nth(1) == Some(me.as_str()))
                {
                    eprintln!("child: {stat}");
                }
            }
        }
    }
    assert_eq!(before, after);
}

//! Detached containers: start, status, exec, log, stop.

use std::time::Duration;

use utter_runtime::detached::Status;
use utter_runtime::{Outcome, RunError, Stdio};

use crate::{env, sh, shared, text};

#[test]
fn start_exec_stop() {
    let _g = shared();
    let e = env();
    let mut job = sh("echo started; exec sleep 1000");
    job.limits.memory = 32 << 20;
    let pid = e.rt.start("lease-1", &job).expect("starts");
    assert!(pid > 1);
    assert_eq!(
        e.rt.status("lease-1").expect("status"),
        Status::Running(pid)
    );
    assert_eq!(e.rt.detached(), vec!["lease-1".to_string()]);
    let again = e.rt.start("lease-1", &job).expect_err("name taken");
    assert!(again.to_string().contains("exists"), "{again}");

    let f = e
        .rt
        .exec("lease-1", &["/bin/sh".into(), "-c".into(), "hostname; cat /proc/1/cmdline | tr '\\0' ' '; grep CapEff /proc/self/status; exit 3".into()], Stdio::Capture, Duration::from_secs(10), 1 << 20)
        .expect("exec");
    assert_eq!(f.outcome, Outcome::Exited(3), "{}", text(&f.stderr));
    let out = text(&f.stdout);
    assert!(
        out.starts_with("sandbox\nsleep 1000"),
        "same namespaces: {out}"
    );
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    // What execs leave in the state directory goes once it is old; a
    // fresh one (another exec starting now) stays.
    let state = e.rt.state_dir().join("d-lease-1");
    let stale = state.join("tenant-notify-stale.sock");
    let fresh = state.join("tenant-notify-fresh.sock");
    for p in [&stale, &fresh] {
        std::fs::write(p, b"").expect("write");
    }
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)))
        .expect("age it");
    let f =
        e.rt.exec(
            "lease-1",
            &["/bin/sh".into(), "-c".into(), "true".into()],
            Stdio::Capture,
            Duration::from_secs(10),
            1 << 20,
        )
        .expect("exec");
    assert_eq!(f.outcome, Outcome::Exited(0), "{}", text(&f.stderr));
    assert!(!stale.exists(), "a stale tenant socket was kept");
    assert!(fresh.exists(), "a fresh tenant socket was removed");
    let slow =
        e.rt.exec(
            "lease-1",
            &["sleep".into(), "100".into()],
            Stdio::Capture,
            Duration::from_millis(300),
            1 << 20,
        )
        .expect("exec");
    assert!(matches!(slow.outcome, Outcome::TimedOut(_)));
    // The container runs on after a timed-out exec.
    assert_eq!(
        e.rt.status("lease-1").expect("status"),
        Status::Running(pid)
    );
    assert_eq!(text(&e.rt.log("lease-1").expect("log")), "started\n");

    let ended =
        e.rt.stop("lease-1", Duration::from_millis(200))
            .expect("stops");
    // sleep is the namespace's init, which ignores SIGTERM without a
    // handler, so it gets SIGKILL after the grace period.
    assert_eq!(ended, Some(Outcome::Crashed(9)));
    assert!(matches!(
        e.rt.status("lease-1"),
        Err(RunError::NoSuchContainer(_))
    ));
    assert!(e.rt.detached().is_empty());
    assert_eq!(std::fs::read_dir(e.rt.jobs_dir()).expect("jobs").count(), 0);
}

#[test]
fn exec_needs_a_running_container() {
    let _g = shared();
    let e = env();
    let err =
        e.rt.exec(
            "nope",
            &["true".into()],
            Stdio::Capture,
            Duration::from_secs(1),
            1024,
        )
        .expect_err("no container");
    assert!(matches!(err, RunError::NoSuchContainer(_)), "{err}");
    e.rt.start("short", &sh("exit 0")).expect("starts");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(e.rt.status("short").expect("status"), Status::Stopped);
    let err =
        e.rt.exec(
            "short",
            &["true".into()],
            Stdio::Capture,
            Duration::from_secs(1),
            1024,
        )
        .expect_err("stopped");
    assert!(err.to_string().contains("not running"), "{err}");
    assert_eq!(
        e.rt.stop("short", Duration::ZERO).expect("stop"),
        Some(Outcome::Exited(0))
    );
    let bad = e.rt.start("../x", &sh("true")).expect_err("bad name");
    assert!(bad.to_string().contains("not a container name"), "{bad}");
}

/// Waits up to 10 s for `f` to hold.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn freeze_keeps_processes_and_files_and_thaw_goes_on() {
    let _g = shared();
    let e = env();
    let data = e.dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let mut job = sh(
        "echo kept > /data/file; i=0; while :; do i=$((i+1)); echo $i > /data/n; sleep 0.02; done",
    );
    job.mounts.push(utter_runtime::spec::Mount::Bind {
        source: data.clone(),
        target: "/data".into(),
        writable: true,
    });
    let pid = e.rt.start("lease-f", &job).expect("starts");
    let count = || {
        std::fs::read_to_string(data.join("n"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    until("it counts", || count() > 3);
    e.rt.freeze("lease-f").expect("freezes");
    e.rt.freeze("lease-f").expect("freezing twice is fine");
    assert_eq!(e.rt.status("lease-f").expect("status"), Status::Frozen(pid));
    // Frozen: the process is there (same pid) and stops counting.
    let frozen_at = count();
    std::thread::sleep(Duration::from_millis(200));
    assert!(count() <= frozen_at + 1, "a frozen container ran on");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        std::fs::read_to_string(data.join("file")).expect("kept"),
        "kept\n"
    );
    let err =
        e.rt.exec(
            "lease-f",
            &["true".into()],
            Stdio::Capture,
            Duration::from_secs(1),
            1024,
        )
        .expect_err("no exec into a frozen container");
    assert!(err.to_string().contains("not running"), "{err}");
    e.rt.thaw("lease-f").expect("thaws");
    assert_eq!(
        e.rt.status("lease-f").expect("status"),
        Status::Running(pid)
    );
    let thawed_at = count();
    until("it counts again", || count() > thawed_at + 3);
    // A frozen container still stops (it is thawed to take the signal).
    e.rt.freeze("lease-f").expect("freezes");
    e.rt.stop("lease-f", Duration::from_millis(100))
        .expect("stops");
    assert!(e.rt.detached().is_empty());
}

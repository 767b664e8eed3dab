//! Plain runs: exit codes, output, the environment a container sees, and
//! each limit turning into its outcome.

use std::time::{Duration, Instant};

use utter_runtime::{Outcome, RunError, Sandbox, Stdio};

use crate::{env, job, sh, shared, text};

#[test]
fn exit_code_and_output_are_captured() {
    let _g = shared();
    let e = env();
    let f =
        e.rt.run(&sh("echo out; echo err >&2; exit 7"), Stdio::Capture)
            .expect("runs");
    assert_eq!(f.outcome, Outcome::Exited(7));
    assert_eq!(text(&f.stdout), "out\n");
    assert_eq!(text(&f.stderr), "err\n");
}

#[test]
fn the_container_sees_a_fixed_small_world() {
    let _g = shared();
    let e = env();
    let f =
        e.rt.run(
            &sh(
                "env | sort; hostname; echo pid=$$; ls /proc | grep -E '^[0-9]+$' | wc -l; \
                 ls /dev; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                 cat /proc/net/dev | tail -n +3 | cut -d: -f1",
            ),
            Stdio::Capture,
        )
        .expect("runs");
    assert_eq!(f.outcome, Outcome::Exited(0), "{}", text(&f.stderr));
    let out = text(&f.stdout);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    // Only what the job set (and what sh itself adds).
    assert!(lines.contains(&"HOME=/"), "{out}");
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("CARGO") || l.starts_with("USER=")),
        "host environment leaked: {out}"
    );
    assert!(lines.contains(&"sandbox"), "hostname: {out}");
    assert!(lines.contains(&"pid=1"), "own pid namespace: {out}");
    for dev in ["null", "zero", "urandom"] {
        assert!(lines.contains(&dev), "/dev/{dev}: {out}");
    }
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "seccomp filter: {out}");
    // The only network interface is loopback.
    assert_eq!(lines.last(), Some(&"lo"), "{out}");
}

#[test]
fn rootfs_is_read_only_and_tmp_is_writable() {
    let _g = shared();
    let e = env();
    let f =
        e.rt.run(
            &sh("touch /bin/evil 2>&1; echo $?; echo hi > /tmp/x && cat /tmp/x"),
            Stdio::Capture,
        )
        .expect("runs");
    let out = text(&f.stdout);
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.ends_with("1\nhi\n"), "{out}");
    assert!(!crate::rootfs().join("bin/evil").exists());
}

#[test]
fn a_signal_is_a_crash() {
    let _g = shared();
    let e = env();
    // A real fault: as the namespace's init the program ignores signals
    // sent to it, but not the kernel's SIGSEGV.
    let f =
        e.rt.run(&job(&["/hostile", "segv"]), Stdio::Capture)
            .expect("runs");
    assert_eq!(f.outcome, Outcome::Crashed(11));
    assert!(f.outcome.to_string().contains("SIGSEGV"));
}

#[test]
fn endless_loop_times_out_within_a_second_of_the_limit() {
    let _g = shared();
    let e = env();
    let mut j = sh("while :; do :; done");
    j.limits.timeout = Duration::from_millis(800);
    let started = Instant::now();
    let f = e.rt.run(&j, Stdio::Capture).expect("runs");
    assert_eq!(f.outcome, Outcome::TimedOut(Duration::from_millis(800)));
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn timeout_kills_every_process_of_the_container() {
    let _g = shared();
    let e = env();
    // The children ignore SIGTERM and outlive their shell unless the
    // whole namespace is killed.
    let mut j = sh("trap '' TERM; for i in 1 2 3; do sleep 1000 & done; sleep 1000");
    j.limits.timeout = Duration::from_millis(500);
    let f = e.rt.run(&j, Stdio::Capture).expect("runs");
    assert!(matches!(f.outcome, Outcome::TimedOut(_)));
    let sleepers = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 1000$"])
        .output()
        .expect("pgrep");
    assert!(
        sleepers.stdout.is_empty(),
        "left running: {}",
        text(&sleepers.stdout)
    );
}

#[test]
fn fork_bomb_hits_the_pids_limit() {
    let _g = shared();
    let e = env();
    let mut j = sh("while :; do sleep 100 & done");
    j.limits.pids = 16;
    j.limits.timeout = Duration::from_secs(3);
    let f = e.rt.run(&j, Stdio::Capture).expect("runs");
    assert_eq!(f.outcome, Outcome::PidsLimit { limit: 16 });
    assert!(f.outcome.to_string().contains("--pids"));
}

#[test]
fn allocating_without_end_is_out_of_memory() {
    let _g = shared();
    let e = env();
    let mut j = job(&["/hostile", "alloc"]);
    j.limits.memory = 64 << 20;
    let f = e.rt.run(&j, Stdio::Capture).expect("runs");
    assert_eq!(
        f.outcome,
        Outcome::OutOfMemory { limit: 64 << 20 },
        "{}",
        text(&f.stderr)
    );
}

#[test]
fn a_gigabyte_of_output_is_cut_at_the_cap() {
    let _g = shared();
    let e = env();
    let mut j = sh("head -c 1000000000 /dev/zero");
    j.limits.output = 256 << 10;
    let started = Instant::now();
    let f = e.rt.run(&j, Stdio::Capture).expect("runs");
    assert_eq!(f.outcome, Outcome::OutputTruncated { cap: 256 << 10 });
    assert_eq!(f.stdout.len(), 256 << 10);
    // Killed at the cap, not after writing a gigabyte.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_missing_entrypoint_is_an_error_naming_it() {
    let _g = shared();
    let e = env();
    let err =
        e.rt.run(&job(&["/no/such/program"]), Stdio::Capture)
            .expect_err("cannot start");
    assert!(matches!(err, RunError::NoCommand(_)), "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}

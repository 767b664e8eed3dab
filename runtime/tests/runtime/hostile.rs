//! A dapp trying to get out: each attempt ends with a clear outcome and
//! the host unharmed.

use std::io::ErrorKind;
use std::net::TcpListener;

use utter_runtime::{Outcome, Sandbox, Stdio};

use crate::{env, job, sh, shared, text};

fn refused(args: &[&str]) -> String {
    let _g = shared();
    let e = env();
    let f = e.rt.run(&job(args), Stdio::Capture).expect("runs");
    let out = text(&f.stdout);
    assert_eq!(
        f.outcome,
        Outcome::Exited(1),
        "{args:?} was not refused: {out}{}",
        text(&f.stderr)
    );
    assert!(out.contains("refused"), "{out}");
    out
}

#[test]
fn no_connection_reaches_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let out = refused(&["/hostile", "connect", &addr]);
    assert!(
        out.contains("unreachable") || out.contains("refused"),
        "{out}"
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host listener saw something: {other:?}"),
    }
}

#[test]
fn ptrace_is_denied() {
    let out = refused(&["/hostile", "ptrace"]);
    assert!(out.contains("Operation not permitted"), "{out}");
}

#[test]
fn raw_sockets_are_denied() {
    refused(&["/hostile", "raw-socket"]);
}

#[test]
fn mount_is_denied() {
    let out = refused(&["/hostile", "mount"]);
    assert!(out.contains("Operation not permitted"), "{out}");
}

#[test]
fn a_new_user_namespace_is_denied() {
    refused(&["/hostile", "unshare-user"]);
}

/// The filter covers x86-64's own ABI only: a system call through the
/// 32-bit entry (which has its own numbers, so a deny list written for one
/// ABI would not cover it) kills the process with SIGSYS.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_32_bit_system_call_entry_is_closed() {
    let _g = shared();
    let e = env();
    let f =
        e.rt.run(&job(&["/hostile", "compat-syscall"]), Stdio::Capture)
            .expect("runs");
    assert_eq!(
        f.outcome,
        Outcome::Crashed(31),
        "a 32-bit system call was not killed: {}{}",
        text(&f.stdout),
        text(&f.stderr)
    );
}

#[test]
fn host_files_are_out_of_reach_through_proc() {
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "host secret").expect("write");
    let path = secret.display().to_string();
    let _g = shared();
    let e = env();
    let f =
        e.rt.run(
            &sh(&format!(
                "for p in /proc/[0-9]*; do cat $p/root{path} 2>/dev/null; done; \
                 cat /proc/1/root{path}; ls /proc/1/root/"
            )),
            Stdio::Capture,
        )
        .expect("runs");
    let out = text(&f.stdout);
    assert!(!out.contains("host secret"), "{out}");
    // /proc/1 is the container's own init, whose root is the image.
    assert!(out.contains("hostile"), "{out}");
    assert!(
        text(&f.stderr).contains("No such file"),
        "{}",
        text(&f.stderr)
    );
}

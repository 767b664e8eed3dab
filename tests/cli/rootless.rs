//! Rootless: `utter run` and `utter dapp run` as an ordinary user
//! (`nobody`), through a user namespace. CI runs as root, so each test
//! drops to `nobody` with `setpriv`; to try the cgroup v2 path on a host
//! with v1 controllers, the command runs in a private mount namespace with
//! the unified hierarchy mounted on `/sys/fs/cgroup`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde_json::Value;

use super::*;

const NOBODY: u32 = 65534;

/// A directory `nobody` owns, holding a copy of the utter binary (CI's
/// target directory is under root's home, which `nobody` cannot enter)
/// and a busybox tree with `/dapp/mut.sh`, a dapp that changes its state
/// in every way an overlay records.
fn nobody_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("utter-rootless")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let root = dir.path();
    std::fs::copy(env!("CARGO_BIN_EXE_utter"), root.join("utter")).expect("copy utter");
    let tree = root.join("bb");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::create_dir_all(tree.join("dapp")).expect("mkdir");
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "id", "cat", "grep", "ls", "sleep", "touch", "rm", "mkdir", "seq",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).expect("symlink");
    }
    file(
        &tree.join("dapp"),
        "mut.sh",
        b"rm /state/gone\nrm -r /state/dir\nmkdir /state/dir\necho new > /state/dir/f\n\
          echo hi > /state/added\n: > /block/results.jsonl\n",
    );
    let state = root.join("state");
    std::fs::create_dir_all(state.join("dir")).expect("mkdir");
    file(&state, "gone", b"old\n");
    file(&state.join("dir"), "old", b"old\n");
    file(root, "empty.jsonl", b"");
    let status = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(root)
        .status()
        .expect("chown");
    assert!(status.success());
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `utter --data-dir DIR/data ARGS…` as `nobody`; with `unified`, in a
/// mount namespace where `/sys/fs/cgroup` is cgroup v2.
fn as_nobody(dir: &Path, unified: bool, args: &[&str]) -> Command {
    let utter = dir.join("utter");
    let data = dir.join("data");
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"]);
    let mount = if unified {
        "mount -t cgroup2 none /sys/fs/cgroup && "
    } else {
        ""
    };
    c.arg(format!(
        "{mount}exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups \"$@\""
    ));
    c.arg("sh")
        .arg(utter)
        .arg("--data-dir")
        .arg(data)
        .args(args);
    c.env("HOME", dir)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("UTTER_DATA_DIR")
        .current_dir(dir);
    c
}

fn host_is_unified() -> bool {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/cgroup"])
        .output()
        .expect("stat");
    String::from_utf8_lossy(&out.stdout).trim() == "cgroup2fs"
}

fn build_bb(dir: &Path, unified: bool) {
    ok(&mut as_nobody(
        dir,
        unified,
        &[
            "image",
            "build",
            "bb",
            "--entrypoint",
            "/bin/sh",
            "--tag",
            "bb",
        ],
    ));
}

#[test]
fn rootless_on_this_host_runs_or_says_why_not() {
    let dir = nobody_dir();
    build_bb(dir.path(), false);
    let mut cmd = as_nobody(dir.path(), false, &["run", "bb", "--", "/bin/true"]);
    if host_is_unified() {
        ok(&mut cmd);
    } else {
        let err = fails(&mut cmd);
        assert!(err.contains("cgroup v1"), "{err}");
        assert!(err.contains("run utter as root"), "{err}");
    }
}

#[test]
fn rootless_containers_map_the_user_and_keep_their_limits() {
    let dir = nobody_dir();
    build_bb(dir.path(), true);
    let out = ok(&mut as_nobody(
        dir.path(),
        true,
        &[
            "run",
            "--json",
            "--memory",
            "64M",
            "--pids",
            "8",
            "bb",
            "--",
            "/bin/sh",
            "-c",
            "id -u; cat /proc/self/uid_map; ulimit -u; ulimit -d; grep CapEff /proc/self/status; \
             touch /rootfs-write 2>&1 || true",
        ],
    ));
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["outcome"], "exited", "{out}");
    let stdout = v["stdout"].as_str().expect("stdout");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "root inside: {stdout}");
    assert_eq!(
        lines[1],
        ["0", "65534", "1"],
        "only nobody is mapped: {stdout}"
    );
    assert_eq!(lines[2], ["8"], "RLIMIT_NPROC is --pids: {stdout}");
    assert_eq!(lines[3], ["65536"], "RLIMIT_DATA is --memory: {stdout}");
    assert_eq!(lines[4], ["CapEff:", "0000000000000000"], "{stdout}");
    assert!(stdout.contains("Read-only file system"), "{stdout}");

    // A fork bomb stops at --pids: the shell's children plus itself.
    let out = run(&mut as_nobody(
        dir.path(),
        true,
        &[
            "run",
            "--json",
            "--pids",
            "8",
            "--timeout",
            "20s",
            "bb",
            "--",
            "/bin/sh",
            "-c",
            "(for i in $(seq 30); do sleep 20 & done) 2>/dev/null; exec ls /proc",
        ],
    ));
    let out = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&out).expect("json");
    let processes = v["stdout"]
        .as_str()
        .expect("stdout")
        .split_whitespace()
        .filter(|e| e.chars().all(|c| c.is_ascii_digit()))
        .count();
    assert!((2..=8).contains(&processes), "{processes} processes: {out}");

    // A timeout still kills the whole container.
    let out = run(&mut as_nobody(
        dir.path(),
        true,
        &[
            "run",
            "--timeout",
            "300ms",
            "bb",
            "--",
            "/bin/sh",
            "-c",
            "while :; do :; done",
        ],
    ));
    assert_eq!(out.status.code(), Some(124));

    // Nothing is left in the user's runtime directory.
    let jobs = std::fs::read_dir(format!("/tmp/utter-{NOBODY}"))
        .expect("runtime base")
        .flatten()
        .flat_map(|d| {
            std::fs::read_dir(d.path().join("jobs"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter(|e| e.path().starts_with(dir.path()))
        .count();
    assert_eq!(jobs, 0);
}

#[test]
fn rootless_dapp_run_reads_every_kind_of_change() {
    let dir = nobody_dir();
    ok(&mut as_nobody(
        dir.path(),
        true,
        &[
            "image",
            "build",
            "bb",
            "--entrypoint",
            r#"["/bin/sh","/dapp/mut.sh"]"#,
            "--tag",
            "mut",
        ],
    ));
    let out = ok(&mut as_nobody(
        dir.path(),
        true,
        &[
            "dapp",
            "run",
            "mut",
            "--state",
            "state",
            "--txs",
            "empty.jsonl",
            "--json",
        ],
    ));
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["outcome"], "exited", "{out}");
    let changes = v["changes"].as_array().expect("changes");
    let kind = |path: &str| {
        changes
            .iter()
            .find(|c| c["path"] == path)
            .unwrap_or_else(|| panic!("{path} not among the changes: {out}"))
            .clone()
    };
    assert_eq!(kind("gone")["kind"], "removed");
    assert_eq!(kind("dir")["kind"], "dir");
    assert_eq!(kind("dir")["opaque"], true, "{out}");
    assert_eq!(kind("dir/f")["kind"], "file");
    assert_eq!(kind("added")["kind"], "file");

    let state = dir.path().join("state");
    assert!(!state.join("gone").exists());
    assert!(!state.join("dir/old").exists());
    assert_eq!(
        std::fs::read_to_string(state.join("dir/f")).expect("f"),
        "new\n"
    );
    assert_eq!(
        std::fs::metadata(state.join("added")).expect("added").uid(),
        NOBODY,
        "the new state belongs to the user"
    );
}

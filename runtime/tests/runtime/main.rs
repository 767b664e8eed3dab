//! utter-runtime against the real thing: libcontainer containers on this
//! machine (as root), busybox and static Rust programs as their images.

mod dapp;
mod detached;
mod hostile;
mod leaks;
mod run;

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use utter_runtime::spec::DEFAULT_PATH;
use utter_runtime::{Job, Limits, Runtime};

/// Tests that run containers hold this shared; the leak test holds it
/// alone, so the host-wide counts it takes see only its own containers.
static CONTAINERS: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    CONTAINERS.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CONTAINERS.write().unwrap_or_else(|e| e.into_inner())
}

/// A runtime in a directory of its own.
struct Env {
    dir: tempfile::TempDir,
    rt: Runtime,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::open(dir.path().join("run")).expect("runtime opens (tests run as root)");
    Env { dir, rt }
}

/// One read-only rootfs for every test: busybox with all its applets,
/// `/hostile` and `/counter` (static), and the hello-sh dapp.
fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("runtime-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).expect("symlink");
            }
        }
        for (package, name) in [("utter-hostile", "hostile"), ("utter-counter", "counter")] {
            std::fs::copy(utter_testkit::static_binary(package, name), root.join(name))
                .expect("copy");
        }
        let dapp = root.join("dapp");
        std::fs::create_dir(&dapp).expect("mkdir");
        let script = utter_testkit::workspace().join("dapps/hello-sh/main.sh");
        std::fs::copy(script, dapp.join("main.sh")).expect("hello-sh");
        root
    })
}

/// A job running `script` with busybox's sh.
fn sh(script: &str) -> Job {
    job(&["/bin/sh", "-c", script])
}

fn job(args: &[&str]) -> Job {
    Job {
        rootfs: rootfs().to_path_buf(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![DEFAULT_PATH.into(), "HOME=/".into()],
        cwd: "/".into(),
        hostname: "sandbox".into(),
        mounts: vec![],
        limits: Limits {
            timeout: Duration::from_secs(20),
            ..Limits::default()
        },
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

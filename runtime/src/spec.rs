//! What to run and under which limits, and the OCI runtime spec
//! (`config.json`) that says it to libcontainer. Pure: no IO here, so the
//! sandbox's rules are read and tested in one place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// The limits a container runs under.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory (cgroup `memory` limit), bytes; includes the `/tmp` tmpfs.
    pub memory: u64,
    /// Processes and threads at once (cgroup `pids`).
    pub pids: u64,
    /// CPUs' worth of time per scheduling period (cgroup CPU quota), e.g.
    /// 0.5 is half of one core.
    pub cpus: f64,
    /// Wall-clock time from start to exit; then the container is killed.
    pub timeout: Duration,
    /// Bytes of stdout and stderr together that are captured; more kills
    /// the container. Not applied when stdio is attached to a terminal.
    pub output: u64,
    /// Size of the container's `/tmp` tmpfs, bytes.
    pub tmp: u64,
}

impl Default for Limits {
    /// The limits a dapp gets unless its chain says otherwise: small enough
    /// for a 1 GiB Raspberry Pi running several dapps in turn.
    fn default() -> Self {
        Self {
            memory: 256 << 20,
            pids: 64,
            cpus: 1.0,
            timeout: Duration::from_secs(30),
            output: 1 << 20,
            tmp: 16 << 20,
        }
    }
}

/// A host path made visible in the container.
#[derive(Debug, Clone, PartialEq)]
pub enum Mount {
    /// A bind mount of a file or directory.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Absolute path in the container.
        target: String,
        /// Mounted read-write; read-only otherwise.
        writable: bool,
    },
    /// An overlay: reads see `lower`, writes land in `upper` (with `work`,
    /// on the same filesystem as `upper`), `lower` is never changed.
    Overlay {
        /// The read-only lower directory.
        lower: PathBuf,
        /// The directory that receives every change.
        upper: PathBuf,
        /// Overlayfs's work directory, beside `upper`.
        work: PathBuf,
        /// Absolute path in the container.
        target: String,
    },
}

impl Mount {
    /// Where it appears in the container.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. } | Mount::Overlay { target, .. } => target,
        }
    }
}

/// One container to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The unpacked image, mounted read-only as `/`.
    pub rootfs: PathBuf,
    /// The command and its arguments (`args[0]` is looked up in `PATH`
    /// when it has no `/`).
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs: the whole environment; nothing comes from the host.
    pub env: Vec<String>,
    /// Working directory in the container.
    pub cwd: String,
    /// The container's hostname.
    pub hostname: String,
    /// Extra mounts, applied in order after `/proc`, `/dev` and `/tmp`.
    pub mounts: Vec<Mount>,
    /// Its limits.
    pub limits: Limits,
}

/// `PATH` when the image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The directories every container mounts something on; they must exist in
/// the rootfs because it is mounted read-only.
pub const BASE_MOUNT_POINTS: [&str; 3] = ["/proc", "/dev", "/tmp"];

/// Who creates the containers, which decides how limits are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Root: containers get cgroup limits on memory, processes and CPU.
    Root,
    /// An ordinary user, through a user namespace whose root is this user
    /// (`uid`, `gid`) outside it. Without a cgroup of its own the
    /// container's limits fall back to resource limits: memory per process
    /// (`RLIMIT_DATA`), processes of the container's user (`RLIMIT_NPROC`),
    /// and no CPU quota. The timeout and the output cap hold either way.
    Rootless {
        /// The user outside.
        uid: u32,
        /// The user's group outside.
        gid: u32,
    },
}

/// Scheduling period for the CPU quota, microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The OCI runtime spec for `job`, with its cgroup at `cgroup_path`, for
/// containers created with `privilege`. The container joins the network
/// namespace at `network` (a new, empty one made for it), or makes its own.
pub fn runtime_spec(
    job: &Job,
    cgroup_path: &str,
    privilege: Privilege,
    network: Option<&Path>,
) -> Value {
    let rootless = matches!(privilege, Privilege::Rootless { .. });
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "noexec", "strictatime", "mode=755", "size=64k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", format!("size={}", job.limits.tmp)]}),
    ];
    for mount in &job.mounts {
        mounts.push(match mount {
            Mount::Bind {
                source,
                target,
                writable,
            } => json!({
                "destination": target, "type": "bind", "source": source,
                "options": ["rbind", "nosuid", "nodev", if *writable { "rw" } else { "ro" }],
            }),
            Mount::Overlay {
                lower,
                upper,
                work,
                target,
            } => {
                let mut options = vec![
                    "nosuid".to_string(),
                    "nodev".into(),
                    format!("lowerdir={}", lower.display()),
                    format!("upperdir={}", upper.display()),
                    format!("workdir={}", work.display()),
                    // Every change is a plain file or whiteout in `upper`,
                    // so the changed paths can be read straight off it.
                    "redirect_dir=off".into(),
                    "metacopy=off".into(),
                    "index=off".into(),
                ];
                if rootless {
                    // Only root may set `trusted.*` attributes; an overlay
                    // mounted in a user namespace marks opaque directories
                    // with `user.overlay.opaque` instead, and then must not
                    // follow redirects either.
                    options.push("userxattr".into());
                    options.retain(|o| o != "redirect_dir=off");
                    options.push("redirect_dir=nofollow".into());
                }
                json!({
                    "destination": target, "type": "overlay", "source": "overlay",
                    "options": options,
                })
            }
        });
    }
    let quota = (job.limits.cpus * CPU_PERIOD_US as f64).round().max(1000.0) as i64;
    let no_caps: [&str; 0] = [];
    let mut rlimits = vec![
        json!({"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}),
        json!({"type": "RLIMIT_CORE", "hard": 0, "soft": 0}),
    ];
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "cgroup"}),
        match network {
            Some(path) => json!({"type": "network", "path": path}),
            None => json!({"type": "network"}),
        },
    ];
    let resources = match privilege {
        Privilege::Root => json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": job.limits.memory},
            "pids": {"limit": job.limits.pids},
            "cpu": {"quota": quota, "period": CPU_PERIOD_US},
        }),
        Privilege::Rootless { .. } => {
            rlimits.push(json!({"type": "RLIMIT_DATA",
                                "hard": job.limits.memory, "soft": job.limits.memory}));
            rlimits.push(json!({"type": "RLIMIT_NPROC",
                                "hard": job.limits.pids, "soft": job.limits.pids}));
            namespaces.push(json!({"type": "user"}));
            json!({})
        }
    };
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": job.args,
            "env": job.env,
            "cwd": job.cwd,
            "capabilities": {
                "bounding": no_caps, "effective": no_caps, "permitted": no_caps,
                "inheritable": no_caps, "ambient": no_caps,
            },
            "rlimits": rlimits,
            "noNewPrivileges": true,
        },
        "root": {"path": job.rootfs, "readonly": true},
        "hostname": job.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroup_path,
            "resources": resources,
            "rootfsPropagation": "private",
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
            "seccomp": seccomp_profile(),
        },
    });
    if let Privilege::Rootless { uid, gid } = privilege {
        // The container's root is the user outside, and nobody else.
        spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    }
    spec
}

/// System calls a container may not make (they fail with `EPERM`): kernel
/// modules and keys, mounts and namespaces, tracing other processes,
/// clocks, swap, reboot, io_uring (which bypasses this filter) and the
/// like. Everything else is allowed; capabilities are empty as well, so
/// this is a second wall, not the only one.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "vm86",
    "vm86old",
];

/// `CLONE_NEWUSER`: a new user namespace would hand the process a full set
/// of capabilities inside it, so `clone` with it is refused.
const CLONE_NEWUSER: u64 = 0x1000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The filter covers the one system-call ABI of the architecture utter is
/// built for. A call through any other (x86-64's 32-bit `int 0x80` and x32
/// entries, AArch64's AArch32 one) matches no architecture of the filter,
/// and libseccomp's action for that is to kill the caller: the compat
/// ABIs, with their own syscall numbers and a history of bugs, are not
/// reachable from a container. The price is that 32-bit binaries do not
/// run in utter's containers; images are built for the node's
/// architecture anyway. Compiling the filter for one ABI instead of three
/// also takes a third of the time in every container start.
fn seccomp_profile() -> Value {
    let architectures: &[&str] = if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64"]
    } else {
        // libseccomp's native architecture: the one it was built for.
        &[]
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": [
            {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            // clone3 passes its flags in memory a filter cannot read; with
            // ENOSYS libc falls back to clone, whose flags are checked.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
             "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceType, Spec};

    fn job() -> Job {
        Job {
            rootfs: "/images/rootfs/abc".into(),
            args: vec!["/bin/true".into()],
            env: vec![DEFAULT_PATH.into()],
            cwd: "/".into(),
            hostname: "dapp".into(),
            mounts: vec![
                Mount::Bind {
                    source: "/run/x/block".into(),
                    target: "/block".into(),
                    writable: false,
                },
                Mount::Overlay {
                    lower: "/state/lower".into(),
                    upper: "/run/x/upper".into(),
                    work: "/run/x/work".into(),
                    target: "/state".into(),
                },
            ],
            limits: Limits::default(),
        }
    }

    #[test]
    fn spec_parses_as_an_oci_runtime_spec_and_isolates() {
        let value = runtime_spec(&job(), "/utter/c1", Privilege::Root, None);
        let spec: Spec = serde_json::from_value(value).expect("a valid runtime spec");
        let linux = spec.linux().as_ref().expect("linux section");
        let namespaces: Vec<_> = linux
            .namespaces()
            .as_ref()
            .expect("namespaces")
            .iter()
            .map(|n| n.typ())
            .collect();
        for ns in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::Network,
        ] {
            assert!(namespaces.contains(&ns), "{ns:?}");
        }
        assert!(namespaces.iter().all(|ns| *ns != LinuxNamespaceType::User));
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().expect("capabilities");
        assert!(caps.bounding().as_ref().is_some_and(|c| c.is_empty()));
        assert!(caps.effective().as_ref().is_some_and(|c| c.is_empty()));
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let resources = linux.resources().as_ref().expect("resources");
        assert_eq!(
            resources.memory().as_ref().and_then(|m| m.limit()),
            Some(256 << 20)
        );
        assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(64));
        let seccomp = linux.seccomp().as_ref().expect("seccomp");
        let denied: Vec<&String> = seccomp
            .syscalls()
            .as_ref()
            .expect("rules")
            .iter()
            .flat_map(|s| s.names())
            .collect();
        for call in [
            "mount",
            "ptrace",
            "unshare",
            "setns",
            "bpf",
            "io_uring_setup",
        ] {
            assert!(denied.iter().any(|d| *d == call), "{call}");
        }
        let mounts = spec.mounts().as_ref().expect("mounts");
        let block = mounts
            .iter()
            .find(|m| m.destination().to_str() == Some("/block"))
            .expect("/block");
        assert!(
            block
                .options()
                .as_ref()
                .expect("opts")
                .contains(&"ro".into())
        );
        let state = mounts
            .iter()
            .find(|m| m.destination().to_str() == Some("/state"))
            .expect("/state");
        assert_eq!(state.typ().as_deref(), Some("overlay"));
    }

    #[test]
    fn a_made_network_namespace_is_joined_by_path() {
        let network = |path: Option<&Path>| {
            let value = runtime_spec(&job(), "/utter/c1", Privilege::Root, path);
            let spec: Spec = serde_json::from_value(value).expect("a valid runtime spec");
            let namespaces = spec.linux().as_ref().expect("linux").namespaces().clone();
            namespaces
                .expect("namespaces")
                .into_iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
                .expect("a network namespace")
        };
        assert_eq!(network(None).path(), &None);
        let joined = network(Some(Path::new("/proc/7/fd/9")));
        assert_eq!(joined.path().as_deref(), Some(Path::new("/proc/7/fd/9")));
    }

    #[test]
    fn rootless_spec_maps_the_user_and_limits_by_rlimits() {
        let value = runtime_spec(
            &job(),
            "/utter/c1",
            Privilege::Rootless {
                uid: 1000,
                gid: 100,
            },
            None,
        );
        let spec: Spec = serde_json::from_value(value.clone()).expect("a valid runtime spec");
        let linux = spec.linux().as_ref().expect("linux section");
        assert!(
            linux
                .namespaces()
                .as_ref()
                .expect("namespaces")
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::User)
        );
        let uids = linux.uid_mappings().as_ref().expect("uid mappings");
        assert_eq!(
            (uids[0].container_id(), uids[0].host_id(), uids[0].size()),
            (0, 1000, 1)
        );
        let gids = linux.gid_mappings().as_ref().expect("gid mappings");
        assert_eq!((gids[0].container_id(), gids[0].host_id()), (0, 100));
        // No cgroup resources: an ordinary user may not set them.
        assert_eq!(value["linux"]["resources"], json!({}));
        let rlimits = &value["process"]["rlimits"];
        let limit = |name: &str| {
            rlimits
                .as_array()
                .expect("rlimits")
                .iter()
                .find(|r| r["type"] == name)
                .map(|r| r["hard"].clone())
        };
        assert_eq!(limit("RLIMIT_DATA"), Some(json!(256 << 20)));
        assert_eq!(limit("RLIMIT_NPROC"), Some(json!(64)));
        let state = value["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/state")
            .expect("/state")
            .clone();
        assert!(
            state["options"]
                .as_array()
                .expect("options")
                .contains(&json!("userxattr"))
        );
    }

    #[test]
    fn cpu_quota_follows_cpus() {
        let mut j = job();
        j.limits.cpus = 0.5;
        let v = runtime_spec(&j, "/utter/c1", Privilege::Root, None);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        j.limits.cpus = 0.0;
        let v = runtime_spec(&j, "/utter/c1", Privilege::Root, None);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 1000);
    }
}

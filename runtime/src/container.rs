//! The driver: runs a [`Job`] in a youki (libcontainer) container in this
//! process, waits for it under its limits, reads what the cgroup saw, and
//! removes every trace of it (container state, cgroup, bundle) whatever
//! happened.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions, pidfd_open};

use crate::outcome::Outcome;
use crate::spec::{BASE_MOUNT_POINTS, Job, Mount, Privilege, runtime_spec};

/// Where a container's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// stdin is empty; stdout and stderr are captured up to the job's
    /// output limit.
    Capture,
    /// The container shares this process's stdin, stdout and stderr (for
    /// `utter run` at a terminal); nothing is captured.
    Inherit,
}

/// A finished run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Finished {
    /// How it ended.
    pub outcome: Outcome,
    /// Captured stdout (empty with [`Stdio::Inherit`]).
    pub stdout: Vec<u8>,
    /// Captured stderr (empty with [`Stdio::Inherit`]).
    pub stderr: Vec<u8>,
    /// From `start` to exit.
    pub elapsed: Duration,
}

/// Why a container could not be run at all (as opposed to an [`Outcome`],
/// which is how a container that ran ended).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Not root, and this user may not create user namespaces.
    #[error(
        "running containers needs root or unprivileged user namespaces, and {0}: \
         run utter as root, or allow user namespaces"
    )]
    NoUserNamespaces(String),
    /// Not root, on a host whose cgroups are v1.
    #[error(
        "this host uses cgroup v1, where only root may set a container's device rules, \
         so containers need root here: run utter as root (or boot the host with cgroup v2, \
         systemd.unified_cgroup_hierarchy=1)"
    )]
    RootlessCgroupV1,
    /// Preparing the bundle, scratch space or mount points failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// libcontainer refused or failed to create or start the container,
    /// e.g. the entrypoint does not exist in the image.
    #[error("cannot start the container: {0}")]
    Start(String),
    /// A mount point of the job is a file (or symlink) in the image where
    /// a directory is needed.
    #[error("the image has {path} but not as a directory, so it cannot be mounted on")]
    MountPoint {
        /// Path in the container.
        path: String,
    },
    /// The command is not in the image.
    #[error("the image has no {0}: check the image's entrypoint or the command given")]
    NoCommand(String),
    /// Waiting for the container failed.
    #[error("cannot wait for the container: {0}")]
    Wait(io::Error),
    /// No container with this name.
    #[error("no container named {0}; `utter` lists running ones with their names")]
    NoSuchContainer(String),
}

impl RunError {
    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> RunError + 'a {
        move |source| RunError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Anything that runs a [`Job`]: the seam between the dapp protocol and
/// the containers, in the style of libcontainer's own `Syscall` trait.
pub trait Sandbox {
    /// Runs `job` to its end.
    fn run(&self, job: &Job, stdio: Stdio) -> Result<Finished, RunError>;

    /// A private, empty scratch directory holding at most `size` bytes
    /// (files a job writes through its mounts), removed when dropped.
    fn scratch(&self, size: u64) -> Result<Scratch, RunError>;
}

/// A size-limited tmpfs for one job's writable files (a dapp's state
/// changes and results): a dapp that writes too much gets `ENOSPC`, not
/// the node's disk. Unmounted and removed on drop.
#[derive(Debug)]
pub struct Scratch {
    job_dir: PathBuf,
    path: PathBuf,
}

impl Scratch {
    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_job_dir(&self.job_dir);
    }
}

/// Runs containers with libcontainer. Its directory holds libcontainer's
/// state (`containers/`) and one bundle per container (`jobs/`); both are
/// emptied as each container ends, and whatever a killed process left is
/// removed when the next `Runtime` opens the directory.
#[derive(Debug)]
pub struct Runtime {
    state: PathBuf,
    jobs: PathBuf,
    privilege: Privilege,
    /// Make the next container's network namespace while this one runs.
    network_ahead: bool,
    /// That namespace, being made or made.
    next_network: std::sync::Mutex<Option<std::thread::JoinHandle<io::Result<OwnedFd>>>>,
}

/// Held around every libcontainer call that creates or starts a process:
/// libcontainer briefly changes the *process's* working directory to reach
/// its notify socket, so two such calls at once on different threads would
/// leave the process in a deleted directory. Creation is serialized; the
/// containers themselves run in parallel.
pub(crate) static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`CREATE`] (a panic elsewhere does not poison it for good).
pub(crate) fn create_lock() -> std::sync::MutexGuard<'static, ()> {
    CREATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Numbers this process's containers; ids are unique per process, and
/// across processes by the pid in them (cgroup paths are host-wide).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The longest path of a Unix socket (`sun_path`), which libcontainer
/// creates in each container's state directory.
const MAX_SOCKET_PATH: usize = 107;

impl Runtime {
    /// Opens (creating) the runtime directory `dir` and removes what dead
    /// processes left in it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, RunError> {
        let privilege = detect_privilege()?;
        let dir = dir.as_ref();
        let state = dir.join("containers");
        let jobs = dir.join("jobs");
        for d in [&state, &jobs] {
            fs::create_dir_all(d).map_err(RunError::io("create", d))?;
        }
        let state = state
            .canonicalize()
            .map_err(RunError::io("resolve", &state))?;
        let jobs = jobs
            .canonicalize()
            .map_err(RunError::io("resolve", &jobs))?;
        // "<state>/<id>/notify.sock" must fit in a socket address.
        if state.as_os_str().len() + "/u4294967295-18446744073709551615/notify.sock".len()
            > MAX_SOCKET_PATH
        {
            return Err(RunError::Io {
                what: "use",
                path: state,
                source: io::Error::other(
                    "the path is too long for the container's control socket; use a shorter --data-dir",
                ),
            });
        }
        // libcontainer's two child processes look CPU features up lazily
        // (the `memchr` crate asks std's detector, which runs `cpuid`, a
        // trap to the hypervisor on a VM) while the container is being
        // set up; looked up once here, they inherit the answer.
        #[cfg(target_arch = "x86_64")]
        let _ = std::arch::is_x86_feature_detected!("avx2");
        let runtime = Self {
            state,
            jobs,
            privilege,
            network_ahead: false,
            next_network: std::sync::Mutex::new(None),
        };
        runtime.sweep();
        Ok(runtime)
    }

    /// For a runtime that runs container after container (a node's
    /// helper): each container's network namespace is made in the
    /// background while the one before runs, so it is ready when the
    /// container starts. A one-off run would only make one to throw away.
    ///
    /// libcontainer forks with a raw `clone3`, which does not take glibc's
    /// allocator locks the way `fork` does; a thread freeing memory at that
    /// moment could leave the child with a lock held forever. So no thread
    /// of the runtime's runs while a container is created: the next
    /// namespace is started once the container is built, and joined
    /// before the next one is.
    pub fn with_network_ahead(mut self) -> Self {
        self.network_ahead = true;
        self
    }

    /// A new network namespace for the next container, as an open file,
    /// when the container will join one rather than make its own (as
    /// root: a rootless container's user namespace may not join one owned
    /// by the host's). Making one takes about 0.5 ms (registering the
    /// loopback device and the per-namespace sysctls); done here, on a
    /// thread of this process, it happens while the container's cgroup
    /// migration waits for the kernel instead of after it, in the
    /// container's init. Each container still gets a namespace of its own,
    /// new and untouched. `None` also when making one fails: the init then
    /// makes it, and reports the failure as before.
    fn network_namespace(&self) -> Option<OwnedFd> {
        if self.privilege != Privilege::Root {
            return None;
        }
        let made = self
            .next_network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .and_then(|thread| thread.join().ok())
            .and_then(Result::ok);
        made.or_else(|| make_network_namespace().ok()?.join().ok()?.ok())
    }

    /// Starts making the next container's network namespace, for a runtime
    /// [`with_network_ahead`](Self::with_network_ahead); called once a
    /// container is built.
    fn make_next_network(&self) {
        if self.network_ahead && self.privilege == Privilege::Root {
            let mut next = self.next_network.lock().unwrap_or_else(|e| e.into_inner());
            if next.is_none() {
                *next = make_network_namespace().ok();
            }
        }
    }

    /// Whether containers run as root with cgroup limits, or rootless.
    pub fn privilege(&self) -> Privilege {
        self.privilege
    }

    /// Creates directory `path` for a job's private files, holding at most
    /// `size` bytes: a tmpfs of that size as root. Rootless, a plain
    /// directory (an ordinary user may not mount), bounded only by the
    /// filesystem of the runtime directory.
    pub(crate) fn private_dir(&self, path: &Path, size: u64, mode: u32) -> Result<(), RunError> {
        match self.privilege {
            Privilege::Root => mount_tmpfs(path, size, mode),
            Privilege::Rootless { .. } => {
                fs::create_dir(path).map_err(RunError::io("create", path))?;
                fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(RunError::io("set the mode of", path))
            }
        }
    }

    /// libcontainer's state directory (one subdirectory per live container).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The directory of bundles and scratch space (one per live container).
    pub fn jobs_dir(&self) -> &Path {
        &self.jobs
    }

    /// A fresh id for a container of this process: `u<pid>-<n>`.
    pub(crate) fn new_id(&self) -> String {
        format!(
            "u{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A new job directory for container `id`.
    pub(crate) fn job_dir(&self, id: &str) -> Result<PathBuf, RunError> {
        let dir = self.jobs.join(id);
        fs::create_dir(&dir).map_err(RunError::io("create", &dir))?;
        Ok(dir)
    }

    /// Removes containers and job directories whose owning process (the
    /// pid in `u<pid>-<n>`) is gone; named (detached) containers are left
    /// to their owner.
    fn sweep(&self) {
        let alive = |name: &str| -> bool {
            let Some(pid) = name
                .strip_prefix('u')
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                return true;
            };
            pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists()
        };
        for (dir, is_state) in [(&self.state, true), (&self.jobs, false)] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if alive(&name) {
                    continue;
                }
                if is_state {
                    self.destroy(&name);
                } else {
                    remove_job_dir(&entry.path());
                }
            }
        }
    }

    /// Kills (if it runs), reaps (if it is ours) and deletes container
    /// `id`: its processes, cgroup and state directory. Best effort: it is
    /// called on every path out of a run and must not fail half way.
    pub(crate) fn destroy(&self, id: &str) {
        let root = self.state.join(id);
        match Container::load(root.clone()) {
            Ok(mut container) => {
                if let Some(pid) = container.pid().and_then(|p| Pid::from_raw(p.as_raw())) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                    reap(pid);
                }
                if let Err(err) = container.delete(true) {
                    // The cgroup may still hold a dying process; try once more.
                    std::thread::sleep(Duration::from_millis(20));
                    if container.delete(true).is_err() {
                        eprintln!("warning: cannot delete container {id}: {err}");
                    }
                }
            }
            Err(_) => {
                let _ = fs::remove_dir_all(&root);
            }
        }
    }

    /// Removes container `id` after its init was reaped: its cgroup and
    /// its state directory. The init led the container's pid namespace, so
    /// the kernel killed and reaped every other process of it before the
    /// init's own exit completed; no process is left to kill. Nothing else
    /// needs undoing (utter's specs have no hooks), so this is
    /// libcontainer's delete without looking the cgroup hierarchies up
    /// again; when a step fails, [`Runtime::destroy`] does the full one.
    pub(crate) fn remove_exited(&self, id: &str) {
        let removed = remove_cgroup(&format!("utter/{id}"))
            && fs::remove_dir_all(self.state.join(id)).is_ok();
        if !removed {
            self.destroy(id);
        }
    }

    /// Creates container `id` from `job` with `bundle` as its bundle
    /// directory, wiring its stdio. Returns the created (not yet started)
    /// container.
    pub(crate) fn create(
        &self,
        id: &str,
        bundle: &Path,
        job: &Job,
        stdio: [OwnedFd; 3],
    ) -> Result<Container, RunError> {
        check_command(job)?;
        prepare_mount_points(job)?;
        let config = bundle.join("config.json");
        // Held until the init has joined it (`build` returns once the init
        // is ready); the container's processes keep it alive from then on.
        let network = self.network_namespace();
        let network_path = network.as_ref().map(|fd| {
            PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                fd.as_raw_fd()
            ))
        });
        let spec = runtime_spec(
            job,
            &format!("/utter/{id}"),
            self.privilege,
            network_path.as_deref(),
        );
        fs::write(
            &config,
            serde_json::to_vec(&spec).expect("a JSON value serializes"),
        )
        .map_err(RunError::io("write", &config))?;
        let [stdin, stdout, stderr] = stdio;
        let pid_file = bundle.join("init.pid");
        let _lock = create_lock();
        let built = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
            .with_root_path(&self.state)
            .map_err(start_error)?
            .with_pid_file(Some(&pid_file))
            .map_err(start_error)?
            .with_executor(DefaultExecutor {})
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .validate_id()
            .map_err(start_error)?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(false)
            .build();
        self.make_next_network();
        built.map_err(|err| {
            reap_failed_build(&pid_file);
            start_error(err)
        })
    }

    fn run_in(
        &self,
        id: &str,
        bundle: &Path,
        job: &Job,
        stdio: Stdio,
    ) -> Result<Finished, RunError> {
        let (fds, pipes) = stdio_fds(stdio)?;
        let mut container = self.create(id, bundle, job, fds)?;
        let started = Instant::now();
        create_lock_start(&mut container)?;
        let pid = container
            .pid()
            .and_then(|p| Pid::from_raw(p.as_raw()))
            .ok_or_else(|| RunError::Start("libcontainer gave no pid for the container".into()))?;
        let mut finished = wait(pid, pipes, job.limits.timeout, job.limits.output)?;
        finished.elapsed = started.elapsed();
        let events = CgroupEvents::read(&format!("utter/{id}"));
        finished.outcome = events.judge(finished.outcome, job);
        Ok(finished)
    }
}

impl Sandbox for Runtime {
    fn run(&self, job: &Job, stdio: Stdio) -> Result<Finished, RunError> {
        let id = self.new_id();
        let bundle = self.job_dir(&id)?;
        let result = self.run_in(&id, &bundle, job, stdio);
        match result {
            Ok(_) => self.remove_exited(&id),
            Err(_) => self.destroy(&id),
        }
        remove_job_dir(&bundle);
        result
    }

    fn scratch(&self, size: u64) -> Result<Scratch, RunError> {
        let job_dir = self.job_dir(&self.new_id())?;
        let path = job_dir.join("scratch");
        let mounted = self.private_dir(&path, size, 0o755);
        let scratch = Scratch { job_dir, path };
        mounted.map(|()| scratch)
    }
}

/// Makes a network namespace on a new thread (`unshare` moves only the
/// calling thread into it) and returns it as an open file.
fn make_network_namespace() -> io::Result<std::thread::JoinHandle<io::Result<OwnedFd>>> {
    std::thread::Builder::new()
        .name("utter-netns".into())
        .spawn(|| {
            #[allow(unsafe_code)]
            // SAFETY: `unshare_unsafe` is unsafe for `FILES`, which would
            // split this thread's file table from the others'; `NEWNET`
            // only moves this thread, which opens the namespace and ends.
            unsafe {
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)?;
            }
            Ok(rustix::fs::open(
                "/proc/thread-self/ns/net",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?)
        })
}

/// Starts, on a background thread, a no-op cgroup migration of this
/// process (into the cgroup it is already in), and returns at once.
///
/// Moving a process between cgroups takes a kernel-wide lock whose first
/// writer waits a full RCU grace period (about 10 ms here); writers that
/// follow within a grace period do not wait. A one-off `utter run` would
/// otherwise pay that wait in series, when libcontainer moves the
/// container into its cgroup; started first, it passes while utter reads
/// the image and builds the container. Best effort: errors are ignored.
pub fn prewarm_cgroup_migration() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(procs) = own_cgroup_procs() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("cgroup-prewarm".into())
        .spawn(move || {
            // "0" is the writing process itself, already a member.
            let _ = fs::write(procs, "0");
        });
}

/// The `cgroup.procs` file of this process's own cgroup in one mounted
/// hierarchy (v1 `pids`, else the v2 unified one).
pub fn own_cgroup_procs() -> Option<PathBuf> {
    let table = fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = Path::new("/sys/fs/cgroup");
    table.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        let dir = match controllers {
            "pids" => root.join("pids").join(rel),
            "" if root.join("unified").is_dir() => root.join("unified").join(rel),
            "" => root.join(rel),
            _ => return None,
        };
        let procs = dir.join("cgroup.procs");
        procs.exists().then_some(procs)
    })
}

/// Prepares `base`, the directory that holds runtime directories (see
/// [`Runtime::open`]). As root it is kept on a tmpfs, like `/run` on most
/// hosts: container state is small, written for every container, and
/// worthless after a reboot, so it should not cost disk writes (an SD
/// card's, on a Raspberry Pi). Where `base` is on a disk and empty, a
/// 64 MiB tmpfs is mounted on it; one that already holds state is left as
/// it is. For an ordinary user `base` must be a private directory of
/// theirs.
pub fn runtime_base(base: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(RunError::io("create", base))?;
    let uid = rustix::process::geteuid();
    if !uid.is_root() {
        let meta = fs::symlink_metadata(base).map_err(RunError::io("inspect", base))?;
        if !meta.is_dir() || meta.uid() != uid.as_raw() || meta.mode() & 0o022 != 0 {
            return Err(RunError::Io {
                what: "use",
                path: base.to_path_buf(),
                source: io::Error::other(
                    "it is not a directory that only you can write to; remove it and run again",
                ),
            });
        }
        return Ok(());
    }
    if on_tmpfs(base) {
        return Ok(());
    }
    let lock_path = base.with_extension("lock");
    let lock = fs::File::create(&lock_path).map_err(RunError::io("create", &lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| RunError::io("lock", &lock_path)(e.into()))?;
    let empty = fs::read_dir(base)
        .map_err(RunError::io("read", base))?
        .next()
        .is_none();
    if on_tmpfs(base) || !empty {
        return Ok(());
    }
    rustix::mount::mount(
        "utter",
        base,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        c"size=64m,mode=700",
    )
    .map_err(|e| RunError::io("mount a tmpfs on", base)(e.into()))
}

/// Whether `path` is on a tmpfs (or ramfs).
fn on_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    rustix::fs::statfs(path).is_ok_and(|s| matches!(fs_type(&s), TMPFS_MAGIC | RAMFS_MAGIC))
}

/// How this process may create containers: as root, or rootless through
/// a user namespace (which needs user namespaces to be allowed, and cgroup
/// v2: on v1 libcontainer writes device rules only root may write).
pub fn detect_privilege() -> Result<Privilege, RunError> {
    if rustix::process::geteuid().is_root() {
        return Ok(Privilege::Root);
    }
    let number = |path: &str| -> Option<u64> { fs::read_to_string(path).ok()?.trim().parse().ok() };
    if let Some(reason) = userns_refusal(
        number("/proc/sys/user/max_user_namespaces"),
        number("/proc/sys/kernel/unprivileged_userns_clone"),
        number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    ) {
        return Err(RunError::NoUserNamespaces(reason));
    }
    if !unified_cgroups() {
        return Err(RunError::RootlessCgroupV1);
    }
    Ok(Privilege::Rootless {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    })
}

/// Why an ordinary user may not create a user namespace here, from the
/// kernel's settings (`None` where a setting does not exist), or `None`
/// when nothing forbids it.
pub(crate) fn userns_refusal(
    max_user_namespaces: Option<u64>,
    unprivileged_userns_clone: Option<u64>,
    apparmor_restrict: Option<u64>,
) -> Option<String> {
    if max_user_namespaces == Some(0) {
        return Some(
            "user namespaces are turned off (sysctl user.max_user_namespaces is 0)".into(),
        );
    }
    if unprivileged_userns_clone == Some(0) {
        return Some(
            "user namespaces are for root only here (sysctl kernel.unprivileged_userns_clone is 0)"
                .into(),
        );
    }
    if apparmor_restrict.is_some_and(|v| v != 0) {
        return Some(
            "AppArmor restricts user namespaces to allowed programs \
             (sysctl kernel.apparmor_restrict_unprivileged_userns is 1)"
                .into(),
        );
    }
    None
}

/// Where the cgroup hierarchies (v1 controllers, the unified v2 one) are
/// mounted in this process's mount namespace; read once.
fn cgroup_mounts() -> &'static [PathBuf] {
    static MOUNTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        fs::read_to_string("/proc/self/mountinfo")
            .map(|table| cgroup_mounts_in(&table))
            .unwrap_or_default()
    })
}

/// The mount points of `cgroup` and `cgroup2` filesystems in a
/// `/proc/<pid>/mountinfo` table.
fn cgroup_mounts_in(table: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fs_type = fs.split(' ').next()?;
            let point = mount.split(' ').nth(4)?;
            matches!(fs_type, "cgroup" | "cgroup2").then(|| PathBuf::from(unescape_mount(point)))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape_mount(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
        });
        match octal {
            Some(value) if bytes[i] == b'\\' && value <= 0xff => {
                out.push(value as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Removes cgroup `path` (relative to the hierarchy roots) from every
/// hierarchy that has it. An empty cgroup may stay busy for a moment after
/// its last process was reaped, so `EBUSY` is retried for up to 100 ms.
/// Whether it is gone from all of them; `false` when no hierarchy could be
/// found at all (an unreadable mount table must not pass for a clean one).
fn remove_cgroup(path: &str) -> bool {
    remove_cgroup_in(cgroup_mounts(), path)
}

fn remove_cgroup_in(mounts: &[PathBuf], path: &str) -> bool {
    !mounts.is_empty()
        && mounts.iter().all(|mount| {
            let dir = mount.join(path);
            for _ in 0..100 {
                match fs::remove_dir(&dir) {
                    Ok(()) => return true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => return false,
                }
            }
            false
        })
}

/// Whether `/sys/fs/cgroup` is the unified (v2) hierarchy.
fn unified_cgroups() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    rustix::fs::statfs("/sys/fs/cgroup").is_ok_and(|s| fs_type(&s) == CGROUP2_SUPER_MAGIC)
}

/// A filesystem's magic number (`f_type` is 32 bits wide on 32-bit ARM).
#[allow(clippy::unnecessary_cast)]
fn fs_type(s: &rustix::fs::StatFs) -> i64 {
    // Magic numbers are 32 bits; on 32-bit ARM `f_type` is signed.
    i64::from(s.f_type as u32)
}

/// Creates directory `path` and mounts a tmpfs of `size` bytes with
/// `mode` on it (no setuid, no devices); [`remove_job_dir`] unmounts it.
pub(crate) fn mount_tmpfs(path: &Path, size: u64, mode: u32) -> Result<(), RunError> {
    fs::create_dir(path).map_err(RunError::io("create", path))?;
    let data =
        std::ffi::CString::new(format!("size={size},mode={mode:o}")).expect("no NUL in numbers");
    rustix::mount::mount(
        "utter",
        path,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| RunError::io("mount a tmpfs on", path)(e.into()))
}

/// Removes a job directory, unmounting the scratch tmpfs a dapp run puts
/// in it first.
pub(crate) fn remove_job_dir(dir: &Path) {
    let scratch = dir.join("scratch");
    if scratch.exists() {
        let _ = rustix::mount::unmount(&scratch, rustix::mount::UnmountFlags::DETACH);
    }
    let _ = fs::remove_dir_all(dir);
}

/// After a failed `build`, libcontainer leaves its two processes unreaped:
/// the init (whose pid it wrote to the pid file, when it got that far) and
/// the intermediate process. Kill and reap the first; reap zombies named
/// like the second (reaping one that libcontainer waits for itself is
/// harmless: it treats `ECHILD` as already reaped).
fn reap_failed_build(pid_file: &Path) {
    if let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        reap(pid);
    }
    let me = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let (state, ppid) = (fields.next(), fields.next());
        if head.ends_with("(youki:[1:INTER]") && state == Some("Z") && ppid == Some(me.as_str()) {
            if let Some(pid) = head
                .split(' ')
                .next()
                .and_then(|p| p.parse::<i32>().ok())
                .and_then(Pid::from_raw)
            {
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
            }
        }
    }
}

/// Starts a created container under [`CREATE`].
pub(crate) fn create_lock_start(container: &mut Container) -> Result<(), RunError> {
    let _lock = create_lock();
    container.start().map_err(start_error)
}

pub(crate) fn start_error(err: libcontainer::error::LibcontainerError) -> RunError {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    RunError::Start(message)
}

/// Refuses a job whose command is not in its rootfs, with a message
/// naming it (libcontainer's own error says less). A name without `/` is
/// looked up in the job's `PATH`.
fn check_command(job: &Job) -> Result<(), RunError> {
    let Some(command) = job.args.first() else {
        return Err(RunError::NoCommand("command (none was given)".into()));
    };
    let exists =
        |path: &str| fs::symlink_metadata(job.rootfs.join(path.trim_start_matches('/'))).is_ok();
    let found = if command.contains('/') {
        exists(command)
    } else {
        let path = job
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("");
        path.split(':')
            .filter(|dir| dir.starts_with('/'))
            .any(|dir| exists(&format!("{dir}/{command}")))
    };
    if found {
        Ok(())
    } else {
        Err(RunError::NoCommand(command.clone()))
    }
}

/// Creates the directories the job mounts on inside the image's rootfs,
/// which is read-only in the container. Directories only: a file or
/// symlink in the way is refused (a symlink could point anywhere).
fn prepare_mount_points(job: &Job) -> Result<(), RunError> {
    let targets = BASE_MOUNT_POINTS
        .iter()
        .copied()
        .chain(job.mounts.iter().filter_map(|m| match m {
            // A file bind (results.jsonl) lands inside another mount.
            Mount::Bind { source, target, .. } if !source.is_dir() => None,
            m => Some(m.target()),
        }));
    for target in targets {
        let mut path = job.rootfs.clone();
        for part in target.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(RunError::MountPoint {
                        path: target.to_string(),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(RunError::io("create", &path)(err)),
                },
                Err(err) => return Err(RunError::io("inspect", &path)(err)),
            }
        }
    }
    Ok(())
}

/// The container's ends of stdio, and our ends of the capture pipes.
pub(crate) fn stdio_fds(stdio: Stdio) -> Result<([OwnedFd; 3], Option<[OwnedFd; 2]>), RunError> {
    let pipe_error = |e: rustix::io::Errno| RunError::Start(format!("cannot create a pipe: {e}"));
    match stdio {
        Stdio::Capture => {
            let null = fs::File::open("/dev/null")
                .map_err(RunError::io("open", Path::new("/dev/null")))?;
            let (out_r, out_w) =
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(pipe_error)?;
            let (err_r, err_w) =
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(pipe_error)?;
            Ok(([null.into(), out_w, err_w], Some([out_r, err_r])))
        }
        Stdio::Inherit => {
            let dup = |fd: std::os::fd::BorrowedFd<'_>| {
                fd.try_clone_to_owned()
                    .map_err(|e| RunError::Start(format!("cannot duplicate stdio: {e}")))
            };
            Ok((
                [
                    dup(io::stdin().as_fd())?,
                    dup(io::stdout().as_fd())?,
                    dup(io::stderr().as_fd())?,
                ],
                None,
            ))
        }
    }
}

/// Waits for `pid` (a child of this process) to exit, reading the capture
/// pipes meanwhile; kills it (and so its whole pid namespace) at the
/// deadline or when the output passes `cap`. The returned outcome is the
/// plain exit; [`CgroupEvents::judge`] adds what the cgroup saw.
pub(crate) fn wait(
    pid: Pid,
    pipes: Option<[OwnedFd; 2]>,
    timeout: Duration,
    cap: u64,
) -> Result<Finished, RunError> {
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|e| RunError::Wait(e.into()))?;
    let deadline = Instant::now() + timeout;
    let mut outputs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut open: Vec<(usize, fs::File)> = pipes
        .map(|[o, e]| vec![(0, fs::File::from(o)), (1, fs::File::from(e))])
        .unwrap_or_default();
    let mut exited = false;
    let mut killed: Option<Outcome> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while killed.is_none() && (!exited || !open.is_empty()) {
        let now = Instant::now();
        if now >= deadline {
            killed = Some(Outcome::TimedOut(timeout));
            break;
        }
        let left = deadline - now;
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .map(|(_, f)| PollFd::new(f, PollFlags::IN))
            .collect();
        if !exited {
            fds.push(PollFd::new(&pidfd, PollFlags::IN));
        }
        let spec = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match poll(&mut fds, Some(&spec)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(RunError::Wait(e.into())),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if !exited && ready[open.len()] {
            exited = true;
        }
        let mut closed = Vec::new();
        for (slot, (which, file)) in open.iter_mut().enumerate() {
            if !ready[slot] {
                continue;
            }
            match file.read(&mut buf) {
                Ok(0) => closed.push(slot),
                Ok(n) => {
                    let total = (outputs[0].len() + outputs[1].len()) as u64;
                    let room = cap.saturating_sub(total) as usize;
                    outputs[*which].extend_from_slice(&buf[..n.min(room)]);
                    if n > room {
                        killed = Some(Outcome::OutputTruncated { cap });
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RunError::Wait(e)),
            }
        }
        for slot in closed.into_iter().rev() {
            open.remove(slot);
        }
    }
    if killed.is_some() {
        // SIGKILL to the namespace's init takes every process in it down.
        let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
    }
    let status = reap(pid);
    let [stdout, stderr] = outputs;
    let outcome = killed.unwrap_or_else(|| outcome_of(status));
    Ok(Finished {
        outcome,
        stdout,
        stderr,
        elapsed: Duration::ZERO,
    })
}

/// The outcome a wait status tells; `None` (not our child, status lost)
/// reads as exit code -1.
pub(crate) fn outcome_of(status: Option<rustix::process::WaitStatus>) -> Outcome {
    match status.map(|s| (s.exit_status(), s.terminating_signal())) {
        Some((Some(code), _)) => Outcome::Exited(code),
        Some((None, Some(signal))) => Outcome::Crashed(signal),
        _ => Outcome::Exited(-1),
    }
}

/// Waits for child `pid` to end and returns its status; `None` when it is
/// not a child of this process (already reaped, or started by another).
pub(crate) fn reap(pid: Pid) -> Option<rustix::process::WaitStatus> {
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Some(status),
            Ok(None) => return None,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
}

/// What a container's cgroup counted: OOM kills and refused forks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupEvents {
    pub oom_kills: u64,
    pub pids_max: u64,
}

impl CgroupEvents {
    /// Reads the counters of cgroup `path` (relative to the hierarchy
    /// roots), from the v1 controllers where they are mounted (hybrid
    /// hosts), else from the unified v2 hierarchy. Missing files count 0.
    pub fn read(path: &str) -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let v1_memory = root.join("memory").join(path);
        let (memory, pids) = if v1_memory.is_dir() {
            (
                field(&v1_memory.join("memory.oom_control"), "oom_kill"),
                field(&root.join("pids").join(path).join("pids.events"), "max"),
            )
        } else {
            let v2 = root.join(path);
            (
                field(&v2.join("memory.events"), "oom_kill"),
                field(&v2.join("pids.events"), "max"),
            )
        };
        Self {
            oom_kills: memory,
            pids_max: pids,
        }
    }

    /// The outcome, given what the cgroup saw: a limit hit is the reason a
    /// run ended badly, whatever the exit looked like.
    pub fn judge(self, plain: Outcome, job: &Job) -> Outcome {
        if self.oom_kills > 0 {
            Outcome::OutOfMemory {
                limit: job.limits.memory,
            }
        } else if self.pids_max > 0 {
            Outcome::PidsLimit {
                limit: job.limits.pids,
            }
        } else {
            plain
        }
    }
}

/// The number after `name ` on its own line of a cgroup keyed file.
fn field(path: &Path, name: &str) -> u64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_namespace_settings_decide_rootless() {
        assert_eq!(userns_refusal(Some(96343), None, None), None);
        assert_eq!(userns_refusal(None, None, None), None);
        assert_eq!(userns_refusal(Some(10), Some(1), Some(0)), None);
        let off = userns_refusal(Some(0), Some(1), None).expect("refused");
        assert!(off.contains("user.max_user_namespaces"), "{off}");
        let debian = userns_refusal(Some(10), Some(0), None).expect("refused");
        assert!(
            debian.contains("kernel.unprivileged_userns_clone"),
            "{debian}"
        );
        let ubuntu = userns_refusal(Some(10), None, Some(1)).expect("refused");
        assert!(ubuntu.contains("apparmor"), "{ubuntu}");
    }

    #[test]
    fn cgroup_mounts_are_read_from_mountinfo() {
        let table = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/my\\040pids rw - cgroup cgroup rw,pids
40 22 0:35 / /mnt/a\\134b rw - ext4 /dev/sda rw
";
        assert_eq!(
            cgroup_mounts_in(table),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                PathBuf::from("/sys/fs/cgroup/my pids"),
            ]
        );
        assert_eq!(unescape_mount("a\\134b\\0"), "a\\b\\0");
        // No hierarchy known: the fast removal reports failure, so the full
        // delete runs instead of a cgroup being left behind unseen.
        assert!(!remove_cgroup_in(&[], "utter/u1-0"));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(remove_cgroup_in(&[dir.path().to_path_buf()], "utter/gone"));
        // The host's own table names the hierarchy this process is in.
        let procs = own_cgroup_procs().expect("a cgroup");
        assert!(
            cgroup_mounts().iter().any(|m| procs.starts_with(m)),
            "{procs:?} is under none of {:?}",
            cgroup_mounts()
        );
    }

    #[test]
    fn cgroup_fields_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("memory.oom_control");
        fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").expect("write");
        assert_eq!(field(&file, "oom_kill"), 3);
        assert_eq!(field(&file, "oom"), 0);
        assert_eq!(field(&dir.path().join("missing"), "oom_kill"), 0);
    }
}

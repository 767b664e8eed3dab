//! Detached containers, for compute leases: started with limits, they run
//! until stopped; their status can be read and commands run inside them
//! (`exec`, a libcontainer tenant: same namespaces, cgroup and limits); a
//! lease that runs dry is frozen (`freeze`, the cgroup freezer: processes
//! and files kept, no CPU) and thawed on a top-up (`thaw`).
//!
//! A detached container is named by its owner (`lease-42`); its state is
//! `containers/d-<name>` and its bundle and log `jobs/d-<name>`. The log
//! (stdout and stderr of the main process) lives on a tmpfs of the job's
//! output size, so a chatty workload fills its log, not the disk.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open};

use crate::container::{
    Finished, RunError, Runtime, Stdio, create_lock, create_lock_start, outcome_of, reap,
    remove_job_dir, start_error, stdio_fds, wait,
};
use crate::outcome::Outcome;
use crate::spec::Job;

/// A detached container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Its main process runs, with this host pid.
    Running(i32),
    /// Frozen by [`Runtime::freeze`]: its processes are kept, they get no
    /// CPU.
    Frozen(i32),
    /// Its main process has ended; `stop` removes it.
    Stopped,
}

impl Runtime {
    fn detached_id(name: &str) -> Result<String, RunError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(format!("d-{name}"))
        } else {
            Err(RunError::Start(format!(
                "{name:?} is not a container name: use 1 to 64 letters, digits, '-' or '_'"
            )))
        }
    }

    /// Starts `job` detached as `name`. Its time limit does not apply (a
    /// lease ends by [`Runtime::stop`]); its other limits do.
    pub fn start(&self, name: &str, job: &Job) -> Result<i32, RunError> {
        let id = Self::detached_id(name)?;
        if self.state_dir().join(&id).exists() {
            return Err(RunError::Start(format!(
                "a container named {name} exists; stop it first"
            )));
        }
        let bundle = self.jobs_dir().join(&id);
        if bundle.exists() {
            remove_job_dir(&bundle);
        }
        fs::create_dir(&bundle).map_err(RunError::io("create", &bundle))?;
        let started = self.start_in(&id, &bundle, job);
        if started.is_err() {
            self.destroy(&id);
            remove_job_dir(&bundle);
        }
        started
    }

    fn start_in(&self, id: &str, bundle: &std::path::Path, job: &Job) -> Result<i32, RunError> {
        let log_dir = bundle.join("scratch");
        self.private_dir(&log_dir, job.limits.output.max(4096), 0o700)?;
        let log_path = log_dir.join("log");
        let log = fs::File::create(&log_path).map_err(RunError::io("create", &log_path))?;
        let log2 = log.try_clone().map_err(RunError::io("open", &log_path))?;
        let null = fs::File::open("/dev/null")
            .map_err(RunError::io("open", std::path::Path::new("/dev/null")))?;
        let fds: [OwnedFd; 3] = [null.into(), log.into(), log2.into()];
        let mut container = self.create(id, bundle, job, fds)?;
        create_lock_start(&mut container)?;
        container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| RunError::Start("libcontainer gave no pid for the container".into()))
    }

    fn load(&self, name: &str) -> Result<Container, RunError> {
        let id = Self::detached_id(name)?;
        let mut container = Container::load(self.state_dir().join(&id))
            .map_err(|_| RunError::NoSuchContainer(name.to_string()))?;
        container
            .refresh_status()
            .map_err(|e| RunError::Start(e.to_string()))?;
        Ok(container)
    }

    /// The status of detached container `name`.
    pub fn status(&self, name: &str) -> Result<Status, RunError> {
        let container = self.load(name)?;
        Ok(match (container.status(), container.pid()) {
            (ContainerStatus::Running, Some(pid)) => Status::Running(pid.as_raw()),
            (ContainerStatus::Paused, Some(pid)) => Status::Frozen(pid.as_raw()),
            _ => Status::Stopped,
        })
    }

    /// Freezes running container `name` (the cgroup freezer): its
    /// processes stay, with their memory and files, and get no CPU until
    /// [`Runtime::thaw`]. Freezing a frozen container does nothing.
    pub fn freeze(&self, name: &str) -> Result<(), RunError> {
        let mut container = self.load(name)?;
        match container.status() {
            ContainerStatus::Paused => Ok(()),
            ContainerStatus::Running => container
                .pause()
                .map_err(|e| RunError::Start(format!("cannot freeze {name}: {e}"))),
            other => Err(RunError::Start(format!(
                "container {name} is {other:?}, not running: nothing to freeze"
            ))),
        }
    }

    /// Thaws frozen container `name`; thawing a running one does nothing.
    pub fn thaw(&self, name: &str) -> Result<(), RunError> {
        let mut container = self.load(name)?;
        match container.status() {
            ContainerStatus::Running => Ok(()),
            ContainerStatus::Paused => container
                .resume()
                .map_err(|e| RunError::Start(format!("cannot thaw {name}: {e}"))),
            other => Err(RunError::Start(format!(
                "container {name} is {other:?}, not frozen: nothing to thaw"
            ))),
        }
    }

    /// The names of the detached containers.
    pub fn detached(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.state_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("d-").map(String::from))
            .collect();
        names.sort();
        names
    }

    /// What the main process of `name` wrote to stdout and stderr.
    pub fn log(&self, name: &str) -> Result<Vec<u8>, RunError> {
        let id = Self::detached_id(name)?;
        let path: PathBuf = self.jobs_dir().join(id).join("scratch/log");
        fs::read(&path).map_err(|_| RunError::NoSuchContainer(name.to_string()))
    }

    /// Runs `args` inside running container `name` (its namespaces, cgroup
    /// and limits, no capabilities), waiting up to `timeout` and capturing
    /// up to `cap` bytes of output (or attached to this process's stdio).
    pub fn exec(
        &self,
        name: &str,
        args: &[String],
        stdio: Stdio,
        timeout: Duration,
        cap: u64,
    ) -> Result<Finished, RunError> {
        let container = self.load(name)?;
        if container.status() != ContainerStatus::Running {
            return Err(RunError::Start(format!(
                "container {name} is not running; start it again"
            )));
        }
        let (fds, pipes) = stdio_fds(stdio)?;
        let [stdin, stdout, stderr] = fds;
        let started = Instant::now();
        let lock = create_lock();
        let pid = ContainerBuilder::new(container.id().to_string(), SyscallType::Linux)
            .with_root_path(self.state_dir())
            .map_err(|e| RunError::Start(e.to_string()))?
            .with_executor(DefaultExecutor {})
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .as_tenant()
            .with_container_args(args.to_vec())
            .with_no_new_privs(true)
            .with_detach(false)
            .build()
            .map_err(start_error);
        drop(lock);
        remove_stale_tenant_sockets(&self.state_dir().join(container.id()));
        let pid = pid?;
        let pid = Pid::from_raw(pid.as_raw())
            .ok_or_else(|| RunError::Start("libcontainer gave no pid for the process".into()))?;
        let mut finished = wait(pid, pipes, timeout, cap)?;
        finished.elapsed = started.elapsed();
        Ok(finished)
    }

    /// Stops `name`: SIGTERM to its main process, SIGKILL to all of it
    /// after `grace`, then removes its cgroup, state, bundle and log.
    /// Returns how the main process ended when this process can tell (it
    /// started it), `None` otherwise.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<Option<Outcome>, RunError> {
        let mut container = self.load(name)?;
        // A frozen process takes no signal until it is thawed.
        if container.status() == ContainerStatus::Paused {
            container
                .resume()
                .map_err(|e| RunError::Start(format!("cannot thaw {name} to stop it: {e}")))?;
        }
        let id = container.id().to_string();
        let mut outcome = None;
        if let Some(pid) = container.pid().and_then(|p| Pid::from_raw(p.as_raw())) {
            if let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) {
                let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::TERM);
                let spec = Timespec {
                    tv_sec: grace.as_secs() as i64,
                    tv_nsec: i64::from(grace.subsec_nanos()),
                };
                let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
                let _ = poll(&mut fds, Some(&spec));
                let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            }
            outcome = reap(pid).map(|status| outcome_of(Some(status)));
        }
        self.destroy(&id);
        remove_job_dir(&self.jobs_dir().join(&id));
        Ok(outcome)
    }
}

/// How old a tenant's socket must be to be taken for a leftover.
const TENANT_SOCKET_AGE: Duration = Duration::from_secs(60);

/// Removes the sockets libcontainer leaves per exec in a container's state
/// directory (`tenant-notify-…`, `tenant-tty-…`; used only while the
/// tenant starts, and never removed by it), so a lease that is logged into
/// all day does not collect thousands. Only those older than a minute go:
/// another process may be starting a tenant of the same container now.
pub(crate) fn remove_stale_tenant_sockets(dir: &std::path::Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("tenant-notify-") || name.starts_with("tenant-tty-")) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TENANT_SOCKET_AGE);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

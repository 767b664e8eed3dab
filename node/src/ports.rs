//! Inbound ports of leases: an offer may publish container ports, which
//! the provider's node forwards from its own address to the lease's
//! container.
//!
//! A lease container has a network namespace of its own and no route out.
//! For a lease that publishes ports, the node adds a veth pair: `eth0` in
//! the container (`10.213.x.y+2/30`) and its peer `ut…` in this node's
//! **ports namespace** (`.y+1`), a network namespace of the node's own
//! (`ip netns`, named after the data dir) with nothing else in it and no
//! forwarding. The host's namespace is not on the link, so the container
//! reaches no host service and no other lease; it still has no network
//! out. The node listens on its address (TCP, one port per published
//! port) and, per connection, connects to the container from a socket
//! made in the ports namespace ([`socket_in`]) and copies both ways.
//!
//! What is set up is kept where a restart finds it: the veth lives as
//! long as the container, the slot (which /30) and the host ports are in
//! `leases/<id>/net.json`, so a node restarted after kill -9 listens on
//! the same ports again and the lease's recorded endpoints stay true.
//! [`setup_commands`] is the plumbing as data, tested alone; the driver
//! runs iproute2's `ip` and util-linux's `nsenter`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

/// Slots of a /30 each in 10.213.0.0/16.
pub const SLOTS: u32 = 1 << 14;

/// Why a lease's ports could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// A command failed.
    #[error("`{command}` failed: {why}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output, or why it could not run.
        why: String,
    },
    /// Every slot is taken.
    #[error("all {SLOTS} port slots of this node are taken")]
    Full,
    /// Reading or writing a file, or a socket.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PortsError {
    let what = what.into();
    move |source| PortsError::Io { what, source }
}

/// The two addresses of slot `slot`: (the ports namespace's end, the
/// container's end).
pub fn addresses(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    assert!(slot < SLOTS, "slot {slot} out of range");
    let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The name of lease `lease`'s veth end in the ports namespace (at most
/// 15 bytes, as Linux wants).
pub fn link_name(lease: &str) -> String {
    format!("ut{:012x}", fnv64(lease.as_bytes()) & 0xffff_ffff_ffff)
}

/// The name of the ports namespace of the node whose data dir is `root`.
pub fn netns_name(root: &Path) -> String {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    format!(
        "utter-{:012x}",
        fnv64(root.as_os_str().as_encoded_bytes()) & 0xffff_ffff_ffff
    )
}

/// The commands that link the container whose main process is `pid` to
/// the ports namespace `netns` in slot `slot`, by veth `link`.
pub fn setup_commands(netns: &str, link: &str, slot: u32, pid: i32) -> Vec<Vec<String>> {
    let (outer, inner) = addresses(slot);
    let ns = format!("--net=/proc/{pid}/ns/net");
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    vec![
        words(&format!(
            "ip link add {link} netns {netns} type veth peer name eth0 netns {pid}"
        )),
        words(&format!("ip -n {netns} addr add {outer}/30 dev {link}")),
        words(&format!("ip -n {netns} link set {link} up")),
        words(&format!("nsenter {ns} ip addr add {inner}/30 dev eth0")),
        words(&format!("nsenter {ns} ip link set eth0 up")),
        words(&format!("nsenter {ns} ip link set lo up")),
    ]
}

fn run(words: &[String]) -> Result<(), PortsError> {
    let command = words.join(" ");
    let out = Command::new(&words[0])
        .args(&words[1..])
        .output()
        .map_err(|e| PortsError::Command {
            command: command.clone(),
            why: if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} is not installed (inbound ports need iproute2 and util-linux: apt-get install iproute2 util-linux)",
                    words[0]
                )
            } else {
                e.to_string()
            },
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PortsError::Command {
            command,
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// What a restart needs of a lease's ports (`leases/<id>/net.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// Its /30.
    pub slot: u32,
    /// The host ports it was forwarded from, one per published port.
    pub host_ports: Vec<u16>,
}

fn kept_path(lease_dir: &Path) -> PathBuf {
    lease_dir.join("net.json")
}

/// The lowest slot no lease under `leases` (the data dir's `leases/`)
/// holds.
fn free_slot(leases: &Path) -> Result<u32, PortsError> {
    let mut taken = std::collections::BTreeSet::new();
    if let Ok(dirs) = std::fs::read_dir(leases) {
        for dir in dirs.flatten() {
            if let Some(k) = std::fs::read(kept_path(&dir.path()))
                .ok()
                .and_then(|b| serde_json::from_slice::<Kept>(&b).ok())
            {
                taken.insert(k.slot);
            }
        }
    }
    (0..SLOTS)
        .find(|s| !taken.contains(s))
        .ok_or(PortsError::Full)
}

/// Makes a socket in the network namespace at `netns` (a thread of its
/// own joins it and ends: no pooled thread is left there).
fn socket_in(netns: PathBuf) -> std::io::Result<std::net::TcpStream> {
    std::thread::Builder::new()
        .name("utter-ports-socket".into())
        .spawn(move || {
            let ns = std::fs::File::open(&netns)?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            let fd = rustix::net::socket_with(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::STREAM,
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
                None,
            )?;
            Ok(std::net::TcpStream::from(fd))
        })?
        .join()
        .map_err(|_| std::io::Error::other("the socket thread panicked"))?
}

/// One lease's forwarding.
struct Forward {
    endpoints: Vec<String>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// This node's forwarded ports.
pub struct Ports {
    handle: tokio::runtime::Handle,
    /// The address forwarded from.
    ip: IpAddr,
    root: PathBuf,
    netns: String,
    open: BTreeMap<String, Forward>,
}

impl Ports {
    /// Forwards for the node whose data dir is `root`, from `ip`, on the
    /// runtime `handle`.
    pub fn new(root: &Path, ip: IpAddr, handle: tokio::runtime::Handle) -> Self {
        Ports {
            handle,
            ip,
            root: root.to_path_buf(),
            netns: netns_name(root),
            open: BTreeMap::new(),
        }
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Lease `lease`'s endpoints (`host:port`), when it is forwarded.
    pub fn endpoints(&self, lease: &str) -> Option<&[String]> {
        self.open.get(lease).map(|f| f.endpoints.as_slice())
    }

    /// The leases forwarded now.
    pub fn forwarded(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }

    /// Forwards `ports` of lease `lease` (its container's main process is
    /// `pid`, its directory `lease_dir`): links the container to the
    /// ports namespace when it is not yet, and listens.
    pub fn open(
        &mut self,
        lease: &str,
        lease_dir: &Path,
        pid: i32,
        ports: &[u16],
    ) -> Result<&[String], PortsError> {
        let kept: Option<Kept> = std::fs::read(kept_path(lease_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let slot = match &kept {
            Some(k) => k.slot,
            None => free_slot(&self.root.join("leases"))?,
        };
        if !self.netns_path().exists() {
            run(&["ip", "netns", "add", &self.netns].map(String::from))?;
        }
        let link = link_name(lease);
        let linked = Command::new("ip")
            .args(["-n", &self.netns, "link", "show", &link])
            .output()
            .is_ok_and(|o| o.status.success());
        if !linked {
            for words in setup_commands(&self.netns, &link, slot, pid) {
                run(&words)?;
            }
        }
        let (_, inner) = addresses(slot);
        let mut listeners = Vec::new();
        for (i, _) in ports.iter().enumerate() {
            let wanted = kept
                .as_ref()
                .and_then(|k| k.host_ports.get(i).copied())
                .unwrap_or(0);
            let bind = |port| std::net::TcpListener::bind(SocketAddr::new(self.ip, port));
            // The port it had, else any.
            let l = bind(wanted)
                .or_else(|_| bind(0))
                .map_err(io(format!("listen on {} for {lease}", self.ip)))?;
            l.set_nonblocking(true)
                .map_err(io("make a listener non-blocking"))?;
            listeners.push(l);
        }
        let mut host_ports = Vec::new();
        for l in &listeners {
            host_ports.push(l.local_addr().map_err(io("read a listener's port"))?.port());
        }
        let k = Kept { slot, host_ports };
        std::fs::create_dir_all(lease_dir)
            .and_then(|()| std::fs::write(kept_path(lease_dir), serde_json::to_vec(&k)?))
            .map_err(io(format!("write {}", kept_path(lease_dir).display())))?;
        let mut tasks = Vec::new();
        let mut endpoints = Vec::new();
        for (l, port) in listeners.into_iter().zip(ports) {
            endpoints.push(
                l.local_addr()
                    .map_err(io("read a listener's address"))?
                    .to_string(),
            );
            let target = SocketAddr::new(IpAddr::V4(inner), *port);
            let netns = self.netns_path();
            let _guard = self.handle.enter();
            let l = tokio::net::TcpListener::from_std(l).map_err(io("serve a listener"))?;
            tasks.push(self.handle.spawn(accept(l, target, netns)).abort_handle());
        }
        self.open
            .insert(lease.to_string(), Forward { endpoints, tasks });
        Ok(self.endpoints(lease).expect("just opened"))
    }

    /// Stops listening for lease `lease` (its container and veth stay).
    pub fn close(&mut self, lease: &str) {
        self.open.remove(lease);
    }

    /// Removes the ports namespace when no lease under the data dir has
    /// ports any more.
    pub fn tidy(&self) {
        if !self.open.is_empty() || !self.netns_path().exists() {
            return;
        }
        let any = std::fs::read_dir(self.root.join("leases"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| kept_path(&d.path()).exists());
        if !any {
            let _ = run(&["ip", "netns", "del", &self.netns].map(String::from));
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, target: SocketAddr, netns: PathBuf) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            let Ok(Ok(std)) = tokio::task::spawn_blocking(move || socket_in(netns)).await else {
                return;
            };
            let socket = tokio::net::TcpSocket::from_std_stream(std);
            if let Ok(mut out) = socket.connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_30s_and_names_fit_linux() {
        assert_eq!(
            addresses(0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            addresses(SLOTS - 1),
            (
                Ipv4Addr::new(10, 213, 255, 253),
                Ipv4Addr::new(10, 213, 255, 254)
            )
        );
        let mut seen = std::collections::BTreeSet::new();
        for s in 0..SLOTS {
            let (a, b) = addresses(s);
            assert!(seen.insert(a) && seen.insert(b));
        }
        let name = link_name("lease-0123456789abcdef");
        assert_eq!(name.len(), 14);
        assert_ne!(name, link_name("lease-0123456789abcdee"));
        assert!(netns_name(Path::new("/nonexistent/data")).len() <= 18);
    }

    #[test]
    fn the_container_end_is_set_up_inside_its_namespace() {
        let c = setup_commands("utter-x", "ut1", 1, 42);
        let lines: Vec<String> = c.iter().map(|w| w.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "ip link add ut1 netns utter-x type veth peer name eth0 netns 42",
                "ip -n utter-x addr add 10.213.0.5/30 dev ut1",
                "ip -n utter-x link set ut1 up",
                "nsenter --net=/proc/42/ns/net ip addr add 10.213.0.6/30 dev eth0",
                "nsenter --net=/proc/42/ns/net ip link set eth0 up",
                "nsenter --net=/proc/42/ns/net ip link set lo up",
            ]
        );
    }

    #[test]
    fn a_kept_slot_is_not_given_again() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(free_slot(dir.path()).unwrap(), 0);
        for (lease, slot) in [("a", 0), ("b", 2)] {
            let d = dir.path().join(lease);
            std::fs::create_dir(&d).unwrap();
            let k = Kept {
                slot,
                host_ports: vec![1],
            };
            std::fs::write(kept_path(&d), serde_json::to_vec(&k).unwrap()).unwrap();
        }
        assert_eq!(free_slot(dir.path()).unwrap(), 1);
    }
}

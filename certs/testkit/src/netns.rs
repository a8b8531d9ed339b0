//! Simulated hosts for tests that put the CA replicas, their database and the sidecars on
//! machines of their own: each [`Host`] is a network namespace with one veth pair to a bridge,
//! and the bridge lives in a "switch" namespace of its own, so the test machine's root
//! namespace is never touched. A host can be cut off ([`Host::cut`]) so that packets to and
//! from it vanish, as when a machine loses power or a network partitions: no RST, no ICMP,
//! only timeouts. [`postgres_in`] runs a PostgreSQL server on a host.
//!
//! Namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2. Where they cannot be made,
//! [`Net::new`] says `SKIPPED` on stderr and returns `None`; under CI as root it panics
//! instead, since there it should have worked. Everything is driven through the `ip` command,
//! synchronously: call it from plain tests or accept a short block of the runtime's thread.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

mod database;

pub use database::{postgres_in, PgServer};

/// The bridge's name inside the switch namespace (names are per namespace, so short ones do).
const BRIDGE: &str = "br0";
/// Each host's side of its veth pair, inside the host's namespace.
const HOST_IF: &str = "eth0";

/// One simulated network: a switch namespace holding a bridge, and the hosts plugged into it.
/// Dropping it deletes every namespace it made (and with them their links), also when the test
/// panicked; it never kills a process, since it spawned none.
#[derive(Debug)]
pub struct Net {
    /// `<prefix>-<pid>-<n>`: the start of every namespace name of this net.
    base: String,
    switch: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every host namespace made so far, recorded before it is configured so that a failure
    /// halfway still leaves it to `Drop`.
    namespaces: Vec<String>,
    hosts: Vec<Host>,
}

/// A host on a [`Net`]: a namespace with `lo` and `eth0` (`ip`/24) up. Cheap to clone; it
/// stays usable until its `Net` is dropped.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    namespace: String,
    ip: Ipv4Addr,
    switch: String,
    /// The switch-side end of this host's veth pair, the one `cut` takes down.
    port: String,
}

impl Net {
    /// A new, empty network whose namespaces are named `<prefix>-<pid>-<n>-…` (`prefix` is
    /// lower-case letters and digits; pid and a per-process counter keep parallel tests
    /// apart). `None`, after a `SKIPPED` line on stderr, where namespaces cannot be made.
    pub fn new(prefix: &str) -> Option<Net> {
        assert!(
            is_plain(prefix),
            "a net prefix is lower-case letters and digits: {prefix:?}"
        );
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("{prefix}-{}-{n}", std::process::id());
        let switch = format!("{base}-switch");
        if let Err(why) = iproute(&["netns", "add", &switch]) {
            if crate::in_ci() && can_admin_network() {
                panic!("CI runs as root with CAP_SYS_ADMIN and CAP_NET_ADMIN, so network namespaces should work: {why}");
            }
            eprintln!("SKIPPED: cannot create network namespaces (need root and iproute2): {why}");
            return None;
        }
        let net = Net {
            base,
            switch,
            state: Mutex::default(),
        };
        sweep_stale(prefix);
        must(ip_in(&net.switch, "link set lo up"));
        must(ip_in(
            &net.switch,
            &format!("link add {BRIDGE} type bridge"),
        ));
        must(ip_in(&net.switch, &format!("link set {BRIDGE} up")));
        Some(net)
    }

    /// `<prefix>-<pid>-<n>`, the start of the name of every namespace this net makes.
    pub fn name(&self) -> &str {
        &self.base
    }

    /// Plugs in a new host `name` (lower-case letters and digits, unique in this net) with
    /// address `ip` (e.g. `10.77.0.2`) on the net's /24. Every host gets a permanent neighbour
    /// entry for every other, so a cut host's peers never learn of the cut from a failed ARP
    /// ("no route to host"): their packets are sent and vanish. Panics on a bad name or address.
    pub fn host(&self, name: &str, ip: &str) -> Host {
        assert!(
            is_plain(name) && name != "switch",
            "a host name is lower-case letters and digits: {name:?}"
        );
        let ip: Ipv4Addr = ip
            .parse()
            .unwrap_or_else(|e| panic!("host {name}: address {ip:?}: {e}"));
        let mut state = self.lock();
        assert!(
            state.hosts.iter().all(|h| h.ip != ip),
            "two hosts with address {ip}"
        );
        let host = Host {
            name: name.to_owned(),
            namespace: format!("{}-{name}", self.base),
            ip,
            switch: self.switch.clone(),
            port: format!("p{}", state.namespaces.len()),
        };
        must(iproute(&["netns", "add", &host.namespace]));
        state.namespaces.push(host.namespace.clone());
        host.plug_in();
        for other in &state.hosts {
            host.learn(other);
            other.learn(&host);
        }
        state.hosts.push(host.clone());
        host
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked mid-`host` poisons the lock; what it recorded is still right.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut self.lock().namespaces);
        for namespace in namespaces.iter().rev().chain([&self.switch]) {
            remove_namespace(namespace);
        }
    }
}

impl Host {
    /// The name given to [`Net::host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the net.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The network namespace's name, for `ip netns exec` and the like.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A command that runs `program` inside this host (`ip netns exec NS program`); add the
    /// arguments, stdio and spawn it as usual. The caller owns what it spawns and must kill it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }

    /// Cuts the host off: its port on the switch goes down, so every packet to or from it is
    /// dropped without a word (connections time out; nothing is refused or reset). Its own
    /// processes keep running, as on a machine whose cable was pulled.
    pub fn cut(&self) {
        must(ip_in(&self.switch, &format!("link set {} down", self.port)));
    }

    /// Plugs a cut host back in; connections that were retrying carry on.
    pub fn restore(&self) {
        must(ip_in(&self.switch, &format!("link set {} up", self.port)));
    }

    /// `lo` up, then the veth pair: one end on the switch's bridge, the other as `eth0` here.
    fn plug_in(&self) {
        let (ns, sw, port, ip, mac) = (
            &self.namespace,
            &self.switch,
            &self.port,
            self.ip,
            self.mac(),
        );
        must(ip_in(ns, "link set lo up"));
        let pair =
            format!("link add {port} type veth peer name {HOST_IF} address {mac} netns {ns}");
        must(ip_in(sw, &pair));
        must(ip_in(sw, &format!("link set {port} master {BRIDGE} up")));
        must(ip_in(ns, &format!("addr add {ip}/24 dev {HOST_IF}")));
        must(ip_in(ns, &format!("link set {HOST_IF} up")));
    }

    /// A permanent neighbour entry for `other`, so this host never needs ARP to reach it.
    fn learn(&self, other: &Host) {
        let (ip, mac) = (other.ip, other.mac());
        let entry = format!("neigh replace {ip} lladdr {mac} dev {HOST_IF} nud permanent");
        must(ip_in(&self.namespace, &entry));
    }

    /// A locally administered MAC address derived from the IP address, so it is unique on the
    /// net and known before the link exists.
    fn mac(&self) -> String {
        let [a, b, c, d] = self.ip.octets();
        format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }
}

/// Runs `ip ARGS`; the error names the command and carries its stderr.
fn iproute(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "the `ip` command is missing (install iproute2)".into(),
            _ => format!("ip {}: {e}", args.join(" ")),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!(
        "ip {}: {} ({})",
        args.join(" "),
        stderr.trim(),
        output.status
    ))
}

/// `ip -n NS COMMAND`, the command split at spaces (every name and address in it is free of
/// them: see `is_plain`).
fn ip_in(namespace: &str, command: &str) -> Result<(), String> {
    let args: Vec<&str> = ["-n", namespace]
        .into_iter()
        .chain(command.split_whitespace())
        .collect();
    iproute(&args)
}

/// Once the first namespace was made, a failing `ip` is a bug in the test or the kit.
fn must(result: Result<(), String>) {
    if let Err(why) = result {
        panic!("setting up a simulated host: {why}");
    }
}

/// Deletes a namespace, warning (never killing) when a process still runs in it: the namespace
/// then lives on, unreachable, until that process exits.
fn remove_namespace(namespace: &str) {
    let pids = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output();
    if let Ok(pids) = pids
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    {
        if !pids.is_empty() {
            eprintln!(
                "warning: processes {} still run in namespace {namespace}",
                pids.replace('\n', " ")
            );
        }
    }
    if let Err(why) = iproute(&["netns", "del", namespace]) {
        eprintln!("warning: could not delete namespace {namespace}: {why}");
    }
}

/// Deletes the namespaces of earlier runs with this prefix whose process is gone (killed before
/// its `Drop` ran), so a machine that runs the suites often does not pile them up.
fn sweep_stale(prefix: &str) {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(namespace) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = namespace
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(namespace);
        }
    }
}

/// Whether this process is root with the capabilities `ip netns` needs, read from
/// /proc/self/status (effective uid; CAP_NET_ADMIN is bit 12, CAP_SYS_ADMIN bit 21). Root in an
/// unprivileged container lacks them, and there a skip is the honest answer, not a failure.
fn can_admin_network() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    admin_in_status(&status)
}

fn admin_in_status(status: &str) -> bool {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let euid = field("Uid:").and_then(|u| u.split_whitespace().nth(1));
    let caps = field("CapEff:").and_then(|c| u64::from_str_radix(c, 16).ok());
    let wanted = (1 << 12) | (1 << 21);
    euid == Some("0") && caps.is_some_and(|c| c & wanted == wanted)
}

/// Lower-case ASCII letters and digits, non-empty: safe in namespace and file names, and free
/// of the `-` that separates the parts of a namespace name.
fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests;

//! The mesh the demo builds, as data: the trust domain and who is in it, the port of every
//! process (one struct per kind of sidecar, with named fields), the two authorization policies
//! and the sidecar configs written from all that. Nothing here starts a process or opens a
//! connection; the only side effect is asking the OS for free ports.

use std::path::Path;

/// The demo's trust domain: every identity is `spiffe://demo.tether/…`.
pub(crate) const TRUST_DOMAIN: &str = "demo.tether";

/// The identity paths of the demo's workloads.
pub(crate) const GATEWAY: &str = "ns/edge/sa/gateway";
/// Both replicas of service-a share one identity, as replicas of one workload do.
pub(crate) const SERVICE_A: &str = "ns/default/sa/service-a";
/// The identity service-b's sidecar serves and expects its callers to dial.
pub(crate) const SERVICE_B: &str = "ns/default/sa/service-b";
/// A valid mesh member that no policy allows anything: it shows default deny.
pub(crate) const INTRUDER: &str = "ns/default/sa/intruder";

/// Every sidecar the CA enrols, by name (its token is `{name}.token`) and identity path, in the
/// order they are enrolled.
pub(crate) const MEMBERS: [(&str, &str); 5] = [
    ("gateway", GATEWAY),
    ("a1", SERVICE_A),
    ("a2", SERVICE_A),
    ("b", SERVICE_B),
    ("intruder", INTRUDER),
];

/// service-b's policy: service-a may read `/data`, nobody else may do anything.
pub(crate) const B_POLICY: &str = "[[rule]]\nname = \"a-reads-data\"\nfrom = [\"spiffe://demo.tether/ns/default/sa/service-a\"]\nmethods = [\"GET\"]\npaths = [\"/data\", \"/data/*\"]\n";
/// service-a's policy: the gateway may GET anything.
pub(crate) const A_POLICY: &str = "[[rule]]\nname = \"gateway-reads\"\nfrom = [\"spiffe://demo.tether/ns/edge/sa/gateway\"]\nmethods = [\"GET\"]\n";

/// The SPIFFE ID of `path` in the demo's trust domain.
pub(crate) fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{path}")
}

/// Hands out ports: consecutive ones from `TETHER_DEMO_BASE_PORT` when it is set (fixed ports,
/// e.g. behind a firewall), otherwise ones the OS reports free.
pub(crate) struct PortSource {
    next: Option<u16>,
}

impl PortSource {
    /// Reads `TETHER_DEMO_BASE_PORT`; unset or unparsable means free ports.
    pub(crate) fn from_env() -> Self {
        let next = std::env::var("TETHER_DEMO_BASE_PORT")
            .ok()
            .and_then(|p| p.parse().ok());
        Self { next }
    }

    /// The next port (0 if the OS has none to offer, which makes the step using it fail).
    fn take(&mut self) -> u16 {
        if let Some(p) = self.next.as_mut() {
            *p += 1;
            return *p - 1;
        }
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0)
    }
}

/// service-b and its sidecar: inbound only, in front of the app.
pub(crate) struct ServerPorts {
    /// The plain-HTTP app.
    pub(crate) app: u16,
    /// The sidecar's mTLS inbound listener other sidecars dial.
    pub(crate) inbound: u16,
    /// The sidecar's admin listener (`/ready`, `/identity`, `/metrics`, `/rotate`).
    pub(crate) admin: u16,
}

/// One replica of service-a and its sidecar: inbound in front of the app, outbound for the
/// app's calls to service-b.
pub(crate) struct ReplicaPorts {
    /// The plain-HTTP app.
    pub(crate) app: u16,
    /// The sidecar's mTLS inbound listener the gateway dials.
    pub(crate) inbound: u16,
    /// The sidecar's plain-HTTP outbound listener the app calls service-b through.
    pub(crate) outbound: u16,
    /// The sidecar's admin listener.
    pub(crate) admin: u16,
}

/// An outbound-only sidecar with no app behind it: the gateway users call, and the intruder.
pub(crate) struct ClientPorts {
    /// The plain-HTTP outbound listener callers use.
    pub(crate) outbound: u16,
    /// The sidecar's admin listener.
    pub(crate) admin: u16,
}

/// The port of everything the demo starts.
pub(crate) struct Ports {
    /// The CA's HTTPS API.
    pub(crate) ca: u16,
    /// service-b.
    pub(crate) b: ServerPorts,
    /// service-a's two replicas.
    pub(crate) a: [ReplicaPorts; 2],
    /// The gateway users call.
    pub(crate) gateway: ClientPorts,
    /// The intruder.
    pub(crate) intruder: ClientPorts,
    /// The second CA replica's HTTPS API (sharing the first's SQLite file).
    pub(crate) ca2: u16,
}

impl Ports {
    /// Takes every port from `source`. The order is fixed (struct literals evaluate in the order
    /// written), so a given `TETHER_DEMO_BASE_PORT` always gives each process the same port.
    pub(crate) fn allocate(source: &mut PortSource) -> Self {
        Self {
            ca: source.take(),
            b: ServerPorts {
                app: source.take(),
                inbound: source.take(),
                admin: source.take(),
            },
            a: [
                ReplicaPorts::allocate(source),
                ReplicaPorts::allocate(source),
            ],
            gateway: ClientPorts::allocate(source),
            intruder: ClientPorts::allocate(source),
            // Last, so every other process keeps the port it had before replicas.
            ca2: source.take(),
        }
    }

    /// Every sidecar with its config, its state and token under `dir`, in start order.
    pub(crate) fn sidecars(&self, dir: &Path) -> Vec<Sidecar> {
        let b_id = id(SERVICE_B);
        let mut sidecars = vec![Sidecar::new(
            "b",
            self.b.admin,
            inbound(self.b.inbound, self.b.app, &dir.join("b-policy.toml")),
        )];
        for (i, r) in self.a.iter().enumerate() {
            let sections = inbound(r.inbound, r.app, &dir.join("a-policy.toml"))
                + &outbound(r.outbound, "service-b", &[self.b.inbound], &b_id);
            sidecars.push(Sidecar::new(&format!("a{}", i + 1), r.admin, sections));
        }
        let replicas = self.a.each_ref().map(|r| r.inbound);
        let gateway = outbound(
            self.gateway.outbound,
            "service-a",
            &replicas,
            &id(SERVICE_A),
        );
        sidecars.push(Sidecar::new("gateway", self.gateway.admin, gateway));
        let intruder = outbound(
            self.intruder.outbound,
            "service-b",
            &[self.b.inbound],
            &b_id,
        );
        sidecars.push(Sidecar::new("intruder", self.intruder.admin, intruder));
        for s in &mut sidecars {
            s.config = ca_section([self.ca, self.ca2], dir, &s.name) + &s.config;
        }
        sidecars
    }
}

impl ReplicaPorts {
    fn allocate(source: &mut PortSource) -> Self {
        Self {
            app: source.take(),
            inbound: source.take(),
            outbound: source.take(),
            admin: source.take(),
        }
    }
}

impl ClientPorts {
    fn allocate(source: &mut PortSource) -> Self {
        Self {
            outbound: source.take(),
            admin: source.take(),
        }
    }
}

/// One sidecar of the demo. Its files are named after it: `{name}.toml`, `{name}.token`,
/// `state-{name}/`; its process and log are `sidecar-{name}`.
pub(crate) struct Sidecar {
    /// The short name (`b`, `a1`, `a2`, `gateway`, `intruder`).
    pub(crate) name: String,
    /// Its admin port, to wait for `/ready`.
    pub(crate) admin: u16,
    /// The whole `tether-proxy` config file.
    pub(crate) config: String,
}

impl Sidecar {
    /// A sidecar with its own sections (admin appended); the `[ca]` section comes later.
    fn new(name: &str, admin: u16, sections: String) -> Self {
        let config = sections + &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
        Self {
            name: name.to_string(),
            admin,
            config,
        }
    }

    /// The supervisor's name for its process, which is also its log's name.
    pub(crate) fn process(&self) -> String {
        format!("sidecar-{}", self.name)
    }
}

/// `[ca]`: where sidecar `name` enrols and renews (either CA replica, the first preferred), and
/// where it keeps its state.
fn ca_section([ca, ca2]: [u16; 2], dir: &Path, name: &str) -> String {
    format!(
        "[ca]\nurls = [\"https://127.0.0.1:{ca}\", \"https://127.0.0.1:{ca2}\"]\nbundle = {:?}\ntoken_file = {:?}\nstate_dir = {:?}\n\n",
        dir.join("ca/bundle.pem"),
        dir.join(format!("{name}.token")),
        dir.join(format!("state-{name}")),
    )
}

/// `[inbound]`: mTLS on `listen`, forwarding what `policy` allows to the app on `app`.
fn inbound(listen: u16, app: u16, policy: &Path) -> String {
    format!(
        "[inbound]\nlisten = \"127.0.0.1:{listen}\"\napp = \"127.0.0.1:{app}\"\npolicy = {policy:?}\n"
    )
}

/// `[outbound]` on `listen` with one service, reached at `addresses` and expected to present
/// `identity`.
fn outbound(listen: u16, service: &str, addresses: &[u16], identity: &str) -> String {
    let addresses = addresses
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[outbound]\nlisten = \"127.0.0.1:{listen}\"\n[services.{service}]\naddress = [{addresses}]\nidentity = \"{identity}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixed(base: u16) -> Ports {
        Ports::allocate(&mut PortSource { next: Some(base) })
    }

    #[test]
    fn a_base_port_gives_every_process_the_same_port_as_before() {
        let p = fixed(20000);
        assert_eq!(
            (p.ca, p.b.app, p.b.inbound, p.b.admin),
            (20000, 20001, 20002, 20003)
        );
        let a: Vec<_> =
            p.a.iter()
                .map(|r| (r.app, r.inbound, r.outbound, r.admin))
                .collect();
        assert_eq!(
            a,
            [(20004, 20005, 20006, 20007), (20008, 20009, 20010, 20011)]
        );
        assert_eq!((p.gateway.outbound, p.gateway.admin), (20012, 20013));
        assert_eq!((p.intruder.outbound, p.intruder.admin), (20014, 20015));
        assert_eq!(p.ca2, 20016);
    }

    #[test]
    fn sidecars_start_in_order_with_their_admin_ports() {
        let s = fixed(20000).sidecars(Path::new("/d"));
        let names: Vec<_> = s.iter().map(|s| (s.name.as_str(), s.admin)).collect();
        assert_eq!(
            names,
            [
                ("b", 20003),
                ("a1", 20007),
                ("a2", 20011),
                ("gateway", 20013),
                ("intruder", 20015)
            ]
        );
        assert_eq!(s[1].process(), "sidecar-a1");
    }

    #[test]
    fn the_gateway_config_dials_both_replicas() {
        let dir = PathBuf::from("/d");
        let s = fixed(20000).sidecars(&dir);
        assert_eq!(
            s[3].config,
            "[ca]\nurls = [\"https://127.0.0.1:20000\", \"https://127.0.0.1:20016\"]\nbundle = \"/d/ca/bundle.pem\"\n\
             token_file = \"/d/gateway.token\"\nstate_dir = \"/d/state-gateway\"\n\n\
             [outbound]\nlisten = \"127.0.0.1:20012\"\n[services.service-a]\n\
             address = [\"127.0.0.1:20005\", \"127.0.0.1:20009\"]\n\
             identity = \"spiffe://demo.tether/ns/default/sa/service-a\"\n\
             [admin]\nlisten = \"127.0.0.1:20013\"\n"
        );
    }

    #[test]
    fn a_replica_config_has_inbound_then_outbound_to_service_b() {
        let s = fixed(20000).sidecars(Path::new("/d"));
        let body = s[2].config.split_once("\n\n").map(|(_, b)| b);
        assert_eq!(
            body,
            Some(
                "[inbound]\nlisten = \"127.0.0.1:20009\"\napp = \"127.0.0.1:20008\"\n\
                 policy = \"/d/a-policy.toml\"\n[outbound]\nlisten = \"127.0.0.1:20010\"\n\
                 [services.service-b]\naddress = [\"127.0.0.1:20002\"]\n\
                 identity = \"spiffe://demo.tether/ns/default/sa/service-b\"\n\
                 [admin]\nlisten = \"127.0.0.1:20011\"\n"
            )
        );
    }
}

//! The simulated hosts, checked with real sockets: python3 listens on one host and connects
//! from another, so what is measured is the namespaces' own network, not the test process's.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::*;
use crate::wait::eventually;

/// Accepts connections on `IP PORT` forever and answers each with `hello`; prints `ready` once
/// it listens.
const LISTENER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello")
    c.close()
"#;

/// Connects to `IP PORT` with a timeout of `SECONDS` and prints what happened: what the server
/// said, `timeout`, `refused` (a RST came back) or `error N` (e.g. no route to host).
const CONNECT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(s.recv(16).decode())
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error", e.errno)
"#;

/// A spawned listener, killed when the test ends however it ends.
struct Listener(Child);

impl Listener {
    fn start(host: &Host, port: u16) -> Listener {
        let mut child = host
            .command("python3")
            .args(["-c", LISTENER, &host.ip().to_string(), &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the listener's first line");
        let listener = Listener(child);
        assert_eq!(line.trim(), "ready", "the listener did not start");
        listener
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a connection from `from` to `to:port` sees within `seconds`.
fn connect(from: &Host, to: &Host, port: u16, seconds: f64) -> String {
    let output = from
        .command("python3")
        .args([
            "-c",
            CONNECT,
            &to.ip().to_string(),
            &port.to_string(),
            &seconds.to_string(),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn namespaces() -> String {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&list.stdout).into_owned()
}

#[tokio::test]
async fn a_cut_host_is_silent_until_restored() {
    let Some(net) = Net::new("tkcut") else { return };
    let (a, b) = (net.host("a", "10.77.0.1"), net.host("b", "10.77.0.2"));
    let _listener = Listener::start(&b, 7000);
    assert_eq!(connect(&a, &b, 7000, 10.0), "hello");
    // A port with nothing behind it is refused (a RST), so the silence below is the cut's.
    assert_eq!(connect(&a, &b, 7001, 10.0), "refused");
    assert_eq!(
        connect(&a, &a, 7000, 10.0),
        "refused",
        "a host is not its neighbour"
    );

    b.cut();
    assert_eq!(connect(&a, &b, 7000, 2.0), "timeout");
    assert_eq!(
        connect(&a, &b, 7001, 2.0),
        "timeout",
        "a cut host sends no RST either"
    );
    assert_eq!(
        connect(&b, &a, 7001, 2.0),
        "timeout",
        "nor does anything reach out of it"
    );

    b.restore();
    let back = eventually(Duration::from_secs(30), || async {
        connect(&a, &b, 7000, 2.0) == "hello"
    });
    assert!(back.await, "the restored host answers again");
}

#[test]
fn dropping_the_net_deletes_its_namespaces_even_after_a_panic() {
    let mut made = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(net) = Net::new("tkdrop") else {
            return;
        };
        let host = net.host("a", "10.77.0.1");
        made = Some((net.name().to_owned(), host.namespace().to_owned()));
        assert!(namespaces().contains(host.namespace()));
        panic!("the test fails with the net still up");
    }));
    let Some((base, host)) = made else { return };
    assert!(outcome.is_err());
    assert!(host.starts_with(&format!("{base}-")));
    let left: Vec<_> = namespaces()
        .lines()
        .filter(|l| l.starts_with(&base))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn postgres_on_a_host_serves_its_neighbours() {
    let Some(net) = Net::new("tkpg") else { return };
    let (db, app) = (net.host("db", "10.77.0.10"), net.host("app", "10.77.0.20"));
    let Some(server) = postgres_in(&db) else {
        return;
    };
    assert_eq!(server.url(), "postgres://postgres@10.77.0.10:5432/postgres");
    let psql = crate::postgres::server_bin_dir()
        .expect("installed")
        .join("psql");
    let query = |host: &Host| {
        let url = format!("{}?connect_timeout=5", server.url());
        let out = host
            .command(&psql)
            .args([url.as_str(), "-XAtc", "SELECT 40 + 2"])
            .output();
        let out = out.expect("psql runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(query(&app), (true, "42".to_owned()));

    server.stop();
    assert!(!query(&app).0, "a stopped server answers nobody");
    server.start();
    assert_eq!(
        query(&app),
        (true, "42".to_owned()),
        "a restarted server answers again"
    );
    db.cut();
    assert!(!query(&app).0, "a cut database host answers nobody");
}

#[test]
fn names_addresses_and_capabilities() {
    assert!(is_plain("db2") && !is_plain("") && !is_plain("a-b") && !is_plain("A"));
    let host = Host {
        name: "a".into(),
        namespace: "n".into(),
        ip: "10.77.0.201".parse().unwrap(),
        switch: "s".into(),
        port: "p0".into(),
    };
    assert_eq!(host.mac(), "02:00:0a:4d:00:c9");
    let status = |uid: &str, caps: &str| format!("Name:\tx\nUid:\t{uid}\nCapEff:\t{caps}\n");
    assert!(admin_in_status(&status("0\t0\t0\t0", "000001ffffffffff")));
    assert!(
        !admin_in_status(&status("0\t0\t0\t0", "00000000a80425fb")),
        "a container's root"
    );
    assert!(!admin_in_status(&status(
        "1000\t1000\t1000\t1000",
        "0000000000000000"
    )));
    assert!(
        !admin_in_status(&status("0\t1000\t0\t0", "000001ffffffffff")),
        "the effective uid counts"
    );
}

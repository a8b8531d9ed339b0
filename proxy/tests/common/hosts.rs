//! Driving processes on simulated hosts (`tether_testkit::netns`), for the end-to-end tests
//! whose CA replicas, database and sidecars run on hosts of their own: the real binaries
//! started in a host's namespace with their logs kept ([`Procs`]), one-shot commands and curl
//! run there, and a load loop through an outbound sidecar that counts every failed request
//! ([`Load`]). The test process stays in the root namespace and cannot reach the hosts'
//! addresses itself, so everything it looks at goes through a client run on a host.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Stdio};

use tether_testkit::netns::Host;

use super::{run_until_exit, Child};

/// GETs `/data` through the outbound on 127.0.0.1:PORT in a loop, a new connection each time,
/// counting answers that are not service-b's 200 with service-a as the verified caller. Each
/// line on stdin makes it print `{"ok": N, "failed": M, ...}`; end of stdin, a last such line,
/// then it exits.
const LOAD: &str = r#"
import http.client, json, sys, threading, time
port, stop, ok, failed, first, gap, last = int(sys.argv[1]), threading.Event(), 0, 0, [], 0.0, time.monotonic()
def report():
    print(json.dumps({"ok": ok, "failed": failed, "first": first[:5], "max_gap": gap}), flush=True)
def commands():
    for _ in sys.stdin:
        report()
    stop.set()
threading.Thread(target=commands, daemon=True).start()
while not stop.is_set():
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/data", headers={"Host": "service-b"})
        r = c.getresponse()
        body = r.read()
        c.close()
        good = r.status == 200 and b"ns/default/sa/service-a" in body
        why = f"{r.status} {body[:200]!r}"
    except Exception as e:
        good, why = False, repr(e)
    now = time.monotonic()
    if good:
        ok, gap, last = ok + 1, max(gap, now - last), now
    else:
        failed += 1
        first.append(f"{time.time():.3f} {why}")
    time.sleep(0.005)
report()
"#;

/// The processes of the test, each logging to `<name>.log` in the temp dir. Dropping it kills
/// them all (before the hosts go), and after a failure prints the end of every log.
pub struct Procs {
    /// The temp dir the logs (and whatever else the test puts there) go to.
    pub dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    /// No processes yet; logs go to `dir`.
    pub fn new(dir: &Path) -> Procs {
        Procs {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    /// Starts `program ARGS` on `host` as `name`, its stdout and stderr in `<name>.log`.
    pub fn spawn(&mut self, host: &Host, name: &str, program: &Path, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = host
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.push((name.to_owned(), Child(child)));
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (name, child) in self.children.drain(..).rev() {
            drop(child);
            if panicking {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")));
                let log = log.unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- {name}.log (last lines) ---");
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

/// The load loop on `app` and its pipes.
pub struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Load {
    /// Starts the loop on `host`, calling the outbound listener on its 127.0.0.1:`port`.
    pub fn start(host: &Host, port: u16) -> Load {
        let mut child = host
            .command("python3")
            .args(["-c", LOAD, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().unwrap());
        Load {
            child: Child(child),
            stdin,
            stdout: BufReader::new(stdout),
        }
    }

    /// The counts so far.
    pub fn counts(&mut self) -> serde_json::Value {
        writeln!(self.stdin.as_mut().unwrap()).expect("the load loop runs");
        self.read()
    }

    /// Stops the loop and returns its final counts.
    pub fn finish(mut self) -> serde_json::Value {
        drop(self.stdin.take());
        let counts = self.read();
        let _ = self.child.0.wait();
        counts
    }

    fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("the load loop's report");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("load report {line:?}: {e}"))
    }
}

/// `tether-ca`, `tether-proxy` and `service-b`: the workspace's binaries, next to each other in
/// the target dir (`cargo test --workspace`, as `make test` runs it, builds each for its own
/// package's integration tests: `service-b` for `demo-services/tests/service_b.rs`).
pub fn binaries() -> [PathBuf; 3] {
    let proxy = PathBuf::from(env!("CARGO_BIN_EXE_tether-proxy"));
    [binary("tether-ca"), proxy, binary("service-b")]
}

/// The workspace binary `name`, next to `tether-proxy` in the target dir; fails the test,
/// saying how to build it, when it is not there.
pub fn binary(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_tether-proxy")).with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: run the whole workspace's tests (`cargo test --workspace`, as `make \
         test` does), or build it first (`cargo build --workspace --bins`)",
        bin.display()
    );
    bin
}

/// Runs `program ARGS` on `host` to completion and returns its stdout; fails the test, with its
/// stderr, when it exits non-zero (or hangs past 10 s).
pub fn run_on(host: &Host, program: &Path, args: &[&str]) -> String {
    let out = run_until_exit(host.command(program).args(args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} on {}: {}: {stderr}",
        program.display(),
        host.name(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// curl on `host` (`ARGS` then the URL); the status and body, or `None` when no HTTP answer came
/// (refused handshake, timeout, reset).
pub fn curl(host: &Host, args: &[&str]) -> Option<(u16, String)> {
    let out = host
        .command("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.parse().ok()?, body.to_owned()))
}

/// The sum of metric `name`'s samples at the plain-HTTP metrics `url`, read from `host`; `None`
/// when it does not answer.
pub fn metric(host: &Host, url: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, text) = curl(host, &[url]).filter(|(code, _)| *code == 200)?;
    Some(tether_testkit::metrics::sum(&text, name, labels))
}

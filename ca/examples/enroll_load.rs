//! CA issuance throughput over the HTTPS API: concurrent `POST /v1/enroll` with pre-made
//! one-time tokens and pre-made CSRs, against a real `tether-ca serve` process.
//!
//! ```sh
//! cargo build --release -p tether-ca --bins --examples
//! target/release/examples/enroll_load                      # 4,000 enrollments, 32 at a time
//! target/release/examples/enroll_load --count 8000 --concurrency 64 --new-connections
//! target/release/examples/enroll_load --replicas 2           # two replicas, clients split
//! target/release/examples/enroll_load --replicas 2 --database postgres://USER@HOST/DB
//! ```
//!
//! It makes a throwaway CA in a temporary directory (`tether-ca init` through the library),
//! creates `--count` enrollment tokens and CSRs up front (not timed), starts
//! `tether-ca serve` (the binary next to this example's directory, or `--ca-bin`) on a free
//! loopback port, and runs `--concurrency` clients that each enroll one token at a time, over
//! one kept-alive HTTP/1.1 TLS connection per client (default) or a new TLS connection per
//! enrollment (`--new-connections`, as real sidecars do). It prints one line like
//!
//! ```text
//! enroll_load: 4000 ok, 0 failed in 1.52 s = 2631 certs/s (keep-alive, 32 concurrent, 1 replica on SQLite); server CPU 1.71 s = 428 µs/cert
//! ```
//!
//! and exits non-zero if any enrollment failed. With `--replicas N` it adds N−1 replicas with
//! `tether-ca replica add` and serves each, client `i` enrolling at replica `i mod N`; the server
//! CPU is summed over every replica. `--database` puts the CA on a (fresh, empty) PostgreSQL
//! database instead of the embedded SQLite file. Every server process is killed on every exit
//! path (each is a child owned by a guard).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use tether_ca::store::DatabaseUrl;
use tether_ca::{Authority, InitOptions};
use tether_certs::{SpiffeId, TrustDomain};

const HOUR: Duration = Duration::from_secs(3600);

struct Args {
    count: usize,
    concurrency: usize,
    new_connections: bool,
    ca_bin: PathBuf,
    keep_dir: bool,
    replicas: usize,
    database: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: enroll_load [--count N] [--concurrency C] [--new-connections] [--ca-bin PATH] [--keep-dir] [--replicas N] [--database postgres://USER@HOST/DB]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let default_bin = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("tether-ca")))
        .unwrap_or_else(|| PathBuf::from("target/release/tether-ca"));
    let mut args = Args {
        count: 4000,
        concurrency: 32,
        new_connections: false,
        ca_bin: default_bin,
        keep_dir: false,
        replicas: 1,
        database: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--count" => args.count = value().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => args.concurrency = value().parse().unwrap_or_else(|_| usage()),
            "--new-connections" => args.new_connections = true,
            "--ca-bin" => args.ca_bin = PathBuf::from(value()),
            "--keep-dir" => args.keep_dir = true,
            "--replicas" => args.replicas = value().parse().unwrap_or_else(|_| usage()),
            "--database" => args.database = Some(value()),
            _ => usage(),
        }
    }
    if args.count == 0 || args.concurrency == 0 || args.replicas == 0 {
        usage();
    }
    args
}

/// The `tether-ca serve` child, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a process, in seconds (Linux `/proc/PID/stat`, clock ticks of 100 Hz).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The CPU time of every process in `pids`, summed.
fn total_cpu(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// Serves `state` and N−1 replicas added next to it (`replica add`), each on a free port.
fn start_replicas(
    args: &Args,
    tmp: &Path,
    state: &Path,
) -> Result<Vec<(Server, SocketAddr)>, Box<dyn std::error::Error>> {
    let mut dirs = vec![state.to_path_buf()];
    for i in 2..=args.replicas {
        let out = tmp.join(format!("ca{i}"));
        let status = Command::new(&args.ca_bin)
            .arg("--state-dir")
            .arg(state)
            .args(["replica", "add", "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("tether-ca replica add failed: {status}").into());
        }
        dirs.push(out);
    }
    dirs.iter()
        .map(|dir| {
            let addr = free_port()?;
            let child = Command::new(&args.ca_bin)
                .arg("--state-dir")
                .arg(dir)
                .args(["serve", "--listen", &addr.to_string()])
                .env("TETHER_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?;
            Ok((Server(child), addr))
        })
        .collect()
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn tls_connector(state: &Path) -> Result<TlsConnector, Box<dyn std::error::Error>> {
    let bundle = std::fs::read(state.join("bundle.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in tether_certs::pem::certificates(&bundle)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, tls: &TlsConnector) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn enroll_one(sender: &mut Sender, body: String) -> Result<(), String> {
    let req = hyper::Request::post("/v1/enroll")
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != hyper::StatusCode::OK || !body.windows(11).any(|w| w == b"certificate") {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// One enrollment request body (token + CSR) per enrollment to run.
fn make_bodies(
    state: &Path,
    td: &TrustDomain,
    count: usize,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let authority = Authority::open(state)?;
    let id = SpiffeId::from_parts(td, "/ns/default/sa/load")?;
    (0..count)
        .map(|_| -> Result<String, Box<dyn std::error::Error>> {
            let token = authority.create_token(&id, HOUR)?;
            let key = tether_certs::keys::generate_key()?;
            let csr = tether_certs::keys::generate_anonymous_csr(&key)?;
            Ok(serde_json::json!({ "token": token, "csr": csr }).to_string())
        })
        .collect()
}

/// What a load run measured.
struct Outcome {
    elapsed: f64,
    cpu: Option<f64>,
    failed: usize,
    first_error: Option<String>,
}

/// Shared between the clients of a run.
struct Work {
    bodies: Vec<String>,
    next: AtomicUsize,
    failed: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Work {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(e);
    }
}

/// One client: enrolls the next body until none is left, reconnecting as `new_connections`
/// says (or after a failure).
async fn client(work: Arc<Work>, addr: SocketAddr, tls: TlsConnector, new_connections: bool) {
    let mut sender: Option<Sender> = None;
    loop {
        let i = work.next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = work.bodies.get(i) else {
            break;
        };
        if new_connections || sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = match connect(addr, &tls).await {
                Ok(s) => Some(s),
                Err(e) => {
                    work.fail(e);
                    continue;
                }
            };
        }
        let Some(s) = sender.as_mut() else { continue };
        if let Err(e) = enroll_one(s, body.clone()).await {
            work.fail(e);
            sender = None;
        }
    }
}

/// Waits for every server to listen, then runs `args.concurrency` clients over `bodies`.
async fn run_load(
    args: &Args,
    addrs: &[SocketAddr],
    pids: &[u32],
    tls: TlsConnector,
    bodies: Vec<String>,
) -> Result<Outcome, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in addrs {
        while TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                return Err("tether-ca serve did not start listening within 20 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let work = Arc::new(Work {
        bodies,
        next: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let cpu_before = total_cpu(pids);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.concurrency {
        let addr = addrs[i % addrs.len()];
        tasks.spawn(client(
            work.clone(),
            addr,
            tls.clone(),
            args.new_connections,
        ));
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let first_error = work.first_error.lock().unwrap().take();
    Ok(Outcome {
        elapsed,
        cpu: cpu_before.zip(total_cpu(pids)).map(|(a, b)| b - a),
        failed: work.failed.load(Ordering::Relaxed),
        first_error,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("ca");
    let td = TrustDomain::new("demo.local")?;
    let mut init = InitOptions::with_defaults(td.clone());
    init.database = args
        .database
        .as_deref()
        .map(DatabaseUrl::parse)
        .transpose()?;
    Authority::init(&state, &init)?;
    let prep = Instant::now();
    let bodies = make_bodies(&state, &td, args.count)?;
    eprintln!(
        "enroll_load: {} tokens and CSRs made in {:.2} s (not timed)",
        args.count,
        prep.elapsed().as_secs_f64()
    );

    if !args.ca_bin.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p tether-ca` or pass --ca-bin",
            args.ca_bin.display()
        )
        .into());
    }
    let servers = start_replicas(&args, dir.path(), &state)?;
    let addrs: Vec<SocketAddr> = servers.iter().map(|(_, a)| *a).collect();
    let pids: Vec<u32> = servers.iter().map(|(s, _)| s.0.id()).collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tls = tls_connector(&state)?;
    let result = rt.block_on(run_load(&args, &addrs, &pids, tls, bodies));
    drop(servers);
    let Outcome {
        elapsed,
        cpu,
        failed,
        first_error,
    } = result?;
    let ok = args.count - failed;
    let cpu_text = cpu.map_or_else(
        || "server CPU unknown".to_string(),
        |c| {
            format!(
                "server CPU {c:.2} s = {:.0} µs/cert",
                c * 1e6 / ok.max(1) as f64
            )
        },
    );
    println!(
        "enroll_load: {ok} ok, {failed} failed in {elapsed:.2} s = {:.0} certs/s ({}, {} concurrent, {} replica{} on {}); {cpu_text}",
        ok as f64 / elapsed,
        if args.new_connections {
            "new TLS connection per enrollment"
        } else {
            "keep-alive"
        },
        args.concurrency,
        args.replicas,
        if args.replicas == 1 { "" } else { "s" },
        if args.database.is_some() { "PostgreSQL" } else { "SQLite" },
    );
    if args.keep_dir {
        let kept = dir.keep();
        eprintln!("enroll_load: state kept in {}", kept.display());
    }
    if let Some(e) = first_error {
        eprintln!("enroll_load: first failure: {e}");
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

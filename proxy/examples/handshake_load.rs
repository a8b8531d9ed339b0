//! Full mTLS handshakes per second against an inbound sidecar (Tether's, or nginx/haproxy
//! configured as one): every operation opens a new TCP connection and makes a full TLS 1.3
//! handshake with a client certificate (no resumption, no 0-RTT), for `make bench`.
//!
//! ```sh
//! cargo build --release -p tether-proxy --examples
//! target/release/examples/handshake_load --addr 127.0.0.1:18443 \
//!     --cert client-chain.pem --key client-key.pem --bundle ca.pem \
//!     --expect spiffe://demo.local/ns/default/sa/service-b \
//!     --mode request --duration 10 --concurrency 16 --pid 1234
//! ```
//!
//! Modes:
//! - `handshake`: handshake, then close_notify, then read until the server closes — so the
//!   server has processed (and judged) the client certificate before the next one starts;
//! - `request`: handshake, then one `GET /` (HTTP/1.1, `Connection: close`) whose response must
//!   be 200 — a new mTLS connection per request, straight at the inbound;
//! - `hold`: open `--concurrency` connections, make one keep-alive request on each, print
//!   `handshake_load mode=hold connected=N failed=M` once all are up, then keep them open for
//!   `--duration` seconds (so the caller can read the server's RSS while it holds them).
//!
//! The server is verified the way Tether's outbound does it (X509-SVID rules + exactly the
//! `--expect` SPIFFE ID, with Tether's own verifier), so every target costs the client the same.
//! Prints one line of `key=value` pairs (ops/s, failures, and the CPU the `--pid` processes used
//! per operation, from `/proc/PID/stat`), e.g.
//!
//! ```text
//! handshake_load mode=request ok=12011 failed=0 seconds=10.00 rate=1201.1 server_cpu_s=9.12 server_cpu_us_per_op=759
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use tether_certs::verify::{
    client_config, ExpectedPeer, Revocation, SvidServerVerifier, SvidVerifier,
};
use tether_certs::{RevokedSet, SpiffeId, TrustBundle};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Handshake,
    Hold,
    Request,
}

struct Args {
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    expect: SpiffeId,
    server_name: String,
    host: String,
    mode: Mode,
    duration: Duration,
    concurrency: usize,
    threads: usize,
    pids: Vec<u32>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "handshake_load: {problem}\nusage: handshake_load --addr IP:PORT --cert CHAIN.pem --key KEY.pem \
         --bundle ROOTS.pem --expect SPIFFE_ID [--server-name NAME] [--host HOST] \
         [--mode handshake|request|hold] [--duration SECS] [--concurrency N] [--threads N] [--pid PID]..."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut addr = None;
    let (mut cert, mut key, mut bundle, mut expect) = (None, None, None, None);
    let mut server_name = "service-b.default.svc".to_string();
    let mut host = "service-b".to_string();
    let mut mode = Mode::Handshake;
    let mut duration = Duration::from_secs(10);
    let (mut concurrency, mut threads) = (16usize, 1usize);
    let mut pids = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--addr" => addr = Some(value().parse().unwrap_or_else(|_| usage("bad --addr"))),
            "--cert" => cert = Some(PathBuf::from(value())),
            "--key" => key = Some(PathBuf::from(value())),
            "--bundle" => bundle = Some(PathBuf::from(value())),
            "--expect" => {
                expect = Some(SpiffeId::parse(&value()).unwrap_or_else(|e| usage(&format!("{e}"))))
            }
            "--server-name" => server_name = value(),
            "--host" => host = value(),
            "--mode" => {
                mode = match value().as_str() {
                    "handshake" => Mode::Handshake,
                    "hold" => Mode::Hold,
                    "request" => Mode::Request,
                    _ => usage("--mode is handshake, request or hold"),
                }
            }
            "--duration" => {
                let secs: f64 = value().parse().unwrap_or_else(|_| usage("bad --duration"));
                duration = Duration::from_secs_f64(secs);
            }
            "--concurrency" => {
                concurrency = value()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --concurrency"))
            }
            "--threads" => threads = value().parse().unwrap_or_else(|_| usage("bad --threads")),
            "--pid" => pids.push(value().parse().unwrap_or_else(|_| usage("bad --pid"))),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    Args {
        addr: addr.unwrap_or_else(|| usage("--addr is required")),
        cert: cert.unwrap_or_else(|| usage("--cert is required")),
        key: key.unwrap_or_else(|| usage("--key is required")),
        bundle: bundle.unwrap_or_else(|| usage("--bundle is required")),
        expect: expect.unwrap_or_else(|| usage("--expect is required")),
        server_name,
        host,
        mode,
        duration,
        concurrency: concurrency.max(1),
        threads: threads.max(1),
        pids,
    }
}

/// utime + stime of a process, in seconds (`/proc/PID/stat`, clock ticks of 100 Hz).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn total_cpu(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

fn connector(args: &Args) -> Result<TlsConnector, Box<dyn std::error::Error>> {
    let chain = tether_certs::pem::certificates(&std::fs::read(&args.cert)?)?;
    let key = tether_certs::pem::private_key(&std::fs::read(&args.key)?)?;
    let bundle = TrustBundle::from_pem(&std::fs::read(&args.bundle)?)?;
    let core = Arc::new(SvidVerifier::new(
        &bundle,
        Revocation::new(RevokedSet::default()),
    ));
    let verifier = SvidServerVerifier::new(
        core,
        ExpectedPeer::OneOf(Arc::from(vec![args.expect.clone()])),
    );
    let mut config = client_config(chain, key, verifier)?;
    // HTTP/1.1 only, so `request` mode can speak plain HTTP/1.1 to every target.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

async fn open(
    addr: SocketAddr,
    tls: &TlsConnector,
    name: &ServerName<'static>,
) -> Result<Stream, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tls.connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// One keep-alive request: reads the response head and a `Content-Length` body, leaves the
/// connection open.
async fn keep_alive_request(stream: &mut Stream, request: &[u8]) -> Result<(), String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("server closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(format!("response: {:?}", &head[..head.len().min(120)]));
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

async fn one(
    addr: SocketAddr,
    tls: &TlsConnector,
    name: &ServerName<'static>,
    mode: Mode,
    request: &[u8],
) -> Result<(), String> {
    let mut stream = open(addr, tls, name).await?;
    let mut buf = Vec::with_capacity(1024);
    match mode {
        Mode::Handshake => {
            // close_notify, then wait for the server to close: a refused certificate shows up
            // here as an alert (TLS 1.3 clients learn of it only on their first read).
            stream
                .shutdown()
                .await
                .map_err(|e| format!("close_notify: {e}"))?;
            match stream.read_to_end(&mut buf).await {
                // nginx closes without a close_notify of its own; a refusal would be an alert.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(format!("after handshake: {e}")),
            }
        }
        Mode::Hold => keep_alive_request(&mut stream, request).await?,
        Mode::Request => {
            stream
                .write_all(request)
                .await
                .map_err(|e| format!("write: {e}"))?;
            // Some servers close without close_notify after `Connection: close`; the response is
            // complete by then, so an unexpected EOF after a full status line still counts.
            let read = stream.read_to_end(&mut buf).await;
            if !buf.starts_with(b"HTTP/1.1 200") {
                return Err(match read {
                    Err(e) => format!("read: {e}"),
                    Ok(_) => format!(
                        "response: {:?}",
                        String::from_utf8_lossy(&buf[..buf.len().min(120)])
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `hold` mode: see the module docs.
async fn hold(
    args: &Args,
    tls: TlsConnector,
    name: ServerName<'static>,
    request: Vec<u8>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Connect at most 64 at a time: a burst of 1,000 SYNs would overflow small accept backlogs
    // and measure the backlog instead of the proxy.
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (tls, name, request, gate) = (tls.clone(), name.clone(), request.clone(), gate.clone());
        let addr = args.addr;
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let mut stream = open(addr, &tls, &name).await?;
            keep_alive_request(&mut stream, &request).await?;
            drop(permit);
            Ok::<_, String>(stream)
        });
    }
    let mut held = Vec::with_capacity(args.concurrency);
    let mut failed = 0usize;
    let mut first_error = None;
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    })
    .await;
    if all.is_err() {
        first_error.get_or_insert("timed out opening connections".into());
    }
    println!(
        "handshake_load mode=hold connected={} failed={failed}",
        held.len()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    if let Some(e) = first_error {
        eprintln!("handshake_load: first failure: {e}");
    }
    tokio::time::sleep(args.duration).await;
    drop(held);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let tls = connector(&args)?;
    let name = ServerName::try_from(args.server_name.clone())?;
    let connection = if args.mode == Mode::Hold {
        "keep-alive"
    } else {
        "close"
    };
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: {connection}\r\n\r\n",
        args.host
    )
    .into_bytes();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    if args.mode == Mode::Hold {
        return rt.block_on(hold(&args, tls, name, request));
    }
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let stop = Arc::new(AtomicBool::new(false));
    let (elapsed, cpu, ok, failed) = rt.block_on(async {
        let cpu_before = total_cpu(&args.pids);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency {
            let (tls, name, request) = (tls.clone(), name.clone(), request.clone());
            let (ok, failed, first_error, stop) = (
                ok.clone(),
                failed.clone(),
                first_error.clone(),
                stop.clone(),
            );
            let (addr, mode) = (args.addr, args.mode);
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match one(addr, &tls, &name, mode, &request).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            // A refusing or absent server must not become a busy loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
        tokio::time::sleep(args.duration).await;
        stop.store(true, Ordering::Relaxed);
        // Operations in flight finish (bounded by the OS connect/handshake timeouts).
        let counted_until = Instant::now();
        let cpu_after = total_cpu(&args.pids);
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
        let elapsed = counted_until.duration_since(started).as_secs_f64();
        (elapsed, cpu, ok, failed)
    });
    let mode = match args.mode {
        Mode::Handshake => "handshake",
        Mode::Hold => "hold",
        Mode::Request => "request",
    };
    let cpu_text = match cpu {
        Some(c) if ok > 0 => format!(
            " server_cpu_s={c:.2} server_cpu_us_per_op={:.0}",
            c * 1e6 / ok as f64
        ),
        _ => String::new(),
    };
    println!(
        "handshake_load mode={mode} ok={ok} failed={failed} seconds={elapsed:.2} rate={:.1}{cpu_text}",
        ok as f64 / elapsed
    );
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!("handshake_load: first failure: {e}");
    }
    if ok == 0 {
        std::process::exit(1);
    }
    Ok(())
}

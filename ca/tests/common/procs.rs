//! Real `tether-ca serve` processes for the crash and replica tests: start one on a free port and
//! wait until it answers, make enrollment tokens with the CLI, enroll over the API without
//! panicking when the server is gone (the outcome of a request cut off by a kill is unknown).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use super::*;

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Starts `tether-ca serve` on a free port and waits until it answers.
pub async fn serve(dir: &Path, log: &Path, extra: &[&str]) -> (tokio::process::Child, Client) {
    serve_with_env(dir, log, extra, &[]).await
}

/// [`serve`] with `env` set for the child (its `TETHER_CA_*` settings).
pub async fn serve_with_env(
    dir: &Path,
    log: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, Client) {
    let addr = free_addr();
    let log = std::fs::File::create(log).expect("log file");
    let mut cmd = tokio::process::Command::from(bin());
    cmd.arg("--state-dir")
        .arg(dir)
        .args(["serve", "--listen", &addr.to_string()])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn tether-ca serve");
    let client = Client::new(addr, &dir.join("bundle.pem"), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("tether-ca serve exited early with {status}");
        }
        if let Ok(r) = client.try_get("/v1/bundle").await {
            assert_eq!(r.status, StatusCode::OK);
            return (child, client);
        }
        assert!(Instant::now() < deadline, "tether-ca serve never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn workload(i: usize) -> String {
    id(&format!("/ns/load/sa/w{i}")).to_string()
}

/// Makes `count` tokens with the CLI (`threads` processes at a time), each for its own identity
/// ([`workload`]).
pub fn make_tokens(dir: &Path, count: usize, threads: usize) -> Vec<(String, String)> {
    let per = count / threads;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t * per..(t + 1) * per)
                        .map(|i| {
                            let who = workload(i);
                            let out = ca_cli(dir, &["enroll", &who]);
                            assert_ok(&out, "tether-ca enroll");
                            (stdout(&out).trim().to_string(), who)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("token thread"))
            .collect()
    })
}

pub async fn enroll(
    client: &Client,
    token: &str,
    who: &str,
) -> Result<(StatusCode, String), String> {
    let key = tether_certs::keys::generate_key().expect("key");
    let csr = tether_certs::keys::generate_csr(&key, &tether_certs::SpiffeId::parse(who).unwrap())
        .expect("csr");
    let body = serde_json::to_vec(&json!({"token": token, "csr": csr})).unwrap();
    let mut req = request(http::Method::POST, "/v1/enroll", body.into());
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let r = client.try_send(req).await?;
    let serial = if r.status == StatusCode::OK {
        r.json()["serial"].as_str().unwrap_or_default().to_string()
    } else {
        r.text()
    };
    Ok((r.status, serial))
}

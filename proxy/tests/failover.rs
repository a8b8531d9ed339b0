//! Sidecars failing over between CA replicas, end to end: two `tether-ca` API servers on one
//! state dir (two replicas sharing one SQLite file), a sidecar listing both. When the replica in
//! use shuts down mid long-poll, the poll moves to the other at once: a revocation made through
//! the survivor's API reaches the sidecar, a renewal goes through it, `/identity` names it and
//! `tether_ca_failovers_total` counts the move. A replica answering 503 passes enrollment to the
//! next one; one answering 403 does not (the refusal is the answer); one that accepts TCP and
//! then never answers loses the call within seconds, not the call's 15 s. (A replica's host cut
//! off — silence on an established connection — needs packet loss, so it is `ha_netns.rs`'s;
//! the HTTP/2 PINGs and socket options behind it are checked in `ca_client`'s unit tests.)

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use common::*;

const ALLOW_ALL: &str = "[[rule]]\nname = \"all\"\nfrom = [\"spiffe://demo.tether/*\"]\n";

/// service-b's inbound sidecar in CA mode listing `urls` in order, enrolling with a fresh
/// token, with an admin listener.
async fn sidecar_with(pki: &Pki, urls: &[&str]) -> Sidecar {
    let token = token(pki, SERVICE_B);
    let ca = ca_urls_section(pki, urls, Some(&token), "state-b", "");
    let pol = pki.policy(ALLOW_ALL);
    pki.start_inbound("b", &ca, start_app().await, &pol, ADMIN_SECTION)
        .await
}

/// The sum of `name`'s samples on `ca`'s registry.
fn ca_metric(ca: &CaServer, name: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&ca.registry.gather())
        .unwrap();
    tether_testkit::metrics::sum(&text, name, &[])
}

/// `/identity`'s `ca_url`.
async fn ca_url(s: &Sidecar) -> String {
    s.identity().await["ca_url"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Asserts that `side` counted a failover with `reason` and now uses the CA at `url`.
async fn assert_moved(side: &Sidecar, reason: &str, url: &str) {
    let moves = side
        .scraped("tether_ca_failovers_total", &[("reason", reason)])
        .await;
    assert!(moves >= 1.0, "no failover counted with reason {reason}");
    assert_eq!(ca_url(side).await, url);
}

/// `POST /v1/revoke` of `serial` on `ca`'s API, as its admin (the state dir's `admin/`
/// credential), over a real mTLS connection; returns the status and body.
async fn revoke_through(pki: &Pki, ca: &CaServer, serial: &tether_certs::Serial) -> (u16, String) {
    let config = raw_client_config(Some(&pki.ca.dir().join("admin")));
    let addr: SocketAddr = ([127, 0, 0, 1], ca.port()).into();
    let tls = tls_connect(addr, config).await.unwrap();
    let body = format!(r#"{{"serial":"{serial}"}}"#);
    let head = format!(
        "POST /v1/revoke HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        ca.port(),
        body.len()
    );
    raw_exchange(tls, &head, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_mid_poll_hands_the_crl_poll_and_renewals_to_the_next() {
    let pki = Pki::new();
    let (a, b) = (CaServer::start(&pki).await, CaServer::start(&pki).await);
    let side = sidecar_with(&pki, &[&a.url, &b.url]).await;
    wait_ready(&side).await;
    let caller = pki.issue(SERVICE_A);
    let inbound = side.inbound.unwrap();
    assert_eq!(raw_get_as(inbound, &caller, "/").await, Ok(StatusCode::OK));
    // The CRL long-poll is held at A, the URL in use.
    assert!(
        eventually(Duration::from_secs(10), || ca_metric(
            &a,
            "tether_ca_crl_waiters"
        ) >= 1.0)
        .await,
        "no long-poll held at the first replica"
    );
    assert_eq!(ca_url(&side).await, a.url);
    assert_eq!(side.scraped("tether_ca_failovers_total", &[]).await, 0.0);

    let died = Instant::now();
    a.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || ca_metric(
            &b,
            "tether_ca_crl_waiters"
        ) >= 1.0)
        .await,
        "the long-poll never moved to the second replica"
    );
    println!(
        "long-poll at the second replica {:?} after the first shut down",
        died.elapsed()
    );
    assert_moved(&side, "connect", &b.url).await;

    // A revocation through the survivor's API reaches the sidecar: the caller is refused.
    let (status, body) = revoke_through(&pki, &b, &Pki::serial(&caller)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        tether_testkit::wait::eventually(Duration::from_secs(10), || async {
            raw_get_as(inbound, &caller, "/").await.is_err()
        })
        .await,
        "the revocation made through the second replica never reached the sidecar"
    );
    println!(
        "revocation enforced {:?} after the first replica shut down",
        died.elapsed()
    );

    // A renewal goes through the survivor.
    let before = side.identity().await["serial"].clone();
    let renewed = side.metric("tether_cert_refresh_total", &[("result", "ok")]);
    let (status, _) = send(side.admin.unwrap(), "admin", "POST", "/rotate", &[], "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        tether_testkit::wait::eventually(Duration::from_secs(10), || async {
            side.identity().await["serial"] != before
        })
        .await,
        "no renewal through the second replica"
    );
    assert!(side.metric("tether_cert_refresh_total", &[("result", "ok")]) > renewed);
    assert_eq!(ca_url(&side).await, b.url);
    assert!(side.is_ready().await);
    b.stop().await;
}

/// An HTTPS server with the CA's own API certificate (so the sidecar's bundle trusts it) that
/// answers every request with `status` and a CA-style JSON error; returns its URL and how many
/// requests it has had.
async fn replica_answering(pki: &Pki, status: StatusCode) -> (String, Arc<AtomicUsize>) {
    let (chain, key) = pki.ca.server_credential().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            tether_certs::pem::certificates(chain.as_bytes()).unwrap(),
            tether_certs::pem::private_key(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_: http::Request<Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = Bytes::from_static(br#"{"error":"this replica cannot serve"}"#);
                    let mut resp = Response::new(Full::new(body));
                    *resp.status_mut() = status;
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answering_503_passes_enrollment_to_the_next() {
    let pki = Pki::new();
    let real = CaServer::start(&pki).await;
    let (sick, seen) = replica_answering(&pki, StatusCode::SERVICE_UNAVAILABLE).await;
    let side = sidecar_with(&pki, &[&sick, &real.url]).await;
    wait_ready(&side).await;
    assert!(
        seen.load(Ordering::SeqCst) >= 1,
        "the 503 replica was never asked"
    );
    assert_moved(&side, "status", &real.url).await;
    real.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answering_403_is_the_answer_not_a_failover() {
    let pki = Pki::new();
    let real = CaServer::start(&pki).await;
    let (refusing, seen) = replica_answering(&pki, StatusCode::FORBIDDEN).await;
    let side = sidecar_with(&pki, &[&refusing, &real.url]).await;
    // Enrollment and CRL polls keep going to the first URL and keep being refused there.
    assert!(
        eventually(Duration::from_secs(10), || seen.load(Ordering::SeqCst) >= 3).await,
        "the refusing replica was not asked"
    );
    assert!(!side.is_ready().await, "enrolled although the CA refused");
    assert_eq!(side.scraped("tether_ca_failovers_total", &[]).await, 0.0);
    assert_eq!(ca_url(&side).await, refusing);
    assert_eq!(ca_metric(&real, "tether_ca_requests_total"), 0.0);
    assert_eq!(ca_metric(&real, "tether_ca_crl_waiters"), 0.0);
    real.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_loses_the_calls_within_seconds() {
    let pki = Pki::new();
    let real = CaServer::start(&pki).await;
    // Connections complete in the kernel's backlog; nothing ever accepts or reads them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("https://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let side = sidecar_with(&pki, &[&silent_url, &real.url]).await;
    assert!(
        tether_testkit::wait::eventually(Duration::from_secs(30), || side.is_ready()).await,
        "never enrolled through the second URL"
    );
    // A correctness bound (the enrollment used to wait out its 15 s at the silent URL).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_moved(&side, "timeout", &real.url).await;
    drop(silent);
    real.stop().await;
}

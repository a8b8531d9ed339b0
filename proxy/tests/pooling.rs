//! How the sidecars reuse connections, counted at the TLS handshake: the outbound holds one
//! HTTP/1.1 mTLS connection per app connection and pools it when the app connection closes
//! (`peer_protocol = "http1"`), or shares one HTTP/2 connection (`"h2"`), or does the first for
//! a few app connections and the second for many (`"auto"`, the default); a kept connection the
//! other side closed is replaced without failing a request; and the inbound holds one
//! connection to the app per peer connection, and keeps at most 64 idle pooled ones after a
//! burst.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One request through `client` (which keeps its connection alive between requests).
async fn get_on(client: &Client, addr: SocketAddr) -> StatusCode {
    let req = Request::builder()
        .uri(format!("http://{addr}/hello"))
        .header("host", "service-b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

/// `n` requests through `client` one after the other, each answered 200.
async fn assert_ok_requests(client: &Client, addr: SocketAddr, n: usize) {
    for _ in 0..n {
        assert_eq!(get_on(client, addr).await, StatusCode::OK);
    }
}

fn handshakes(s: &Sidecar, direction: &str) -> f64 {
    s.metric(
        "tether_tls_handshakes_total",
        &[("direction", direction), ("result", "ok")],
    )
}

/// Waits until the outbound has `n` app connections open: the others have closed and given their
/// peer connections back to the idle pool.
async fn app_connections_settle(a: &Sidecar, n: usize) -> bool {
    eventually(Duration::from_secs(10), || {
        a.metric("tether_connections_open", &[("direction", "outbound")]) == n as f64
    })
    .await
}

/// A pair in front of `app`: `service_extra` configures the outbound's service-b, `b_extra`
/// the inbound.
async fn pair(app: SocketAddr, service_extra: &str, b_extra: &str) -> (Pki, Sidecar, Sidecar) {
    let (pki, b, a, _) = file_pair_with(app, ALLOW_A, b_extra, service_extra).await;
    (pki, b, a)
}

#[tokio::test]
async fn http1_peer_connection_is_held_per_app_connection_then_pooled() {
    let app = start_app().await;
    let (_pki, b, a) = pair(app, "peer_protocol = \"http1\"", "").await;
    let out = a.outbound.unwrap();

    let first = http_client();
    assert_ok_requests(&first, out, 5).await;
    assert_eq!(
        handshakes(&a, "outbound"),
        1.0,
        "one app connection, one peer connection"
    );

    // A second app connection while the first is still open gets a peer connection of its own.
    let second = http_client();
    assert_eq!(get_on(&second, out).await, StatusCode::OK);
    assert_eq!(handshakes(&a, "outbound"), 2.0);

    // When both app connections close, their peer connections go to the idle pool: a new app
    // connection reuses one instead of handshaking again.
    drop(first);
    drop(second);
    assert!(app_connections_settle(&a, 0).await);
    let third = http_client();
    assert_ok_requests(&third, out, 3).await;
    assert_eq!(
        handshakes(&a, "outbound"),
        2.0,
        "the third app connection used a pooled one"
    );
    assert_eq!(handshakes(&b, "inbound"), 2.0);
}

#[tokio::test]
async fn peer_protocol_h2_shares_one_connection_between_app_connections() {
    let app = start_app().await;
    let (_pki, b, a) = pair(app, "peer_protocol = \"h2\"", "").await;
    let out = a.outbound.unwrap();
    let clients = [http_client(), http_client(), http_client()];
    for c in &clients {
        assert_eq!(get_on(c, out).await, StatusCode::OK);
    }
    assert_eq!(handshakes(&a, "outbound"), 1.0);
    assert_eq!(handshakes(&b, "inbound"), 1.0);
}

#[tokio::test]
async fn auto_dedicates_connections_to_few_app_connections_and_shares_h2_beyond() {
    let app = start_app().await;
    let (_pki, _b, a) = pair(app, "", "").await;
    let out = a.outbound.unwrap();
    let limit = tether_proxy::DEDICATED_UP_TO;
    // App connections open one by one and stay open: the first `limit` each get their own
    // HTTP/1.1 peer connection, the rest share one HTTP/2 connection.
    let clients: Vec<Client> = (0..limit + 2).map(|_| http_client()).collect();
    for c in &clients {
        assert_eq!(get_on(c, out).await, StatusCode::OK);
    }
    let expected = (limit + 1) as f64;
    assert_eq!(handshakes(&a, "outbound"), expected);
    // Still over the limit: the first app connection moves to the shared connection too.
    assert_eq!(get_on(&clients[0], out).await, StatusCode::OK);
    assert_eq!(handshakes(&a, "outbound"), expected);
    // Back under it: dedicated again, from the idle pool, without a handshake.
    let mut clients = clients;
    clients.truncate(1);
    assert!(app_connections_settle(&a, 1).await);
    assert_ok_requests(&clients[0], out, 3).await;
    assert_eq!(handshakes(&a, "outbound"), expected);
}

#[tokio::test]
async fn a_held_peer_connection_the_peer_closed_is_replaced_without_failing_a_request() {
    let app = start_app().await;
    // The inbound closes a kept-alive connection that stays idle for 1 s.
    let (_pki, b, a) = pair(app, "", "[limits]\nheader_read_timeout = \"1s\"\n").await;
    let out = a.outbound.unwrap();
    let client = http_client();
    assert_eq!(get_on(&client, out).await, StatusCode::OK);
    // Well past the 1 s, so the close has reached the outbound even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_ok_requests(&client, out, 3).await;
    assert_eq!(
        handshakes(&a, "outbound"),
        2.0,
        "closed by the peer, so replaced once"
    );
    assert_eq!(handshakes(&b, "inbound"), 2.0);
}

/// A raw HTTP/1.1 app that counts the connections it accepts. With `close_each`, it answers one
/// request per connection and then closes it without saying so (no `Connection: close`), so the
/// inbound must not fail the next request on the dead connection.
async fn counting_app(close_each: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, accepted, _) = counting_app_served(close_each).await;
    (addr, accepted)
}

/// [`counting_app`], also counting the requests it answered.
async fn counting_app_served(close_each: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (count, answered) = (accepted.clone(), served.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                // Requests here are bodiless GETs: the header block is the whole request.
                while read_head(&mut tcp, &mut buf).await.is_some() {
                    answered.fetch_add(1, Ordering::SeqCst);
                    if tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                        || close_each
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, served)
}

#[tokio::test]
async fn inbound_holds_one_app_connection_per_peer_connection_and_replaces_a_closed_one() {
    let (app, accepted) = counting_app(false).await;
    let (_pki, _b, a) = pair(app, "", "").await;
    let client = http_client();
    assert_ok_requests(&client, a.outbound.unwrap(), 4).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one peer connection, one app connection"
    );

    let (app, accepted) = counting_app(true).await;
    let (_pki, _b, a) = pair(app, "", "").await;
    let client = http_client();
    for _ in 0..3 {
        assert_eq!(get_on(&client, a.outbound.unwrap()).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "each closed app connection replaced"
    );
}

#[tokio::test]
async fn inbound_shares_pooled_app_connections_beyond_the_dedicated_limit() {
    let (app, accepted) = counting_app(false).await;
    // Forced http1 on the outbound: one peer connection per app connection, so the inbound sees
    // as many peer connections as there are clients.
    let (_pki, b, a) = pair(app, "peer_protocol = \"http1\"", "").await;
    let out = a.outbound.unwrap();
    let limit = tether_proxy::DEDICATED_UP_TO;
    let clients: Vec<Client> = (0..limit + 2).map(|_| http_client()).collect();
    for c in &clients {
        assert_eq!(get_on(c, out).await, StatusCode::OK);
    }
    assert_eq!(handshakes(&b, "inbound"), (limit + 2) as f64);
    // The first `limit` peer connections hold an app connection each; the last two share one
    // from the pool, one request after the other.
    assert_eq!(accepted.load(Ordering::SeqCst), limit + 1);
    // Still over the limit: the first peer connection lets its app connection go and shares too.
    assert_eq!(get_on(&clients[0], out).await, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), limit + 1);
}

#[tokio::test]
async fn one_app_connection_is_balanced_over_the_service_addresses_request_by_request() {
    let pki = Pki::new();
    let (bdir, adir) = (pki.issue(SERVICE_B), pki.issue(SERVICE_A));
    let pol = pki.policy(ALLOW_A);
    let mut replicas = Vec::new();
    for name in ["b1", "b2"] {
        let (app, _, served) = counting_app_served(false).await;
        let identity = identity_section(&bdir, None);
        let b = pki.start_inbound(name, &identity, app, &pol, "").await;
        replicas.push((b, served));
    }
    let addrs: Vec<SocketAddr> = replicas.iter().map(|(b, _)| b.inbound.unwrap()).collect();
    let a_toml = format!(
        "{}{OUTBOUND_SECTION}{}",
        identity_section(&adir, None),
        service_section("service-b", &addrs, SERVICE_B)
    );
    let a = pki.start("a", &a_toml).await;
    let client = http_client();
    assert_ok_requests(&client, a.outbound.unwrap(), 6).await;
    let served: Vec<usize> = replicas
        .iter()
        .map(|(_, s)| s.load(Ordering::SeqCst))
        .collect();
    assert_eq!(
        served,
        vec![3, 3],
        "requests alternate between the two replicas"
    );
    // One kept connection per replica, not one per request.
    assert_eq!(handshakes(&a, "outbound"), 2.0);
}

/// A raw HTTP/1.1 app that answers each request after 200 ms, so concurrent requests need
/// connections of their own; counts the connections it accepted and those open now.
async fn slow_app() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (count, live) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            live.fetch_add(1, Ordering::SeqCst);
            let live = live.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                // Bodiless GETs, one per read: the inbound sends the next only after the answer.
                while let Ok(n) = tcp.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(ok).await.is_err() {
                        break;
                    }
                }
                live.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, open)
}

#[tokio::test]
async fn after_a_burst_the_inbound_keeps_at_most_64_idle_app_connections() {
    const BURST: usize = 120;
    let (app, accepted, open) = slow_app().await;
    // h2 between the sidecars: every request at the inbound goes on a shared app connection.
    let (_pki, _b, a) = pair(app, "peer_protocol = \"h2\"", "").await;
    let out = a.outbound.unwrap();
    let client = http_client();
    let burst = (0..BURST).map(|_| get_on(&client, out));
    let statuses = futures_util::future::join_all(burst).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        accepted.load(Ordering::SeqCst) > 64,
        "the burst should have needed more than 64 app connections: {}",
        accepted.load(Ordering::SeqCst)
    );
    // The pool closes what it will not keep as each request ends.
    let settled = eventually(Duration::from_secs(5), || open.load(Ordering::SeqCst) <= 64).await;
    assert!(
        settled,
        "{} app connections left open",
        open.load(Ordering::SeqCst)
    );
    assert!(
        open.load(Ordering::SeqCst) > 0,
        "the pool keeps some connections"
    );
}

//! Failover between CA URLs against real HTTPS servers on 127.0.0.1: which outcomes pass a call
//! on (connection refused or cut, a silent peer, a 5xx) and which are the answer (a 4xx), what
//! the caller gets when every URL misses, the failover count, the URL in use, HTTP/2 (with its
//! PINGs) where the CA offers it, the socket options that notice a vanished peer, and the
//! warning's rate limit.

use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use super::super::failover::{judge, Miss, Quiet, Target};
use super::super::transport::{tune, KEEPALIVE, PING_EVERY, PING_TIMEOUT, USER_TIMEOUT};
use super::*;

/// An HTTPS server (certificate from [`pki`]) answering every request with `status` and the
/// CA's JSON error body `message`; returns its address and how many requests it has had.
async fn answering(
    config: Arc<rustls::ServerConfig>,
    status: StatusCode,
    message: &'static str,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let addr = serving(config, move |_, _| {
        count.fetch_add(1, Ordering::SeqCst);
        let body = format!(r#"{{"error":"{message}"}}"#);
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp
    })
    .await;
    (addr, seen)
}

/// A port nobody listens on: connections to it are refused.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A CA replica that reads the request, holds it for `hold` and then dies without answering.
async fn dying_after(config: Arc<rustls::ServerConfig>, hold: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    tokio::time::sleep(hold).await;
                }
            });
        }
    });
    addr
}

/// The failovers `client` counted with `reason`.
fn failovers(client: &CaClient, reason: FailoverReason) -> u64 {
    client.failovers.with_label_values(&[reason.as_str()]).get()
}

/// All the failovers `client` counted.
fn all_failovers(client: &CaClient) -> u64 {
    FailoverReason::ALL
        .into_iter()
        .map(|r| failovers(client, r))
        .sum()
}

fn answer(status: u16) -> Answer {
    (
        StatusCode::from_u16(status).unwrap(),
        HeaderMap::new(),
        Bytes::from_static(br#"{"error":"database unavailable"}"#),
    )
}

#[test]
fn only_a_5xx_answer_passes_the_call_on() {
    for status in [200, 304, 400, 401, 403, 404, 409, 429] {
        assert!(judge(answer(status)).is_ok(), "{status} is the answer");
    }
    for status in [500, 502, 503, 504] {
        let miss = judge(answer(status)).unwrap_err();
        assert_eq!(miss.reason(), FailoverReason::Status, "{status}");
        assert!(miss.to_string().contains("database unavailable"), "{miss}");
    }
    let cut = Miss::Connection("connection reset by peer".into());
    assert_eq!(cut.reason(), FailoverReason::Connect);
    let silent = Miss::Timeout {
        what: "connection",
        after: Duration::from_secs(1),
    };
    assert_eq!(silent.reason(), FailoverReason::Timeout);
    assert_eq!(silent.to_string(), "no connection within 1s");
}

#[test]
fn a_503_is_retryable_not_a_refusal_of_our_certificate() {
    // The renewal loop falls back to the token only on 403; a 503 is retried as it is.
    let unavailable = refused(StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"db down\"}");
    assert!(!unavailable.is_forbidden());
    assert!(refused(StatusCode::FORBIDDEN, b"").is_forbidden());
}

#[test]
fn a_url_is_named_without_userinfo_or_path() {
    let t = Target::new(&"https://user:secret@ca.example:8443/x".parse().unwrap());
    assert_eq!(
        (
            t.host.as_str(),
            t.port,
            t.authority.as_str(),
            t.shown.as_str()
        ),
        (
            "ca.example",
            8443,
            "ca.example:8443",
            "https://ca.example:8443"
        )
    );
    let v6 = Target::new(&"https://[::1]:9443".parse().unwrap());
    assert_eq!(
        (v6.host.as_str(), v6.shown.as_str()),
        ("::1", "https://[::1]:9443")
    );
    let default_port = Target::new(&"https://ca.example".parse().unwrap());
    assert_eq!(
        (default_port.port, default_port.authority.as_str()),
        (443, "ca.example")
    );
}

#[tokio::test]
async fn a_5xx_passes_the_call_to_the_next_url_which_stays_in_use() {
    let (bundle, config) = pki();
    let (sick, sick_seen) = answering(
        config.clone(),
        StatusCode::SERVICE_UNAVAILABLE,
        "database unavailable",
    )
    .await;
    let (good, good_seen) = answering(config, StatusCode::OK, "").await;
    let client = client(&[sick, good]);
    assert_eq!(
        client.url_in_use(),
        Some(format!("https://{sick}").as_str())
    );
    client.bundle(&bundle).await.unwrap();
    assert_eq!(failovers(&client, FailoverReason::Status), 1);
    assert_eq!(
        client.url_in_use(),
        Some(format!("https://{good}").as_str())
    );
    // The next call starts at the URL in use: the sick one is not asked again.
    client.bundle(&bundle).await.unwrap();
    assert_eq!(sick_seen.load(Ordering::SeqCst), 1);
    assert_eq!(good_seen.load(Ordering::SeqCst), 2);
    assert_eq!(all_failovers(&client), 1);
}

#[tokio::test]
async fn a_4xx_is_the_answer_and_is_not_failed_over() {
    let (bundle, config) = pki();
    let (refusing, _) = answering(config.clone(), StatusCode::FORBIDDEN, "revoked").await;
    let (good, good_seen) = answering(config, StatusCode::OK, "").await;
    let client = client(&[refusing, good]);
    let err = client.bundle(&bundle).await.unwrap_err();
    assert!(err.is_forbidden(), "{err}");
    assert_eq!(good_seen.load(Ordering::SeqCst), 0);
    assert_eq!(all_failovers(&client), 0);
    assert_eq!(
        client.url_in_use(),
        Some(format!("https://{refusing}").as_str())
    );
}

#[tokio::test]
async fn when_every_url_misses_a_5xx_answer_is_what_the_caller_gets() {
    let (bundle, config) = pki();
    let (sick, _) = answering(
        config,
        StatusCode::SERVICE_UNAVAILABLE,
        "database unavailable",
    )
    .await;
    let expect_503 = |err: CaClientError| match err {
        CaClientError::Refused { status, message } => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(message, "database unavailable");
        }
        other => panic!("expected the 503, got {other}"),
    };
    // The URL in use refuses connections; the next takes the call (a move) and answers 503.
    let client = client(&[closed_port(), sick]);
    expect_503(client.bundle(&bundle).await.unwrap_err());
    assert_eq!(failovers(&client, FailoverReason::Connect), 1);
    assert_eq!(
        client.url_in_use(),
        Some(format!("https://{sick}").as_str())
    );
    // The URL in use answers 503 and the next cannot be reached: no move, still the 503.
    let client = super::client(&[sick, closed_port()]);
    expect_503(client.bundle(&bundle).await.unwrap_err());
    assert_eq!(all_failovers(&client), 0);
    assert_eq!(
        client.url_in_use(),
        Some(format!("https://{sick}").as_str())
    );
    // Nothing answers: every URL's miss, named.
    let (a, b) = (closed_port(), closed_port());
    let client = super::client(&[a, b]);
    let err = client.bundle(&bundle).await.unwrap_err();
    assert!(matches!(err, CaClientError::Unreachable(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("https://{a}: ")) && text.contains(&format!("https://{b}: ")),
        "{text}"
    );
    assert_eq!(all_failovers(&client), 0);
}

#[tokio::test]
async fn a_call_held_at_a_url_makes_it_the_one_in_use_before_it_answers() {
    let (bundle, config) = pki();
    // Takes the TLS handshake and the request, and then holds it like a long-poll.
    let holding = dying_after(config, Duration::from_secs(3600)).await;
    let client = client(&[closed_port(), holding]);
    let held = tokio::spawn({
        let (client, bundle) = (client.clone(), bundle.clone());
        async move { client.bundle(&bundle).await }
    });
    let moved = Instant::now();
    while client.url_in_use() != Some(format!("https://{holding}").as_str()) {
        assert!(moved.elapsed() < Duration::from_secs(10), "never moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failovers(&client, FailoverReason::Connect), 1);
    assert!(!held.is_finished());
    held.abort();
}

#[tokio::test]
async fn a_url_that_accepts_but_never_answers_loses_the_call_within_seconds() {
    let (bundle, config) = pki();
    // Connections complete in the kernel's backlog; nothing ever accepts or reads them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (good, _) = answering(config, StatusCode::OK, "").await;
    let client = client(&[silent.local_addr().unwrap(), good]);
    let started = Instant::now();
    client.bundle(&bundle).await.unwrap();
    // A correctness bound (the call used to wait out its 15 s), not a performance one.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failovers(&client, FailoverReason::Timeout), 1);
}

#[tokio::test]
async fn a_replica_dying_mid_call_passes_the_call_on() {
    let (bundle, config) = pki();
    let dead = dying_after(config.clone(), Duration::ZERO).await;
    let (good, _) = answering(config, StatusCode::OK, "").await;
    let client = client(&[dead, good]);
    client.bundle(&bundle).await.unwrap();
    assert_eq!(failovers(&client, FailoverReason::Connect), 1);
    // Refused at connect counts the same way.
    let client = super::client(&[closed_port(), good]);
    client.bundle(&bundle).await.unwrap();
    assert_eq!(failovers(&client, FailoverReason::Connect), 1);
}

/// `config` offering `alpn` (the CA offers h2 and http/1.1).
fn offering(config: &rustls::ServerConfig, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An HTTPS server speaking whatever the client does (as the CA's does), answering 200 and
/// recording each request's HTTP version.
async fn recording_versions(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<http::Version>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let addr = serving(config, move |_, req| {
        record.lock().unwrap().push(req.version());
        Response::new(Full::new(Bytes::new()))
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn http2_where_the_ca_offers_it_and_http1_where_it_does_not() {
    let (bundle, config) = pki();
    let (h2, seen_h2) = recording_versions(offering(&config, &[b"h2", b"http/1.1"])).await;
    let (h1, seen_h1) = recording_versions(offering(&config, &[b"http/1.1"])).await;
    let (none, seen_none) = recording_versions(offering(&config, &[])).await;
    for addr in [h2, h1, none] {
        client(&[addr]).bundle(&bundle).await.unwrap();
    }
    assert_eq!(*seen_h2.lock().unwrap(), [http::Version::HTTP_2]);
    assert_eq!(*seen_h1.lock().unwrap(), [http::Version::HTTP_11]);
    assert_eq!(*seen_none.lock().unwrap(), [http::Version::HTTP_11]);
}

#[tokio::test]
async fn an_http2_replica_that_goes_silent_after_the_handshake_loses_the_call_within_seconds() {
    let (bundle, config) = pki();
    // Takes the TLS handshake (choosing h2), then never reads again: no answer, no PING
    // answered, while its kernel still acknowledges, as a hung CA process would.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(offering(&config, &[b"h2"]));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                held.push(tls);
            }
        }
    });
    let (good, _) = answering(config, StatusCode::OK, "").await;
    let client = client(&[hung, good]);
    let started = Instant::now();
    client.bundle(&bundle).await.unwrap();
    let took = started.elapsed();
    // The PING deadline, not the call's 15 s (a correctness bound, with room for a slow host).
    assert!(took >= PING_EVERY, "{took:?}");
    assert!(
        took < PING_EVERY + PING_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    // A connection dropped for want of PINGs broke: `connect`, as for keepalive.
    assert_eq!(failovers(&client, FailoverReason::Connect), 1);
    assert_eq!(
        client.url_in_use(),
        Some(format!("https://{good}").as_str())
    );
}

#[tokio::test]
async fn ca_connections_probe_a_silent_peer_every_second() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    tune(&tcp).unwrap();
    let socket = socket2::SockRef::from(&tcp);
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE);
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE);
    #[cfg(target_os = "linux")]
    assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    assert!(socket.tcp_nodelay().unwrap());
}

#[test]
fn failover_warnings_are_rate_limited_and_count_what_they_skipped() {
    let mut quiet = Quiet::default();
    let t0 = Instant::now();
    assert_eq!(quiet.note(t0), Some(0));
    assert_eq!(quiet.note(t0 + Duration::from_secs(1)), None);
    assert_eq!(quiet.note(t0 + Duration::from_secs(2)), None);
    assert_eq!(quiet.note(t0 + Duration::from_secs(11)), Some(2));
    assert_eq!(quiet.note(t0 + Duration::from_secs(12)), None);
}

//! Over the connection limit. A connection past `max_connections`, within the listener's small
//! overflow band, is served only to be refused in words the client reads: a gRPC call gets
//! RESOURCE_EXHAUSTED (tonic, at both listeners), plain HTTP/1.1 gets `503` with
//! `connection: close`, and HTTP/2 gets GOAWAY after its first answer. The refusal never reaches
//! the app, counts as a `503` request and not as an open connection, and a caller without a
//! certificate still gets nothing at the inbound. Once a slot frees, calls go through again.

use super::*;

/// One connection fills the listener's limit.
const LIMIT_ONE: &str = "[limits]\nmax_connections = 1\n";

/// What an over-limit connection reads (`grpc-message`, and the text body without its newline).
const OVERLOADED: &str = "connection limit reached";

/// The path the holding connection asks for; everything refused asks for another one.
const HOLD: &str = "/grpc/hold";

/// A keep-alive HTTP/1.1 connection on `io` that has been answered once, so the listener has
/// admitted it; it holds its slot of the limit until the returned sender is dropped.
async fn hold<I>(io: I) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(HOLD)
        .header("host", "service-b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the holding request");
    resp.into_body().collect().await.unwrap();
    sender
}

/// mTLS to `b`'s inbound as the workload whose credentials are in `dir`, over HTTP/1.1.
async fn tls_to_inbound(
    b: &Sidecar,
    dir: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect(b.inbound.unwrap(), raw_client_config(Some(dir)))
        .await
        .unwrap()
}

/// Sends one keep-alive HTTP/1.1 GET on `s` (no `Connection: close` of ours) and reads until
/// the sidecar closes the connection, which it must do on its own; returns all it sent.
async fn get_until_closed<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> String {
    let req = "GET /grpc/refused HTTP/1.1\r\nHost: service-b\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut raw));
    // A TLS peer closing without close_notify is an error here; what came before it counts.
    let _ = read
        .await
        .expect("the sidecar closes the connection itself");
    String::from_utf8_lossy(&raw).into_owned()
}

/// Asserts that `answer` is the plain HTTP/1.1 refusal: 503, `connection: close`, its text.
fn assert_overloaded_http1(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close\r\n"), "{answer:?}");
    assert!(
        answer.ends_with("\r\n\r\nconnection limit reached\n"),
        "{answer:?}"
    );
}

/// The targets the app received, other than the holding connection's.
fn app_saw_besides_hold(m: &Mesh) -> Vec<String> {
    let saw = m.app_saw.lock().unwrap();
    saw.iter().filter(|t| t.as_str() != HOLD).cloned().collect()
}

#[tokio::test]
async fn over_the_limit_the_outbound_answers_grpc_with_resource_exhausted_and_http_with_503() {
    let m = mesh("", LIMIT_ONE).await;
    let out = m.a.outbound.unwrap();
    let holder = hold(tokio::net::TcpStream::connect(out).await.unwrap()).await;

    assert_refused(
        rpc_out(&m.a, "service-b", "/grpc/echo.Echo/Say").await,
        Code::ResourceExhausted,
        OVERLOADED,
    );
    let answer = get_until_closed(tokio::net::TcpStream::connect(out).await.unwrap()).await;
    assert_overloaded_http1(&answer);
    assert!(app_saw_besides_hold(&m).is_empty(), "{:?}", m.app_saw);
    // Counted as the refusals they are, and not as open connections.
    let refused = [("direction", "outbound"), ("code", "503")];
    assert_eq!(m.a.metric("tether_requests_total", &refused), 2.0);
    let open = [("direction", "outbound")];
    assert_eq!(m.a.metric("tether_connections_open", &open), 1.0);

    // The slot frees: a new connection is served again.
    drop(holder);
    let served = tether_testkit::wait::eventually(std::time::Duration::from_secs(10), || async {
        try_get(out, "service-b", "/grpc/after").await == Some(StatusCode::OK)
    });
    assert!(served.await, "no request got through after the slot freed");
    assert!(m
        .app_saw
        .lock()
        .unwrap()
        .contains(&"/grpc/after".to_string()));
}

#[tokio::test]
async fn over_the_limit_the_inbound_refuses_after_the_mtls_handshake_and_only_then() {
    let m = mesh(LIMIT_ONE, "").await;
    let a_dir = m.pki.issue(SERVICE_A);
    let holder = hold(tls_to_inbound(&m.b, &a_dir).await).await;

    assert_refused(
        rpc_in(&m.b, &a_dir, "/grpc/echo.Echo/Say").await,
        Code::ResourceExhausted,
        OVERLOADED,
    );
    let answer = get_until_closed(tls_to_inbound(&m.b, &a_dir).await).await;
    assert_overloaded_http1(&answer);
    // A caller without a certificate gets the handshake failure it always got, no answer.
    let anonymous = raw_get(m.b.inbound.unwrap(), raw_client_config(None), "/grpc/x").await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    assert!(app_saw_besides_hold(&m).is_empty(), "{:?}", m.app_saw);
    let refused = [("direction", "inbound"), ("code", "503")];
    assert_eq!(m.b.metric("tether_requests_total", &refused), 2.0);
    let open = [("direction", "inbound")];
    assert_eq!(m.b.metric("tether_connections_open", &open), 1.0);

    drop(holder);
    let served = tether_testkit::wait::eventually(std::time::Duration::from_secs(10), || async {
        raw_get_as(m.b.inbound.unwrap(), &a_dir, "/grpc/after").await == Ok(StatusCode::OK)
    });
    assert!(served.await, "no request got through after the slot freed");
}

#[tokio::test]
async fn over_the_limit_an_http2_connection_ends_after_its_first_answer() {
    let m = mesh("", LIMIT_ONE).await;
    let out = m.a.outbound.unwrap();
    let _holder = hold(tokio::net::TcpStream::connect(out).await.unwrap()).await;

    let tcp = tokio::net::TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let grpc = |path: &str| {
        http::Request::post(format!("http://service-b{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let resp = sender.send_request(grpc("/grpc/first")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "8");
    assert_eq!(resp.headers()["grpc-message"], OVERLOADED);
    // GOAWAY, then the connection closes cleanly: the client's side of it ends without an
    // error (cut at the refusal's deadline instead, it would end in a broken pipe).
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("the sidecar ends the connection after its answer")
        .unwrap();
    assert!(ended.is_ok(), "not a graceful close: {ended:?}");
    assert!(sender.send_request(grpc("/grpc/second")).await.is_err());
    assert!(app_saw_besides_hold(&m).is_empty(), "{:?}", m.app_saw);
}

//! The inbound's shared app connections, which carry the requests that arrive over HTTP/2 (and
//! those of peer connections past the dedicated limit): a connection goes back to the pool as
//! its response head arrives, is not handed to another request while the app is still sending
//! that response, and is reused once it is done.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A raw keep-alive HTTP/1.1 app that counts the connections it accepted. `GET /slow` gets a
/// chunked response whose first chunk is sent at once and whose last waits for `finish`; any
/// other request gets `ok`.
async fn streaming_app() -> (SocketAddr, Arc<AtomicUsize>, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, finish) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let (count, release) = (accepted.clone(), finish.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                // Bodiless GETs: the header block is the whole request.
                while let Some(head) = read_head(&mut tcp, &mut buf).await {
                    let slow = head.starts_with(b"GET /slow ");
                    let written = if slow {
                        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                        let first = tcp.write_all(head).await.is_ok()
                            && tcp.write_all(b"5\r\nfirst\r\n").await.is_ok();
                        release.notified().await;
                        first && tcp.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.is_ok()
                    } else {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        tcp.write_all(ok).await.is_ok()
                    };
                    if !written {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, finish)
}

fn get_req(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", "service-b")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One `GET /hello` through the pair, answered `ok` within 5 s.
async fn hello(client: &HttpClient, out: SocketAddr) {
    let answer = async {
        let resp = client.request(get_req(out, "/hello")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    let body = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("a request waited for another request's response to end");
    assert_eq!(&body[..], b"ok");
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

#[tokio::test]
async fn a_shared_app_connection_is_reused_only_once_its_response_is_done() {
    let (app, accepted, finish) = streaming_app().await;
    // h2 between the sidecars: every request reaches the inbound over HTTP/2 and shares.
    let (_pki, _b, a, _) = file_pair_with(app, ALLOW_A, "", "peer_protocol = \"h2\"").await;
    let out = a.outbound.unwrap();
    let client = http_client();

    // One after the other, requests share one app connection: it went back as the head came.
    for _ in 0..4 {
        hello(&client, out).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one shared app connection"
    );

    // A response still streaming keeps its connection: the next request gets another one
    // rather than waiting behind it.
    let slow = client.request(get_req(out, "/slow")).await.unwrap();
    let mut slow_body = slow.into_body();
    let first = slow_body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"first");
    hello(&client, out).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a busy connection was handed out"
    );

    // Once it is done, both connections serve again and none is opened.
    finish.notify_one();
    let rest = slow_body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"last");
    for _ in 0..4 {
        hello(&client, out).await;
    }
    let burst = (0..2).map(|_| hello(&client, out));
    futures_util::future::join_all(burst).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a done connection was not reused"
    );
}

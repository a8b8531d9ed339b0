//! A peer that cancels many requests at once keeps its HTTP/2 connection. An outbound sidecar
//! shares one HTTP/2 connection to each peer among all its clients (`peer_protocol = "auto"`
//! past 16 client connections), and when a burst of its clients leaves, it resets all their
//! streams in one write, often before the inbound has taken them up. h2's default Rapid Reset
//! guard (CVE-2023-44487) answers more than 20 such resets with GOAWAY, which failed every
//! other request on the connection: 467 of them when `make bench` closed 4,000 client
//! connections. The inbound now allows as many as it allows concurrent streams. A flood is
//! still cut: a peer that opens and resets streams far past that is sent GOAWAY
//! (ENHANCE_YOUR_CALM), by h2's guard on the streams the server had to refuse.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};

/// More than h2's default of 20, fewer than the 200 concurrent streams a connection may open.
const CANCELLED: usize = 150;

/// A flood: far more than may be open at once. (It is cut by h2's guard on refused streams
/// before the pending-accept limit is reached: the test holds whichever guard does it.)
const FLOOD: usize = 2_000;

fn get(path: &str) -> Request<()> {
    Request::get(format!("https://service-b{path}"))
        .body(())
        .unwrap()
}

/// An mTLS HTTP/2 connection to service-b's inbound as service-a, on which `cancelled`
/// requests were sent and dropped at once: HEADERS and RST_STREAM(CANCEL) leave in one write,
/// and reach the inbound before it took any of the streams up. Returns the client and the
/// connection's task.
async fn after_resets(
    cancelled: usize,
) -> (
    Pki,
    Sidecar,
    Result<h2::client::SendRequest<Bytes>, h2::Error>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let (pki, b, _a, _) = file_pair(DATA_POLICY, "").await;
    let creds = credential(&pki.issue(SERVICE_A));
    let config = tether_testkit::tls::accept_any_client(Some(creds), b"h2");
    let tls = tls_connect(b.inbound.unwrap(), config).await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await;
    for i in 0..cancelled {
        let Ok(mut c) = client else { break };
        match c.send_request(get(&format!("/data/{i}")), true) {
            Ok((resp, _body)) => drop(resp),
            Err(e) => {
                client = Err(e);
                break;
            }
        }
        client = c.ready().await;
    }
    (pki, b, client, conn)
}

#[tokio::test]
async fn a_peer_cancelling_a_burst_of_requests_keeps_its_http2_connection() {
    let (_pki, _b, client, conn) = after_resets(CANCELLED).await;
    let (resp, _body) = client
        .unwrap()
        .send_request(get("/data/after"), true)
        .unwrap();
    let resp = resp
        .await
        .expect("the connection still serves after the resets");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(
        echo(std::str::from_utf8(&got).unwrap())["path"],
        "/data/after"
    );
    assert!(!conn.is_finished(), "the inbound closed the connection");
}

#[tokio::test]
async fn a_flood_of_resets_still_ends_the_connection() {
    let (_pki, _b, client, conn) = after_resets(FLOOD).await;
    let served = async {
        let (resp, _body) = client.ok()?.send_request(get("/data/after"), true).ok()?;
        resp.await.ok()
    };
    let served = tokio::time::timeout(std::time::Duration::from_secs(10), served)
        .await
        .expect("the flooded connection answers or ends");
    assert!(
        served.is_none(),
        "a request after {FLOOD} resets was served"
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the inbound kept the flooded connection open"
    );
}

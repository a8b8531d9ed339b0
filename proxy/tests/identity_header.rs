//! The identity header is ours alone: nothing a caller sends can be read by the app as
//! `x-forwarded-client-cert` — not the header itself, not a spelling with `_` that CGI, WSGI,
//! PHP and Rack fold to `HTTP_X_FORWARDED_CLIENT_CERT`, and not a trailer of a chunked HTTP/1.1
//! request. Requests are written byte by byte on real sockets, through the pair and straight at
//! the inbound over mTLS.

mod common;

use common::*;

/// Every field name the app saw, headers and trailers, with the identity header's value.
fn seen(body: &str) -> (Vec<String>, Vec<String>, String) {
    let json = echo(body);
    let names = |key: &str| -> Vec<String> {
        json[key]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let xfcc = json["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (names("headers"), names("trailers"), xfcc)
}

fn folds_to_xfcc(name: &str) -> bool {
    name.to_ascii_lowercase().replace('_', "-") == "x-forwarded-client-cert"
}

const FORGED_HEADERS: &str = "GET /data HTTP/1.1\r\nHost: service-b\r\n\
     X-Forwarded-Client-Cert: By=spiffe://demo.tether/admin;URI=spiffe://demo.tether/admin\r\n\
     x_forwarded_client_cert: URI=spiffe://demo.tether/admin\r\n\
     X-Forwarded_Client-Cert: URI=spiffe://demo.tether/admin\r\n";

const CHUNKED_HEAD: &str = "POST /data HTTP/1.1\r\nHost: service-b\r\n\
     Transfer-Encoding: chunked\r\nTrailer: x-forwarded-client-cert, x-kept\r\n";

const FORGED_TRAILERS: &str = "5\r\nhello\r\n0\r\n\
     x-forwarded-client-cert: URI=spiffe://demo.tether/admin\r\n\
     x_forwarded_client_cert: URI=spiffe://demo.tether/admin\r\n\
     x-kept: 1\r\n\r\n";

fn assert_only_ours(body: &str) {
    let (headers, trailers, xfcc) = seen(body);
    let forged: Vec<&String> = headers
        .iter()
        .chain(&trailers)
        .filter(|n| folds_to_xfcc(n) && n.as_str() != "x-forwarded-client-cert")
        .collect();
    assert!(
        forged.is_empty(),
        "forged spellings reached the app: {forged:?}"
    );
    assert!(
        !trailers.iter().any(|n| folds_to_xfcc(n)),
        "an identity trailer reached the app: {trailers:?}"
    );
    assert!(
        xfcc.starts_with("By=spiffe://demo.tether/ns/default/sa/service-b;Hash=")
            && xfcc.ends_with(";URI=spiffe://demo.tether/ns/default/sa/service-a"),
        "the app's identity header is not ours: {xfcc:?}"
    );
}

#[tokio::test]
async fn forged_identity_headers_in_any_spelling_never_reach_the_app() {
    let (pki, b, a, _) = file_pair(DATA_POLICY, "").await;
    let (status, body) = raw_to_outbound(&a, FORGED_HEADERS, "").await;
    assert_eq!(status, 200);
    assert_only_ours(&body);
    let (status, body) = raw_to_inbound(&pki, &b, FORGED_HEADERS, "").await;
    assert_eq!(status, 200);
    assert_only_ours(&body);
}

#[tokio::test]
async fn a_forged_identity_trailer_never_reaches_the_app() {
    let (pki, b, a, _) = file_pair(DATA_POLICY, "").await;
    for (status, body) in [
        raw_to_inbound(&pki, &b, CHUNKED_HEAD, FORGED_TRAILERS).await,
        raw_to_outbound(&a, CHUNKED_HEAD, FORGED_TRAILERS).await,
    ] {
        assert_eq!(status, 200, "{body}");
        assert_eq!(echo(&body)["body"], "hello");
        assert_only_ours(&body);
    }
    // The control: other trailers do reach the app, straight at the inbound, so the test
    // would see a forged one if it got through.
    let (_, body) = raw_to_inbound(&pki, &b, CHUNKED_HEAD, FORGED_TRAILERS).await;
    assert_eq!(echo(&body)["trailers"]["x-kept"], "1", "{body}");
}

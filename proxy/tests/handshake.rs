//! Every way a caller can fail the inbound mTLS handshake, each over a real socket: no client
//! certificate, a certificate from an unknown CA, from another trust domain, a revoked one (from
//! the CRL file), an expired one, plaintext, and TLS 1.2. Each is refused at the handshake — the
//! app never sees a request — and counted under its own reason. The accept path is checked in
//! the same file so the negative cases cannot pass by refusing everything.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOW_ALL: &str = "[[rule]]\nname = \"all\"\nfrom = [\"spiffe://demo.tether/*\"]\n";

async fn inbound_sidecar(pki: &Pki, crl: Option<&Path>) -> Sidecar {
    let app = start_app().await;
    let bdir = pki.issue(SERVICE_B);
    let pol = pki.policy(ALLOW_ALL);
    pki.start_inbound("b", &identity_section(&bdir, crl), app, &pol, "")
        .await
}

fn handshakes(s: &Sidecar, result: &str) -> f64 {
    s.metric(
        "tether_tls_handshakes_total",
        &[("direction", "inbound"), ("result", result)],
    )
}

/// A caller presenting the credential in `cred` is refused at `b`'s handshake (so it never
/// gets to send a request) and counted under `reason`.
async fn assert_refused(b: &Sidecar, cred: &Path, reason: &str) {
    let r = raw_get_as(b.inbound.unwrap(), cred, "/x").await;
    assert!(r.is_err(), "got {r:?}");
    let counted = eventually(Duration::from_secs(2), || handshakes(b, reason) == 1.0).await;
    assert!(counted, "the refusal is counted as {reason}");
}

#[tokio::test]
async fn a_valid_member_is_accepted() {
    let pki = Pki::new();
    let b = inbound_sidecar(&pki, None).await;
    let a = pki.issue("ns/default/sa/service-a");
    let status = raw_get_as(b.inbound.unwrap(), &a, "/x").await.unwrap();
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(handshakes(&b, "ok"), 1.0);
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let pki = Pki::new();
    let b = inbound_sidecar(&pki, None).await;
    let r = raw_get(b.inbound.unwrap(), raw_client_config(None), "/x").await;
    assert!(r.is_err(), "got {r:?}");
    assert!(eventually(Duration::from_secs(2), || handshakes(&b, "no_cert") == 1.0).await);
    assert_eq!(b.metric("tether_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let pki = Pki::new();
    let b = inbound_sidecar(&pki, None).await;
    let other = Pki::new(); // same trust domain name, different root
    let a = other.issue("ns/default/sa/service-a");
    assert_refused(&b, &a, "unknown_ca").await;
}

#[tokio::test]
async fn a_certificate_from_another_trust_domain_is_refused() {
    let pki = Pki::new();
    let b = inbound_sidecar(&pki, None).await;
    let other = Pki::with_domain("other.example");
    let a = other.issue("ns/default/sa/service-a");
    assert_refused(&b, &a, "unknown_ca").await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_from_the_crl_file() {
    let pki = Pki::new();
    let a = pki.issue("ns/default/sa/service-a");
    let serial = Pki::serial(&a);
    assert!(matches!(
        pki.ca.revoke(&serial, None).unwrap(),
        tether_ca::store::RevokeOutcome::Revoked { .. }
    ));
    let crl = pki.crl();
    let b = inbound_sidecar(&pki, Some(&crl)).await;
    assert_refused(&b, &a, "revoked").await;
    // An unrevoked sibling still gets in: the CRL refuses that serial, not everyone.
    let ok = pki.issue("ns/default/sa/service-c");
    assert_eq!(
        raw_get_as(b.inbound.unwrap(), &ok, "/x").await.unwrap(),
        http::StatusCode::OK
    );
}

/// A certificate from the real intermediate whose validity ended an hour ago.
fn expired_credential(pki: &Pki) -> PathBuf {
    let signer = pki.intermediate();
    let key = tether_certs::keys::generate_key().unwrap();
    let id = tether_certs::SpiffeId::parse(&id("ns/default/sa/service-a")).unwrap();
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    let leaf = signer
        .issue_leaf(
            &id,
            &key,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            past,
        )
        .unwrap();
    let dir = pki.dir.path().join("expired");
    std::fs::create_dir_all(&dir).unwrap();
    let chain = format!(
        "{}{}",
        tether_certs::pem::encode("CERTIFICATE", &leaf.der),
        signer.cert_pem()
    );
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    dir
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let b = inbound_sidecar(&pki, None).await;
    let a = expired_credential(&pki);
    assert_refused(&b, &a, "expired").await;
}

#[tokio::test]
async fn plaintext_is_closed_at_the_handshake() {
    let pki = Pki::new();
    let b = inbound_sidecar(&pki, None).await;
    let mut tcp = tokio::net::TcpStream::connect(b.inbound.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: service-b\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plaintext got an HTTP answer"
    );
    assert!(eventually(Duration::from_secs(2), || handshakes(&b, "protocol") == 1.0).await);
    assert_eq!(b.metric("tether_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn tls_1_2_is_refused() {
    let pki = Pki::new();
    let b = inbound_sidecar(&pki, None).await;
    let a = pki.issue("ns/default/sa/service-a");
    let (chain, key) = credential(&a);
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in
            tether_certs::pem::certificates(&std::fs::read(a.join("bundle.pem")).unwrap()).unwrap()
        {
            r.add(c).unwrap();
        }
        r
    };
    let config = rustls::ClientConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let r = raw_get(b.inbound.unwrap(), std::sync::Arc::new(config), "/x").await;
    assert!(r.is_err(), "TLS 1.2 must be refused, got {r:?}");
}

//! The rustls verifiers and TLS configs, over real sockets: `server_config`/`client_config` with
//! `SvidClientVerifier`/`SvidServerVerifier` complete an mTLS 1.3 handshake on 127.0.0.1 only when
//! the peer presents a valid X509-SVID that chains to a root *of its own trust domain*, is within
//! its validity period, is not revoked (a `Revocation::replace` applies to the very next
//! handshake, without rebuilding the config) and, where one is expected, names the expected
//! SPIFFE ID. Every refusal is checked on the side that refused it and mapped by
//! `failure_reason` to the label metrics use (`no_cert`, `unknown_ca`, `expired`, `revoked`,
//! `identity_mismatch`, `bad_svid`, `bad_chain`, `tls`). Certificates that break one X509-SVID rule
//! each are hand-built with rcgen and signed by the real intermediate, so only the rule under test
//! can be the reason. The configs speak TLS 1.3 only, survive plaintext, and never resume a
//! session (a resumed peer would skip revocation). `SvidVerifier::verify` is also tested directly
//! for the exact `VerifyError`/`SvidError` of each case.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls::{CipherSuite, ClientConfig, HandshakeKind, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tether_certs::crl::{self, CrlEntry};
use tether_certs::svid::{inspect_leaf, SvidError, Usage};
use tether_certs::verify::{
    client_config, failure_reason, server_config, ExpectedPeer, Revocation, SvidClientVerifier,
    SvidServerVerifier, SvidVerifier, VerifyError,
};
use tether_certs::{RevocationList, RevokedSet, SpiffeId, TrustBundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// What one side of a finished handshake saw.
#[derive(Debug)]
struct Seen {
    peer: Option<SpiffeId>,
    kind: Option<HandshakeKind>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::CipherSuite>,
}

fn seen(conn: &rustls::CommonState) -> Seen {
    Seen {
        peer: conn.peer_certificates().map(|chain| {
            inspect_leaf(&chain[0], None)
                .expect("a verified peer is an SVID")
                .id
        }),
        kind: conn.handshake_kind(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
    }
}

struct Outcome {
    server: io::Result<Seen>,
    client: io::Result<Seen>,
}

impl Outcome {
    /// The server refused the client for `want`, and the client learned that it was refused.
    fn assert_server_refused(&self, want: &str) {
        let err = self.server.as_ref().err();
        assert_eq!(reason(&self.server), want, "{err:?}");
        assert!(self.client.is_err(), "the client learns it was refused");
    }

    /// The client refused the server for `want`, and the server's side failed too.
    fn assert_client_refused(&self, want: &str) {
        let err = self.client.as_ref().err();
        assert_eq!(reason(&self.client), want, "{err:?}");
        assert!(self.server.is_err(), "the server's side fails too");
    }
}

/// One connection: the server accepts, says "ping" and waits for "pong"; the client connects,
/// reads "ping" (in TLS 1.3 this is where a client learns that its certificate was refused) and
/// answers "pong".
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(serve_one(listener, server));
    let client = timeout(STEP, connect(addr, client))
        .await
        .expect("client side finished in time");
    let server = timeout(STEP, server_task)
        .await
        .expect("server side finished in time")
        .expect("server task did not panic");
    Outcome { server, client }
}

async fn serve_one(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Seen> {
    let (tcp, _) = listener.accept().await?;
    let mut tls = TlsAcceptor::from(config).accept(tcp).await?;
    let seen = seen(tls.get_ref().1);
    tls.write_all(b"ping").await?;
    tls.flush().await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    tls.shutdown().await?;
    Ok(seen)
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Seen> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("mesh.invalid").unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    tls.write_all(b"pong").await?;
    tls.flush().await?;
    let seen = seen(tls.get_ref().1);
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    Ok(seen)
}

/// The rustls error inside an I/O error from tokio-rustls.
fn rustls_error(result: &io::Result<Seen>) -> &rustls::Error {
    let err = result.as_ref().expect_err("this side should have failed");
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
}

fn reason(result: &io::Result<Seen>) -> &'static str {
    failure_reason(rustls_error(result))
}

fn none_revoked() -> Arc<Revocation> {
    Revocation::new(RevokedSet::default())
}

fn one_of(ids: &[&SpiffeId]) -> ExpectedPeer {
    ExpectedPeer::OneOf(
        ids.iter()
            .map(|id| (*id).clone())
            .collect::<Vec<_>>()
            .into(),
    )
}

fn server_cfg(
    bundle: &TrustBundle,
    svid: &Svid,
    expected: ExpectedPeer,
    mandatory: bool,
    revocation: Arc<Revocation>,
) -> Arc<ServerConfig> {
    let core = Arc::new(SvidVerifier::new(bundle, revocation));
    let verifier = SvidClientVerifier::new(core, expected, mandatory);
    Arc::new(server_config(svid.chain.clone(), svid.private_key(), verifier).unwrap())
}

fn client_cfg(
    bundle: &TrustBundle,
    svid: &Svid,
    expected: ExpectedPeer,
    revocation: Arc<Revocation>,
) -> Arc<ClientConfig> {
    let core = Arc::new(SvidVerifier::new(bundle, revocation));
    let verifier = SvidServerVerifier::new(core, expected);
    Arc::new(client_config(svid.chain.clone(), svid.private_key(), verifier).unwrap())
}

/// A bundle holding the roots of all of `pkis`.
fn bundle_of(pkis: &[&Pki]) -> TrustBundle {
    let pem: String = pkis.iter().map(|p| p.root.cert_pem()).collect();
    TrustBundle::from_pem(pem.as_bytes()).unwrap()
}

/// A client on Tether's provider with `versions`, verifying the server against `bundle` and
/// presenting `svid`, but otherwise with rustls' defaults (so it would resume a session or speak
/// TLS 1.2 if offered).
fn default_client(
    bundle: &TrustBundle,
    svid: &Svid,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let core = Arc::new(SvidVerifier::new(bundle, none_revoked()));
    let verifier = SvidServerVerifier::new(core, ExpectedPeer::AnyInBundle);
    let config = ClientConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(svid.chain.clone(), svid.private_key())
        .unwrap();
    Arc::new(config)
}

/// A TLS 1.3 client that presents no certificate.
fn anonymous_client(bundle: &TrustBundle) -> Arc<ClientConfig> {
    let core = Arc::new(SvidVerifier::new(bundle, none_revoked()));
    let verifier = SvidServerVerifier::new(core, ExpectedPeer::AnyInBundle);
    let mut config = ClientConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A mesh of one trust domain with a server and a client SVID.
struct Mesh {
    pki: Pki,
    server: Svid,
    client: Svid,
}

impl Mesh {
    fn new() -> Self {
        let pki = Pki::new(TD);
        let server = pki.leaf("/server");
        let client = pki.leaf("/client");
        Mesh {
            pki,
            server,
            client,
        }
    }

    /// The server, requiring a client certificate from anyone in the bundle.
    fn server(&self) -> Arc<ServerConfig> {
        self.server_expecting(ExpectedPeer::AnyInBundle, true)
    }

    /// The server, accepting the clients `expected` allows; a client certificate is required
    /// when `mandatory`.
    fn server_expecting(&self, expected: ExpectedPeer, mandatory: bool) -> Arc<ServerConfig> {
        let bundle = self.pki.bundle();
        server_cfg(&bundle, &self.server, expected, mandatory, none_revoked())
    }

    /// A client presenting `svid` and expecting the mesh's server identity.
    fn client_with(&self, svid: &Svid) -> Arc<ClientConfig> {
        client_cfg(
            &self.pki.bundle(),
            svid,
            one_of(&[&self.pki.id("/server")]),
            none_revoked(),
        )
    }

    /// A server presenting `svid`.
    fn server_with(&self, svid: &Svid) -> Arc<ServerConfig> {
        server_cfg(
            &self.pki.bundle(),
            svid,
            ExpectedPeer::AnyInBundle,
            true,
            none_revoked(),
        )
    }
}

/// One handshake with a server of the mesh that trusts the mesh's root and a second trust
/// domain's ([`FOREIGN_TD`]); the client presents the leaf `leaf` makes with that foreign PKI.
async fn handshake_with_foreign_client(leaf: impl FnOnce(&Pki) -> Svid) -> Outcome {
    let mesh = Mesh::new();
    let foreign = Pki::new(FOREIGN_TD);
    let bundle = bundle_of(&[&mesh.pki, &foreign]);
    let server = server_cfg(
        &bundle,
        &mesh.server,
        ExpectedPeer::AnyInBundle,
        true,
        none_revoked(),
    );
    let visitor = leaf(&foreign);
    let expected = one_of(&[&mesh.pki.id("/server")]);
    let client = client_cfg(&bundle, &visitor, expected, none_revoked());
    handshake(server, client).await
}

/// The client presents a leaf made from `params` (signed by the real intermediate); the server
/// must refuse it for `want`, and the client must not get to talk.
async fn assert_client_cert_refused(params: rcgen::CertificateParams, want: &str) {
    let mesh = Mesh::new();
    let bad = mesh.pki.custom_leaf(&params);
    let out = handshake(mesh.server(), mesh.client_with(&bad)).await;
    out.assert_server_refused(want);
}

/// The server presents a leaf made from `params`; the client must refuse it for `want`.
async fn assert_server_cert_refused(params: rcgen::CertificateParams, want: &str) {
    let mesh = Mesh::new();
    let bad = mesh.pki.custom_leaf(&params);
    let out = handshake(mesh.server_with(&bad), mesh.client_with(&mesh.client)).await;
    out.assert_client_refused(want);
}

const CLIENT_ID: &str = "spiffe://example.org/client";
const SERVER_ID: &str = "spiffe://example.org/server";

// ---------------------------------------------------------------------------------------------
// Handshakes that succeed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_client_and_server_see_each_others_spiffe_id() {
    let mesh = Mesh::new();
    let out = handshake(mesh.server(), mesh.client_with(&mesh.client)).await;
    let server = out.server.expect("server accepts");
    let client = out.client.expect("client connects");
    assert_eq!(server.peer.as_ref().unwrap().as_str(), CLIENT_ID);
    assert_eq!(client.peer.as_ref().unwrap().as_str(), SERVER_ID);
    for side in [&server, &client] {
        assert_eq!(side.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(side.alpn.as_deref(), Some(&b"h2"[..]), "h2 preferred");
        assert_eq!(side.kind, Some(HandshakeKind::Full));
        assert_eq!(side.suite, Some(CipherSuite::TLS13_AES_128_GCM_SHA256));
    }
}

/// A client presenting the mesh's client SVID, on `provider` instead of Tether's.
fn client_on(mesh: &Mesh, provider: rustls::crypto::CryptoProvider) -> Arc<ClientConfig> {
    let core = Arc::new(SvidVerifier::new(&mesh.pki.bundle(), none_revoked()));
    let verifier = SvidServerVerifier::new(core, ExpectedPeer::AnyInBundle);
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(mesh.client.chain.clone(), mesh.client.private_key())
        .unwrap();
    Arc::new(config)
}

#[tokio::test]
async fn a_mesh_server_picks_aes_128_gcm_by_its_own_order_and_still_speaks_the_others() {
    let mesh = Mesh::new();
    // rustls' stock order puts AES-256-GCM-SHA384 first; the server's order wins.
    let stock = rustls::crypto::aws_lc_rs::default_provider();
    let first = stock.cipher_suites[0].suite();
    assert_eq!(first, CipherSuite::TLS13_AES_256_GCM_SHA384);
    let out = handshake(mesh.server(), client_on(&mesh, stock)).await;
    let want = Some(CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!(out.server.unwrap().suite, want);
    // No suite was dropped: a client offering only another one still connects with it.
    for only in [
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == only);
        let out = handshake(mesh.server(), client_on(&mesh, provider)).await;
        assert_eq!(out.server.unwrap().suite, Some(only));
    }
}

#[tokio::test]
async fn an_optional_client_certificate_may_be_absent() {
    let mesh = Mesh::new();
    let server = mesh.server_expecting(ExpectedPeer::AnyInBundle, false);
    let out = handshake(server.clone(), anonymous_client(&mesh.pki.bundle())).await;
    let seen = out.server.expect("handshake without a client certificate");
    assert!(seen.peer.is_none(), "no peer certificate");
    assert_eq!(out.client.unwrap().peer.unwrap().as_str(), SERVER_ID);

    // Optional is not lax: a certificate that is presented is still verified.
    let stranger = Pki::new(TD).leaf("/client");
    let out = handshake(server, mesh.client_with(&stranger)).await;
    assert_eq!(reason(&out.server), "unknown_ca");
}

#[tokio::test]
async fn leaves_of_a_second_trust_domain_in_the_bundle_are_accepted() {
    // Control for the trust-domain binding test below: the foreign root really is trusted.
    let out = handshake_with_foreign_client(|foreign| foreign.leaf("/visitor")).await;
    assert_eq!(
        out.server.unwrap().peer.unwrap().as_str(),
        "spiffe://foreign.test/visitor"
    );
    out.client.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Handshakes refused for the peer's certificate
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_client_certificate_is_no_cert_when_mandatory() {
    let mesh = Mesh::new();
    let out = handshake(mesh.server(), anonymous_client(&mesh.pki.bundle())).await;
    out.assert_server_refused("no_cert");
}

#[tokio::test]
async fn a_client_from_an_unknown_ca_is_unknown_ca() {
    let mesh = Mesh::new();
    // Same trust domain, a root the server never heard of.
    let stranger = Pki::new(TD).leaf("/client");
    let out = handshake(mesh.server(), mesh.client_with(&stranger)).await;
    out.assert_server_refused("unknown_ca");
}

#[tokio::test]
async fn a_server_from_an_unknown_ca_is_unknown_ca() {
    let mesh = Mesh::new();
    let stranger = Pki::new(TD).leaf("/server");
    let out = handshake(mesh.server_with(&stranger), mesh.client_with(&mesh.client)).await;
    out.assert_client_refused("unknown_ca");
}

#[tokio::test]
async fn a_leaf_claiming_another_trust_domain_than_its_root_is_refused() {
    // Both roots are in the bundle, but the foreign CA signed a leaf that claims example.org:
    // a leaf is only checked against the roots of the trust domain it names.
    let out =
        handshake_with_foreign_client(|foreign| foreign.custom_leaf(&svid_params(CLIENT_ID))).await;
    out.assert_server_refused("unknown_ca");
}

/// One `#[tokio::test]` per case, named as the case: a leaf made from [`svid_params`] with the
/// one edit is refused for the given reason by whoever it is presented to (`client`: the client
/// presents it and the server refuses; `server`: the server presents it and the client refuses).
macro_rules! leaf_refused_tests {
    ($($name:ident: $side:ident, $reason:literal, |$p:ident| $edit:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            leaf_refused_tests!(@refused $side, $reason, |$p| $edit);
        }
    )*};
    (@refused client, $reason:literal, |$p:ident| $edit:expr) => {{
        let mut $p = svid_params(CLIENT_ID);
        $edit;
        assert_client_cert_refused($p, $reason).await;
    }};
    (@refused server, $reason:literal, |$p:ident| $edit:expr) => {{
        let mut $p = svid_params(SERVER_ID);
        $edit;
        assert_server_cert_refused($p, $reason).await;
    }};
}

leaf_refused_tests! {
    an_expired_client_certificate_is_expired: client, "expired",
        |p| (p.not_before, p.not_after) = (now() - 2 * HOUR, now() - HOUR);
    a_not_yet_valid_client_certificate_is_expired: client, "expired",
        |p| (p.not_before, p.not_after) = (now() + HOUR, now() + 2 * HOUR);
    an_expired_server_certificate_is_expired: server, "expired",
        |p| (p.not_before, p.not_after) = (now() - 2 * HOUR, now() - HOUR);
}

#[tokio::test]
async fn a_revoked_client_is_refused_until_the_revocation_set_is_replaced() {
    let mesh = Mesh::new();
    // The revoked set comes from a real, verified CRL.
    let at = now();
    let der = crl::build(
        &mesh.pki.intermediate,
        1,
        at,
        at + HOUR,
        &[CrlEntry {
            serial: mesh.client.serial(),
            revoked_at: at,
            reason: None,
        }],
    )
    .unwrap();
    let list = RevocationList::parse_and_verify(&der, mesh.pki.intermediate.cert()).unwrap();
    let revocation = Revocation::new(list.revoked().clone());
    let server = server_cfg(
        &mesh.pki.bundle(),
        &mesh.server,
        ExpectedPeer::AnyInBundle,
        true,
        revocation.clone(),
    );
    let client = mesh.client_with(&mesh.client);

    let out = handshake(server.clone(), client.clone()).await;
    out.assert_server_refused("revoked");

    // Another client of the same CA is unaffected.
    let other = mesh.pki.leaf("/other");
    handshake(server.clone(), mesh.client_with(&other))
        .await
        .server
        .expect("unrevoked peer accepted");

    // A newer CRL without the serial: the same config accepts the next handshake.
    revocation.replace(RevokedSet::default());
    let out = handshake(server.clone(), client.clone()).await;
    assert_eq!(out.server.unwrap().peer.unwrap().as_str(), CLIENT_ID);
    out.client.unwrap();

    // And revoking again applies to the next handshake just as well.
    revocation.replace(list.revoked().clone());
    let out = handshake(server, client).await;
    assert_eq!(reason(&out.server), "revoked");
}

#[tokio::test]
async fn a_revoked_server_is_refused_by_the_client() {
    let mesh = Mesh::new();
    let mut set = RevokedSet::default();
    set.insert(&mesh.server.serial());
    let client = client_cfg(
        &mesh.pki.bundle(),
        &mesh.client,
        ExpectedPeer::AnyInBundle,
        Revocation::new(set),
    );
    let out = handshake(mesh.server(), client).await;
    out.assert_client_refused("revoked");
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_identity_mismatch() {
    let mesh = Mesh::new();
    let bundle = mesh.pki.bundle();
    let want = mesh.pki.id("/payments");
    let client = client_cfg(&bundle, &mesh.client, one_of(&[&want]), none_revoked());
    let out = handshake(mesh.server(), client).await;
    out.assert_client_refused("identity_mismatch");

    // Control: listing the server's real ID among others is enough.
    let client = client_cfg(
        &bundle,
        &mesh.client,
        one_of(&[&want, &mesh.pki.id("/server")]),
        none_revoked(),
    );
    handshake(mesh.server(), client).await.client.unwrap();
}

#[tokio::test]
async fn a_client_with_the_wrong_identity_is_identity_mismatch() {
    let mesh = Mesh::new();
    let server = mesh.server_expecting(one_of(&[&mesh.pki.id("/ca-admin")]), true);
    let out = handshake(server, mesh.client_with(&mesh.client)).await;
    out.assert_server_refused("identity_mismatch");
}

// ---------------------------------------------------------------------------------------------
// X509-SVID rule violations (signed by the real intermediate, so the chain itself is fine)
// ---------------------------------------------------------------------------------------------

leaf_refused_tests! {
    two_uri_sans_are_bad_svid: client, "bad_svid",
        |p| p.subject_alt_names.push(uri_san("spiffe://example.org/admin"));
    no_uri_san_is_bad_svid: client, "bad_svid",
        |p| p.subject_alt_names = vec![SanType::DnsName("client.example.org".try_into().unwrap())];
    a_uri_san_with_an_invalid_trust_domain_is_bad_svid: client, "bad_svid",
        |p| p.subject_alt_names = vec![uri_san("spiffe://Bad/x")];
    a_uri_san_that_is_not_spiffe_is_bad_svid: client, "bad_svid",
        |p| p.subject_alt_names = vec![uri_san("https://x")];
    a_trust_domain_only_id_is_bad_svid: client, "bad_svid",
        |p| p.subject_alt_names = vec![uri_san("spiffe://example.org")];
    missing_basic_constraints_is_bad_svid: client, "bad_svid", |p| p.is_ca = IsCa::NoCa;
    a_ca_certificate_as_leaf_is_bad_svid: client, "bad_svid",
        |p| p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    key_cert_sign_on_a_leaf_is_bad_svid: client, "bad_svid",
        |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    crl_sign_on_a_leaf_is_bad_svid: client, "bad_svid",
        |p| p.key_usages.push(KeyUsagePurpose::CrlSign);
    no_key_usage_is_bad_svid: client, "bad_svid", |p| p.key_usages.clear();
    // Caught by our SVID check (EKU for the handshake's direction) before webpki would say
    // bad_chain.
    a_server_auth_only_leaf_used_as_client_is_bad_svid: client, "bad_svid",
        |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    a_client_auth_only_leaf_used_as_server_is_bad_svid: server, "bad_svid",
        |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    a_server_with_two_uri_sans_is_bad_svid: server, "bad_svid",
        |p| p.subject_alt_names.push(uri_san("spiffe://example.org/other"));
}

// ---------------------------------------------------------------------------------------------
// Protocol
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tls12_only_client_cannot_connect() {
    let mesh = Mesh::new();
    let tls12 = default_client(&mesh.pki.bundle(), &mesh.client, &[&rustls::version::TLS12]);
    let out = handshake(mesh.server(), tls12).await;
    let err = rustls_error(&out.server);
    assert!(
        matches!(err, rustls::Error::PeerIncompatible(_)),
        "server refuses the protocol version: {err:?}"
    );
    assert_eq!(failure_reason(err), "tls");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_fails_cleanly() {
    let mesh = Mesh::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(serve_one(listener, mesh.server()));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let result = timeout(STEP, server_task)
        .await
        .expect("server gives up promptly")
        .expect("no panic");
    assert!(result.is_err(), "accept fails");
    assert_eq!(reason(&result), "tls");
    // Whatever the server sent back (an alert, or nothing), the connection is closed.
    let mut rest = Vec::new();
    let _ = timeout(STEP, tcp.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(!rest.starts_with(b"HTTP"), "no plaintext answer");
}

#[tokio::test]
async fn sessions_are_never_resumed() {
    let mesh = Mesh::new();
    let server = mesh.server();
    assert_eq!(server.send_tls13_tickets, 0);
    assert_eq!(server.max_early_data_size, 0);
    assert!(!server.session_storage.can_cache());
    assert_eq!(
        server.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let ours = mesh.client_with(&mesh.client);
    assert!(!ours.enable_early_data);

    // A client that *would* resume (rustls' default in-memory session cache).
    let eager = default_client(&mesh.pki.bundle(), &mesh.client, &[&rustls::version::TLS13]);

    // Control: against a server that issues tickets, that client does resume, so the
    // assertions below would see a resumption if server_config allowed one.
    let mut lax = (*server).clone();
    lax.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
    lax.send_tls13_tickets = 2;
    let lax = Arc::new(lax);
    let first = handshake(lax.clone(), eager.clone()).await;
    assert_eq!(first.client.unwrap().kind, Some(HandshakeKind::Full));
    let second = handshake(lax.clone(), eager.clone()).await;
    assert_eq!(second.client.unwrap().kind, Some(HandshakeKind::Resumed));
    assert_eq!(second.server.unwrap().kind, Some(HandshakeKind::Resumed));

    // server_config: the same eager client does a full handshake every time.
    for _ in 0..3 {
        let out = handshake(server.clone(), eager.clone()).await;
        assert_eq!(out.client.unwrap().kind, Some(HandshakeKind::Full));
        assert_eq!(out.server.unwrap().kind, Some(HandshakeKind::Full));
    }

    // client_config: never resumes either, even against a server that offers it.
    for _ in 0..3 {
        let out = handshake(lax.clone(), ours.clone()).await;
        assert_eq!(out.client.unwrap().kind, Some(HandshakeKind::Full));
    }
}

// ---------------------------------------------------------------------------------------------
// SvidVerifier::verify directly
// ---------------------------------------------------------------------------------------------

fn unix(t: time::OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(t.unix_timestamp() as u64))
}

fn verify(
    verifier: &SvidVerifier,
    svid: &Svid,
    usage: Usage,
    expected: &ExpectedPeer,
) -> Result<tether_certs::svid::LeafInfo, VerifyError> {
    verifier.verify(&svid.der, &svid.chain[1..], usage, unix(now()), expected)
}

#[test]
fn verify_returns_the_leafs_id_and_serial_for_both_usages() {
    let pki = Pki::new(TD);
    let verifier = SvidVerifier::new(&pki.bundle(), none_revoked());
    let svid = pki.leaf("/svc");
    for usage in [Usage::Client, Usage::Server] {
        let info = verify(&verifier, &svid, usage, &ExpectedPeer::AnyInBundle).unwrap();
        assert_eq!(info.id, pki.id("/svc"));
        assert_eq!(info.serial, svid.serial());
        assert_eq!(info.serial, svid.issued.as_ref().unwrap().serial);
    }
}

#[test]
fn verify_honours_a_root_rotation() {
    let old = Pki::new(TD);
    let new = Pki::new(TD);
    let mut bundle = bundle_of(&[&old, &new]);
    let old_leaf = old.leaf("/svc");
    let new_leaf = new.leaf("/svc");
    let any = ExpectedPeer::AnyInBundle;
    let during = SvidVerifier::new(&bundle, none_revoked());
    verify(&during, &old_leaf, Usage::Client, &any).unwrap();
    verify(&during, &new_leaf, Usage::Client, &any).unwrap();

    assert!(bundle.remove(&old.bundle().roots()[0].fingerprint));
    let after = SvidVerifier::new(&bundle, none_revoked());
    verify(&after, &new_leaf, Usage::Client, &any).unwrap();
    assert!(matches!(
        verify(&after, &old_leaf, Usage::Client, &any),
        Err(VerifyError::UnknownCa(td)) if td == TD
    ));
}

#[test]
fn verify_needs_the_right_intermediate() {
    let pki = Pki::new(TD);
    let verifier = SvidVerifier::new(&pki.bundle(), none_revoked());
    let svid = pki.leaf("/svc");
    let any = ExpectedPeer::AnyInBundle;
    let now = unix(now());
    let err = verifier
        .verify(&svid.der, &[], Usage::Client, now, &any)
        .unwrap_err();
    assert!(matches!(err, VerifyError::UnknownCa(_)), "{err:?}");
    let other = Pki::new(TD);
    let err = verifier
        .verify(
            &svid.der,
            &[other.intermediate.cert().clone()],
            Usage::Client,
            now,
            &any,
        )
        .unwrap_err();
    assert!(matches!(err, VerifyError::UnknownCa(_)), "{err:?}");
    // An empty bundle trusts nothing.
    let empty = SvidVerifier::new(&TrustBundle::default(), none_revoked());
    let err = verify(&empty, &svid, Usage::Client, &any).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownCa(_)), "{err:?}");
}

#[test]
fn verify_checks_the_validity_period_at_the_given_time() {
    let pki = Pki::new(TD);
    let verifier = SvidVerifier::new(&pki.bundle(), none_revoked());
    let svid = pki.leaf("/svc");
    let issued = svid.issued.as_ref().unwrap();
    let any = ExpectedPeer::AnyInBundle;
    let at = |t| verifier.verify(&svid.der, &svid.chain[1..], Usage::Client, unix(t), &any);
    at(issued.not_before).unwrap();
    at(issued.not_after).unwrap();
    let second = Duration::from_secs(1);
    assert!(matches!(
        at(issued.not_after + second),
        Err(VerifyError::Expired)
    ));
    assert!(matches!(
        at(issued.not_before - second),
        Err(VerifyError::Expired)
    ));
}

#[test]
fn verify_refuses_a_leaf_with_a_damaged_signature_as_bad_chain() {
    let pki = Pki::new(TD);
    let verifier = SvidVerifier::new(&pki.bundle(), none_revoked());
    let svid = pki.leaf("/svc");
    let bad = CertificateDer::from(flip_signature(&svid.der));
    let err = verifier
        .verify(
            &bad,
            &svid.chain[1..],
            Usage::Client,
            unix(now()),
            &ExpectedPeer::AnyInBundle,
        )
        .unwrap_err();
    assert!(matches!(err, VerifyError::Chain(_)), "{err:?}");
    assert_eq!(failure_reason(&err.into()), "bad_chain");
}

#[test]
fn verify_reports_which_svid_rule_was_broken() {
    let pki = Pki::new(TD);
    let verifier = SvidVerifier::new(&pki.bundle(), none_revoked());
    let any = ExpectedPeer::AnyInBundle;
    let case = |edit: &dyn Fn(&mut rcgen::CertificateParams), usage: Usage| {
        let mut params = svid_params(CLIENT_ID);
        edit(&mut params);
        let svid = pki.custom_leaf(&params);
        match verify(&verifier, &svid, usage, &any) {
            Err(VerifyError::BadSvid(e)) => e,
            other => panic!("expected BadSvid, got {other:?}"),
        }
    };
    assert_eq!(
        case(
            &|p| p.subject_alt_names.push(uri_san("spiffe://example.org/b")),
            Usage::Client
        ),
        SvidError::UriSanCount(2)
    );
    assert_eq!(
        case(
            &|p| p.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())],
            Usage::Client
        ),
        SvidError::UriSanCount(0)
    );
    assert!(matches!(
        case(
            &|p| p.subject_alt_names = vec![uri_san("spiffe://Bad/x")],
            Usage::Client
        ),
        SvidError::BadId(_)
    ));
    assert!(matches!(
        case(
            &|p| p.subject_alt_names = vec![uri_san("https://x")],
            Usage::Client
        ),
        SvidError::BadId(_)
    ));
    assert!(matches!(
        case(
            &|p| p.subject_alt_names = vec![uri_san("spiffe://example.org")],
            Usage::Client
        ),
        SvidError::NoPath(_)
    ));
    assert_eq!(
        case(&|p| p.is_ca = IsCa::NoCa, Usage::Client),
        SvidError::NotLeaf
    );
    assert_eq!(
        case(
            &|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
            Usage::Client
        ),
        SvidError::NotLeaf
    );
    assert_eq!(
        case(
            &|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign),
            Usage::Client
        ),
        SvidError::KeyUsage
    );
    assert_eq!(
        case(
            &|p| p.key_usages.push(KeyUsagePurpose::CrlSign),
            Usage::Client
        ),
        SvidError::KeyUsage
    );
    assert_eq!(
        case(&|p| p.key_usages.clear(), Usage::Client),
        SvidError::KeyUsage
    );
    assert_eq!(
        case(
            &|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
            Usage::Client
        ),
        SvidError::KeyUsage,
        "digitalSignature is required"
    );
    assert_eq!(
        case(
            &|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client
        ),
        SvidError::ExtendedKeyUsage(Usage::Client)
    );
    assert_eq!(
        case(
            &|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Server
        ),
        SvidError::ExtendedKeyUsage(Usage::Server)
    );
}

#[test]
fn verify_binds_a_leaf_to_the_roots_of_its_own_trust_domain() {
    let pki = Pki::new(TD);
    let foreign = Pki::new(FOREIGN_TD);
    let bundle = bundle_of(&[&pki, &foreign]);
    let verifier = SvidVerifier::new(&bundle, none_revoked());
    let any = ExpectedPeer::AnyInBundle;
    // Even the real issuance path signs whatever ID it is given; the verifier is the backstop.
    let key = tether_certs::keys::generate_key().unwrap();
    let issued = foreign
        .intermediate
        .issue_leaf(&pki.id("/client"), &key, HOUR, DAY, now())
        .unwrap();
    let err = verifier
        .verify(
            &issued.der,
            &[foreign.intermediate.cert().clone()],
            Usage::Client,
            unix(now()),
            &any,
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::UnknownCa(ref td) if td == TD),
        "{err:?}"
    );
    verify(&verifier, &foreign.leaf("/ok"), Usage::Client, &any).unwrap();
}

#[test]
fn verify_checks_identity_then_revocation() {
    let pki = Pki::new(TD);
    let revocation = none_revoked();
    let verifier = SvidVerifier::new(&pki.bundle(), revocation.clone());
    let svid = pki.leaf("/svc");
    let id = pki.id("/svc");
    let other = pki.id("/other");
    verify(&verifier, &svid, Usage::Server, &one_of(&[&id])).unwrap();
    match verify(&verifier, &svid, Usage::Server, &one_of(&[&other])) {
        Err(VerifyError::IdentityMismatch { got, expected }) => {
            assert_eq!(got, id.as_str());
            assert_eq!(expected, other.as_str());
        }
        x => panic!("expected IdentityMismatch, got {x:?}"),
    }
    assert!(matches!(
        verify(&verifier, &svid, Usage::Server, &one_of(&[])),
        Err(VerifyError::IdentityMismatch { .. })
    ));

    let mut set = RevokedSet::default();
    set.insert(&svid.serial());
    revocation.replace(set);
    assert!(revocation.is_revoked(svid.serial().as_bytes()));
    let mut padded = vec![0u8];
    padded.extend_from_slice(svid.serial().as_bytes());
    assert!(
        revocation.is_revoked(&padded),
        "padding does not hide a serial"
    );
    assert_eq!(revocation.snapshot().len(), 1);
    assert!(matches!(
        verify(&verifier, &svid, Usage::Server, &ExpectedPeer::AnyInBundle),
        Err(VerifyError::Revoked(s)) if s == svid.serial().to_string()
    ));
    revocation.replace(RevokedSet::default());
    verify(&verifier, &svid, Usage::Server, &ExpectedPeer::AnyInBundle).unwrap();
}

#[test]
fn failure_reason_labels_every_verify_error() {
    let cases: Vec<(VerifyError, &str)> = vec![
        (VerifyError::BadSvid(SvidError::NotLeaf), "bad_svid"),
        (VerifyError::UnknownCa(TD.into()), "unknown_ca"),
        (VerifyError::Expired, "expired"),
        (VerifyError::Revoked("01".into()), "revoked"),
        (
            VerifyError::IdentityMismatch {
                got: CLIENT_ID.into(),
                expected: SERVER_ID.into(),
            },
            "identity_mismatch",
        ),
        (VerifyError::Chain("BadSignature".into()), "bad_chain"),
    ];
    for (err, label) in cases {
        let shown = err.to_string();
        assert_eq!(failure_reason(&err.into()), label, "{shown}");
    }
    assert_eq!(
        failure_reason(&rustls::Error::NoCertificatesPresented),
        "no_cert"
    );
    assert_eq!(failure_reason(&rustls::Error::General("x".into())), "tls");
}

#[test]
fn a_remembered_chain_is_only_that_chain_and_still_meets_identity_and_revocation() {
    let pki = Pki::new(TD);
    let revocation = none_revoked();
    let verifier = SvidVerifier::new(&pki.bundle(), revocation.clone());
    let svid = pki.leaf("/svc");
    let any = ExpectedPeer::AnyInBundle;
    verify(&verifier, &svid, Usage::Client, &any).unwrap();
    verify(&verifier, &svid, Usage::Client, &any).unwrap();
    assert_eq!(
        verifier.remembered_chains(),
        1,
        "one chain, remembered once"
    );

    // The same leaf with no, another, or a damaged intermediate is another chain: refused.
    let now = unix(now());
    let other = Pki::new(TD);
    let damaged = CertificateDer::from(flip_signature(&svid.chain[1]));
    for wrong in [
        vec![],
        vec![other.intermediate.cert().clone()],
        vec![damaged],
    ] {
        let err = verifier
            .verify(&svid.der, &wrong, Usage::Client, now, &any)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::UnknownCa(_) | VerifyError::Chain(_)),
            "{err:?}"
        );
    }
    assert_eq!(
        verifier.remembered_chains(),
        1,
        "failures are not remembered"
    );

    // Identity and revocation are checked on every handshake, remembered chain or not.
    let elsewhere = one_of(&[&pki.id("/other")]);
    assert!(matches!(
        verify(&verifier, &svid, Usage::Client, &elsewhere),
        Err(VerifyError::IdentityMismatch { .. })
    ));
    let mut set = RevokedSet::default();
    set.insert(&svid.serial());
    revocation.replace(set);
    assert!(matches!(
        verify(&verifier, &svid, Usage::Client, &any),
        Err(VerifyError::Revoked(_))
    ));

    // After its leaf expires the chain is checked afresh, and refused as expired.
    let after = svid.issued.as_ref().unwrap().not_after + Duration::from_secs(1);
    revocation.replace(RevokedSet::default());
    let err = verifier
        .verify(
            &svid.der,
            &svid.chain[1..],
            Usage::Client,
            unix(after),
            &any,
        )
        .unwrap_err();
    assert!(matches!(err, VerifyError::Expired), "{err:?}");
}

//! The TLS edge both directions share: running a handshake under the handshake timeout,
//! classifying how it ended (the `result` label of `tether_tls_handshakes_total`), and the
//! verified peer's certificate facts.
//!
//! The rustls verifiers (in `tether-certs`) already parsed and judged the peer's leaf during the
//! handshake, but rustls hands nothing from a verifier to the connection, so [`PeerCert::of`]
//! reads the few facts the request path needs from the verified leaf, once per connection, here
//! and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use tether_certs::{Serial, SpiffeId};

/// How a handshake (or the decision not to attempt one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Verified and established.
    Ok,
    /// The peer's certificate failed the X509-SVID rules.
    BadSvid,
    /// The chain did not verify for another reason.
    BadChain,
    /// The peer's certificate (or one in its chain) is expired or not yet valid.
    Expired,
    /// The peer presented a valid SVID, but not the identity we require.
    IdentityMismatch,
    /// The peer presented no certificate.
    NoCert,
    /// We have no certificate yet, so we refuse to handshake at all (fail closed).
    NoIdentity,
    /// A TLS protocol failure unrelated to the peer's certificate.
    Protocol,
    /// The peer's certificate is on the CRL in force.
    Revoked,
    /// Our CRL is stale under `on_stale_crl = "deny"`, so we refuse to handshake (fail closed).
    StaleCrl,
    /// The handshake did not finish within the handshake timeout.
    Timeout,
    /// The chain does not lead to a root in our bundle.
    UnknownCa,
}

impl HandshakeResult {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::BadSvid => "bad_svid",
            HandshakeResult::BadChain => "bad_chain",
            HandshakeResult::Expired => "expired",
            HandshakeResult::IdentityMismatch => "identity_mismatch",
            HandshakeResult::NoCert => "no_cert",
            HandshakeResult::NoIdentity => "no_identity",
            HandshakeResult::Protocol => "protocol",
            HandshakeResult::Revoked => "revoked",
            HandshakeResult::StaleCrl => "stale_crl",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::UnknownCa => "unknown_ca",
        }
    }

    /// Classifies the I/O error a failed tokio-rustls handshake returned.
    pub fn of_io_error(e: &std::io::Error) -> Self {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(err) => Self::of_rustls(err),
            None => HandshakeResult::Protocol,
        }
    }

    fn of_rustls(err: &rustls::Error) -> Self {
        match tether_certs::verify::failure_reason(err) {
            "no_cert" => HandshakeResult::NoCert,
            "unknown_ca" => HandshakeResult::UnknownCa,
            "expired" => HandshakeResult::Expired,
            "revoked" => HandshakeResult::Revoked,
            "bad_svid" => HandshakeResult::BadSvid,
            "identity_mismatch" => HandshakeResult::IdentityMismatch,
            "bad_chain" => HandshakeResult::BadChain,
            _ => HandshakeResult::Protocol,
        }
    }
}

/// A handshake that did not produce a connection: how it ended, and the detail for the log.
#[derive(Debug)]
pub struct Refusal {
    /// The classification (never [`HandshakeResult::Ok`]).
    pub result: HandshakeResult,
    /// What happened, for the operator's log (never key material).
    pub detail: String,
}

impl Refusal {
    fn of(e: std::io::Error) -> Self {
        Refusal {
            result: HandshakeResult::of_io_error(&e),
            detail: e.to_string(),
        }
    }

    fn timeout() -> Self {
        Refusal {
            result: HandshakeResult::Timeout,
            detail: "TLS handshake timed out".into(),
        }
    }
}

/// Accepts a TLS connection on `tcp` with `config`, within `timeout`.
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<server::TlsStream<TcpStream>, Refusal> {
    match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(Refusal::of(e)),
        Err(_) => Err(Refusal::timeout()),
    }
}

/// Opens TLS on `tcp` with `config`, within `timeout`. `name` only feeds SNI: the peer is
/// identified by its SPIFFE ID, which `config`'s verifier requires, not by a DNS name.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    name: &str,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<client::TlsStream<TcpStream>, Refusal> {
    let server_name = ServerName::try_from(name.to_string())
        .unwrap_or_else(|_| ServerName::try_from("tether.peer").expect("static DNS name is valid"));
    match tokio::time::timeout(
        timeout,
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(Refusal::of(e)),
        Err(_) => Err(Refusal::timeout()),
    }
}

/// What the request path needs to know about a verified peer.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// The peer's SPIFFE ID.
    pub id: SpiffeId,
    /// The serial of the peer's leaf, for the revocation watch.
    pub serial: Serial,
    /// SHA-256 of the leaf's DER, hex (the `Hash` of the XFCC header).
    pub fingerprint: String,
}

impl PeerCert {
    /// The facts of the leaf in `chain` (as `peer_certificates()` returns it). `None` if there
    /// is no leaf or it does not parse, which the verifier makes impossible on an established
    /// connection; callers treat it as a refusal rather than panic.
    pub fn of(chain: Option<&[CertificateDer<'_>]>) -> Option<Self> {
        let leaf = chain?.first()?;
        let info = tether_certs::svid::inspect_leaf(leaf, None).ok()?;
        Some(PeerCert {
            id: info.id,
            serial: info.serial,
            fingerprint: tether_certs::bundle::fingerprint(leaf),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_failures_map_to_their_labels() {
        use rustls::CertificateError as C;
        let cases = [
            (rustls::Error::NoCertificatesPresented, "no_cert"),
            (
                rustls::Error::InvalidCertificate(C::UnknownIssuer),
                "unknown_ca",
            ),
            (rustls::Error::InvalidCertificate(C::Expired), "expired"),
            (rustls::Error::InvalidCertificate(C::Revoked), "revoked"),
            (
                rustls::Error::InvalidCertificate(C::BadEncoding),
                "bad_chain",
            ),
            (rustls::Error::HandshakeNotComplete, "protocol"),
        ];
        for (err, label) in cases {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
            assert_eq!(HandshakeResult::of_io_error(&io).as_str(), label);
        }
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            HandshakeResult::of_io_error(&plain),
            HandshakeResult::Protocol
        );
    }

    #[test]
    fn no_leaf_or_garbage_gives_no_peer_facts() {
        assert!(PeerCert::of(None).is_none());
        assert!(PeerCert::of(Some(&[])).is_none());
        let junk = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
        assert!(PeerCert::of(Some(&junk)).is_none());
    }
}

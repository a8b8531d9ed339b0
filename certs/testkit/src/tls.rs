//! A rustls client that trusts any server certificate. The sidecar and CA suites use it to look
//! at what the *server* decides about a client (which certificate it accepts, which reason it
//! gives), where verifying the server too would only add a second way to fail. Everything else
//! about the config is what the mesh uses: TLS 1.3 only, Tether's crypto provider.
//!
//! `demo-services` keeps its own copy of this verifier on purpose: it depends on nothing inside
//! the workspace, so it cannot use this kit.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Accepts every server certificate, but still checks the handshake signatures with Tether's
/// algorithms, as every verifier does (so the server must hold the key of the certificate it
/// sent).
#[derive(Debug, Default)]
pub struct AcceptAnyServer;

// Short names that keep the certificate check on one line.
type Der<'a> = CertificateDer<'a>;
type Name<'a> = ServerName<'a>;
type Verdict = Result<ServerCertVerified, rustls::Error>;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(&self, _: &Der, _: &[Der], _: &Name, _: &[u8], _: UnixTime) -> Verdict {
        Ok(ServerCertVerified::assertion())
    }

    tether_certs::check_handshake_signatures!();
}

/// A TLS 1.3 client config that trusts any server, presents `identity` (chain + key) when given,
/// and offers the single ALPN protocol `alpn`.
pub fn accept_any_client(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(tether_certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("Tether's provider speaks TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("the client credential is usable"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_offers_one_protocol_and_no_early_data() {
        let config = accept_any_client(None, b"http/1.1");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(!config.enable_early_data);
    }

    #[test]
    fn any_server_certificate_is_accepted() {
        let pki = crate::pki::Pki::new("kit.test");
        let leaf = pki.leaf("/anyone");
        let name = ServerName::try_from("not-the-name.invalid").unwrap();
        let verdict =
            AcceptAnyServer.verify_server_cert(&leaf.der, &[], &name, &[], UnixTime::now());
        assert!(verdict.is_ok());
    }
}

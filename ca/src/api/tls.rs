//! The API's TLS: a certificate that can be swapped under a running listener (root rotation),
//! and a client-certificate policy that asks but leaves judging to the handlers.

use std::sync::{Arc, RwLock};

use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::ApiError;
use crate::authority::Authority;

/// The API's TLS certificate, swappable: every new handshake resolves the current one.
#[derive(Debug)]
pub(super) struct ServerCert {
    /// The certificate and key new handshakes get.
    pub(super) current: RwLock<Arc<CertifiedKey>>,
    /// The bundle version it was loaded for.
    pub(super) version: std::sync::atomic::AtomicU64,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Replaced whole, so a poisoned lock still holds a complete key.
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

type Credential = (
    Vec<CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

/// The current generation's server chain and key.
fn server_credential(authority: &Authority) -> Result<Credential, ApiError> {
    let (chain_pem, key_pem) = authority.server_credential()?;
    let chain = tether_certs::pem::certificates(chain_pem.as_bytes())
        .map_err(|e| ApiError::Tls(format!("server/chain.pem: {e}")))?;
    let key = tether_certs::pem::private_key(key_pem.as_bytes())
        .map_err(|e| ApiError::Tls(format!("server/key.pem: {e}")))?;
    Ok((chain, key))
}

/// The current generation's server certificate and key, ready for a resolver.
pub(super) fn certified_key(authority: &Authority) -> Result<CertifiedKey, ApiError> {
    let (chain, key) = server_credential(authority)?;
    CertifiedKey::from_der(chain, key, &tether_certs::provider())
        .map_err(|e| ApiError::Tls(format!("server credential: {e}")))
}

/// The API's rustls config: the mesh's TLS settings, `server_cert` as the certificate source,
/// client certificates asked for but judged by the handlers.
pub(super) fn tls_config(
    authority: &Authority,
    server_cert: Arc<ServerCert>,
) -> Result<rustls::ServerConfig, ApiError> {
    let (chain, key) = server_credential(authority)?;
    // The shared constructor keeps the mesh's TLS settings (1.3 only, ALPN, no resumption, no
    // 0-RTT); only the certificate source is swapped for one that can change under it.
    let mut config = tether_certs::verify::server_config(chain, key, Arc::new(DeferredClientAuth))
        .map_err(|e| ApiError::Tls(e.to_string()))?;
    config.cert_resolver = server_cert;
    Ok(config)
}

/// Asks for a client certificate and checks the handshake signature, but leaves judging the
/// certificate to the handler (see the module docs).
#[derive(Debug)]
struct DeferredClientAuth;

impl ClientCertVerifier for DeferredClientAuth {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    // The handshake signature is still checked: it proves the client holds the key.
    tether_certs::check_handshake_signatures!();
}

//! The shared vocabulary of identity for Tether, with no network code.
//!
//! Both the certificate authority (`tether-ca`) and the sidecar (`tether-proxy`) speak in these
//! types, so the rules of an X509-SVID live in exactly one place: how a SPIFFE ID is spelled, how
//! a leaf is built, how a CRL is signed and read, and what a peer certificate must look like before
//! a TLS handshake is allowed to finish.
//!
//! # Layout
//! - [`spiffe`]: `SpiffeId` and `TrustDomain`, parsed and printed strictly per the SPIFFE-ID spec.
//! - [`serial`]: certificate serial numbers, compared as numbers rather than as DER bytes.
//! - [`keys`]: ECDSA P-256 key and CSR generation for the side that holds the private key.
//! - [`issue`]: the CA hierarchy (root, intermediate) and the leaf issuance policy.
//! - [`crl`]: building, parsing and verifying certificate revocation lists.
//! - [`bundle`]: `TrustBundle`, the set of roots a peer is checked against (several during rotation).
//! - [`svid`]: the X509-SVID leaf rules, applied to a DER certificate.
//! - [`verify`]: rustls verifiers for both directions that enforce chain, SVID rules, identity and
//!   revocation.
//! - [`pem`]: small PEM helpers shared by the above.
//! - [`wire`]: the CA↔sidecar contract: URL paths, JSON bodies, header names, size limits.
//! - [`files`]: private directories and atomic writes for the files that hold identity.

pub mod bundle;
pub mod crl;
pub mod files;
pub mod issue;
pub mod keys;
pub mod pem;
pub mod serial;
pub mod spiffe;
pub mod svid;
pub mod verify;
pub mod wire;

use std::sync::{Arc, OnceLock};

pub use bundle::TrustBundle;
pub use crl::{RevocationList, RevokedSet};
pub use serial::Serial;
pub use spiffe::{SpiffeId, TrustDomain};

/// The crypto provider every Tether TLS config and verifier uses.
///
/// Passed explicitly (`builder_with_provider`) so no process-wide default has to be installed, and
/// aws-lc-rs because it has the fastest handshakes of the providers rustls ships.
///
/// Its cipher suites are rustls' own, with `TLS13_AES_128_GCM_SHA256` moved first (rustls puts
/// AES-256-GCM-SHA384 first). The keys are P-256 and X25519, 128-bit strong, so AES-256 adds no
/// strength to a connection; and SHA-256 runs on the CPU's SHA extensions where SHA-384 has none,
/// which makes the TLS 1.3 key schedule and transcript hash of every handshake cheaper (272 against
/// 305 µs of the inbound's CPU per full handshake; the records cost the same). Mesh servers pick
/// by this order ([`verify::server_config`]).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider
                .cipher_suites
                .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            Arc::new(provider)
        })
        .clone()
}

//! The chain check of [`SvidVerifier`](super::SvidVerifier): webpki's path to a root, remembered.
//!
//! A mesh peer reconnects with the same certificate chain many times over its lifetime, and the
//! two ECDSA signature checks of that chain (leaf by intermediate, intermediate by root) were a
//! quarter of a full handshake's CPU at the inbound (404 against 305 µs without them). webpki's
//! answer for a chain depends only on its exact bytes, the roots, the key usage and the time,
//! so a chain it accepted is remembered by a
//! SHA-256 digest of those bytes and the usage, together with the span of time in which every
//! certificate presented is valid. The roots are fixed per verifier (a new bundle builds a new
//! verifier, with nothing remembered), and a time outside the span is verified afresh, which
//! gives the same `Expired` webpki would.
//!
//! Only what webpki decides is remembered: the SVID rules, the expected identity, revocation and
//! the handshake signature (the proof that the peer holds the key) are still checked on every
//! handshake. Failures are never remembered. SHA-256's collision resistance (128-bit) matches
//! the strength of the P-256 keys Tether signs chains with, so the digest adds no weaker link.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest::{Context, SHA256};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::VerifyError;
use crate::svid::{LeafInfo, Usage};

/// How many accepted chains one verifier remembers: one chain per peer instance for about a
/// thousand of them (a peer presents two while it rotates); a 32-byte key and a 16-byte span
/// each, under 100 KiB.
const CAPACITY: usize = 1024;

/// A digest of the usage and the exact chain bytes.
type ChainKey = [u8; 32];

/// Chains webpki accepted, each with the span (Unix seconds, inclusive) in which all of its
/// certificates are valid.
#[derive(Debug, Default)]
pub(super) struct VerifiedChains {
    spans: Mutex<HashMap<ChainKey, (u64, u64)>>,
}

impl VerifiedChains {
    /// Checks that `end_entity` with `intermediates` chains to one of `anchors` for `usage` at
    /// `now`, answering from memory for a chain accepted before.
    pub(super) fn check(
        &self,
        anchors: &[TrustAnchor<'_>],
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: Usage,
        now: UnixTime,
        leaf: &LeafInfo,
    ) -> Result<(), VerifyError> {
        let key = chain_key(end_entity, intermediates, usage);
        let secs = now.as_secs();
        if self.holds(&key, secs) {
            return Ok(());
        }
        // webpki's path building and signature checks, its errors in the verifier's terms.
        let td = leaf.id.trust_domain_name();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| VerifyError::Chain(e.to_string()))?;
        let eku = match usage {
            Usage::Client => webpki::KeyUsage::client_auth(),
            Usage::Server => webpki::KeyUsage::server_auth(),
        };
        let algs = super::algorithms().all;
        cert.verify_for_usage(algs, anchors, intermediates, now, eku, None, None)
            .map_err(|e| match e {
                webpki::Error::UnknownIssuer => VerifyError::UnknownCa(td.to_string()),
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    VerifyError::Expired
                }
                other => VerifyError::Chain(format!("{other:?}")),
            })?;
        if let Some(span) = validity_span(leaf, intermediates) {
            self.remember(key, span, secs);
        }
        Ok(())
    }

    /// Whether `key` was accepted and `now` is inside its span.
    fn holds(&self, key: &ChainKey, now: u64) -> bool {
        let spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        spans
            .get(key)
            .is_some_and(|&(from, until)| from <= now && now <= until)
    }

    /// Remembers `key`. When full, the spans already over go first; if none are, everything is
    /// forgotten, which costs only fresh checks.
    fn remember(&self, key: ChainKey, span: (u64, u64), now: u64) {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if spans.len() >= CAPACITY {
            spans.retain(|_, &mut (_, until)| until >= now);
            if spans.len() >= CAPACITY {
                spans.clear();
            }
        }
        spans.insert(key, span);
    }

    /// How many chains are remembered.
    pub(super) fn len(&self) -> usize {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// SHA-256 over the usage and each certificate, length-prefixed so no two different chains
/// feed the same bytes.
fn chain_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: Usage,
) -> ChainKey {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[match usage {
        Usage::Client => 1,
        Usage::Server => 2,
    }]);
    for der in std::iter::once(end_entity).chain(intermediates) {
        ctx.update(&(der.len() as u64).to_be_bytes());
        ctx.update(der);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// The span in which the leaf and every intermediate presented are valid; `None` when it is
/// empty or an intermediate does not parse (then the chain is simply not remembered). Every
/// certificate presented counts, not only the ones on the path webpki built, so the span is
/// never wider than webpki's answer.
fn validity_span(leaf: &LeafInfo, intermediates: &[CertificateDer<'_>]) -> Option<(u64, u64)> {
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    let mut from = secs(leaf.not_before.unix_timestamp());
    let mut until = secs(leaf.not_after.unix_timestamp());
    for der in intermediates {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        from = from.max(secs(cert.validity().not_before.timestamp()));
        until = until.min(secs(cert.validity().not_after.timestamp()));
    }
    (from <= until).then_some((from, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: ChainKey = [7; 32];

    #[test]
    fn a_remembered_chain_holds_only_inside_its_span() {
        let chains = VerifiedChains::default();
        assert!(!chains.holds(&KEY, 150));
        chains.remember(KEY, (100, 200), 150);
        assert!(chains.holds(&KEY, 100));
        assert!(chains.holds(&KEY, 200));
        assert!(!chains.holds(&KEY, 99));
        assert!(!chains.holds(&KEY, 201));
        assert!(
            !chains.holds(&[8; 32], 150),
            "another chain is not remembered"
        );
    }

    #[test]
    fn a_full_memory_drops_spans_that_are_over_first() {
        let chains = VerifiedChains::default();
        for i in 0..CAPACITY {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            // Every other chain's span is over by time 500.
            let until = if i % 2 == 0 { 400 } else { 900 };
            chains.remember(key, (0, until), 300);
        }
        assert_eq!(chains.len(), CAPACITY);
        chains.remember(KEY, (0, 900), 500);
        assert_eq!(chains.len(), CAPACITY / 2 + 1);
        assert!(chains.holds(&KEY, 500));
        // Nothing over: everything goes, the new chain stays.
        let mut key = [0u8; 32];
        key[31] = 1;
        for i in 0..CAPACITY {
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            chains.remember(key, (0, 900), 500);
        }
        assert!(chains.len() <= CAPACITY);
        assert!(chains.holds(&key, 500));
    }

    #[test]
    fn the_key_tells_usage_and_chain_boundaries_apart() {
        let a = CertificateDer::from(vec![1, 2, 3]);
        let b = CertificateDer::from(vec![4]);
        let ab = CertificateDer::from(vec![1, 2, 3, 4]);
        let client = chain_key(&a, std::slice::from_ref(&b), Usage::Client);
        assert_ne!(
            client,
            chain_key(&a, std::slice::from_ref(&b), Usage::Server)
        );
        assert_ne!(client, chain_key(&ab, &[], Usage::Client));
        assert_ne!(client, chain_key(&a, &[], Usage::Client));
        assert_eq!(client, chain_key(&a, &[b], Usage::Client));
    }
}

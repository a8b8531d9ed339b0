//! Issuance: one-time enrollment tokens, enrollment (with a token, or with an identity proved
//! elsewhere, behind the revocation gate), renewal over mTLS, and issuing to a directory for the
//! CLI. Every leaf is signed outside the store lock and recorded in the
//! transaction that also consumes the token or checks the presented certificate.

use std::path::Path;
use std::time::Duration;

use rand::RngCore;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use tether_certs::files::{PUBLIC_MODE, SECRET_MODE};
use tether_certs::wire::Issued;
use tether_certs::SpiffeId;

use super::{not_ours, revoked, Authority};
use crate::error::CaError;
use crate::metrics::IssueMethod;
use crate::state::{create_private_dir, write_file, Keys};
use crate::store::{NewCert, RenewalGate, StoreError, TokenRecord};
use crate::timefmt::{add_secs, rfc3339};

impl Authority {
    /// Makes a one-time enrollment token for `id`, valid for `ttl`. Only its SHA-256 is stored.
    pub fn create_token(&self, id: &SpiffeId, ttl: Duration) -> Result<String, CaError> {
        self.check_member(id)?;
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        use base64::Engine as _;
        let token = format!(
            "tether-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.store()
            .insert_token(&token_hash(&token), id, now, add_secs(now, ttl))?;
        Ok(token)
    }

    /// Enrollment: a valid, unused, unexpired token + a CSR → a leaf for the token's identity.
    /// The token is consumed in the same transaction that records the certificate.
    pub fn enroll(&self, token: &str, csr: &[u8]) -> Result<Issued, CaError> {
        let key = tether_certs::issue::parse_csr(csr)?;
        let now = OffsetDateTime::now_utc();
        let hash = token_hash(token);
        let token_error = |row: Option<&TokenRecord>| match row {
            None => CaError::Unauthorized("unknown enrollment token".into()),
            Some(r) if r.used_at.is_some() => {
                CaError::Unauthorized("enrollment token was already used".into())
            }
            Some(_) => CaError::Unauthorized("enrollment token has expired".into()),
        };
        let row = self.store().token(&hash)?;
        let id = match &row {
            Some(r) if r.used_at.is_none() && r.expires_at > now.unix_timestamp() => {
                SpiffeId::parse(&r.spiffe_id)
                    .map_err(|e| StoreError::Corrupt(format!("token identity: {e}")))?
            }
            other => return Err(token_error(other.as_ref())),
        };
        self.with_current_keys(|keys| {
            // Signed without the store lock, so enrollments sign in parallel; the token is
            // consumed in the transaction that records the certificate.
            let (record, issued) = self.sign_enrollment(keys, &id, &key, now)?;
            if self
                .store()
                .record_enrollment(&hash, now.unix_timestamp(), &record)?
            {
                Ok(issued)
            } else {
                // Used (or expired) by a concurrent enrollment since we looked.
                Err(token_error(self.store().token(&hash)?.as_ref()))
            }
        })
    }

    /// Enrollment of `id`, already proved by a credential verified outside the store (a
    /// Kubernetes service-account token, see [`crate::k8s`]) that was issued at
    /// `credential_issued_at` (Unix seconds), + a CSR → a leaf for `id`.
    ///
    /// The revocation gate: such a credential is reusable until it expires, so a revocation of
    /// `id` would be undone by the same token enrolling again at once. Refused (403) when any
    /// certificate of `id` was revoked at or after the credential was issued, less the clock
    /// skew the checks allow; a token the kubelet issues after the revocation enrolls. The check and the record are one
    /// transaction, so a revocation cannot slip in between.
    pub fn enroll_verified(
        &self,
        id: &SpiffeId,
        csr: &[u8],
        credential_issued_at: i64,
    ) -> Result<Issued, CaError> {
        self.check_member(id)?;
        let key = tether_certs::issue::parse_csr(csr)?;
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            let (record, issued) = self.sign_enrollment(keys, id, &key, now)?;
            // The checks accept an `iat` up to the clock skew ahead of this CA's clock, so a
            // token minted just before the revocation by a fast apiserver must not pass: it
            // counts as issued that much earlier.
            let issued_no_later = credential_issued_at - crate::k8s::LEEWAY_SECS as i64;
            if self
                .store()
                .record_unless_revoked_since(&record, issued_no_later)?
            {
                Ok(issued)
            } else {
                Err(CaError::Forbidden(
                    "a certificate of this identity was revoked after this token was issued; \
                     the kubelet's next token will enroll"
                        .into(),
                ))
            }
        })
    }

    /// Renewal: the caller's current certificate chain (from the mTLS handshake) must verify
    /// against the bundle and be unexpired; the new leaf names the *same* identity over the CSR's
    /// fresh key. Whether the presented certificate is unrevoked is decided in the transaction
    /// that records the new leaf ([`Store::record_renewal`]), so a revocation cannot slip in
    /// between the check and the issuance.
    pub fn renew(&self, peer_chain: &[CertificateDer<'_>], csr: &[u8]) -> Result<Issued, CaError> {
        let leaf = self.verify_chain(peer_chain)?;
        let key = tether_certs::issue::parse_csr(csr)?;
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            let (record, issued) = self.sign(
                keys,
                &leaf.id,
                &key,
                self.settings.default_ttl,
                now,
                IssueMethod::Renew,
            )?;
            match self.store().record_renewal(&leaf.serial, &record)? {
                RenewalGate::Recorded => Ok(issued),
                RenewalGate::Revoked => Err(revoked(&leaf.serial)),
                RenewalGate::Unknown => Err(not_ours(&leaf.serial)),
            }
        })
    }

    /// Issues a leaf for `id` with a key generated here, and writes `key.pem` (0600),
    /// `cert.pem`, `chain.pem` and `bundle.pem` to `out` (for services that take files).
    pub fn issue_to_dir(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        out: &Path,
    ) -> Result<Issued, CaError> {
        self.check_member(id)?;
        let key = tether_certs::keys::generate_key().map_err(CaError::sign)?;
        let now = OffsetDateTime::now_utc();
        self.with_current_keys(|keys| {
            let (record, issued) = self.sign(keys, id, &key, ttl, now, IssueMethod::Cli)?;
            create_private_dir(out)?;
            // Files first, then the record: a failed write leaves no certificate whose key is
            // lost.
            let key_pem = key.serialize_pem();
            for (name, text, mode) in [
                ("key.pem", key_pem.as_str(), SECRET_MODE),
                ("cert.pem", issued.certificate.as_str(), PUBLIC_MODE),
                ("chain.pem", issued.chain.as_str(), PUBLIC_MODE),
                ("bundle.pem", issued.bundle.as_str(), PUBLIC_MODE),
            ] {
                write_file(&out.join(name), text.as_bytes(), mode)?;
            }
            self.store().record(&record)?;
            Ok(issued)
        })
    }

    /// An enrollment's leaf: `id` over `key` for the default lifetime.
    fn sign_enrollment(
        &self,
        keys: &Keys,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        now: OffsetDateTime,
    ) -> Result<(NewCert, Issued), CaError> {
        let ttl = self.settings.default_ttl;
        self.sign(keys, id, key, ttl, now, IssueMethod::Enroll)
    }

    fn sign(
        &self,
        keys: &Keys,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
        method: IssueMethod,
    ) -> Result<(NewCert, Issued), CaError> {
        // X.509 times have whole seconds: issue from a whole second so the notAfter reported to
        // the caller (and recorded) is exactly the certificate's, not up to 1 s past it.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let leaf = keys
            .signer
            .issue_leaf(id, key, ttl, self.settings.max_ttl, now)?;
        let certificate = tether_certs::pem::encode("CERTIFICATE", &leaf.der);
        let not_after = rfc3339(leaf.not_after);
        let note = leaf.shortened_to_issuer.then(|| {
            format!("lifetime shortened to end with the issuing CA certificate at {not_after}")
        });
        let issued = Issued {
            spiffe_id: id.to_string(),
            serial: leaf.serial.to_string(),
            not_after,
            chain: format!("{certificate}{}", keys.trust.chain_tail),
            certificate,
            bundle: keys.trust.bundle_pem.clone(),
            note,
        };
        let record = NewCert {
            serial: leaf.serial,
            spiffe_id: id.to_string(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            issued_at: now,
            method: method.as_str(),
            der: leaf.der.to_vec(),
            generation: keys.generation,
        };
        Ok((record, issued))
    }
}

/// SHA-256 of a token, hex: what the database stores instead of the token.
fn token_hash(token: &str) -> String {
    tether_certs::bundle::fingerprint(token.as_bytes())
}

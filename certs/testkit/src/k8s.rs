//! Kubernetes service-account tokens in the exact shape a kube-apiserver issues, signed with a
//! throwaway key, and the JWKS document that publishes the keys (what `/openid/v1/jwks` serves).
//!
//! The shape follows the apiserver (`pkg/serviceaccount/claims.go`): a compact JWS whose header
//! is `{"alg":"RS256","kid":"…"}` (no `typ`), the key id being the base64url SHA-256 of the
//! public key's SubjectPublicKeyInfo; claims `aud` (an array), `exp`, `iat`, `nbf`, `iss`,
//! `jti`, `sub = system:serviceaccount:NS:SA` and the private `kubernetes.io` claim with the
//! namespace, the pod, the node and the service account (names and uids). Legacy secret-based
//! tokens (`iss: kubernetes/serviceaccount`, flat claims, no `exp`) are here too, so tests can
//! show they are refused.
//!
//! Signing is done here by hand with aws-lc-rs, so a test controls every byte of the header and
//! can build the hostile tokens (`alg: none`, a payload edited after signing) a verifier must
//! refuse; the verifier under test is the CA's, which uses `jsonwebtoken`. [`Apiserver`] serves
//! the JWKS over HTTPS, as `/openid/v1/jwks` does.

use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPublicKeyUncompressedBin};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

mod apiserver;

pub use apiserver::{Apiserver, JWKS_PATH};

/// The audience Tether's sidecars ask the kubelet for.
pub const AUDIENCE: &str = "tether-ca";

/// The issuer a test cluster's apiserver names (`--service-account-issuer`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// One signing key of the simulated apiserver, with its key id.
pub struct Signer {
    key: Key,
    kid: String,
}

impl Signer {
    /// A fresh RSA-2048 key (RS256), as a default cluster has.
    pub fn rsa() -> Self {
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("generating an RSA key");
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(key.public_key())
            .expect("RSA public key DER");
        let kid = key_id(spki.as_ref());
        Signer {
            key: Key::Rsa(key),
            kid,
        }
    }

    /// A fresh P-256 key (ES256), as a cluster with `--service-account-signing-key-file` of an
    /// EC key has.
    pub fn ec() -> Self {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("generating a P-256 key");
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(key.public_key())
            .expect("EC public key DER");
        let kid = key_id(spki.as_ref());
        Signer {
            key: Key::Ec(key),
            kid,
        }
    }

    /// Its key id (the `kid` of its tokens and of its JWK).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its `alg`: `RS256` or `ES256`.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
        }
    }

    /// Its public key as a JWK, as the apiserver publishes it (`use: sig`, `kty`, `alg`, `kid`).
    pub fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(k) => {
                let public = k.public_key();
                json!({
                    "use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256",
                    "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Key::Ec(k) => {
                let point: EcPublicKeyUncompressedBin =
                    k.public_key().as_be_bytes().expect("EC public point");
                // 0x04 ‖ X ‖ Y, 32 bytes each for P-256.
                let (x, y) = point.as_ref()[1..].split_at(32);
                json!({
                    "use": "sig", "kty": "EC", "kid": self.kid, "alg": "ES256", "crv": "P-256",
                    "x": B64.encode(x), "y": B64.encode(y),
                })
            }
        }
    }

    /// A compact JWS of `claims` under the apiserver's header `{"alg":…,"kid":…}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({"alg": self.alg(), "kid": self.kid}), claims)
    }

    /// A compact JWS of `claims` under `header` exactly as given, signed with this key.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", encode_json(header), encode_json(claims));
        let rng = SystemRandom::new();
        let signature = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA signing");
                sig
            }
            Key::Ec(k) => k
                .sign(&rng, input.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", B64.encode(signature))
    }
}

/// The JWKS document publishing `signers`' keys: `{"keys":[…]}`.
pub fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
    json!({ "keys": keys }).to_string()
}

/// The claims of a projected token for pod `api-…` running as service account `sa` in
/// `namespace`, issued by `issuer` for `audience`, issued at `iat` (Unix seconds) and valid for
/// `ttl_secs`, exactly as the apiserver fills them.
pub fn pod_claims(
    issuer: &str,
    audience: &str,
    namespace: &str,
    sa: &str,
    iat: i64,
    ttl_secs: i64,
) -> Value {
    json!({
        "aud": [audience],
        "exp": iat + ttl_secs,
        "iat": iat,
        "iss": issuer,
        "jti": "5b1c2e0e-7d4f-4c5e-9a53-0f2d6f0c9a11",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "6f7a9d5e-2b1c-4d3e-8f90-1a2b3c4d5e6f"},
            "pod": {"name": format!("{sa}-7d9c8b5f6-x2x9q"), "uid": "0b8f2c64-1f6e-4b8e-9a7d-3c2e1f0a9b8c"},
            "serviceaccount": {"name": sa, "uid": "d2f0a1b3-4c5d-6e7f-8091-a2b3c4d5e6f7"},
        },
        "nbf": iat,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
    })
}

/// The claims of a legacy secret-based token (before bound tokens): flat `kubernetes.io/…`
/// claims, `iss: kubernetes/serviceaccount`, no `aud`, no `exp`.
pub fn legacy_claims(namespace: &str, sa: &str) -> Value {
    json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": format!("{sa}-token-x7k2p"),
        "kubernetes.io/serviceaccount/service-account.name": sa,
        "kubernetes.io/serviceaccount/service-account.uid": "d2f0a1b3-4c5d-6e7f-8091-a2b3c4d5e6f7",
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
    })
}

/// An unsigned token (`alg: none`, empty signature) of `claims`.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        encode_json(&json!({"alg": "none", "typ": "JWT"})),
        encode_json(claims)
    )
}

/// `token` with its payload replaced by `edit` applied to it, the signature kept: a token
/// tampered with after signing.
pub fn tamper(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut parts = token.split('.');
    let (header, payload, signature) = (
        parts.next().expect("a header"),
        parts.next().expect("a payload"),
        parts.next().expect("a signature"),
    );
    let mut claims: Value =
        serde_json::from_slice(&B64.decode(payload).expect("base64url payload"))
            .expect("JSON claims");
    edit(&mut claims);
    format!("{header}.{}.{signature}", encode_json(&claims))
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn encode_json(v: &Value) -> String {
    B64.encode(v.to_string())
}

/// The apiserver's key id: base64url (unpadded) SHA-256 of the public key's DER
/// SubjectPublicKeyInfo.
fn key_id(spki_der: &[u8]) -> String {
    B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        spki_der,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_three_parts_and_the_apiserver_header() {
        for signer in [Signer::rsa(), Signer::ec()] {
            let t = signer.sign(&pod_claims(ISSUER, AUDIENCE, "payments", "api", now(), 600));
            let parts: Vec<&str> = t.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
            assert_eq!(header, json!({"alg": signer.alg(), "kid": signer.kid()}));
            assert_eq!(signer.kid().len(), 43, "base64url of 32 bytes");
            let jwk = signer.jwk();
            assert_eq!(jwk["kid"], signer.kid());
        }
    }

    #[test]
    fn tampering_keeps_the_signature_and_changes_the_payload() {
        let s = Signer::rsa();
        let t = s.sign(&pod_claims(ISSUER, AUDIENCE, "payments", "api", now(), 600));
        let bad = tamper(&t, |c| {
            c["kubernetes.io"]["namespace"] = json!("kube-system")
        });
        assert_eq!(t.rsplit('.').next(), bad.rsplit('.').next());
        assert_ne!(t, bad);
    }
}

//! The verifier against tokens shaped exactly as a kube-apiserver issues them
//! (`tether_testkit::k8s`), with the JWKS in a file: each refusal with its own message, both
//! algorithms, key rotation, a failed refresh, and the `--k8s-jwks` forms.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tether_testkit::k8s::{self, Signer, AUDIENCE, ISSUER};

use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("test.tether").unwrap()
}

fn options(jwks: &Path, allow: &[&str]) -> K8sOptions {
    K8sOptions {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::File(jwks.to_path_buf()),
        allow: AllowList::parse(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
    }
}

/// A JWKS file publishing `signers` in a fresh temp dir.
fn jwks_file(signers: &[&Signer]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("jwks.json");
    std::fs::write(&path, k8s::jwks(signers)).unwrap();
    (tmp, path)
}

fn claims(ns: &str, sa: &str) -> Value {
    k8s::pod_claims(ISSUER, AUDIENCE, ns, sa, k8s::now(), 3600)
}

/// `claims` for payments/api with `edit` applied.
fn edited(edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims("payments", "api");
    edit(&mut c);
    c
}

#[tokio::test]
async fn rs256_and_es256_tokens_enroll_their_service_account() {
    let (rsa, ec) = (Signer::rsa(), Signer::ec());
    let (_tmp, path) = jwks_file(&[&rsa, &ec]);
    let verifier = K8sVerifier::start(options(&path, &[])).await.unwrap();
    for signer in [&rsa, &ec] {
        let token = signer.sign(&claims("payments", "api"));
        let who = verifier.verify(&token, &td()).await;
        let who = who.unwrap_or_else(|e| panic!("{}: {e:?}", signer.alg()));
        assert_eq!(who.id.as_str(), "spiffe://test.tether/ns/payments/sa/api");
        assert!((who.issued_at - k8s::now()).abs() < 5);
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_own_reason() {
    let (rsa, ec, stranger) = (Signer::rsa(), Signer::ec(), Signer::rsa());
    let (_tmp, path) = jwks_file(&[&rsa, &ec]);
    let verifier = K8sVerifier::start(options(&path, &["payments/*"]))
        .await
        .unwrap();
    let now = k8s::now();
    let good = rsa.sign(&claims("payments", "api"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rsa.sign(&k8s::pod_claims(
                ISSUER,
                AUDIENCE,
                "payments",
                "api",
                now - 7200,
                3600,
            )),
            "has expired",
        ),
        (
            "nbf ahead",
            rsa.sign(&edited(|c| c["nbf"] = json!(now + 600))),
            "not valid yet",
        ),
        (
            "iat ahead",
            rsa.sign(&edited(|c| c["iat"] = json!(now + 600))),
            "issued in the future",
        ),
        (
            "no iat",
            rsa.sign(&edited(|c| drop(c.as_object_mut().unwrap().remove("iat")))),
            "no iat",
        ),
        (
            "no exp",
            rsa.sign(&edited(|c| drop(c.as_object_mut().unwrap().remove("exp")))),
            "no exp claim",
        ),
        (
            "no aud",
            rsa.sign(&edited(|c| drop(c.as_object_mut().unwrap().remove("aud")))),
            "no aud claim",
        ),
        (
            "audience",
            rsa.sign(&k8s::pod_claims(
                ISSUER, "vault", "payments", "api", now, 3600,
            )),
            "not for audience tether-ca",
        ),
        (
            "issuer",
            rsa.sign(&k8s::pod_claims(
                "https://other.example",
                AUDIENCE,
                "payments",
                "api",
                now,
                3600,
            )),
            "not issued by",
        ),
        (
            "legacy",
            rsa.sign(&k8s::legacy_claims("payments", "api")),
            "legacy secret-based",
        ),
        (
            "unknown kid",
            stranger.sign(&claims("payments", "api")),
            "unknown key id",
        ),
        (
            "tampered",
            k8s::tamper(&good, |c| {
                c["kubernetes.io"]["namespace"] = json!("kube-system")
            }),
            "signature does not verify",
        ),
        (
            "alg none",
            k8s::unsigned(&claims("payments", "api")),
            "alg none is not accepted",
        ),
        (
            "HS256",
            rsa.sign_with_header(
                &json!({"alg": "HS256", "kid": rsa.kid()}),
                &claims("payments", "api"),
            ),
            "alg HS256 is not accepted",
        ),
        (
            "no kid",
            rsa.sign_with_header(&json!({"alg": "RS256"}), &claims("payments", "api")),
            "no kid",
        ),
        (
            "alg/key mismatch",
            ec.sign_with_header(
                &json!({"alg": "RS256", "kid": ec.kid()}),
                &claims("payments", "api"),
            ),
            "says alg RS256 but key",
        ),
        ("garbage", "not-a-jwt".to_string(), "malformed"),
        (
            "kid not a string",
            rsa.sign_with_header(
                &json!({"alg": "RS256", "kid": 5}),
                &claims("payments", "api"),
            ),
            "malformed",
        ),
        (
            "no kubernetes.io",
            rsa.sign(&edited(|c| {
                drop(c.as_object_mut().unwrap().remove("kubernetes.io"))
            })),
            "no kubernetes.io namespace",
        ),
        (
            "sub",
            rsa.sign(&edited(|c| {
                c["sub"] = json!("system:serviceaccount:payments:admin")
            })),
            "sub is not system:serviceaccount:payments:api",
        ),
        (
            "bad name",
            rsa.sign(&k8s::pod_claims(
                ISSUER,
                AUDIENCE,
                "pay ments",
                "api",
                now,
                3600,
            )),
            "not a Kubernetes name",
        ),
        (
            "slash in the namespace",
            rsa.sign(&k8s::pod_claims(
                ISSUER,
                AUDIENCE,
                "payments/sa/admin/ns/x",
                "api",
                now,
                3600,
            )),
            "not a Kubernetes name",
        ),
        (
            "upper case",
            rsa.sign(&k8s::pod_claims(
                ISSUER, AUDIENCE, "payments", "Api", now, 3600,
            )),
            "not a Kubernetes name",
        ),
    ];
    for (what, token, needle) in cases {
        match verifier.verify(&token, &td()).await {
            Err(Refusal::Unauthorized(msg)) => {
                assert!(msg.contains(needle), "{what}: {msg}");
                assert!(
                    !msg.contains(&token),
                    "{what}: the message quotes the token"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let outside = rsa.sign(&claims("shop", "api"));
    match verifier.verify(&outside, &td()).await {
        Err(Refusal::NotAllowed(msg)) => assert!(msg.contains("shop/api"), "{msg}"),
        other => panic!("outside the allow-list: {other:?}"),
    }
    assert!(verifier.verify(&good, &td()).await.is_ok());
}

#[tokio::test]
async fn a_new_key_in_the_file_is_picked_up_and_a_broken_file_keeps_the_last_good_set() {
    let (old, new) = (Signer::rsa(), Signer::ec());
    let (_tmp, path) = jwks_file(&[&old]);
    let verifier = K8sVerifier::start(options(&path, &[])).await.unwrap();
    let by_new = new.sign(&claims("payments", "api"));
    let started = std::time::Instant::now();
    let unknown = verifier.verify(&by_new, &td()).await.unwrap_err();
    assert!(
        matches!(&unknown, Refusal::Unauthorized(m) if m.contains("unknown key id")),
        "{unknown:?}"
    );

    // Published now, but the refresh that refusal triggered (or the load at start) was less
    // than a second ago: a flood of unknown key ids costs at most one read a second.
    std::fs::write(&path, k8s::jwks(&[&old, &new])).unwrap();
    let refused = verifier.verify(&by_new, &td()).await.is_err();
    if started.elapsed() < jwks::MIN_REFRESH_GAP {
        assert!(
            refused,
            "refreshed again within {:?}",
            jwks::MIN_REFRESH_GAP
        );
    }
    let picked_up = tether_testkit::wait::eventually(Duration::from_secs(10), || async {
        verifier.verify(&by_new, &td()).await.is_ok()
    })
    .await;
    assert!(picked_up, "the new key is read on a later refresh");

    std::fs::write(&path, "{not json").unwrap();
    assert!(verifier.jwks.refresh().await.is_err());
    std::fs::write(&path, r#"{"keys":[]}"#).unwrap();
    let err = verifier.jwks.refresh().await.unwrap_err();
    assert!(err.contains("no RS256 or ES256 key"), "{err}");
    let by_old = old.sign(&claims("payments", "api"));
    assert!(
        verifier.verify(&by_old, &td()).await.is_ok(),
        "the last good set stays"
    );
}

#[tokio::test]
async fn a_jwks_file_that_does_not_load_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("absent.json");
    let err = K8sVerifier::start(options(&missing, &[]))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("absent.json"), "{err}");
    let empty = tmp.path().join("empty.json");
    std::fs::write(
        &empty,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
    )
    .unwrap();
    let err = K8sVerifier::start(options(&empty, &[]))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no RS256 or ES256 key"), "{err}");
}

#[test]
fn jwks_sources_are_a_file_or_an_https_url_with_roots() {
    let ca = Some(PathBuf::from("/ca.crt"));
    assert_eq!(
        JwksSource::parse("/etc/jwks.json", None, None),
        Ok(JwksSource::File("/etc/jwks.json".into()))
    );
    let url = JwksSource::parse(
        "https://kubernetes.default.svc/openid/v1/jwks",
        ca.clone(),
        None,
    );
    assert!(matches!(url, Ok(JwksSource::Url { .. })), "{url:?}");
    for (value, ca, needle) in [
        (
            "http://kubernetes.default.svc/openid/v1/jwks",
            ca.clone(),
            "only https://",
        ),
        ("ftp://host/jwks", ca.clone(), "only https://"),
        (
            "https://kubernetes.default.svc/openid/v1/jwks",
            None,
            "needs --k8s-jwks-ca",
        ),
        ("https://user:pw@host/jwks", ca.clone(), "no user info"),
        ("/etc/jwks.json", ca.clone(), "only go with an https://"),
    ] {
        let err = JwksSource::parse(value, ca, None).unwrap_err();
        assert!(err.contains(needle), "{value}: {err}");
    }
}

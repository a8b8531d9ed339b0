//! Enrollment with Kubernetes service-account tokens against the real `tether-ca serve` (its
//! `--k8s-*` flags, its log captured): tokens minted exactly as a kube-apiserver mints them
//! (`tether_testkit::k8s`), the JWKS from a file and from a local HTTPS server that demands a
//! bearer token, real TLS clients. Every refusal is checked with its status and reason, and no
//! token ever appears in the CA's log.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use common::*;
use tether_testkit::k8s::{self, Apiserver, Signer, AUDIENCE, ISSUER};

/// The identity `payments/api` enrolls as.
const PAYMENTS_API: &str = "spiffe://test.tether/ns/payments/sa/api";

fn claims(ns: &str, sa: &str) -> Value {
    k8s::pod_claims(ISSUER, AUDIENCE, ns, sa, k8s::now(), 3600)
}

/// A CA state dir and a started `serve` with `flags`, its log in `serve.log`.
struct Ca {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    client: Client,
    _child: tokio::process::Child,
}

impl Ca {
    async fn start(tmp: tempfile::TempDir, flags: &[String]) -> Self {
        let dir = init_state(tmp.path());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (child, client) = procs::serve(&dir, &tmp.path().join("serve.log"), &flags).await;
        Ca {
            tmp,
            dir,
            client,
            _child: child,
        }
    }

    fn log(&self) -> String {
        read(self.tmp.path().join("serve.log"))
    }

    /// `POST /v1/enroll {"k8s_token": token, "csr": …}`.
    async fn enroll(&self, token: &str) -> Resp {
        self.client
            .post_json("/v1/enroll", &json!({"k8s_token": token, "csr": csr()}))
            .await
    }

    /// Fails unless no part of any of `tokens` (payload or signature) is in the CA's log.
    fn assert_log_hides(&self, tokens: &[String]) {
        let log = self.log();
        for token in tokens {
            for part in token.split('.').skip(1).filter(|p| p.len() > 16) {
                assert!(!log.contains(part), "the CA logged a token: {log}");
            }
        }
    }
}

fn csr() -> String {
    let key = tether_certs::keys::generate_key().expect("key");
    tether_certs::keys::generate_csr(&key, &id("/csr")).expect("csr")
}

/// A temp dir holding `jwks.json`, the key set of `signers`; with that file's path.
fn jwks_dir(signers: &[&Signer]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let jwks = tmp.path().join("jwks.json");
    std::fs::write(&jwks, k8s::jwks(signers)).unwrap();
    (tmp, jwks)
}

/// `--k8s-issuer ISSUER --k8s-jwks PATH` and `--k8s-allow` for each of `allow`.
fn file_flags(jwks: &Path, allow: &[&str]) -> Vec<String> {
    let mut flags = vec![
        "--k8s-issuer".to_string(),
        ISSUER.into(),
        "--k8s-jwks".into(),
        jwks.display().to_string(),
    ];
    for a in allow {
        flags.extend(["--k8s-allow".to_string(), a.to_string()]);
    }
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_token_enrolls_its_service_account_and_every_bad_token_is_refused() {
    let (rsa, ec, stranger) = (Signer::rsa(), Signer::ec(), Signer::rsa());
    let (tmp, jwks) = jwks_dir(&[&rsa, &ec]);
    let ca = Ca::start(tmp, &file_flags(&jwks, &["payments/*", "*/api"])).await;
    let mut used = Vec::new();

    for signer in [&rsa, &ec] {
        let token = signer.sign(&claims("payments", "api"));
        let r = ca.enroll(&token).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", signer.alg(), r.text());
        assert_eq!(r.json()["spiffe_id"], PAYMENTS_API);
        let cert = r.json()["certificate"].as_str().unwrap().to_string();
        assert_eq!(cert_facts(&cert).uris, vec![PAYMENTS_API.to_string()]);
        used.push(token);
    }

    let now = k8s::now();
    let good = rsa.sign(&claims("payments", "api"));
    let refused = [
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
            "audience",
            rsa.sign(&k8s::pod_claims(
                ISSUER, "vault", "payments", "api", now, 3600,
            )),
            "not for audience tether-ca",
        ),
        (
            "issuer",
            rsa.sign(&k8s::pod_claims(
                "https://evil.example",
                AUDIENCE,
                "payments",
                "api",
                now,
                3600,
            )),
            "not issued by",
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
            "legacy",
            rsa.sign(&k8s::legacy_claims("payments", "api")),
            "legacy secret-based",
        ),
    ];
    for (what, token, needle) in refused {
        let r = ca.enroll(&token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert!(r.error().contains(needle), "{what}: {}", r.error());
        used.push(token);
    }

    let outside = rsa.sign(&claims("kube-system", "default"));
    ca.enroll(&outside)
        .await
        .assert_error(StatusCode::FORBIDDEN, "kube-system/default may not enroll");
    used.push(outside);
    let metrics = ca.client.get("/metrics").await.text();
    let not_allowed = [("endpoint", "enroll"), ("reason", "not_allowed")];
    assert_eq!(
        metric(&metrics, "tether_ca_request_failures_total", &not_allowed),
        Some(1.0),
        "{metrics}"
    );

    let both = json!({"token": "tether-x", "k8s_token": good, "csr": csr()});
    let none = json!({"csr": csr()});
    for (body, needle) in [(both, "not both"), (none, "needs a token or a k8s_token")] {
        let r = ca.client.post_json("/v1/enroll", &body).await;
        r.assert_error(StatusCode::BAD_REQUEST, needle);
    }
    used.push(good);

    let log = ca.log();
    assert!(
        log.contains("kube-system/default"),
        "the refusal names the account: {log}"
    );
    ca.assert_log_hides(&used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_k8s_settings_also_come_from_the_environment() {
    let signer = Signer::rsa();
    let (tmp, jwks) = jwks_dir(&[&signer]);
    let dir = init_state(tmp.path());
    let env = [
        ("TETHER_CA_K8S_ISSUER", ISSUER),
        ("TETHER_CA_K8S_JWKS", jwks.to_str().unwrap()),
        ("TETHER_CA_K8S_AUDIENCE", "mesh-ca"),
        ("TETHER_CA_K8S_ALLOW", "payments/*,ops/web"),
    ];
    let log = tmp.path().join("serve.log");
    let (_child, client) = procs::serve_with_env(&dir, &log, &[], &env).await;
    let enroll = |ns: &str, sa: &str, audience: &str| {
        let claims = k8s::pod_claims(ISSUER, audience, ns, sa, k8s::now(), 3600);
        let body = json!({"k8s_token": signer.sign(&claims), "csr": csr()});
        let client = &client;
        async move { client.post_json("/v1/enroll", &body).await.status }
    };
    // Both entries of the comma-separated allow-list, and the audience, came from the env.
    assert_eq!(enroll("payments", "api", "mesh-ca").await, StatusCode::OK);
    assert_eq!(enroll("ops", "web", "mesh-ca").await, StatusCode::OK);
    assert_eq!(enroll("ops", "db", "mesh-ca").await, StatusCode::FORBIDDEN);
    let default_audience = enroll("payments", "api", AUDIENCE).await;
    assert_eq!(default_audience, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_ca_without_k8s_issuer_refuses_service_account_tokens() {
    let ca = TestCa::start().await;
    let token = Signer::rsa().sign(&claims("payments", "api"));
    let r = ca
        .client()
        .post_json("/v1/enroll", &json!({"k8s_token": token, "csr": csr()}))
        .await;
    r.assert_error(
        StatusCode::UNAUTHORIZED,
        "this CA does not accept Kubernetes service-account tokens",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_enrolls_again_only_with_a_token_issued_after_the_revocation() {
    let rsa = Signer::rsa();
    let (tmp, jwks) = jwks_dir(&[&rsa]);
    let ca = Ca::start(tmp, &file_flags(&jwks, &[])).await;
    let before = k8s::pod_claims(ISSUER, AUDIENCE, "payments", "api", k8s::now() - 10, 3600);
    let token = rsa.sign(&before);
    let r = ca.enroll(&token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let out = ca_cli_async(&ca.dir, &["revoke", "--id", PAYMENTS_API]).await;
    assert_ok(&out, "tether-ca revoke --id");
    let revoked = k8s::now();
    ca.enroll(&token).await.assert_error(
        StatusCode::FORBIDDEN,
        "revoked after this token was issued; the kubelet's next token will enroll",
    );

    // A token a fast apiserver minted within the clock-skew allowance (30 s) of the revocation
    // still counts as issued before it.
    let skewed = k8s::pod_claims(ISSUER, AUDIENCE, "payments", "api", revoked + 25, 3600);
    ca.enroll(&rsa.sign(&skewed))
        .await
        .assert_error(StatusCode::FORBIDDEN, "revoked after this token was issued");
    // The kubelet's next token, issued more than the allowance after the revocation: minted
    // as far ahead as the CA accepts, a second after the revocation (so no long sleep).
    assert!(eventually(Duration::from_secs(5), || async { k8s::now() > revoked }).await);
    let after = k8s::pod_claims(ISSUER, AUDIENCE, "payments", "api", k8s::now() + 30, 3600);
    let next = rsa.sign(&after);
    let r = ca.enroll(&next).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["spiffe_id"], PAYMENTS_API);
    ca.assert_log_hides(&[token, next]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_url_is_fetched_with_the_bearer_token_and_new_keys_need_no_restart() {
    let (first, second, third) = (Signer::rsa(), Signer::ec(), Signer::rsa());
    let apiserver = Apiserver::start().await;
    apiserver.require_bearer("reader-token-1");
    let tmp = tempfile::tempdir().unwrap();
    let (roots, token_file) = (apiserver.write_root(tmp.path()), tmp.path().join("token"));
    std::fs::write(&token_file, "reader-token-1\n").unwrap();
    let flags: Vec<String> = [
        "--k8s-issuer",
        ISSUER,
        "--k8s-jwks",
        &apiserver.url(),
        "--k8s-jwks-ca",
        roots.to_str().unwrap(),
        "--k8s-jwks-token-file",
        token_file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The apiserver is not serving keys yet: the CA starts all the same and answers 503.
    let ca = Ca::start(tmp, &flags).await;
    let by_first = first.sign(&claims("payments", "api"));
    ca.enroll(&by_first)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "JWKS has not loaded yet");

    apiserver.publish(Some(k8s::jwks(&[&first])));
    let enrolled = |token: String| {
        let ca = &ca;
        move || {
            let token = token.clone();
            async move { ca.enroll(&token).await.status == StatusCode::OK }
        }
    };
    assert!(
        eventually(Duration::from_secs(20), enrolled(by_first.clone())).await,
        "enrolls once the JWKS is served: {}",
        ca.log()
    );

    // A key the CA has not seen: refused until published, then accepted without a restart.
    let by_second = second.sign(&claims("payments", "api"));
    ca.enroll(&by_second)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unknown key id");
    apiserver.publish(Some(k8s::jwks(&[&first, &second])));
    assert!(eventually(Duration::from_secs(20), enrolled(by_second.clone())).await);

    // The bearer token file is re-read at every fetch (the kubelet rotates it).
    std::fs::write(ca.tmp.path().join("token"), "reader-token-2").unwrap();
    apiserver.require_bearer("reader-token-2");
    apiserver.publish(Some(k8s::jwks(&[&first, &second, &third])));
    let by_third = third.sign(&claims("payments", "api"));
    assert!(eventually(Duration::from_secs(20), enrolled(by_third.clone())).await);

    let seen = apiserver.authorizations();
    let sent = |t: &str| Some(format!("Bearer {t}"));
    assert!(
        seen.iter()
            .all(|a| *a == sent("reader-token-1") || *a == sent("reader-token-2")),
        "every fetch carried a bearer token: {seen:?}"
    );
    assert!(seen.contains(&sent("reader-token-2")), "{seen:?}");
    let log = ca.log();
    assert!(
        !log.contains("reader-token-"),
        "the CA logged its bearer token: {log}"
    );
    ca.assert_log_hides(&[by_first, by_second, by_third]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_k8s_flags_that_cannot_work() {
    let (tmp, jwks) = jwks_dir(&[&Signer::ec()]);
    let dir = init_state(tmp.path());
    let jwks = jwks.to_str().unwrap();
    let missing = tmp.path().join("absent.json");
    let missing = missing.to_str().unwrap();
    let url = "https://kubernetes.default.svc/openid/v1/jwks";
    let cases: [(&[&str], &str); 8] = [
        (
            &[
                "--k8s-issuer",
                "kubernetes/serviceaccount",
                "--k8s-jwks",
                jwks,
            ],
            "legacy secret-based tokens",
        ),
        (&["--k8s-issuer", ISSUER], "--k8s-issuer needs --k8s-jwks"),
        (&["--k8s-jwks", jwks], "--k8s-jwks needs --k8s-issuer"),
        (
            &["--k8s-audience", "tether-ca"],
            "--k8s-audience needs --k8s-issuer",
        ),
        (
            &[
                "--k8s-issuer",
                ISSUER,
                "--k8s-jwks",
                "http://kubernetes.default.svc/openid/v1/jwks",
            ],
            "only https://",
        ),
        (
            &["--k8s-issuer", ISSUER, "--k8s-jwks", url],
            "needs --k8s-jwks-ca",
        ),
        (
            &["--k8s-issuer", ISSUER, "--k8s-jwks", missing],
            "absent.json",
        ),
        (
            &[
                "--k8s-issuer",
                ISSUER,
                "--k8s-jwks",
                jwks,
                "--k8s-allow",
                "payments",
            ],
            "--k8s-allow \"payments\"",
        ),
    ];
    for (flags, needle) in cases {
        let mut cmd = tokio::process::Command::from(bin());
        cmd.arg("--state-dir")
            .arg(&dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{flags:?}: serve started instead of refusing"))
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{flags:?}: {}", stderr(&out));
    }
}

//! The CA's HTTPS API, driven end to end over real TLS against a real SQLite state dir: enrollment
//! issues a leaf for the *token's* identity whatever the CSR asks for, tokens are single-use,
//! short-lived and only consumed by a successful enrollment, bad input gets the right 4xx with a
//! message; renewal over mTLS keeps the identity and takes a fresh key, and refuses a missing,
//! revoked, foreign or expired certificate; only the admin credential may revoke; the Prometheus
//! metrics count what happened.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use common::*;
use tether_certs::keys::{generate_csr, generate_key};

fn csr_for(path: &str) -> (rcgen::KeyPair, String) {
    let key = generate_key().expect("key");
    let csr = generate_csr(&key, &id(path)).expect("csr");
    (key, csr)
}

// ---------------------------------------------------------------------------------------------
// Enrollment
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn enroll_issues_a_leaf_for_the_tokens_identity_not_the_csrs() {
    let ca = TestCa::start().await;
    let wanted = id("/ns/default/sa/web");
    let token = ca.token(&wanted);
    // The CSR asks for the admin identity; the token says /ns/default/sa/web.
    let (key, csr) = csr_for("/tether/admin");

    let resp = ca.client().enroll(&token, &csr).await;

    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = resp.json();
    assert_eq!(body["spiffe_id"], wanted.as_str());
    let certificate = body["certificate"].as_str().expect("certificate");
    let facts = cert_facts(certificate);
    assert_eq!(
        facts.uris,
        vec![wanted.to_string()],
        "exactly the token's ID"
    );
    assert!(facts.dns.is_empty() && facts.other_sans == 0);
    assert_eq!(facts.basic_constraints_ca, Some(false));
    assert!(!facts.key_cert_sign);
    assert_eq!(
        facts.public_key,
        key.public_key_raw(),
        "signed over the CSR's key"
    );
    assert_eq!(body["serial"], facts.serial.to_string());
    // Default lifetime 1 h.
    let lifetime = facts.not_after - now_unix();
    assert!((3500..=3660).contains(&lifetime), "lifetime {lifetime}s");
    // `not_after` is the certificate's notAfter exactly (sidecars schedule renewal from it).
    let reported = time::OffsetDateTime::parse(
        body["not_after"].as_str().expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("not_after is RFC 3339");
    assert_eq!(
        reported,
        time::OffsetDateTime::from_unix_timestamp(facts.not_after).unwrap(),
        "reported not_after {} is not the certificate's",
        body["not_after"]
    );

    // chain = leaf + intermediate; bundle = the published roots.
    let chain = body["chain"].as_str().expect("chain");
    assert_eq!(
        chain,
        format!(
            "{certificate}{}",
            read(ca.dir.join("intermediate/cert.pem"))
        )
    );
    assert_eq!(body["bundle"], read(ca.dir.join("bundle.pem")));

    // The chain verifies against the bundle, satisfies a strict X509-SVID parser, and the CA
    // recorded the certificate.
    let chain_der = tether_certs::pem::certificates(chain.as_bytes()).unwrap();
    let info = ca
        .authority
        .authenticate(&chain_der)
        .expect("valid, recorded SVID");
    assert_eq!(info.id, wanted);
    let concatenated: Vec<u8> = chain_der.iter().flat_map(|c| c.to_vec()).collect();
    let svid = spiffe::X509Svid::parse_from_der(&concatenated, &key.serialize_der())
        .expect("a SPIFFE library accepts the SVID with its key");
    assert_eq!(svid.spiffe_id().to_string(), wanted.as_str());
    let listed = ca.issued();
    let rec = listed
        .iter()
        .find(|r| r.serial == facts.serial.to_string())
        .expect("recorded");
    assert_eq!(
        (rec.method.as_str(), rec.spiffe_id.as_str()),
        ("enroll", wanted.as_str())
    );
    assert_eq!(
        (rec.not_before, rec.not_after),
        (facts.not_before, facts.not_after)
    );
}

#[tokio::test]
async fn enroll_ignores_ca_true_key_usages_and_extra_sans_in_the_csr() {
    let ca = TestCa::start().await;
    let wanted = id("/ns/default/sa/api");
    let token = ca.token(&wanted);
    let key = generate_key().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![
        rcgen::SanType::URI(
            "spiffe://test.tether/tether/admin"
                .to_string()
                .try_into()
                .unwrap(),
        ),
        rcgen::SanType::DnsName("evil.example".to_string().try_into().unwrap()),
        rcgen::SanType::IpAddress("10.0.0.1".parse().unwrap()),
    ];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let resp = ca.client().enroll(&token, &csr).await;

    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let facts = cert_facts(resp.json()["certificate"].as_str().unwrap());
    assert_eq!(facts.uris, vec![wanted.to_string()]);
    assert!(
        facts.dns.is_empty(),
        "DNS SAN copied from the CSR: {:?}",
        facts.dns
    );
    assert_eq!(facts.other_sans, 0, "IP SAN copied from the CSR");
    assert_eq!(
        facts.basic_constraints_ca,
        Some(false),
        "CA:TRUE copied from the CSR"
    );
    assert!(!facts.key_cert_sign, "keyCertSign copied from the CSR");
}

#[tokio::test]
async fn an_enrollment_token_works_once() {
    let ca = TestCa::start().await;
    let token = ca.token(&id("/ns/default/sa/once"));
    let (_k1, csr1) = csr_for("/ns/default/sa/once");
    let (_k2, csr2) = csr_for("/ns/default/sa/once");
    let client = ca.client();

    let first = client.enroll(&token, &csr1).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let again = client.enroll(&token, &csr2).await;
    again.assert_error(StatusCode::UNAUTHORIZED, "already used");
    // Exactly one certificate came out of it.
    let enrolled = ca.count_issued(|r| r.method == "enroll");
    assert_eq!(enrolled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_with_one_token_issue_exactly_one_certificate() {
    let ca = TestCa::start().await;
    let who = id("/ns/default/sa/race");
    let token = ca.token(&who);
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let client = ca.client();
            let token = token.clone();
            let (_k, csr) = csr_for("/ns/default/sa/race");
            tokio::spawn(async move { client.enroll(&token, &csr).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for a in attempts {
        statuses.push(a.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 1, "{statuses:?}");
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED));
    let issued = ca.count_issued(|r| r.spiffe_id == who.as_str());
    assert_eq!(issued, 1);
}

#[tokio::test]
async fn unknown_and_expired_tokens_are_refused() {
    let ca = TestCa::start().await;
    let (_k, csr) = csr_for("/ns/default/sa/late");

    let unknown = ca.client().enroll("tether-not-a-token", &csr).await;
    unknown.assert_error(StatusCode::UNAUTHORIZED, "unknown");

    let token = ca
        .authority
        .create_token(&id("/ns/default/sa/late"), Duration::from_secs(1))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = ca.client().enroll(&token, &csr).await;
    expired.assert_error(StatusCode::UNAUTHORIZED, "expired");
    assert!(
        ca.issued().iter().all(|r| r.method != "enroll"),
        "nothing was issued"
    );
}

#[tokio::test]
async fn bad_csrs_are_400_with_a_message_and_do_not_consume_the_token() {
    let ca = TestCa::start().await;
    let wanted = id("/ns/default/sa/retry");
    let token = ca.token(&wanted);
    let client = ca.client();
    let enroll = |csr: String| {
        let client = client.clone();
        let token = token.clone();
        async move { client.enroll(&token, &csr).await }
    };

    // Not a CSR at all.
    let r = enroll("this is not a CSR".into()).await;
    r.assert_error(StatusCode::BAD_REQUEST, "malformed CSR");

    // A PEM block that is a certificate, not a CSR.
    let r = enroll(read(ca.dir.join("bundle.pem"))).await;
    r.assert_error(StatusCode::BAD_REQUEST, "CSR");

    // A well-formed CSR whose signature was tampered with.
    let key = generate_key().unwrap();
    let good = generate_csr(&key, &wanted).unwrap();
    let mut der = tether_certs::pem::block(good.as_bytes(), "CERTIFICATE REQUEST").unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let r = enroll(tether_certs::pem::encode("CERTIFICATE REQUEST", &der)).await;
    r.assert_error(StatusCode::BAD_REQUEST, "signature");

    // A valid CSR for a key type the CA does not issue for.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let r = enroll(generate_csr(&p384, &wanted).unwrap()).await;
    r.assert_error(StatusCode::BAD_REQUEST, "P-256");

    // None of that used the token up.
    let r = enroll(good).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["spiffe_id"], wanted.as_str());
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let ca = TestCa::start().await;
    let token = ca.token(&id("/ns/default/sa/json"));
    let (_k, csr) = csr_for("/ns/default/sa/json");
    let client = ca.client();

    let unknown_field = client
        .post_json(
            "/v1/enroll",
            &json!({"token": token, "csr": csr, "spiffe_id": "spiffe://test.tether/tether/admin"}),
        )
        .await;
    assert_eq!(unknown_field.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown_field.error().contains("spiffe_id"),
        "names the unknown field: {}",
        unknown_field.error()
    );

    let invalid = client.post_bytes("/v1/enroll", "{\"token\": ").await;
    invalid.assert_error(StatusCode::BAD_REQUEST, "JSON");

    let missing = client
        .post_json("/v1/enroll", &json!({"token": token}))
        .await;
    missing.assert_error(StatusCode::BAD_REQUEST, "csr");

    // The token survived all three.
    let ok = client.enroll(&token, &csr).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_whether_sized_or_chunked() {
    let ca = TestCa::start().await;
    let client = ca.client();
    let limit = tether_ca::api::MAX_BODY;
    assert_eq!(limit, 64 * 1024);

    // With Content-Length.
    let big = format!("{{\"token\":\"t\",\"csr\":\"{}\"}}", "A".repeat(limit));
    let r = client.post_bytes("/v1/enroll", big.clone()).await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "65536");

    // Chunked, so the size is only known while reading.
    let mut raw = String::from(
        "POST /v1/enroll HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for chunk in big.as_bytes().chunks(8192) {
        raw.push_str(&format!("{:x}\r\n", chunk.len()));
        raw.push_str(std::str::from_utf8(chunk).unwrap());
        raw.push_str("\r\n");
    }
    raw.push_str("0\r\n\r\n");
    let answer = client.raw_http1(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Exactly at the limit is read and judged on its content, not refused for size.
    let pad = limit - "{\"token\":\"t\",\"csr\":\"\"}".len();
    let at_limit = format!("{{\"token\":\"t\",\"csr\":\"{}\"}}", "A".repeat(pad));
    assert_eq!(at_limit.len(), limit);
    let r = client.post_bytes("/v1/enroll", at_limit).await;
    assert!(
        r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
        "{}",
        r.text()
    );
}

/// A raw HTTP/1.1 `POST path` whose `size`-byte body is sent whole, sized or chunked.
fn raw_post(path: &str, size: usize, chunked: bool) -> Vec<u8> {
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {size}")
    };
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         {framing}\r\n\r\n"
    )
    .into_bytes();
    if !chunked {
        raw.resize(raw.len() + size, b'A');
        return raw;
    }
    let chunk = 64 * 1024;
    for _ in 0..size / chunk {
        raw.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
        raw.resize(raw.len() + chunk, b'A');
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

#[tokio::test]
async fn an_answer_that_comes_before_the_body_arrives_though_the_client_sends_it_all() {
    let ca = TestCa::start().await;
    let client = ca.client();
    const MIB: usize = 1024 * 1024;
    // A client that writes its whole request before reading: the CA answers at once, and must
    // keep reading what is sent after that, or the client's write (or its read of the answer)
    // fails on the connection's reset.
    for (path, size, chunked, status) in [
        ("/v1/enroll", 10 * MIB, false, "413"),
        ("/v1/enroll", 10 * MIB, true, "413"),
        ("/v1/renew", MIB, false, "401"),
        ("/v1/nothing-here", MIB, false, "404"),
    ] {
        let answer = client.raw_http1(&raw_post(path, size, chunked)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path} {size} chunked={chunked}: {answer:?}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "the answer says the connection ends: {answer:?}"
        );
    }
    // The server is still fine afterwards.
    assert_eq!(client.get("/v1/bundle").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_always_reads_the_413_of_a_body_over_the_limit() {
    if !have("curl") {
        return;
    }
    let ca = TestCa::start().await;
    let url = format!("https://localhost:{}/v1/enroll", ca.addr.port());
    let bundle = ca.dir.join("bundle.pem");
    let mut codes = std::collections::BTreeMap::<String, Vec<String>>::new();
    for mib in [1, 10] {
        let file = ca.tmp.path().join(format!("{mib}m.json"));
        std::fs::write(&file, vec![b'A'; mib * 1024 * 1024]).unwrap();
        for http in ["--http1.1", "--http2"] {
            for run in 0..20 {
                let mut curl = tokio::process::Command::new("curl");
                curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", http])
                    .arg("--cacert")
                    .arg(&bundle)
                    .args(["-H", "content-type: application/json", "--data-binary"])
                    .arg(format!("@{}", file.display()))
                    .arg(&url);
                if run % 2 == 1 {
                    // Without `Expect: 100-continue` curl sends the whole body at once.
                    curl.args(["-H", "Expect:"]);
                }
                let out = curl.output().await.expect("run curl");
                codes
                    .entry(format!("{http} {mib} MiB"))
                    .or_default()
                    .push(String::from_utf8_lossy(&out.stdout).into_owned());
            }
        }
    }
    for (case, got) in &codes {
        assert!(got.iter().all(|c| c == "413"), "{case}: {got:?}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let ca = TestCa::start().await;
    let client = ca.client();

    let r = client.get("/v1/nothing-here").await;
    r.assert_error(StatusCode::NOT_FOUND, "/v1/nothing-here");
    assert_eq!(client.get("/").await.status, StatusCode::NOT_FOUND);

    for (method, path) in [
        (Method::GET, "/v1/enroll"),
        (Method::GET, "/v1/renew"),
        (Method::GET, "/v1/revoke"),
        (Method::POST, "/v1/crl"),
        (Method::PUT, "/v1/bundle"),
        (Method::DELETE, "/metrics"),
    ] {
        let r = client
            .send(request(method.clone(), path, Bytes::new()))
            .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(r.error().contains("takes"), "{}", r.error());
        // RFC 9110 15.5.6: a 405 says what is allowed.
        let allowed = if path.starts_with("/v1/re") || path == "/v1/enroll" {
            "POST"
        } else {
            "GET"
        };
        assert_eq!(
            r.header("allow").as_deref(),
            Some(allowed),
            "{method} {path}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Renewal
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn renew_keeps_the_identity_with_a_fresh_key_and_serial() {
    let ca = TestCa::start().await;
    let web = id("/ns/default/sa/web");
    let first = ca.enroll(&web).await;

    // The renewal CSR asks for another identity; the CA must keep the caller's.
    let (new_key, csr) = csr_for("/tether/admin");
    let resp = ca.client_as(&first).renew(&csr).await;

    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let second = Enrolled::from_response(&resp.json(), new_key);
    assert_eq!(second.id, web.as_str());
    assert_ne!(second.serial, first.serial, "a new serial");
    let facts = cert_facts(&second.certificate);
    assert_eq!(facts.uris, vec![web.to_string()]);
    assert_eq!(facts.public_key, second.key.public_key_raw());
    assert_ne!(facts.public_key, first.key.public_key_raw(), "a fresh key");

    // The renewed certificate is itself good for the next renewal.
    let (_k3, csr3) = csr_for("/ns/default/sa/web");
    let third = ca.client_as(&second).renew(&csr3).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.text());
    assert_eq!(third.json()["spiffe_id"], web.as_str());

    let renewed = ca.count_issued(|r| r.method == "renew" && r.spiffe_id == web.as_str());
    assert_eq!(renewed, 2);
}

#[tokio::test]
async fn renew_without_a_client_certificate_is_401() {
    let ca = TestCa::start().await;
    let (_k, csr) = csr_for("/ns/default/sa/web");
    let r = ca.client().renew(&csr).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "certificate");
}

#[tokio::test]
async fn renew_with_a_revoked_certificate_is_403() {
    let ca = TestCa::start().await;
    let cred = ca.enroll(&id("/ns/default/sa/gone")).await;
    // Accepted once first, so the CA's verifier remembers the chain: what is revoked is still
    // the store's to say, on every call.
    let (_k, csr) = csr_for("/ns/default/sa/gone");
    let before = ca.client_as(&cred).renew(&csr).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text());
    let revoked = ca.admin().revoke(&json!({"serial": cred.serial})).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());

    let r = ca.client_as(&cred).renew(&csr).await;
    r.assert_error(StatusCode::FORBIDDEN, "revoked");
}

#[tokio::test]
async fn renew_with_a_certificate_from_another_ca_is_403() {
    let ca = TestCa::start().await;
    // Another CA for the *same* trust domain name: only the chain tells them apart.
    let other_tmp = tempfile::tempdir().unwrap();
    let other_dir = init_state(other_tmp.path());
    let other = tether_ca::Authority::open(&other_dir).unwrap();
    let out = other_tmp.path().join("svc");
    other
        .issue_to_dir(&id("/ns/default/sa/web"), HOUR, &out)
        .unwrap();

    let (_k, csr) = csr_for("/ns/default/sa/web");
    let r = ca.client_from_dir(&out).renew(&csr).await;
    r.assert_error(StatusCode::FORBIDDEN, "trusted root");
    assert!(ca.issued().iter().all(|r| r.method != "renew"));

    // The foreign CA's admin credential may not revoke here either.
    let admin = ca
        .client_with(
            &read(other_dir.join("admin/chain.pem")),
            &read(other_dir.join("admin/key.pem")),
        )
        .revoke(&json!({"serial": "01"}))
        .await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN, "{}", admin.text());
}

#[tokio::test]
async fn renew_with_an_expired_certificate_is_403() {
    let ca = TestCa::start().await;
    let web = id("/ns/default/sa/web");
    // Issued by the real intermediate two hours ago for one hour, and recorded like any other,
    // so expiry is the only thing wrong with it.
    let signer = tether_certs::issue::Signer::from_pem(
        &read(ca.dir.join("intermediate/cert.pem")),
        &read(ca.dir.join("intermediate/key.pem")),
    )
    .unwrap();
    let key = generate_key().unwrap();
    let issued_at = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    let leaf = signer.issue_leaf(&web, &key, HOUR, DAY, issued_at).unwrap();
    assert!(leaf.not_after < time::OffsetDateTime::now_utc());
    tether_ca::store::Store::open(&ca.dir.join("ca.db"))
        .unwrap()
        .record(&tether_ca::store::NewCert {
            serial: leaf.serial.clone(),
            spiffe_id: web.to_string(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            issued_at,
            method: "enroll",
            der: leaf.der.to_vec(),
            generation: 1,
        })
        .unwrap();
    let chain = format!(
        "{}{}",
        tether_certs::pem::encode("CERTIFICATE", &leaf.der),
        signer.cert_pem()
    );

    let (_k, csr) = csr_for("/ns/default/sa/web");
    let r = ca
        .client_with(&chain, &key.serialize_pem())
        .renew(&csr)
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "expired");
}

#[tokio::test]
async fn renew_with_a_bad_csr_is_400_and_issues_nothing() {
    let ca = TestCa::start().await;
    let cred = ca.enroll(&id("/ns/default/sa/web")).await;
    let r = ca.client_as(&cred).renew("garbage").await;
    r.assert_error(StatusCode::BAD_REQUEST, "malformed CSR");
    assert!(ca.issued().iter().all(|r| r.method != "renew"));
}

// ---------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_revokes_and_the_crl_lists_the_serial() {
    let ca = TestCa::start().await;
    let cred = ca.enroll(&id("/ns/default/sa/bad")).await;
    let before = ca.fetch_crl().await;
    let serial: tether_certs::Serial = cred.serial.parse().unwrap();
    assert!(!before.revoked().contains(&serial));

    let r = ca
        .admin()
        .revoke(&json!({"serial": cred.serial, "reason": "key-compromise"}))
        .await;

    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["serial"], cred.serial);
    let number = body["crl_number"].as_u64().expect("crl_number");
    assert!(number > before.number());
    let crl = ca.fetch_crl().await;
    assert_eq!(crl.number(), number);
    assert!(crl.revoked().contains(&serial), "the CRL lists {serial}");
    let rec = ca
        .issued()
        .into_iter()
        .find(|r| r.serial == cred.serial)
        .unwrap();
    assert!(rec.revoked_at.is_some());
    assert_eq!(rec.reason.as_deref(), Some("key-compromise"));

    // Serials are numbers: the colon-separated uppercase form names the same certificate.
    let colon_upper = cred
        .serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let again = ca.admin().revoke(&json!({"serial": colon_upper})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.json()["status"], "already_revoked");
    assert!(again.json()["revoked_at"].as_i64().is_some());
    assert_eq!(
        ca.fetch_crl().await.number(),
        number,
        "revoking twice publishes nothing new"
    );
}

#[tokio::test]
async fn only_the_admin_may_revoke() {
    let ca = TestCa::start().await;
    let victim = ca.enroll(&id("/ns/default/sa/victim")).await;
    let mallory = ca.enroll(&id("/ns/default/sa/mallory")).await;
    let body = json!({"serial": victim.serial});

    let r = ca.client_as(&mallory).revoke(&body).await;
    r.assert_error(StatusCode::FORBIDDEN, "only the admin");

    let r = ca.client().revoke(&body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let serial: tether_certs::Serial = victim.serial.parse().unwrap();
    assert!(!ca.fetch_crl().await.revoked().contains(&serial));
    assert!(ca.nothing_revoked());
}

#[tokio::test]
async fn revoke_rejects_unknown_and_malformed_serials_and_reasons() {
    let ca = TestCa::start().await;
    let admin = ca.admin();
    let cred = ca.enroll(&id("/ns/default/sa/web")).await;

    let r = admin.revoke(&json!({"serial": "0123456789abcdef"})).await;
    r.assert_error(StatusCode::NOT_FOUND, "0123456789abcdef");

    let r = admin.revoke(&json!({"serial": "not-hex"})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "not-hex");

    let r = admin
        .revoke(&json!({"serial": cred.serial, "reason": "felt-like-it"}))
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "felt-like-it");
    assert!(ca.nothing_revoked());
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_issuance_revocation_and_failures() {
    let ca = TestCa::start().await;
    let client = ca.client();
    let a = ca.enroll(&id("/ns/default/sa/a")).await;
    let _b = ca.enroll(&id("/ns/default/sa/b")).await;
    let (_k, csr) = csr_for("/ns/default/sa/a");
    let renewed = ca.client_as(&a).renew(&csr).await;
    assert_eq!(renewed.status, StatusCode::OK);
    let revoked = ca.admin().revoke(&json!({"serial": a.serial})).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let crl_number = revoked.json()["crl_number"].as_u64().unwrap();

    // Failures, one of each.
    let bad_token = client.enroll("nope", &csr).await;
    assert_eq!(bad_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        client.post_bytes("/v1/enroll", "{").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(client.renew(&csr).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        ca.admin().revoke(&json!({"serial": "abcdef"})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(client.get("/nowhere").await.status, StatusCode::NOT_FOUND);

    let resp = client.get("/metrics").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = resp.text();
    let m = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    let issued = "tether_ca_certificates_issued_total";
    assert_eq!(m(issued, &[("method", "enroll")]), 2.0);
    assert_eq!(m(issued, &[("method", "renew")]), 1.0);
    assert_eq!(m("tether_ca_revocations_total", &[]), 1.0);
    let failures = "tether_ca_request_failures_total";
    assert_eq!(
        m(
            failures,
            &[("endpoint", "enroll"), ("reason", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(
        m(
            failures,
            &[("endpoint", "enroll"), ("reason", "bad_request")]
        ),
        1.0
    );
    assert_eq!(
        m(
            failures,
            &[("endpoint", "renew"), ("reason", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(
        m(failures, &[("endpoint", "revoke"), ("reason", "not_found")]),
        1.0
    );
    assert_eq!(
        m(failures, &[("endpoint", "other"), ("reason", "not_found")]),
        1.0
    );
    assert_eq!(m("tether_ca_crl_number", &[]), crl_number as f64);
    // Successful requests are not failures.
    assert!(metric(
        &text,
        failures,
        &[("endpoint", "revoke"), ("reason", "forbidden")]
    )
    .is_none());
}

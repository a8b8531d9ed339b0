//! Kubernetes enrollment end to end, with the real binaries: a `tether-ca serve --k8s-issuer`
//! process verifying service-account tokens against a JWKS served over HTTPS by the test (the
//! simulated apiserver's `/openid/v1/jwks`), and `tether-proxy run` processes whose `[ca]
//! k8s_token_file` holds a token minted by `tether_testkit::k8s` exactly as the kubelet
//! projects one. A pod enrolls as `spiffe://cluster.local/ns/NS/sa/SA`, calls a peer over
//! mTLS and, refused at renewal, enrolls again with its token; the token file is read again at
//! every attempt, so a rotated token counts without a restart; a namespace outside
//! `--k8s-allow` is refused 403 and the sidecar stays unready. No token is ever logged.
//!
//! These tests need `tether-ca` built next to `tether-proxy` (`cargo build --workspace --bins`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;

use common::*;
use tether_testkit::k8s::{self, Apiserver, Signer};

/// The trust domain of the example cluster (the manifests' `cluster.local`).
const CLUSTER_TD: &str = "cluster.local";

/// How long a sidecar gets to enroll, or to notice a new token: generous for a loaded 2-core
/// machine and the renewal backoff (1 s, 2 s, 4 s … between attempts).
const PATIENCE: Duration = Duration::from_secs(30);

/// A CA accepting service-account tokens from one simulated apiserver.
struct Cluster {
    /// The CA's state (trust domain `cluster.local`) in a temp dir, where every file goes.
    pki: Pki,
    /// The apiserver's signing key, whose JWK the JWKS endpoint publishes.
    apiserver: Signer,
    /// That endpoint (kept so it serves for the whole test).
    _jwks: Apiserver,
    /// `tether-ca serve`, its stderr in `ca.stderr`.
    _ca: Child,
    /// Its API, `https://127.0.0.1:PORT`.
    ca_url: String,
    /// Its plain-HTTP `/metrics` listener.
    ca_metrics: SocketAddr,
}

/// A `tether-proxy run` process, its stderr in `<name>.stderr`.
struct Pod {
    _child: Child,
    /// Its admin listener (`/ready`, `/identity`, `/metrics`, `POST /rotate`).
    admin: SocketAddr,
    /// Its `ca.k8s_token_file`, where the test plays the kubelet.
    token_file: PathBuf,
}

impl Cluster {
    /// Starts the JWKS server and a `tether-ca serve` with Kubernetes enrollment on and
    /// `extra` flags (e.g. `--k8s-allow`).
    async fn start(extra: &[&str]) -> Cluster {
        let pki = Pki::with_domain(CLUSTER_TD);
        let apiserver = Signer::rsa();
        let jwks = Apiserver::start().await;
        jwks.publish(Some(k8s::jwks(&[&apiserver])));
        let jwks_root = jwks.write_root(pki.dir.path());
        let ca_bin = hosts::binary("tether-ca");
        let (port, metrics_port) = (free_port(), free_port());
        let log = std::fs::File::create(pki.dir.path().join("ca.stderr")).unwrap();
        let child = Command::new(ca_bin)
            .arg("--state-dir")
            .arg(pki.ca.dir())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--k8s-issuer", k8s::ISSUER, "--k8s-audience", k8s::AUDIENCE])
            .args(["--k8s-jwks", &jwks.url()])
            .arg("--k8s-jwks-ca")
            .arg(&jwks_root)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut ca = Child(child);
        let up = eventually(PATIENCE, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                || matches!(ca.0.try_wait(), Ok(Some(_)))
        })
        .await;
        if !up || ca.0.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(pki.dir.path().join("ca.stderr")).unwrap();
            panic!("tether-ca serve --k8s-issuer did not start (a stale tether-ca binary?): {log}");
        }
        Cluster {
            pki,
            apiserver,
            _jwks: jwks,
            _ca: ca,
            ca_url: format!("https://127.0.0.1:{port}"),
            ca_metrics: ([127, 0, 0, 1], metrics_port).into(),
        }
    }

    /// The temp dir holding the CA's state, every config, token file and log.
    fn dir(&self) -> &Path {
        self.pki.dir.path()
    }

    /// A projected token for `namespace/sa`, issued `age_secs` ago and valid for an hour.
    fn token(&self, namespace: &str, sa: &str, age_secs: i64) -> String {
        let iat = k8s::now() - age_secs;
        let claims = k8s::pod_claims(k8s::ISSUER, k8s::AUDIENCE, namespace, sa, iat, 3600);
        self.apiserver.sign(&claims)
    }

    /// Starts sidecar `name` enrolling with the token file `<name>.token` (which need not exist
    /// yet), with an admin listener and `sections`.
    fn pod(&self, name: &str, sections: &str) -> Pod {
        let (dir, admin) = (self.dir(), free_port());
        let token_file = dir.join(format!("{name}.token"));
        let config = format!(
            "[ca]\nurls = [{:?}]\nbundle = {:?}\nstate_dir = {:?}\nk8s_token_file = {token_file:?}\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n{sections}",
            self.ca_url,
            self.pki.ca.dir().join("bundle.pem"),
            dir.join(format!("state-{name}")),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tether-proxy"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(admin);
        Pod {
            _child: Child(child),
            admin: ([127, 0, 0, 1], admin).into(),
            token_file,
        }
    }

    /// The sum of the CA's metric `name` with `labels`, from its plain-HTTP metrics listener.
    async fn ca_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = get(self.ca_metrics, "ca", "/metrics", &[]).await;
        tether_testkit::metrics::sum(&text, name, labels)
    }

    /// `name`'s stderr so far (`ca` for the CA's).
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir().join(format!("{name}.stderr"))).unwrap_or_default()
    }

    /// Whether a line of `name`'s stderr (`ca` for the CA) contains `needle`.
    fn logged(&self, name: &str, needle: &str) -> bool {
        self.log(name).lines().any(|l| l.contains(needle))
    }

    /// Fails the test if any part of `token` (header, claims or signature) is in the log of
    /// the CA or of any of `pods`.
    fn assert_never_logged(&self, token: &str, pods: &[&str]) {
        for name in pods.iter().copied().chain(["ca"]) {
            let text = std::fs::read_to_string(self.dir().join(format!("{name}.stderr"))).unwrap();
            for part in token.split('.') {
                assert!(!text.contains(part), "{name}'s log shows the token: {text}");
            }
        }
    }
}

impl Pod {
    /// Whether `/ready` answers 200.
    async fn is_ready(&self) -> bool {
        admin_ready(self.admin).await
    }

    /// Waits up to [`PATIENCE`] for `/ready`; whether it came.
    async fn becomes_ready(&self) -> bool {
        tether_testkit::wait::eventually(PATIENCE, || self.is_ready()).await
    }

    /// `GET /identity`, parsed.
    async fn identity(&self) -> serde_json::Value {
        admin_identity(self.admin).await
    }

    /// Replaces the token file at once, as the kubelet's atomic writer does.
    fn write_token(&self, token: &str) {
        let tmp = self.token_file.with_extension("new");
        std::fs::write(&tmp, token).unwrap();
        std::fs::rename(&tmp, &self.token_file).unwrap();
    }
}

/// `spiffe://cluster.local/ns/NS/sa/SA`.
fn pod_id(namespace: &str, sa: &str) -> String {
    format!("spiffe://{CLUSTER_TD}/ns/{namespace}/sa/{sa}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_enroll_with_service_account_tokens_call_each_other_and_reenroll_when_refused() {
    let cluster = Cluster::start(&["--k8s-allow", "payments/*"]).await;
    let d = cluster.dir().to_path_buf();
    let app = start_app().await;
    let policy = write_policy(
        &d,
        "policy.toml",
        &format!(
            "[[rule]]\nname = \"web\"\nfrom = [\"{}\"]\n",
            pod_id("payments", "web")
        ),
    );
    let (api_in, web_out) = (free_port(), free_port());
    let api = cluster.pod(
        "api",
        &format!(
            "[inbound]\nlisten = \"127.0.0.1:{api_in}\"\napp = \"{app}\"\npolicy = {policy:?}\n"
        ),
    );
    let web = cluster.pod(
        "web",
        &format!(
            "[outbound]\nlisten = \"127.0.0.1:{web_out}\"\n[services.api]\n\
             address = [\"127.0.0.1:{api_in}\"]\nidentity = \"{}\"\n",
            pod_id("payments", "api")
        ),
    );
    let (api_token, web_token) = (
        cluster.token("payments", "api", 0),
        cluster.token("payments", "web", 0),
    );
    api.write_token(&api_token);
    web.write_token(&web_token);
    assert!(api.becomes_ready().await, "api never became ready");
    assert!(web.becomes_ready().await, "web never became ready");
    assert_eq!(api.identity().await["spiffe_id"], pod_id("payments", "api"));
    assert_eq!(web.identity().await["spiffe_id"], pod_id("payments", "web"));

    // web calls api over mTLS, each with the identity its token enrolled.
    let (status, body) = get(([127, 0, 0, 1], web_out).into(), "api", "/hello", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let xfcc = echo(&body)["headers"]["x-forwarded-client-cert"].clone();
    assert!(
        xfcc.as_str().unwrap().ends_with(&pod_id("payments", "web")),
        "{xfcc}"
    );

    // api's certificate revoked: its renewal is refused (403) and it falls back to enrolling
    // with its service-account token. The CA takes only a token issued after the revocation
    // (the kubelet's next one), read from the file at that attempt: same identity, new serial.
    let serial = api.identity().await["serial"].as_str().unwrap().to_string();
    cluster
        .pki
        .ca
        .revoke(&serial.parse().unwrap(), None)
        .unwrap();
    let revoked_at = k8s::now();
    send(api.admin, "admin", "POST", "/rotate", &[], "").await;
    let fell_back = "renewal refused (CA answered 403";
    assert!(
        eventually(PATIENCE, || cluster.logged("api", fell_back)).await,
        "the revoked certificate's renewal was never refused: {}",
        cluster.log("api")
    );
    // The CA counts a token as issued 30 s (its clock-skew allowance) before its iat, so the
    // next token is minted as a fast apiserver would: 30 s ahead, a second after the revocation.
    assert!(eventually(PATIENCE, || k8s::now() > revoked_at).await);
    let next_token = cluster.token("payments", "api", -30);
    api.write_token(&next_token);
    send(api.admin, "admin", "POST", "/rotate", &[], "").await;
    let renewed = tether_testkit::wait::eventually(PATIENCE, || async {
        let now = api.identity().await;
        now["serial"].as_str().is_some_and(|s| s != serial)
    })
    .await;
    assert!(
        renewed,
        "api never enrolled again after the refused renewal: {}",
        cluster.log("api")
    );
    assert_eq!(api.identity().await["spiffe_id"], pod_id("payments", "api"));
    assert!(cluster.logged("api", "enrolling with the Kubernetes service-account token"));
    for token in [&api_token, &web_token, &next_token] {
        cluster.assert_never_logged(token, &["api", "web"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_read_again_at_the_next_attempt_without_a_restart() {
    let cluster = Cluster::start(&[]).await;
    let pod = cluster.pod("api", OUTBOUND_SECTION);
    // No token file yet: a clear line naming the key and the file, and retries.
    let missing = format!("cannot read ca.k8s_token_file {}", pod.token_file.display());
    assert!(
        eventually(PATIENCE, || cluster.logged("api", &missing)).await,
        "no line saying the token file is missing"
    );
    // An empty one (a projection not written yet): the same, saying so.
    pod.write_token("\n");
    let empty = format!("ca.k8s_token_file {} is empty", pod.token_file.display());
    assert!(
        eventually(PATIENCE, || cluster.logged("api", &empty)).await,
        "no line saying the token file is empty"
    );
    assert!(!pod.is_ready().await);
    // An expired token: refused (401) at the next attempt, still not ready.
    let expired = cluster.token("payments", "api", 7200);
    pod.write_token(&expired);
    assert!(
        eventually(PATIENCE, || cluster.logged("api", "CA answered 401")).await,
        "the expired token was never tried"
    );
    assert!(!pod.is_ready().await);
    // The kubelet rotates the token in place: the sidecar enrolls, no restart.
    let fresh = cluster.token("payments", "api", 0);
    pod.write_token(&fresh);
    assert!(
        pod.becomes_ready().await,
        "the rotated token was never read"
    );
    assert_eq!(pod.identity().await["spiffe_id"], pod_id("payments", "api"));
    cluster.assert_never_logged(&expired, &["api"]);
    cluster.assert_never_logged(&fresh, &["api"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_outside_the_allow_list_is_refused_403_and_stays_unready() {
    let cluster = Cluster::start(&["--k8s-allow", "payments/*"]).await;
    let pod = cluster.pod("billing", OUTBOUND_SECTION);
    let token = cluster.token("billing", "api", 0);
    pod.write_token(&token);
    let not_allowed = [("endpoint", "enroll"), ("reason", "not_allowed")];
    let refused = tether_testkit::wait::eventually(PATIENCE, || async {
        cluster
            .ca_metric("tether_ca_request_failures_total", &not_allowed)
            .await
            >= 1.0
    })
    .await;
    assert!(
        refused,
        "the CA never counted the refusal as not_allowed: {}\n{}\n{}",
        get(cluster.ca_metrics, "ca", "/metrics", &[]).await.1,
        cluster.log("ca"),
        cluster.log("billing")
    );
    assert!(
        eventually(PATIENCE, || cluster.logged("billing", "CA answered 403")).await,
        "the sidecar's log does not show the CA's 403"
    );
    assert!(!pod.is_ready().await);
    assert!(pod.identity().await["spiffe_id"].is_null());
    let (_, metrics) = get(pod.admin, "admin", "/metrics", &[]).await;
    let errors = [("result", "error")];
    assert!(tether_testkit::metrics::sum(&metrics, "tether_cert_refresh_total", &errors) >= 1.0);
    cluster.assert_never_logged(&token, &["billing"]);
}

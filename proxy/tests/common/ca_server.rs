//! The CA-mode harness: a real `tether-ca` API served over HTTPS in-process from a [`Pki`]'s
//! state dir (with its plain-HTTP metrics listener, as `serve --metrics-listen` runs it), the
//! one-time tokens and `[ca]` sections that make sidecars enroll with it, and waiting for a
//! sidecar to become ready.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{id, Pki, Sidecar};

/// A CA served over HTTPS on 127.0.0.1 from a [`Pki`]'s state dir.
pub struct CaServer {
    pub url: String,
    /// The registry its metrics are on.
    pub registry: prometheus::Registry,
    /// Its plain-HTTP `/metrics` listener (`None` for a [`CaServer::placeholder`]).
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    /// Stops the metrics listener when dropped.
    _stop_metrics: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaServer {
    /// Serves `pki`'s CA on a fresh port.
    pub async fn start(pki: &Pki) -> CaServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(pki, listener).await
    }

    /// Serves `pki`'s CA on `listener` (to start it again at the same URL).
    pub async fn start_on(pki: &Pki, listener: tokio::net::TcpListener) -> CaServer {
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let authority = Arc::new(tether_ca::Authority::open(pki.ca.dir()).unwrap());
        let registry = prometheus::Registry::new();
        let (tx, rx) = oneshot::channel::<()>();
        let api = tether_ca::api::run(listener, authority, registry.clone(), async {
            let _ = rx.await;
        });
        let task = tokio::spawn(async move {
            let _ = api.await;
        });
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = metrics_listener.local_addr().unwrap();
        let (stop_metrics, stopped) = oneshot::channel::<()>();
        tokio::spawn(tether_ca::api::run_metrics(
            metrics_listener,
            registry.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        CaServer {
            url,
            registry,
            metrics: Some(metrics),
            stop: Some(tx),
            _stop_metrics: Some(stop_metrics),
            task,
        }
    }

    /// A CA URL nobody listens on.
    pub fn placeholder() -> CaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        CaServer {
            url: format!("https://127.0.0.1:{port}"),
            registry: prometheus::Registry::new(),
            metrics: None,
            stop: None,
            _stop_metrics: None,
            task: tokio::spawn(async {}),
        }
    }

    /// The port it listens on, to start it again at the same URL.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Stops the API and waits for it to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Writes a one-time token for `spiffe://TD/<path>` to a file in `pki`'s temp dir and returns
/// its path (what a sidecar's `token_file` names).
pub fn token(pki: &Pki, path: &str) -> PathBuf {
    let id = tether_certs::SpiffeId::parse(&id(path)).unwrap();
    let t = pki.ca.create_token(&id, Duration::from_secs(600)).unwrap();
    let p = pki
        .dir
        .path()
        .join(format!("{}.token", path.replace('/', "_")));
    std::fs::write(&p, t).unwrap();
    p
}

/// A `[ca]` section for `ca`, trusting `pki`'s bundle, with the state dir `state` in the temp
/// dir, `token` as its token file if given, and any more `[ca]` keys in `extra`.
pub fn ca_section(
    pki: &Pki,
    ca: &CaServer,
    token: Option<&Path>,
    state: &str,
    extra: &str,
) -> String {
    ca_urls_section(pki, &[&ca.url], token, state, extra)
}

/// [`ca_section`] listing several CA URLs (replicas), in order.
pub fn ca_urls_section(
    pki: &Pki,
    urls: &[&str],
    token: Option<&Path>,
    state: &str,
    extra: &str,
) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let mut s = format!(
        "[ca]\nurls = [{}]\nbundle = {:?}\nstate_dir = {:?}\n{extra}",
        urls.join(", "),
        pki.ca.dir().join("bundle.pem"),
        pki.dir.path().join(state)
    );
    if let Some(t) = token {
        s.push_str(&format!("token_file = {t:?}\n"));
    }
    s
}

/// Waits (up to 5 s) until `s` says it is ready; fails the test if it never does.
pub async fn wait_ready(s: &Sidecar) {
    for _ in 0..100 {
        if s.is_ready().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sidecar never became ready");
}

//! The one part of a kube-apiserver the CA talks to: `GET /openid/v1/jwks` over HTTPS, with a
//! server certificate from a throwaway PKI (its root is what a pod finds in `ca.crt`), an
//! optional bearer token it demands (as RBAC would), and a record of every `Authorization`
//! header it received. Until a JWKS is published it answers 503, as an apiserver that is not up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsAcceptor;

use crate::pki::{now, Pki, DAY};

/// Where the apiserver publishes its keys.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// What the server publishes and what it saw.
#[derive(Default)]
struct Published {
    /// The JWKS; `None` answers 503.
    jwks: Option<String>,
    /// The bearer token it demands, if any.
    bearer: Option<String>,
    /// Every `Authorization` header received (`None` for a request without one).
    seen: Vec<Option<String>>,
}

/// A running JWKS endpoint on 127.0.0.1; it stops with the test's runtime.
pub struct Apiserver {
    addr: SocketAddr,
    root_pem: String,
    published: Arc<Mutex<Published>>,
}

impl Apiserver {
    /// Starts serving: nothing published yet (503), no bearer token demanded.
    pub async fn start() -> Apiserver {
        let pki = Pki::new("apiserver.test");
        let key = tether_certs::keys::generate_key().expect("a key");
        let leaf = pki
            .intermediate
            .issue_server(&key, &["127.0.0.1".to_string()], DAY, now())
            .expect("the apiserver's certificate");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(tether_certs::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der, pki.intermediate.cert().clone()], key)
            .expect("a TLS server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let published = Arc::new(Mutex::new(Published::default()));
        tokio::spawn(serve(listener, acceptor, published.clone()));
        Apiserver {
            addr,
            root_pem: pki.root.cert_pem(),
            published,
        }
    }

    /// `https://127.0.0.1:PORT/openid/v1/jwks`.
    pub fn url(&self) -> String {
        format!("https://{}{JWKS_PATH}", self.addr)
    }

    /// Writes the root that verifies the server to `dir/apiserver-ca.crt` (what
    /// `--k8s-jwks-ca` names) and returns its path.
    pub fn write_root(&self, dir: &Path) -> PathBuf {
        let path = dir.join("apiserver-ca.crt");
        std::fs::write(&path, &self.root_pem).expect("writing the apiserver's root");
        path
    }

    /// Publishes `jwks` (`None`: answer 503 again).
    pub fn publish(&self, jwks: Option<String>) {
        self.lock().jwks = jwks;
    }

    /// Demands `Authorization: Bearer TOKEN` from now on (401 without it).
    pub fn require_bearer(&self, token: &str) {
        self.lock().bearer = Some(token.to_string());
    }

    /// Every `Authorization` header received so far, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    published: Arc<Mutex<Published>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, published) = (acceptor.clone(), published.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = answer(&published, &req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn answer(published: &Mutex<Published>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut p = published.lock().unwrap_or_else(|p| p.into_inner());
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    p.seen.push(auth.clone());
    let demanded = p.bearer.as_ref().map(|b| format!("Bearer {b}"));
    let (status, body) = if req.uri().path() != JWKS_PATH {
        (StatusCode::NOT_FOUND, String::new())
    } else if demanded.is_some() && auth != demanded {
        (StatusCode::UNAUTHORIZED, String::new())
    } else {
        match &p.jwks {
            Some(jwks) => (StatusCode::OK, jwks.clone()),
            None => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if status == StatusCode::OK {
        let json = HeaderValue::from_static("application/json");
        resp.headers_mut().insert(header::CONTENT_TYPE, json);
    }
    resp
}

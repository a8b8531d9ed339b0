//! The admin listener: `/metrics`, `/live`, `/ready`, `/identity`.
//!
//! `/ready` is 200 only while a valid certificate is loaded, so an orchestrator sends no traffic
//! to a sidecar that would fail every handshake. `/identity` shows what the sidecar presents and
//! trusts; it never shows key material.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::identity::IdentityStore;

/// What the admin endpoints read.
pub struct Admin {
    /// Current credentials.
    pub identity: IdentityStore,
    /// The registry `/metrics` renders.
    pub registry: Registry,
}

/// Serves the admin listener until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn handle(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&admin.registry),
        ),
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            let creds = admin.identity.current();
            if creds.is_valid_at(OffsetDateTime::now_utc()) {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: certificate expired\n".into(),
                )
            }
        }
        "/identity" => {
            let c = admin.identity.current();
            let now = OffsetDateTime::now_utc();
            let rfc = |t: OffsetDateTime| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            let body = serde_json::json!({
                "spiffe_id": c.id.as_str(),
                "serial": c.serial.to_string(),
                "not_after": rfc(c.not_after),
                "seconds_until_expiry": (c.not_after - now).whole_seconds(),
                "bundle": c.bundle.roots().iter().map(|r| serde_json::json!({
                    "trust_domain": r.trust_domain.as_str(),
                    "fingerprint_sha256": r.fingerprint,
                    "not_after": rfc(r.not_after),
                })).collect::<Vec<_>>(),
                "crl": c.crl.as_ref().map(|crl| serde_json::json!({
                    "number": crl.number(),
                    "this_update": rfc(crl.this_update()),
                    "next_update": rfc(crl.next_update()),
                    "revoked": crl.revoked().len(),
                    "age_seconds": (now - crl.this_update()).whole_seconds(),
                })),
            });
            text(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /live, /ready, /identity\n".into(),
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

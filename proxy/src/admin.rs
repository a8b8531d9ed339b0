//! The admin listener: `/metrics`, `/live`, `/ready`, `/identity`, and `POST /rotate` (from
//! loopback only, since the listener may face the pod network for the kubelet's probes).
//!
//! `/ready` is 200 only while a valid certificate is loaded, so an orchestrator sends no traffic
//! to a sidecar that would fail every handshake. `/identity` shows what the sidecar presents and
//! trusts, and which CA URL it uses; it never shows key material. Its CRL figures (age,
//! staleness, time until outage) and the lifecycle gauges on `/metrics` are computed when asked,
//! from the same state by the same functions, so the two agree at every moment.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use crate::revocation::{OnStale, RevocationCache, When};

/// What the admin endpoints read.
pub struct Admin {
    /// Current credentials.
    pub identity: IdentityStore,
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// The revocation cache (CRL state for `/ready` and `/identity`).
    pub revocation: Arc<RevocationCache>,
    /// Notified to force a renewal now (`POST /rotate`); `None` in file mode.
    pub rotate: Option<Arc<tokio::sync::Notify>>,
    /// The CA client, for the CA URL in use (`ca_url`); `None` in file mode.
    pub(crate) ca: Option<Arc<crate::ca_client::CaClient>>,
}

/// Admin connections served at once: probes and scrapers open a handful; a limit keeps a
/// misbehaving client from exhausting file descriptors the data plane needs.
const MAX_ADMIN_CONNECTIONS: usize = 256;

/// Serves the admin listener until `shutdown` resolves. Admin requests are short, so shutdown
/// does not wait for them: the watcher is dropped, not registered.
pub async fn run(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = tether_net::ListenerLimits {
        max_connections: MAX_ADMIN_CONNECTIONS,
        overflow: 0,
        drain: std::time::Duration::ZERO,
    };
    tether_net::serve(
        "admin",
        listener,
        limits,
        shutdown,
        move |tcp, peer, _, _| {
            let admin = admin.clone();
            async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(handle(&admin, peer, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            }
        },
    )
    .await;
}

fn handle(admin: &Admin, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&admin.registry),
        ),
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            let now = OffsetDateTime::now_utc();
            let stale = admin.revocation.is_stale(now);
            let unavailable = |msg: &str| text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {msg}\n"));
            match admin.identity.current() {
                None => unavailable("no certificate yet"),
                Some(c) if !c.is_valid_at(now) => unavailable("certificate expired"),
                Some(_) if stale && admin.revocation.on_stale() == OnStale::Deny => {
                    unavailable("revocation list is stale (on_stale_crl = deny)")
                }
                Some(_) if stale => text(
                    StatusCode::OK,
                    "text/plain",
                    "ready, but the revocation list is stale (on_stale_crl = allow: failing open)\n".into(),
                ),
                Some(_) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            }
        }
        "/rotate" => match (&admin.rotate, req.method() == http::Method::POST) {
            (_, false) => text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST /rotate\n".into()),
            // The listener may face the pod network (the kubelet probes /ready there); only a
            // process on this host may make the sidecar act.
            _ if !from_this_host(peer) => text(
                StatusCode::FORBIDDEN,
                "text/plain",
                "POST /rotate is accepted from loopback only\n".into(),
            ),
            (None, true) => text(
                StatusCode::CONFLICT,
                "text/plain",
                "this sidecar reads its certificate from files ([identity]); rotate by replacing them\n".into(),
            ),
            (Some(n), true) => {
                n.notify_one();
                text(StatusCode::ACCEPTED, "text/plain", "renewal requested\n".into())
            }
        },
        "/identity" => identity(admin),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /live, /ready, /identity, POST /rotate\n".into(),
        ),
    }
}

/// `GET /identity`: the certificate, bundle, CRL and CA URL in use, as JSON.
fn identity(admin: &Admin) -> Response<Full<Bytes>> {
    let now = OffsetDateTime::now_utc();
    let rfc = |t: OffsetDateTime| When(t).to_string();
    // The same functions, at the same instant, as the lifecycle gauges on /metrics.
    let crl = admin.revocation.current().map(|crl| serde_json::json!({
        "number": crl.number(),
        "this_update": rfc(crl.this_update()),
        "next_update": rfc(crl.next_update()),
        "revoked": crl.revoked().len(),
        "age_seconds": crl.age(now).whole_seconds(),
        "stale": admin.revocation.is_stale(now),
        "on_stale_crl": if admin.revocation.on_stale() == OnStale::Deny { "deny" } else { "allow" },
    }));
    let creds = admin.identity.current();
    let outage = crate::lifecycle::time_until_outage(creds.as_deref(), &admin.revocation, now);
    // The CA URL in use: the last that accepted a call (null in file mode).
    let ca_url = admin.ca.as_ref().and_then(|c| c.url_in_use());
    let body = match creds {
        None => serde_json::json!({ "spiffe_id": null, "crl": crl, "ca_url": ca_url }),
        Some(c) => serde_json::json!({
            "spiffe_id": c.id.as_str(),
            "serial": c.serial.to_string(),
            "not_after": rfc(c.not_after),
            "seconds_until_expiry": (c.not_after - now).whole_seconds(),
            "seconds_until_outage": outage.map(|d| d.whole_seconds()),
            "bundle": c.bundle.roots().iter().map(|r| serde_json::json!({
                "trust_domain": r.trust_domain.as_str(),
                "fingerprint_sha256": r.fingerprint,
                "not_after": rfc(r.not_after),
            })).collect::<Vec<_>>(),
            "crl": crl,
            "ca_url": ca_url,
        }),
    };
    text(StatusCode::OK, "application/json", format!("{body:#}\n"))
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

/// Whether `peer` is a process on this host: a loopback address, also as an IPv4-mapped IPv6
/// one (`::ffff:127.0.0.1`, how a dual-stack `[::]` listener sees a local IPv4 client).
fn from_this_host(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_in_every_spelling_is_this_host_and_nothing_else_is() {
        for local in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(from_this_host(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.7:1",
            "[::ffff:10.0.0.7]:1",
            "[fe80::1]:1",
            "0.0.0.0:1",
        ] {
            assert!(!from_this_host(remote.parse().unwrap()), "{remote}");
        }
    }
}

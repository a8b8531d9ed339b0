//! One request from a peer: the path normalized, the policy asked, the target and identity
//! header rewritten to what was authorized, then handed to [`super::app`]; the result counted.

use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::error::{Error, RespBody};
use crate::forward::{self, XFCC};
use crate::metrics::{AuthzLabel, Direction};
use crate::policy::{normalize_path_with, Decision, Mode as PolicyMode, Policy};

use super::app::{self, AppBody};
use super::{AppConn, Inbound, Peer};

/// Serves one request; errors become responses here, and every response is counted.
pub(super) async fn handle(
    inbound: &Inbound,
    peer: &Peer,
    app_conn: &AppConn,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    let resp = forward(inbound, peer, app_conn, req)
        .await
        .unwrap_or_else(Error::into_response);
    // The common case uses handles resolved once per connection: no label hashing per request.
    if resp.status() == StatusCode::OK {
        peer.ok.inc();
    } else {
        inbound
            .metrics
            .requests_for(
                Direction::Inbound,
                peer.cert.id.as_str(),
                resp.status().as_str(),
            )
            .inc();
    }
    inbound.seconds.observe(started.elapsed().as_secs_f64());
    resp
}

async fn forward(
    inbound: &Inbound,
    peer: &Peer,
    app_conn: &AppConn,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Error> {
    // One authority: `:authority` (h2) or the single Host header, and the app reads that one.
    forward::settle_authority(&mut req)?;
    let path = normalize_path_with(req.uri().path(), inbound.path_params)
        .map_err(|_| Error::BadRequest("bad request path"))?;
    let policy = inbound.policy.current();
    let decision = policy.decide(
        &peer.cert.id,
        Some(req.method().as_str()),
        Some(&path),
        time::OffsetDateTime::now_utc(),
    );
    // Formatted only if a deny is logged: nothing is allocated for it on the allow path.
    let line = RequestLine(req.method(), &path);
    if !authorize(inbound, &policy, decision, peer, &line) {
        // Says nothing about which rules exist.
        return Err(Error::Forbidden);
    }
    drop(policy);

    // Rebuild the target from the normalized path: what was matched is what the app sees.
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let pq = PathAndQuery::try_from(pq).map_err(|_| Error::BadRequest("bad request path"))?;
    // Origin-form, as an HTTP/1.1 connection to the app sends it; the pooled clients get the
    // absolute form they route by.
    *req.uri_mut() = Uri::from(pq);

    let upgrade = req.version() == Version::HTTP_11 && forward::is_upgrade(req.headers());
    let headers = req.headers_mut();
    forward::strip_hop_by_hop(headers, upgrade);
    forward::strip_identity_fields(headers);
    headers.insert(XFCC, peer.xfcc.clone());
    // Nor can a trailer carry it: the body the app reads drops it from trailers too.
    let req = req.map(AppBody::new);
    if upgrade {
        return app::forward_upgrade(inbound, &app_conn.upgrade, req).await;
    }
    app::forward(inbound, app_conn, req).await
}

/// "METHOD /path" for logs, formatted only when printed.
struct RequestLine<'a>(&'a http::Method, &'a str);

impl std::fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// Counts and logs a decision on `what` (a request line, or "tcp"); returns whether the
/// traffic may pass. Under an audit-mode policy a deny is logged and allowed.
pub(super) fn authorize(
    inbound: &Inbound,
    policy: &Policy,
    decision: Decision<'_>,
    peer: &Peer,
    what: &dyn std::fmt::Display,
) -> bool {
    let caller = &peer.cert.id;
    match decision {
        Decision::Allow { rule } => {
            inbound.metrics.count_authz(AuthzLabel::Allow, rule);
            true
        }
        Decision::Deny => match policy.mode() {
            PolicyMode::Enforce => {
                inbound.metrics.count_authz(AuthzLabel::Deny, "");
                tracing::info!("denied {caller} {what}: no rule matched");
                false
            }
            PolicyMode::Audit => {
                inbound.metrics.count_authz(AuthzLabel::AuditDeny, "");
                tracing::warn!("audit: would deny {caller} {what}; allowed because mode = audit");
                true
            }
        },
    }
}

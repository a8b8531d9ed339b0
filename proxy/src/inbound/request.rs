//! One request from a peer: the path normalized, the policy asked, the target and identity
//! header rewritten to what was authorized, then handed to [`super::app`]; the result counted
//! and logged ([`Exchange`]).

use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::error::{Dialect, Error, RespBody};
use crate::forward::{self, XFCC};
use crate::metrics::{AuthzLabel, Direction};
use crate::observe::{Exchange, Metered, Observed};
use crate::policy::{normalize_path_with, Decision, Mode as PolicyMode, Policy};

use super::app::{self, AppBody};
use super::{AppConn, Inbound, Peer};

/// Serves one request; errors become responses here, in the caller's `dialect`, and every
/// response is counted and, with the access log on, logged.
pub(super) async fn handle(
    inbound: &Inbound,
    peer: &Peer,
    app_conn: &AppConn,
    dialect: Dialect,
    id: http::HeaderValue,
    req: Request<Incoming>,
) -> Response<Observed<RespBody>> {
    let mut ex = Exchange::start(&inbound.log, Direction::Inbound, &req, id);
    if let Some(entry) = ex.entry() {
        entry.peer = Some(peer.id.clone());
    }
    let resp = match forward(inbound, peer, app_conn, &mut ex, req).await {
        Ok(resp) => resp,
        Err(e) => ex.fail(e),
    };
    let series = peer.series(&inbound.metrics);
    ex.finish(
        &inbound.metrics,
        (Some(series), peer.cert.id.as_str()),
        dialect,
        resp,
    )
}

async fn forward(
    inbound: &Inbound,
    peer: &Peer,
    app_conn: &AppConn,
    ex: &mut Exchange,
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
    let verdict = authorize(inbound, &policy, decision, peer, (&line, ex.id()));
    if let Some(entry) = ex.entry() {
        entry.path.clone_from(&path);
        entry.decision = Some(verdict);
        if let Decision::Allow { rule } = decision {
            entry.rule = Some(rule.to_owned());
        }
    }
    if verdict == AuthzLabel::Deny {
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
    // Origin-form, as an HTTP/1.1 connection to the app sends it; the h2c client gets the
    // absolute form it routes by.
    *req.uri_mut() = Uri::from(pq);

    let upgrade = req.version() == Version::HTTP_11 && forward::is_upgrade(req.headers());
    let headers = req.headers_mut();
    forward::strip_hop_by_hop(headers, upgrade);
    forward::strip_identity_fields(headers);
    headers.insert(XFCC, peer.xfcc.clone());
    // Nor can a trailer carry it: the body the app reads drops it from trailers too.
    let meter = ex.meter(peer.series(&inbound.metrics).bytes_in.clone());
    let req = req.map(|body| AppBody::new(Metered::new(body, meter)));
    let resp = if upgrade {
        // Boxed: the rare upgrade's state would otherwise be part of every request's future.
        Box::pin(app::forward_upgrade(inbound, &app_conn.upgrade, req)).await
    } else {
        app::forward(inbound, app_conn, req).await
    }?;
    if let Some(entry) = ex.entry() {
        entry.upstream = Some(inbound.app);
    }
    Ok(resp)
}

/// "METHOD /path" for logs, formatted only when printed.
struct RequestLine<'a>(&'a http::Method, &'a str);

impl std::fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// Counts and logs a decision on `what` (a request line, or "tcp") of the request with id
/// `request_id` ("-" for a TCP connection); returns what it came to,
/// the traffic passing unless [`AuthzLabel::Deny`]. Under an audit-mode policy a deny is logged
/// and allowed ([`AuthzLabel::AuditDeny`]).
pub(super) fn authorize(
    inbound: &Inbound,
    policy: &Policy,
    decision: Decision<'_>,
    peer: &Peer,
    (what, request_id): (&dyn std::fmt::Display, &str),
) -> AuthzLabel {
    let caller = &peer.cert.id;
    let (label, rule) = match (decision, policy.mode()) {
        (Decision::Allow { rule }, _) => (AuthzLabel::Allow, rule),
        (Decision::Deny, PolicyMode::Enforce) => {
            tracing::info!(request_id, "denied {caller} {what}: no rule matched");
            (AuthzLabel::Deny, "")
        }
        (Decision::Deny, PolicyMode::Audit) => {
            tracing::warn!(
                request_id,
                "audit: would deny {caller} {what}; allowed because mode = audit"
            );
            (AuthzLabel::AuditDeny, "")
        }
    };
    inbound.metrics.count_authz(label, rule);
    label
}

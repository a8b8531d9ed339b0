//! What the sidecar records of each request, in one place for both directions: the request id
//! it carries ([`settle_request_id`]), its metrics (count, latency by status class, body bytes)
//! and its access-log entry, written when its response body has gone ([`Exchange`]).
//!
//! Bodies are counted by wrapping them ([`Metered`] for the request's, [`Observed`] for the
//! response's: one wrapper, two tallies), so the bytes are the ones that really crossed the sidecar, however the body was
//! framed. With the access log off the exchange allocates nothing: the entry, its byte totals
//! and its place in the writer's queue exist only while logging.
//!
//! # Layout
//! - this file: [`Exchange`], one request from its head to its end.
//! - [`body`]: the counting body wrappers, and the end of an exchange.
//! - [`request_id`]: the `x-request-id` rule.

mod body;
mod request_id;

use std::time::Instant;

use http::{HeaderValue, Request, Response};
use prometheus::IntCounter;

use crate::access_log::{AccessLog, Record};
use crate::error::{grpc_status_of, Dialect, Error, RespBody};
use crate::metrics::{Direction, Metrics, Series};

use body::{Counted, ResponseMeter};
pub use body::{Meter, Metered, Observed};
pub use request_id::settle as settle_request_id;

/// The access log as the request path holds it: off (`None`) unless `[access_log]` is set.
pub type Log = Option<AccessLog<Record>>;

/// Settles `req`'s request id ([`settle_request_id`]) and makes the span the request runs in,
/// carrying it (and, on the outbound, the service once routed), a child of the connection's
/// span: call it where the connection's span is current.
///
/// The span is at debug level: at the default `info` it is never created, because the fmt
/// subscriber formats a span's fields when it is made, and that was 10 % of the outbound's
/// instructions per request (callgrind, 32 connections). The few lines a request logs at info
/// or above carry its `request_id` as a field of their own ([`Exchange::fail`], the policy's
/// denials), so the default log still finds every line of a request by its id.
pub fn request_span<B>(req: &mut Request<B>) -> (HeaderValue, tracing::Span) {
    let id = settle_request_id(req.headers_mut());
    let span = tracing::debug_span!(
        "request",
        request_id = tracing::field::display(id_str(&id)),
        service = tracing::field::Empty,
    );
    (id, span)
}

/// A settled request id as text (visible ASCII by construction).
pub fn id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

/// One request being served: started when its head arrives, finished when its response head is
/// ready ([`Exchange::finish`]: counted), ended when the response body has gone (logged). A
/// request dropped before any response, its client gone, is logged with status
/// [`crate::access_log::CLIENT_CLOSED`].
pub struct Exchange {
    started: Instant,
    /// The request's id.
    id: HeaderValue,
    direction: Direction,
    /// Its access-log side, when the log is on; written when dropped, so an exchange dropped
    /// before any response is logged too.
    end: Option<Box<body::End>>,
}

impl Exchange {
    /// Starts the exchange of `req` on `direction`, whose request id `id` the caller settled
    /// ([`settle_request_id`], before it made the request's span), and opens its access-log
    /// entry if `log` is on.
    pub fn start<B>(log: &Log, direction: Direction, req: &Request<B>, id: HeaderValue) -> Self {
        let started = Instant::now();
        let end = log.as_ref().map(|log| {
            let (method, path) = (req.method().clone(), req.uri().path());
            let record = Record::new(direction, method, path, id.clone());
            body::End::new(record, log.clone(), started)
        });
        Exchange {
            started,
            id,
            direction,
            end,
        }
    }

    /// The request's id, as text.
    pub fn id(&self) -> &str {
        id_str(&self.id)
    }

    /// The response to a request that failed with `e`, logged with the request's id.
    pub fn fail(&self, e: Error) -> Response<RespBody> {
        e.log(self.id());
        e.into_response()
    }

    /// The entry being filled in, if the access log is on: the request path adds what it
    /// learns (peer, decision, normalized path) only then.
    pub fn entry(&mut self) -> Option<&mut Record> {
        self.end.as_mut().and_then(|end| end.record())
    }

    /// The meter of the request body: counts into `bytes` and, when logging, into the entry.
    pub fn meter(&self, bytes: IntCounter) -> Meter {
        Meter::new(bytes, self.end.as_ref().map(|end| end.bytes_in()))
    }

    /// Counts the answered request under `series` (resolved once for its peer; `None` without
    /// a peer, [`Metrics::count_request`]) and `peer`,
    /// spells `resp` in the client's `dialect`, and wraps its body so its bytes are counted and,
    /// when it has gone, the entry is written. A sidecar refusal is counted and logged by its
    /// HTTP status, whatever a gRPC client reads (that is in the entry's `grpc_status`).
    pub fn finish(
        mut self,
        metrics: &Metrics,
        (series, peer): (Option<&Series>, &str),
        dialect: Dialect,
        resp: Response<RespBody>,
    ) -> Response<Observed<RespBody>> {
        let status = resp.status();
        let seconds = self.started.elapsed().as_secs_f64();
        metrics.count_request(series, (self.direction, peer), status, seconds);
        let resp = dialect.answer(resp);
        if let Some(record) = self.entry() {
            record.status = status.as_u16();
            record.grpc_status = grpc_status_of(resp.headers());
        }
        let end = self.end.take();
        let bytes_out = match series {
            Some(series) => series.bytes_out.clone(),
            None => metrics
                .response_bytes
                .with_label_values(&[self.direction.as_str(), peer]),
        };
        resp.map(|b| Counted::new(b, ResponseMeter::new(bytes_out, end)))
    }
}

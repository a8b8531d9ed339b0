//! What the sidecar records of each request, in one place for both directions: the request id
//! it carries ([`settle_request_id`]), its metrics (count, latency by status class, body bytes)
//! and its access-log entry, written when its response body has gone ([`Exchange`]).
//!
//! Bodies are counted by wrapping them ([`Metered`] for the request's, [`Observed`] for the
//! response's), so the bytes are the ones that really crossed the sidecar, however the body was
//! framed. With the access log off nothing is allocated per request beyond the two wrappers.
//!
//! # Layout
//! - this file: [`Exchange`], one request from its head to its end.
//! - [`body`]: the counting body wrappers, and the end of an exchange.
//! - [`request_id`]: the `x-request-id` rule.

mod body;
mod request_id;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use prometheus::IntCounter;

use crate::access_log::{AccessLog, Record};
use crate::error::{grpc_status_of, Dialect, Error, RespBody};
use crate::metrics::{Direction, Metrics, Series};

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
    /// The entry being filled in and where it goes, when the access log is on.
    entry: Option<(Box<Record>, AccessLog<Record>)>,
    /// Request body bytes, shared with the request body's [`Meter`], when logging.
    bytes_in: Option<Arc<AtomicU64>>,
}

impl Exchange {
    /// Starts the exchange of `req` on `direction`, whose request id `id` the caller settled
    /// ([`settle_request_id`], before it made the request's span), and opens its access-log
    /// entry if `log` is on.
    pub fn start<B>(log: &Log, direction: Direction, req: &Request<B>, id: HeaderValue) -> Self {
        let entry = log.as_ref().map(|log| {
            let (method, path) = (req.method().clone(), req.uri().path());
            let record = Record::new(direction, method, path, id.clone());
            (Box::new(record), log.clone())
        });
        let bytes_in = entry.as_ref().map(|_| Arc::default());
        Exchange {
            started: Instant::now(),
            id,
            direction,
            entry,
            bytes_in,
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
        self.entry.as_mut().map(|(r, _)| &mut **r)
    }

    /// The meter of the request body: counts into `bytes` and, when logging, into the entry.
    pub fn meter(&self, bytes: IntCounter) -> Meter {
        Meter::new(bytes, self.bytes_in.clone())
    }

    /// Counts the answered request under `series` (resolved once for its peer) and `peer`,
    /// spells `resp` in the client's `dialect`, and wraps its body so its bytes are counted and,
    /// when it has gone, the entry is written. A sidecar refusal is counted and logged by its
    /// HTTP status, whatever a gRPC client reads (that is in the entry's `grpc_status`).
    pub fn finish(
        mut self,
        metrics: &Metrics,
        (series, peer): (&Series, &str),
        dialect: Dialect,
        resp: Response<RespBody>,
    ) -> Response<Observed<RespBody>> {
        let status = resp.status();
        let seconds = self.started.elapsed().as_secs_f64();
        metrics.count_request(series, (self.direction, peer), status, seconds);
        let resp = dialect.answer(resp);
        let end = self.entry.take().map(|(mut record, log)| {
            record.status = status.as_u16();
            record.grpc_status = grpc_status_of(resp.headers());
            let bytes_in = self.bytes_in.take().unwrap_or_default();
            body::End::new(record, log, self.started, bytes_in)
        });
        let bytes_out = series.bytes_out.clone();
        resp.map(|b| Observed::new(b, bytes_out, end))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Not finished: the request's future was dropped before any response.
        if let Some((mut record, log)) = self.entry.take() {
            record.duration = self.started.elapsed();
            record.bytes_in = self.bytes_in.as_ref().map_or(0, |b| b.load(Relaxed));
            log.push(*record);
        }
    }
}

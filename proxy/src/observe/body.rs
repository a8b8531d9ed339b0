//! The body wrappers that count what crosses the sidecar: [`Metered`] on a request body,
//! [`Observed`] on a response body, which also ends its request's exchange — writing the
//! access-log entry — when it has gone: at its last frame, or when the connection drops it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use prometheus::IntCounter;

use crate::access_log::{AccessLog, Record};
use crate::error::grpc_status_of;

/// Counts request body bytes: into the byte counter, and into the entry's total when logging.
pub struct Meter {
    bytes: IntCounter,
    total: Option<Arc<AtomicU64>>,
}

impl Meter {
    /// A meter counting into `bytes` and, if given, `total`.
    pub(super) fn new(bytes: IntCounter, total: Option<Arc<AtomicU64>>) -> Self {
        Meter { bytes, total }
    }

    fn count(&self, n: usize) {
        self.bytes.inc_by(n as u64);
        if let Some(total) = &self.total {
            total.fetch_add(n as u64, Relaxed);
        }
    }
}

/// A request body on its way upstream, its data bytes counted by a [`Meter`].
pub struct Metered<B> {
    inner: B,
    meter: Meter,
}

impl<B> Metered<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, meter: Meter) -> Self {
        Metered { inner, meter }
    }
}

impl<B: Body + Unpin> Body for Metered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            self.meter.count(data.map_or(0, Buf::remaining));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The end of an exchange that is being logged: the entry, where it goes, and the totals.
/// The access-log side of one exchange, from its head to its end: the entry being filled in,
/// where it goes, and the byte totals. Dropping it writes the entry — wherever the exchange
/// ended: with its response body ([`Observed`]), or before any response (status
/// [`crate::access_log::CLIENT_CLOSED`]).
pub(super) struct End {
    /// Always `Some` until the drop takes it.
    record: Option<Record>,
    log: AccessLog<Record>,
    started: Instant,
    /// Request body bytes, shared with the request body's [`Meter`].
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl End {
    /// The end of the exchange that started at `started`, logging `record` to `log`.
    pub(super) fn new(record: Record, log: AccessLog<Record>, started: Instant) -> Box<Self> {
        Box::new(End {
            record: Some(record),
            log,
            started,
            bytes_in: Arc::default(),
            bytes_out: 0,
        })
    }

    /// The entry, to fill in.
    pub(super) fn record(&mut self) -> Option<&mut Record> {
        self.record.as_mut()
    }

    /// The request body's byte total, for its [`Meter`].
    pub(super) fn bytes_in(&self) -> Arc<AtomicU64> {
        self.bytes_in.clone()
    }
}

impl Drop for End {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.duration = self.started.elapsed();
            r.bytes_in = self.bytes_in.load(Relaxed);
            r.bytes_out = self.bytes_out;
            self.log.push(r);
        }
    }
}

/// A response body on its way downstream: its data bytes counted, its `grpc-status` trailer
/// read, and its exchange's entry written when it has gone.
pub struct Observed<B> {
    inner: B,
    bytes: IntCounter,
    end: Option<Box<End>>,
}

impl<B> Observed<B> {
    /// Wraps `inner`, counting into `bytes`, ending `end` (if logging) when it has gone.
    pub(super) fn new(inner: B, bytes: IntCounter, end: Option<Box<End>>) -> Self {
        Observed { inner, bytes, end }
    }
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let n = data.remaining();
                    self.bytes.inc_by(n as u64);
                    if let Some(end) = &mut self.end {
                        end.bytes_out += n as u64;
                    }
                } else if let (Some(trailers), Some(end)) = (f.trailers_ref(), &mut self.end) {
                    if let Some(r) = &mut end.record {
                        r.grpc_status = grpc_status_of(trailers).or(r.grpc_status);
                    }
                }
            }
            // The body is done (or failed): the exchange ends now, not when hyper drops it.
            None | Some(Err(_)) => drop(self.end.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

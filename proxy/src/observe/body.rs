//! The body wrappers that count what crosses the sidecar: one wrapper, [`Counted`], telling each
//! frame to a [`Tally`]: [`Metered`] on a request body counts its bytes ([`Meter`]);
//! [`Observed`] on a response body also reads its `grpc-status` trailer and ends its request's
//! exchange — writing the access-log entry — when it has gone: at its last frame, or when the
//! connection drops it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::HeaderMap;
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
}

impl Tally for Meter {
    fn data(&mut self, n: usize) {
        self.bytes.inc_by(n as u64);
        if let Some(total) = &self.total {
            total.fetch_add(n as u64, Relaxed);
        }
    }
}

/// What a [`Counted`] body tells of its frames as they go by.
pub trait Tally {
    /// A data frame of `n` bytes.
    fn data(&mut self, n: usize);
    /// The trailers.
    fn trailers(&mut self, _trailers: &HeaderMap) {}
    /// The body is done, or failed.
    fn end(&mut self) {}
}

/// A body whose frames are told to a [`Tally`] as they go by; nothing else changes.
pub struct Counted<B, T> {
    inner: B,
    tally: T,
}

/// A request body on its way upstream, its data bytes counted by a [`Meter`].
pub type Metered<B> = Counted<B, Meter>;

/// A response body on its way downstream: its data bytes counted, its `grpc-status` trailer
/// read, and its exchange's entry written when it has gone ([`ResponseMeter`]).
pub type Observed<B> = Counted<B, ResponseMeter>;

impl<B, T> Counted<B, T> {
    /// Wraps `inner`, telling its frames to `tally`.
    pub fn new(inner: B, tally: T) -> Self {
        Counted { inner, tally }
    }
}

impl<B: Body + Unpin, T: Tally + Unpin> Body for Counted<B, T> {
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
                    self.tally.data(data.remaining());
                } else if let Some(trailers) = f.trailers_ref() {
                    self.tally.trailers(trailers);
                }
            }
            // The body is done (or failed): say so now, not when hyper drops it.
            None | Some(Err(_)) => self.tally.end(),
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

/// What an [`Observed`] response body tells: its bytes into the byte counter and, when logging,
/// into its exchange's entry, with the `grpc-status` of its trailers; its end ends the exchange.
pub struct ResponseMeter {
    bytes: IntCounter,
    end: Option<Box<End>>,
}

impl ResponseMeter {
    /// Counts into `bytes`, ending `end` (if logging) when the body has gone.
    pub(super) fn new(bytes: IntCounter, end: Option<Box<End>>) -> Self {
        ResponseMeter { bytes, end }
    }
}

impl Tally for ResponseMeter {
    fn data(&mut self, n: usize) {
        self.bytes.inc_by(n as u64);
        if let Some(end) = &mut self.end {
            end.bytes_out += n as u64;
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(r) = self.end.as_mut().and_then(|end| end.record.as_mut()) {
            r.grpc_status = grpc_status_of(trailers).or(r.grpc_status);
        }
    }

    fn end(&mut self) {
        drop(self.end.take());
    }
}

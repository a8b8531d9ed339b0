//! HTTP/1.1 upstream connections owned by one downstream connection at a time.
//!
//! An HTTP/1.1 connection carries one request at a time, so the cheapest way to forward a
//! downstream HTTP/1.1 connection is to give it an upstream connection of its own: no pool
//! lookup per request, no lock shared across connections, and no HTTP/2 stream bookkeeping or
//! header compression on the hot path. This is how the nginx and haproxy sidecar pairs that
//! `make bench` compares us with work. For Tether it measured faster than sharing one HTTP/2
//! connection up to [`DEDICATED_UP_TO`] open downstream connections; beyond that the shared
//! connection wins on CPU and memory (README, Performance).
//!
//! [`Held`] is the slot an inbound connection keeps its app connection in between requests (the
//! outbound keeps one per peer address). [`IdlePool`] takes the connections of downstream
//! connections that closed, so the next one skips the TCP and TLS handshakes; the inbound's
//! shared app connections live in one too, given back as each response head arrives. [`send`]
//! sends on a kept connection and replaces it if the other side closed it meanwhile.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::error::{Error, Hop};

/// How many downstream connections may hold an upstream connection each: beyond this many open
/// downstream connections, requests share connections instead (the outbound's HTTP/2 connection
/// under `peer_protocol = "auto"`, the inbound's pool of app connections), so a sidecar with
/// 1,000 mostly idle connections does not also hold 1,000 upstream ones. Two interleaved
/// `make bench` runs of both outbound modes at 1–32 client connections had dedicated
/// connections ahead up to 16 (1.3× at 1) and the shared HTTP/2 connection ahead at 32.
pub const DEDICATED_UP_TO: usize = 16;

/// Counts one open downstream connection for as long as it lives (see [`DEDICATED_UP_TO`]).
pub struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    /// Counts one more open connection in `count`.
    pub fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        OpenGuard(count.clone())
    }

    /// Whether the open connections are few enough for each to hold its own upstream one.
    pub fn may_hold(&self) -> bool {
        self.0.load(Ordering::Relaxed) <= DEDICATED_UP_TO
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream HTTP/1.1 connection plus what it was made for (`T`: the route, address and
/// credentials, so a rotated certificate or another route never reuses it), sending request
/// bodies of type `B`.
pub struct Conn<T, B> {
    /// Sends requests; the connection itself runs in its own task.
    pub sender: SendRequest<B>,
    /// What the connection was made for.
    pub tag: T,
}

impl<T, B> Conn<T, B> {
    /// Whether the connection can take a request right now: open, and done with the previous
    /// response. A connection still busy (its last response body not fully read yet) or closed
    /// by the peer is not reused.
    pub fn is_ready_now(&mut self) -> bool {
        matches!(self.sender.ready().now_or_never(), Some(Ok(())))
    }
}

/// The upstream connection one downstream connection holds between its requests.
pub struct Held<T, B> {
    slot: Mutex<Option<Conn<T, B>>>,
}

impl<T, B> Default for Held<T, B> {
    fn default() -> Self {
        Held {
            slot: Mutex::new(None),
        }
    }
}

impl<T, B> Held<T, B> {
    /// Takes the held connection out, if any. The caller puts it back with [`Held::put`] once
    /// the request was sent, or hands it to an [`IdlePool`].
    pub fn take(&self) -> Option<Conn<T, B>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Keeps `conn` for the next request of this downstream connection.
    pub fn put(&self, conn: Conn<T, B>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    }
}

/// Upstream connections not held by a downstream connection, newest last: the held ones of
/// downstream connections that closed, and the inbound's shared app connections between
/// requests.
pub struct IdlePool<T, B> {
    idle: Mutex<Vec<(Instant, Conn<T, B>)>>,
    max: usize,
    max_age: Duration,
}

impl<T, B> IdlePool<T, B> {
    /// A pool keeping at most `max` connections, each for at most `max_age` (the peer closes
    /// idle connections on its own schedule; an old one is more likely already gone).
    pub fn new(max: usize, max_age: Duration) -> Self {
        IdlePool {
            idle: Mutex::new(Vec::new()),
            max,
            max_age,
        }
    }

    /// The newest connection that `accept` takes and that is ready. Stale or closed ones, and
    /// ones `accept` refuses, are dropped on the way (which closes them); busy ones (still
    /// reading the response they carried when given back) stay for a later request.
    pub fn pop(&self, accept: impl Fn(&T) -> bool) -> Option<Conn<T, B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for i in (0..idle.len()).rev() {
            let (since, conn) = &mut idle[i];
            let usable = now.duration_since(*since) < self.max_age && accept(&conn.tag);
            match conn.sender.ready().now_or_never() {
                Some(Ok(())) if usable => return Some(idle.remove(i).1),
                None if usable => {}
                _ => drop(idle.remove(i)),
            }
        }
        None
    }

    /// Gives back a connection for other requests: right after its response head arrived, as
    /// the inbound's shared app connections are, or when its downstream connection closed. One
    /// still reading that response is kept, and [`IdlePool::pop`] hands it out once it is done;
    /// a closed one is dropped. When full, the oldest is closed to make room (nginx's
    /// `keepalive N` too closes what is past its limit).
    pub fn give_back(&self, conn: Conn<T, B>) {
        if self.max == 0 || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max {
            idle.remove(0);
        }
        idle.push((Instant::now(), conn));
    }
}

/// Sends `req` on `kept` (a connection kept from an earlier request) or, without one, on a
/// connection from `connect`; returns the response and the connection, to keep for the next
/// request. A kept connection can have been closed by the other side while idle: then hyper hands
/// back the request it never sent, and it goes once more on a new connection. A request is never
/// sent twice. Failures are `hop`'s.
pub async fn send<T, B, Fut>(
    hop: Hop,
    kept: Option<Conn<T, B>>,
    mut connect: impl FnMut() -> Fut,
    mut req: Request<B>,
    timeout: Duration,
) -> Result<(Response<Incoming>, Conn<T, B>), Error>
where
    B: hyper::body::Body + 'static,
    Fut: Future<Output = Result<Conn<T, B>, Error>>,
{
    let mut reused = kept.is_some();
    let mut next = kept;
    loop {
        let mut conn = match next.take() {
            Some(c) => c,
            None => connect().await?,
        };
        match tokio::time::timeout(timeout, conn.sender.try_send_request(req)).await {
            Ok(Ok(resp)) => return Ok((resp, conn)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(unsent) if reused => {
                    tracing::debug!(
                        "kept connection closed ({}); sending on a new one",
                        e.error()
                    );
                    req = unsent;
                    reused = false;
                }
                _ => return Err(Error::failed(hop, e.into_error())),
            },
            Err(_) => return Err(Error::Timeout(hop)),
        }
    }
}

//! The accept loop every listener runs: the sidecar's inbound, outbound, TCP-service and admin
//! listeners, and the CA's API and metrics listeners.
//!
//! Extra connections beyond the limit are not queued, so an overloaded process sheds load instead
//! of stalling everyone. A listener may keep a small overflow band past its limit: connections
//! in it are still handed over, marked [`Admission::OverLimit`], so that the listener can tell
//! the client why it is refused (a `503`, a gRPC RESOURCE_EXHAUSTED) instead of leaving it a
//! bare transport failure. Past the band they are closed at once. The warning that the limit
//! was reached is logged for the first such connection and then at most once a second, with a
//! count, so a flood does not turn into a log flood. Each connection runs in its own task inside
//! a `conn` span naming the listener, the peer address and (once verified) the caller's identity,
//! so every log line of a connection can be told apart. After shutdown, HTTP connections registered with their [`Watcher`] are asked
//! to finish what is in flight, and every connection task — HTTP, an upgraded stream, a TCP
//! splice — gets the drain time to end; whatever is still running then is closed (its task is
//! aborted), so no connection outlives the listener's drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long the loop pauses after a failed accept (out of file descriptors and the like):
/// long enough not to spin on the error, short enough that recovery is not noticed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often the "connection limit reached" warning may repeat under a flood: often enough to
/// show an operator that it goes on, and how much, rarely enough to cost nothing.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(1);

/// The limits one listener runs under.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How many connections past `max_connections` are still handed over, as
    /// [`Admission::OverLimit`], to be refused in words the client reads; more are closed as
    /// they arrive. 0: every connection past the limit is closed at once.
    pub overflow: usize,
    /// After shutdown, how long in-flight work gets to finish.
    pub drain: Duration,
}

/// How a connection was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within `max_connections`: serve it.
    Admitted,
    /// Past `max_connections`, in the overflow band: refuse it readably, and quickly, since the
    /// band is small and a slow refusal holds a place in it.
    OverLimit,
}

/// Accepts on `listener` until `shutdown` resolves, handing each connection, its peer address,
/// a drain watcher and its [`Admission`] to `handle`, which runs in a task of its own inside a
/// span named after `name` (e.g. `"inbound"`). A connection counts against the limit, or
/// against the overflow band, until `handle`'s future completes. Returns after the drain, with
/// every connection task ended.
pub async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr, Watcher, Admission) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut gate = Gate::new(name, &limits);
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            // A finished task keeps its cell, the size of the connection's whole future, until
            // it is joined. Joined only at the next accept, a burst's memory stayed in the set
            // after it ended (17 MiB after 4,000 connections closed): reap each one as it ends.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = name, "accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some((permit, admission)) = gate.admit(peer) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let over_limit = admission == Admission::OverLimit;
        // At info, so the default log level's lines carry it; `identity` is the caller's SPIFFE
        // ID, recorded by the handler once its handshake has verified one.
        let span = tracing::info_span!(
            "conn",
            listener = name,
            %peer,
            over_limit,
            identity = tracing::field::Empty
        );
        let fut = handle(tcp, peer, graceful.watcher(), admission);
        tasks.spawn(
            async move {
                fut.await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    let drained = async {
        graceful.shutdown().await;
        while tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(limits.drain, drained).await.is_err() {
        tracing::warn!(
            listener = name,
            "drain timeout ({:?}) reached with work still in flight; closing it",
            limits.drain
        );
    }
    // Dropping the set aborts what is left: those connections close now.
}

/// Where a listener's connections take their place: the limit, then the overflow band.
struct Gate {
    name: &'static str,
    max_connections: usize,
    permits: Arc<Semaphore>,
    /// Separate, so that a refusal never takes a place a served connection could have.
    overflow: Arc<Semaphore>,
    log: LimitLog,
}

impl Gate {
    fn new(name: &'static str, limits: &ListenerLimits) -> Self {
        Gate {
            name,
            max_connections: limits.max_connections,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            overflow: Arc::new(Semaphore::new(limits.overflow)),
            log: LimitLog::default(),
        }
    }

    /// A place for the connection from `peer`, held until the permit drops, and how it was let
    /// in; `None`: shed it. Either way past the limit, the warning is noted (rate-limited).
    fn admit(&mut self, peer: SocketAddr) -> Option<(OwnedSemaphorePermit, Admission)> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some((permit, Admission::Admitted));
        }
        let over = self.overflow.clone().try_acquire_owned().ok();
        if let Some(LimitReport { refused, shed }) = self.log.note(over.is_none(), Instant::now()) {
            tracing::warn!(
                listener = self.name,
                "connection limit ({}) reached: {refused} new connection(s) refused since the \
                 last report ({shed} of them closed at once), the latest from {peer}",
                self.max_connections
            );
        }
        over.map(|permit| (permit, Admission::OverLimit))
    }
}

/// The connection-limit warning, rate-limited: how many connections were refused since the
/// last line.
#[derive(Debug, Default)]
struct LimitLog {
    /// When the last line was logged; `None` before the first.
    last: Option<Instant>,
    refused: u64,
    shed: u64,
}

/// What one "connection limit reached" line reports.
#[derive(Debug, PartialEq, Eq)]
struct LimitReport {
    /// Connections refused since the last line, `shed` included.
    refused: u64,
    /// Of those, how many were closed at once (past the overflow band).
    shed: u64,
}

impl LimitLog {
    /// Notes one connection refused at `now` (`shed`: closed at once); returns what to log if a
    /// line is due: for the first refusal, then at most once per [`LIMIT_LOG_EVERY`].
    fn note(&mut self, shed: bool, now: Instant) -> Option<LimitReport> {
        self.refused += 1;
        self.shed += u64::from(shed);
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LIMIT_LOG_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        let report = LimitReport {
            refused: self.refused,
            shed: self.shed,
        };
        (self.refused, self.shed) = (0, 0);
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::AsyncReadExt;

    /// Reads until the peer closes; returns whether it closed without sending anything.
    async fn closed_at_once(mut s: TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// A loop on a fresh loopback port with `handle`; returns its address, the stop switch
    /// and the loop's task.
    async fn start<F, Fut>(
        (max_connections, overflow): (usize, usize),
        drain: Duration,
        handle: F,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )
    where
        F: FnMut(TcpStream, SocketAddr, Watcher, Admission) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let limits = ListenerLimits {
            max_connections,
            overflow,
            drain,
        };
        let stop = async {
            let _ = stop_rx.await;
        };
        let server = tokio::spawn(serve("test", listener, limits, stop, handle));
        (addr, stop_tx, server)
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_a_freed_slot_is_reused() {
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let (addr, stop_tx, server) = start((1, 0), Duration::from_secs(1), move |tcp, _, _, _| {
            let mut release = release_rx.clone();
            async move {
                let _ = release.wait_for(|r| *r).await;
                drop(tcp);
            }
        })
        .await;
        let first = TcpStream::connect(addr).await.unwrap();
        // Let the loop hand the first connection its permit before the second arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_at_once(second).await,
            "second connection was not shed"
        );
        release_tx.send(true).unwrap();
        assert!(closed_at_once(first).await);
        // The slot is free again: a new connection is served (held until release, which is set).
        let third = TcpStream::connect(addr).await.unwrap();
        assert!(closed_at_once(third).await);
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("loop returns after shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn after_the_drain_every_connection_task_is_closed() {
        let (addr, stop_tx, server) = start(
            (4, 0),
            Duration::from_millis(300),
            |tcp, _, _, _| async move {
                // Work that never ends on its own (an upgraded stream, a TCP splice).
                let _held = tcp;
                std::future::pending::<()>().await;
            },
        )
        .await;
        let conn = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("loop returns after the drain time")
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "did not drain: {waited:?}"
        );
        assert!(
            closed_at_once(conn).await,
            "the connection outlived the drain"
        );
    }

    /// Connects to `addr`; returns the connection and the admission its handler reported.
    async fn connect_seen(
        addr: SocketAddr,
        seen: &mut tokio::sync::mpsc::UnboundedReceiver<Admission>,
    ) -> (TcpStream, Option<Admission>) {
        let conn = TcpStream::connect(addr).await.unwrap();
        let admission = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
        (conn, admission.ok().flatten())
    }

    #[tokio::test]
    async fn past_the_limit_the_overflow_band_is_handed_over_marked_and_beyond_it_shed() {
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let (addr, stop_tx, server) = start(
            (1, 2),
            Duration::from_secs(1),
            move |tcp, _, _, admission| {
                let (seen_tx, mut release) = (seen_tx.clone(), release_rx.clone());
                async move {
                    let _ = seen_tx.send(admission);
                    let _ = release.wait_for(|r| *r).await;
                    drop(tcp);
                }
            },
        )
        .await;
        let (first, a) = connect_seen(addr, &mut seen).await;
        let (second, b) = connect_seen(addr, &mut seen).await;
        let (third, c) = connect_seen(addr, &mut seen).await;
        use Admission::*;
        assert_eq!(
            [a, b, c],
            [Some(Admitted), Some(OverLimit), Some(OverLimit)]
        );
        // The band is full too: the next one is closed at once, and never handed over.
        let fourth = TcpStream::connect(addr).await.unwrap();
        assert!(closed_at_once(fourth).await, "fourth connection not shed");
        assert!(
            seen.try_recv().is_err(),
            "a shed connection was handed over"
        );
        release_tx.send(true).unwrap();
        for conn in [first, second, third] {
            assert!(closed_at_once(conn).await);
        }
        // Both pools are free again: a new connection is admitted, not over the limit.
        let (_fifth, e) = connect_seen(addr, &mut seen).await;
        assert_eq!(e, Some(Admitted));
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("loop returns after shutdown")
            .unwrap();
    }

    #[test]
    fn the_limit_warning_is_logged_first_then_at_most_once_a_second_with_a_count() {
        let mut log = LimitLog::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let report = |refused, shed| Some(LimitReport { refused, shed });
        assert_eq!(log.note(false, at(0)), report(1, 0));
        assert_eq!(log.note(true, at(10)), None);
        assert_eq!(log.note(false, at(500)), None);
        assert_eq!(log.note(true, at(1000)), report(3, 2));
        assert_eq!(log.note(true, at(1999)), None);
        assert_eq!(log.note(false, at(5000)), report(2, 1));
    }
}

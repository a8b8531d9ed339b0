//! The accept loop every listener runs: the sidecar's inbound, outbound, TCP-service and admin
//! listeners, and the CA's API and metrics listeners.
//!
//! Extra connections beyond the limit are closed at once rather than queued, so an overloaded
//! process sheds load instead of stalling everyone. Each connection runs in its own task inside
//! a `conn` span naming the listener and the peer address, so every log line of a connection can
//! be told apart. After shutdown, HTTP connections registered with their [`Watcher`] are asked
//! to finish what is in flight, and every connection task — HTTP, an upgraded stream, a TCP
//! splice — gets the drain time to end; whatever is still running then is closed (its task is
//! aborted), so no connection outlives the listener's drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long the loop pauses after a failed accept (out of file descriptors and the like):
/// long enough not to spin on the error, short enough that recovery is not noticed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits one listener runs under.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// After shutdown, how long in-flight work gets to finish.
    pub drain: Duration,
}

/// Accepts on `listener` until `shutdown` resolves, handing each connection, its peer address
/// and a drain watcher to `handle`, which runs in a task of its own inside a span named after
/// `name` (e.g. `"inbound"`). A connection counts against the limit until `handle`'s future
/// completes. Returns after the drain, with every connection task ended.
pub async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connection tasks so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = name, "accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                listener = name,
                "connection limit ({}) reached; closing new connection from {peer}",
                limits.max_connections
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let span = tracing::debug_span!("conn", listener = name, %peer);
        let fut = handle(tcp, peer, graceful.watcher());
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
        max_connections: usize,
        drain: Duration,
        handle: F,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )
    where
        F: FnMut(TcpStream, SocketAddr, Watcher) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let limits = ListenerLimits {
            max_connections,
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
        let (addr, stop_tx, server) = start(1, Duration::from_secs(1), move |tcp, _, _| {
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
        let (addr, stop_tx, server) =
            start(4, Duration::from_millis(300), |tcp, _, _| async move {
                // Work that never ends on its own (an upgraded stream, a TCP splice).
                let _held = tcp;
                std::future::pending::<()>().await;
            })
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
}

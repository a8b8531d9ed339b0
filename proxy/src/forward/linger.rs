//! Lingering close: a refusal the client can read even while it is still sending.
//!
//! When hyper answers before it has read the whole request — `431` to a header over
//! `max_header_bytes`, a refusal of a request whose body was never read — it writes the answer,
//! shuts down its write side and drops the connection. Closing a socket with unread bytes in it
//! makes the kernel send a TCP reset, and a client still sending (a 1 MB header does not fit in
//! the socket buffers of a real network) gets that reset on its next write and gives up before
//! it reads the answer waiting for it; some stacks discard received data on a reset outright.
//! So, as nginx and Apache do, a connection hyper shut down cleanly is read to its end and the
//! bytes discarded, for at most [`LINGER_FOR`], before it is closed. One with nothing unread is
//! closed at once, as before, and so is one dropped without a shutdown (revoked, drained).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest a closing connection is read and discarded: nginx's default `lingering_timeout`,
/// enough for a client to finish sending a refused header or body over a slow link, short
/// enough that a client which never stops costs a bounded amount of work.
pub const LINGER_FOR: Duration = Duration::from_secs(5);

/// How long a closing connection is watched for unread bytes before it is closed outright:
/// long enough for the runtime to learn of bytes already in the socket, short enough that
/// closing on a silent client costs nothing noticeable.
const PROBE_FOR: Duration = Duration::from_millis(10);

/// How much is discarded per read while lingering: one TLS record.
const DISCARD_CHUNK: usize = 16 * 1024;

/// Where a connection's I/O goes when hyper drops it after shutting it down.
pub struct Closing<I>(Arc<Mutex<Option<I>>>);

impl<I> Default for Closing<I> {
    fn default() -> Self {
        Closing(Arc::default())
    }
}

impl<I> Clone for Closing<I> {
    fn clone(&self) -> Self {
        Closing(self.0.clone())
    }
}

impl<I: AsyncRead + Unpin> Closing<I> {
    /// Wraps `io` for hyper; it lands here once hyper has shut it down and dropped it.
    pub fn wrap(&self, io: I) -> Lingering<I> {
        Lingering {
            io: Some(io),
            shut_down: false,
            closing: self.clone(),
        }
    }

    /// If hyper shut the connection down with bytes left unread, reads and discards them until
    /// the client closes, a read fails, or [`LINGER_FOR`] passes; then the connection closes.
    pub async fn linger(&self) {
        let io = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut io) = io else {
            return;
        };
        // Nothing waiting, or the client closed too (the usual cases): closing now sends no
        // reset.
        let mut probe = [0u8; 1];
        match tokio::time::timeout(PROBE_FOR, io.read(&mut probe)).await {
            Ok(Ok(1)) => {}
            _ => return,
        }
        let mut chunk = vec![0u8; DISCARD_CHUNK];
        let discard = async {
            while let Ok(n) = io.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        };
        if tokio::time::timeout(LINGER_FOR, discard).await.is_err() {
            tracing::debug!("client still sending {LINGER_FOR:?} after our answer; closing");
        }
    }
}

/// A connection's I/O as hyper sees it: every call passes through, and a shutdown is noted so
/// that dropping it hands it to its [`Closing`] to linger.
pub struct Lingering<I: AsyncRead + Unpin> {
    /// Always `Some` until dropped.
    io: Option<I>,
    shut_down: bool,
    closing: Closing<I>,
}

impl<I: AsyncRead + Unpin> Lingering<I> {
    fn io(&mut self) -> io::Result<Pin<&mut I>> {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<I: AsyncRead + Unpin> Drop for Lingering<I> {
    fn drop(&mut self) {
        if self.shut_down {
            let mut slot = self.closing.0.lock().unwrap_or_else(|p| p.into_inner());
            *slot = self.io.take();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Lingering<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().io()?.poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = std::task::ready!(this.io()?.poll_shutdown(cx));
        this.shut_down = done.is_ok();
        Poll::Ready(done)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_shut_down_connection_with_unread_bytes_is_drained_until_the_client_closes() {
        let (mut client, server) = pair().await;
        let closing = Closing::default();
        let mut io = closing.wrap(server);
        client.write_all(&[b'x'; 100_000]).await.unwrap();
        io.write_all(b"HTTP/1.1 431 \r\n\r\n").await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let linger = tokio::spawn(async move { closing.linger().await });
        // The client reads the answer, then closes: the linger ends with it.
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 431 \r\n\r\n");
        drop(client);
        tokio::time::timeout(Duration::from_secs(4), linger)
            .await
            .expect("the linger ends when the client closes")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn with_nothing_unread_the_connection_closes_without_lingering() {
        let (mut client, server) = pair().await;
        let closing = Closing::default();
        let mut io = closing.wrap(server);
        io.shutdown().await.unwrap();
        drop(io);
        // The client stays open and silent: only the probe is waited for, not LINGER_FOR.
        let started = tokio::time::Instant::now();
        closing.linger().await;
        assert!(started.elapsed() < LINGER_FOR, "{:?}", started.elapsed());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed cleanly, nothing sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_stops_sending_is_cut_off_after_linger_for() {
        let (mut client, server) = pair().await;
        let closing = Closing::default();
        let mut io = closing.wrap(server);
        client.write_all(b"x").await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let trickle = tokio::spawn(async move {
            while client.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = tokio::time::Instant::now();
        closing.linger().await;
        assert!(started.elapsed() >= LINGER_FOR);
        trickle.abort();
    }

    #[tokio::test]
    async fn a_connection_dropped_without_a_shutdown_is_not_kept() {
        let (mut client, server) = pair().await;
        let closing = Closing::default();
        client.write_all(b"more").await.unwrap();
        drop(closing.wrap(server));
        // Nothing to linger over: returns at once, and the client sees the connection end.
        closing.linger().await;
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}

//! The shared HTTP/2 connection to a peer sidecar, on the `h2` crate (hyper's own HTTP/2 engine)
//! without hyper's client on top.
//!
//! hyper's HTTP/2 client hands each request to the connection's task over a channel, and spawns
//! a task per request to await its response and send it back over another, copying the
//! request's state into it (1.6 k instructions of `memcpy` per request). Without them the
//! outbound spends 14 % fewer instructions per request at 32 connections (callgrind: 40.6 k
//! against 47.3 k). Here a request opens its stream and awaits its
//! response in its own task ([`send`]); only a request body still being sent when the request
//! goes gets a task of its own ([`pipe`]), as with hyper. The connection's settings are hyper's
//! client defaults, and it is kept alive by pings ([`handshake`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};

use super::connect::PeerTls;
use super::PeerBody;

/// hyper's HTTP/2 client defaults, kept: windows larger than the protocol's 64 KiB, so one
/// stream's transfer is not paced by round trips (5 MiB for the connection, 2 MiB per stream),
/// 16 KiB frames, 1 MiB buffered per stream, 16 KiB of response header.
const CONNECTION_WINDOW: u32 = 5 << 20;
const STREAM_WINDOW: u32 = 2 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 1 << 20;
const MAX_HEADER_LIST: u32 = 16 << 10;

/// How long a keep-alive ping may go unanswered before the connection is given up (hyper's
/// default, which the outbound used before), or the ping interval if that is shorter.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens streams on one shared connection; cloned for each request (each clone takes the
/// connection's lock twice, to count itself and to uncount itself, so one per request).
#[derive(Clone)]
pub struct Session(h2::client::SendRequest<Bytes>);

impl Session {
    /// Whether the connection can no longer open streams: it ended, or the peer sent GOAWAY.
    /// One at its stream limit is still open (a request waits for a stream). The session kept
    /// between requests has opened no stream itself, so asking it changes nothing.
    pub fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(self.0.poll_ready(&mut cx), Poll::Ready(Err(_)))
    }
}

/// The HTTP/2 handshake on `tls`: the session, and the connection's future, which runs the
/// connection until it ends, pinging the peer every `ping_every`. A peer that leaves a ping
/// unanswered for [`PING_TIMEOUT`] (or `ping_every`, if shorter) is given up: the connection
/// ends, and with it every request still waiting on it. Pings go while the connection is idle
/// too; they are 17 bytes each way.
pub async fn handshake(
    tls: PeerTls,
    ping_every: Duration,
) -> Result<(Session, impl Future<Output = Result<(), String>>), h2::Error> {
    let (tx, mut conn) = h2::client::Builder::new()
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_window_size(STREAM_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await?;
    let pinger = conn.ping_pong();
    let answer_within = PING_TIMEOUT.min(ping_every);
    let run = async move {
        let pings = async move {
            let Some(mut pinger) = pinger else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(ping_every).await;
                let pong = tokio::time::timeout(answer_within, pinger.ping(h2::Ping::opaque()));
                match pong.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
                    Err(_) => {
                        return format!("no answer to a keep-alive ping in {answer_within:?}")
                    }
                }
            }
        };
        tokio::select! {
            r = conn => r.map_err(|e| e.to_string()),
            e = pings => Err(e),
        }
    };
    Ok((Session(tx), run))
}

/// Sends `req` on `session` and awaits its response head. A request with a body opens its stream
/// at once and sends the body from a task of its own ([`pipe`]), for as long as it takes: a
/// streaming call's body can go on after the response head.
pub async fn send(session: Session, req: Request<PeerBody>) -> Result<Response<H2Body>, h2::Error> {
    let (parts, body) = req.into_parts();
    let done = body.is_end_stream();
    let mut tx = session.0.ready().await?;
    let (response, stream) = tx.send_request(Request::from_parts(parts, ()), done)?;
    if !done {
        tokio::spawn(pipe(body, stream));
    }
    let resp = response.await?;
    Ok(resp.map(|recv| H2Body {
        recv,
        data_done: false,
    }))
}

/// Sends a request body on its stream, within the peer's flow-control windows, then its
/// trailers if it has any. If the body fails, or the stream is gone, the stream is reset.
async fn pipe(mut body: PeerBody, mut stream: h2::SendStream<Bytes>) {
    let sent = async {
        while let Some(frame) = body.frame().await {
            match frame.map_err(|e| e.to_string())?.into_data() {
                Ok(data) => send_data(&mut stream, data).await?,
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_else(|_| HeaderMap::new());
                    return stream.send_trailers(trailers).map_err(|e| e.to_string());
                }
            }
        }
        stream
            .send_data(Bytes::new(), true)
            .map_err(|e| e.to_string())
    };
    if let Err(e) = sent.await {
        tracing::debug!("request body to the peer ended: {e}");
        stream.send_reset(h2::Reason::CANCEL);
    }
}

/// Sends `data` as the peer's window allows.
async fn send_data(stream: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), String> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .ok_or("the stream closed")?
            .map_err(|e| e.to_string())?;
        if granted > 0 {
            let chunk = data.split_to(granted.min(data.len()));
            stream.send_data(chunk, false).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A response body from the peer: its data, each chunk's window given back as it is passed on,
/// then its trailers. Its length, when the peer gave one, is in the response's
/// `content-length`, which the downstream's framing reads.
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window is ours to give back: what was read is no longer buffered.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

//! Refusing a connection that came in past the listener's `max_connections`, in its overflow
//! band ([`tether_net::Admission::OverLimit`]), so the client reads why: every request on it is
//! answered [`Error::Overloaded`] in the request's dialect (`503`, gRPC RESOURCE_EXHAUSTED), and
//! nothing is forwarded or asked of the policy. The connection closes right after the first
//! answer, and in any case [`REFUSE_WITHIN`] after it was accepted, so the band, which is small,
//! frees quickly and a client that never sends holds its place only briefly.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::error::{Dialect, Error, RespBody};

use super::{linger, HttpServer};

/// The longest an over-limit connection lives, from accept to close, the inbound's mTLS
/// handshake included: ample for a handshake and one request on a loaded host, and short, so
/// that connections in the band turn over fast and a slow or silent client cannot keep refusals
/// from the next callers (past the band they are shed, as before there was one).
pub const REFUSE_WITHIN: Duration = Duration::from_secs(2);

/// The smallest overflow band: even a listener with a tiny limit tells a few callers at once.
const BAND_MIN: usize = 8;

/// The largest overflow band: each refusal costs a handshake at the inbound, so however large
/// the limit, a flood gets a bounded amount of that work; the rest is shed.
const BAND_MAX: usize = 64;

/// The overflow band of an HTTP listener with `max_connections`: an eighth of the limit, within
/// [`BAND_MIN`]..=[`BAND_MAX`].
pub fn band(max_connections: usize) -> usize {
    (max_connections / 8).clamp(BAND_MIN, BAND_MAX)
}

/// Serves one over-limit connection. `accept` yields its stream and the counter its refusals
/// count in (`tether_requests_total{code="503"}`); at the inbound that is after the usual mTLS
/// handshake, and a caller that fails it gets nothing more than it always did. Then HTTP/1.1 or
/// HTTP/2 is served with each request refused, and the connection closes after the first
/// answer: with `Connection: close` on HTTP/1.1, and with GOAWAY on HTTP/2 (a stream already
/// open is still answered). After [`REFUSE_WITHIN`] it is closed whatever its state.
pub async fn refuse<I>(
    server: &HttpServer,
    accept: impl Future<Output = Option<(I, prometheus::IntCounter)>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let refusal = async {
        let Some((io, refused)) = accept.await else {
            return;
        };
        let answered = Arc::new(Notify::new());
        let notify = answered.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            refused.inc();
            // Stores a permit if the connection is not waiting yet: the first answer is never
            // missed.
            notify.notify_one();
            std::future::ready(Ok::<_, Infallible>(answer(&req)))
        });
        let closing = linger::Closing::default();
        let conn = server
            .0
            .serve_connection(TokioIo::new(closing.wrap(io)), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = answered.notified() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
        }
        // A client still sending its refused request reads the answer, not a reset.
        closing.linger().await;
    };
    if tokio::time::timeout(REFUSE_WITHIN, refusal).await.is_err() {
        tracing::debug!("closed over-limit connection after {REFUSE_WITHIN:?}");
    }
}

/// The refusal of `req`, in its dialect; on HTTP/1.x it also says the connection closes.
fn answer(req: &Request<Incoming>) -> Response<RespBody> {
    let mut resp = Dialect::of(req.headers()).answer(Error::Overloaded.into_response());
    // HTTP/2 has no `Connection` field (RFC 9113 §8.2.2): GOAWAY says it there.
    if req.version() <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

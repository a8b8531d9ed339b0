//! Request bodies: reading a JSON body within [`MAX_BODY`], and discarding what an answer left
//! unread so that the answer reaches the client.
//!
//! An answer can come before the body is read: a 413 decided from `Content-Length`, the rest of
//! a body past the limit, a 401/404/405 that never looks at it. If the server then stopped
//! reading, HTTP/1.1 closes the connection with the client's bytes still unread, and the TCP
//! reset that this causes can destroy the answer before the client reads it; over h2 the
//! stream is reset while the client is still sending, which some clients (curl 7.x) report as
//! a failure instead of the answer. So the edge hands what is left to [`RequestBody::discard`],
//! which keeps reading and dropping it on its own task — bounded in bytes and time — while the
//! answer goes out (a lingering close, as nginx and Apache do it).

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::routes::Fail;
use super::{DRAIN_LIMIT, DRAIN_TIME, MAX_BODY};

/// A request body, until a handler reads it.
pub(super) struct RequestBody(Option<Incoming>);

impl RequestBody {
    /// The body of a request that no one has read yet.
    pub(super) fn new(body: Incoming) -> Self {
        RequestBody(Some(body))
    }

    /// Reads a JSON body of at most [`MAX_BODY`] bytes: 413 beyond it (judged from
    /// `Content-Length` before reading when it is given), 400 if it does not parse (unknown
    /// fields included). On a 413 the unread rest stays here for [`RequestBody::discard`].
    pub(super) async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        headers: &HeaderMap,
    ) -> Result<T, Fail> {
        let too_large = || {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            )
        };
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
        {
            if len.parse::<usize>().map(|n| n > MAX_BODY).unwrap_or(true) {
                return Err(too_large());
            }
        }
        let bytes = self.read_within(MAX_BODY).await?.ok_or_else(too_large)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
    }

    /// The whole body if it is at most `limit` bytes (`None`: longer; the rest is left unread).
    async fn read_within(&mut self, limit: usize) -> Result<Option<Bytes>, Fail> {
        let Some(body) = self.0.as_mut() else {
            return Ok(Some(Bytes::new()));
        };
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("could not read body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Ok(None);
                }
                buf.extend_from_slice(&data);
            }
        }
        self.0 = None;
        Ok(Some(buf.freeze()))
    }

    /// Reads and drops what is left unread, on its own task, up to [`DRAIN_LIMIT`] bytes and
    /// [`DRAIN_TIME`]; returns whether anything was left (the HTTP/1.1 answer then says
    /// `Connection: close`, so the client stops sending). Must run on the runtime.
    pub(super) fn discard(self) -> bool {
        let Some(mut body) = self.0.filter(|b| !b.is_end_stream()) else {
            return false;
        };
        tokio::spawn(async move {
            let mut left = DRAIN_LIMIT;
            let drain = async {
                while let Some(Ok(frame)) = body.frame().await {
                    let n = frame.data_ref().map_or(0, Bytes::len);
                    if n >= left {
                        break;
                    }
                    left -= n;
                }
            };
            // Past either bound the body is dropped, and the connection closes unread.
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
        true
    }
}

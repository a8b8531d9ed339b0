//! A real gRPC client for the refusal tests: tonic's generic client and status handling over
//! one hyper HTTP/2 connection (this build of tonic has no transport of its own), sending raw
//! bytes as the message, since the refusals are about status, not protobuf.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Raw bytes as the gRPC message: the refusals are about status, not protobuf.
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// tonic's client over one hyper HTTP/2 connection (this build of tonic has no transport).
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResponseFuture {
        Box::pin(self.0.send_request(req))
    }
}

/// One unary gRPC call to `path` at `origin` (`http://service`), over HTTP/2 on `io`.
pub async fn rpc<I>(io: I, origin: &str, path: &'static str) -> Result<Bytes, Status>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let origin = http::Uri::try_from(origin).unwrap();
    let mut grpc = tonic::client::Grpc::with_origin(H2(sender), origin);
    grpc.ready().await.unwrap();
    let request = tonic::Request::new(Bytes::from_static(b"\x08\x01"));
    let path = PathAndQuery::from_static(path);
    Ok(grpc.unary(request, path, Raw).await?.into_inner())
}

//! A tiny HTTP/1.1 (and h2c) server and client on hyper, shared by the demo apps: enough to serve
//! JSON and to call another service through a sidecar, nothing more.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A request as the apps see it.
pub type Request = hyper::Request<Incoming>;
/// A response with a buffered body.
pub type Response = hyper::Response<Full<Bytes>>;

/// Serves `handler` on `addr` until the process ends.
pub async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        // A failed accept (a connection reset before it was taken, out of descriptors) ends
        // neither the app nor the connections it serves.
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// A JSON response.
pub fn json(status: u16, value: &serde_json::Value) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET http://{via}{path}` with `Host: host` (how an app calls a service through its sidecar):
/// the status and body, or an error string if the sidecar could not be reached.
pub async fn get_via(via: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(via)
        .await
        .map_err(|e| format!("connect {via}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of `--name VALUE` in the process arguments.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `--listen ADDR` (required).
pub fn listen_arg() -> SocketAddr {
    match arg("--listen").and_then(|a| a.parse().ok()) {
        Some(a) => a,
        None => {
            eprintln!("usage: --listen IP:PORT is required");
            std::process::exit(64);
        }
    }
}

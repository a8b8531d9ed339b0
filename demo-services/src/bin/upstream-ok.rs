//! `upstream-ok`: the fastest honest upstream for benchmarks — every request gets `200 ok`.
//!
//! ```sh
//! upstream-ok --listen 127.0.0.1:18080 &
//! curl http://127.0.0.1:18080/     # ok
//! ```

use bytes::Bytes;
use demo_services::http::{listen_arg, serve};
use http_body_util::Full;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    serve(listen_arg(), |_req| async {
        hyper::Response::new(Full::new(Bytes::from_static(b"ok")))
    })
    .await
}

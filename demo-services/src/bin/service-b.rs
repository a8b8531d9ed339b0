//! `service-b`: answers `GET /data` with a little data and the verified caller its sidecar put in
//! `x-forwarded-client-cert`. It knows nothing about TLS.
//!
//! ```sh
//! service-b --listen 127.0.0.1:8082
//! curl -H 'x-forwarded-client-cert: By=x;URI=spiffe://demo.tether/ns/default/sa/service-a' \
//!   http://127.0.0.1:8082/data
//! # {"service":"service-b","data":[1,2,3],"path":"/data","caller":"spiffe://…/service-a","xfcc":"By=x;URI=…"}
//! ```

use demo_services::http::{json, listen_arg, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    serve(listen_arg(), |req| async move {
        let xfcc = req
            .headers()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // The caller is the URI= element the sidecar set; the app trusts only its own sidecar.
        let caller = xfcc
            .split(';')
            .find_map(|kv| kv.strip_prefix("URI="))
            .unwrap_or("")
            .to_string();
        json(
            200,
            &serde_json::json!({
                "service": "service-b",
                "data": [1, 2, 3],
                "path": req.uri().path(),
                "caller": caller,
                "xfcc": xfcc,
            }),
        )
    })
    .await
}

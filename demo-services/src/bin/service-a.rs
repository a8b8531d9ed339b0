//! `service-a`: on any GET, calls `service-b` through its local sidecar (plain HTTP to the
//! sidecar's outbound listener, `Host: service-b`) and returns both answers. It knows nothing
//! about TLS; its sidecar does the mTLS.
//!
//! ```sh
//! service-a --listen 127.0.0.1:8081 --name a-1 --sidecar 127.0.0.1:15001
//! curl http://127.0.0.1:8081/
//! # {"service":"service-a","replica":"a-1","caller":"…","service_b":{…}}   (502 if service-b failed)
//! ```

use demo_services::http::{arg, get_via, json, listen_arg, serve};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let name = arg("--name").unwrap_or_else(|| "service-a".into());
    let Some(sidecar) = arg("--sidecar").and_then(|a| a.parse().ok()) else {
        eprintln!("usage: service-a --listen IP:PORT --sidecar IP:PORT [--name NAME]");
        std::process::exit(64);
    };
    serve(listen_arg(), move |req| {
        let name = name.clone();
        async move {
            let xfcc = req
                .headers()
                .get("x-forwarded-client-cert")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let caller = xfcc
                .split(';')
                .find_map(|kv| kv.strip_prefix("URI="))
                .unwrap_or("")
                .to_string();
            let (status, b) = match get_via(sidecar, "service-b", "/data").await {
                Ok((s, body)) => (
                    s,
                    serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                ),
                Err(e) => (0, serde_json::Value::String(e)),
            };
            let out = serde_json::json!({
                "service": "service-a",
                "replica": name,
                "caller": caller,
                "service_b_status": status,
                "service_b": b,
            });
            json(if status == 200 { 200 } else { 502 }, &out)
        }
    })
    .await
}

//! Mesh-unaware HTTP apps for the Tether demo and tests, and the narrated demo driver.
//!
//! The apps know nothing about TLS or identity: they speak plain HTTP to their own sidecar, which
//! is the point of a mesh. `service-a` calls `service-b` through its local sidecar and returns
//! both answers; `service-b` answers with data and echoes the verified caller its sidecar put in
//! `x-forwarded-client-cert`; `upstream-ok` is a minimal "200 ok" server for benchmarks.
//! `tether-demo` runs the whole mesh on one machine (`make demo`).
//!
//! # Layout
//! - [`http`]: the tiny HTTP server and client the apps share.
//!
//! The bins live in `src/bin/`: `service-a.rs`, `service-b.rs`, `upstream-ok.rs`, and the demo
//! driver `tether-demo/` (`main.rs`; `steps/`, one function per narrated step; `mesh.rs`, the
//! ports and configs; `supervisor.rs`, the child processes; `narrate.rs`; `probes.rs`). The driver
//! keeps its own HTTP and TLS probes because this crate depends on nothing in the workspace.

pub mod http;

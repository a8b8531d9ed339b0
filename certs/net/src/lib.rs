//! The network plumbing both Tether binaries share, so every listener of the sidecar and of the
//! CA behaves the same under load and at shutdown.
//!
//! # Layout
//! - [`serve`]: the one accept loop — a connection limit that sheds instead of queueing, a
//!   back-off on accept errors, a tracing span per connection, and a graceful drain.
//! - [`shutdown_signal`]: resolves on SIGINT or SIGTERM.

mod accept;

pub use accept::{serve, ListenerLimits};
pub use hyper_util::server::graceful::Watcher;

/// Resolves on SIGINT or SIGTERM (the signals supervisors and Kubernetes send to stop a process).
/// If SIGTERM cannot be hooked, only SIGINT ends it.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

//! The network plumbing both Tether binaries share, so every listener of the sidecar and of the
//! CA behaves the same under load and at shutdown.
//!
//! # Layout
//! - [`serve`]: the one accept loop — a connection limit that sheds instead of queueing (with
//!   an optional overflow band of connections handed over only to be refused readably,
//!   [`Admission`]), a back-off on accept errors, a tracing span per connection, and a graceful
//!   drain.
//! - [`shutdown_signal`]: resolves on SIGINT or SIGTERM.
//! - [`init_logging`]: the process log both binaries write, filtered by `TETHER_LOG`.

mod accept;

pub use accept::{serve, Admission, ListenerLimits};
pub use hyper_util::server::graceful::Watcher;

/// Sends the process's log to stderr, filtered by the `TETHER_LOG` environment variable
/// (`tracing` filter syntax, e.g. `debug` or `tether_proxy=debug`; `info` when unset or
/// invalid), with colours only on a terminal. Call once, first thing in `main`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

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

//! The network plumbing both Tether binaries share, so every listener of the sidecar and of the
//! CA behaves the same under load and at shutdown.
//!
//! # Layout
//! - [`serve`]: the one accept loop — a connection limit that sheds instead of queueing (with
//!   an optional overflow band of connections handed over only to be refused readably,
//!   [`Admission`]), a back-off on accept errors, a tracing span per connection, and a graceful
//!   drain.
//! - [`shutdown_signal`]: resolves on SIGINT or SIGTERM.
//! - [`init_logging`]: the process log both binaries write, filtered by `TETHER_LOG`, as text
//!   or JSON ([`LogFormat`]).

mod accept;

pub use accept::{serve, Admission, ListenerLimits};
pub use hyper_util::server::graceful::Watcher;

/// How the process log is written (`--log-format`, `TETHER_LOG_FORMAT`): `text`, the default,
/// for people reading a terminal or `journalctl`; `json`, one JSON object per line, for log
/// pipelines (Loki, Elasticsearch, Cloud Logging) that index fields instead of parsing prose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields and the span list.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: use \"text\" or \"json\""
            )),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Sends the process's log to stderr in `format`, filtered by the `TETHER_LOG` environment
/// variable (`tracing` filter syntax, e.g. `debug` or `tether_proxy=debug`; `info` when unset or
/// invalid), with colours only on a terminal (never in JSON). Call once, first thing in `main`.
pub fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Flattened, so `message` and the event's fields are top-level keys; the span list
        // carries the connection's and the request's fields (peer, service, request id).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
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

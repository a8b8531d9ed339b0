//! The access log: one JSON line per finished request, written off the request path.
//!
//! The request path hands an [`Entry`] (a plain struct, see `record`) to [`AccessLog::push`],
//! which only moves it into a bounded queue and never waits: when the queue is full the entry is
//! dropped and counted in `tether_access_log_dropped_total`. A dedicated OS thread (not a tokio
//! worker: file writes block) serializes each entry, writes the lines in batches and flushes
//! whenever the queue runs empty, so lines appear within milliseconds when idle and go out in
//! large writes under load. A line that cannot be written is lost and counted the same way,
//! with a warning at most every 10 s; the log never panics and never stalls a request.
//!
//! Rotation works the way logrotate expects: the file is reopened at its path on SIGHUP
//! ([`reopen_on_sighup`]), and also without a signal when the writer notices (it looks at most
//! once a second, when it has a line to write) that the path no longer names the file it has
//! open — renamed away or deleted. If reopening fails, the old file is kept and the writer tries
//! again at the next check.
//!
//! - `record`: what one line holds.
//! - `writer`: the writer thread: its target, batching, rotation checks and write errors.

mod record;
mod writer;

pub use record::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use crate::config::AccessLogTarget;
use writer::{Message, Shared};

/// Entries the queue holds before `push` drops. 4096 absorbs a stall of the disk of roughly
/// 100–200 ms at the request rates `make bench` reaches on a small machine (and seconds at
/// ordinary rates), while bounding the memory a stalled writer can pin to about a megabyte
/// (entries are a few hundred bytes with their strings).
pub const QUEUE_CAPACITY: usize = 4096;

/// How often, at most, the writer checks that its path still names the open file: once a second
/// keeps lines from going to a rotated-away file for more than about a second, at the cost of
/// one `stat` per second under load (and none when idle).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long [`AccessLog::close`] waits for the writer: a writer that cannot flush in 5 s is
/// stuck on its target (a pipe nobody reads, a hung disk), and shutdown must not hang on it.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// One access-log entry, serialized as one JSON line on the writer thread.
pub trait Entry: Send + 'static {
    /// Appends the entry as JSON (one object, no newline) to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

/// The access log: a cheap clonable handle. The writer thread ends, after writing and flushing
/// everything queued, when every handle is dropped or at [`AccessLog::close`].
pub struct AccessLog<E: Entry> {
    queue: SyncSender<Message<E>>,
    shared: Arc<Shared>,
}

impl<E: Entry> Clone for AccessLog<E> {
    fn clone(&self) -> Self {
        AccessLog {
            queue: self.queue.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<E: Entry> AccessLog<E> {
    /// Opens the target and starts the writer thread. A file is created if missing (mode 0640,
    /// less the umask: like the web servers' access logs on Debian, readable by a log-shipping
    /// group but never by everyone, since lines carry caller identities and request paths) and
    /// appended to. An unopenable file is an error naming the path. `dropped` counts every
    /// line lost (queue full or a write error).
    pub fn open(target: &AccessLogTarget, dropped: IntCounter) -> std::io::Result<Self> {
        Self::open_checking(target, dropped, CHECK_EVERY)
    }

    /// [`AccessLog::open`] with the interval of the rename check (tests turn it off to see
    /// that `reopen` alone moves to the new file).
    fn open_checking(
        target: &AccessLogTarget,
        dropped: IntCounter,
        check_every: Duration,
    ) -> std::io::Result<Self> {
        let sink = writer::Sink::open(target)?;
        let shared = Arc::new(Shared {
            reopen: AtomicBool::new(false),
            dropped,
        });
        let (queue, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        writer::spawn(sink, rx, shared.clone(), check_every)?;
        Ok(AccessLog { queue, shared })
    }

    /// Queues one entry; never blocks. When the queue is full (or the log is closed) the entry
    /// is dropped and counted.
    pub fn push(&self, entry: E) {
        if self.queue.try_send(Message::Entry(entry)).is_err() {
            self.shared.dropped.inc();
        }
    }

    /// Asks the writer to reopen the file at its path (after logrotate renamed it), before the
    /// next line it writes. A no-op for stdout. If the path cannot be opened, the old file is
    /// kept, with a warning.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
        // Wakes an idle writer. If the queue is full the writer is busy and sees the flag
        // before its next line anyway.
        let _ = self.queue.try_send(Message::Wake);
    }

    /// Writes and flushes everything queued before this call, then stops the writer, waiting
    /// at most 5 s (a stuck target must not hang shutdown; what is still queued then is lost).
    /// Returns whether everything was written. Later pushes are dropped and counted.
    pub async fn close(&self) -> bool {
        let queue = self.queue.clone();
        let done = tokio::task::spawn_blocking(move || writer::close(&queue, CLOSE_LIMIT))
            .await
            .unwrap_or(false);
        if !done {
            tracing::warn!(
                "access log: the writer did not finish within {CLOSE_LIMIT:?}; lines still \
                 queued are lost"
            );
        }
        done
    }
}

/// Reopens `log`, if there is one, on every SIGHUP until the process ends (spawned by `run`
/// whether or not the access log is on). Listening for SIGHUP also stops it from terminating
/// the process, its default action, so a `kill -HUP` meant for logrotate never stops a sidecar.
pub async fn reopen_on_sighup<E: Entry>(log: Option<AccessLog<E>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "access log: cannot listen for SIGHUP; rotation relies on rename detection"
            );
            return;
        }
    };
    while hangups.recv().await.is_some() {
        if let Some(log) = &log {
            tracing::debug!("SIGHUP: reopening the access log");
            log.reopen();
        }
    }
}

#[cfg(test)]
mod tests;

//! The writer thread: it takes entries off the queue, serializes them into one batch and writes
//! the batch whenever the queue runs empty (or the batch is large), checks before a line that
//! its path still names the open file, and counts every line it cannot write.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::Entry;
use crate::config::AccessLogTarget;

/// A batch this large is written even while more entries wait: 64 KiB is a pipe's buffer and
/// a few hundred lines, so a write per batch costs little and memory stays small.
const BATCH_BYTES: usize = 64 * 1024;

/// At most one warning per this interval, so a full disk logs a line every 10 s, not one per
/// request.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Mode of a file the log creates (before the umask); see [`super::AccessLog::open`].
const FILE_MODE: u32 = 0o640;

/// What the handles send to the writer.
pub(super) enum Message<E> {
    /// One line to write.
    Entry(E),
    /// Look at the reopen flag now (an idle writer is otherwise blocked on the queue).
    Wake,
    /// Flush, acknowledge, stop.
    Close(mpsc::Sender<()>),
}

/// What the handles and the writer share.
pub(super) struct Shared {
    /// Set by `reopen`, taken by the writer before its next line.
    pub(super) reopen: AtomicBool,
    /// `tether_access_log_dropped_total`.
    pub(super) dropped: IntCounter,
}

/// Where lines go.
pub(super) enum Sink {
    /// The process's standard output (`"-"`); never reopened.
    Stdout,
    /// A file, reopened at its path on rotation.
    File(OpenFile),
}

/// An open log file and what identifies it on disk.
pub(super) struct OpenFile {
    path: PathBuf,
    file: File,
    /// (device, inode) at open: the path names this file while its own match.
    id: (u64, u64),
}

impl OpenFile {
    /// Opens `path` for appending, creating it with [`FILE_MODE`]; errors name the path.
    fn open(path: &Path) -> io::Result<OpenFile> {
        let named =
            |e: io::Error| io::Error::new(e.kind(), format!("access log {}: {e}", path.display()));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(named)?;
        // A directory fails above: open(2) refuses to open one for writing (EISDIR).
        let meta = file.metadata().map_err(named)?;
        Ok(OpenFile {
            path: path.to_path_buf(),
            file,
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Whether `path` still names the open file (not renamed away, deleted or replaced).
    fn is_current(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
    }
}

impl Sink {
    /// Opens `target`.
    pub(super) fn open(target: &AccessLogTarget) -> io::Result<Sink> {
        match target {
            AccessLogTarget::Stdout => Ok(Sink::Stdout),
            AccessLogTarget::File(path) => OpenFile::open(path).map(Sink::File),
        }
    }

    /// Writes `bytes` whole.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(f) => (&f.file).write_all(bytes),
        }
    }

    /// What to call the target in a warning.
    fn name(&self) -> String {
        match self {
            Sink::Stdout => "stdout".to_owned(),
            Sink::File(f) => f.path.display().to_string(),
        }
    }
}

/// Rate-limits the writer's warnings and carries the count of lines lost between them.
#[derive(Default)]
pub(super) struct Warnings {
    last: Option<Instant>,
    lost: u64,
}

impl Warnings {
    /// Notes `lines` lost (0 for a problem that lost none) because of `problem`, and warns
    /// unless it warned less than [`WARN_EVERY`] before `now`. Returns the count of lines lost
    /// it warned about, or `None` if it kept quiet.
    pub(super) fn note(&mut self, now: Instant, lines: u64, problem: impl Display) -> Option<u64> {
        self.lost += lines;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        let lost = std::mem::take(&mut self.lost);
        tracing::warn!(
            lines_lost = lost,
            "access log: {problem} ({lost} lines lost since the last warning)"
        );
        self.last = Some(now);
        Some(lost)
    }
}

/// The writer thread's state.
struct Writer {
    sink: Sink,
    /// Serialized lines not yet written.
    batch: Vec<u8>,
    /// How many lines `batch` holds (counted as lost if the write fails).
    lines: u64,
    shared: Arc<Shared>,
    check_every: Duration,
    last_check: Instant,
    warnings: Warnings,
}

/// Starts the writer thread on `sink`, fed by `rx`.
pub(super) fn spawn<E: Entry>(
    sink: Sink,
    rx: Receiver<Message<E>>,
    shared: Arc<Shared>,
    check_every: Duration,
) -> io::Result<()> {
    let writer = Writer {
        sink,
        batch: Vec::with_capacity(BATCH_BYTES),
        lines: 0,
        shared,
        check_every,
        last_check: Instant::now(),
        warnings: Warnings::default(),
    };
    // Detached: it ends when every handle is gone, or at `close`, after a last flush.
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer.run(rx))
        .map(drop)
}

/// How long the writer waits for more entries after the queue ran empty before it blocks:
/// long enough that a busy sidecar's requests find it awake (no wake-up per line), short
/// enough that a line is in the file within milliseconds; 10 ms of a busy sidecar's lines is a
/// few hundred entries, far from the queue's capacity.
const LINGER: Duration = Duration::from_millis(10);

impl Writer {
    fn run<E: Entry>(mut self, rx: Receiver<Message<E>>) {
        loop {
            let message = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    // The queue ran empty: write what is batched now, so an idle log is
                    // current within milliseconds. Then linger before blocking: under load the
                    // next entries arrive while we sleep, so a request never has to wake a
                    // blocked writer — a futex wake and a context switch per line, which in
                    // `make bench` (ka32_log) cost more than writing the line.
                    self.flush();
                    std::thread::sleep(LINGER);
                    match rx.try_recv() {
                        Ok(m) => m,
                        Err(TryRecvError::Empty) => match rx.recv() {
                            Ok(m) => m,
                            Err(mpsc::RecvError) => break,
                        },
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.follow_rotation();
            match message {
                Message::Entry(entry) => self.add(&entry),
                Message::Wake => {}
                Message::Close(ack) => {
                    self.flush();
                    // Closed before the ack, so a push after `close` returns finds the queue
                    // disconnected and counts its line as dropped. What was pushed after the
                    // close began is counted as dropped too, and a second close is answered.
                    for late in rx.try_iter() {
                        match late {
                            Message::Entry(_) => self.shared.dropped.inc(),
                            Message::Close(other) => drop(other.send(())),
                            Message::Wake => {}
                        }
                    }
                    drop(rx);
                    let _ = ack.send(());
                    return;
                }
            }
        }
        self.flush();
    }

    /// Serializes `entry` into the batch, writing the batch once it is large.
    fn add<E: Entry>(&mut self, entry: &E) {
        entry.write_json(&mut self.batch);
        self.batch.push(b'\n');
        self.lines += 1;
        if self.batch.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Writes the batch; on an error its lines are lost, counted and warned about.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Err(e) = self.sink.write_all(&self.batch) {
            self.shared.dropped.inc_by(self.lines);
            let problem = format!("cannot write to {}: {e}", self.sink.name());
            self.warnings.note(Instant::now(), self.lines, problem);
        }
        self.batch.clear();
        self.lines = 0;
    }

    /// Reopens the file at its path when asked to (`reopen`), or when a check (at most every
    /// `check_every`) finds that the path names another file or none. The batch so far goes to
    /// the old file. If the path cannot be opened, the old file is kept until the next check.
    fn follow_rotation(&mut self) {
        let asked = self.shared.reopen.swap(false, Ordering::Relaxed);
        let due = self.last_check.elapsed() >= self.check_every;
        if !asked && !due {
            return;
        }
        self.last_check = Instant::now();
        let Sink::File(open) = &self.sink else {
            return;
        };
        if !asked && open.is_current() {
            return;
        }
        let path = open.path.clone();
        self.flush();
        match OpenFile::open(&path) {
            Ok(new) => self.sink = Sink::File(new),
            Err(e) => {
                let problem = format!("cannot reopen, still writing to the old file: {e}");
                self.warnings.note(Instant::now(), 0, problem);
            }
        }
    }
}

/// Sends `Close` and waits for the writer's acknowledgement, both within `limit`. Returns
/// whether everything queued before was written.
pub(super) fn close<E>(queue: &SyncSender<Message<E>>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (ack, acked) = mpsc::channel();
    let mut message = Message::Close(ack);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                message = m;
                // Shutdown only: a short poll while the writer drains a full queue.
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TrySendError::Full(_)) => return false,
            // Already closed: that close flushed.
            Err(TrySendError::Disconnected(_)) => return true,
        }
    }
    acked
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}

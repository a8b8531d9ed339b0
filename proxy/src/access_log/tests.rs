//! Tests of the access log's writer on real files in a temporary directory: order and format of
//! the lines, drops while the writer is stalled on a pipe nobody reads, rotation by rename,
//! delete, `reopen` and SIGHUP, write errors, file mode and unopenable paths.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tether_testkit::{tools, wait::eventually};

use super::writer::Warnings;
use super::*;

/// Generous: a loaded 2-core machine may take a while, and the rename check runs once a second.
const PATIENCE: Duration = Duration::from_secs(20);

/// A test entry: its sequence number, padded so that a pipe's buffer holds few of them.
struct Line(u64);

impl Entry for Line {
    fn write_json(&self, out: &mut Vec<u8>) {
        let line = serde_json::json!({ "seq": self.0, "pad": "x".repeat(100) });
        serde_json::to_writer(out, &line).expect("a Vec takes any JSON");
    }
}

fn counter() -> IntCounter {
    IntCounter::new("tether_access_log_dropped_total", "test").expect("a valid metric")
}

fn file(path: &Path) -> AccessLogTarget {
    AccessLogTarget::File(path.to_path_buf())
}

/// A log at `path` whose rename check never comes due, so only `reopen` moves it.
fn without_rename_check(path: &Path) -> AccessLog<Line> {
    let hour = Duration::from_secs(3600);
    AccessLog::open_checking(&file(path), counter(), hour).expect("open")
}

/// The sequence numbers in `text`, asserting that each line is one JSON object.
fn seqs_in(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {l}"))
        })
        .collect()
}

/// The sequence numbers in the file at `path` (none if it does not exist).
fn seqs(path: &Path) -> Vec<u64> {
    seqs_in(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Waits until the sequence numbers in the file at `path` satisfy `done`.
async fn until_seqs(path: &Path, done: impl Fn(&[u64]) -> bool) -> bool {
    eventually(PATIENCE, || std::future::ready(done(&seqs(path)))).await
}

/// Pushes lines numbered from `next` on every poll until one lands in the file at `path`.
async fn push_until_written(log: &AccessLog<Line>, next: &mut u64, path: &Path) -> bool {
    eventually(PATIENCE, || {
        log.push(Line(*next));
        *next += 1;
        std::future::ready(!seqs(path).is_empty())
    })
    .await
}

fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    (dir, path)
}

#[tokio::test]
async fn lines_arrive_in_order_one_json_object_per_line() {
    let (_dir, path) = tempdir();
    let dropped = counter();
    let log = AccessLog::open(&file(&path), dropped.clone()).expect("open");
    // Fewer than the queue holds, so none can be dropped.
    for i in 0..2000 {
        log.push(Line(i));
    }
    assert!(log.close().await, "close flushes");
    assert_eq!(seqs(&path), (0..2000).collect::<Vec<_>>());
    assert_eq!(dropped.get(), 0);
    // The log is closed: a later line is dropped and counted, not written.
    log.push(Line(2000));
    assert_eq!(dropped.get(), 1);
    assert_eq!(seqs(&path).len(), 2000);
}

#[tokio::test]
async fn an_idle_log_is_written_without_closing_and_dropping_it_flushes() {
    let (_dir, path) = tempdir();
    let log: AccessLog<Line> = AccessLog::open(&file(&path), counter()).expect("open");
    log.push(Line(0));
    // The queue ran empty, so the line is written while the handle is alive.
    assert!(until_seqs(&path, |s| s == [0]).await);
    let other = log.clone();
    for i in 1..1000 {
        other.push(Line(i));
    }
    drop((log, other));
    assert!(
        until_seqs(&path, |s| s.len() == 1000).await,
        "dropping every handle writes what was queued: {:?}",
        seqs(&path).len()
    );
    assert_eq!(seqs(&path), (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_full_queue_drops_and_counts_and_push_never_waits() {
    if !tools::have("mkfifo") {
        return;
    }
    let (_dir, path) = tempdir();
    let made = Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    // The reader opens the FIFO (letting the log's open finish), then reads nothing until told:
    // the writer fills the pipe and blocks in write(2), a stall of the real kind.
    let (go, wait_for_go) = mpsc::channel::<()>();
    let fifo = path.clone();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(fifo).expect("open the FIFO for reading");
        wait_for_go.recv().expect("go");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read");
        text
    });
    let dropped = counter();
    let log = AccessLog::open(&file(&path), dropped.clone()).expect("open the FIFO");
    // Far more than the pipe, one batch and the queue together hold.
    const PUSHED: u64 = 20_000;
    let (done, pushed) = mpsc::channel();
    let pusher = log.clone();
    std::thread::spawn(move || {
        for i in 0..PUSHED {
            pusher.push(Line(i));
        }
        let _ = done.send(());
    });
    let finished = pushed.recv_timeout(PATIENCE);
    assert!(finished.is_ok(), "push waited for a stalled writer");
    assert!(dropped.get() > 0, "a full queue drops");
    go.send(()).expect("reader alive");
    drop(log);
    let written = seqs_in(&reader.join().expect("reader"));
    assert!(written.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(
        written.len() as u64 + dropped.get(),
        PUSHED,
        "every line written or counted"
    );
}

#[tokio::test]
async fn a_renamed_file_is_followed_without_a_signal() {
    let (dir, path) = tempdir();
    let log = AccessLog::open(&file(&path), counter()).expect("open");
    let mut next = 0;
    assert!(push_until_written(&log, &mut next, &path).await);
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).expect("rename");
    assert!(
        push_until_written(&log, &mut next, &path).await,
        "a new file appears at the path"
    );
    assert!(log.close().await);
    // Nothing lost, nothing twice: the old file then the new one hold every line in order.
    let mut all = seqs(&rotated);
    all.extend(seqs(&path));
    assert_eq!(all, (0..next).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_deleted_file_is_recreated_without_a_signal() {
    let (_dir, path) = tempdir();
    let log = AccessLog::open(&file(&path), counter()).expect("open");
    let mut next = 0;
    assert!(push_until_written(&log, &mut next, &path).await);
    std::fs::remove_file(&path).expect("delete");
    assert!(push_until_written(&log, &mut next, &path).await);
    assert!(log.close().await);
    let new = seqs(&path);
    assert_eq!(
        new.last(),
        Some(&(next - 1)),
        "the newest lines are in the new file"
    );
}

#[tokio::test]
async fn reopen_moves_to_the_file_now_at_the_path() {
    let (dir, path) = tempdir();
    let log = without_rename_check(&path);
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).expect("rename");
    // Without a reopen (and with the check off) lines still go to the renamed file.
    log.push(Line(0));
    assert!(until_seqs(&rotated, |s| s == [0]).await);
    assert!(!path.exists());
    log.reopen();
    log.push(Line(1));
    assert!(log.close().await);
    assert_eq!((seqs(&rotated), seqs(&path)), (vec![0], vec![1]));
}

#[tokio::test]
async fn reopen_after_a_delete_creates_the_file() {
    let (_dir, path) = tempdir();
    let log = without_rename_check(&path);
    std::fs::remove_file(&path).expect("delete");
    log.reopen();
    log.push(Line(0));
    assert!(log.close().await);
    assert_eq!(seqs(&path), [0]);
}

#[tokio::test]
async fn sighup_reopens_the_file() {
    use tokio::signal::unix::{signal, SignalKind};
    // Listening first makes SIGHUP harmless to this test process before the task listens too.
    let _harmless = signal(SignalKind::hangup()).expect("listen for SIGHUP");
    let (dir, path) = tempdir();
    let log = without_rename_check(&path);
    let listener = tokio::spawn(reopen_on_sighup(Some(log.clone())));
    std::fs::rename(&path, dir.path().join("access.log.1")).expect("rename");
    let pid = std::process::id().to_string();
    let mut next = 0;
    // Signal until the task (which may not be listening yet) has reopened.
    let reopened = eventually(PATIENCE, || {
        let sent = Command::new("kill").args(["-HUP", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -HUP");
        log.push(Line(next));
        next += 1;
        std::future::ready(!seqs(&path).is_empty())
    });
    assert!(
        reopened.await,
        "SIGHUP moved the log to a new file at the path"
    );
    listener.abort();
}

#[tokio::test]
async fn a_write_error_loses_the_line_counts_it_and_does_not_panic() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        return;
    }
    let dropped = counter();
    let log = AccessLog::open(&file(full), dropped.clone()).expect("open /dev/full");
    for i in 0..10 {
        log.push(Line(i));
    }
    assert!(log.close().await);
    assert_eq!(dropped.get(), 10);
}

#[test]
fn write_error_warnings_come_at_most_every_10_s_with_the_count() {
    let t0 = Instant::now();
    let mut w = Warnings::default();
    let warned = [(0, 3), (1, 2), (9, 5), (10, 1), (11, 0)]
        .map(|(s, lines)| w.note(t0 + Duration::from_secs(s), lines, "disk full"));
    // The second warning carries the lines lost while quiet (2 + 5 + 1).
    assert_eq!(warned, [Some(3), None, None, Some(8), None]);
}

/// The process's umask, from /proc (there is no std call that reads it without changing it).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc");
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"));
    u32::from_str_radix(line.expect("Umask line").trim(), 8).expect("octal")
}

#[test]
fn a_new_file_has_mode_0640() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = tempdir();
    let _log: AccessLog<Line> = AccessLog::open(&file(&path), counter()).expect("open");
    let mode = std::fs::metadata(&path)
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640 & !umask(), "{mode:o}");
}

#[tokio::test]
async fn an_existing_file_is_appended_to() {
    let (_dir, path) = tempdir();
    std::fs::write(&path, "{\"seq\":99}\n").expect("write");
    let log = AccessLog::open(&file(&path), counter()).expect("open");
    log.push(Line(0));
    assert!(log.close().await);
    assert_eq!(seqs(&path), [99, 0]);
}

#[test]
fn an_unopenable_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir").join("access.log");
    for path in [missing.as_path(), dir.path()] {
        let e = AccessLog::<Line>::open(&file(path), counter())
            .err()
            .expect("an error");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

#[tokio::test]
async fn the_stdout_target_opens_and_ignores_reopen() {
    let log: AccessLog<Line> =
        AccessLog::open(&AccessLogTarget::Stdout, counter()).expect("stdout");
    log.reopen();
    assert!(log.close().await);
}

//! The sidecar binary's memory allocator: jemalloc, its settings, and each runtime thread's
//! cache handed back when the thread goes idle, so that memory a burst used returns to the
//! kernel once the burst is over. Declared by `main.rs` only: the library stays
//! allocator-neutral, so its tests and anyone embedding it keep their own.

use std::cell::Cell;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

/// jemalloc, not glibc's malloc: after a burst of 4,000 connections through the pair closed,
/// glibc kept the outbound at 108 MiB (12× idle; 27 MiB even after `malloc_trim`, its free
/// space split between live blocks), jemalloc gave it back to 15 MiB within 2 s, at the same
/// speed (README, Performance). mimalloc measured worse on both counts (17 MiB idle, nothing
/// returned).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them). Freed pages go back to the kernel after 1 s unused (jemalloc's
/// default is 10 s, then 10 s more as "muzzy" pages), by a background thread, so an idle
/// sidecar returns memory without an allocation to trigger it.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// How often a thread hands its cache back at most: rarely enough that a busy thread, which
/// parks between bursts of work thousands of times a second, keeps its cache warm.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_FLUSH: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs each time a runtime thread parks (has nothing to do). At most once per [`FLUSH_EVERY`]
/// it hands the thread's jemalloc cache back to the arenas. Each thread caches freed blocks
/// for its next allocations (up to 200 per size class), and jemalloc trims that cache only as
/// the thread allocates; a thread idle after a burst kept the blocks, and the pages they sit
/// in, for good. With the flush, the outbound 5 s after 4,000 connections closed measured
/// 13.1–13.6 MiB, against 15.3–15.6 without (README, Performance).
pub fn on_park() {
    LAST_FLUSH.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < FLUSH_EVERY)
        {
            return;
        }
        last.set(Some(now));
        flush_thread_cache();
    });
}

/// Hands this thread's jemalloc cache back to the arenas; whether jemalloc did.
fn flush_thread_cache() -> bool {
    // SAFETY: `thread.tcache.flush` takes no input and gives no output: every pointer is null
    // and the length 0, as jemalloc's manual specifies for it. The name is a NUL-terminated
    // literal. It fails only without a cache, which leaves nothing to do.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            null_mut(),
            null_mut(),
            null_mut(),
            0,
        )
    };
    rc == 0
}

/// Wakes the runtime every [`FLUSH_EVERY`] · 2, so that a thread whose last flush came just
/// before it went idle parks again, and flushes, once the burst is over.
pub async fn wake_idle_threads() {
    let mut tick = tokio::time::interval(FLUSH_EVERY * 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_knows_the_flush_and_the_settings() {
        // A misspelt control name would make every flush a silent no-op.
        assert!(flush_thread_cache(), "jemalloc refused thread.tcache.flush");
        let mut decay: isize = 0;
        let mut len = std::mem::size_of::<isize>();
        // SAFETY: `opt.dirty_decay_ms` is an ssize_t; `decay` and `len` describe one.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"opt.dirty_decay_ms".as_ptr(),
                (&mut decay as *mut isize).cast(),
                &mut len,
                null_mut(),
                0,
            )
        };
        // 10,000 if `malloc_conf` had not been read.
        assert_eq!((rc, decay), (0, 1000), "malloc_conf was not read");
    }

    #[test]
    fn a_thread_flushes_at_most_once_per_interval() {
        std::thread::spawn(|| {
            on_park();
            let first = LAST_FLUSH.with(Cell::get).expect("the first park flushes");
            on_park();
            assert_eq!(
                LAST_FLUSH.with(Cell::get),
                Some(first),
                "flushed again at once"
            );
        })
        .join()
        .unwrap();
    }
}

//! Waiting for something that happens in the background (a CRL reaching a sidecar, a counter
//! moving) without fixed sleeps: poll a condition until it holds or a deadline passes, and let
//! the test assert on the answer with its own message.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] looks again: short enough that a test waits at most this long past
/// the moment the condition starts to hold.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every [`POLL`] until it holds or `limit` passes; returns whether it held. The
/// condition is checked once more at the deadline, so a `limit` of zero still looks once.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_condition_that_comes_true_is_seen() {
        let calls = AtomicUsize::new(0);
        let held = eventually(Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert!(held);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_condition_that_never_holds_gives_up_at_the_deadline() {
        let started = tokio::time::Instant::now();
        assert!(!eventually(Duration::from_millis(100), || async { false }).await);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}

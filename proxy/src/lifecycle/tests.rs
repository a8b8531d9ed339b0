//! Renewal timing under paused tokio time: half-life with jitter, backoff, keep-last-good,
//! the CRL poll's quicker backoff, retries up to expiry, `POST /rotate`, and enrollment at start.

use super::*;
use std::sync::Mutex as StdMutex;

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

#[test]
fn renewal_is_at_half_life_within_ten_percent() {
    let (nb, na) = (t0(), t0() + time::Duration::hours(1));
    assert_eq!(renew_at(nb, na, 0.0), t0() + time::Duration::minutes(30));
    assert_eq!(renew_at(nb, na, -1.0), t0() + time::Duration::minutes(24));
    assert_eq!(renew_at(nb, na, 1.0), t0() + time::Duration::minutes(36));
    // Out-of-range jitter is clamped, never pushing renewal past the window.
    assert_eq!(renew_at(nb, na, 7.0), t0() + time::Duration::minutes(36));
}

#[test]
fn backoff_grows_is_capped_and_tightens_near_expiry() {
    let mut b = Backoff::default();
    let delays: Vec<Duration> = (0..10).map(|_| b.next(None, 0.999)).collect();
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert!(delays[0] <= Duration::from_secs(1));
    assert!(delays.iter().all(|d| *d <= BACKOFF_CAP));
    assert!(
        delays[9] > Duration::from_secs(29),
        "reaches the cap: {delays:?}"
    );
    // With 10 s left, never wait more than 5 s; with nothing left, still a small positive delay.
    assert!(b.next(Some(Duration::from_secs(10)), 0.999) <= Duration::from_secs(5));
    assert_eq!(
        b.next(Some(Duration::from_millis(1)), 0.5),
        Duration::from_millis(100)
    );
    // Jitter spreads retries over the upper half of the window.
    let mut lo = Backoff::default();
    let mut hi = Backoff::default();
    assert!(lo.next(None, 0.0) < hi.next(None, 0.999));
}

#[test]
fn crl_poll_backoff_starts_within_a_fifth_of_a_second_and_doubles_to_the_cap() {
    let mut b = Backoff::starting_at(CRL_BACKOFF_BASE);
    let delays: Vec<Duration> = (0..14).map(|_| b.next(None, 0.999)).collect();
    // After a failed poll (every CA URL tried) the next comes quickly...
    assert!(delays[0] <= Duration::from_millis(200), "{delays:?}");
    assert!(delays[0] >= Duration::from_millis(100), "{delays:?}");
    // ...but a fleet with every CA down backs off: doubling, to the cap.
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert!(delays[3] >= Duration::from_millis(1500), "{delays:?}");
    assert!(delays[13] > Duration::from_secs(29) && delays[13] <= BACKOFF_CAP);
}

/// A certificate holder for the loop under test: validity, and the times `refresh` ran.
struct Fake {
    validity: StdMutex<Option<(OffsetDateTime, OffsetDateTime)>>,
    attempts: StdMutex<Vec<OffsetDateTime>>,
    fail_first: usize,
}

impl Fake {
    /// A holder of a certificate valid over `validity` (none: not enrolled yet) whose first
    /// `fail_first` refreshes fail.
    fn new(validity: Option<(OffsetDateTime, OffsetDateTime)>, fail_first: usize) -> Arc<Self> {
        Arc::new(Fake {
            validity: StdMutex::new(validity),
            attempts: StdMutex::new(Vec::new()),
            fail_first,
        })
    }
}

fn spawn_loop(
    fake: Arc<Fake>,
    clock: Clock,
    rotate: Arc<Notify>,
) -> (tokio::task::JoinHandle<()>, prometheus::IntCounterVec) {
    let results =
        prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["result"]).unwrap();
    let r = results.clone();
    let f1 = fake.clone();
    let task = tokio::spawn(async move {
        renewal_loop(
            move || *f1.validity.lock().unwrap(),
            move || {
                let fake = fake.clone();
                async move {
                    let now = clock.now();
                    let n = {
                        let mut a = fake.attempts.lock().unwrap();
                        a.push(now);
                        a.len()
                    };
                    if n <= fake.fail_first {
                        return Err("CA down".to_string());
                    }
                    // A fresh one-hour certificate: keep-last-good is replaced only on success.
                    *fake.validity.lock().unwrap() = Some((now, now + time::Duration::hours(1)));
                    Ok(())
                }
            },
            rotate,
            clock,
            r,
        )
        .await
    });
    (task, results)
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_then_again_for_the_new_certificate() {
    let clock = Clock::starting_at(t0());
    let fake = Fake::new(Some((t0(), t0() + time::Duration::hours(1))), 0);
    let (task, results) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    task.abort();
    let attempts = fake.attempts.lock().unwrap().clone();
    assert!(attempts.len() >= 2, "{attempts:?}");
    let first = attempts[0] - t0();
    assert!(
        first >= time::Duration::minutes(24) && first <= time::Duration::minutes(36),
        "{first}"
    );
    let second = attempts[1] - attempts[0];
    assert!(
        second >= time::Duration::minutes(24) && second <= time::Duration::minutes(36),
        "{second}"
    );
    assert_eq!(
        results.with_label_values(&["ok"]).get(),
        attempts.len() as u64
    );
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_back_off_and_keep_the_last_good_certificate() {
    let clock = Clock::starting_at(t0());
    let first_cert = (t0(), t0() + time::Duration::hours(1));
    let fake = Fake::new(Some(first_cert), 5);
    let (task, results) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
    tokio::time::sleep(Duration::from_secs(40 * 60)).await;
    task.abort();
    let attempts = fake.attempts.lock().unwrap().clone();
    assert!(attempts.len() >= 6, "{attempts:?}");
    let gaps: Vec<time::Duration> = attempts.windows(2).take(5).map(|w| w[1] - w[0]).collect();
    // 5 failures: each gap within [half, full] of 1, 2, 4, 8, 16 s.
    for (i, g) in gaps.iter().enumerate() {
        let full = time::Duration::seconds(1 << i);
        assert!(
            *g >= full / 2 - time::Duration::milliseconds(1) && *g <= full,
            "gap {i}: {g} ({gaps:?})"
        );
    }
    assert_eq!(results.with_label_values(&["error"]).get(), 5);
    assert_eq!(results.with_label_values(&["ok"]).get(), 1);
    // The sixth attempt succeeded and replaced the certificate; until then the first one stayed.
    let now_validity = fake.validity.lock().unwrap().unwrap();
    assert_eq!(now_validity.0, attempts[5]);
}

#[tokio::test(start_paused = true)]
async fn retries_keep_coming_until_expiry_and_never_extend_it() {
    let clock = Clock::starting_at(t0());
    let expiry = t0() + time::Duration::hours(1);
    let fake = Fake::new(Some((t0(), expiry)), usize::MAX);
    let (task, _) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
    tokio::time::sleep(Duration::from_secs(3600 + 120)).await;
    task.abort();
    let attempts = fake.attempts.lock().unwrap().clone();
    assert_eq!(
        fake.validity.lock().unwrap().unwrap().1,
        expiry,
        "a failed renewal never changes the certificate"
    );
    let before: Vec<_> = attempts.iter().filter(|t| **t < expiry).collect();
    // Once past the 30 s cap, the gap never exceeds half of the time left, so the last attempt
    // before expiry is within a second of it.
    let last = **before.last().unwrap();
    assert!(
        expiry - last <= time::Duration::seconds(1),
        "last attempt {} before expiry",
        expiry - last
    );
    for w in before.windows(2) {
        let (a, b): (OffsetDateTime, OffsetDateTime) = (*w[0], *w[1]);
        let bound = ((expiry - a) / 2_i32).max(time::Duration::milliseconds(100));
        assert!(
            b - a <= bound + time::Duration::milliseconds(1),
            "gap {} > {bound}",
            b - a
        );
    }
}

#[tokio::test(start_paused = true)]
async fn rotate_renews_now() {
    let clock = Clock::starting_at(t0());
    let fake = Fake::new(Some((t0(), t0() + time::Duration::hours(1))), 0);
    let rotate = Arc::new(Notify::new());
    let (task, _) = spawn_loop(fake.clone(), clock, rotate.clone());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(fake.attempts.lock().unwrap().is_empty());
    rotate.notify_one();
    tokio::time::sleep(Duration::from_millis(10)).await;
    task.abort();
    let attempts = fake.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0] - t0() < time::Duration::seconds(61));
}

#[tokio::test(start_paused = true)]
async fn enrolls_at_once_without_a_certificate() {
    let clock = Clock::starting_at(t0());
    let fake = Fake::new(None, 2);
    let (task, _) = spawn_loop(fake.clone(), clock, Arc::new(Notify::new()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    task.abort();
    let attempts = fake.attempts.lock().unwrap().clone();
    assert_eq!(attempts[0], t0(), "first enrollment attempt is immediate");
    assert_eq!(
        attempts.len(),
        3,
        "two failures with backoff, then enrolled: {attempts:?}"
    );
}

//! The policy in force ([`PolicyHandle`]) and its hot reload from the file ([`spawn_reloader`]):
//! a file that fails to load keeps the previous policy.

use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use super::{Policy, PolicyError};

/// The policy in force, shared by every connection and swapped whole on reload.
///
/// Readers take an `Arc` snapshot, so a request is judged by one policy from start to end even
/// if a reload lands meanwhile.
#[derive(Debug)]
pub struct PolicyHandle {
    current: RwLock<Arc<Policy>>,
}

impl PolicyHandle {
    /// Wraps the initial policy (use [`Policy::deny_all`] to fail closed until one is loaded).
    pub fn new(policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(policy)),
        })
    }

    /// A snapshot of the current policy: a read lock held only for an `Arc` clone.
    pub fn current(&self) -> Arc<Policy> {
        // The lock only ever guards an `Arc` assignment, which cannot be left half done, so a
        // writer that panicked leaves a consistent value and poisoning can be ignored.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `policy` the current one for every later [`PolicyHandle::current`].
    pub fn replace(&self, policy: Policy) {
        let new = Arc::new(policy);
        // Swap under the lock but drop the old policy after releasing it, so freeing a large
        // policy never holds up readers.
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            new,
        );
        drop(old);
    }
}

/// What the reloader last saw at the path: enough to notice any edit, or the read error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    File {
        /// Changes on `touch` even when the content does not, so touching forces a reload.
        modified: Option<SystemTime>,
        len: u64,
        /// Catches same-length edits within the file system's mtime granularity.
        digest: u64,
    },
    Unreadable(io::ErrorKind),
}

/// Reads the file and, if it differs from `last` (or, on the first poll, from the text the
/// current policy was parsed from), loads it. Blocking; runs on the blocking pool.
fn poll_file(
    path: &Path,
    last: Option<Seen>,
    held: Option<u64>,
) -> (Seen, Option<Result<Policy, PolicyError>>) {
    // Metadata and content from one open file, so a rename in between cannot pair the
    // content of one version with the timestamp of another.
    let read = std::fs::File::open(path).and_then(|mut file| {
        let meta = file.metadata()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok((meta, bytes))
    });
    let (meta, bytes) = match read {
        Ok(ok) => ok,
        Err(error) => {
            let seen = Seen::Unreadable(error.kind());
            if last == Some(seen) {
                return (seen, None);
            }
            let path = path.to_owned();
            return (seen, Some(Err(PolicyError::Read { path, error })));
        }
    };
    let file_digest = digest(&bytes);
    let seen = Seen::File {
        modified: meta.modified().ok(),
        len: meta.len(),
        digest: file_digest,
    };
    let unchanged = match last {
        Some(last) => last == seen,
        None => held == Some(file_digest),
    };
    if unchanged {
        return (seen, None);
    }
    (seen, Some(Policy::from_bytes(path, &bytes)))
}

/// Keeps `handle` in step with the policy file at `path`, polling every `interval`.
///
/// A change of modification time, length or content hash triggers a reload (so `touch` forces
/// one). The first poll happens at once and loads the file unless its text is the one the current
/// policy was parsed from. On success the new policy replaces the old and `on_reload(Ok(rules))`
/// is called. **If the file cannot be read or is invalid, the old policy is kept**, the reason is
/// logged with `tracing::warn!` and `on_reload(Err(..))` is called once per distinct failure (not
/// on every poll). Writers should replace the file atomically (write, then rename); a half-written
/// file is rejected and picked up once complete. Intervals under 10 ms are raised to 10 ms.
/// Must be called within a tokio runtime; the task runs until the returned handle is aborted.
pub fn spawn_reloader(
    path: PathBuf,
    handle: Arc<PolicyHandle>,
    interval: Duration,
    on_reload: impl Fn(Result<usize, &PolicyError>) + Send + Sync + 'static,
) -> JoinHandle<()> {
    // A zero period would make tokio's interval panic, and polling faster than this only burns
    // CPU re-reading an unchanged file.
    let interval = interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Seen> = None;
        loop {
            ticker.tick().await;
            let held = handle.current().digest;
            let p = path.clone();
            let (seen, loaded) =
                match tokio::task::spawn_blocking(move || poll_file(&p, last, held)).await {
                    Ok(result) => result,
                    Err(e) => {
                        // Only reachable if the runtime is shutting down; try again next tick.
                        tracing::warn!(
                            path = %path.display(),
                            error = %e,
                            "policy reload check did not run"
                        );
                        continue;
                    }
                };
            last = Some(seen);
            match loaded {
                None => {}
                Some(Ok(policy)) => {
                    let rules = policy.len();
                    let mode = policy.mode();
                    handle.replace(policy);
                    tracing::info!(path = %path.display(), rules, %mode, "policy reloaded");
                    on_reload(Ok(rules));
                }
                Some(Err(err)) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %err,
                        "policy reload failed; keeping the previous policy"
                    );
                    on_reload(Err(&err));
                }
            }
        }
    })
}

/// Hash identifying a policy text. Not cryptographic: whoever can write the file already
/// controls the policy, so this only has to notice edits.
pub(super) fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

//! File mode: watch the `[identity]` files and publish a new credential when a complete,
//! consistent set appears; a broken or mismatched set keeps the old credential and says why. A
//! new CRL file passes the revocation cache's one acceptance rule like any
//! other CRL: one stale on arrival, a rollback or one from the future keeps the old credential
//! and CRL.
//!
//! Every look at the disk (the change check and the reload) runs on tokio's blocking pool, as the
//! policy reloader's does, so a slow or stalled file system never holds up the worker threads
//! that carry traffic.

use std::sync::Arc;
use std::time::SystemTime;

use tether_certs::RevocationList;

use crate::config::IdentityFiles;
use crate::identity::{Credentials, IdentityError, IdentityStore};
use crate::metrics::{Metrics, Outcome};
use crate::revocation::RevocationCache;

use super::{off_runtime, FILE_POLL};

/// What the change check compares: (modified, length) of each file, `None` for a missing one.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// Watches `[identity]` files and publishes a new credential when a consistent set appears. If
/// a reload fails, the old credential (and CRL) stay in force and the failure is logged and
/// counted; the next change is tried again.
///
/// The files are stamped when this is called — at start, right after they were loaded — not
/// when the returned task first runs, so a change made in between is not missed.
pub fn watch_files(
    files: IdentityFiles,
    store: IdentityStore,
    cache: Arc<RevocationCache>,
    metrics: Metrics,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let first = stamp(&files);
    async move {
        let mut last = first;
        loop {
            tokio::time::sleep(FILE_POLL).await;
            let now = stamp_off_runtime(&files).await;
            if now == last {
                continue;
            }
            last = now;
            reload(&files, &store, &cache, &metrics).await;
        }
    }
}

/// Loads the changed files and adopts them, or keeps the old credential and says why.
async fn reload(
    files: &IdentityFiles,
    store: &IdentityStore,
    cache: &RevocationCache,
    metrics: &Metrics,
) {
    let (files, revocation) = (files.clone(), cache.revocation());
    let loaded = off_runtime(move || Credentials::load_files(&files, revocation))
        .await
        .unwrap_or_else(|e| Err(IdentityError::Invalid("[identity] files".into(), e)));
    let result = match loaded {
        Ok((creds, crl)) => adopt(creds, crl, store, cache),
        Err(e) => Err(format!(
            "certificate files changed but are unusable, keeping the old credential: {e}"
        )),
    };
    metrics.count_cert_refresh(Outcome::of(&result));
    if let Err(e) = result {
        tracing::warn!("{e}");
    }
}

/// Installs the CRL file's list at start, before anything is served. Nothing is held yet, so
/// only a CRL from the future is refused — and that stops the start: running without the
/// configured CRL would admit what it revokes.
pub fn install_first_crl(
    files: &IdentityFiles,
    cache: &RevocationCache,
    crl: Option<RevocationList>,
) -> Result<(), IdentityError> {
    let (Some(crl), Some(path)) = (crl, &files.crl) else {
        return Ok(());
    };
    cache
        .install(crl)
        .map_err(|e| IdentityError::Invalid(path.display().to_string(), e.to_string()))?;
    Ok(())
}

/// Installs the reloaded CRL (if any) and then publishes the credential; a refused CRL keeps
/// both the old credential and the old CRL.
fn adopt(
    creds: Credentials,
    crl: Option<RevocationList>,
    store: &IdentityStore,
    cache: &RevocationCache,
) -> Result<(), String> {
    if let Some(crl) = crl {
        cache.install(crl).map_err(|e| {
            format!("new CRL file refused, keeping the old credential and CRL: {e}")
        })?;
    }
    tracing::info!(
        "reloaded certificate {} (serial {}) from files",
        creds.id,
        creds.serial
    );
    store.publish(creds);
    Ok(())
}

/// [`stamp`] on the blocking pool; a failed look counts as "every file missing", which differs
/// from any real stamp, so the next good look triggers a reload attempt.
async fn stamp_off_runtime(files: &IdentityFiles) -> Stamp {
    let files = files.clone();
    off_runtime(move || stamp(&files)).await.unwrap_or_default()
}

/// The (modified, length) of each configured file.
fn stamp(files: &IdentityFiles) -> Stamp {
    [
        Some(&files.cert),
        Some(&files.key),
        Some(&files.bundle),
        files.crl.as_ref(),
    ]
    .into_iter()
    .map(|p| {
        p.and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_sees_a_rewrite_and_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles {
            cert: dir.path().join("chain.pem"),
            key: dir.path().join("key.pem"),
            bundle: dir.path().join("bundle.pem"),
            crl: None,
        };
        for p in [&files.cert, &files.key, &files.bundle] {
            std::fs::write(p, "x").unwrap();
        }
        let first = stamp(&files);
        // No CRL configured: its slot is always `None`.
        assert_eq!(first.len(), 4);
        assert!(first[..3].iter().all(Option::is_some), "{first:?}");
        assert_eq!(first[3], None);
        assert_eq!(stamp(&files), first, "nothing changed");
        // Same modification time is possible within the clock's resolution: the length differs.
        std::fs::write(&files.key, "longer").unwrap();
        assert_ne!(stamp(&files), first);
        std::fs::remove_file(&files.bundle).unwrap();
        assert_eq!(stamp(&files)[2], None);
    }
}

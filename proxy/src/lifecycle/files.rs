//! File mode: watch the `[identity]` files and publish a new credential when a complete,
//! consistent set appears; a broken or mismatched set keeps the old credential and says why.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::IdentityFiles;
use crate::identity::{Credentials, IdentityStore};
use crate::metrics::Metrics;
use crate::revocation::RevocationCache;

use super::FILE_POLL;

/// Watches `[identity]` files and publishes a new credential when a consistent set appears.
pub async fn watch_files(
    files: IdentityFiles,
    store: IdentityStore,
    cache: Arc<RevocationCache>,
    metrics: Metrics,
) {
    let stamp = |files: &IdentityFiles| -> Vec<Option<(SystemTime, u64)>> {
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
    };
    let mut last = stamp(&files);
    loop {
        tokio::time::sleep(FILE_POLL).await;
        let now = stamp(&files);
        if now == last {
            continue;
        }
        last = now;
        match Credentials::load_files(&files, cache.revocation()) {
            Ok((creds, crl)) => {
                if let Some(crl) = crl {
                    if let Err(e) = cache.install(crl) {
                        metrics.cert_refresh.with_label_values(&["error"]).inc();
                        tracing::warn!(
                            "new CRL file refused, keeping the old credential and CRL: {e}"
                        );
                        continue;
                    }
                }
                tracing::info!(
                    "reloaded certificate {} (serial {}) from files",
                    creds.id,
                    creds.serial
                );
                metrics.cert_refresh.with_label_values(&["ok"]).inc();
                store.publish(creds);
            }
            Err(e) => {
                metrics.cert_refresh.with_label_values(&["error"]).inc();
                tracing::warn!(
                    "certificate files changed but are unusable, keeping the old credential: {e}"
                );
            }
        }
    }
}

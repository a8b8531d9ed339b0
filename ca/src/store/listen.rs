//! How a replica learns, at once, that another one published a CRL: [`Changes`]. With
//! PostgreSQL a dedicated connection `LISTEN`s on [`super::CHANGES_CHANNEL`], which every
//! publishing transaction notifies on commit, so a revocation made through any replica wakes
//! every replica's long-polls within milliseconds — no polling loop. A lost connection wakes the
//! waiter too (a notification may have been missed), and is reopened every [`RECONNECT_EVERY`].
//! SQLite replicas share one host and look at the file every 100 ms instead (see
//! `crate::api::watcher`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::postgres::{open_client, runtime, DatabaseUrl, Drive};
use super::CHANGES_CHANNEL;

/// How long the listener waits between attempts to reopen a lost connection.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// How often the listener checks whether anyone still holds its [`Changes`].
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Wakes its holder when another replica publishes (or when a notification may have been
/// missed). The listener thread stops once every clone is dropped.
#[derive(Clone)]
pub struct Changes(Arc<Notify>);

impl Changes {
    /// Starts listening to the database at `url` on a thread of its own.
    pub fn listen(url: &DatabaseUrl) -> Changes {
        let notify = Arc::new(Notify::new());
        let weak = Arc::downgrade(&notify);
        let url = url.clone();
        std::thread::Builder::new()
            .name("tether-ca-listen".into())
            .spawn(move || {
                while weak.strong_count() > 0 {
                    if let Err(e) = listen_once(&url, &weak) {
                        tracing::warn!(
                            "the change feed from {} was lost ({e}); reopening",
                            url.as_str()
                        );
                        wake(&weak);
                    }
                    std::thread::sleep(RECONNECT_EVERY);
                }
            })
            .expect("spawning a thread at startup");
        Changes(notify)
    }

    /// Waits until the next change (returns at once if one came since the last wait).
    pub async fn changed(&self) {
        self.0.notified().await
    }
}

/// Wakes the holder, if there still is one.
fn wake(notify: &Weak<Notify>) {
    if let Some(n) = notify.upgrade() {
        n.notify_one();
    }
}

/// One connection's life: `LISTEN`, then forward each notification until the connection fails
/// (an error) or nobody holds the [`Changes`] any more (`Ok`).
fn listen_once(url: &DatabaseUrl, notify: &Weak<Notify>) -> Result<(), String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (client, mut driver) = open_client(url, Drive::Notifications(tx)).await?;
        client
            .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
            .await
            .map_err(|e| e.to_string())?;
        // Anything published while the connection was down is picked up by this first wake.
        wake(notify);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => wake(notify),
                ended = &mut driver => return Err(ended.unwrap_or_else(|e| e.to_string())),
                () = tokio::time::sleep(CHECK_EVERY) => {
                    if notify.strong_count() == 0 {
                        return Ok(());
                    }
                }
            }
        }
    })
}

//! How a replica learns, at once, that another one published a CRL: [`Changes`]. With
//! PostgreSQL a dedicated connection `LISTEN`s on [`super::CHANGES_CHANNEL`], which every
//! publishing transaction notifies on commit, so a revocation made through any replica wakes
//! every replica's long-polls within milliseconds — no polling loop. A lost connection wakes the
//! waiter too (a notification may have been missed), and is reopened every [`RECONNECT_EVERY`].
//! SQLite replicas share one host and look at the file every 100 ms instead (see
//! `crate::api::watcher`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Runtime;
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
                let mut rt = None;
                while weak.strong_count() > 0 {
                    if let Err(e) = listen_on(&mut rt, &url, &weak) {
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
pub(super) fn wake(notify: &Weak<Notify>) {
    if let Some(n) = notify.upgrade() {
        n.notify_one();
    }
}

/// [`listen_once`] on the thread's one runtime, made at the first call (and at the next one if
/// making it failed): reconnects reuse it.
fn listen_on(
    rt: &mut Option<Runtime>,
    url: &DatabaseUrl,
    notify: &Weak<Notify>,
) -> Result<(), String> {
    if rt.is_none() {
        *rt = Some(runtime().map_err(|e| e.to_string())?);
    }
    rt.as_ref()
        .expect("made above")
        .block_on(listen_once(url, notify))
}

/// One connection's life: `LISTEN`, then (the connection's task wakes the holder at each
/// notification) wait until the connection fails (an error) or nobody holds the [`Changes`]
/// any more (`Ok`).
async fn listen_once(url: &DatabaseUrl, notify: &Weak<Notify>) -> Result<(), String> {
    let (client, mut driver) = open_client(url, Drive::Notifications(notify.clone())).await?;
    let outcome = async {
        client
            .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
            .await
            .map_err(|e| e.to_string())?;
        // Anything published while the connection was down is picked up by this first wake.
        wake(notify);
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                ended = &mut driver => return Err(ended.unwrap_or_else(|e| e.to_string())),
                _ = check.tick() => {
                    if notify.strong_count() == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    // The runtime outlives this connection: its task must not linger on it.
    driver.abort();
    outcome
}

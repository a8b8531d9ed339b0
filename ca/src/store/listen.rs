//! How a replica learns, at once, that another one published a CRL: [`Changes`]. With
//! PostgreSQL a dedicated connection `LISTEN`s on [`super::CHANGES_CHANNEL`], which every
//! publishing transaction notifies on commit, so a revocation made through any replica wakes
//! every replica's long-polls within milliseconds — no polling loop. A lost connection wakes the
//! waiter too (a notification may have been missed), and is reopened every [`RECONNECT_EVERY`].
//! SQLite replicas share one host and look at the file every 100 ms instead (see
//! `crate::api::watcher`).

use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::Notify;

use super::postgres::{listener_client, DatabaseUrl};
use super::CHANGES_CHANNEL;

/// How long the listener waits between attempts to reopen a lost connection.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// How often the listener thread checks whether anyone still holds its [`Changes`].
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
                while let Some(notify) = weak.upgrade() {
                    if let Err(e) = listen_once(&url, &notify, &weak) {
                        tracing::warn!(
                            "the change feed from {} was lost ({e}); reopening",
                            url.as_str()
                        );
                        notify.notify_one();
                    }
                    drop(notify);
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

/// One connection's life: `LISTEN`, then forward each notification until the connection fails
/// (an error) or nobody holds the [`Changes`] any more (`Ok`).
fn listen_once(
    url: &DatabaseUrl,
    notify: &Notify,
    alive: &std::sync::Weak<Notify>,
) -> Result<(), String> {
    let mut client = listener_client(url).map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
        .map_err(|e| e.to_string())?;
    // Anything published while the connection was down is picked up by this first wake.
    notify.notify_one();
    let mut notifications = client.notifications();
    let mut iter = notifications.timeout_iter(CHECK_EVERY);
    loop {
        match iter.next() {
            Ok(Some(_)) => notify.notify_one(),
            Ok(None) => {
                if alive.strong_count() == 0 {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

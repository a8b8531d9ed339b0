//! A few open [`Store`]s that the authority's blocking threads share: [`Pool::get`] hands one
//! out (waiting while all are in use) and takes it back when its guard drops. One connection
//! per replica would make every call of that replica wait for the previous one's round trip to
//! the database; with several, reads and signing overlap, and issuance throughput grows with
//! both replicas and connections. Writers still serialize on the database's write lock.
//!
//! Every connection is opened up front (so a CA that cannot reach its database does not
//! start), and reconnects by itself later (see [`super::postgres`]). SQLite gets one: its
//! writers serialize on the file lock anyway, and its reads are local page reads.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};

use super::{Location, Store, StoreError};

/// How many connections a replica keeps to a PostgreSQL database.
pub const POSTGRES_CONNECTIONS: usize = 4;

/// The shared stores.
pub struct Pool {
    idle: Mutex<Vec<Store>>,
    returned: Condvar,
}

impl Pool {
    /// `first`, plus the other connections `location` gets, opened now.
    pub fn new(first: Store, location: &Location) -> Result<Pool, StoreError> {
        let extra = match location {
            Location::Sqlite(_) => 0,
            Location::Postgres(_) => POSTGRES_CONNECTIONS - 1,
        };
        let mut idle = vec![first];
        for _ in 0..extra {
            idle.push(Store::open_at(location)?);
        }
        Ok(Pool {
            idle: Mutex::new(idle),
            returned: Condvar::new(),
        })
    }

    /// A store for this thread, waiting while every one is in use.
    pub fn get(&self) -> Pooled<'_> {
        // A panic while holding the lock leaves the vector whole (a push or a pop), so a
        // poisoned lock is still safe to use; a store whose transaction a panic interrupted
        // rolled it back on drop.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(store) = idle.pop() {
                return Pooled {
                    pool: self,
                    store: Some(store),
                };
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A store taken from a [`Pool`]; back in it when dropped.
pub struct Pooled<'a> {
    pool: &'a Pool,
    store: Option<Store>,
}

impl Deref for Pooled<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.store.as_ref().expect("present until drop")
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        self.store.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(store);
            self.pool.returned.notify_one();
        }
    }
}

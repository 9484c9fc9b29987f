//! The database's clock, as this replica sees it.
//!
//! Lease expiries, due times and backoff are compared across replicas, so they must come from one
//! clock: the database's. Asking the database for every timestamp would add a round trip to each
//! write, so [`DbClock`] measures the offset between the local clock and the database's once, keeps
//! adding it, and measures again periodically. A replica whose own clock runs 20 s ahead then
//! still writes and compares times within a round trip of the database's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Result, Store};
use crate::domain::clock::{Clock, Millis, SharedClock};

/// A clock that reads the local clock and corrects it by its measured offset from the database's.
///
/// Error bound: half the round trip of the last measurement, plus whatever the local clock drifted
/// or jumped since then (re-measured every [`DbClock::RESYNC_EVERY`]).
#[derive(Debug)]
pub struct DbClock {
    base: SharedClock,
    store: Store,
    offset_ms: AtomicI64,
}

impl DbClock {
    /// How often [`DbClock::keep_synced`] measures the offset again.
    pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

    /// A clock over `base`, already measured against `store`'s database.
    pub async fn synced(store: Store, base: SharedClock) -> Result<Arc<Self>> {
        let clock = Arc::new(Self {
            base,
            store,
            offset_ms: AtomicI64::new(0),
        });
        clock.sync().await?;
        Ok(clock)
    }

    /// Measures the offset again: the database's time minus the local time at the midpoint of the query.
    pub async fn sync(&self) -> Result<()> {
        let before = self.base.now_ms();
        let db = self.store.db_now_ms().await?;
        let after = self.base.now_ms();
        let local = before + (after - before) / 2;
        let offset = db - local;
        let previous = self.offset_ms.swap(offset, Ordering::SeqCst);
        if (offset - previous).abs() > 1_000 {
            tracing::info!(
                offset_ms = offset,
                "this replica's clock differs from the database's; using the database's"
            );
        }
        Ok(())
    }

    /// The last measured offset (database minus local), in milliseconds.
    pub fn offset_ms(&self) -> Millis {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// Re-measures every [`DbClock::RESYNC_EVERY`] until `stop` fires; a failed measurement keeps the last offset.
    pub async fn keep_synced(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Self::RESYNC_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %e, "could not read the database's clock; keeping the last offset");
            }
        }
    }
}

impl Clock for DbClock {
    fn now_ms(&self) -> Millis {
        self.base.now_ms() + self.offset_ms()
    }
}

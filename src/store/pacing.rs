//! Pacing buckets: one per hub and per DPS instance, spent before each Azure call.
//!
//! On PostgreSQL the bucket is a row of `pacing_buckets` shared by every replica: a replica takes
//! tokens from it in small batches (a quarter of a second's budget, at least what the call costs),
//! refilled by the database's clock (`clock_timestamp()` in the same transaction), so N replicas
//! together stay within the budget whatever their own clocks say. Tokens a replica took and did not
//! use are lost, which errs on the side of the quota. On SQLite (one instance) the bucket lives in
//! memory. The arithmetic is [`crate::domain::pacing`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Row;

use super::{Backend, Result, Store};
use crate::domain::clock::{Millis, SharedClock};
use crate::domain::pacing::{Bucket, Budget, Take};

/// The database's clock in milliseconds, read inside the bucket's transaction.
const PG_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// Settings of a [`Pacer`].
#[derive(Debug, Clone, Copy)]
pub struct PacerOptions {
    /// Seconds of budget a bucket may spend at once after an idle spell.
    pub burst_secs: f64,
    /// Longest wait sat out in place; longer waits are handed back to the caller.
    pub inline_wait: Duration,
    /// Seconds of budget a replica takes from a shared bucket per database round trip.
    pub batch_secs: f64,
}

impl Default for PacerOptions {
    fn default() -> Self {
        Self {
            burst_secs: 3.0,
            inline_wait: Duration::from_secs(1),
            batch_secs: 0.25,
        }
    }
}

/// What a bucket looks like from this replica, for progress, estimates and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceSnapshot {
    /// The budget (operations per minute).
    pub budget: f64,
    /// The current adaptive rate (operations per minute).
    pub rate: f64,
    /// Tokens in the bucket when last seen.
    pub tokens: f64,
}

#[derive(Debug)]
struct Slot {
    budget: Budget,
    /// The bucket itself (SQLite), or the last state read from its row (PostgreSQL).
    bucket: Bucket,
    /// PostgreSQL: tokens taken from the row and not spent yet.
    allowance: f64,
    row_exists: bool,
}

/// Meters calls per bucket key (`hub:<host>`, `dps:<name>`).
#[derive(Debug)]
pub struct Pacer {
    shared: Option<Store>,
    clock: SharedClock,
    options: PacerOptions,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    seen: Mutex<HashMap<String, PaceSnapshot>>,
}

impl Pacer {
    /// A pacer over `store`'s buckets: shared rows on PostgreSQL, memory on SQLite (with `clock`).
    pub fn new(store: &Store, clock: SharedClock, options: PacerOptions) -> Self {
        Self {
            shared: (store.backend() == Backend::Postgres).then(|| store.clone()),
            clock,
            options,
            slots: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// A pacer that keeps its buckets in memory (one instance).
    pub fn local(clock: SharedClock, options: PacerOptions) -> Self {
        Self {
            shared: None,
            clock,
            options,
            slots: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, key: &str, per_minute: f64) -> Arc<tokio::sync::Mutex<Slot>> {
        // The lock guards a map lookup only, never an await.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let budget = Budget::new(per_minute, self.options.burst_secs);
        let slot = slots.entry(key.to_string()).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(Slot {
                budget,
                bucket: Bucket::full(&budget, self.clock.now_ms()),
                allowance: 0.0,
                row_exists: false,
            }))
        });
        slot.clone()
    }

    /// Spends `cost` operations of `key`'s budget of `per_minute`, waiting in place for at most the
    /// inline wait. `Err(wait)`: the budget is spent for longer; try again after `wait`.
    pub async fn acquire(
        &self,
        key: &str,
        per_minute: f64,
        cost: f64,
    ) -> std::result::Result<(), Duration> {
        let slot = self.slot(key, per_minute);
        let deadline = tokio::time::Instant::now() + self.options.inline_wait;
        loop {
            let wait = {
                let mut s = slot.lock().await;
                s.budget = Budget::new(per_minute, self.options.burst_secs);
                let r = self.try_take(key, &mut s, cost).await;
                self.observe(key, &s);
                match r {
                    Ok(()) => return Ok(()),
                    Err(ms) => Duration::from_millis(ms.max(1) as u64),
                }
            };
            if tokio::time::Instant::now() + wait > deadline {
                return Err(wait);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Records a 429 from `key`'s service: the rate halves and nothing is handed out before
    /// `retry_after` (or one call's spacing). Returns how long the bucket now holds calls back.
    pub async fn throttled(
        &self,
        key: &str,
        per_minute: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        let slot = self.slot(key, per_minute);
        let mut s = slot.lock().await;
        let budget = s.budget;
        let wait = match &self.shared {
            None => {
                let now = self.clock.now_ms();
                s.bucket.throttled(&budget, now, retry_after);
                s.bucket.blocked_until - now
            }
            Some(store) => {
                s.allowance = 0.0;
                match self
                    .with_row(store, key, &mut s, |b, budget, now| {
                        b.throttled(budget, now, retry_after);
                        b.blocked_until - now
                    })
                    .await
                {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(bucket = key, error = %e, "could not record a 429 in the shared bucket");
                        retry_after.map_or(1_000, |d| d.as_millis() as Millis)
                    }
                }
            }
        };
        self.observe(key, &s);
        Duration::from_millis(wait.max(0) as u64)
    }

    /// Gives back `n` operations taken by [`Pacer::acquire`] and not spent (a write found unneeded).
    pub async fn refund(&self, key: &str, per_minute: f64, n: f64) {
        let slot = self.slot(key, per_minute);
        let mut s = slot.lock().await;
        if self.shared.is_some() {
            s.allowance += n;
        } else {
            let burst = s.budget.burst;
            s.bucket.tokens = (s.bucket.tokens + n).min(burst);
        }
    }

    /// The bucket as last seen, when this replica has used it.
    pub fn snapshot(&self, key: &str) -> Option<PaceSnapshot> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    async fn try_take(
        &self,
        key: &str,
        s: &mut Slot,
        cost: f64,
    ) -> std::result::Result<(), Millis> {
        let budget = s.budget;
        let Some(store) = &self.shared else {
            return match s.bucket.take(&budget, self.clock.now_ms(), cost, cost) {
                Take::Granted(_) => Ok(()),
                Take::Wait(ms) => Err(ms),
            };
        };
        if s.allowance + 1e-9 >= cost {
            s.allowance -= cost;
            return Ok(());
        }
        let need = cost - s.allowance;
        let batch = (budget.per_minute / 60.0 * self.options.batch_secs).floor();
        let most = batch.max(need).min(budget.burst.max(need));
        match self
            .with_row(store, key, s, |b, budget, now| {
                b.take(budget, now, need, most)
            })
            .await
        {
            Ok(Take::Granted(n)) => {
                s.allowance = s.allowance + n - cost;
                Ok(())
            }
            Ok(Take::Wait(ms)) => Err(ms),
            Err(e) => {
                // Without the shared bucket nobody can say what the quota allows: wait, do not guess.
                tracing::warn!(bucket = key, error = %e, "could not read the shared pacing bucket; waiting");
                Err(1_000)
            }
        }
    }

    /// Runs `f` on the bucket's row, locked, refilled by the database's clock, and writes it back.
    async fn with_row<T>(
        &self,
        store: &Store,
        key: &str,
        s: &mut Slot,
        f: impl FnOnce(&mut Bucket, &Budget, Millis) -> T,
    ) -> Result<T> {
        let budget = s.budget;
        let mut tx = store.pool().begin().await?;
        if !s.row_exists {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO pacing_buckets (bucket_key, tokens, rate, updated_at, blocked_until) \
                 VALUES ($1, $2, $3, {PG_NOW_MS}, 0) ON CONFLICT (bucket_key) DO NOTHING"
            )))
            .bind(key)
            .bind(budget.burst)
            .bind(budget.per_minute)
            .execute(&mut *tx)
            .await?;
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT tokens, rate, updated_at, blocked_until, {PG_NOW_MS} AS now_ms \
             FROM pacing_buckets WHERE bucket_key = $1 FOR UPDATE"
        )))
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        let now: Millis = row.try_get("now_ms")?;
        let mut bucket = Bucket {
            tokens: row.try_get("tokens")?,
            rate: row.try_get("rate")?,
            updated_at: row.try_get("updated_at")?,
            blocked_until: row.try_get("blocked_until")?,
        };
        let out = f(&mut bucket, &budget, now);
        sqlx::query(
            "UPDATE pacing_buckets SET tokens = $2, rate = $3, updated_at = $4, blocked_until = $5 \
             WHERE bucket_key = $1",
        )
        .bind(key)
        .bind(bucket.tokens)
        .bind(bucket.rate)
        .bind(bucket.updated_at)
        .bind(bucket.blocked_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        s.row_exists = true;
        s.bucket = bucket;
        Ok(out)
    }

    fn observe(&self, key: &str, s: &Slot) {
        let snap = PaceSnapshot {
            budget: s.budget.per_minute,
            rate: s.bucket.rate,
            tokens: s.bucket.tokens.max(0.0) + s.allowance,
        };
        let (label, name) = match key.split_once(':') {
            Some(("dps", n)) => ("dps", n.to_string()),
            Some((_, n)) => ("hub", n.to_string()),
            None => ("hub", key.to_string()),
        };
        metrics::gauge!("deprovisiond_pacing_rate_ops_per_minute", label => name.clone())
            .set(snap.rate);
        metrics::gauge!("deprovisiond_pacing_budget_ops_per_minute", label => name.clone())
            .set(snap.budget);
        metrics::gauge!("deprovisiond_pacing_tokens", label => name).set(snap.tokens);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), snap);
    }
}

/// The bucket key of a hub.
pub fn hub_key(host: &str) -> String {
    format!("hub:{}", host.trim().to_ascii_lowercase())
}

/// The bucket key of a DPS instance.
pub fn dps_key(name: &str) -> String {
    format!("dps:{}", name.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::ManualClock;

    #[tokio::test]
    async fn local_pacer_waits_in_place_then_hands_the_wait_back() {
        let clock = ManualClock::new(0);
        let pacer = Pacer::local(
            Arc::new(clock.clone()),
            PacerOptions {
                burst_secs: 3.0,
                inline_wait: Duration::ZERO,
                batch_secs: 0.25,
            },
        );
        // 60/min, a 3 s burst: three calls, then one a second.
        for _ in 0..3 {
            assert_eq!(pacer.acquire("hub:h", 60.0, 1.0).await, Ok(()));
        }
        assert_eq!(
            pacer.acquire("hub:h", 60.0, 1.0).await,
            Err(Duration::from_secs(1))
        );
        // Other buckets are not affected.
        assert_eq!(pacer.acquire("hub:other", 60.0, 1.0).await, Ok(()));
        clock.advance_ms(1000);
        assert_eq!(pacer.acquire("hub:h", 60.0, 1.0).await, Ok(()));
        let w = pacer
            .throttled("hub:h", 60.0, Some(Duration::from_secs(5)))
            .await;
        assert_eq!(w, Duration::from_secs(5));
        assert_eq!(pacer.snapshot("hub:h").unwrap().rate, 30.0);
        assert!(pacer.acquire("hub:h", 60.0, 1.0).await.is_err());
    }
}

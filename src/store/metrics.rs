//! What `/metrics` reads from the database at scrape time: counts that must agree across replicas, so
//! they come from the shared tables rather than from one process's memory.

use sqlx::Row;

use super::{Result, Store};
use crate::domain::clock::Millis;

/// Database-derived gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Jobs by status.
    pub jobs: Vec<(String, i64)>,
    /// Devices (job items) by lane state.
    pub devices: Vec<(String, i64)>,
    /// Lanes (job and device) that could run now: pending and due.
    pub queue_depth: i64,
    /// Seconds since the oldest device still waiting, pending or running was created; 0 when none.
    pub oldest_pending_device_secs: f64,
    /// Tombstones by last audit status (`never` when not audited yet).
    pub tombstones: Vec<(String, i64)>,
}

impl Store {
    /// Reads the gauges (five small aggregate queries over indexed columns).
    pub async fn gauges(&self, now: Millis) -> Result<Gauges> {
        let pairs = |rows: Vec<sqlx::any::AnyRow>| -> Result<Vec<(String, i64)>> {
            rows.into_iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect()
        };
        let jobs = sqlx::query("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
            .fetch_all(self.pool())
            .await?;
        let devices =
            sqlx::query("SELECT state, CAST(SUM(n) AS BIGINT) FROM job_item_counts GROUP BY state HAVING SUM(n) <> 0 ORDER BY state")
                .fetch_all(self.pool())
                .await?;
        let tombstones = sqlx::query(
            "SELECT COALESCE(audit_status, 'never'), COUNT(*) FROM tombstones \
             GROUP BY COALESCE(audit_status, 'never') ORDER BY 1",
        )
        .fetch_all(self.pool())
        .await?;
        let due: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE lane_state = 'pending' AND next_run_at <= $1) \
                  + (SELECT COUNT(*) FROM job_items WHERE state = 'pending' AND next_run_at <= $1)",
        )
        .bind(now)
        .fetch_one(self.pool())
        .await?
        .try_get(0)?;
        let oldest: Option<i64> = sqlx::query(
            "SELECT MIN(created_at) FROM job_items WHERE state IN ('waiting', 'pending', 'running')",
        )
        .fetch_one(self.pool())
        .await?
        .try_get(0)?;
        Ok(Gauges {
            jobs: pairs(jobs)?,
            devices: pairs(devices)?,
            queue_depth: due,
            oldest_pending_device_secs: oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
            tombstones: pairs(tombstones)?,
        })
    }
}

//! Devices handled by a hub's import job: found by device id a batch of export lines at a time, marked
//! with the import job that writes them, unmarked when they fall back to their own registry step, and
//! finished together once the verification export showed them disabled or gone.

use sqlx::Row;

use super::{ItemRecord, Result, Store, rows::ITEM_COLUMNS, rows::item_from_row};
use crate::domain::clock::Millis;

/// Device ids per lookup or update: far below both engines' parameter limits.
pub const DEVICE_BATCH: usize = 500;

// The batch statements below look rows up by id and check `(state || '')`: an expression no index serves, so
// neither SQLite nor PostgreSQL answers them by scanning every waiting item through the state index.

/// `$first, $first+1, …` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Store {
    /// The job's items on `hub` whose device ids are among `device_ids` (at most [`DEVICE_BATCH`]) and
    /// that are still in `state`.
    pub async fn items_by_device(
        &self,
        job_id: &str,
        hub: &str,
        state: &str,
        device_ids: &[&str],
    ) -> Result<Vec<ItemRecord>> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        // No state in the WHERE: with it, SQLite's planner may take the (job_id, state) index and scan the
        // job's every item per batch (quadratic in the job's size); the state is checked here instead.
        let text = sql!(
            "SELECT {ITEM_COLUMNS} FROM job_items WHERE job_id = $1 AND hub = $2 AND device_id IN ({})",
            placeholders(3, device_ids.len())
        );
        let mut q = sqlx::query(text).bind(job_id).bind(hub);
        for id in device_ids {
            q = q.bind(*id);
        }
        let mut items = Vec::with_capacity(device_ids.len());
        for row in q.fetch_all(&self.pool).await? {
            let item = item_from_row(&row)?;
            if item.state.as_str() == state {
                items.push(item);
            }
        }
        Ok(items)
    }

    /// Marks waiting items (by id) as handled by hub job run `hub_job`, recording whether the job changes
    /// them. Returns how many rows changed.
    pub async fn mark_hub_job(
        &self,
        item_ids: &[&str],
        hub_job: &str,
        changed: bool,
        now: Millis,
    ) -> Result<u64> {
        self.set_hub_job(item_ids, Some(hub_job), Some(changed), now)
            .await
    }

    /// Moves waiting items (by id) to mark `to`, keeping whether the job changed them.
    pub async fn relabel_hub_job(&self, item_ids: &[&str], to: &str, now: Millis) -> Result<u64> {
        let mut total = 0;
        for chunk in item_ids.chunks(DEVICE_BATCH) {
            let text = sql!(
                "UPDATE job_items SET hub_job = $1, updated_at = $2 WHERE id IN ({}) AND (state || '') = 'waiting'",
                placeholders(3, chunk.len())
            );
            let mut q = sqlx::query(text).bind(to).bind(now);
            for id in chunk {
                q = q.bind(*id);
            }
            total += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(total)
    }

    /// Gives waiting items (by id) back to their own registry step: their hub job did not settle them.
    pub async fn unmark_hub_job(&self, item_ids: &[&str], now: Millis) -> Result<u64> {
        self.set_hub_job(item_ids, None, None, now).await
    }

    async fn set_hub_job(
        &self,
        item_ids: &[&str],
        hub_job: Option<&str>,
        changed: Option<bool>,
        now: Millis,
    ) -> Result<u64> {
        let mut total = 0;
        for chunk in item_ids.chunks(DEVICE_BATCH) {
            let text = sql!(
                "UPDATE job_items SET hub_job = $1, changed = $2, updated_at = $3 \
                 WHERE id IN ({}) AND (state || '') = 'waiting'",
                placeholders(4, chunk.len())
            );
            let mut q = sqlx::query(text)
                .bind(hub_job.map(str::to_string))
                .bind(changed.map(i64::from))
                .bind(now);
            for id in chunk {
                q = q.bind(*id);
            }
            total += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(total)
    }

    /// Moves every waiting item of the job on `hub` marked `from` to mark `to` (`None`: back to its own
    /// registry step, its `changed` forgotten). Returns how many.
    pub async fn move_hub_job(
        &self,
        job_id: &str,
        hub: &str,
        from: &str,
        to: Option<&str>,
        now: Millis,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE job_items SET hub_job = $4, changed = CASE WHEN $4 IS NULL THEN NULL ELSE changed END, \
             updated_at = $5 WHERE job_id = $1 AND hub = $2 AND hub_job = $3 AND state = 'waiting'",
        )
        .bind(job_id)
        .bind(hub)
        .bind(from)
        .bind(to.map(str::to_string))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Finishes every waiting item of the job on `hub` marked `verified`: their device steps are done, and
    /// they keep `hub_job` (the import job that wrote them) as their mark. Returns how many.
    pub async fn finish_hub_job(
        &self,
        job_id: &str,
        hub: &str,
        verified: &str,
        hub_job: &str,
        step_count: usize,
        now: Millis,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE job_items SET state = 'succeeded', hub_job = $4, step_index = $5, attempt = 0, next_run_at = $6, \
             updated_at = $6, finished_at = $6 \
             WHERE job_id = $1 AND hub = $2 AND hub_job = $3 AND state = 'waiting'",
        )
        .bind(job_id)
        .bind(hub)
        .bind(verified)
        .bind(hub_job)
        .bind(step_count as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // PostgreSQL's kept counts append this statement's change; fold it with the rest.
        self.fold_item_counts(job_id).await?;
        Ok(r.rows_affected())
    }

    /// Waiting items of the job per hub (items whose record names no hub are left out: only their own
    /// step can look for them).
    pub async fn waiting_by_hub(&self, job_id: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .hub_counts(job_id)
            .await?
            .into_iter()
            .filter_map(|(hub, c)| Some((hub?, c.waiting)))
            .filter(|(_, n)| *n > 0)
            .collect())
    }

    /// A job on the same target created after `job_id`, other than its undos: undoing `job_id` would revert
    /// devices that job meant to keep changed.
    pub async fn later_job_on_target(&self, job_id: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT later.id FROM jobs later JOIN jobs j ON j.id = $1 \
             WHERE later.dps = j.dps AND later.target_key = j.target_key AND later.created_at > j.created_at \
             AND later.id <> j.id AND (later.undo_of IS NULL OR later.undo_of <> j.id) \
             ORDER BY later.created_at LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<String, _>("id")?),
            None => None,
        })
    }

    /// The undo jobs of job `job_id`, oldest first.
    pub async fn undo_jobs_of(&self, job_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM jobs WHERE undo_of = $1 ORDER BY created_at, id")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("id")?))
            .collect()
    }

    /// A page of the job's finished items (cursor = last seq), for an undo to pick those the job changed:
    /// whatever their end, since a hub job may have changed devices of a job that was then cancelled.
    pub async fn changed_items(
        &self,
        job_id: &str,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ItemRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT {ITEM_COLUMNS} FROM job_items WHERE job_id = $1 AND seq > $2 AND state IN ('succeeded', 'failed', 'cancelled') \
             ORDER BY seq LIMIT $3"
        ))
        .bind(job_id)
        .bind(after_seq.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(item_from_row).collect()
    }
}

//! Devices handled by a hub's import job: found by device id a batch of export lines at a time, marked
//! with the import job that writes them, unmarked when they fall back to their own registry step, and
//! finished once the verification export showed them disabled or gone.
//!
//! A batch of device ids travels as one parameter, a JSON array of strings ([`Store::text_list`]): binding
//! thousands of parameters one by one costs more than the statement itself.

use std::collections::HashSet;

use sqlx::Row;

use super::{
    HubItem, ItemRecord, Result, Store,
    rows::{ITEM_COLUMNS, item_from_row, opt_json},
};
use crate::domain::clock::Millis;

/// Device ids per lookup or update.
pub const DEVICE_BATCH: usize = 2_000;

// The batch statements below say `finished_at IS NULL`, the condition of the (job_id, hub, device_id) index,
// and check `(state || '')`: an expression no index serves, so neither SQLite nor PostgreSQL answers them
// by scanning every waiting item through a state index instead (migration 0016).

/// A statement on `job_items` with its parameters bound so far.
type Update<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn json_list(device_ids: &[&str]) -> String {
    // Invariant: a list of strings always serialises.
    serde_json::to_string(device_ids).expect("strings serialise")
}

impl Store {
    /// The job's waiting items on `hub` whose device ids are among `device_ids`: only what a hub job's
    /// bookkeeping needs of them.
    pub async fn waiting_on_hub(
        &self,
        job_id: &str,
        hub: &str,
        device_ids: &[&str],
    ) -> Result<Vec<HubItem>> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        let text = sql!(
            "SELECT id, device_id, registration_id, hub_job, data_json FROM job_items \
             WHERE job_id = $1 AND hub = $2 AND device_id IN {} AND finished_at IS NULL AND (state || '') = 'waiting'",
            self.text_list(3)
        );
        sqlx::query(text)
            .bind(job_id)
            .bind(hub)
            .bind(json_list(device_ids))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(HubItem {
                    id: row.try_get("id")?,
                    device_id: row.try_get("device_id")?,
                    registration_id: row.try_get("registration_id")?,
                    hub_job: row.try_get("hub_job")?,
                    data: opt_json(row, "data_json")?,
                })
            })
            .collect()
    }

    /// Which of `device_ids` are waiting items of the job on `hub`: one row back, whatever the batch's
    /// size (device ids hold no line break).
    pub async fn waiting_devices(
        &self,
        job_id: &str,
        hub: &str,
        device_ids: &[&str],
    ) -> Result<HashSet<String>> {
        if device_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let text = sql!(
            "SELECT {} AS ids FROM job_items \
             WHERE job_id = $1 AND hub = $2 AND device_id IN {} AND finished_at IS NULL AND (state || '') = 'waiting'",
            self.lines_of("device_id"),
            self.text_list(3)
        );
        let joined: Option<String> = sqlx::query(text)
            .bind(job_id)
            .bind(hub)
            .bind(json_list(device_ids))
            .fetch_one(&self.pool)
            .await?
            .try_get("ids")?;
        Ok(joined
            .as_deref()
            .unwrap_or_default()
            .split('\n')
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Runs `UPDATE job_items SET {set}` on the job's waiting items on `hub` among `device_ids`, with `and`
    /// added to the condition. `bind` binds `$1` (the job), `$2` (the hub) and the caller's values; the
    /// device list, bound last, is `$list`. Returns how many rows changed.
    async fn update_devices<'q>(
        &self,
        set: &str,
        and: &str,
        list: usize,
        device_ids: &[&str],
        bind: impl FnOnce(Update<'q>) -> Update<'q>,
    ) -> Result<u64> {
        if device_ids.is_empty() {
            return Ok(0);
        }
        let text = sql!(
            "UPDATE job_items SET {set} WHERE job_id = $1 AND hub = $2 AND device_id IN {} {and} \
             AND finished_at IS NULL AND (state || '') = 'waiting'",
            self.text_list(list)
        );
        let q = bind(sqlx::query(text)).bind(json_list(device_ids));
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    /// Marks the job's waiting items on `hub` whose device ids are among `device_ids` as handled by hub job
    /// run `hub_job`, recording whether the job changes them. Returns how many.
    pub async fn mark_hub_devices(
        &self,
        job_id: &str,
        hub: &str,
        hub_job: &str,
        changed: bool,
        device_ids: &[&str],
        now: Millis,
    ) -> Result<u64> {
        let set = "hub_job = $3, changed = $4, updated_at = $5";
        self.update_devices(set, "", 6, device_ids, |q| {
            q.bind(job_id.to_string())
                .bind(hub.to_string())
                .bind(hub_job.to_string())
                .bind(i64::from(changed))
                .bind(now)
        })
        .await
    }

    /// Moves the job's waiting items on `hub` marked `from` whose device ids are among `device_ids` to mark
    /// `to` (`None`: back to their own registry step, their `changed` forgotten). Returns how many.
    pub async fn move_hub_devices(
        &self,
        job_id: &str,
        hub: &str,
        from: &str,
        to: Option<&str>,
        device_ids: &[&str],
        now: Millis,
    ) -> Result<u64> {
        let set = "hub_job = $4, changed = CASE WHEN $4 IS NULL THEN NULL ELSE changed END, updated_at = $5";
        self.update_devices(set, "AND hub_job = $3", 6, device_ids, |q| {
            q.bind(job_id.to_string())
                .bind(hub.to_string())
                .bind(from.to_string())
                .bind(to.map(str::to_string))
                .bind(now)
        })
        .await
    }

    /// Finishes the job's waiting items on `hub` marked `from` whose device ids are among `device_ids`: their
    /// device steps are done, and they keep `hub_job` (the import job that wrote them) as their mark.
    /// Returns how many. (PostgreSQL's kept counts grow a row per statement: [`Store::fold_item_counts`]
    /// once the batches are over.)
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_hub_devices(
        &self,
        job_id: &str,
        hub: &str,
        from: &str,
        hub_job: &str,
        step_count: usize,
        device_ids: &[&str],
        now: Millis,
    ) -> Result<u64> {
        let set = "state = 'succeeded', hub_job = $4, step_index = $5, attempt = 0, next_run_at = $6, \
                   updated_at = $6, finished_at = $6";
        self.update_devices(set, "AND hub_job = $3", 7, device_ids, |q| {
            q.bind(job_id.to_string())
                .bind(hub.to_string())
                .bind(from.to_string())
                .bind(hub_job.to_string())
                .bind(step_count as i64)
                .bind(now)
        })
        .await
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
    /// they keep `hub_job` (the import job that wrote them) as their mark. Returns how many. On PostgreSQL
    /// the items are split by `seq` among [`Store::batch_writers`] statements under way at once.
    pub async fn finish_hub_job(
        &self,
        job_id: &str,
        hub: &str,
        verified: &str,
        hub_job: &str,
        step_count: usize,
        now: Millis,
    ) -> Result<u64> {
        let parts = self.batch_writers().max(1) as i64;
        let statements = (0..parts).map(|part| {
            sqlx::query(
                "UPDATE job_items SET state = 'succeeded', hub_job = $4, step_index = $5, attempt = 0, next_run_at = $6, \
                 updated_at = $6, finished_at = $6 \
                 WHERE job_id = $1 AND hub = $2 AND hub_job = $3 AND state = 'waiting' AND seq % $7 = $8",
            )
            .bind(job_id)
            .bind(hub)
            .bind(verified)
            .bind(hub_job)
            .bind(step_count as i64)
            .bind(now)
            .bind(parts)
            .bind(part)
            .execute(&self.pool)
        });
        let done = futures::future::try_join_all(statements).await?;
        // PostgreSQL's kept counts append each statement's change; fold them with the rest.
        self.fold_item_counts(job_id).await?;
        Ok(done.iter().map(|r| r.rows_affected()).sum())
    }

    /// Brings the planner's statistics of `job_items` up to date on PostgreSQL, before the job path's batch
    /// statements. Right after a job added its devices (before autovacuum's next look) the planner takes
    /// them for one row and plans each batch lookup as a scan of all the job's devices on the hub: 27 s for
    /// 2,000 ids among 100,000 devices, against 11 ms once analysed. SQLite's planner picks the device
    /// index without statistics.
    pub async fn refresh_item_statistics(&self) -> Result<()> {
        if self.backend() == super::Backend::Postgres {
            sqlx::query("ANALYZE job_items").execute(&self.pool).await?;
        }
        Ok(())
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

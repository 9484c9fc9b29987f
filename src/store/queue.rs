//! The worker side: claiming lanes under a lease (fenced, `FOR UPDATE SKIP LOCKED` on PostgreSQL),
//! renewing and releasing leases, and recording each step's result.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};

use super::rows::{
    ITEM_COLUMNS, JOB_COLUMNS, insert_events, insert_items, item_from_row, job_from_row, to_json,
};
use super::settle::{quarantine_item, quarantine_job, unreadable};
use super::{ItemRecord, JobRecord, NewEvent, NewItem, Result, Store, StoreError};
use crate::domain::clock::{Clock, ManualClock, Millis};
use crate::domain::context::JobContext;
use crate::domain::lane::{LaneState, StepError, Transition};

impl Store {
    /// Claims up to `limit` runnable job lanes (pending and due, or running with an expired lease).
    /// Each claim bumps the fence and counts as an attempt.
    ///
    /// Atomic: either every claimed row is handed out or the claim is rolled back. A row this build
    /// cannot decode is failed on the spot (with a reason saying so) instead of being left running,
    /// where it would come back at every lease expiry and never reach the attempt limit.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now: Millis,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<JobRecord>> {
        self.claim_jobs_with(owner, &ManualClock::new(now), lease, limit)
            .await
    }

    /// [`Store::claim_jobs`], reading `clock` once the connection is in hand: time spent waiting
    /// for a connection must not shorten the lease.
    pub async fn claim_jobs_with(
        &self,
        owner: &str,
        clock: &dyn Clock,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<JobRecord>> {
        let lock = self.lock_clause();
        // Two index ranges rather than one OR (which reads every candidate): lanes whose lease
        // expired (few), then pending lanes by due time.
        let claim = |pick: &str| {
            format!(
                "UPDATE jobs SET lane_state = 'running', lease_owner = $1, lease_expires_at = $2, fence = fence + 1, \
                 attempt = attempt + 1, updated_at = $3, started_at = COALESCE(started_at, $3), \
                 status = CASE WHEN status = 'queued' THEN 'running' ELSE status END \
                 WHERE id IN (SELECT id FROM jobs WHERE cancel_requested = 0 AND {pick} LIMIT $4{lock}) \
                 RETURNING {JOB_COLUMNS}"
            )
        };
        let expired = claim("lane_state = 'running' AND lease_expires_at < $3");
        let due = claim("lane_state = 'pending' AND next_run_at <= $3 ORDER BY next_run_at");
        let mut tx = self.pool.begin().await?;
        let now = clock.now_ms();
        let until = now + lease.as_millis() as i64;
        let mut rows = sqlx::query(AssertSqlSafe(expired))
            .bind(owner)
            .bind(until)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let left = limit.saturating_sub(rows.len() as u32);
        if left > 0 {
            rows.extend(
                sqlx::query(AssertSqlSafe(due))
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .bind(i64::from(left))
                    .fetch_all(&mut *tx)
                    .await?,
            );
        }
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            match job_from_row(row) {
                Ok(j) => jobs.push(j),
                Err(e) => {
                    let id: String = row.try_get("id")?;
                    tracing::error!(job = %id, error = %e, "failing a job this build cannot read");
                    quarantine_job(&mut tx, &id, &unreadable("job", &e), now).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(jobs)
    }

    /// Claims up to `limit` runnable device items.
    pub async fn claim_items(
        &self,
        owner: &str,
        now: Millis,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ItemRecord>> {
        let work = self
            .claim_item_work(owner, &ManualClock::new(now), lease, limit)
            .await?;
        Ok(work.into_iter().map(|(item, _)| item).collect())
    }

    /// Claims up to `limit` runnable device items, each with its job (read once per job).
    ///
    /// Atomic like [`Store::claim_jobs`]: an item whose row, or whose job's row, cannot be decoded
    /// is failed in the same transaction (the job with all its open items), never left leased.
    pub async fn claim_item_work(
        &self,
        owner: &str,
        clock: &dyn Clock,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<(ItemRecord, Arc<JobRecord>)>> {
        self.claim_item_work_except(owner, clock, lease, limit, &[])
            .await
    }

    /// [`Store::claim_item_work`], leaving due items of the hubs in `paced_hubs` where they are: their
    /// hub's budget is spent, so claiming them would only hand them back (pacing decides their due
    /// time, other hubs' devices go on). Expired leases are taken whatever their hub.
    pub async fn claim_item_work_except(
        &self,
        owner: &str,
        clock: &dyn Clock,
        lease: Duration,
        limit: u32,
        paced_hubs: &[String],
    ) -> Result<Vec<(ItemRecord, Arc<JobRecord>)>> {
        let lock = self.lock_clause();
        let claim = |pick: &str| {
            format!(
                "UPDATE job_items SET state = 'running', lease_owner = $1, lease_expires_at = $2, fence = fence + 1, \
                 attempt = attempt + 1, updated_at = $3 \
                 WHERE id IN (SELECT id FROM job_items WHERE {pick} LIMIT $4{lock}) \
                 RETURNING {ITEM_COLUMNS}"
            )
        };
        // Expired leases first: few rows, one range of the (state, lease_expires_at) index.
        let expired = claim(
            "state = 'running' AND lease_expires_at < $3 AND EXISTS \
             (SELECT 1 FROM jobs j WHERE j.id = job_items.job_id AND j.cancel_requested = 0)",
        );
        // Then due items one job at a time, each a range of the (job_id, state, next_run_at) index.
        let skip = if paced_hubs.is_empty() {
            String::new()
        } else {
            let marks: Vec<String> = (0..paced_hubs.len())
                .map(|i| format!("${}", i + 6))
                .collect();
            format!(" AND (hub IS NULL OR hub NOT IN ({}))", marks.join(", "))
        };
        let due = claim(&format!(
            "job_id = $5 AND state = 'pending' AND next_run_at <= $3{skip} ORDER BY next_run_at"
        ));
        let mut tx = self.pool.begin().await?;
        let now = clock.now_ms();
        let until = now + lease.as_millis() as i64;
        let mut rows = sqlx::query(AssertSqlSafe(expired))
            .bind(owner)
            .bind(until)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut left = limit.saturating_sub(rows.len() as u32);
        if left > 0 {
            // Items are only pending while their job waits at its barrier. Fair between jobs: each
            // gets an equal share of the free slots, in random order so that when there are more
            // jobs than slots none waits behind the others every time; unused shares go round again.
            // Higher priority first, and a larger share: weights low 1, normal 2, high 4.
            let mut open: Vec<(String, u32)> = sqlx::query(
                "SELECT id, priority FROM jobs WHERE lane_state = 'waiting_items' AND cancel_requested = 0 \
                 AND status IN ('queued', 'running') ORDER BY priority DESC, RANDOM()",
            )
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("id")?,
                    crate::domain::job::Priority::weight_of_rank(r.try_get::<i64, _>("priority")?),
                ))
            })
            .collect::<Result<_>>()?;
            while left > 0 && !open.is_empty() {
                let weights: u32 = open.iter().map(|(_, w)| *w).sum();
                let share = left.div_ceil(weights.max(1)).max(1);
                let mut still_open = Vec::with_capacity(open.len());
                for (job_id, weight) in open {
                    if left == 0 {
                        break;
                    }
                    let want = (share * weight).min(left);
                    let mut q = sqlx::query(AssertSqlSafe(due.clone()))
                        .bind(owner)
                        .bind(until)
                        .bind(now)
                        .bind(i64::from(want))
                        .bind(&job_id);
                    for h in paced_hubs {
                        q = q.bind(h);
                    }
                    let got = q.fetch_all(&mut *tx).await?;
                    left -= got.len() as u32;
                    if got.len() as u32 == want {
                        // It may have more: it takes part in the next round.
                        still_open.push((job_id, weight));
                    }
                    rows.extend(got);
                }
                open = still_open;
            }
        }
        let mut items = Vec::with_capacity(rows.len());
        let mut touched: Vec<String> = Vec::new();
        for row in &rows {
            match item_from_row(row) {
                Ok(i) => items.push(i),
                Err(e) => {
                    let id: String = row.try_get("id")?;
                    let job_id: String = row.try_get("job_id")?;
                    tracing::error!(item = %id, error = %e, "failing a device item this build cannot read");
                    quarantine_item(&mut tx, &id, &job_id, &unreadable("device item", &e), now)
                        .await?;
                    touched.push(job_id);
                }
            }
        }
        // Items of one job share one read of the job; a job that cannot be read takes its items down with it.
        let mut jobs: HashMap<String, Option<Arc<JobRecord>>> = HashMap::new();
        for it in &items {
            if jobs.contains_key(&it.job_id) {
                continue;
            }
            let row = sqlx::query(sql!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(&it.job_id)
                .fetch_optional(&mut *tx)
                .await?;
            let job = match row.map(|r| job_from_row(&r)) {
                Some(Ok(j)) => Some(Arc::new(j)),
                Some(Err(e)) => {
                    tracing::error!(job = %it.job_id, error = %e, "failing a job this build cannot read");
                    quarantine_job(&mut tx, &it.job_id, &unreadable("job", &e), now).await?;
                    None
                }
                None => {
                    // Items reference their job by foreign key; a missing job means a hand-edited database.
                    let err =
                        StepError::msg(format!("job {} of this device is missing", it.job_id));
                    sqlx::query(
                        "UPDATE job_items SET state = 'failed', lease_owner = NULL, lease_expires_at = NULL, \
                         last_error = $2, finished_at = $3, updated_at = $3 WHERE job_id = $1 AND state = 'running' \
                         AND lease_owner = $4",
                    )
                    .bind(&it.job_id)
                    .bind(to_json(&err))
                    .bind(now)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                    None
                }
            };
            jobs.insert(it.job_id.clone(), job);
        }
        tx.commit().await?;
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            if let Some(Some(job)) = jobs.get(&it.job_id) {
                out.push((it, job.clone()));
            }
        }
        // After the commit, and best effort: a job whose first activity is an item (after a retry)
        // shows as running; a job that lost an item to quarantine may be finished now. Neither may
        // undo the claim (taking the job row lock inside it could deadlock with a cancel).
        let mut seen = HashSet::new();
        for (it, _) in &out {
            if seen.insert(it.job_id.clone()) {
                let r = sqlx::query(
                    "UPDATE jobs SET status = 'running', updated_at = $2 WHERE id = $1 AND status = 'queued'",
                )
                .bind(&it.job_id)
                .bind(now)
                .execute(&self.pool)
                .await;
                if let Err(e) = r {
                    tracing::warn!(job = %it.job_id, error = %e, "could not mark the job running");
                }
            }
        }
        for job_id in touched {
            if let Err(e) = self.settle(&job_id, now).await {
                tracing::warn!(job = %job_id, error = %e, "settling after a quarantined item failed");
            }
        }
        Ok(out)
    }

    /// Extends a job lease; false when the lease was lost.
    pub async fn renew_job(&self, id: &str, fence: i64, until: Millis) -> Result<bool> {
        self.renew(LaneTable::Jobs, id, fence, until).await
    }

    /// Extends an item lease; false when the lease was lost.
    pub async fn renew_item(&self, id: &str, fence: i64, until: Millis) -> Result<bool> {
        self.renew(LaneTable::Items, id, fence, until).await
    }

    /// Extends a job lease to `lease` from `clock`'s time once a connection is in hand; false when the lease was lost.
    pub async fn renew_job_for(
        &self,
        id: &str,
        fence: i64,
        clock: &dyn Clock,
        lease: Duration,
    ) -> Result<bool> {
        self.renew_for(LaneTable::Jobs, id, fence, clock, lease)
            .await
    }

    /// Extends an item lease like [`Store::renew_job_for`].
    pub async fn renew_item_for(
        &self,
        id: &str,
        fence: i64,
        clock: &dyn Clock,
        lease: Duration,
    ) -> Result<bool> {
        self.renew_for(LaneTable::Items, id, fence, clock, lease)
            .await
    }

    /// Gives a job lane back without counting the attempt (graceful shutdown).
    pub async fn release_job(&self, id: &str, fence: i64, now: Millis) -> Result<bool> {
        self.release(LaneTable::Jobs, id, fence, now).await
    }

    /// Gives an item back without counting the attempt (graceful shutdown).
    pub async fn release_item(&self, id: &str, fence: i64, now: Millis) -> Result<bool> {
        self.release(LaneTable::Items, id, fence, now).await
    }

    async fn renew(&self, lane: LaneTable, id: &str, fence: i64, until: Millis) -> Result<bool> {
        self.renew_for(lane, id, fence, &ManualClock::new(until), Duration::ZERO)
            .await
    }

    async fn renew_for(
        &self,
        lane: LaneTable,
        id: &str,
        fence: i64,
        clock: &dyn Clock,
        lease: Duration,
    ) -> Result<bool> {
        let (table, state) = lane.names();
        let mut conn = self.pool.acquire().await?;
        let until = clock.now_ms() + lease.as_millis() as i64;
        let r = sqlx::query(sql!(
            "UPDATE {table} SET lease_expires_at = $3 WHERE id = $1 AND fence = $2 AND {state} = 'running'"
        ))
        .bind(id)
        .bind(fence)
        .bind(until)
        .execute(&mut *conn)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn release(&self, lane: LaneTable, id: &str, fence: i64, now: Millis) -> Result<bool> {
        let (table, state) = lane.names();
        let r = sqlx::query(sql!(
            "UPDATE {table} SET {state} = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
             attempt = CASE WHEN attempt > 0 THEN attempt - 1 ELSE 0 END, next_run_at = $3, updated_at = $3 \
             WHERE id = $1 AND fence = $2 AND {state} = 'running'"
        ))
        .bind(id)
        .bind(fence)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records the result of a job step, fenced on the claim: a stale worker gets [`StoreError::Fenced`].
    pub async fn complete_job_step(
        &self,
        job: &JobRecord,
        t: &Transition,
        effects: &StepEffects,
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let cancelled = job_cancelled(&mut tx, &job.id).await?;
        let state = if cancelled && !t.state.is_terminal() {
            LaneState::Cancelled
        } else {
            t.state
        };
        let ctx = effects
            .context
            .as_ref()
            .map(to_json)
            .or_else(|| job.context.as_ref().map(to_json));
        let r = sqlx::query(
            "UPDATE jobs SET lane_state = $3, step_index = $4, attempt = $5, next_run_at = $6, cursor = $7, \
             last_error = $8, context_json = $9, lease_owner = NULL, lease_expires_at = NULL, updated_at = $10, \
             throttled_since = $11 WHERE id = $1 AND fence = $2 AND lane_state = 'running'",
        )
        .bind(&job.id)
        .bind(job.fence)
        .bind(state.as_str())
        .bind(t.step_index as i64)
        .bind(i64::from(t.attempt))
        .bind(t.next_run_at)
        .bind(t.cursor.clone())
        .bind(t.error.as_ref().map(to_json))
        .bind(ctx)
        .bind(now)
        .bind(t.throttled_since)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(StoreError::Fenced);
        }
        // A cancelled job starts no new device work: items found now would be left waiting for ever.
        if !effects.new_items.is_empty() && !cancelled {
            insert_items(&mut tx, &job.id, &effects.new_items, now).await?;
        }
        if state == LaneState::WaitingItems {
            // The revoke step is behind us: the devices' registry steps may start now.
            sqlx::query(
                "UPDATE job_items SET state = 'pending', next_run_at = $2, updated_at = $2 \
                 WHERE job_id = $1 AND state = 'waiting'",
            )
            .bind(&job.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let events: Vec<(Millis, &NewEvent)> = effects.events.iter().map(|e| (now, e)).collect();
        insert_events(&mut tx, &job.id, &events).await?;
        tx.commit().await?;
        self.settle(&job.id, now).await?;
        Ok(())
    }

    /// Records the result of an item step, fenced on the claim.
    pub async fn complete_item_step(
        &self,
        item: &ItemRecord,
        t: &Transition,
        effects: &StepEffects,
        now: Millis,
    ) -> Result<()> {
        let done = ItemCompletion {
            item: item.clone(),
            transition: t.clone(),
            effects: effects.clone(),
            now,
        };
        let mut results = self
            .complete_item_steps(std::slice::from_ref(&done))
            .await?;
        // Invariant: one result per completion given.
        results.pop().expect("one result for one completion")
    }

    /// Records the results of several item steps in one transaction (a group commit: one fsync for
    /// all on SQLite), each fenced on its own claim, then settles each job a device of it ended in.
    ///
    /// The outer error means nothing was recorded; otherwise each completion has its own result, and
    /// one whose lease a newer claim took is [`StoreError::Fenced`] without affecting the others.
    pub async fn complete_item_steps(&self, batch: &[ItemCompletion]) -> Result<Vec<Result<()>>> {
        let (results, to_settle) = self.record_item_steps(batch).await?;
        self.settle_after(&to_settle).await;
        Ok(results)
    }

    /// [`Store::complete_item_steps`] without the settling: the results, and the jobs to settle (with the
    /// time to settle them at) once whoever waits for the results has them.
    pub async fn record_item_steps(
        &self,
        batch: &[ItemCompletion],
    ) -> Result<(Vec<Result<()>>, Vec<(String, Millis)>)> {
        let mut tx = self.pool.begin().await?;
        let mut cancelled: HashMap<&str, bool> = HashMap::new();
        let mut results = Vec::with_capacity(batch.len());
        let mut to_settle: Vec<(&str, Millis)> = Vec::new();
        let mut events: Vec<(&str, Vec<(Millis, &NewEvent)>)> = Vec::new();
        for done in batch {
            let (item, t, now) = (&done.item, &done.transition, done.now);
            let job_cancelled = match cancelled.get(item.job_id.as_str()) {
                Some(c) => *c,
                None => {
                    let c = job_cancelled(&mut tx, &item.job_id).await?;
                    cancelled.insert(&item.job_id, c);
                    c
                }
            };
            let state = if job_cancelled && !t.state.is_terminal() {
                LaneState::Cancelled
            } else {
                t.state
            };
            let finished = state.is_terminal().then_some(now);
            let data = done
                .effects
                .item_data
                .as_ref()
                .map(to_json)
                .or_else(|| item.data.as_ref().map(to_json));
            let r = sqlx::query(
                "UPDATE job_items SET state = $3, step_index = $4, attempt = $5, next_run_at = $6, last_error = $7, \
                 skip_reason = $8, data_json = $9, lease_owner = NULL, lease_expires_at = NULL, updated_at = $10, \
                 finished_at = $11, throttled_since = $12 WHERE id = $1 AND fence = $2 AND state = 'running'",
            )
            .bind(&item.id)
            .bind(item.fence)
            .bind(state.as_str())
            .bind(t.step_index as i64)
            .bind(i64::from(t.attempt))
            .bind(t.next_run_at)
            .bind(t.error.as_ref().map(to_json))
            .bind(t.skip_reason.clone())
            .bind(data)
            .bind(now)
            .bind(finished)
            .bind(t.throttled_since)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() != 1 {
                results.push(Err(StoreError::Fenced));
                continue;
            }
            // Written after the loop, one numbering and one INSERT per job of the batch.
            let mine = done.effects.events.iter().map(|e| (now, e));
            match events.iter_mut().find(|(job, _)| *job == item.job_id) {
                Some((_, list)) => list.extend(mine),
                None => events.push((&item.job_id, mine.collect())),
            }
            if state.is_terminal() {
                match to_settle.iter_mut().find(|(job, _)| *job == item.job_id) {
                    Some((_, at)) => *at = (*at).max(now),
                    None => to_settle.push((&item.job_id, now)),
                }
            }
            results.push(Ok(()));
        }
        for (job_id, list) in &events {
            insert_events(&mut tx, job_id, list).await?;
        }
        tx.commit().await?;
        let to_settle = to_settle
            .into_iter()
            .map(|(job, at)| (job.to_string(), at))
            .collect();
        Ok((results, to_settle))
    }

    /// Settles the jobs [`Store::record_item_steps`] named. The results are recorded already, whatever
    /// settling does: a failed settle is left to the periodic sweep rather than reported as a failed
    /// write (which would send the batch to be written again, one at a time, only to be fenced).
    pub async fn settle_after(&self, jobs: &[(String, Millis)]) {
        for (job_id, now) in jobs {
            if let Err(e) = self.settle(job_id, *now).await {
                tracing::warn!(job = %job_id, error = %e, "settling after device results failed; the sweep will retry");
            }
        }
    }
}

/// Side effects of a step besides its outcome.
#[derive(Debug, Clone, Default)]
pub struct StepEffects {
    /// Device items discovered (job steps only).
    pub new_items: Vec<NewItem>,
    /// New context of the job (job steps only).
    pub context: Option<JobContext>,
    /// New data of the item (item steps only).
    pub item_data: Option<Value>,
    /// Timeline entries.
    pub events: Vec<NewEvent>,
}

/// The result of one device's step, to record.
#[derive(Debug, Clone)]
pub struct ItemCompletion {
    /// The item as claimed (its fence guards the write).
    pub item: ItemRecord,
    /// Where its lane goes.
    pub transition: Transition,
    /// What else the step produced.
    pub effects: StepEffects,
    /// When the step ended.
    pub now: Millis,
}

/// The two kinds of lanes share their lease columns; only the table and state column differ.
#[derive(Clone, Copy)]
pub(super) enum LaneTable {
    Jobs,
    Items,
}

impl LaneTable {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            LaneTable::Jobs => ("jobs", "lane_state"),
            LaneTable::Items => ("job_items", "state"),
        }
    }
}

pub(super) async fn job_cancelled(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
) -> Result<bool> {
    let flag: Option<i64> = sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(flag.unwrap_or(0) != 0)
}

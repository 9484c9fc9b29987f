//! Settling: applying the domain's completion policy ([`crate::domain::settle`]) to a job, with
//! compare-and-set writes, and failing rows this build cannot read.

use super::rows::{insert_event, to_json};
use super::{JobRecord, NewEvent, Result, Store, StoreError};
use crate::domain::clock::Millis;
use crate::domain::lane::{LaneState, StepError};
use crate::domain::settle::{Ending, JobLane, Settlement, settle};

impl Store {
    /// Moves a job on when nothing is left running: past the items barrier once every item is done,
    /// to `failed` when some failed, to `cancelled` after a cancel, and derives its status.
    ///
    /// Runs in its own statements after the write that may have unblocked it, and is idempotent, so
    /// concurrent completions on several replicas cannot leave a job stuck.
    pub async fn settle(&self, job_id: &str, now: Millis) -> Result<()> {
        let job = match self.get_job(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(()),
            Err(e @ StoreError::Corrupt(_)) => {
                // A job this build cannot read never settles: fail it (and its open items) instead.
                tracing::error!(job = %job_id, error = %e, "failing a job this build cannot read");
                let mut tx = self.pool.begin().await?;
                quarantine_job(&mut tx, job_id, &unreadable("job", &e), now).await?;
                tx.commit().await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.settle_job(&job, now).await
    }

    /// [`Store::settle`] from a record already read (possibly some time ago): whatever it decides is
    /// written only if the job is still in the state read, so a stale record changes nothing.
    pub async fn settle_job(&self, read: &JobRecord, now: Millis) -> Result<()> {
        let mut job = read.clone();
        let job_id = read.id.as_str();
        if !job.status.is_active() {
            return Ok(());
        }
        // Settling follows each batch of device results: the moment to fold the count changes they
        // appended, so reading a job's counts stays a few rows however many devices it has.
        self.fold_item_counts(job_id).await?;
        if job.cancel_requested {
            // Work whose worker died after the cancel will never be reclaimed: end it here.
            sqlx::query(
                "UPDATE job_items SET state = 'cancelled', lease_owner = NULL, finished_at = $2, updated_at = $2 \
                 WHERE job_id = $1 AND state = 'running' AND lease_expires_at < $2",
            )
            .bind(job_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
            sqlx::query(
                "UPDATE jobs SET lane_state = 'cancelled', lease_owner = NULL, updated_at = $2 \
                 WHERE id = $1 AND lane_state = 'running' AND lease_expires_at < $2",
            )
            .bind(job_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
            // Only this branch changed the row; read it again here and not on every settle.
            let Some(fresh) = self.get_job(job_id).await? else {
                return Ok(());
            };
            job = fresh;
        }
        if job.lane_state == LaneState::WaitingItems && !job.cancel_requested {
            // Most calls come from one of many finishing devices: a cheap look before counting them all.
            let open: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM job_items WHERE job_id = $1 AND state IN ('waiting', 'pending', 'running') LIMIT 1",
            )
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
            if open.is_some() {
                return Ok(());
            }
        }
        let counts = self.item_counts(job_id).await?;
        let lane = JobLane {
            plan: &job.plan,
            step_index: job.step_index,
            lane_state: job.lane_state,
            cancel_requested: job.cancel_requested,
            last_error: job.last_error.as_ref(),
        };
        match settle(lane, &counts, now) {
            Settlement::Wait => Ok(()),
            Settlement::End(ending) => self.finish(&job, &ending, now).await,
            Settlement::PassBarrier {
                next,
                message,
                then,
            } => {
                let r = sqlx::query(
                    "UPDATE jobs SET lane_state = $2, step_index = $3, attempt = 0, next_run_at = $4, updated_at = $4 \
                     WHERE id = $1 AND lane_state = 'waiting_items' AND step_index = $5",
                )
                .bind(job_id)
                .bind(next.state.as_str())
                .bind(next.step_index as i64)
                .bind(now)
                .bind(job.step_index as i64)
                .execute(&self.pool)
                .await?;
                if r.rows_affected() != 1 {
                    // Another settle moved it first.
                    return Ok(());
                }
                self.append_events(job_id, now, &[NewEvent::new("items_finished", message)])
                    .await?;
                match then {
                    Some(ending) => {
                        // What the row holds after the move just made.
                        let moved = JobRecord {
                            step_index: next.step_index,
                            lane_state: next.state,
                            ..job.clone()
                        };
                        self.finish(&moved, &ending, now).await
                    }
                    None => Ok(()),
                }
            }
        }
    }

    async fn finish(&self, job: &JobRecord, ending: &Ending, now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Compare-and-set on the state the decision was made from: a settle delayed past a retry
        // (which bumps the fence), a claim, a move past the barrier or a cancel must not have its
        // stale verdict applied. A cancel accepted after the read ends the job as cancelled through
        // its own settle.
        let r = sqlx::query(
            "UPDATE jobs SET status = $2, lane_state = $3, active_key = NULL, last_error = $4, finished_at = $5, \
             updated_at = $5 WHERE id = $1 AND status IN ('queued', 'running') AND cancel_requested = $6 \
             AND fence = $7 AND lane_state = $8 AND step_index = $9",
        )
        .bind(&job.id)
        .bind(ending.status.as_str())
        .bind(ending.lane_state.as_str())
        .bind(ending.error.as_ref().map(to_json))
        .bind(now)
        .bind(i64::from(job.cancel_requested))
        .bind(job.fence)
        .bind(job.lane_state.as_str())
        .bind(job.step_index as i64)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            let mut e = NewEvent::new(ending.status.as_str(), ending.message.clone());
            e.kind = format!("job_{}", ending.status.as_str());
            insert_event(&mut tx, &job.id, now, &e).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Settles every job a missed wake-up may have left unsettled (a periodic safety net).
    ///
    /// One job that cannot be settled is logged and skipped: it must not keep the others stuck.
    pub async fn settle_waiting(&self, now: Millis) -> Result<()> {
        let ids = self.jobs_to_settle().await?;
        for id in ids {
            if let Err(e) = self.settle(&id, now).await {
                tracing::error!(job = %id, error = %e, "settling the job failed; the sweep goes on");
            }
        }
        Ok(())
    }

    /// Jobs the settle sweep must look at: active jobs whose lane ended, cancelled ones, and jobs
    /// waiting on their items when none is open any more (not every waiting job at every poll).
    pub async fn jobs_to_settle(&self) -> Result<Vec<String>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND \
             (lane_state IN ('succeeded', 'failed', 'cancelled') OR cancel_requested = 1 OR \
              (lane_state = 'waiting_items' AND NOT EXISTS (SELECT 1 FROM job_items i WHERE i.job_id = jobs.id \
               AND i.state IN ('waiting', 'pending', 'running')))) \
             ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }
}

/// The error recorded on a row this build cannot decode.
pub(super) fn unreadable(what: &str, e: &StoreError) -> StepError {
    StepError::msg(format!(
        "the stored {what} cannot be read by this version of deprovisiond ({e}); it was failed instead of run \
         (if a newer version wrote it, let that version handle it and retry the job there)"
    ))
}

/// Fails a job and every open item of it without decoding its row.
pub(super) async fn quarantine_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
    err: &StepError,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET status = 'failed', lane_state = 'failed', active_key = NULL, lease_owner = NULL, \
         lease_expires_at = NULL, last_error = $2, finished_at = $3, updated_at = $3 \
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(job_id)
    .bind(to_json(err))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE job_items SET state = 'failed', lease_owner = NULL, lease_expires_at = NULL, last_error = $2, \
         finished_at = $3, updated_at = $3 WHERE job_id = $1 AND state IN ('waiting', 'pending', 'running')",
    )
    .bind(job_id)
    .bind(to_json(err))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let mut e = NewEvent::new("failed", err.message.clone());
    e.kind = "job_failed".into();
    insert_event(tx, job_id, now, &e).await
}

/// Fails one item without decoding its row.
pub(super) async fn quarantine_item(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    item_id: &str,
    job_id: &str,
    err: &StepError,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE job_items SET state = 'failed', lease_owner = NULL, lease_expires_at = NULL, last_error = $2, \
         finished_at = $3, updated_at = $3 WHERE id = $1",
    )
    .bind(item_id)
    .bind(to_json(err))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let mut e = NewEvent::new("step_failed", err.message.clone());
    e.item_id = Some(item_id.to_string());
    insert_event(tx, job_id, now, &e).await
}

//! A job's life as callers drive it: creation (idempotent, one active job per target), reading one,
//! its timeline entries, cancel and retry.

use sqlx::Row;

use super::rows::{JOB_COLUMNS, insert_event, insert_events, job_from_row, to_json};
use super::{
    Created, HELD_UNTIL, JobOrigin, JobRecord, NewEvent, NewJob, Result, Store, StoreError,
};
use crate::domain::clock::Millis;
use crate::domain::job::JobStatus;
use crate::domain::lane::LaneState;
use crate::domain::plan::JobStep;

impl Store {
    /// Creates a job, or returns the one an earlier identical request with the same idempotency key created.
    pub async fn create_job(&self, new: NewJob, now: Millis) -> Result<Created> {
        self.create_job_as(new, &JobOrigin::default(), now).await
    }

    /// [`Store::create_job`] recording `origin`: the authenticated requester, and an approval hold.
    ///
    /// A held job is `awaiting_approval` with its lane pending but due at [`HELD_UNTIL`], so no claim picks
    /// it up until an approval makes it due; it holds its target's `active_key` all the while.
    pub async fn create_job_as(
        &self,
        new: NewJob,
        origin: &JobOrigin,
        now: Millis,
    ) -> Result<Created> {
        if let Some((key, hash)) = &new.idempotency {
            if let Some(existing) = self.replay(key, hash).await? {
                return Ok(Created::Replayed(existing));
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let req = &new.request;
        let target_key = format!("{}/{}", new.dps, req.target.key());
        let first_state = crate::domain::lane::next_step(new.plan.job_steps(), 0, now);
        let requester = origin
            .requester
            .clone()
            .or_else(|| req.requested_by.clone());
        let status = if origin.hold.is_some() {
            JobStatus::AwaitingApproval
        } else {
            JobStatus::Queued
        };
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, dps, target_kind, target_id, target_key, request_json, requested_by, reason_code, \
             reason_text, ticket_system, ticket_key, ticket_url, idempotency_key, request_hash, status, active_key, \
             plan_json, step_index, lane_state, next_run_at, created_at, updated_at, approval_rule, approval_expires_at, \
             priority, undo_of) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$21,$22,$23,$24,$25)",
        )
        .bind(&id)
        .bind(&new.dps)
        .bind(req.target.kind().as_str())
        .bind(req.target.id())
        .bind(req.target.key())
        .bind(to_json(req))
        .bind(requester.clone())
        .bind(req.reason.code.as_str())
        .bind(req.reason.text.clone())
        .bind(req.ticket.as_ref().map(|t| t.system.clone()))
        .bind(req.ticket.as_ref().map(|t| t.key.clone()))
        .bind(req.ticket.as_ref().and_then(|t| t.url.clone()))
        .bind(new.idempotency.as_ref().map(|(k, _)| k.clone()))
        .bind(new.idempotency.as_ref().map(|(_, h)| h.clone()))
        .bind(status.as_str())
        .bind(&target_key)
        .bind(to_json(&new.plan))
        .bind(first_state.step_index as i64)
        .bind(first_state.state.as_str())
        .bind(if origin.hold.is_some() { HELD_UNTIL } else { now })
        .bind(now)
        .bind(origin.hold.as_ref().map(|(rule, _)| rule.clone()))
        .bind(origin.hold.as_ref().map(|(_, until)| *until))
        .bind(req.priority.rank())
        .bind(req.undo.as_ref().map(|u| u.job_id.clone()))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await?;
                // Either a concurrent request with the same idempotency key won, or the target is busy.
                if let Some((key, hash)) = &new.idempotency {
                    if let Some(existing) = self.replay(key, hash).await? {
                        return Ok(Created::Replayed(existing));
                    }
                }
                let job_id: Option<String> =
                    sqlx::query_scalar("SELECT id FROM jobs WHERE active_key = $1")
                        .bind(&target_key)
                        .fetch_optional(&self.pool)
                        .await?;
                return Err(StoreError::ActiveJobExists {
                    job_id: job_id.unwrap_or_default(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        insert_event(
            &mut tx,
            &id,
            now,
            &NewEvent {
                kind: "created".into(),
                message: Some(format!(
                    "{}{} {} requested ({}){}{}",
                    match &req.undo {
                        Some(u) => format!("undo of job {}: ", u.job_id),
                        None => String::new(),
                    },
                    req.target.kind().as_str(),
                    req.target.id(),
                    req.reason.code.as_str(),
                    requester
                        .as_ref()
                        .map(|r| format!(" by {r}"))
                        .unwrap_or_default(),
                    match (&req.requested_by, &origin.requester) {
                        (Some(b), Some(_)) => format!(" on behalf of {b}"),
                        _ => String::new(),
                    }
                )),
                detail: requester.as_ref().map(|r| serde_json::json!({ "by": r })),
                ..NewEvent::default()
            },
        )
        .await?;
        if let Some((rule, until)) = &origin.hold {
            insert_event(
                &mut tx,
                &id,
                now,
                &NewEvent {
                    kind: "approval_required".into(),
                    message: Some(format!(
                        "held for approval by an admin other than the requester ({rule}); expires at {}",
                        crate::domain::clock::to_rfc3339(*until)
                    )),
                    detail: Some(serde_json::json!({ "rule": rule, "expires_at": crate::domain::clock::to_rfc3339(*until) })),
                    ..NewEvent::default()
                },
            )
            .await?;
        }
        // Read back inside the transaction: the answer shows the job as created, before any worker claims it.
        let row = sqlx::query(sql!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        let job = job_from_row(&row)?;
        tx.commit().await?;
        Ok(Created::New(job))
    }

    pub(super) async fn replay(&self, key: &str, hash: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query("SELECT id, request_hash FROM jobs WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let stored: Option<String> = row.try_get("request_hash")?;
        if stored.as_deref() != Some(hash) {
            return Err(StoreError::IdempotencyMismatch { job_id: id });
        }
        self.get_job(&id).await
    }

    /// One job.
    pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(sql!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_from_row(&r)).transpose()
    }

    /// Appends events to a job's timeline.
    pub async fn append_events(
        &self,
        job_id: &str,
        now: Millis,
        events: &[NewEvent],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let events: Vec<(Millis, &NewEvent)> = events.iter().map(|e| (now, e)).collect();
        insert_events(&mut tx, job_id, &events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Asks a queued or running job to stop: nothing new starts; a step in flight completes and is recorded.
    ///
    /// The flag is set only while the job is still queued or running (in the same statement that
    /// checks it), so a cancel that loses a race with the job finishing is refused rather than
    /// answered as accepted and left on the finished job.
    pub async fn cancel_job(&self, id: &str, now: Millis) -> Result<JobRecord> {
        self.cancel_job_by(id, None, now).await
    }

    /// [`Store::cancel_job`] recording who asked in the timeline. A job still awaiting approval ends as
    /// cancelled at once (nothing of it ever ran).
    pub async fn cancel_job_by(
        &self,
        id: &str,
        by: Option<&str>,
        now: Millis,
    ) -> Result<JobRecord> {
        if self.withdraw_held(id, by, now).await? {
            return self
                .get_job(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.into()));
        }
        let mut tx = self.pool.begin().await?;
        let flagged = sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $2 WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if flagged.rows_affected() != 1 {
            tx.rollback().await?;
            let job = self
                .get_job(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.into()))?;
            return Err(StoreError::InvalidTransition {
                job_id: id.into(),
                status: job.status.as_str(),
                action: "cancel",
                allowed: "queued or running",
            });
        }
        sqlx::query(
            "UPDATE job_items SET state = 'cancelled', updated_at = $2, finished_at = $2 \
             WHERE job_id = $1 AND state IN ('waiting', 'pending')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET lane_state = 'cancelled', updated_at = $2 \
             WHERE id = $1 AND lane_state IN ('pending', 'waiting_items')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            id,
            now,
            &NewEvent::requested(
                "cancel_requested",
                match by {
                    Some(b) => format!("cancellation requested by {b}"),
                    None => "cancellation requested".into(),
                },
                by,
            ),
        )
        .await?;
        tx.commit().await?;
        self.settle(id, now).await?;
        self.get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.into()))
    }

    /// Re-queues a failed job: failed steps run again, succeeded ones are never repeated.
    pub async fn retry_job(&self, id: &str, now: Millis) -> Result<JobRecord> {
        self.retry_job_by(id, None, now).await
    }

    /// [`Store::retry_job`] recording who asked in the timeline.
    pub async fn retry_job_by(&self, id: &str, by: Option<&str>, now: Millis) -> Result<JobRecord> {
        let job = self
            .get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.into()))?;
        if job.status != JobStatus::Failed {
            return Err(StoreError::InvalidTransition {
                job_id: id.into(),
                status: job.status.as_str(),
                action: "retry",
                allowed: "failed",
            });
        }
        let at_barrier = job.current_step() == Some(JobStep::Items);
        let lane = if job.lane_state == LaneState::Failed && !at_barrier {
            LaneState::Pending
        } else {
            LaneState::WaitingItems
        };
        let target_key = format!("{}/{}", job.dps, job.request.target.key());
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET status = 'queued', active_key = $2, lane_state = $3, attempt = 0, next_run_at = $4, \
             last_error = NULL, finished_at = NULL, cancel_requested = 0, fence = fence + 1, updated_at = $4 \
             WHERE id = $1 AND status = 'failed'",
        )
        .bind(id)
        .bind(&target_key)
        .bind(lane.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match updated {
            Ok(r) if r.rows_affected() == 1 => {}
            Ok(_) => {
                return Err(StoreError::InvalidTransition {
                    job_id: id.into(),
                    status: "no longer failed",
                    action: "retry",
                    allowed: "failed",
                });
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await?;
                let other: Option<String> =
                    sqlx::query_scalar("SELECT id FROM jobs WHERE active_key = $1")
                        .bind(&target_key)
                        .fetch_optional(&self.pool)
                        .await?;
                return Err(StoreError::ActiveJobExists {
                    job_id: other.unwrap_or_default(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        // A job that failed before its items barrier (e.g. in import_jobs) resumes there: its devices wait
        // for the barrier again, keeping the marks its hub jobs put on them.
        let before_barrier = job
            .plan
            .job_steps()
            .iter()
            .position(|s| *s == JobStep::Items)
            .is_some_and(|barrier| job.step_index < barrier);
        let items = sqlx::query(
            "UPDATE job_items SET state = $3, attempt = 0, next_run_at = $2, finished_at = NULL, updated_at = $2 \
             WHERE job_id = $1 AND state = 'failed'",
        )
        .bind(id)
        .bind(now)
        .bind(if before_barrier { "waiting" } else { "pending" })
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            id,
            now,
            &NewEvent::requested(
                "retried",
                format!(
                    "retry requested{}: job resumes at its failed step; {} failed device(s) re-queued",
                    by.map(|b| format!(" by {b}")).unwrap_or_default(),
                    items.rows_affected()
                ),
                by,
            ),
        )
        .await?;
        tx.commit().await?;
        self.get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.into()))
    }
}

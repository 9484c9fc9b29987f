//! The two-person rule in the database: jobs held in `awaiting_approval`, and their approval, rejection,
//! withdrawal (a cancel) and expiry. Each transition is one conditional UPDATE on the held status, so two
//! admins deciding at once, or a decision racing the expiry sweep, cannot both win.

use super::rows::insert_event;
use super::{JobRecord, NewEvent, Result, Store, StoreError};
use crate::domain::clock::Millis;

/// `next_run_at` of a held job: never due, so the claims (which pick due pending lanes) leave it alone.
pub const HELD_UNTIL: Millis = i64::MAX / 4;

/// How a held job is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Released to the engine.
    Approve,
    /// Ended, nothing done.
    Reject,
}

impl Store {
    /// Approves or rejects a held job as `by`, who must not be its requester (refused with
    /// [`StoreError::InvalidTransition`] otherwise, as is a job no longer held).
    pub async fn decide_job(
        &self,
        id: &str,
        decision: Decision,
        by: &str,
        comment: Option<&str>,
        now: Millis,
    ) -> Result<JobRecord> {
        let job = self
            .get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.into()))?;
        let (sql, kind, verb) = match decision {
            Decision::Approve => (
                "UPDATE jobs SET status = 'queued', next_run_at = $3, decided_by = $2, decided_at = $3, updated_at = $3 \
                 WHERE id = $1 AND status = 'awaiting_approval' AND COALESCE(requested_by, '') <> $2 \
                 AND approval_expires_at > $3",
                "approved",
                "approved",
            ),
            Decision::Reject => (
                "UPDATE jobs SET status = 'rejected', lane_state = 'cancelled', active_key = NULL, decided_by = $2, \
                 decided_at = $3, finished_at = $3, updated_at = $3 \
                 WHERE id = $1 AND status = 'awaiting_approval' AND COALESCE(requested_by, '') <> $2",
                "rejected",
                "rejected",
            ),
        };
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(sql)
            .bind(id)
            .bind(by)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            let job = self
                .get_job(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.into()))?;
            return Err(StoreError::InvalidTransition {
                job_id: id.into(),
                status: if job.requested_by.as_deref() == Some(by) {
                    "requested by this caller"
                } else {
                    job.status.as_str()
                },
                action: if decision == Decision::Approve {
                    "approval"
                } else {
                    "rejection"
                },
                allowed: "awaiting approval, and decided by an admin other than its requester",
            });
        }
        let mut message = format!("{verb} by {by}");
        if let Some(c) = comment {
            message.push_str(": ");
            message.push_str(c);
        }
        insert_event(
            &mut tx,
            id,
            now,
            &NewEvent {
                detail: Some(serde_json::json!({
                    "by": by,
                    "requested_by": job.requested_by,
                    "comment": comment,
                })),
                ..NewEvent::new(kind, message)
            },
        )
        .await?;
        tx.commit().await?;
        self.get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.into()))
    }

    /// Ends a held job as cancelled (its requester, or an operator, withdrawing it); `false` when it is not
    /// held (the cancel then takes its usual path).
    pub(super) async fn withdraw_held(
        &self,
        id: &str,
        by: Option<&str>,
        now: Millis,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE jobs SET status = 'cancelled', lane_state = 'cancelled', active_key = NULL, cancel_requested = 1, \
             finished_at = $2, updated_at = $2 WHERE id = $1 AND status = 'awaiting_approval'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(
            &mut tx,
            id,
            now,
            &NewEvent::requested(
                "job_cancelled",
                match by {
                    Some(b) => format!("cancelled by {b} while awaiting approval"),
                    None => "cancelled while awaiting approval".into(),
                },
                by,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends every held job whose approval expired by `now`, as `expired`; returns their ids.
    pub async fn expire_approvals(&self, now: Millis) -> Result<Vec<String>> {
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status = 'awaiting_approval' AND approval_expires_at <= $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut expired = Vec::new();
        for id in due {
            let mut tx = self.pool.begin().await?;
            // Conditional: an approval that won the race keeps the job.
            let r = sqlx::query(
                "UPDATE jobs SET status = 'expired', lane_state = 'cancelled', active_key = NULL, finished_at = $2, \
                 updated_at = $2 WHERE id = $1 AND status = 'awaiting_approval' AND approval_expires_at <= $2",
            )
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                insert_event(
                    &mut tx,
                    &id,
                    now,
                    &NewEvent::new("job_expired", "not approved in time; nothing was done"),
                )
                .await?;
                expired.push(id);
            }
            tx.commit().await?;
        }
        Ok(expired)
    }
}

//! The callback outbox: callbacks jobs carry, and their attempts.
//!
//! A callback is registered when its job is created and becomes due when the job reaches a final status
//! (`succeeded`, `failed`, `cancelled`): the sender finds due callbacks by joining `jobs`, so the engine does
//! not know callbacks exist. Each finish of a job (a failed job can be retried and finish again) is one round
//! of attempts, keyed by the job's `finished_at`.

use sqlx::Row;

use super::{Result, Store};
use crate::domain::clock::Millis;

/// A callback whose job has finished and that has not been delivered for that finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCallback {
    /// The job.
    pub job_id: String,
    /// `http` or `jira_comment`.
    pub kind: String,
    /// URL, or Jira issue key.
    pub destination: String,
    /// The webhook source that registered it.
    pub source: String,
    /// The job's finish this round is for.
    pub finished_at: Millis,
    /// Attempts already made in this round.
    pub attempts: u32,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The destination accepted it.
    Delivered,
    /// It failed; try again at this time.
    RetryAt(Millis, String),
    /// It failed and no attempt is left.
    GaveUp(String),
}

impl Store {
    /// Registers a callback for a job (again: nothing changes).
    pub async fn register_callback(
        &self,
        job_id: &str,
        kind: &str,
        destination: &str,
        source: &str,
        now: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO job_callbacks (job_id, kind, destination, source, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job_id, kind) DO NOTHING",
        )
        .bind(job_id)
        .bind(kind)
        .bind(destination)
        .bind(source)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Claims up to `limit` due callbacks for `lease_ms` (another replica skips them meanwhile).
    pub async fn claim_due_callbacks(
        &self,
        now: Millis,
        max_attempts: u32,
        lease_ms: Millis,
        limit: u32,
    ) -> Result<Vec<DueCallback>> {
        let rows = sqlx::query(
            "SELECT c.job_id, c.kind, c.destination, c.source, c.attempts, c.round_finished_at, j.finished_at \
             FROM job_callbacks c JOIN jobs j ON j.id = c.job_id \
             WHERE j.status IN ('succeeded', 'failed', 'cancelled') AND j.finished_at IS NOT NULL \
               AND (c.delivered_finished_at IS NULL OR c.delivered_finished_at <> j.finished_at) \
               AND (c.round_finished_at IS NULL OR c.round_finished_at <> j.finished_at \
                    OR (c.next_attempt_at <= $1 AND c.attempts < $2)) \
               AND (c.lease_until IS NULL OR c.lease_until < $1) \
             ORDER BY j.finished_at LIMIT $3",
        )
        .bind(now)
        .bind(i64::from(max_attempts))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut claimed = Vec::new();
        for r in rows {
            let job_id: String = r.try_get("job_id")?;
            let kind: String = r.try_get("kind")?;
            let finished_at: Millis = r.try_get("finished_at")?;
            let round: Option<Millis> = r.try_get("round_finished_at")?;
            let attempts: i64 = r.try_get("attempts")?;
            let won = sqlx::query(
                "UPDATE job_callbacks SET lease_until = $3 \
                 WHERE job_id = $1 AND kind = $2 AND (lease_until IS NULL OR lease_until < $4)",
            )
            .bind(&job_id)
            .bind(&kind)
            .bind(now + lease_ms)
            .bind(now)
            .execute(self.pool())
            .await?
            .rows_affected()
                == 1;
            if won {
                claimed.push(DueCallback {
                    job_id,
                    kind,
                    destination: r.try_get("destination")?,
                    source: r.try_get("source")?,
                    finished_at,
                    // A new finish starts a new round.
                    attempts: if round == Some(finished_at) {
                        u32::try_from(attempts).unwrap_or(u32::MAX)
                    } else {
                        0
                    },
                });
            }
        }
        Ok(claimed)
    }

    /// Records attempt number `attempt` of `due` and releases it.
    pub async fn record_callback_attempt(
        &self,
        due: &DueCallback,
        attempt: u32,
        result: &AttemptResult,
    ) -> Result<()> {
        let (delivered, next, error) = match result {
            AttemptResult::Delivered => (Some(due.finished_at), 0, None),
            AttemptResult::RetryAt(at, e) => (None, *at, Some(e.clone())),
            AttemptResult::GaveUp(e) => (None, 0, Some(e.clone())),
        };
        sqlx::query(
            "UPDATE job_callbacks SET round_finished_at = $3, attempts = $4, next_attempt_at = $5, lease_until = NULL, \
             last_error = $6, delivered_finished_at = COALESCE($7, delivered_finished_at) \
             WHERE job_id = $1 AND kind = $2",
        )
        .bind(&due.job_id)
        .bind(&due.kind)
        .bind(due.finished_at)
        .bind(i64::from(attempt))
        .bind(next)
        .bind(error)
        .bind(delivered)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

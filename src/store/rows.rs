//! How records map to rows: the column lists, decoding a row, and the inserts several writers share.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    ApprovalRecord, EventRecord, ItemRecord, JobRecord, NewEvent, NewItem, Result, StoreError,
};
use crate::domain::clock::Millis;
use crate::domain::job::{DeprovisionRequest, JobStatus};
use crate::domain::lane::LaneState;

/// The columns of a job row, in the order [`job_from_row`] reads them.
pub(super) const JOB_COLUMNS: &str = "id, dps, request_json, status, plan_json, context_json, step_index, lane_state, attempt, \
    fence, next_run_at, lease_owner, lease_expires_at, cursor, last_error, cancel_requested, idempotency_key, \
    created_at, updated_at, started_at, finished_at, requested_by, approval_rule, approval_expires_at, decided_by, \
    decided_at, throttled_since";

/// The columns of a device item row.
pub(super) const ITEM_COLUMNS: &str = "id, job_id, seq, registration_id, device_id, hub, data_json, step_index, state, attempt, \
    fence, next_run_at, lease_owner, lease_expires_at, last_error, skip_reason, created_at, updated_at, finished_at, \
    throttled_since, hub_job, changed";

/// The columns of a timeline event row.
pub(super) const EVENT_COLUMNS: &str =
    "seq, job_id, item_id, at, kind, step, attempt, message, detail_json";

pub(super) async fn insert_items(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
    items: &[NewItem],
    now: Millis,
) -> Result<()> {
    let mut seq: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), -1) FROM job_items WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
    // Re-discovering a device (a page fetched again after a crash) changes nothing. A multi-row INSERT
    // per hundred devices: one statement per device made listing 100,000 registrations take 12 s.
    for chunk in items.chunks(ITEMS_PER_INSERT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|r| {
                let p: Vec<String> = (1..=6).map(|c| format!("${}", 2 + r * 6 + c)).collect();
                format!(
                    "({}, $1, {}, 'waiting', $2, $2, $2)",
                    p[0],
                    p[1..].join(", ")
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO job_items (id, job_id, seq, registration_id, device_id, hub, data_json, state, next_run_at, \
             created_at, updated_at) VALUES {} ON CONFLICT (job_id, registration_id) DO NOTHING",
            rows.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(job_id).bind(now);
        for it in chunk {
            seq += 1;
            q = q
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(seq)
                .bind(&it.registration_id)
                .bind(it.device_id.clone())
                .bind(it.hub.clone())
                .bind(it.data.as_ref().map(to_json));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Rows per multi-row item INSERT: 6 parameters each, far below both engines' parameter limits.
const ITEMS_PER_INSERT: usize = 100;

/// Appends one event to a job's timeline (see [`insert_events`]).
pub(super) async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
    now: Millis,
    e: &NewEvent,
) -> Result<()> {
    insert_events(tx, job_id, &[(now, e)]).await
}

/// Rows per multi-row event INSERT: 9 parameters each stays far below both engines' parameter limits.
const EVENTS_PER_INSERT: usize = 100;

/// Appends several events of one job, each with its own time: one numbering statement and one INSERT per
/// hundred events. Numbered under the job's row lock, held until commit: numbers become visible in commit
/// order, so a reader paging by number never passes an event still to commit. (Costs: a job's event writers
/// take turns on its row.)
pub(super) async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
    events: &[(Millis, &NewEvent)],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let last: i64 = sqlx::query_scalar(
        "UPDATE jobs SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq",
    )
    .bind(job_id)
    .bind(events.len() as i64)
    .fetch_one(&mut **tx)
    .await?;
    let mut seq = last - events.len() as i64;
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|r| {
                let p: Vec<String> = (1..=9).map(|c| format!("${}", r * 9 + c)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO job_events (job_id, seq, item_id, at, kind, step, attempt, message, detail_json) VALUES {}",
            rows.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (at, e) in chunk {
            seq += 1;
            q = q
                .bind(job_id)
                .bind(seq)
                .bind(e.item_id.clone())
                .bind(*at)
                .bind(&e.kind)
                .bind(e.step.clone())
                .bind(e.attempt.map(i64::from))
                .bind(e.message.clone())
                .bind(e.detail.as_ref().map(to_json));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serialising our own plain data types cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_string(v).expect("plain data serialises")
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn opt_json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &str,
) -> Result<Option<T>> {
    let raw: Option<String> = row.try_get(col)?;
    raw.map(|s| from_json(&s, col)).transpose()
}

pub(super) fn lane(row: &AnyRow, col: &str) -> Result<LaneState> {
    let s: String = row.try_get(col)?;
    LaneState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("{col} = {s}")))
}

pub(super) fn job_from_row(row: &AnyRow) -> Result<JobRecord> {
    let status: String = row.try_get("status")?;
    let request: String = row.try_get("request_json")?;
    let plan: String = row.try_get("plan_json")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        dps: row.try_get("dps")?,
        request: from_json::<DeprovisionRequest>(&request, "request_json")?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        plan: from_json(&plan, "plan_json")?,
        context: opt_json(row, "context_json")?,
        step_index: row.try_get::<i64, _>("step_index")? as usize,
        lane_state: lane(row, "lane_state")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        fence: row.try_get("fence")?,
        next_run_at: row.try_get("next_run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        cursor: row.try_get("cursor")?,
        last_error: opt_json(row, "last_error")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        requested_by: row.try_get("requested_by")?,
        approval: match (
            row.try_get::<Option<String>, _>("approval_rule")?,
            row.try_get::<Option<i64>, _>("approval_expires_at")?,
        ) {
            (Some(rule), Some(expires_at)) => Some(ApprovalRecord {
                rule,
                expires_at,
                decided_by: row.try_get("decided_by")?,
                decided_at: row.try_get("decided_at")?,
            }),
            _ => None,
        },
        throttled_since: row.try_get("throttled_since")?,
    })
}

pub(super) fn item_from_row(row: &AnyRow) -> Result<ItemRecord> {
    Ok(ItemRecord {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        seq: row.try_get("seq")?,
        registration_id: row.try_get("registration_id")?,
        device_id: row.try_get("device_id")?,
        hub: row.try_get("hub")?,
        data: opt_json(row, "data_json")?,
        step_index: row.try_get::<i64, _>("step_index")? as usize,
        state: lane(row, "state")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        fence: row.try_get("fence")?,
        next_run_at: row.try_get("next_run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        last_error: opt_json(row, "last_error")?,
        skip_reason: row.try_get("skip_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        throttled_since: row.try_get("throttled_since")?,
        hub_job: row.try_get("hub_job")?,
        changed: row.try_get::<Option<i64>, _>("changed")?.map(|c| c != 0),
    })
}

pub(super) fn event_from_row(row: &AnyRow) -> Result<EventRecord> {
    Ok(EventRecord {
        id: row.try_get("seq")?,
        job_id: row.try_get("job_id")?,
        item_id: row.try_get("item_id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        step: row.try_get("step")?,
        attempt: row.try_get::<Option<i64>, _>("attempt")?.map(|a| a as u32),
        message: row.try_get("message")?,
        detail: opt_json(row, "detail_json")?,
    })
}

//! The database: jobs, items and events on PostgreSQL (production) or SQLite (embedded default).
//!
//! One implementation serves both through sqlx's `Any` driver: every column is TEXT or BIGINT and
//! times are epoch milliseconds, so the SQL is shared; the few dialect differences (row locking on
//! claims) are chosen by [`Backend`].

mod approvals;
mod callbacks;
mod clock;
mod idempotency;
mod metrics;
mod overlap;
pub mod pacing;
mod records;
mod tombstones;
mod webhooks;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

/// Formats SQL text whose only interpolations are this module's column lists, lock clauses and
/// `$n` placeholders — never values — so it is safe from injection.
macro_rules! sql {
    ($($t:tt)*) => {
        AssertSqlSafe(format!($($t)*))
    };
}

pub use approvals::{Decision, HELD_UNTIL};
pub use callbacks::{AttemptResult, DueCallback};
pub use clock::DbClock;
pub use metrics::Gauges;
pub use pacing::{PaceSnapshot, Pacer, PacerOptions};
pub use records::*;
pub use tombstones::{AuditStatus, Tombstone, TombstoneState};
pub use webhooks::DeliveryRecord;

use crate::domain::clock::{Clock, ManualClock, Millis};
use crate::domain::job::{DeprovisionRequest, JobStatus};
use crate::domain::lane::{ITEMS_BARRIER, LaneState, StepError, Transition};

/// Which database engine is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: several replicas, `FOR UPDATE SKIP LOCKED` claims.
    Postgres,
    /// SQLite: one process, one connection (SQLite has one writer anyway).
    Sqlite,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such job.
    #[error("job {0} not found")]
    NotFound(String),
    /// The idempotency key was used with a different body.
    #[error("idempotency key already used by job {job_id} with a different request body")]
    IdempotencyMismatch {
        /// The job created with that key.
        job_id: String,
    },
    /// Another job for the same target is queued or running.
    #[error("job {job_id} is already active for this target")]
    ActiveJobExists {
        /// The active job.
        job_id: String,
    },
    /// The job is not in a status that allows the action.
    #[error("job {job_id} is {status}; {action} needs {allowed}")]
    InvalidTransition {
        /// The job.
        job_id: String,
        /// Its status.
        status: &'static str,
        /// The refused action.
        action: &'static str,
        /// The statuses that allow it.
        allowed: &'static str,
    },
    /// A worker whose lease was taken over tried to write.
    #[error("lease lost: a newer claim owns this work")]
    Fenced,
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The configured database URL is not usable.
    #[error("unsupported database URL: {0}")]
    BadUrl(String),
    /// The database server could not be reached.
    #[error("cannot connect to the database: {0}")]
    Unreachable(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// How the store connects.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL pool size (SQLite always uses one connection).
    pub max_connections: u32,
    /// PostgreSQL `statement_timeout`: a statement running longer is cancelled instead of holding a
    /// connection (and its row locks) indefinitely.
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Outcome of creating a job.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new job.
    New(JobRecord),
    /// The job an earlier request with the same idempotency key and body created.
    Replayed(JobRecord),
}

const JOB_COLUMNS: &str = "id, dps, request_json, status, plan_json, context_json, step_index, lane_state, attempt, \
    fence, next_run_at, lease_owner, lease_expires_at, cursor, last_error, cancel_requested, idempotency_key, \
    created_at, updated_at, started_at, finished_at, requested_by, approval_rule, approval_expires_at, decided_by, \
    decided_at, throttled_since";

const ITEM_COLUMNS: &str = "id, job_id, seq, registration_id, device_id, hub, data_json, step_index, state, attempt, \
    fence, next_run_at, lease_owner, lease_expires_at, last_error, skip_reason, created_at, updated_at, finished_at, \
    throttled_since";

const EVENT_COLUMNS: &str = "seq, job_id, item_id, at, kind, step, attempt, message, detail_json";

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) with default [`StoreOptions`]; does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// Connects to `url` with `opts`; does not migrate.
    pub async fn connect_with(url: &str, opts: &StoreOptions) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::BadUrl(
                "expected postgres://… or sqlite://… (e.g. sqlite://deprovisiond.db)".into(),
            ));
        };
        let options = AnyConnectOptions::from_str(url)?;
        let pool = match backend {
            Backend::Postgres => {
                // One direct connection first: a pool only reports "timed out" when the server is
                // unreachable, while the connection itself says why (refused, bad password, no database).
                let probe = tokio::time::timeout(
                    Duration::from_secs(10),
                    <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options),
                )
                .await
                .map_err(|_| StoreError::Unreachable("no answer within 10 s".into()))?
                .map_err(|e| StoreError::Unreachable(e.to_string()))?;
                sqlx::Connection::close(probe).await?;
                let timeout_ms = opts.statement_timeout.as_millis().max(1) as u64;
                AnyPoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            sqlx::query(sql!("SET statement_timeout = {timeout_ms}"))
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Sqlite => {
                // One connection: SQLite allows one writer, and a single connection never meets
                // SQLITE_BUSY between our own transactions.
                AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                // FULL: a commit (an answered 202) survives a power cut, not
                                // only a crash of the process; it costs an fsync per commit.
                                "PRAGMA synchronous = FULL",
                                "PRAGMA busy_timeout = 5000",
                                "PRAGMA foreign_keys = ON",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Self { pool, backend })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Postgres => PG_MIGRATIONS.run(&self.pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers and every migration of this build is applied.
    pub async fn ready(&self) -> Result<bool> {
        let migrator = match self.backend {
            Backend::Postgres => &PG_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = $1")
                .bind(true)
                .fetch_one(&self.pool)
                .await
                .or_else(|e| match e {
                    // No migrations table yet: not ready.
                    sqlx::Error::Database(_) => Ok(None),
                    other => Err(other),
                })?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// The engine behind the store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool (for LISTEN/NOTIFY and tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ----- jobs -----

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
        let first_state = crate::domain::lane::next_step(&new.plan.job_steps, 0, now);
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
             priority) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$21,$22,$23,$24)",
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
                    "{} {} requested ({}){}{}",
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

    async fn replay(&self, key: &str, hash: &str) -> Result<Option<JobRecord>> {
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

    /// Jobs, newest first, filtered, one page at a time.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<JobRecord>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1=1");
        let mut texts: Vec<(usize, String)> = Vec::new();
        let mut ints: Vec<(usize, i64)> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if let Some(s) = filter.status {
            let i = next();
            sql += &format!(" AND status = ${i}");
            texts.push((i, s.as_str().into()));
        }
        if let Some(k) = &filter.target_kind {
            let i = next();
            sql += &format!(" AND target_kind = ${i}");
            texts.push((i, k.clone()));
        }
        if let Some(t) = &filter.target_id {
            let i = next();
            sql += &format!(" AND target_id = ${i}");
            texts.push((i, t.to_ascii_lowercase()));
        }
        if let Some(t) = &filter.ticket_key {
            let i = next();
            sql += &format!(" AND ticket_key = ${i}");
            texts.push((i, t.clone()));
        }
        if let Some(f) = filter.created_from {
            let i = next();
            sql += &format!(" AND created_at >= ${i}");
            ints.push((i, f));
        }
        if let Some(t) = filter.created_to {
            let i = next();
            sql += &format!(" AND created_at < ${i}");
            ints.push((i, t));
        }
        if let Some(c) = cursor {
            let (at, id) =
                decode_job_cursor(c).ok_or_else(|| StoreError::Corrupt("cursor".into()))?;
            let (a, b, d) = (next(), next(), next());
            sql += &format!(" AND (created_at < ${a} OR (created_at = ${b} AND id < ${d}))");
            ints.push((a, at));
            ints.push((b, at));
            texts.push((d, id));
        }
        let l = next();
        sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT ${l}");
        ints.push((l, i64::from(limit) + 1));
        // Bind in placeholder order.
        let mut binds: Vec<(usize, Bind)> =
            texts.into_iter().map(|(i, v)| (i, Bind::Text(v))).collect();
        binds.extend(ints.into_iter().map(|(i, v)| (i, Bind::Int(v))));
        binds.sort_by_key(|(i, _)| *i);
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (_, b) in binds {
            q = match b {
                Bind::Text(v) => q.bind(v),
                Bind::Int(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        let next_cursor = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|j| encode_job_cursor(j.created_at, &j.id))
        } else {
            None
        };
        Ok(Page {
            rows: jobs,
            next_cursor,
        })
    }

    /// Whether a job cursor is well-formed (so the API can answer 400 instead of 500).
    pub fn is_valid_job_cursor(cursor: &str) -> bool {
        decode_job_cursor(cursor).is_some()
    }

    /// Counts of a job's items by state.
    pub async fn item_counts(&self, job_id: &str) -> Result<ItemCounts> {
        let mut all = self.item_counts_of(&[job_id.to_string()]).await?;
        Ok(all.remove(job_id).unwrap_or_default())
    }

    /// Item counts of several jobs in one query (a page of the job list).
    pub async fn item_counts_of(&self, job_ids: &[String]) -> Result<HashMap<String, ItemCounts>> {
        let mut out: HashMap<String, ItemCounts> = HashMap::new();
        if job_ids.is_empty() {
            return Ok(out);
        }
        let placeholders: Vec<String> = (1..=job_ids.len()).map(|i| format!("${i}")).collect();
        let mut q = sqlx::query(sql!(
            "SELECT job_id, state, COUNT(*) AS n FROM job_items WHERE job_id IN ({}) GROUP BY job_id, state",
            placeholders.join(", ")
        ));
        for id in job_ids {
            q = q.bind(id.clone());
        }
        for r in q.fetch_all(&self.pool).await? {
            let job: String = r.try_get("job_id")?;
            let state: String = r.try_get("state")?;
            let n = r.try_get::<i64, _>("n")? as u64;
            let c = out.entry(job).or_default();
            c.total += n;
            match LaneState::parse(&state) {
                Some(LaneState::Waiting) => c.waiting += n,
                Some(LaneState::Pending) => c.pending += n,
                Some(LaneState::Running) => c.running += n,
                Some(LaneState::Succeeded) => c.succeeded += n,
                Some(LaneState::Skipped) => c.skipped += n,
                Some(LaneState::Failed) => c.failed += n,
                Some(LaneState::Cancelled) => c.cancelled += n,
                _ => return Err(StoreError::Corrupt(format!("item state {state}"))),
            }
        }
        Ok(out)
    }

    /// A job's item counts by the hub their record names (progress per hub).
    pub async fn hub_counts(&self, job_id: &str) -> Result<Vec<(Option<String>, ItemCounts)>> {
        let rows = sqlx::query(
            "SELECT hub, state, COUNT(*) AS n FROM job_items WHERE job_id = $1 GROUP BY hub, state",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out: std::collections::BTreeMap<Option<String>, ItemCounts> = Default::default();
        for r in rows {
            let hub: Option<String> = r.try_get("hub")?;
            let state: String = r.try_get("state")?;
            let n = r.try_get::<i64, _>("n")? as u64;
            let c = out.entry(hub).or_default();
            c.total += n;
            match LaneState::parse(&state) {
                Some(LaneState::Waiting) => c.waiting += n,
                Some(LaneState::Pending) => c.pending += n,
                Some(LaneState::Running) => c.running += n,
                Some(LaneState::Succeeded) => c.succeeded += n,
                Some(LaneState::Skipped) => c.skipped += n,
                Some(LaneState::Failed) => c.failed += n,
                Some(LaneState::Cancelled) => c.cancelled += n,
                _ => return Err(StoreError::Corrupt(format!("item state {state}"))),
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A job's items in discovery order, one page at a time (cursor = last seq).
    pub async fn list_items(
        &self,
        job_id: &str,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Page<ItemRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT {ITEM_COLUMNS} FROM job_items WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(job_id)
        .bind(after_seq.unwrap_or(-1))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows.iter().map(item_from_row).collect::<Result<Vec<_>>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|i| i.seq.to_string())
        } else {
            None
        };
        Ok(Page {
            rows: items,
            next_cursor,
        })
    }

    /// One item.
    pub async fn get_item(&self, item_id: &str) -> Result<Option<ItemRecord>> {
        let row = sqlx::query(sql!("SELECT {ITEM_COLUMNS} FROM job_items WHERE id = $1"))
            .bind(item_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| item_from_row(&r)).transpose()
    }

    /// A job's timeline, oldest first (cursor = the last event's number in the job).
    pub async fn list_events(
        &self,
        job_id: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Page<EventRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(job_id)
        .bind(after_id.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok(Page {
            rows: events,
            next_cursor,
        })
    }

    /// Appends events to a job's timeline.
    pub async fn append_events(
        &self,
        job_id: &str,
        now: Millis,
        events: &[NewEvent],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for e in events {
            insert_event(&mut tx, job_id, now, e).await?;
        }
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
            &NewEvent {
                detail: by.map(|b| serde_json::json!({ "by": b })),
                ..NewEvent::new(
                    "cancel_requested",
                    match by {
                        Some(b) => format!("cancellation requested by {b}"),
                        None => "cancellation requested".into(),
                    },
                )
            },
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
        let at_barrier = job.current_step() == Some(ITEMS_BARRIER);
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
        let items = sqlx::query(
            "UPDATE job_items SET state = 'pending', attempt = 0, next_run_at = $2, finished_at = NULL, updated_at = $2 \
             WHERE job_id = $1 AND state = 'failed'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            id,
            now,
            &NewEvent {
                detail: by.map(|b| serde_json::json!({ "by": b })),
                ..NewEvent::new(
                    "retried",
                    format!(
                        "retry requested{}: job resumes at its failed step; {} failed device(s) re-queued",
                        by.map(|b| format!(" by {b}")).unwrap_or_default(),
                        items.rows_affected()
                    ),
                )
            },
        )
        .await?;
        tx.commit().await?;
        self.get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.into()))
    }

    // ----- worker side -----

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
    ) -> Result<Vec<(ItemRecord, std::sync::Arc<JobRecord>)>> {
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
    ) -> Result<Vec<(ItemRecord, std::sync::Arc<JobRecord>)>> {
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
        let mut jobs: HashMap<String, Option<std::sync::Arc<JobRecord>>> = HashMap::new();
        for it in &items {
            if jobs.contains_key(&it.job_id) {
                continue;
            }
            let row = sqlx::query(sql!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(&it.job_id)
                .fetch_optional(&mut *tx)
                .await?;
            let job = match row.map(|r| job_from_row(&r)) {
                Some(Ok(j)) => Some(std::sync::Arc::new(j)),
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
        let mut seen = std::collections::HashSet::new();
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

    fn lock_clause(&self) -> &'static str {
        match self.backend {
            // Replicas skip rows another replica is claiming instead of waiting for it.
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            // SQLite serialises writers; the single UPDATE is atomic.
            Backend::Sqlite => "",
        }
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
        for e in &effects.events {
            insert_event(&mut tx, &job.id, now, e).await?;
        }
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
        let mut tx = self.pool.begin().await?;
        let state = if job_cancelled(&mut tx, &item.job_id).await? && !t.state.is_terminal() {
            LaneState::Cancelled
        } else {
            t.state
        };
        let finished = state.is_terminal().then_some(now);
        let data = effects
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
            tx.rollback().await?;
            return Err(StoreError::Fenced);
        }
        for e in &effects.events {
            insert_event(&mut tx, &item.job_id, now, e).await?;
        }
        tx.commit().await?;
        if state.is_terminal() {
            self.settle(&item.job_id, now).await?;
        }
        Ok(())
    }

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
        let busy = counts.running > 0 || job.lane_state == LaneState::Running;
        if job.cancel_requested {
            if busy {
                return Ok(());
            }
            return self
                .finish(
                    &job,
                    JobStatus::Cancelled,
                    LaneState::Cancelled,
                    None,
                    now,
                    "job cancelled",
                )
                .await;
        }
        match job.lane_state {
            LaneState::WaitingItems => {
                let open = counts.waiting + counts.pending + counts.running;
                if open > 0 {
                    return Ok(());
                }
                if counts.failed > 0 {
                    let err = StepError::msg(format!(
                        "{} of {} device(s) failed; later steps did not run (retry the job to resume)",
                        counts.failed, counts.total
                    ));
                    let msg = err.message.clone();
                    return self
                        .finish(
                            &job,
                            JobStatus::Failed,
                            LaneState::Failed,
                            Some(err),
                            now,
                            &msg,
                        )
                        .await;
                }
                let t =
                    crate::domain::lane::next_step(&job.plan.job_steps, job.step_index + 1, now);
                let r = sqlx::query(
                    "UPDATE jobs SET lane_state = $2, step_index = $3, attempt = 0, next_run_at = $4, updated_at = $4 \
                     WHERE id = $1 AND lane_state = 'waiting_items' AND step_index = $5",
                )
                .bind(job_id)
                .bind(t.state.as_str())
                .bind(t.step_index as i64)
                .bind(now)
                .bind(job.step_index as i64)
                .execute(&self.pool)
                .await?;
                if r.rows_affected() == 1 {
                    self.append_events(
                        job_id,
                        now,
                        &[NewEvent::new(
                            "items_finished",
                            format!("all {} device(s) handled", counts.total),
                        )],
                    )
                    .await?;
                    if t.state == LaneState::Succeeded {
                        // What the row holds after the move just made.
                        let moved = JobRecord {
                            step_index: t.step_index,
                            lane_state: t.state,
                            ..job.clone()
                        };
                        return self
                            .finish(
                                &moved,
                                JobStatus::Succeeded,
                                LaneState::Succeeded,
                                None,
                                now,
                                "job succeeded",
                            )
                            .await;
                    }
                }
                Ok(())
            }
            LaneState::Succeeded => {
                if counts.waiting + counts.pending + counts.running > 0 {
                    return Ok(());
                }
                if counts.failed > 0 {
                    let err = StepError::msg(format!("{} device(s) failed", counts.failed));
                    let msg = err.message.clone();
                    return self
                        .finish(
                            &job,
                            JobStatus::Failed,
                            LaneState::Failed,
                            Some(err),
                            now,
                            &msg,
                        )
                        .await;
                }
                self.finish(
                    &job,
                    JobStatus::Succeeded,
                    LaneState::Succeeded,
                    None,
                    now,
                    "job succeeded",
                )
                .await
            }
            LaneState::Failed => {
                if busy {
                    return Ok(());
                }
                let msg = job
                    .last_error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| "job failed".into());
                self.finish(
                    &job,
                    JobStatus::Failed,
                    LaneState::Failed,
                    job.last_error.clone(),
                    now,
                    &format!("job failed: {msg}"),
                )
                .await
            }
            _ => Ok(()),
        }
    }

    async fn finish(
        &self,
        job: &JobRecord,
        status: JobStatus,
        lane: LaneState,
        error: Option<StepError>,
        now: Millis,
        message: &str,
    ) -> Result<()> {
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
        .bind(status.as_str())
        .bind(lane.as_str())
        .bind(error.as_ref().map(to_json))
        .bind(now)
        .bind(i64::from(job.cancel_requested))
        .bind(job.fence)
        .bind(job.lane_state.as_str())
        .bind(job.step_index as i64)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            let mut e = NewEvent::new(status.as_str(), message);
            e.kind = format!("job_{}", status.as_str());
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

    /// The database server's time, in milliseconds since the Unix epoch.
    pub async fn db_now_ms(&self) -> Result<Millis> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
            }
            Backend::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
            }
        };
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }
}

/// Side effects of a step besides its outcome.
#[derive(Debug, Clone, Default)]
pub struct StepEffects {
    /// Device items discovered (job steps only).
    pub new_items: Vec<NewItem>,
    /// New workflow context of the job (job steps only).
    pub context: Option<Value>,
    /// New data of the item (item steps only).
    pub item_data: Option<Value>,
    /// Timeline entries.
    pub events: Vec<NewEvent>,
}

/// The two kinds of lanes share their lease columns; only the table and state column differ.
#[derive(Clone, Copy)]
enum LaneTable {
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

enum Bind {
    Text(String),
    Int(i64),
}

/// The error recorded on a row this build cannot decode.
fn unreadable(what: &str, e: &StoreError) -> StepError {
    StepError::msg(format!(
        "the stored {what} cannot be read by this version of deprovisiond ({e}); it was failed instead of run \
         (if a newer version wrote it, let that version handle it and retry the job there)"
    ))
}

/// Fails a job and every open item of it without decoding its row.
async fn quarantine_job(
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
async fn quarantine_item(
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

async fn job_cancelled(tx: &mut sqlx::Transaction<'_, sqlx::Any>, job_id: &str) -> Result<bool> {
    let flag: Option<i64> = sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(flag.unwrap_or(0) != 0)
}

async fn insert_items(
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
    for it in items {
        seq += 1;
        // Re-discovering a device (a page fetched again after a crash) changes nothing.
        sqlx::query(
            "INSERT INTO job_items (id, job_id, seq, registration_id, device_id, hub, data_json, state, next_run_at, \
             created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,'waiting',$8,$8,$8) \
             ON CONFLICT (job_id, registration_id) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(job_id)
        .bind(seq)
        .bind(&it.registration_id)
        .bind(it.device_id.clone())
        .bind(it.hub.clone())
        .bind(it.data.as_ref().map(to_json))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
    now: Millis,
    e: &NewEvent,
) -> Result<()> {
    // Numbered under the job's row lock, held until commit: numbers become visible in commit order,
    // so a reader paging by number never passes an event still to commit. (Costs: a job's event
    // writers take turns on its row.)
    let seq: i64 = sqlx::query_scalar(
        "UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $1 RETURNING event_seq",
    )
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO job_events (job_id, seq, item_id, at, kind, step, attempt, message, detail_json) \
         VALUES ($1,$9,$2,$3,$4,$5,$6,$7,$8)",
    )
    .bind(job_id)
    .bind(e.item_id.clone())
    .bind(now)
    .bind(&e.kind)
    .bind(e.step.clone())
    .bind(e.attempt.map(i64::from))
    .bind(e.message.clone())
    .bind(e.detail.as_ref().map(to_json))
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serialising our own plain data types cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_string(v).expect("plain data serialises")
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode_job_cursor(created_at: Millis, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}"))
}

fn decode_job_cursor(c: &str) -> Option<(Millis, String)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let (at, id) = raw.split_once('|')?;
    Some((at.parse().ok()?, id.to_string()))
}

fn opt_json<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<Option<T>> {
    let raw: Option<String> = row.try_get(col)?;
    raw.map(|s| from_json(&s, col)).transpose()
}

fn lane(row: &AnyRow, col: &str) -> Result<LaneState> {
    let s: String = row.try_get(col)?;
    LaneState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("{col} = {s}")))
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord> {
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

fn item_from_row(row: &AnyRow) -> Result<ItemRecord> {
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
    })
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord> {
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

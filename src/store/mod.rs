//! The database: jobs, items and events on PostgreSQL (production) or SQLite (embedded default).
//!
//! One implementation serves both through sqlx's `Any` driver: every column is TEXT or BIGINT and
//! times are epoch milliseconds, so the SQL is shared; the few dialect differences (row locking on
//! claims) are chosen by [`Backend`].

/// Formats SQL text whose only interpolations are this module's column lists, lock clauses and
/// `$n` placeholders — never values — so it is safe from injection.
macro_rules! sql {
    ($($t:tt)*) => {
        sqlx::AssertSqlSafe(format!($($t)*))
    };
}

mod approvals;
mod callbacks;
mod clock;
mod connection;
mod hub_jobs;
mod idempotency;
mod jobs;
mod listing;
mod metrics;
mod overlap;
pub mod pacing;
mod page;
mod queue;
mod records;
mod rows;
mod settle;
mod tombstones;
mod webhooks;

use std::time::Duration;

use sqlx::AnyPool;

pub use approvals::{Decision, HELD_UNTIL};
pub use callbacks::{AttemptResult, DueCallback};
pub use clock::DbClock;
pub use hub_jobs::DEVICE_BATCH;
pub use metrics::Gauges;
pub use pacing::{PaceSnapshot, Pacer, PacerOptions};
pub use page::Page;
pub use queue::{ItemCompletion, StepEffects};
pub use records::*;
pub use tombstones::{AuditStatus, Tombstone, TombstoneState};
pub use webhooks::DeliveryRecord;

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

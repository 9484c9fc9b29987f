//! What the store reads and writes: job, item and event records.

use serde_json::Value;

use crate::domain::clock::Millis;
use crate::domain::context::JobContext;
use crate::domain::job::{DeprovisionRequest, JobStatus};
use crate::domain::lane::{LaneState, StepError};
use crate::domain::plan::{JobStep, Plan};

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Job id (UUIDv7 text).
    pub id: String,
    /// DPS instance name.
    pub dps: String,
    /// The request as accepted (normalised).
    pub request: DeprovisionRequest,
    /// Status derived from the lanes.
    pub status: JobStatus,
    /// Steps fixed at creation.
    pub plan: Plan,
    /// What the resolve step found out about the target.
    pub context: Option<JobContext>,
    /// Index of the current job step.
    pub step_index: usize,
    /// State of the job lane.
    pub lane_state: LaneState,
    /// Attempts at the current job step.
    pub attempt: u32,
    /// Claim counter: every write by a worker is fenced on it.
    pub fence: i64,
    /// When the job lane may run next.
    pub next_run_at: Millis,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// When that lease expires.
    pub lease_expires_at: Option<Millis>,
    /// Paging cursor of the current step.
    pub cursor: Option<String>,
    /// Last error of the job lane.
    pub last_error: Option<StepError>,
    /// A caller asked to cancel.
    pub cancel_requested: bool,
    /// Idempotency key given at creation.
    pub idempotency_key: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// First claim.
    pub started_at: Option<Millis>,
    /// When it reached a final status.
    pub finished_at: Option<Millis>,
    /// Who created it: the authenticated principal (`key:NAME`, `oidc:NAME`, …); for jobs created before
    /// authentication existed, the request's own `requested_by`.
    pub requested_by: Option<String>,
    /// The approval the job needed, if a policy held it.
    pub approval: Option<ApprovalRecord>,
    /// Since when the job lane has been throttled (429) without a break.
    pub throttled_since: Option<Millis>,
}

/// Why a job waited for approval and how that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// The policy rule that held it.
    pub rule: String,
    /// When it expires unless approved.
    pub expires_at: Millis,
    /// The admin who approved or rejected it.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<Millis>,
}

/// Who creates a job, and whether a policy holds it for approval.
#[derive(Debug, Clone, Default)]
pub struct JobOrigin {
    /// The authenticated principal's label; `None` records the request's own `requested_by`.
    pub requester: Option<String>,
    /// Hold the job in `awaiting_approval`: the rule that applies and when the hold expires.
    pub hold: Option<(String, Millis)>,
}

impl JobRecord {
    /// The current job step, if any remain.
    pub fn current_step(&self) -> Option<JobStep> {
        self.plan.job_steps().get(self.step_index).copied()
    }
}

/// What a hub job's bookkeeping reads of a waiting item: found by device id in an export or error log.
#[derive(Debug, Clone, PartialEq)]
pub struct HubItem {
    /// Item id.
    pub id: String,
    /// Device id in the hub.
    pub device_id: String,
    /// DPS registration id (what events name).
    pub registration_id: String,
    /// The hub job run that handles it, if any.
    pub hub_job: Option<String>,
    /// Workflow data for the item.
    pub data: Option<Value>,
}

/// A stored device item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    /// Item id.
    pub id: String,
    /// Its job.
    pub job_id: String,
    /// Position within the job (paging order).
    pub seq: i64,
    /// DPS registration id.
    pub registration_id: String,
    /// Device id in the hub, when known.
    pub device_id: Option<String>,
    /// Assigned hub host name, when known.
    pub hub: Option<String>,
    /// Workflow data for the item.
    pub data: Option<Value>,
    /// Index of the current item step.
    pub step_index: usize,
    /// Lane state.
    pub state: LaneState,
    /// Attempts at the current step.
    pub attempt: u32,
    /// Claim counter (fencing token).
    pub fence: i64,
    /// When it may run next.
    pub next_run_at: Millis,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// Lease expiry.
    pub lease_expires_at: Option<Millis>,
    /// Last error.
    pub last_error: Option<StepError>,
    /// Why it was skipped.
    pub skip_reason: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// When it reached a final state.
    pub finished_at: Option<Millis>,
    /// Since when the device has been throttled (429) without a break.
    pub throttled_since: Option<Millis>,
    /// The hub import job that wrote or verified this device (`None`: its own registry step does).
    pub hub_job: Option<String>,
    /// Whether this job changed the identity (`Some(false)`: it was already disabled or gone).
    pub changed: Option<bool>,
}

/// One entry of a job's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The event's number in its job's timeline (1, 2, …, in commit order; also the paging cursor).
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// The item, for device events.
    pub item_id: Option<String>,
    /// When.
    pub at: Millis,
    /// What happened, e.g. `created`, `step_succeeded`.
    pub kind: String,
    /// The step concerned.
    pub step: Option<String>,
    /// The attempt concerned.
    pub attempt: Option<u32>,
    /// Human-readable summary.
    pub message: Option<String>,
    /// Structured details (Azure error code, tracking id, ...).
    pub detail: Option<Value>,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewEvent {
    /// The item, for device events.
    pub item_id: Option<String>,
    /// What happened.
    pub kind: String,
    /// The step concerned.
    pub step: Option<String>,
    /// The attempt concerned.
    pub attempt: Option<u32>,
    /// Summary.
    pub message: Option<String>,
    /// Details.
    pub detail: Option<Value>,
}

impl NewEvent {
    /// An event of `kind` with a message.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_string(),
            message: Some(message.into()),
            ..Self::default()
        }
    }

    /// An event a caller's request caused, naming that caller (`{"by": …}`) when known.
    pub fn requested(kind: &str, message: impl Into<String>, by: Option<&str>) -> Self {
        Self {
            detail: by.map(|b| serde_json::json!({ "by": b })),
            ..Self::new(kind, message)
        }
    }
}

/// A device item a step discovered.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// DPS registration id (unique within the job: re-adding it is a no-op).
    pub registration_id: String,
    /// Hub device id, when known.
    pub device_id: Option<String>,
    /// Assigned hub host name, when known.
    pub hub: Option<String>,
    /// Workflow data.
    pub data: Option<Value>,
}

/// What a job to create looks like.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// DPS instance name (resolved).
    pub dps: String,
    /// The validated request.
    pub request: DeprovisionRequest,
    /// The steps.
    pub plan: Plan,
    /// Idempotency key and the hash of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// Filters of the job list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this target kind.
    pub target_kind: Option<String>,
    /// Only this target id (registration or group id).
    pub target_id: Option<String>,
    /// Only this ticket key.
    pub ticket_key: Option<String>,
    /// Created at or after.
    pub created_from: Option<Millis>,
    /// Created before.
    pub created_to: Option<Millis>,
}

//! JSON shapes the API returns, built from store records.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::domain::clock::to_rfc3339;
use crate::domain::job::{
    JobStatus, Reason, RegistryAction, RegistryPath, RevokeAction, Sweep, Target, Ticket, UndoOf,
};
use crate::domain::lane::{LaneState, StepError};
use crate::domain::plan::{ItemStep, LaneStep};
use crate::domain::settle::ItemCounts;
use crate::store::{EventRecord, ItemRecord, JobRecord};

/// A deprovisioning job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Job id.
    #[schema(example = "0193c7a0-6b5e-7c3e-9a51-2f6f0f5c1d2e")]
    pub id: String,
    /// Where the job is.
    pub status: JobStatus,
    /// DPS instance.
    #[schema(example = "demo-dps")]
    pub dps: String,
    /// What is deprovisioned.
    pub target: Target,
    /// How DPS access is revoked.
    pub revoke: RevokeAction,
    /// What happens to the hub identity.
    pub registry: RegistryAction,
    /// Which hubs are checked for each device's identity.
    pub sweep: Sweep,
    /// Whether the group's registration records are deleted at the end.
    pub delete_registrations: bool,
    /// Whether the group is deleted at the end.
    pub delete_group: bool,
    /// Whether the group delete overrides the higher-chain check.
    pub force: bool,
    /// How hub identities are written: `auto` (per hub, the faster path), `per_device` or `import_job`.
    #[serde(default, skip_serializing_if = "RegistryPath::is_auto")]
    pub registry_path: RegistryPath,
    /// On an undo job: the job it undoes, and whether DPS is restored too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_of: Option<UndoOf>,
    /// Undo jobs of this job, oldest first (on the single-job read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undo_jobs: Vec<String>,
    /// Why.
    pub reason: Reason,
    /// Source ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Ticket>,
    /// Who asked: the authenticated caller (`key:NAME`, `oidc:NAME`, `webhook:SOURCE`, or `anonymous` when
    /// the service runs without authentication). Jobs from before authentication show the request's
    /// `requested_by` here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The request's own `requested_by`: on whose behalf the caller asked (not verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The approval a policy required before the job could run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalView>,
    /// Device counts.
    pub progress: Progress,
    /// Rate, ETA and the per-hub breakdown (on the single-job read of a job with devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<JobPacing>,
    /// The job's steps and where each is.
    pub steps: Vec<StepView>,
    /// The last error of the job's own steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When a worker first picked it up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it reached its final status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// Why a job needed approval, and who decided.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    /// The policy rule that held the job, e.g. `group-wide job`.
    #[schema(example = "any delete")]
    pub rule: String,
    /// When the job expires unless approved (RFC 3339).
    pub expires_at: String,
    /// The admin who approved or rejected it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}

/// Device counts of a job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, Default, PartialEq, Eq)]
pub struct Progress {
    /// Devices found.
    pub total: u64,
    /// Devices whose DPS access is revoked.
    pub revoked: u64,
    /// Devices whose registry step is done.
    pub registry_done: u64,
    /// Devices with nothing to do (e.g. never provisioned), with a reason.
    pub skipped: u64,
    /// Devices that failed.
    pub failed: u64,
    /// Devices not finished yet (waiting for the revoke, queued, or being retried).
    pub pending: u64,
    /// Devices being worked on now.
    pub running: u64,
    /// Devices cancelled.
    pub cancelled: u64,
}

/// How fast a job goes and when it should be done, from the pacing budgets and the operations left.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobPacing {
    /// Devices finished per minute since the job started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices_per_minute: Option<f64>,
    /// Seconds until the last device should be done: the slowest hub's estimate (hubs run in parallel).
    /// Absent when a hub with devices left has no known budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// Registry operations each device costs (disable 2, delete 1).
    pub ops_per_device: f64,
    /// The devices by the hub their record names.
    pub hubs: Vec<HubProgress>,
}

/// The devices of a job in one hub.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct HubProgress {
    /// Hub host name; absent for devices whose record names none (looked up in the linked hubs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Devices.
    pub total: u64,
    /// Devices finished (succeeded, skipped, failed or cancelled).
    pub done: u64,
    /// Devices failed.
    pub failed: u64,
    /// The hub's registry budget in operations per minute (absent: not paced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_ops_per_minute: Option<f64>,
    /// The current adaptive rate (below the budget after 429s), as this replica last saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_ops_per_minute: Option<f64>,
    /// Seconds until this hub's devices should be done: operations left beyond the tokens held, over the rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

/// One job step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StepView {
    /// Step name (`devices` stands for the registry steps of every device).
    #[schema(example = "revoke")]
    pub name: String,
    /// Where it is.
    pub state: LaneState,
    /// Attempts made, for the current step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl JobView {
    /// Builds the view of a job and its item counts.
    pub fn new(job: &JobRecord, counts: &ItemCounts) -> Self {
        let r = &job.request;
        let steps = job
            .plan
            .job_steps()
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let state = if i < job.step_index {
                    LaneState::Succeeded
                } else if i == job.step_index {
                    match job.lane_state {
                        LaneState::WaitingItems => LaneState::Running,
                        s => s,
                    }
                } else if matches!(job.lane_state, LaneState::Cancelled) {
                    LaneState::Cancelled
                } else {
                    LaneState::Pending
                };
                StepView {
                    name: step.public_name().into(),
                    state,
                    attempt: (i == job.step_index && job.attempt > 0).then_some(job.attempt),
                }
            })
            .collect();
        JobView {
            id: job.id.clone(),
            status: job.status,
            dps: job.dps.clone(),
            target: r.target.clone(),
            revoke: r.revoke,
            registry: r.registry,
            sweep: r.sweep,
            delete_registrations: r.delete_registrations,
            delete_group: r.delete_group,
            force: r.force,
            registry_path: r.registry_path,
            undo_of: r.undo.clone(),
            undo_jobs: Vec::new(),
            reason: r.reason.clone(),
            ticket: r.ticket.clone(),
            requested_by: job.requested_by.clone().or_else(|| r.requested_by.clone()),
            on_behalf_of: r.requested_by.clone(),
            approval: job.approval.as_ref().map(|a| ApprovalView {
                rule: a.rule.clone(),
                expires_at: to_rfc3339(a.expires_at),
                decided_by: a.decided_by.clone(),
                decided_at: a.decided_at.map(to_rfc3339),
            }),
            progress: Progress {
                total: counts.total,
                // Items are released only once the revoke step has succeeded.
                revoked: counts.total - counts.waiting,
                registry_done: counts.succeeded,
                skipped: counts.skipped,
                failed: counts.failed,
                pending: counts.waiting + counts.pending,
                running: counts.running,
                cancelled: counts.cancelled,
            },
            pacing: None,
            steps,
            last_error: job.last_error.clone(),
            cancel_requested: job.cancel_requested,
            created_at: to_rfc3339(job.created_at),
            updated_at: to_rfc3339(job.updated_at),
            started_at: job.started_at.map(to_rfc3339),
            finished_at: job.finished_at.map(to_rfc3339),
        }
    }
}

/// One device of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// Item id.
    pub id: String,
    /// Position in the job.
    pub seq: i64,
    /// DPS registration id.
    pub registration_id: String,
    /// Device id in the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Assigned hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Where the device's steps are (`waiting` = held until the revoke succeeded).
    pub state: LaneState,
    /// The device's current (or last) step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Attempts at that step.
    pub attempt: u32,
    /// Last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// The hub import job that wrote and verified this device (absent: its own step did, or does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_job: Option<String>,
    /// Last change.
    pub updated_at: String,
    /// When it reached its final state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl DeviceView {
    /// Builds the view of an item.
    pub fn new(item: &ItemRecord, item_steps: &[ItemStep]) -> Self {
        DeviceView {
            id: item.id.clone(),
            seq: item.seq,
            registration_id: item.registration_id.clone(),
            device_id: item.device_id.clone(),
            hub: item.hub.clone(),
            state: item.state,
            step: item
                .step_index
                .checked_sub(usize::from(item.state == LaneState::Succeeded))
                .and_then(|i| item_steps.get(i).map(|s| s.as_str().to_string())),
            attempt: item.attempt,
            last_error: item.last_error.clone(),
            skip_reason: item.skip_reason.clone(),
            hub_job: item
                .hub_job
                .clone()
                .filter(|_| item.state == LaneState::Succeeded),
            updated_at: to_rfc3339(item.updated_at),
            finished_at: item.finished_at.map(to_rfc3339),
        }
    }
}

/// One timeline entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Event id (increasing).
    pub id: i64,
    /// When (RFC 3339).
    pub at: String,
    /// What happened: `created`, `step_succeeded`, `step_retry_scheduled`, `step_failed`, `job_succeeded`, …
    #[schema(example = "step_succeeded")]
    pub kind: String,
    /// The step concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The attempt concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The device item concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// Summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Details: Azure error code, tracking id, HTTP status, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl From<&EventRecord> for EventView {
    fn from(e: &EventRecord) -> Self {
        EventView {
            id: e.id,
            at: to_rfc3339(e.at),
            kind: e.kind.clone(),
            step: e.step.clone(),
            attempt: e.attempt,
            item_id: e.item_id.clone(),
            message: e.message.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    /// The jobs, newest first.
    pub items: Vec<JobView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A page of devices.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DevicePage {
    /// The devices, in discovery order.
    pub items: Vec<DeviceView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A page of events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// The events, oldest first.
    pub items: Vec<EventView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Filters and paging of `GET /v1/deprovisions`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs for this kind of target.
    pub target_kind: Option<crate::domain::job::TargetKind>,
    /// Only jobs for this registration id or group id.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub target_id: Option<String>,
    /// Only jobs from this ticket key.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub ticket_key: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    #[param(format = DateTime)]
    // No `empty_as_none`: `created_after=` is a malformed time, refused like any other, not a missing filter.
    #[serde(default)]
    pub created_after: Option<String>,
    /// Only jobs created before this time (RFC 3339).
    #[param(format = DateTime)]
    // No `empty_as_none`: `created_before=` is a malformed time, refused like any other, not a missing filter.
    #[serde(default)]
    pub created_before: Option<String>,
    /// Cursor from the previous page's `next_cursor` (opaque, base64url); any other value is refused (422).
    #[param(pattern = "^[A-Za-z0-9_-]*$", max_length = 512)]
    #[serde(default, deserialize_with = "empty_as_none")]
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// Paging of sub-collections.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Cursor from the previous page's `next_cursor`: a non-negative integer.
    #[param(pattern = "^[0-9]*$", max_length = 19)]
    #[serde(default, deserialize_with = "empty_as_none")]
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// An empty query value (`?cursor=`) means the parameter was not given.
pub fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

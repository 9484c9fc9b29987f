//! `/v1/deprovisions`: create, read, list, cancel and retry jobs.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{AuthError, Principal, Role};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiJsonOrDefault, ApiPath, ApiQuery};
use super::views::{
    DevicePage, DeviceView, EventPage, EventView, JobPage, JobView, ListJobsQuery, PageQuery,
};
use super::{AppState, PROBLEM};
use crate::domain::job::{
    DeprovisionRequest, FieldError, JobStatus, RegistryPath, RevokeAction, Target, UndoOf,
};
use crate::store::{Created, Decision, JobFilter, JobOrigin, NewJob, Store};
use crate::workflow::preview::{Preview, Refusal};

/// The routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_deprovision, list_deprovisions))
        .routes(routes!(preview_deprovision))
        .routes(routes!(get_deprovision))
        .routes(routes!(list_devices))
        .routes(routes!(list_events))
        .routes(routes!(cancel_deprovision))
        .routes(routes!(retry_deprovision))
        .routes(routes!(undo_deprovision))
        .routes(routes!(approve_deprovision))
        .routes(routes!(reject_deprovision))
}

/// What `POST /v1/deprovisions` answers with 200: the job an earlier identical request created, or, with
/// `dry_run: true`, the preview.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
// Only the document's schema: never built, so the variants' sizes cost nothing.
#[allow(clippy::large_enum_variant)]
pub enum CreateOk {
    /// The replayed job.
    Job(JobView),
    /// The preview of a dry run.
    Preview(Preview),
}

/// Queue a deprovisioning job.
///
/// The worker first revokes the target's access at DPS, then disables or deletes each device's
/// identity in its IoT hub. With an `Idempotency-Key`, repeating the same request returns the same
/// job (200); the same key with another body is refused (422). The authenticated caller is recorded as
/// the job's `requested_by` (the body's `requested_by` is kept as `on_behalf_of`); `force: true` needs
/// the admin role. When the approval policy holds the job it is `awaiting_approval` until an admin other
/// than the requester approves it.
#[utoipa::path(
    post,
    path = "/v1/deprovisions",
    tag = "deprovisions",
    // Swagger UI pre-fills "Try it out" with the first example, and utoipa orders examples by name: the
    // numbered names keep a reversible single-device disable first, so a careless "Execute" cannot act on a
    // whole group. Group-wide examples say so in their summary.
    request_body(content = DeprovisionRequest, examples(
        ("1_one_device_disable" = (summary = "One device: disable one individual enrollment and its hub identity (reversible)", value = json!({
            "target": {"kind": "individual_enrollment", "registration_id": "sk-sensor-001"},
            "revoke": "disable", "registry": "disable",
            "reason": {"code": "stolen", "text": "Reported stolen by the customer"},
            "ticket": {"system": "jira", "key": "OPS-1234"}
        }))),
        ("2_one_group_device_block" = (summary = "One device of a group: block it and delete its hub identity; the group's other devices are untouched", value = json!({
            "target": {"kind": "group_device", "group_id": "fleet-sk", "registration_id": "sk-dev-0007"},
            "registry": "delete",
            "reason": {"code": "sold"}
        }))),
        ("3_whole_group_disable" = (summary = "Whole group: disables the group and the hub identity of EVERY device of the group", value = json!({
            "target": {"kind": "enrollment_group", "group_id": "fleet-x509"},
            "registry": "disable",
            "reason": {"code": "compromised", "text": "Intermediate CA key leaked"}
        })))
    )),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255,
        description = "Makes retries of this request safe: same key and body give the same job. 1-255 visible ASCII \
            characters (0x21-0x7E, no spaces); anything else is refused (400)")),
    responses(
        (status = 202, description = "Job queued", body = JobView, headers(("Location" = String, description = "URL of the job"))),
        (status = 200, description = "Same Idempotency-Key and body as an earlier request: that job (a `JobView`); with `dry_run: true`, the preview (a `Preview`, see /v1/deprovisions/preview)", body = CreateOk),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = PROBLEM),
        (status = 409, description = "A job for this target, or for a target sharing its devices (a whole group and one of its devices), is already queued or running; or the request would delete a tombstone, or a group whose devices an enabled higher-chain group would re-admit", body = Problem, content_type = PROBLEM),
        (status = 403, description = "The caller's role is too low (operator needed; admin for `force: true`)", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body larger than the limit", body = Problem, content_type = PROBLEM),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid fields; a target DPS does not have; a leaf certificate not issued under its group's signing certificate (unless `force`); or Idempotency-Key reused with another body", body = Problem, content_type = PROBLEM),
        (status = 502, description = "`dry_run: true` only: DPS or a hub could not be read", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn create_deprovision(
    State(state): State<AppState>,
    principal: Principal,
    hooks: Option<axum::Extension<super::webhooks::Webhooks>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<DeprovisionRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    // Checked before anything is recorded, so a refused callback creates no job.
    let callback = match &request.callback_url {
        Some(raw) => Some(super::webhooks::generic::api_callback(
            hooks.as_ref().map(|h| &h.0),
            raw,
        )?),
        None => None,
    };
    Ok(match submit(&state, &principal, request, key).await? {
        Submitted::Preview(preview) => (StatusCode::OK, ApiJson(preview)).into_response(),
        Submitted::Replayed(view) => (StatusCode::OK, ApiJson(view)).into_response(),
        Submitted::New(view) => {
            if let Some(url) = callback {
                state
                    .store
                    .register_callback(&view.id, "http", &url, "api", state.clock.now_ms())
                    .await?;
            }
            accepted(view)
        }
    })
}

/// What [`submit`] did with a request.
pub enum Submitted {
    /// `dry_run: true`: the preview, nothing recorded.
    Preview(Preview),
    /// A new job was recorded and the engine woken.
    New(JobView),
    /// The idempotency key named an earlier job with the same request: that job, unchanged.
    Replayed(JobView),
}

/// Validates, admits and records a request: the one path every caller (the API, webhooks, the dashboard)
/// takes to create a job, so the checks cannot differ between them. `principal` is recorded as the job's
/// requester (webhooks pass [`Principal::webhook`]); `force: true` needs it to be an admin; the approval
/// policy may hold the job for a second person.
pub async fn submit(
    state: &AppState,
    principal: &Principal,
    request: DeprovisionRequest,
    idempotency_key: Option<String>,
) -> Result<Submitted, ApiError> {
    validate(&request)?;
    if request.force {
        principal.require(Role::Admin, "`force: true`")?;
    }
    let dps = state.resolve_dps(request.dps.as_ref().map(|d| d.as_str()))?;
    let mut request = request;
    // Store the resolved instance so the job shows where it runs and the hash covers it.
    request.dps = Some(
        crate::domain::ids::DpsName::parse(&dps)
            .map_err(|e| ApiError::Validation(vec![FieldError::new("dps", e.to_string())]))?,
    );
    if request.dry_run {
        return Ok(Submitted::Preview(
            run_preview(state, &dps, &request).await?,
        ));
    }
    let idempotency = idempotency_key.map(|k| (k, request_hash(&request)));
    if let Some((key, hash)) = &idempotency {
        // A replay answers from the database alone: no admission check, so no Azure call.
        if let Some(job) = state.store.find_idempotent_replay(key, hash).await? {
            return Ok(Submitted::Replayed(job_view(&state.store, &job).await?));
        }
    }
    if let Some(azure) = &state.azure {
        // 404 for the target, or a leaf not issued under its group: 422 before the job exists. When DPS
        // cannot be asked, the job is accepted and its steps retry.
        let errors = azure.target_errors(&dps, &request).await;
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        azure.admit(&dps, &request).await.map_err(|r| match r {
            Refusal::Tombstone(detail) => ApiError::Conflict {
                slug: "tombstone-protected",
                detail,
            },
            Refusal::HigherChain(detail) => ApiError::Conflict {
                slug: "higher-chain-group-enabled",
                detail,
            },
            Refusal::Store(e) => ApiError::from(e),
        })?;
    }
    if let Some(job_id) = state
        .store
        .overlapping_active_job(&dps, &request.target)
        .await?
    {
        return Err(ApiError::OverlappingJob { job_id });
    }
    let devices = if state.approvals.needs_device_count(&request) {
        device_count(state, &dps, &request).await
    } else {
        None
    };
    let now = state.clock.now_ms();
    let hold = state.approvals.rule_for(&request, devices).map(|rule| {
        let ttl = i64::try_from(state.approvals.ttl.as_millis()).unwrap_or(i64::MAX / 4);
        (rule, now.saturating_add(ttl))
    });
    let plan = state.workflow.plan(&request);
    let created = state
        .store
        .create_job_as(
            NewJob {
                dps,
                request,
                plan,
                idempotency,
            },
            &JobOrigin {
                requester: Some(principal.label()),
                hold,
            },
            now,
        )
        .await?;
    Ok(match created {
        Created::New(job) => {
            state.waker.wake();
            Submitted::New(job_view(&state.store, &job).await?)
        }
        Created::Replayed(job) => Submitted::Replayed(job_view(&state.store, &job).await?),
    })
}

/// A whole group's device count for the approval policy, from a preview; `None` when it cannot be read
/// (the policy then holds the job).
async fn device_count(state: &AppState, dps: &str, request: &DeprovisionRequest) -> Option<u64> {
    let azure = state.azure.as_ref()?;
    match azure.preview(dps, request).await {
        Ok(p) => Some(p.devices.total),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the group's devices for the approval policy; holding the job");
            None
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1-255 visible ASCII characters".into())
        })?;
    Ok(Some(s.to_string()))
}

/// Hash of the normalised request: two bodies that mean the same thing hash the same.
fn request_hash(request: &DeprovisionRequest) -> String {
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

async fn job_view(store: &Store, job: &crate::store::JobRecord) -> Result<JobView, ApiError> {
    let counts = store.item_counts(&job.id).await?;
    Ok(JobView::new(job, &counts))
}

fn parse_job_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a job id (a UUID)")))
}

/// Get a job: status, target, options, progress counts and the state of each step.
#[utoipa::path(
    get,
    path = "/v1/deprovisions/{id}",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Job id (a UUID)")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Not a job id", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn get_deprovision(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = state
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let mut view = job_view(&state.store, &job).await?;
    view.undo_jobs = state.store.undo_jobs_of(&job.id).await?;
    if view.progress.total > 0 {
        view.pacing = Some(pacing_view(&state, &job, &view).await?);
    }
    Ok(ApiJson(view))
}

/// The job's rate, ETA and per-hub breakdown: devices left x operations per device, less the tokens
/// held, over each hub's current rate (the arithmetic the pacer and the preview use).
async fn pacing_view(
    state: &AppState,
    job: &crate::store::JobRecord,
    view: &JobView,
) -> Result<crate::http::views::JobPacing, ApiError> {
    use crate::http::views::{HubProgress, JobPacing};
    let ops_per_device = job.request.registry.ops_per_device() as f64;
    let now = state.clock.now_ms();
    let p = &view.progress;
    let done = p.registry_done + p.skipped + p.failed + p.cancelled;
    let devices_per_minute = job
        .started_at
        .filter(|s| now > *s)
        .map(|s| done as f64 * 60_000.0 / (now - s) as f64);
    let mut hubs = Vec::new();
    let mut eta_seconds = Some(0.0_f64);
    for (hub, c) in state.store.hub_counts(&job.id).await? {
        let finished = c.succeeded + c.skipped + c.failed + c.cancelled;
        let left = c.total - finished;
        let pace = match (&hub, &state.azure) {
            (Some(h), Some(wf)) => wf.hub_eta(h, left as f64 * ops_per_device),
            _ => None,
        };
        let (budget, rate) = (pace.map(|p| p.budget), pace.map(|p| p.rate));
        let hub_eta = match pace {
            _ if left == 0 => Some(0.0),
            Some(p) => Some(p.eta.as_secs_f64()),
            None => None,
        };
        eta_seconds = match (eta_seconds, hub_eta) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        hubs.push(HubProgress {
            hub,
            total: c.total,
            done: finished,
            failed: c.failed,
            budget_ops_per_minute: budget,
            rate_ops_per_minute: rate,
            eta_seconds: hub_eta,
        });
    }
    Ok(JobPacing {
        devices_per_minute,
        eta_seconds,
        ops_per_device,
        hubs,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no deprovisioning job with id {id}"))
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<i64>, FieldError> {
    v.as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    FieldError::new(field, "must be an RFC 3339 time, e.g. 2026-11-28T10:00:00Z")
                })
        })
        .transpose()
}

/// List jobs, newest first, with filters and cursor paging.
#[utoipa::path(
    get,
    path = "/v1/deprovisions",
    tag = "deprovisions",
    params(ListJobsQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Bad query string", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid filter values", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn list_deprovisions(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListJobsQuery>,
) -> Result<ApiJson<JobPage>, ApiError> {
    let mut errors = Vec::new();
    let from = parse_time("created_after", &q.created_after).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let to = parse_time("created_before", &q.created_before).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        errors.push(FieldError::new("limit", "must be between 1 and 200"));
    }
    if let Some(c) = &q.cursor {
        if !Store::is_valid_job_cursor(c) {
            errors.push(FieldError::new(
                "cursor",
                "is not a cursor this API returned",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = JobFilter {
        status: q.status,
        target_kind: q.target_kind.map(|k| k.as_str().to_string()),
        target_id: q.target_id,
        ticket_key: q.ticket_key,
        created_from: from,
        created_to: to,
    };
    let page = state
        .store
        .list_jobs(&filter, q.cursor.as_deref(), limit)
        .await?;
    let ids: Vec<String> = page.rows.iter().map(|j| j.id.clone()).collect();
    let counts = state.store.item_counts_of(&ids).await?;
    let items = page
        .rows
        .iter()
        .map(|j| JobView::new(j, &counts.get(&j.id).copied().unwrap_or_default()))
        .collect();
    Ok(ApiJson(JobPage {
        items,
        next_cursor: page.next_cursor,
    }))
}

fn page_params(q: &PageQuery) -> Result<(Option<i64>, u32), ApiError> {
    let mut errors = Vec::new();
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        errors.push(FieldError::new("limit", "must be between 1 and 1000"));
    }
    // Exactly what the document promises: at most 19 ASCII digits (no sign, no leading `+`).
    let parse = |c: &str| {
        (c.len() <= 19 && c.bytes().all(|b| b.is_ascii_digit()))
            .then(|| c.parse::<i64>().ok())
            .flatten()
    };
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) if parse(c).is_some() => parse(c),
        Some(_) => {
            errors.push(FieldError::new(
                "cursor",
                "is not a cursor this API returned",
            ));
            None
        }
    };
    if errors.is_empty() {
        Ok((cursor, limit))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// List the devices of a job and where each one is.
#[utoipa::path(
    get,
    path = "/v1/deprovisions/{id}/devices",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Job id (a UUID)"), PageQuery),
    responses(
        (status = 200, description = "A page of devices", body = DevicePage),
        (status = 400, description = "Not a job id, or an unknown query parameter", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid paging", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn list_devices(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<DevicePage>, ApiError> {
    let id = parse_job_id(&id)?;
    let (cursor, limit) = page_params(&q)?;
    let job = state
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let page = state.store.list_items(&id, cursor, limit).await?;
    Ok(ApiJson(DevicePage {
        items: page
            .rows
            .iter()
            .map(|i| DeviceView::new(i, job.plan.item_steps()))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The job's timeline: every transition and every Azure answer that mattered.
#[utoipa::path(
    get,
    path = "/v1/deprovisions/{id}/events",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Job id (a UUID)"), PageQuery),
    responses(
        (status = 200, description = "A page of events, oldest first", body = EventPage),
        (status = 400, description = "Not a job id, or an unknown query parameter", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid paging", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<EventPage>, ApiError> {
    let id = parse_job_id(&id)?;
    let (cursor, limit) = page_params(&q)?;
    state
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let page = state.store.list_events(&id, cursor, limit).await?;
    Ok(ApiJson(EventPage {
        items: page.rows.iter().map(EventView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Cancel a queued or running job, or withdraw one awaiting approval.
///
/// Nothing new starts; an Azure call already in flight completes and is recorded. The caller is recorded
/// in the timeline.
#[utoipa::path(
    post,
    path = "/v1/deprovisions/{id}/cancel",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Job id (a UUID)")),
    responses(
        (status = 200, description = "The job, cancelled or cancelling: the cancel was recorded while the job was still queued, running or awaiting approval, and the job ends as cancelled", body = JobView),
        (status = 400, description = "Not a job id", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job already finished (also when it finished while the cancel was on its way); nothing was changed", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn cancel_deprovision(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = state
        .store
        .cancel_job_by(&id, Some(&principal.label()), state.clock.now_ms())
        .await?;
    Ok(ApiJson(job_view(&state.store, &job).await?))
}

/// Retry a failed job: it resumes at its failed steps and never repeats a succeeded one.
#[utoipa::path(
    post,
    path = "/v1/deprovisions/{id}/retry",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Job id (a UUID)")),
    responses(
        (status = 200, description = "The job, queued again", body = JobView),
        (status = 400, description = "Not a job id", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job is not failed, or another job is active for the target", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn retry_deprovision(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = state
        .store
        .retry_job_by(&id, Some(&principal.label()), state.clock.now_ms())
        .await?;
    state.waker.wake();
    Ok(ApiJson(job_view(&state.store, &job).await?))
}

/// What an undo reverts.
#[derive(Debug, Clone, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoRequest {
    /// Also enable the undone job's enrollment or group at DPS again (default: DPS stays revoked).
    #[serde(default)]
    pub restore_dps: bool,
    /// Enrollment groups: how identities are enabled again or re-created (default `auto`).
    #[serde(default)]
    pub registry_path: RegistryPath,
    /// Undo even though a later job on the same target exists (whose devices the undo may enable again).
    #[serde(default)]
    pub force: bool,
}

/// Undo a finished job's hub changes, as a job of its own linked to it (admins only).
///
/// Devices the job disabled are enabled again, if its status reason is still on them; devices it deleted are
/// re-created from its snapshot, with their keys, where it ran import jobs (identities deleted device by device
/// left no snapshot and fail, saying so). Devices it found already disabled stay disabled. DPS stays revoked
/// unless `restore_dps` is true.
#[utoipa::path(
    post,
    path = "/v1/deprovisions/{id}/undo",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Id of the job to undo (a UUID)")),
    request_body(content = Option<UndoRequest>, description = "Optional: no body means every default"),
    responses(
        (status = 202, description = "The undo job, queued; `undo_of` names the job it undoes", body = JobView),
        (status = 400, description = "Not a job id, or not a JSON body", body = Problem, content_type = PROBLEM),
        (status = 403, description = "Undo needs the admin role", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job has not finished, is itself an undo, a later job on the same target exists (ask again with `force`), or another job is active for the target", body = Problem, content_type = PROBLEM),
        (status = 415, description = "A body that is not JSON (no body at all means the defaults)", body = Problem, content_type = PROBLEM),
        (status = 422, description = "`restore_dps` or `registry_path` does not apply to this job", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn undo_deprovision(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJsonOrDefault(body): ApiJsonOrDefault<UndoRequest>,
) -> Result<Response, ApiError> {
    principal.require(Role::Admin, "undoing a job")?;
    let id = parse_job_id(&id)?;
    let job = state
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if job.request.undo.is_some() {
        return Err(ApiError::Conflict {
            slug: "undo-of-undo",
            detail: format!("job {id} is itself an undo; deprovision the target again instead"),
        });
    }
    if !matches!(
        job.status,
        JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
    ) {
        return Err(ApiError::Conflict {
            slug: "job-not-finished",
            detail: format!(
                "job {id} is {}; undo it once it has finished (or cancel it first)",
                job.status.as_str()
            ),
        });
    }
    if !body.force
        && let Some(later) = state.store.later_job_on_target(&job.id).await?
    {
        return Err(ApiError::Conflict {
            slug: "later-job-on-target",
            detail: format!(
                "job {later} on the same target came after job {id}; undoing {id} could enable devices {later} meant to \
                 keep disabled. Undo {later} first, or ask again with \"force\": true"
            ),
        });
    }
    let mut errors = Vec::new();
    if body.restore_dps {
        match (&job.request.target, job.request.revoke) {
            (Target::GroupDevice(_), _) => errors.push(FieldError::new(
                "restore_dps",
                "a group device is blocked by a disabled individual enrollment, which is never removed",
            )),
            (Target::IndividualEnrollment(_), RevokeAction::Delete) => errors.push(FieldError::new(
                "restore_dps",
                "the job deleted the individual enrollment; create it again at DPS by hand",
            )),
            _ => {}
        }
    }
    let is_group = matches!(job.request.target, Target::EnrollmentGroup(_));
    if !body.registry_path.is_auto() && !is_group {
        errors.push(FieldError::new(
            "registry_path",
            "applies only to an enrollment_group target",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let request = DeprovisionRequest {
        undo: Some(UndoOf {
            job_id: job.id.clone(),
            restore_dps: body.restore_dps,
        }),
        registry_path: body.registry_path,
        delete_registrations: false,
        delete_group: false,
        force: false,
        dry_run: false,
        callback_url: None,
        requested_by: None,
        ..job.request.clone()
    };
    let plan = state.workflow.plan(&request);
    let created = state
        .store
        .create_job_as(
            NewJob {
                dps: job.dps.clone(),
                request,
                plan,
                idempotency: None,
            },
            &JobOrigin {
                requester: Some(principal.label()),
                hold: None,
            },
            state.clock.now_ms(),
        )
        .await?;
    let view = match created {
        Created::New(j) | Created::Replayed(j) => job_view(&state.store, &j).await?,
    };
    state.waker.wake();
    Ok(accepted(view))
}

/// `202 Accepted` with the new job and its `Location`.
fn accepted(view: JobView) -> Response {
    let location = format!("/v1/deprovisions/{}", view.id);
    let mut resp = (StatusCode::ACCEPTED, ApiJson(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Serde-level and rule-level checks, plus the leaf certificate's CN.
fn validate(request: &DeprovisionRequest) -> Result<(), ApiError> {
    let mut errors = request.validate().err().unwrap_or_default();
    if let Target::GroupDevice(t) = &request.target {
        if let Some(pem) = &t.certificate_pem {
            if errors.iter().all(|e| e.field != "target.certificate_pem") {
                match crate::domain::cert::parse_leaf(pem).map(|l| l.common_name) {
                    Ok(cn) if cn.eq_ignore_ascii_case(t.registration_id.as_str()) => {}
                    Ok(cn) => errors.push(FieldError::new(
                        "target.certificate_pem",
                        format!(
                            "its subject CN is `{cn}` but registration_id is `{}`; for X.509 the registration id is the leaf CN",
                            t.registration_id
                        ),
                    )),
                    Err(e) => errors.push(FieldError::new("target.certificate_pem", e.to_string())),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

async fn run_preview(
    state: &AppState,
    dps: &str,
    request: &DeprovisionRequest,
) -> Result<Preview, ApiError> {
    let Some(azure) = &state.azure else {
        return Err(ApiError::Unavailable(
            "previews read DPS and the hubs; this instance runs the rehearsal workflow, which has none".into(),
        ));
    };
    azure.preview(dps, request).await.map_err(|e| {
        tracing::warn!(error = %e, "preview failed");
        ApiError::Upstream(format!(
            "could not read DPS or a hub for the preview: {}",
            e.message()
        ))
    })
}

/// Preview a request: what it would find and do, changing nothing.
///
/// The same as `POST /v1/deprovisions` with `dry_run: true`. Lists what DPS holds for the target, the devices
/// per hub, what each step would do, warnings (never provisioned, no credentials for a hub, an enabled group
/// higher in the chain, a tombstone already present) and a duration estimate from the hubs' quotas.
#[utoipa::path(
    post,
    path = "/v1/deprovisions/preview",
    tag = "deprovisions",
    request_body = DeprovisionRequest,
    responses(
        (status = 200, description = "The plan", body = Preview),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body larger than the limit", body = Problem, content_type = PROBLEM),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid fields", body = Problem, content_type = PROBLEM),
        (status = 502, description = "DPS or a hub could not be read", body = Problem, content_type = PROBLEM),
        (status = 503, description = "No Azure workflow configured", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn preview_deprovision(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DeprovisionRequest>,
) -> Result<ApiJson<Preview>, ApiError> {
    validate(&request)?;
    let dps = state.resolve_dps(request.dps.as_ref().map(|d| d.as_str()))?;
    Ok(ApiJson(run_preview(&state, &dps, &request).await?))
}

/// Body of an approval or rejection (optional).
#[derive(Debug, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why, recorded in the timeline (at most 1 KiB).
    #[serde(default)]
    #[schema(example = "Checked with the fleet owner, ticket OPS-1234")]
    pub comment: Option<String>,
}

async fn decide(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: &[u8],
    decision: Decision,
) -> Result<ApiJson<JobView>, ApiError> {
    let id = parse_job_id(id)?;
    let body: DecisionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::Validation(vec![FieldError::new(
                "comment",
                format!("the body must be {{\"comment\": \"…\"}} or empty: {e}"),
            )])
        })?
    };
    if let Some(c) = &body.comment {
        if c.len() > 1024 || c.chars().any(char::is_control) {
            return Err(ApiError::Validation(vec![FieldError::new(
                "comment",
                "must be at most 1 KiB with no control characters",
            )]));
        }
    }
    let job = state
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let me = principal.label();
    if job.requested_by.as_deref() == Some(me.as_str()) {
        return Err(AuthError::SelfApproval(me).into());
    }
    let job = state
        .store
        .decide_job(
            &id,
            decision,
            &me,
            body.comment.as_deref(),
            state.clock.now_ms(),
        )
        .await?;
    if decision == Decision::Approve {
        state.waker.wake();
    }
    Ok(ApiJson(job_view(&state.store, &job).await?))
}

/// Approve a job awaiting approval: it is queued and runs.
///
/// Needs the admin role, and an admin other than the job's requester (two-person rule). Recorded in the
/// timeline with the approver and the optional comment.
#[utoipa::path(
    post,
    path = "/v1/deprovisions/{id}/approve",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Job id (a UUID)")),
    request_body(content = Option<DecisionRequest>, description = "Optional comment"),
    responses(
        (status = 200, description = "The job, queued", body = JobView),
        (status = 400, description = "Not a job id", body = Problem, content_type = PROBLEM),
        (status = 403, description = "Not an admin, or the caller requested this job", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job is not awaiting approval (already decided, cancelled or expired)", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid comment", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn approve_deprovision(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<ApiJson<JobView>, ApiError> {
    decide(&state, &principal, &id, &body, Decision::Approve).await
}

/// Reject a job awaiting approval: it ends as `rejected` and nothing is done.
///
/// Needs the admin role, and an admin other than the job's requester. Recorded in the timeline.
#[utoipa::path(
    post,
    path = "/v1/deprovisions/{id}/reject",
    tag = "deprovisions",
    params(("id" = uuid::Uuid, Path, description = "Job id (a UUID)")),
    request_body(content = Option<DecisionRequest>, description = "Optional comment"),
    responses(
        (status = 200, description = "The job, rejected", body = JobView),
        (status = 400, description = "Not a job id", body = Problem, content_type = PROBLEM),
        (status = 403, description = "Not an admin, or the caller requested this job", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No such job", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job is not awaiting approval", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid comment", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn reject_deprovision(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<ApiJson<JobView>, ApiError> {
    decide(&state, &principal, &id, &body, Decision::Reject).await
}

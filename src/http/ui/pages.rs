//! The dashboard's page handlers: read through the store as the API handlers do, render with `templates`.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::Markup;
use serde::Deserialize;

use super::UiError;
use super::form::JobForm;
use super::templates;
use crate::domain::job::{DeprovisionRequest, FieldError, JobStatus, Target};
use crate::domain::lane::LaneState;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::deprovisions::{Submitted, submit};
use crate::http::error::ApiError;
use crate::http::views::{DeviceView, EventView, JobView};
use crate::store::{ItemRecord, JobFilter, Store};

/// Jobs per page of the list.
pub const JOBS_PER_PAGE: u32 = 25;
/// Devices per page of a job.
pub const DEVICES_PER_PAGE: u32 = 50;
/// Events per page of a job's timeline.
pub const EVENTS_PER_PAGE: u32 = 100;
/// Devices read at most to fill one page filtered by state; past that the page ends early with a link on.
const FILTER_SCAN_LIMIT: usize = 5_000;
/// Devices read at most for the per-hub table; a larger job shows the table for its first devices, saying so.
pub const HUB_SCAN_LIMIT: usize = 10_000;
/// Seconds between refreshes while something shown is still queued or running.
pub const REFRESH_SECONDS: u32 = 3;

/// Device states a filter can ask for (the job-only `waiting_items` is not one).
pub const DEVICE_STATES: [LaneState; 7] = [
    LaneState::Waiting,
    LaneState::Pending,
    LaneState::Running,
    LaneState::Succeeded,
    LaneState::Skipped,
    LaneState::Failed,
    LaneState::Cancelled,
];

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, UiError> {
    q.map(|Query(v)| v)
        .map_err(|e| UiError::BadRequest(format!("the query string could not be read: {e}")))
}

/// Filters of the job list.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsQuery {
    status: String,
    cursor: String,
}

/// `GET /ui`: jobs, newest first, filtered by status.
pub async fn jobs(
    State(state): State<AppState>,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Markup, UiError> {
    let q = query(q)?;
    let status = match q.status.as_str() {
        "" => None,
        s => Some(
            JobStatus::parse(s)
                .ok_or_else(|| UiError::BadRequest(format!("unknown status `{s}`")))?,
        ),
    };
    let cursor = (!q.cursor.is_empty()).then_some(q.cursor.as_str());
    if cursor.is_some_and(|c| !Store::is_valid_job_cursor(c)) {
        return Err(UiError::BadRequest(
            "that page link is not one the dashboard made".into(),
        ));
    }
    let filter = JobFilter {
        status,
        ..JobFilter::default()
    };
    let page = state
        .store
        .list_jobs(&filter, cursor, JOBS_PER_PAGE)
        .await
        .map_err(ApiError::from)?;
    let ids: Vec<String> = page.rows.iter().map(|j| j.id.clone()).collect();
    let counts = state
        .store
        .item_counts_of(&ids)
        .await
        .map_err(ApiError::from)?;
    let jobs: Vec<JobView> = page
        .rows
        .iter()
        .map(|j| JobView::new(j, &counts.get(&j.id).copied().unwrap_or_default()))
        .collect();
    Ok(templates::jobs_page(&templates::JobsPage {
        jobs: &jobs,
        status,
        next_cursor: page.next_cursor.as_deref(),
        first_page: cursor.is_none(),
    }))
}

/// What the job page shows of its devices and timeline.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobQuery {
    /// Only devices in this state.
    state: String,
    /// Devices after this position.
    cursor: String,
    /// Events after this one.
    events: String,
}

/// Devices of one hub, by where they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct HubCounts {
    /// All.
    pub total: u64,
    /// Registry step done.
    pub succeeded: u64,
    /// Nothing to do.
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Not finished.
    pub open: u64,
}

/// `GET /ui/jobs/{id}`: a job, its devices (paged, filtered by state), per-hub progress and its timeline.
pub async fn job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Markup, UiError> {
    let q = query(q)?;
    let id = uuid::Uuid::parse_str(&id)
        .map(|u| u.to_string())
        .map_err(|_| UiError::NotFound(format!("`{id}` is not a job id")))?;
    let filter = match q.state.as_str() {
        "" => None,
        s => Some(
            LaneState::parse(s)
                .filter(|s| DEVICE_STATES.contains(s))
                .ok_or_else(|| UiError::BadRequest(format!("unknown device state `{s}`")))?,
        ),
    };
    let position = |name: &str, v: &str| -> Result<Option<i64>, UiError> {
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| {
                UiError::BadRequest(format!("`{name}` must be a page link the dashboard made"))
            })
    };
    let cursor = position("cursor", &q.cursor)?;
    let events_cursor = position("events", &q.events)?;
    let store = &state.store;
    let record = store
        .get_job(&id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| UiError::NotFound(format!("no deprovisioning job with id {id}")))?;
    let counts = store.item_counts(&id).await.map_err(ApiError::from)?;
    let view = JobView::new(&record, &counts);
    let (items, next_devices) = devices_page(store, &id, filter, cursor).await?;
    let devices: Vec<DeviceView> = items
        .iter()
        .map(|i| DeviceView::new(i, record.plan.item_steps()))
        .collect();
    let (hubs, hubs_complete) = hub_counts(store, &id).await?;
    let events = store
        .list_events(&id, events_cursor, EVENTS_PER_PAGE)
        .await
        .map_err(ApiError::from)?;
    let events_view: Vec<EventView> = events.rows.iter().map(EventView::from).collect();
    Ok(templates::job_page(&templates::JobPage {
        job: &view,
        counts: &counts,
        filter,
        devices: &devices,
        devices_cursor: cursor,
        next_devices,
        hubs: &hubs,
        hubs_complete,
        events: &events_view,
        events_cursor,
        next_events: events.next_cursor.as_deref(),
    }))
}

/// One page of a job's devices. Filtered by state, it reads on in discovery order until the page is full or
/// [`FILTER_SCAN_LIMIT`] devices were read; the next page continues after the last device read.
async fn devices_page(
    store: &Store,
    job_id: &str,
    filter: Option<LaneState>,
    cursor: Option<i64>,
) -> Result<(Vec<ItemRecord>, Option<i64>), UiError> {
    let Some(wanted) = filter else {
        let page = store
            .list_items(job_id, cursor, DEVICES_PER_PAGE)
            .await
            .map_err(ApiError::from)?;
        let next = page.next_cursor.and_then(|c| c.parse().ok());
        return Ok((page.rows, next));
    };
    let mut found = Vec::new();
    let mut after = cursor;
    let mut read = 0;
    loop {
        let page = store
            .list_items(job_id, after, 500)
            .await
            .map_err(ApiError::from)?;
        let more = page.next_cursor.is_some();
        for item in page.rows {
            read += 1;
            after = Some(item.seq);
            if item.state == wanted {
                found.push(item);
                if found.len() == DEVICES_PER_PAGE as usize {
                    return Ok((found, after));
                }
            }
        }
        if !more {
            return Ok((found, None));
        }
        if read >= FILTER_SCAN_LIMIT {
            return Ok((found, after));
        }
    }
}

/// Devices per hub (`None`: not known yet), over the job's first [`HUB_SCAN_LIMIT`] devices; `true` when
/// that was all of them.
async fn hub_counts(
    store: &Store,
    job_id: &str,
) -> Result<(BTreeMap<Option<String>, HubCounts>, bool), UiError> {
    let mut hubs: BTreeMap<Option<String>, HubCounts> = BTreeMap::new();
    let mut after = None;
    let mut read = 0;
    loop {
        let page = store
            .list_items(job_id, after, 1000)
            .await
            .map_err(ApiError::from)?;
        for item in &page.rows {
            read += 1;
            after = Some(item.seq);
            let c = hubs.entry(item.hub.clone()).or_default();
            c.total += 1;
            match item.state {
                LaneState::Succeeded => c.succeeded += 1,
                LaneState::Skipped => c.skipped += 1,
                LaneState::Failed => c.failed += 1,
                LaneState::Cancelled => c.cancelled += 1,
                _ => c.open += 1,
            }
        }
        if page.next_cursor.is_none() {
            return Ok((hubs, true));
        }
        if read >= HUB_SCAN_LIMIT {
            return Ok((hubs, false));
        }
    }
}

/// `GET /ui/new`: the form.
pub async fn new_job(State(state): State<AppState>) -> Markup {
    templates::form_page(&state.dps_names, &JobForm::initial(), &[], None)
}

/// `GET /ui/login`.
pub async fn login_form() -> Markup {
    templates::login_page(None)
}

fn read_form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, UiError> {
    f.map(|Form(v)| v)
        .map_err(|e| UiError::BadRequest(format!("the form could not be read: {e}")))
}

/// `POST /ui/new/preview`: what the request would do, and the button that creates it. Nothing is changed.
pub async fn preview(
    State(state): State<AppState>,
    principal: Principal,
    form: Result<Form<JobForm>, FormRejection>,
) -> Result<Response, UiError> {
    let form = read_form(form)?;
    let request = match form.to_request() {
        Ok(r) => r,
        Err(errors) => return Ok(form_again(&state, &form, &errors, None)),
    };
    Ok(confirm(&state, &principal, &form, request, None).await)
}

/// The confirmation page for a request, from a dry run through the one admission path; a request the API
/// would refuse goes back to the form with the API's reasons.
async fn confirm(
    state: &AppState,
    principal: &Principal,
    form: &JobForm,
    request: DeprovisionRequest,
    problem: Option<&str>,
) -> Response {
    let mut dry = request.clone();
    dry.dry_run = true;
    let preview = match submit(state, principal, dry, None).await {
        Ok(Submitted::Preview(p)) => Ok(p),
        Ok(Submitted::New(_) | Submitted::Replayed(_)) => {
            // A dry run records nothing; reaching this is a bug, reported like any internal error.
            return UiError::Api(ApiError::Internal(anyhow::anyhow!(
                "a dry run created a job"
            )))
            .into_response();
        }
        // The rehearsal workflow cannot preview: confirm on the request alone, saying so.
        Err(ApiError::Unavailable(why)) => Err(why),
        Err(ApiError::Validation(errors)) => return form_again(state, form, &errors, None),
        Err(other) => {
            let p = other.problem();
            return form_again(state, form, &[], Some(&p.detail));
        }
    };
    let key = format!("ui-{}", uuid::Uuid::new_v4());
    let status = if problem.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (
        status,
        templates::confirm_page(&templates::ConfirmPage {
            request: &request,
            preview: preview.as_ref().ok(),
            no_preview: preview.as_ref().err().map(String::as_str),
            idempotency_key: &key,
            problem,
        }),
    )
        .into_response()
}

fn form_again(
    state: &AppState,
    form: &JobForm,
    errors: &[FieldError],
    problem: Option<&str>,
) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        templates::form_page(&state.dps_names, form, errors, problem),
    )
        .into_response()
}

/// What the confirmation page posts.
#[derive(Debug, Deserialize)]
pub struct CreateForm {
    /// The previewed request, as JSON.
    request: String,
    /// Made by the confirmation page: posting it twice creates one job.
    idempotency_key: String,
    /// For a whole group, its id typed again.
    #[serde(default)]
    confirm_target: String,
    /// `edit`: back to the form with the request filled in, instead of creating it.
    #[serde(default)]
    action: String,
}

/// `POST /ui/new/create`: creates the previewed job through the one admission path and shows it.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    form: Result<Form<CreateForm>, FormRejection>,
) -> Result<Response, UiError> {
    let f = read_form(form)?;
    let mut request: DeprovisionRequest = serde_json::from_str(&f.request).map_err(|e| {
        UiError::BadRequest(format!("the confirmed request could not be read: {e}"))
    })?;
    request.dry_run = false;
    let form = JobForm::from_request(&request);
    if f.action == "edit" {
        return Ok(templates::form_page(&state.dps_names, &form, &[], None).into_response());
    }
    if let Target::EnrollmentGroup(g) = &request.target {
        if !f
            .confirm_target
            .trim()
            .eq_ignore_ascii_case(g.group_id.as_str())
        {
            let why = format!(
                "This job acts on every device of group {}: type the group id to confirm.",
                g.group_id
            );
            return Ok(confirm(&state, &principal, &form, request, Some(&why)).await);
        }
    }
    let key = f.idempotency_key;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UiError::BadRequest(
            "the confirmation carries no valid idempotency key".into(),
        ));
    }
    match submit(&state, &principal, request, Some(key)).await {
        Ok(Submitted::New(job) | Submitted::Replayed(job)) => {
            Ok(Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response())
        }
        Ok(Submitted::Preview(_)) => Err(UiError::Api(ApiError::Internal(anyhow::anyhow!(
            "a confirmed request came back as a preview"
        )))),
        Err(ApiError::Validation(errors)) => Ok(form_again(&state, &form, &errors, None)),
        Err(e) => Err(UiError::Api(e)),
    }
}

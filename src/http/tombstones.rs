//! `/v1/tombstones`: the disabled individual enrollments that block single devices of groups.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery};
use super::{AppState, PROBLEM};
use crate::domain::clock::to_rfc3339;
use crate::domain::job::FieldError;
use crate::store::{AuditStatus, Store, Tombstone};
use crate::workflow::preview::AuditReport;

/// The routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tombstones))
        .routes(routes!(audit_tombstones))
}

/// A recorded block.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TombstoneView {
    /// DPS instance.
    pub dps: String,
    /// The blocked registration id (and the blocking enrollment's id).
    pub registration_id: String,
    /// The group the device would enroll through if the block were deleted.
    pub group_id: String,
    /// `x509` (leaf certificate) or `symmetricKey` (the documented fallback).
    pub attestation: String,
    /// The job that created it.
    pub job_id: String,
    /// `pending` (its creation was started and not confirmed; it refuses deletes all the same) or `active`.
    #[schema(example = "active")]
    pub state: String,
    /// When it was recorded (RFC 3339).
    pub created_at: String,
    /// Last audit (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audited_at: Option<String>,
    /// Last audit result: `ok`, `missing`, `enabled` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_status: Option<String>,
    /// What the last audit found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_detail: Option<String>,
    /// The block no longer holds: the device can enroll again through its group.
    pub drift: bool,
}

impl From<&Tombstone> for TombstoneView {
    fn from(t: &Tombstone) -> Self {
        TombstoneView {
            dps: t.dps.clone(),
            registration_id: t.registration_id.clone(),
            group_id: t.group_id.clone(),
            attestation: t.attestation.clone(),
            job_id: t.job_id.clone(),
            state: t.state.as_str().to_string(),
            created_at: to_rfc3339(t.created_at),
            audited_at: t.audited_at.map(to_rfc3339),
            audit_status: t.audit_status.map(|s| AuditStatus::as_str(s).to_string()),
            audit_detail: t.audit_detail.clone(),
            drift: t.audit_status.is_some_and(AuditStatus::is_drift),
        }
    }
}

/// A page of tombstones.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TombstonePage {
    /// Tombstones in (dps, registration id) order.
    pub items: Vec<TombstoneView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Paging of tombstones.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TombstoneQuery {
    /// Cursor from the previous page's `next_cursor` (opaque, base64url); any other value is refused (422).
    #[param(pattern = "^[A-Za-z0-9_-]*$", max_length = 1024)]
    #[serde(default, deserialize_with = "super::views::empty_as_none")]
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// List tombstones: every disabled individual enrollment the service created to block one device of a group.
///
/// Never delete one: that lets the device enroll again through its group.
#[utoipa::path(
    get,
    path = "/v1/tombstones",
    tag = "tombstones",
    params(TombstoneQuery),
    responses(
        (status = 200, description = "A page of tombstones", body = TombstonePage),
        (status = 400, description = "Unknown query parameter", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid paging", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn list_tombstones(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<TombstoneQuery>,
) -> Result<ApiJson<TombstonePage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    let mut errors = Vec::new();
    if !(1..=1000).contains(&limit) {
        errors.push(FieldError::new("limit", "must be between 1 and 1000"));
    }
    if q.cursor
        .as_deref()
        .is_some_and(|c| !Store::is_valid_tombstone_cursor(c))
    {
        errors.push(FieldError::new(
            "cursor",
            "is not a cursor this API returned",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let page = state
        .store
        .list_tombstones(q.cursor.as_deref(), limit)
        .await?;
    Ok(ApiJson(TombstonePage {
        items: page.rows.iter().map(TombstoneView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Check every tombstone now: it must still exist in DPS and still be disabled. Drift is reported here and in the log.
#[utoipa::path(
    post,
    path = "/v1/tombstones/audit",
    tag = "tombstones",
    responses(
        (status = 200, description = "What the audit found", body = AuditReport),
        (status = 503, description = "No Azure workflow configured", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn audit_tombstones(
    State(state): State<AppState>,
) -> Result<ApiJson<AuditReport>, ApiError> {
    let Some(azure) = &state.azure else {
        return Err(ApiError::Unavailable(
            "auditing reads DPS; this instance runs the rehearsal workflow".into(),
        ));
    };
    Ok(ApiJson(azure.audit_tombstones(state.clock.now_ms()).await?))
}

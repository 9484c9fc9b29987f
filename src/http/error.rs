//! The one place where errors become HTTP answers: RFC 9457 `application/problem+json`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::job::FieldError;
use crate::store::StoreError;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the problem type (a URN).
    #[schema(example = "urn:deprovisiond:problem:validation-failed")]
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    #[schema(example = "Request validation failed")]
    pub title: String,
    /// The HTTP status.
    #[schema(example = 422)]
    pub status: u16,
    /// What happened in this case and how to fix it.
    pub detail: String,
    /// Every invalid field, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The job the problem is about (e.g. the active job for a target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body, path or query could not be parsed.
    #[error("{0}")]
    BadRequest(String),
    /// The request parsed but breaks rules.
    #[error("request validation failed")]
    Validation(Vec<FieldError>),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// Method not allowed on that route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Body larger than the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client did not send the body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// Content type is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The target already has a queued or running job.
    #[error("job {job_id} is already active for this target")]
    ActiveJob {
        /// The active job.
        job_id: String,
    },
    /// An active job's devices can overlap this request's (a whole group and one of its devices).
    #[error("job {job_id} is active for a target that shares devices with this one")]
    OverlappingJob {
        /// The active job.
        job_id: String,
    },
    /// The idempotency key was used with another body.
    #[error("idempotency key reused with a different body")]
    IdempotencyMismatch {
        /// The job created with that key.
        job_id: String,
    },
    /// The action is not allowed in the job's status.
    #[error("{detail}")]
    InvalidTransition {
        /// The job.
        job_id: String,
        /// Why.
        detail: String,
    },
    /// The request conflicts with what the service protects (e.g. a tombstone).
    #[error("{detail}")]
    Conflict {
        /// Stable slug of the conflict.
        slug: &'static str,
        /// Why.
        detail: String,
    },
    /// The database is unreachable, or a feature is not configured.
    #[error("{0}")]
    Unavailable(String),
    /// Azure could not be read.
    #[error("{0}")]
    Upstream(String),
    /// Not authenticated (401) or not allowed (403).
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    /// Anything else: logged in full, reported without details.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => {
                ApiError::NotFound(format!("no deprovisioning job with id {id}"))
            }
            StoreError::ActiveJobExists { job_id } => ApiError::ActiveJob { job_id },
            StoreError::IdempotencyMismatch { job_id } => ApiError::IdempotencyMismatch { job_id },
            StoreError::InvalidTransition {
                job_id,
                status,
                action,
                allowed,
            } => ApiError::InvalidTransition {
                job_id,
                detail: format!(
                    "the job is {status}; {action} is only possible when it is {allowed}"
                ),
            },
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
                ApiError::Unavailable("the database is not reachable".into())
            }
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "bad-request",
                "The request could not be read",
            ),
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Request validation failed",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Resource not found"),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "no-such-route", "No such route"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            ApiError::RequestTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "The request was not received in time",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::ActiveJob { .. } => (
                StatusCode::CONFLICT,
                "active-job-exists",
                "A job for this target is already active",
            ),
            ApiError::OverlappingJob { .. } => (
                StatusCode::CONFLICT,
                "overlapping-job-active",
                "An active job covers some of the same devices",
            ),
            ApiError::IdempotencyMismatch { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused with a different request",
            ),
            ApiError::InvalidTransition { .. } => (
                StatusCode::CONFLICT,
                "invalid-job-transition",
                "Action not allowed in the job's status",
            ),
            ApiError::Conflict { slug, .. } => (
                StatusCode::CONFLICT,
                slug,
                "Request refused by a safety rule",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Upstream(_) => (
                StatusCode::BAD_GATEWAY,
                "azure-unavailable",
                "Azure could not be read",
            ),
            ApiError::Auth(e) => (e.status(), e.slug(), e.title()),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                "Internal server error",
            ),
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let detail = match self {
            ApiError::Validation(errors) => format!(
                "{} field(s) are invalid: {}",
                errors.len(),
                errors
                    .iter()
                    .map(|e| format!("{} {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            ApiError::MethodNotAllowed => {
                "this route does not accept that method; see /docs for the API".into()
            }
            ApiError::NoRoute(p) => format!("nothing is served at {p}; see /docs for the API"),
            ApiError::ActiveJob { job_id } => format!(
                "job {job_id} is already queued or running for this target; follow it, or cancel it before asking again"
            ),
            ApiError::OverlappingJob { job_id } => format!(
                "job {job_id} is queued or running for a target that shares devices with this one (a whole group and \
                 one device of that group); two jobs would write the same identities. Wait for it, or cancel it"
            ),
            ApiError::IdempotencyMismatch { job_id } => format!(
                "this Idempotency-Key already created job {job_id} from a different request body; use a new key for a new request"
            ),
            ApiError::Internal(_) => "an unexpected error occurred; it has been logged".into(),
            other => other.to_string(),
        };
        Problem {
            type_: format!("urn:deprovisiond:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            errors: match self {
                ApiError::Validation(e) => e.clone(),
                _ => Vec::new(),
            },
            job_id: match self {
                ApiError::ActiveJob { job_id }
                | ApiError::OverlappingJob { job_id }
                | ApiError::IdempotencyMismatch { job_id }
                | ApiError::InvalidTransition { job_id, .. } => Some(job_id.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Auth(e) = self {
            // Its own answer carries `WWW-Authenticate`.
            return e.into_response();
        }
        if let ApiError::Internal(e) = &self {
            // The whole chain goes to the log; the client sees only a generic message.
            tracing::error!(error = ?e, "internal error");
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        problem_response(status, problem)
    }
}

/// Builds a problem+json response.
pub fn problem_response(status: StatusCode, problem: Problem) -> Response {
    let mut resp = (status, Json(problem)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp
}

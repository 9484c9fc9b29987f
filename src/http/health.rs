//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::ApiJson;
use super::{AppState, PROBLEM};

/// The routes of the probes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// How long the readiness probe waits for the database before it answers 503.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Probe answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> ApiJson<Health> {
    ApiJson(Health { status: "ok" })
}

/// Readiness: the database answers and every migration is applied.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database unreachable or not migrated", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn readyz(
    State(state): State<AppState>,
) -> Result<(StatusCode, ApiJson<Health>), ApiError> {
    // A probe must answer within its own timeout: a database that does not answer is not ready, even while
    // the pool is still waiting for a connection.
    let answer = tokio::time::timeout(READY_WITHIN, state.store.ready()).await;
    let Ok(answer) = answer else {
        tracing::warn!("readiness check: the database did not answer in time");
        return Err(ApiError::Unavailable(format!(
            "the database did not answer within {} s",
            READY_WITHIN.as_secs()
        )));
    };
    match answer {
        Ok(true) => Ok((StatusCode::OK, ApiJson(Health { status: "ok" }))),
        Ok(false) => Err(ApiError::Unavailable(
            "database migrations are not applied".into(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::Unavailable(
                "the database is not reachable".into(),
            ))
        }
    }
}

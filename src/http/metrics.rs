//! `GET /metrics`: Prometheus text exposition of the process's counters and histograms (Azure calls,
//! throttling, step latency) and of gauges read from the database (jobs, devices, queue, tombstones).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::{AppState, PROBLEM};
use crate::store::Gauges;

/// The metrics route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics (text format 0.0.4); every metric is described in the README.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Metrics in the Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 503, description = "The database is not reachable", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let gauges = state
        .store
        .gauges(state.clock.now_ms())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "metrics: database gauges unavailable");
            ApiError::Unavailable("the database is not reachable".into())
        })?;
    let mut text = render_gauges(&gauges);
    text.push_str(&crate::telemetry::prometheus().render());
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The database gauges in the exposition format.
pub fn render_gauges(g: &Gauges) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, help: &str, label: &str, rows: &[(String, i64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (value, count) in rows {
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {count}", escape(value));
        }
    };
    family(
        &mut out,
        "deprovisiond_jobs",
        "Jobs by status.",
        "status",
        &g.jobs,
    );
    family(
        &mut out,
        "deprovisiond_devices",
        "Devices of all jobs by state.",
        "state",
        &g.devices,
    );
    family(
        &mut out,
        "deprovisiond_tombstones",
        "Blocking enrollments by last audit status (never: not audited yet).",
        "audit_status",
        &g.tombstones,
    );
    let _ = writeln!(
        out,
        "# HELP deprovisiond_queue_depth Job and device steps due to run now.\n\
         # TYPE deprovisiond_queue_depth gauge\ndeprovisiond_queue_depth {}",
        g.queue_depth
    );
    let _ = writeln!(
        out,
        "# HELP deprovisiond_oldest_pending_device_age_seconds Age of the oldest device not finished yet.\n\
         # TYPE deprovisiond_oldest_pending_device_age_seconds gauge\n\
         deprovisiond_oldest_pending_device_age_seconds {}",
        g.oldest_pending_device_secs
    );
    out
}

/// Label values escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

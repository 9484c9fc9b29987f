//! `/v1/webhooks/*`: ticketing systems (Jira Cloud, ServiceNow) and any signed caller (generic) ask for
//! deprovisionings.
//!
//! Each route authenticates the delivery by its own scheme (a signature over the raw body, or ServiceNow's
//! basic auth / shared header), not by bearer tokens. A bad, missing or replayed signature is answered 401 with
//! nothing recorded but a log line. An accepted event is mapped by the source's rule into a request, which goes
//! through [`crate::http::deprovisions::submit`] like every request, with the ticket key as the job's ticket
//! reference and idempotency key (`jira:OPS-42`): redeliveries and later events of one ticket create at most one
//! job.

pub mod config;
pub mod generic;
pub mod jira;
pub mod mapping;
pub mod servicenow;
pub mod signature;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::deprovisions::{Submitted, submit};
use super::error::{ApiError, Problem, problem_response};
use super::extract::ApiJson;
use crate::domain::clock::SharedClock;
use crate::domain::job::{DeprovisionRequest, FieldError};
pub use config::WebhookConfig;

/// The routes (exempt from bearer authentication: each authenticates its deliveries itself).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(generic::generic_webhook))
        .routes(routes!(jira::jira_webhook))
        .routes(routes!(servicenow::servicenow_webhook))
}

/// What the webhook handlers need besides [`AppState`]: the sources and the clock signed timestamps are
/// compared with. Added to the router as an extension by [`crate::app::App`].
#[derive(Clone)]
pub struct Webhooks {
    /// The configured sources.
    pub config: Arc<WebhookConfig>,
    /// The local clock (signed timestamps come from other machines' wall clocks, not the database's).
    pub clock: SharedClock,
}

/// What a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A job was created (202).
    Created,
    /// The ticket, or this very delivery, already created a job: that job, nothing new (200).
    Duplicate,
    /// The event does not ask for a deprovisioning (202, no job).
    Ignored,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
        }
    }
}

/// The answer to an accepted delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookAck {
    /// What happened.
    pub outcome: Outcome,
    /// The job created or named.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "0193c7a0-6b5e-7c3e-9a51-2f6f0f5c1d2e")]
    pub job_id: Option<String>,
    /// The ticket key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "OPS-42")]
    pub ticket_key: Option<String>,
    /// Why the event was ignored, or why it is a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl IntoResponse for WebhookAck {
    fn into_response(self) -> Response {
        let status = match self.outcome {
            Outcome::Duplicate => StatusCode::OK,
            Outcome::Created | Outcome::Ignored => StatusCode::ACCEPTED,
        };
        let location = self
            .job_id
            .as_ref()
            .filter(|_| self.outcome == Outcome::Created)
            .and_then(|id| HeaderValue::from_str(&format!("/v1/deprovisions/{id}")).ok());
        let mut resp = (status, ApiJson(self)).into_response();
        if let Some(l) = location {
            resp.headers_mut().insert(header::LOCATION, l);
        }
        resp
    }
}

/// Errors of the webhook routes.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The delivery could not be authenticated. The reason is logged, and said to the sender in general terms.
    #[error("{from} webhook: {reason}")]
    Unauthorized {
        /// The route's source.
        from: &'static str,
        /// What was wrong (never a secret or a signature value).
        reason: String,
        /// `WWW-Authenticate` challenge (basic auth).
        challenge: Option<&'static str>,
    },
    /// Any other error, answered as the API answers it.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        match self {
            HookError::Unauthorized {
                from,
                reason,
                challenge,
            } => {
                tracing::warn!(source = from, %reason, "webhook delivery refused: not authenticated; nothing recorded");
                let mut resp = problem_response(
                    StatusCode::UNAUTHORIZED,
                    Problem {
                        type_: "urn:deprovisiond:problem:webhook-unauthenticated".into(),
                        title: "The webhook delivery could not be authenticated".into(),
                        status: 401,
                        detail: format!(
                            "{reason}; the delivery was not recorded. Check the secret shared with this service"
                        ),
                        errors: Vec::new(),
                        job_id: None,
                    },
                );
                if let Some(c) = challenge {
                    resp.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
                }
                resp
            }
            HookError::Api(e) => e.into_response(),
        }
    }
}

impl HookError {
    fn unauthorized(source: &'static str, reason: impl ToString) -> Self {
        HookError::Unauthorized {
            from: source,
            reason: reason.to_string(),
            challenge: None,
        }
    }
}

/// The raw body, as signed: read whole (the body limit applies), never parsed before it is authenticated.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    return super::extract::too_large();
                }
                // A body that stopped arriving is the server's body-read timeout, as for every route.
                let mut source: Option<&dyn std::error::Error> = Some(&r);
                while let Some(e) = source {
                    if e.is::<tower_http::timeout::TimeoutError>() {
                        return ApiError::RequestTimeout(
                            "the request body did not arrive within the body-read timeout".into(),
                        );
                    }
                    source = e.source();
                }
                ApiError::BadRequest(format!(
                    "the request body could not be read: {}",
                    r.body_text()
                ))
            })
    }
}

/// The configured sources, or 404 naming the one that is not: an unconfigured source is a route this service
/// does not offer, not a failure of the service.
fn configured<'a, T>(
    hooks: &'a Option<axum::Extension<Webhooks>>,
    pick: impl Fn(&'a WebhookConfig) -> Option<&'a T>,
    name: &str,
) -> Result<(&'a Webhooks, &'a T), HookError> {
    hooks
        .as_ref()
        .and_then(|h| pick(&h.0.config).map(|s| (&h.0, s)))
        .ok_or_else(|| {
            HookError::Api(ApiError::NotFound(format!(
                "the {name} webhook is not configured on this service (see DEPROVISIOND_WEBHOOKS_CONFIG)"
            )))
        })
}

/// Parses an authenticated body as JSON (400 if it is not).
fn parse_json(body: &[u8]) -> Result<serde_json::Value, HookError> {
    serde_json::from_slice(body)
        .map_err(|e| HookError::Api(ApiError::BadRequest(format!("malformed JSON: {e}"))))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A callback to register on the job an event creates.
#[derive(Debug, Clone)]
pub struct NewCallback {
    /// `http` or `jira_comment`.
    pub kind: &'static str,
    /// URL or issue key.
    pub destination: String,
}

/// A mapped event, ready to submit.
pub struct Admission {
    /// The source (`generic`, `jira`, `servicenow`).
    pub source: &'static str,
    /// The request.
    pub request: DeprovisionRequest,
    /// The ticket system and key: the idempotency key is `system:key`.
    pub idempotency_key: String,
    /// The sender's delivery id, for redelivery dedupe.
    pub delivery_id: Option<String>,
    /// Callbacks the job carries.
    pub callbacks: Vec<NewCallback>,
}

/// The answer recorded for a delivery id already handled, if any (200, nothing new).
async fn earlier_delivery(
    state: &AppState,
    source: &str,
    delivery_id: Option<&str>,
) -> Result<Option<WebhookAck>, HookError> {
    let Some(id) = delivery_id else {
        return Ok(None);
    };
    let Some(d) = state
        .store
        .webhook_delivery(source, id)
        .await
        .map_err(ApiError::from)?
    else {
        return Ok(None);
    };
    Ok(Some(WebhookAck {
        outcome: Outcome::Duplicate,
        job_id: d.job_id,
        ticket_key: None,
        detail: Some(format!(
            "delivery {id} was already handled (it was {}); nothing new was done",
            d.outcome
        )),
    }))
}

async fn remember(state: &AppState, source: &str, delivery_id: Option<&str>, ack: &WebhookAck) {
    let Some(id) = delivery_id else { return };
    let r = state
        .store
        .record_webhook_delivery(
            source,
            id,
            ack.outcome.as_str(),
            ack.job_id.as_deref(),
            state.clock.now_ms(),
        )
        .await;
    if let Err(e) = r {
        // The job exists either way; a redelivery is then deduplicated by the ticket's idempotency key.
        tracing::warn!(source, error = %e, "could not record the webhook delivery id");
    }
}

/// An event the rule does not map: 202, no job; remembered so a redelivery is answered the same.
async fn ignore(
    state: &AppState,
    source: &'static str,
    delivery_id: Option<&str>,
    why: String,
) -> WebhookAck {
    tracing::info!(source, reason = %why, "webhook event ignored: it does not ask for a deprovisioning");
    let ack = WebhookAck {
        outcome: Outcome::Ignored,
        job_id: None,
        ticket_key: None,
        detail: Some(why),
    };
    remember(state, source, delivery_id, &ack).await;
    ack
}

/// Submits a mapped event through the one admission path; the ticket's idempotency key makes a second event of
/// the same ticket name the first job instead of creating another.
async fn admit(state: &AppState, a: Admission) -> Result<WebhookAck, HookError> {
    let ticket_key = a.request.ticket.as_ref().map(|t| t.key.clone());
    if a.request.dry_run {
        return Err(ApiError::Validation(vec![FieldError::new(
            "dry_run",
            "is not accepted on webhooks; preview with POST /v1/deprovisions/preview",
        )])
        .into());
    }
    let principal = crate::http::auth::Principal::webhook(a.source);
    let ack = match submit(
        state,
        &principal,
        a.request,
        Some(a.idempotency_key.clone()),
    )
    .await
    {
        Ok(Submitted::New(view)) => WebhookAck {
            outcome: Outcome::Created,
            job_id: Some(view.id),
            ticket_key,
            detail: None,
        },
        Ok(Submitted::Replayed(view)) => WebhookAck {
            outcome: Outcome::Duplicate,
            job_id: Some(view.id),
            ticket_key,
            detail: Some(format!(
                "ticket {} already created this job",
                a.idempotency_key
            )),
        },
        Err(ApiError::IdempotencyMismatch { job_id }) => WebhookAck {
            outcome: Outcome::Duplicate,
            job_id: Some(job_id),
            ticket_key,
            detail: Some(format!(
                "ticket {} already created this job from an earlier event with other field values; a ticket \
                 creates at most one job",
                a.idempotency_key
            )),
        },
        // Previews are refused above.
        Ok(Submitted::Preview(_)) => {
            return Err(ApiError::Internal(anyhow::anyhow!("a webhook produced a preview")).into());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(job_id) = &ack.job_id {
        let now = state.clock.now_ms();
        for cb in &a.callbacks {
            state
                .store
                .register_callback(job_id, cb.kind, &cb.destination, a.source, now)
                .await
                .map_err(ApiError::from)?;
        }
    }
    tracing::info!(source = a.source, outcome = ack.outcome.as_str(), job_id = ?ack.job_id,
        ticket = %a.idempotency_key, "webhook event handled");
    remember(state, a.source, a.delivery_id.as_deref(), &ack).await;
    Ok(ack)
}

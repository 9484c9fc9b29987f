//! `POST /v1/webhooks/jira`: Jira Cloud webhooks.
//!
//! Jira signs each delivery with the webhook's secret (`X-Hub-Signature: sha256=<hex HMAC of the body>`) and
//! names it with `X-Atlassian-Webhook-Identifier`, the same on each of its retries: a second delivery with that
//! identifier is answered from the first. Jira's signature header carries no timestamp: a captured delivery
//! replayed later is recognised by that identifier and by the ticket's idempotency key, and, with `max_age_secs`,
//! refused by the age of the payload's signed `timestamp`.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;

use super::mapping::{JIRA, Mapped};
use super::{
    Admission, HookError, NewCallback, RawBody, WebhookAck, Webhooks, configured, header,
    parse_json,
};
use crate::http::AppState;
use crate::http::PROBLEM;
use crate::http::error::{ApiError, Problem};

/// Jira's signature header.
pub const SIGNATURE_HEADER: &str = "x-hub-signature";
/// Jira's delivery id, stable across its retries.
pub const DELIVERY_HEADER: &str = "x-atlassian-webhook-identifier";

/// Receive a Jira Cloud webhook (`jira:issue_created`, `jira:issue_updated`, …).
///
/// The source's rule decides which events mean "deprovision" (event name, field values, a status change in the
/// changelog) and which issue fields carry the target and the reason; other events get 202 and no job. The
/// issue key (`jira:OPS-42`) is the job's ticket and idempotency key.
#[utoipa::path(
    post,
    path = "/v1/webhooks/jira",
    tag = "webhooks",
    request_body(content = serde_json::Value, description = "A Jira Cloud webhook payload: `webhookEvent`, `issue{key, fields}`, `changelog`"),
    params(
        ("X-Hub-Signature" = String, Header, description = "`sha256=<hex HMAC-SHA256 of the raw body>` under the webhook's secret"),
        ("X-Atlassian-Webhook-Identifier" = Option<String>, Header, description = "Jira's id of the delivery, the same on its retries: a redelivery is answered from the first"),
    ),
    responses(
        (status = 202, description = "A job was created (`outcome: created`), or the event does not match the rule (`outcome: ignored`)", body = WebhookAck),
        (status = 200, description = "The issue or this delivery already created a job: that job (`outcome: duplicate`)", body = WebhookAck),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = PROBLEM),
        (status = 404, description = "This source is not configured on this service", body = Problem, content_type = PROBLEM),
        (status = 401, description = "Signature missing or wrong, or (with `max_age_secs`) the signed payload too old: a replay; nothing recorded", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Another job is active for this target", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body larger than the limit", body = Problem, content_type = PROBLEM),
        (status = 422, description = "A mapped field is absent or unusable: each is named by its JSON pointer", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn jira_webhook(
    State(state): State<AppState>,
    hooks: Option<Extension<Webhooks>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<WebhookAck, HookError> {
    const SOURCE: &str = "jira";
    // Unsigned is unauthenticated whether or not this source is configured: 401 before 404.
    if header(&headers, SIGNATURE_HEADER).is_none() {
        return Err(HookError::unauthorized(SOURCE, "no X-Hub-Signature header"));
    }
    let (hooks, source) = configured(&hooks, |c| c.jira.as_ref(), SOURCE)?;
    super::signature::verify_hub_signature(
        source.secret.bytes(),
        header(&headers, SIGNATURE_HEADER),
        &body,
    )
    .map_err(|e| HookError::unauthorized(SOURCE, e))?;
    let delivery_id = header(&headers, DELIVERY_HEADER).map(str::to_string);
    if let Some(ack) = super::earlier_delivery(&state, SOURCE, delivery_id.as_deref()).await? {
        return Ok(ack);
    }
    let payload = parse_json(&body)?;
    if let Some(max_age) = source.max_age_secs {
        // The body is authenticated, so its timestamp (milliseconds) is what Jira signed.
        let sent_ms = payload.get("timestamp").and_then(serde_json::Value::as_i64);
        let age_secs = sent_ms.map(|t| (hooks.clock.now_ms() - t) / 1000);
        if age_secs.is_none_or(|a| a > max_age as i64) {
            let reason = match age_secs {
                Some(a) => format!(
                    "the delivery was signed {a} s ago; at most {max_age} s is accepted (a replay?)"
                ),
                None => "the delivery has no `timestamp` to check its age against".into(),
            };
            return Err(HookError::unauthorized(SOURCE, reason));
        }
    }
    let (request, ticket_key) = match source
        .rule
        .apply(&payload, &JIRA)
        .map_err(ApiError::Validation)?
    {
        Mapped::Ignored(why) => {
            return Ok(super::ignore(&state, SOURCE, delivery_id.as_deref(), why).await);
        }
        Mapped::Deprovision {
            request,
            ticket_key,
        } => (*request, ticket_key),
    };
    let mut callbacks: Vec<NewCallback> = source
        .callback_url
        .iter()
        .map(|u| NewCallback {
            kind: "http",
            destination: u.to_string(),
        })
        .collect();
    if source.comment.is_some() {
        callbacks.push(NewCallback {
            kind: "jira_comment",
            destination: ticket_key.clone(),
        });
    }
    super::admit(
        &state,
        Admission {
            source: SOURCE,
            request,
            idempotency_key: format!("jira:{ticket_key}"),
            delivery_id,
            callbacks,
        },
    )
    .await
}

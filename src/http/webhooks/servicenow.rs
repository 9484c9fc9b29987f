//! `POST /v1/webhooks/servicenow`: ServiceNow outbound REST messages.
//!
//! An outbound REST message has no fixed body and no signature of its own: the administrator writes the body
//! template and picks the authentication. This route accepts basic auth and/or a shared-secret header, and can
//! require a base64 HMAC-SHA256 of the body in a header (computed by the sending script); the rule maps fields
//! by JSON pointer.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;

use super::config::ServiceNowSource;
use super::mapping::{Mapped, SERVICENOW};
use super::signature::{constant_time_eq, verify_base64_hmac};
use super::{
    Admission, HookError, NewCallback, RawBody, WebhookAck, Webhooks, configured, header,
    parse_json,
};
use crate::http::AppState;
use crate::http::PROBLEM;
use crate::http::error::{ApiError, Problem};

const SOURCE: &str = "servicenow";

/// Receive a ServiceNow outbound REST message.
///
/// Authenticated by basic auth (`Authorization: Basic …`) or a shared-secret header (as configured), optionally
/// also by a base64 HMAC-SHA256 of the body in a configured header. The rule's JSON pointers say which bodies mean "deprovision" and where the ticket
/// number, target and reason are; other bodies get 202 and no job. The ticket number (`servicenow:RITM0010001`)
/// is the job's ticket and idempotency key.
#[utoipa::path(
    post,
    path = "/v1/webhooks/servicenow",
    tag = "webhooks",
    request_body(content = serde_json::Value, description = "The body the outbound REST message's template produces"),
    responses(
        (status = 202, description = "A job was created (`outcome: created`), or the body does not match the rule (`outcome: ignored`)", body = WebhookAck),
        (status = 200, description = "The ticket already created a job: that job (`outcome: duplicate`)", body = WebhookAck),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = PROBLEM),
        (status = 404, description = "This source is not configured on this service", body = Problem, content_type = PROBLEM),
        (status = 401, description = "Credentials or HMAC missing or wrong; nothing recorded", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Another job is active for this target", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body larger than the limit", body = Problem, content_type = PROBLEM),
        (status = 422, description = "A mapped field is absent or unusable: each is named by its JSON pointer", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn servicenow_webhook(
    State(state): State<AppState>,
    hooks: Option<Extension<Webhooks>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<WebhookAck, HookError> {
    let (_, source) = configured(&hooks, |c| c.servicenow.as_ref(), SOURCE)?;
    authenticate(source, &headers, &body)?;
    let payload = parse_json(&body)?;
    let (request, ticket_key) = match source
        .rule
        .apply(&payload, &SERVICENOW)
        .map_err(ApiError::Validation)?
    {
        Mapped::Ignored(why) => return Ok(super::ignore(&state, SOURCE, None, why).await),
        Mapped::Deprovision {
            request,
            ticket_key,
        } => (*request, ticket_key),
    };
    super::admit(
        &state,
        Admission {
            source: SOURCE,
            request,
            idempotency_key: format!("servicenow:{ticket_key}"),
            delivery_id: None,
            callbacks: source
                .callback_url
                .iter()
                .map(|u| NewCallback {
                    kind: "http",
                    destination: u.to_string(),
                })
                .collect(),
        },
    )
    .await
}

/// Any configured credential that is present must be right, at least one must be present, and the HMAC, when
/// configured, must be there and match.
fn authenticate(
    source: &ServiceNowSource,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), HookError> {
    let refuse = |reason: &str| HookError::Unauthorized {
        from: SOURCE,
        reason: reason.to_string(),
        challenge: source
            .basic
            .as_ref()
            .map(|_| "Basic realm=\"deprovisiond webhooks\""),
    };
    let mut authenticated = false;
    if let Some(basic) = &source.basic {
        if let Some(given) = header(headers, "authorization") {
            let decoded = given
                .strip_prefix("Basic ")
                .or_else(|| given.strip_prefix("basic "))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .ok_or_else(|| refuse("the Authorization header is not basic auth"))?;
            let expected = format!("{}:{}", basic.username, basic.password.0.expose());
            if !constant_time_eq(&decoded, expected.as_bytes()) {
                return Err(refuse("the basic-auth credentials are wrong"));
            }
            authenticated = true;
        }
    }
    if let Some(shared) = &source.header {
        if let Some(given) = header(headers, &shared.name) {
            if !constant_time_eq(given.as_bytes(), shared.secret.bytes()) {
                return Err(refuse(&format!("the {} header is wrong", shared.name)));
            }
            authenticated = true;
        }
    }
    if !authenticated {
        return Err(refuse(
            "no credentials: send basic auth or the configured secret header",
        ));
    }
    if let Some(hmac) = &source.hmac {
        let name: &'static str = "the configured HMAC header";
        verify_base64_hmac(hmac.secret.bytes(), name, header(headers, &hmac.name), body)
            .map_err(|e| refuse(&e.to_string()))?;
    }
    Ok(())
}

//! `POST /v1/webhooks/generic`: any caller that can sign, with our documented body.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::Value;

use super::{
    Admission, HookError, NewCallback, RawBody, WebhookAck, Webhooks, configured, header,
    parse_json,
};
use crate::domain::job::{DeprovisionRequest, FieldError};
use crate::http::AppState;
use crate::http::PROBLEM;
use crate::http::error::{ApiError, Problem};

/// The signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.
pub const SIGNATURE_HEADER: &str = "x-deprovisiond-signature";
/// Optional delivery id: a redelivery with the same id is answered from the first and creates nothing.
pub const DELIVERY_HEADER: &str = "x-deprovisiond-delivery";

/// Ask for a deprovisioning from any system that can sign its request.
///
/// The body is a deprovisioning request (as for `POST /v1/deprovisions`) with a required `ticket`, plus
/// `event` (default `deprovision`; other values get 202 and no job) and an optional `callback_url` (its host must
/// be allowed) that receives the signed job summary when the job finishes. Sign it with
/// `X-Deprovisiond-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`; timestamps more than
/// 5 minutes from the server's clock are refused as replays. The ticket (`system:key`) is the job's
/// idempotency key: one ticket creates at most one job.
#[utoipa::path(
    post,
    path = "/v1/webhooks/generic",
    tag = "webhooks",
    request_body(content = serde_json::Value, description = "A deprovisioning request with `ticket`, plus `event` and `callback_url`",
        example = json!({
            "event": "deprovision",
            "target": {"kind": "individual_enrollment", "registration_id": "sk-sensor-001"},
            "reason": {"code": "stolen", "text": "Reported stolen"},
            "ticket": {"system": "itsm", "key": "CHG-1001"},
            "callback_url": "https://hooks.example.com/deprovisiond"
        })),
    params(
        ("X-Deprovisiond-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">` under the source's secret; several `v1` may be given while rotating secrets"),
        ("X-Deprovisiond-Delivery" = Option<String>, Header, description = "The sender's id of this delivery: a redelivery with the same id is answered from the first"),
    ),
    responses(
        (status = 202, description = "A job was created (`outcome: created`), or the event asks for nothing (`outcome: ignored`)", body = WebhookAck),
        (status = 200, description = "The ticket or this delivery already created a job: that job (`outcome: duplicate`)", body = WebhookAck),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = PROBLEM),
        (status = 404, description = "This source is not configured on this service", body = Problem, content_type = PROBLEM),
        (status = 401, description = "Signature missing, wrong, or its timestamp too old (replay); nothing recorded", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Another job is active for this target", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body larger than the limit", body = Problem, content_type = PROBLEM),
        (status = 422, description = "A field cannot be used: each is named", body = Problem, content_type = PROBLEM),
    )
)]
pub async fn generic_webhook(
    State(state): State<AppState>,
    hooks: Option<Extension<Webhooks>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<WebhookAck, HookError> {
    const SOURCE: &str = "generic";
    // Unsigned is unauthenticated whether or not this source is configured: 401 before 404.
    if header(&headers, SIGNATURE_HEADER).is_none() {
        return Err(HookError::unauthorized(
            SOURCE,
            "no X-Deprovisiond-Signature header",
        ));
    }
    let (hooks, source) = configured(&hooks, |c| c.generic.as_ref(), SOURCE)?;
    super::signature::verify_generic(
        source.secret.bytes(),
        header(&headers, SIGNATURE_HEADER),
        &body,
        hooks.clock.now_unix(),
        source.tolerance_secs,
    )
    .map_err(|e| HookError::unauthorized(SOURCE, e))?;
    let delivery_id = header(&headers, DELIVERY_HEADER).map(str::to_string);
    if let Some(ack) = super::earlier_delivery(&state, SOURCE, delivery_id.as_deref()).await? {
        return Ok(ack);
    }
    let Value::Object(mut map) = parse_json(&body)? else {
        return Err(ApiError::Validation(vec![FieldError::new(
            ".",
            "the body must be a JSON object",
        )])
        .into());
    };
    let event = match map.remove("event") {
        None => "deprovision".to_string(),
        Some(Value::String(e)) => e,
        Some(_) => {
            return Err(
                ApiError::Validation(vec![FieldError::new("event", "must be a string")]).into(),
            );
        }
    };
    if !source.events.contains(&event) {
        let why = format!("event `{event}` is not one of {}", source.events.join(", "));
        return Ok(super::ignore(&state, SOURCE, delivery_id.as_deref(), why).await);
    }
    let callback_url = match map.remove("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => Some(u),
        Some(_) => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "callback_url",
                "must be a URL string",
            )])
            .into());
        }
    };
    let request: DeprovisionRequest = serde_path_to_error::deserialize(Value::Object(map))
        .map_err(|e| {
            ApiError::Validation(vec![FieldError::new(
                &e.path().to_string(),
                e.inner().to_string(),
            )])
        })?;
    let Some(ticket) = &request.ticket else {
        return Err(ApiError::Validation(vec![FieldError::new(
            "ticket",
            "is required on webhooks: `system:key` is the job's idempotency key",
        )])
        .into());
    };
    let idempotency_key = format!("{}:{}", ticket.system, ticket.key);
    if idempotency_key.len() > 255 || !idempotency_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::Validation(vec![FieldError::new(
            "ticket.key",
            "`system:key` must be at most 255 visible ASCII characters (it is the job's idempotency key)",
        )])
        .into());
    }
    let callback = match callback_url {
        Some(u) => Some(checked_callback(
            &hooks.config.callbacks,
            &u,
            "callback_url",
        )?),
        None => source.callback_url.as_ref().map(|u| u.to_string()),
    };
    super::admit(
        &state,
        Admission {
            source: SOURCE,
            request,
            idempotency_key,
            delivery_id,
            callbacks: callback
                .map(|destination| NewCallback {
                    kind: "http",
                    destination,
                })
                .into_iter()
                .collect(),
        },
    )
    .await
}

/// The `callback_url` of a `POST /v1/deprovisions`: checked as a webhook's, 422 naming the field otherwise.
pub fn api_callback(hooks: Option<&super::Webhooks>, raw: &str) -> Result<String, ApiError> {
    let Some(hooks) = hooks else {
        return Err(ApiError::Validation(vec![FieldError::new(
            "callback_url",
            "callbacks are not configured on this service (DEPROVISIOND_WEBHOOKS_CONFIG)",
        )]));
    };
    checked_callback(&hooks.config.callbacks, raw, "callback_url").map_err(|e| match e {
        HookError::Api(e) => e,
        other => ApiError::Validation(vec![FieldError::new("callback_url", other.to_string())]),
    })
}

/// A callback URL a caller gave: an http(s) URL whose host is allowed, with callbacks configured.
pub(super) fn checked_callback(
    settings: &super::config::CallbackSettings,
    raw: &str,
    field: &str,
) -> Result<String, HookError> {
    let refuse = |m: &str| HookError::Api(ApiError::Validation(vec![FieldError::new(field, m)]));
    if settings.secret.is_none() {
        return Err(refuse(
            "callbacks are not configured on this service (callbacks.secret)",
        ));
    }
    let url = url::Url::parse(raw).map_err(|_| refuse("must be an absolute http(s) URL"))?;
    if !settings.allows(&url) {
        return Err(refuse(
            "its host is not in the callback allow-list (callbacks.allowed_hosts)",
        ));
    }
    Ok(url.to_string())
}

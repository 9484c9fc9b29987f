//! Wire-format responses: JSON bodies and the two Azure error shapes.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use super::state::timestamp;

/// The response type every simulator handler produces.
pub type SimResponse = Response<Full<Bytes>>;

/// Which service an error is rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// DPS service API: `{errorCode:int, trackingId, message, timestampUtc}` + `x-ms-error-code`.
    Dps,
    /// IoT Hub: `iothub-errorcode` header + `{Message, ExceptionMessage}`.
    Hub,
}

/// A response with a JSON body.
pub fn json_response(status: u16, body: &Value) -> SimResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// An empty response (204 and the like).
pub fn empty_response(status: u16) -> SimResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

/// Sets a header when the value is valid header text.
pub fn set_header(resp: &mut SimResponse, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// A DPS error: `ProvisioningServiceErrorDetails` body plus `x-ms-error-code: <code>`.
pub fn dps_error(
    status: u16,
    code: u32,
    message: &str,
    tracking_id: &str,
    now: DateTime<Utc>,
) -> SimResponse {
    let body = json!({
        "errorCode": code,
        "trackingId": tracking_id,
        "message": message,
        "timestampUtc": timestamp(now),
    });
    let mut resp = json_response(status, &body);
    set_header(&mut resp, "x-ms-error-code", &code.to_string());
    resp
}

/// An IoT Hub error: `iothub-errorcode: <name>` and a body whose `Message` is legacy text
/// (`ErrorCode:<name>;<text>`) for registry errors, or a JSON string carrying the numeric code for
/// 401s, as hubs answer (azure-specs README §5 lists both shapes).
pub fn hub_error(
    status: u16,
    name: &str,
    code: u32,
    message: &str,
    tracking_id: &str,
    now: DateTime<Utc>,
) -> SimResponse {
    let ts = now.format("%m/%d/%Y %H:%M:%S");
    let body = if status == 401 {
        let inner = json!({
            "errorCode": code,
            "trackingId": tracking_id,
            "message": message,
            "timestampUtc": timestamp(now),
        });
        json!({"Message": inner.to_string(), "ExceptionMessage": ""})
    } else {
        json!({
            "Message": format!("ErrorCode:{name};{message}"),
            "ExceptionMessage": format!("Tracking ID:{tracking_id}-G:0-TimeStamp:{ts}"),
        })
    };
    let mut resp = json_response(status, &body);
    set_header(&mut resp, "iothub-errorcode", name);
    resp
}

/// The error name and code a service uses for a bare HTTP status (faults, throttling).
pub fn generic_code(service: Service, status: u16) -> (&'static str, u32) {
    match (service, status) {
        (_, 429) => ("ThrottlingException", 429_001),
        (_, 500) => ("ServerError", 500_001),
        (_, 503) => ("ServiceUnavailable", 503_001),
        (_, 401) => ("IotHubUnauthorizedAccess", 401_002),
        (_, 404) => ("GenericNotFound", 404_000),
        (_, 408) => ("GenericTimeout", 408_000),
        (_, 400) => ("ArgumentInvalid", 400_004),
        (_, s) => ("GenericServerError", u32::from(s) * 1000),
    }
}

/// An error response for `service` with a bare status (fault injection, throttling, routing).
pub fn service_error(
    service: Service,
    status: u16,
    message: &str,
    tracking_id: &str,
    now: DateTime<Utc>,
) -> SimResponse {
    let (name, code) = generic_code(service, status);
    match service {
        Service::Dps => dps_error(status, code, message, tracking_id, now),
        Service::Hub => hub_error(status, name, code, message, tracking_id, now),
    }
}

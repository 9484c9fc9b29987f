//! One error type for every DPS / IoT Hub call, classified by what the caller should do about it.
//!
//! Both services' error shapes are parsed (azure-specs README §4, §5):
//! - DPS: body `{errorCode:int, trackingId, message, info, timestampUtc}` plus header `x-ms-error-code`;
//! - IoT Hub: header `iothub-errorcode: <Name>`, body `{"Message": "...", "ExceptionMessage": "Tracking ID:…"}`
//!   where `Message` is a JSON string `{"errorCode":404001,…}` or a legacy `"ErrorCode:DeviceNotFound;…"`.

use std::fmt;
use std::time::Duration;

use http::HeaderMap;
use serde_json::Value;

/// What Azure said about a failed call, kept for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    /// HTTP status, absent when no response arrived.
    pub status: Option<u16>,
    /// The numeric Azure error code when known (`404001`, `412001`, DPS `404201`).
    pub error_code: Option<i64>,
    /// The error code name (`DeviceNotFound`) from `iothub-errorcode`, `x-ms-error-code` or a legacy message.
    pub code_name: Option<String>,
    /// Azure's tracking id (body `trackingId`, hub `ExceptionMessage`, or `x-ms-request-id`).
    pub tracking_id: Option<String>,
    /// Human-readable message.
    pub message: String,
}

impl fmt::Display for ErrorDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}")?,
            None => f.write_str("no response")?,
        }
        match (self.error_code, &self.code_name) {
            (Some(c), Some(n)) => write!(f, ", code {c} ({n})")?,
            (Some(c), None) => write!(f, ", code {c}")?,
            (None, Some(n)) => write!(f, ", code {n}")?,
            (None, None) => {}
        }
        if let Some(t) = &self.tracking_id {
            write!(f, ", tracking id {t}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// A failure as the audit trail stores it (JSON, camelCase).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorAudit {
    /// [`AzureError::class`].
    pub class: String,
    /// HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Azure error code (numeric when known, else the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Azure error code name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_name: Option<String>,
    /// Azure tracking id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    /// Message.
    pub message: String,
    /// Retry-After of a 429, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// Every failure of the Azure layer, classified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AzureError {
    /// 404: the resource does not exist.
    #[error("not found ({0})")]
    NotFound(ErrorDetails),
    /// 412: the ETag no longer matches; re-read and retry.
    #[error("precondition failed ({0})")]
    PreconditionFailed(ErrorDetails),
    /// 409: the resource already exists or is in a conflicting state.
    #[error("conflict ({0})")]
    Conflict(ErrorDetails),
    /// 429: slow down; wait `retry_after` when the service gave one.
    #[error("throttled ({details})")]
    Throttled {
        /// The `Retry-After` delay, if the response carried one.
        retry_after: Option<Duration>,
        /// What the service said.
        details: ErrorDetails,
    },
    /// Network failure, timeout, 408 or 5xx: worth retrying with backoff.
    #[error("transient failure ({0})")]
    Transient(ErrorDetails),
    /// 401: the token was refused (bad key, expired, wrong `sr`).
    #[error("unauthorized ({0})")]
    Unauthorized(ErrorDetails),
    /// 403: the policy lacks the right, or a quota is exhausted.
    #[error("forbidden ({0})")]
    Forbidden(ErrorDetails),
    /// 403 `JobQuotaExceeded` (403003): another import/export job is active on the hub (one at a time,
    /// azure-specs README §6). Not a permission failure: try again once that job has ended.
    #[error("another import/export job is active on the hub ({0})")]
    JobQuotaExceeded(ErrorDetails),
    /// 400 and other request errors the service rejected.
    #[error("bad request ({0})")]
    BadRequest(ErrorDetails),
    /// Any other status, or a success response whose body could not be read.
    #[error("unexpected response ({0})")]
    Other(ErrorDetails),
    /// The request was refused before it was sent (too many bulk items, a status reason too long…).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No connection string is configured for this IoT hub.
    #[error("no credentials configured for hub {hub}")]
    NoCredentials {
        /// The hub host name asked for.
        hub: String,
    },
    /// No DPS instance with this name is configured (or none was named and there is no default).
    #[error("no DPS instance {name} is configured")]
    UnknownDps {
        /// The name asked for, or a description when none was given.
        name: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the Azure client: {0}")]
    Setup(String),
}

impl AzureError {
    /// Classifies a non-success response from either service.
    pub fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let details = parse_details(status, headers, body);
        match status {
            400 => Self::BadRequest(details),
            401 => Self::Unauthorized(details),
            403 if is_job_quota(&details) => Self::JobQuotaExceeded(details),
            403 => Self::Forbidden(details),
            404 => Self::NotFound(details),
            408 => Self::Transient(details),
            409 => Self::Conflict(details),
            412 => Self::PreconditionFailed(details),
            429 => Self::Throttled {
                retry_after: parse_retry_after(headers),
                details,
            },
            500..=599 => Self::Transient(details),
            _ => Self::Other(details),
        }
    }

    /// Classifies one device's entry in a bulk registry result (`errorCode` is a name there), as the
    /// same call made for that device alone would have failed.
    pub fn from_bulk_item(
        code_name: &str,
        message: Option<&str>,
        tracking_id: Option<String>,
    ) -> Self {
        let (status, code) = match code_name {
            "DeviceNotFound" => (404, Some(404_001)),
            "PreconditionFailed" => (412, Some(412_001)),
            "DeviceAlreadyExists" => (409, Some(409_001)),
            "ThrottlingException" => (429, Some(429_001)),
            "IotHubQuotaExceeded" => (403, Some(403_002)),
            "DeviceDefinedMultipleTimes" => (400, Some(400_011)),
            _ => (400, None),
        };
        let details = ErrorDetails {
            status: Some(status),
            error_code: code,
            code_name: Some(code_name.to_string()),
            tracking_id,
            message: message.unwrap_or(code_name).to_string(),
        };
        match status {
            404 => Self::NotFound(details),
            412 => Self::PreconditionFailed(details),
            409 => Self::Conflict(details),
            429 => Self::Throttled {
                retry_after: None,
                details,
            },
            403 => Self::Forbidden(details),
            _ => Self::BadRequest(details),
        }
    }

    /// Classifies a failure to get a response at all (connect, timeout, dropped connection).
    pub fn from_transport(err: &reqwest::Error) -> Self {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        let details = ErrorDetails {
            message,
            ..ErrorDetails::default()
        };
        if err.is_builder() {
            Self::InvalidRequest(details.message)
        } else if is_certificate_error(err) {
            // An untrusted or invalid server certificate does not fix itself: fail now, not after retries.
            Self::Other(details)
        } else {
            Self::Transient(details)
        }
    }

    /// The details of a service or transport error (None for client-side errors).
    pub fn details(&self) -> Option<&ErrorDetails> {
        match self {
            Self::NotFound(d)
            | Self::PreconditionFailed(d)
            | Self::Conflict(d)
            | Self::Transient(d)
            | Self::Unauthorized(d)
            | Self::Forbidden(d)
            | Self::JobQuotaExceeded(d)
            | Self::BadRequest(d)
            | Self::Other(d) => Some(d),
            Self::Throttled { details, .. } => Some(details),
            Self::InvalidRequest(_)
            | Self::NoCredentials { .. }
            | Self::UnknownDps { .. }
            | Self::Setup(_) => None,
        }
    }

    /// Worth retrying as is, after a backoff (throttled, transient, or the hub's one import/export job
    /// slot taken: that job ends by itself).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Transient(_) | Self::JobQuotaExceeded(_)
        )
    }

    /// True when the hub refused a new import/export job because another one is active.
    pub fn is_job_quota_exceeded(&self) -> bool {
        matches!(self, Self::JobQuotaExceeded(_))
    }

    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }

    /// True for a 412 (re-read, then retry).
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, Self::PreconditionFailed(_))
    }

    /// The `Retry-After` delay of a throttled response.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, if a response arrived.
    pub fn status(&self) -> Option<u16> {
        self.details().and_then(|d| d.status)
    }

    /// The Azure error code: the numeric code when known, else its name.
    pub fn code(&self) -> Option<String> {
        let d = self.details()?;
        d.error_code
            .map(|c| c.to_string())
            .or_else(|| d.code_name.clone())
    }

    /// Azure's tracking id.
    pub fn tracking_id(&self) -> Option<&str> {
        self.details().and_then(|d| d.tracking_id.as_deref())
    }

    /// The service's message, or the client-side reason.
    pub fn message(&self) -> String {
        match self.details() {
            Some(d) => d.message.clone(),
            None => self.to_string(),
        }
    }

    /// What the audit trail records about this failure.
    pub fn audit(&self) -> ErrorAudit {
        ErrorAudit {
            class: self.class().to_string(),
            status: self.status(),
            code: self.code(),
            code_name: self.details().and_then(|d| d.code_name.clone()),
            tracking_id: self.tracking_id().map(str::to_string),
            message: self.message(),
            retry_after_secs: self.retry_after().map(|d| d.as_secs()),
        }
    }

    /// A short stable name of the class, for logs and the audit trail.
    pub fn class(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::PreconditionFailed(_) => "precondition_failed",
            Self::Conflict(_) => "conflict",
            Self::Throttled { .. } => "throttled",
            Self::Transient(_) => "transient",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::JobQuotaExceeded(_) => "job_quota_exceeded",
            Self::BadRequest(_) => "bad_request",
            Self::Other(_) => "other",
            Self::InvalidRequest(_) => "invalid_request",
            Self::NoCredentials { .. } => "no_credentials",
            Self::UnknownDps { .. } => "unknown_dps",
            Self::Setup(_) => "setup",
        }
    }
}

/// Whether a rustls certificate error is somewhere in the chain (io::Error hides its inner error from
/// `source()`, so it is opened explicitly).
fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        // io::Error wraps errors (sometimes an io::Error in an io::Error) that its own `source()` skips.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// The hub's one-active-job refusal: name `JobQuotaExceeded` (C# SDK `ErrorCode.cs`) or its number 403003.
/// `IotHubQuotaExceeded` (403002, the daily message quota) stays a plain 403.
fn is_job_quota(details: &ErrorDetails) -> bool {
    details.code_name.as_deref() == Some("JobQuotaExceeded") || details.error_code == Some(403_003)
}

/// `Retry-After` as delta seconds (integer or decimal). HTTP-dates are not used by these services and are ignored.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let secs = text.parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Longest message kept from a body that is not one of the known shapes.
const MAX_RAW_MESSAGE: usize = 512;

fn parse_details(status: u16, headers: &HeaderMap, body: &[u8]) -> ErrorDetails {
    let mut d = ErrorDetails {
        status: Some(status),
        ..ErrorDetails::default()
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => read_error_object(&obj, &mut d),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            d.message = truncate(text, MAX_RAW_MESSAGE);
        }
    }
    let header_code = header_text(headers, "iothub-errorcode")
        .or_else(|| header_text(headers, "x-ms-error-code"));
    if let Some(code) = header_code {
        match code.parse::<i64>() {
            Ok(n) if d.error_code.is_none() => d.error_code = Some(n),
            Ok(_) => {}
            Err(_) => d.code_name = Some(code),
        }
    }
    if d.tracking_id.is_none() {
        d.tracking_id = header_text(headers, "x-ms-request-id");
    }
    if d.message.is_empty() {
        d.message = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("")
            .to_string();
    }
    d
}

/// Reads a DPS-shaped (`errorCode`, `trackingId`, `message`) or hub-shaped (`Message`, `ExceptionMessage`) object.
fn read_error_object(obj: &serde_json::Map<String, Value>, d: &mut ErrorDetails) {
    let get = |names: &[&str]| names.iter().find_map(|n| obj.get(*n));
    match get(&["errorCode", "ErrorCode"]) {
        Some(Value::Number(n)) => d.error_code = n.as_i64(),
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => d.error_code = Some(n),
            Err(_) => d.code_name = Some(s.clone()),
        },
        _ => {}
    }
    if let Some(Value::String(t)) = get(&["trackingId", "TrackingId"]) {
        d.tracking_id = Some(t.clone());
    }
    if let Some(Value::String(exception)) = obj.get("ExceptionMessage")
        && d.tracking_id.is_none()
    {
        d.tracking_id = tracking_id_from_exception_message(exception);
    }
    let message = match get(&["Message", "message"]) {
        Some(Value::String(m)) => m.trim().to_string(),
        _ => String::new(),
    };
    if message.starts_with('{') {
        // Hub: `Message` holds a JSON document of the DPS-like shape.
        if let Ok(Value::Object(inner)) = serde_json::from_str::<Value>(&message) {
            read_error_object(&inner, d);
            return;
        }
    }
    if let Some(rest) = message.strip_prefix("ErrorCode:") {
        // Legacy hub message: `ErrorCode:DeviceNotFound;Device not found`.
        let (name, text) = rest.split_once(';').unwrap_or((rest, ""));
        d.code_name = Some(name.trim().to_string());
        d.message = text.trim().to_string();
        return;
    }
    d.message = truncate(&message, MAX_RAW_MESSAGE);
}

/// `Tracking ID:<id>-TimeStamp:<when>` → `<id>`.
fn tracking_id_from_exception_message(text: &str) -> Option<String> {
    let start = text.find("Tracking ID:")? + "Tracking ID:".len();
    let rest = &text[start..];
    let end = rest.find("-TimeStamp:").unwrap_or(rest.len());
    let id = rest[..end].trim();
    (!id.is_empty()).then(|| id.to_string())
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn dps_not_found_body_and_header() {
        let body = br#"{"errorCode":404201,"trackingId":"c0ffee-01","message":"Enrollment not found","info":{},"timestampUtc":"2026-11-28T05:00:00.1234567Z"}"#;
        let e = AzureError::from_response(404, &headers(&[("x-ms-error-code", "404201")]), body);
        assert!(matches!(e, AzureError::NotFound(_)), "{e:?}");
        assert!(e.is_not_found());
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.code().as_deref(), Some("404201"));
        assert_eq!(e.tracking_id(), Some("c0ffee-01"));
        assert_eq!(e.message(), "Enrollment not found");
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "not found (HTTP 404, code 404201, tracking id c0ffee-01: Enrollment not found)"
        );
    }

    #[test]
    fn dps_precondition_failed_and_conflict() {
        let body = br#"{"errorCode":412000,"trackingId":"t1","message":"Precondition failed"}"#;
        let e = AzureError::from_response(412, &HeaderMap::new(), body);
        assert!(e.is_precondition_failed());
        assert_eq!(e.code().as_deref(), Some("412000"));
        let body = br#"{"errorCode":409201,"trackingId":"t2","message":"Enrollment exists"}"#;
        let e = AzureError::from_response(409, &HeaderMap::new(), body);
        assert!(matches!(e, AzureError::Conflict(_)));
    }

    #[test]
    fn dps_unauthorized_takes_tracking_id_from_body() {
        let body = br#"{"errorCode":401002,"trackingId":"req-9","message":"Unauthorized","timestampUtc":"2026-11-28T05:00:00Z"}"#;
        let e = AzureError::from_response(401, &headers(&[("x-ms-request-id", "other")]), body);
        assert!(matches!(e, AzureError::Unauthorized(_)));
        assert_eq!(e.code().as_deref(), Some("401002"));
        assert_eq!(e.tracking_id(), Some("req-9"));
    }

    #[test]
    fn hub_json_message_shape() {
        let body = br#"{"Message":"{\"errorCode\":404001,\"trackingId\":\"abc123-G:3-TimeStamp:11/28/2026 05:00:00\",\"message\":\"Device dev-1 not found\",\"timestampUtc\":\"2026-11-28T05:00:00Z\"}","ExceptionMessage":""}"#;
        let e = AzureError::from_response(
            404,
            &headers(&[("iothub-errorcode", "DeviceNotFound")]),
            body,
        );
        let d = e.details().unwrap();
        assert!(e.is_not_found());
        assert_eq!(d.error_code, Some(404001));
        assert_eq!(d.code_name.as_deref(), Some("DeviceNotFound"));
        assert_eq!(e.code().as_deref(), Some("404001"));
        assert_eq!(
            e.tracking_id(),
            Some("abc123-G:3-TimeStamp:11/28/2026 05:00:00")
        );
        assert_eq!(e.message(), "Device dev-1 not found");
    }

    #[test]
    fn hub_legacy_message_shape() {
        let body = br#"{"Message":"ErrorCode:PreconditionFailed;Precondition failed: Device version mismatch","ExceptionMessage":"Tracking ID:9f8e7d6c5b4a-G:10-TimeStamp:11/28/2026 05:00:00"}"#;
        let e = AzureError::from_response(412, &HeaderMap::new(), body);
        assert!(e.is_precondition_failed());
        assert_eq!(e.code().as_deref(), Some("PreconditionFailed"));
        assert_eq!(e.tracking_id(), Some("9f8e7d6c5b4a-G:10"));
        assert_eq!(e.message(), "Precondition failed: Device version mismatch");
    }

    #[test]
    fn hub_throttled_with_and_without_retry_after() {
        let body = br#"{"Message":"{\"errorCode\":429001,\"trackingId\":\"t\",\"message\":\"ThrottlingException\"}","ExceptionMessage":""}"#;
        let e = AzureError::from_response(
            429,
            &headers(&[
                ("iothub-errorcode", "ThrottlingException"),
                ("retry-after", "7"),
            ]),
            body,
        );
        assert!(matches!(e, AzureError::Throttled { .. }));
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.code().as_deref(), Some("429001"));
        let e = AzureError::from_response(429, &HeaderMap::new(), body);
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn audit_record_keeps_code_tracking_id_and_retry_after() {
        let body = br#"{"Message":"ErrorCode:ThrottlingException;slow down","ExceptionMessage":"Tracking ID:tr-1-TimeStamp:x"}"#;
        let e = AzureError::from_response(429, &headers(&[("retry-after", "4")]), body);
        assert_eq!(
            serde_json::to_value(e.audit()).unwrap(),
            serde_json::json!({"class": "throttled", "status": 429, "code": "ThrottlingException",
                "codeName": "ThrottlingException", "trackingId": "tr-1", "message": "slow down", "retryAfterSecs": 4})
        );
        let e = AzureError::NoCredentials { hub: "h".into() };
        assert_eq!(
            serde_json::to_value(e.audit()).unwrap(),
            serde_json::json!({"class": "no_credentials", "message": "no credentials configured for hub h"})
        );
    }

    #[test]
    fn transient_statuses() {
        for status in [408u16, 500, 502, 503, 504] {
            let e = AzureError::from_response(status, &HeaderMap::new(), b"");
            assert!(matches!(e, AzureError::Transient(_)), "{status}: {e:?}");
            assert!(e.is_retryable());
            assert!(
                !e.message().is_empty(),
                "reason phrase used when the body is empty"
            );
        }
    }

    #[test]
    fn permanent_statuses() {
        let e = AzureError::from_response(
            400,
            &HeaderMap::new(),
            br#"{"errorCode":400004,"message":"bad"}"#,
        );
        assert!(matches!(e, AzureError::BadRequest(_)) && !e.is_retryable());
        let e = AzureError::from_response(
            403,
            &headers(&[("iothub-errorcode", "IotHubQuotaExceeded")]),
            b"",
        );
        assert!(matches!(e, AzureError::Forbidden(_)) && !e.is_retryable());
        assert_eq!(e.code().as_deref(), Some("IotHubQuotaExceeded"));
        let e = AzureError::from_response(415, &HeaderMap::new(), b"unsupported media type");
        assert!(matches!(e, AzureError::Other(_)));
        assert_eq!(e.message(), "unsupported media type");
    }

    #[test]
    fn job_quota_exceeded_is_its_own_retryable_class() {
        let body = br#"{"Message":"{\"errorCode\":403003,\"trackingId\":\"t-9\",\"message\":\"Job quota has been exceeded\"}","ExceptionMessage":""}"#;
        let e = AzureError::from_response(
            403,
            &headers(&[("iothub-errorcode", "JobQuotaExceeded")]),
            body,
        );
        assert!(e.is_job_quota_exceeded(), "{e:?}");
        assert!(e.is_retryable());
        assert!(!matches!(e, AzureError::Forbidden(_)));
        assert_eq!(e.code().as_deref(), Some("403003"));
        assert_eq!(e.class(), "job_quota_exceeded");
        assert_eq!(e.tracking_id(), Some("t-9"));
        // The number alone (legacy body, no header) is enough.
        let e = AzureError::from_response(
            403,
            &HeaderMap::new(),
            br#"{"Message":"{\"errorCode\":403003}"}"#,
        );
        assert!(e.is_job_quota_exceeded());
        // A permission refusal stays a permanent 403.
        let e = AzureError::from_response(
            403,
            &headers(&[("iothub-errorcode", "IotHubUnauthorizedAccess")]),
            b"",
        );
        assert!(matches!(e, AzureError::Forbidden(_)) && !e.is_retryable());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "0")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "1.5")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(&headers(&[(
                "retry-after",
                "Fri, 31 Dec 1999 23:59:59 GMT"
            )])),
            None
        );
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "-3")])), None);
    }

    #[test]
    fn client_side_errors_have_no_details() {
        let e = AzureError::NoCredentials {
            hub: "h.azure-devices.net".into(),
        };
        assert_eq!(
            e.to_string(),
            "no credentials configured for hub h.azure-devices.net"
        );
        assert_eq!(e.status(), None);
        assert!(!e.is_retryable());
    }
}

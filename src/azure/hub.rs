//! IoT Hub identity registry client (azure-specs README §5).

use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::auth::SasTokenProvider;
use super::connection_string::ConnectionString;
use super::error::{AzureError, ErrorDetails};
use super::models::{
    BulkRegistryOperationResult, Device, DeviceRegistryOperationError, DeviceStatus,
    ExportImportDevice, QuerySpecification, RegistryStatistics, Twin,
};
use super::transport::{Body, ClientOptions, Endpoint, paged, paging_headers};

/// Most items IoT Hub accepts in one bulk `POST /devices`.
pub const MAX_BULK_DEVICES: usize = 100;
/// Longest `statusReason` the hub stores.
pub const MAX_STATUS_REASON_CHARS: usize = 128;

/// The `If-Match` condition of a hub write; always sent quoted, as every SDK does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `"*"`: unconditional.
    Any,
    /// `"<etag>"`: only if the identity still has this etag.
    ETag(String),
}

impl IfMatch {
    /// The device's etag when it has one, else `Any`.
    pub fn from_etag(etag: Option<&str>) -> Self {
        match etag {
            Some(e) => Self::ETag(e.to_string()),
            None => Self::Any,
        }
    }

    /// The header value: the etag in double quotes (left alone if already quoted).
    pub fn header_value(&self) -> String {
        match self {
            Self::Any => "\"*\"".to_string(),
            Self::ETag(e) if e.len() >= 2 && e.starts_with('"') && e.ends_with('"') => e.clone(),
            Self::ETag(e) => format!("\"{e}\""),
        }
    }

    fn headers(&self) -> Result<HeaderMap, AzureError> {
        let v = HeaderValue::from_str(&self.header_value())
            .map_err(|_| AzureError::InvalidRequest("etag is not a valid header value".into()))?;
        let mut h = HeaderMap::new();
        h.insert(http::header::IF_MATCH, v);
        Ok(h)
    }
}

/// `device` as read by a GET with only `status` and `statusReason` changed: the body a full-replace PUT needs
/// (a partial body would reset keys and scopes). `reason` longer than 128 characters is refused.
pub fn set_status(
    device: &Device,
    status: DeviceStatus,
    reason: Option<&str>,
) -> Result<Device, AzureError> {
    if let Some(r) = reason
        && r.chars().count() > MAX_STATUS_REASON_CHARS
    {
        return Err(AzureError::InvalidRequest(format!(
            "statusReason holds at most {MAX_STATUS_REASON_CHARS} characters, got {}",
            r.chars().count()
        )));
    }
    let mut updated = device.clone();
    updated.status = Some(status);
    updated.status_reason = reason.map(str::to_string);
    Ok(updated)
}

impl DeviceRegistryOperationError {
    /// Classifies a bulk item's error by its code name, as a whole-call error would be.
    pub fn to_error(&self) -> AzureError {
        let code = self.error_code.as_str();
        let details = ErrorDetails {
            status: None,
            error_code: None,
            code_name: Some(code.to_string()),
            tracking_id: None,
            message: format!(
                "{}: {}",
                self.device_id,
                self.error_status.as_deref().unwrap_or(code)
            ),
        };
        let has = |s: &str| code.contains(s);
        if has("NotFound") {
            AzureError::NotFound(details)
        } else if has("PreconditionFailed") || code == "EtagDoesNotMatch" {
            AzureError::PreconditionFailed(details)
        } else if has("AlreadyExists") || has("Conflict") {
            AzureError::Conflict(details)
        } else if has("Throttl") || has("TooManyRequests") {
            AzureError::Throttled {
                retry_after: None,
                details,
            }
        } else if has("ServerError")
            || has("ServiceUnavailable")
            || has("Timeout")
            || has("TimedOut")
            || has("ServerBusy")
        {
            AzureError::Transient(details)
        } else if has("Unauthorized") {
            AzureError::Unauthorized(details)
        } else if has("Forbidden") || has("QuotaExceeded") {
            AzureError::Forbidden(details)
        } else {
            AzureError::BadRequest(details)
        }
    }
}

/// Client of one IoT hub's registry API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubClient {
    ep: Arc<Endpoint>,
}

impl HubClient {
    /// Default `api-version`.
    pub const DEFAULT_API_VERSION: &'static str = "2021-04-12";

    /// A client for the hub named by the connection string's HostName.
    pub fn new(cs: &ConnectionString, options: ClientOptions) -> Result<Self, AzureError> {
        Ok(Self {
            ep: Arc::new(Endpoint::new(cs, options, Self::DEFAULT_API_VERSION)?),
        })
    }

    /// The hub's host name (lower case).
    pub fn host_name(&self) -> &str {
        self.ep.host_name()
    }

    /// The `api-version` sent.
    pub fn api_version(&self) -> &str {
        self.ep.api_version()
    }

    /// Where requests go (`https://{host}` unless overridden).
    pub fn base_url(&self) -> &url::Url {
        self.ep.base_url()
    }

    /// The SAS token provider.
    pub fn token_provider(&self) -> &SasTokenProvider {
        self.ep.auth()
    }

    /// The endpoint, for the operations kept in sibling modules (`hub_jobs`).
    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// `GET /devices/{deviceId}`.
    pub async fn get_device(&self, device_id: &str) -> Result<Device, AzureError> {
        self.ep
            .send(
                Method::GET,
                &["devices", device_id],
                HeaderMap::new(),
                Body::None,
            )
            .await?
            .json()
    }

    /// `PUT /devices/{deviceId}` without `If-Match`: creates the identity.
    pub async fn create_device(&self, device: &Device) -> Result<Device, AzureError> {
        self.ep
            .send(
                Method::PUT,
                &["devices", &device.device_id],
                HeaderMap::new(),
                Body::json(device)?,
            )
            .await?
            .json()
    }

    /// `PUT /devices/{deviceId}` with a quoted `If-Match`: replaces the whole identity with `device`.
    pub async fn replace_device(
        &self,
        device: &Device,
        if_match: IfMatch,
    ) -> Result<Device, AzureError> {
        self.ep
            .send(
                Method::PUT,
                &["devices", &device.device_id],
                if_match.headers()?,
                Body::json(device)?,
            )
            .await?
            .json()
    }

    /// GET the device, change only status and reason ([`set_status`]), PUT it back with `If-Match: "<etag>"`.
    /// A 412 means it changed in between: call again.
    pub async fn set_device_status(
        &self,
        device_id: &str,
        status: DeviceStatus,
        reason: Option<&str>,
    ) -> Result<Device, AzureError> {
        let current = self.get_device(device_id).await?;
        let updated = set_status(&current, status, reason)?;
        self.replace_device(&updated, IfMatch::from_etag(current.etag.as_deref()))
            .await
    }

    /// `DELETE /devices/{deviceId}` with a quoted `If-Match` (`"*"` or the etag).
    pub async fn delete_device(
        &self,
        device_id: &str,
        if_match: IfMatch,
    ) -> Result<(), AzureError> {
        self.ep
            .send(
                Method::DELETE,
                &["devices", device_id],
                if_match.headers()?,
                Body::None,
            )
            .await?;
        Ok(())
    }

    /// Bulk `POST /devices` of at most 100 items. The hub answers 200 or 400 with a
    /// [`BulkRegistryOperationResult`]; both come back as `Ok` with per-item errors in `errors`.
    pub async fn bulk(
        &self,
        items: &[ExportImportDevice],
    ) -> Result<BulkRegistryOperationResult, AzureError> {
        if items.is_empty() {
            return Err(AzureError::InvalidRequest(
                "a bulk registry operation needs at least one device".into(),
            ));
        }
        if items.len() > MAX_BULK_DEVICES {
            return Err(AzureError::InvalidRequest(format!(
                "a bulk registry operation takes at most {MAX_BULK_DEVICES} devices, got {}",
                items.len()
            )));
        }
        let r = self
            .ep
            .send_raw(
                Method::POST,
                &["devices"],
                HeaderMap::new(),
                Body::json(items)?,
            )
            .await?;
        if r.status.is_success() {
            return r.json();
        }
        if r.status == StatusCode::BAD_REQUEST
            && let Ok(result) = serde_json::from_slice::<BulkRegistryOperationResult>(&r.body)
            && (!result.errors.is_empty() || !result.warnings.is_empty())
        {
            return Ok(result);
        }
        Err(AzureError::from_response(
            r.status.as_u16(),
            &r.headers,
            &r.body,
        ))
    }

    /// `GET /statistics/devices` (`Statistics_GetDeviceStatistics`): how many device identities the
    /// hub holds, enabled and disabled; what the planner weighs before exporting the whole registry.
    /// Azure does not document whether it spends a registry operation (the simulator counts it
    /// against no quota); a caller pacing conservatively counts it as one.
    pub async fn device_statistics(&self) -> Result<RegistryStatistics, AzureError> {
        self.ep
            .send(
                Method::GET,
                &["statistics", "devices"],
                HeaderMap::new(),
                Body::None,
            )
            .await?
            .json()
    }

    /// One page of the twin query `POST /devices/query`.
    pub async fn query_twins_page(
        &self,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<(Vec<Twin>, Option<String>), AzureError> {
        let r = self
            .ep
            .send(
                Method::POST,
                &["devices", "query"],
                paging_headers(page_size, continuation)?,
                Body::json(&QuerySpecification::new(query))?,
            )
            .await?;
        Ok((r.json()?, r.continuation()))
    }

    /// Every twin the query returns, page after page.
    pub fn query_twins(
        &self,
        query: &str,
        page_size: Option<u32>,
    ) -> BoxStream<'static, Result<Twin, AzureError>> {
        let client = self.clone();
        let query = query.to_string();
        paged(move |token| {
            let client = client.clone();
            let query = query.clone();
            async move {
                client
                    .query_twins_page(&query, page_size, token.as_deref())
                    .await
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_is_always_quoted() {
        assert_eq!(IfMatch::Any.header_value(), "\"*\"");
        assert_eq!(
            IfMatch::ETag("AAAAAAAAAAE=".into()).header_value(),
            "\"AAAAAAAAAAE=\""
        );
        assert_eq!(
            IfMatch::ETag("\"AAAAAAAAAAE=\"".into()).header_value(),
            "\"AAAAAAAAAAE=\""
        );
        assert_eq!(IfMatch::from_etag(None), IfMatch::Any);
    }

    #[test]
    fn set_status_changes_only_status_and_reason() {
        let wire = serde_json::json!({"deviceId": "d", "etag": "E", "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "cA==", "secondaryKey": "cw=="}},
            "capabilities": {"iotEdge": true}, "deviceScope": "s", "parentScopes": ["p"], "modelId": "dtmi:x;1"});
        let d: Device = serde_json::from_value(wire.clone()).unwrap();
        let updated =
            set_status(&d, DeviceStatus::Disabled, Some("deprovisioned by job 42")).unwrap();
        let mut expected = wire;
        expected["status"] = "disabled".into();
        expected["statusReason"] = "deprovisioned by job 42".into();
        assert_eq!(serde_json::to_value(&updated).unwrap(), expected);
        let long = "x".repeat(129);
        assert!(matches!(
            set_status(&d, DeviceStatus::Disabled, Some(&long)),
            Err(AzureError::InvalidRequest(_))
        ));
        assert!(set_status(&d, DeviceStatus::Disabled, Some(&"é".repeat(128))).is_ok());
    }

    #[test]
    fn bulk_item_errors_are_classified() {
        let e = |code: &str| {
            DeviceRegistryOperationError {
                device_id: "d".into(),
                error_code: code.into(),
                ..Default::default()
            }
            .to_error()
        };
        assert!(e("DeviceNotFound").is_not_found());
        assert!(e("PreconditionFailed").is_precondition_failed());
        assert!(matches!(e("DeviceAlreadyExists"), AzureError::Conflict(_)));
        assert!(matches!(
            e("ThrottlingException"),
            AzureError::Throttled { .. }
        ));
        assert!(matches!(e("ServiceUnavailable"), AzureError::Transient(_)));
        assert!(matches!(
            e("DeviceDefinedMultipleTimes"),
            AzureError::BadRequest(_)
        ));
        assert_eq!(
            e("DeviceNotFound").code().as_deref(),
            Some("DeviceNotFound")
        );
    }
}

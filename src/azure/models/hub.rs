//! IoT Hub registry API wire types (`iothub-service-2021-04-12.json`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DeviceCapabilities, Extra};

/// `status` of a hub device identity (lower-case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    /// The device may connect.
    Enabled,
    /// The device cannot reach any device-facing endpoint.
    Disabled,
}

/// `authentication` of a device.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationMechanism {
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Symmetric keys (`sas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKey>,
    /// Certificate thumbprints (`selfSigned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

impl std::fmt::Debug for AuthenticationMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets; only say whether they are there.
        f.debug_struct("AuthenticationMechanism")
            .field("kind", &self.kind)
            .field("symmetric_key", &self.symmetric_key.as_ref().map(|_| "***"))
            .field("x509_thumbprint", &self.x509_thumbprint)
            .finish_non_exhaustive()
    }
}

/// Device symmetric keys. The keys are secrets: `Debug` hides them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// Primary key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    /// Secondary key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

impl std::fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |k: &Option<String>| k.as_ref().map(|_| "***");
        f.debug_struct("SymmetricKey")
            .field("primary_key", &hide(&self.primary_key))
            .field("secondary_key", &hide(&self.secondary_key))
            .finish_non_exhaustive()
    }
}

/// Device certificate thumbprints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// Primary thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_thumbprint: Option<String>,
    /// Secondary thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_thumbprint: Option<String>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A device identity (`GET/PUT /devices/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Device id (case-sensitive, ≤ 128 chars).
    pub device_id: String,
    /// Changes when the identity is deleted and re-created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// ETag (send it back quoted in `If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Why the status was set (≤ 128 chars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_updated_time: Option<String>,
    /// `Connected` or `Disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// When the connection state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state_updated_time: Option<String>,
    /// Last activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Pending cloud-to-device messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i64>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    /// Capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Edge device scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Parent scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `importMode` of a bulk registry item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImportMode {
    /// Create; fails if it exists.
    Create,
    /// Create or replace.
    Update,
    /// Replace when `eTag` matches.
    #[serde(rename = "updateIfMatchETag")]
    UpdateIfMatchETag,
    /// Delete.
    Delete,
    /// Delete when `eTag` matches.
    #[serde(rename = "deleteIfMatchETag")]
    DeleteIfMatchETag,
    /// Update the twin only.
    UpdateTwin,
    /// Update the twin when `twinETag` matches.
    #[serde(rename = "updateTwinIfMatchETag")]
    UpdateTwinIfMatchETag,
}

/// One item of a bulk `POST /devices` (note `id` and `eTag`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImportDevice {
    /// Device id.
    pub id: String,
    /// Module id (device items leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Device ETag for the `…IfMatchETag` modes.
    #[serde(rename = "eTag", default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// What to do.
    pub import_mode: ImportMode,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Why the status was set (≤ 128 chars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Credentials (an update replaces them: copy them from a prior GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    /// Twin ETag.
    #[serde(rename = "twinETag", default, skip_serializing_if = "Option::is_none")]
    pub twin_e_tag: Option<String>,
    /// Twin tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
    /// Twin properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
    /// Capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Edge device scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Parent scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ExportImportDevice {
    /// A bulk item that replaces `device` (as read by a prior GET) with a new status and reason, keeping its
    /// credentials, capabilities and scopes. With `if_match` the mode is `updateIfMatchETag` and the device's
    /// etag is sent.
    pub fn update_status(
        device: &Device,
        status: DeviceStatus,
        reason: Option<&str>,
        if_match: bool,
    ) -> Self {
        Self {
            id: device.device_id.clone(),
            module_id: None,
            e_tag: if if_match { device.etag.clone() } else { None },
            import_mode: if if_match {
                ImportMode::UpdateIfMatchETag
            } else {
                ImportMode::Update
            },
            status: Some(status),
            status_reason: reason.map(str::to_string),
            authentication: device.authentication.clone(),
            twin_e_tag: None,
            tags: None,
            properties: None,
            capabilities: device.capabilities.clone(),
            device_scope: device.device_scope.clone(),
            parent_scopes: device.parent_scopes.clone(),
            extra: Extra::new(),
        }
    }

    /// A bulk item deleting `device_id`; with an etag the mode is `deleteIfMatchETag`.
    pub fn delete(device_id: impl Into<String>, etag: Option<String>) -> Self {
        Self {
            id: device_id.into(),
            module_id: None,
            import_mode: if etag.is_some() {
                ImportMode::DeleteIfMatchETag
            } else {
                ImportMode::Delete
            },
            e_tag: etag,
            status: None,
            status_reason: None,
            authentication: None,
            twin_e_tag: None,
            tags: None,
            properties: None,
            capabilities: None,
            device_scope: None,
            parent_scopes: None,
            extra: Extra::new(),
        }
    }
}

/// Result of a bulk `POST /devices` (sent with both 200 and 400).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkRegistryOperationResult {
    /// True when every item succeeded.
    #[serde(default)]
    pub is_successful: bool,
    /// One entry per failed item.
    #[serde(default)]
    pub errors: Vec<DeviceRegistryOperationError>,
    /// Warnings.
    #[serde(default)]
    pub warnings: Vec<DeviceRegistryOperationWarning>,
}

/// One failed item of a bulk registry operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationError {
    /// Device id.
    #[serde(default)]
    pub device_id: String,
    /// Error code name (`DeviceNotFound`, `PreconditionFailed`, …).
    #[serde(default)]
    pub error_code: String,
    /// Error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<String>,
    /// Module id, for module items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// The operation that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// A warning of a bulk registry operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationWarning {
    /// Device id.
    #[serde(default)]
    pub device_id: String,
    /// Warning code.
    #[serde(default)]
    pub warning_code: String,
    /// Warning text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_status: Option<String>,
}

/// `GET /statistics/devices` (`RegistryStatistics`): device counts of the hub's identity registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatistics {
    /// Every device identity registered in the hub.
    #[serde(default)]
    pub total_device_count: i64,
    /// Those currently enabled.
    #[serde(default)]
    pub enabled_device_count: i64,
    /// Those currently disabled.
    #[serde(default)]
    pub disabled_device_count: i64,
}

/// A device twin, as returned by `POST /devices/query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Device id.
    #[serde(default)]
    pub device_id: String,
    /// Module id, for module twins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Twin ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// ETag of the device identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_etag: Option<String>,
    /// Twin version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Why the status was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_type: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
    /// Desired and reported properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
    /// Capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device_wire() -> Value {
        json!({
            "deviceId": "dev-1", "generationId": "638000000000000001", "etag": "AAAAAAAAAAE=",
            "connectionState": "Disconnected", "status": "enabled", "statusReason": null,
            "connectionStateUpdatedTime": "0001-01-01T00:00:00Z", "statusUpdatedTime": "0001-01-01T00:00:00Z",
            "lastActivityTime": "0001-01-01T00:00:00Z", "cloudToDeviceMessageCount": 0,
            "authentication": {"symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"},
                "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}, "type": "sas"},
            "capabilities": {"iotEdge": false}, "deviceScope": "ms-azure-iot-edge://edge-1-637", "parentScopes": ["p"],
            "modelId": ""
        })
    }

    #[test]
    fn device_round_trips_everything_but_nulls() {
        let wire = device_wire();
        let d: Device = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(d.status, Some(DeviceStatus::Enabled));
        assert_eq!(d.extra.get("modelId"), Some(&json!("")));
        let mut expected = wire;
        // null and absent mean the same to the service; nulls are not echoed.
        expected.as_object_mut().unwrap().remove("statusReason");
        expected["authentication"]["x509Thumbprint"] = json!({});
        assert_eq!(serde_json::to_value(&d).unwrap(), expected);
        assert!(
            !format!("{d:?}").contains("cHJpbWFyeQ=="),
            "keys hidden from Debug"
        );
    }

    #[test]
    fn registry_statistics_wire_names() {
        let wire = json!({"totalDeviceCount": 1_000_000_i64, "enabledDeviceCount": 999_990, "disabledDeviceCount": 10});
        let s: RegistryStatistics = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            (
                s.total_device_count,
                s.enabled_device_count,
                s.disabled_device_count
            ),
            (1_000_000, 999_990, 10)
        );
        assert_eq!(serde_json::to_value(&s).unwrap(), wire);
        assert_eq!(
            serde_json::from_value::<RegistryStatistics>(json!({})).unwrap(),
            RegistryStatistics::default(),
            "every field is optional in the swagger"
        );
    }

    #[test]
    fn export_import_wire_names() {
        let d: Device = serde_json::from_value(device_wire()).unwrap();
        let item =
            ExportImportDevice::update_status(&d, DeviceStatus::Disabled, Some("job 7"), true);
        let v = serde_json::to_value(&item).unwrap();
        assert_eq!(v["id"], "dev-1");
        assert_eq!(v["eTag"], "AAAAAAAAAAE=");
        assert_eq!(v["importMode"], "updateIfMatchETag");
        assert_eq!(v["status"], "disabled");
        assert_eq!(v["statusReason"], "job 7");
        assert_eq!(
            v["authentication"]["symmetricKey"]["primaryKey"],
            "cHJpbWFyeQ=="
        );
        assert_eq!(v["deviceScope"], "ms-azure-iot-edge://edge-1-637");
        let del = serde_json::to_value(ExportImportDevice::delete("dev-2", None)).unwrap();
        assert_eq!(del, json!({"id": "dev-2", "importMode": "delete"}));
        let del =
            serde_json::to_value(ExportImportDevice::delete("dev-2", Some("E".into()))).unwrap();
        assert_eq!(
            del,
            json!({"id": "dev-2", "importMode": "deleteIfMatchETag", "eTag": "E"})
        );
    }

    #[test]
    fn bulk_result_with_errors() {
        let r: BulkRegistryOperationResult = serde_json::from_value(json!({
            "isSuccessful": false,
            "errors": [{"deviceId": "a", "errorCode": "DeviceNotFound", "errorStatus": "Device a not found", "operation": "delete"}],
            "warnings": []
        }))
        .unwrap();
        assert_eq!(r.errors[0].error_code, "DeviceNotFound");
        assert_eq!(r.errors[0].operation.as_deref(), Some("delete"));
    }

    #[test]
    fn twin_keeps_unknown_fields() {
        let wire = json!({"deviceId": "d", "etag": "AAAA", "deviceEtag": "MTIz", "version": 4, "status": "disabled",
            "authenticationType": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "AB"},
            "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}}, "tags": {"site": "x"}});
        let t: Twin = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(t.status, Some(DeviceStatus::Disabled));
        assert_eq!(serde_json::to_value(&t).unwrap(), wire);
    }
}

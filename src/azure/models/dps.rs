//! DPS service API wire types (`dps-service-2021-10-01.json`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DeviceCapabilities, Extra};

/// `provisioningStatus` of an enrollment or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    /// Devices may provision.
    Enabled,
    /// Devices are refused.
    Disabled,
}

/// `attestation.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttestationType {
    /// No attestation.
    None,
    /// TPM endorsement key.
    Tpm,
    /// X.509 certificates.
    X509,
    /// Symmetric keys.
    SymmetricKey,
}

/// How a device proves its identity to DPS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationMechanism {
    /// Which of the members below applies.
    #[serde(rename = "type")]
    pub kind: AttestationType,
    /// TPM attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmAttestation>,
    /// X.509 attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Attestation>,
    /// Symmetric-key attestation (keys are only returned by `…/attestationmechanism`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// TPM attestation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmAttestation {
    /// Endorsement key (base64).
    #[serde(default)]
    pub endorsement_key: String,
    /// Storage root key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_root_key: Option<String>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Symmetric-key attestation. The keys are secrets: `Debug` hides them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
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

impl std::fmt::Debug for SymmetricKeyAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |k: &Option<String>| k.as_ref().map(|_| "***");
        f.debug_struct("SymmetricKeyAttestation")
            .field("primary_key", &hide(&self.primary_key))
            .field("secondary_key", &hide(&self.secondary_key))
            .finish_non_exhaustive()
    }
}

/// X.509 attestation: individual enrollments use `clientCertificates`, groups `signingCertificates` or
/// `caReferences`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Attestation {
    /// Leaf certificates of an individual enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// Signing (root or intermediate) certificates of a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
    /// Names of DPS-registered CA certificates of a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_references: Option<X509CaReferences>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Primary and secondary certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificates {
    /// Primary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<X509CertificateWithInfo>,
    /// Secondary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509CertificateWithInfo>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A certificate as sent (`certificate`, PEM or base64 DER) or as returned (`info`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateWithInfo {
    /// The certificate text, when sending one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// What DPS parsed from the certificate (responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<X509CertificateInfo>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Certificate details returned by DPS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateInfo {
    /// Subject distinguished name.
    #[serde(default)]
    pub subject_name: String,
    /// SHA-1 thumbprint (hex).
    #[serde(default)]
    pub sha1_thumbprint: String,
    /// SHA-256 thumbprint (hex).
    #[serde(default)]
    pub sha256_thumbprint: String,
    /// Issuer distinguished name.
    #[serde(default)]
    pub issuer_name: String,
    /// Start of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_utc: Option<String>,
    /// End of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_utc: Option<String>,
    /// Serial number (hex).
    #[serde(default)]
    pub serial_number: String,
    /// X.509 version.
    #[serde(default)]
    pub version: i32,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Names of CA certificates registered in DPS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CaReferences {
    /// Primary CA name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Secondary CA name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An individual enrollment (`PUT/GET /enrollments/{registrationId}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// Registration id (case-insensitive, ≤ 128 chars; X.509: the leaf CN).
    pub registration_id: String,
    /// Desired hub device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Attestation.
    pub attestation: AttestationMechanism,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// ETag of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Read-only registration state of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
    /// Hub to assign (deprecated in favour of `iotHubs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// Hubs the device may be assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    /// `hashed`, `geoLatency`, `static` or `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<String>,
    /// Device capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Initial twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Value>,
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Last update time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Fields not modelled here (reprovisionPolicy, customAllocationDefinition, …).
    #[serde(flatten)]
    pub extra: Extra,
}

impl IndividualEnrollment {
    /// A new enrollment with only the required fields and a status.
    pub fn new(
        registration_id: impl Into<String>,
        attestation: AttestationMechanism,
        status: ProvisioningStatus,
    ) -> Self {
        Self {
            registration_id: registration_id.into(),
            device_id: None,
            attestation,
            provisioning_status: Some(status),
            etag: None,
            registration_state: None,
            iot_hub_host_name: None,
            iot_hubs: None,
            allocation_policy: None,
            capabilities: None,
            initial_twin: None,
            created_date_time_utc: None,
            last_updated_date_time_utc: None,
            extra: Extra::new(),
        }
    }

    /// Effective status (`enabled` when absent, the service default).
    pub fn status(&self) -> ProvisioningStatus {
        self.provisioning_status
            .unwrap_or(ProvisioningStatus::Enabled)
    }
}

/// An enrollment group (`PUT/GET /enrollmentGroups/{groupId}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// Group id.
    pub enrollment_group_id: String,
    /// Attestation (`signingCertificates`, `caReferences` or symmetric keys).
    pub attestation: AttestationMechanism,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// ETag of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Hub to assign (deprecated in favour of `iotHubs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// Hubs devices may be assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    /// `hashed`, `geoLatency`, `static` or `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<String>,
    /// Device capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Initial twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Value>,
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Last update time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Fields not modelled here (reprovisionPolicy, customAllocationDefinition, …).
    #[serde(flatten)]
    pub extra: Extra,
}

impl EnrollmentGroup {
    /// Effective status (`enabled` when absent, the service default).
    pub fn status(&self) -> ProvisioningStatus {
        self.provisioning_status
            .unwrap_or(ProvisioningStatus::Enabled)
    }
}

/// `status` of a registration record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    /// Not assigned.
    Unassigned,
    /// Assignment in progress.
    Assigning,
    /// Assigned to a hub.
    Assigned,
    /// Assignment failed.
    Failed,
    /// Enrollment disabled.
    Disabled,
    /// A value this client does not know.
    #[serde(other)]
    Unknown,
}

/// A device's registration record (read-only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    /// Registration id.
    #[serde(default)]
    pub registration_id: String,
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Host name of the hub the device was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// Device id in that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Registration status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RegistrationStatus>,
    /// Substatus of an assigned device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// Error code of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Error message of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Last update time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// ETag of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Custom allocation payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `mode` of a bulk enrollment operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BulkEnrollmentMode {
    /// Create new records.
    Create,
    /// Create or replace.
    Update,
    /// Replace when the item's etag matches.
    #[serde(rename = "updateIfMatchETag")]
    UpdateIfMatchETag,
    /// Delete.
    Delete,
}

/// Body of `POST /enrollments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperation {
    /// What to do with each enrollment.
    pub mode: BulkEnrollmentMode,
    /// At most 10 enrollments.
    pub enrollments: Vec<IndividualEnrollment>,
}

/// Body of `POST /enrollmentGroups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperation {
    /// What to do with each group.
    pub mode: BulkEnrollmentMode,
    /// At most 10 groups.
    pub enrollment_groups: Vec<EnrollmentGroup>,
}

/// Result of `POST /enrollments`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// One entry per failed item.
    #[serde(default)]
    pub errors: Vec<BulkEnrollmentOperationError>,
}

/// One failed item of `POST /enrollments`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationError {
    /// The enrollment's registration id.
    #[serde(default)]
    pub registration_id: String,
    /// Numeric error code.
    #[serde(default)]
    pub error_code: i64,
    /// Error text.
    #[serde(default)]
    pub error_status: String,
}

/// Result of `POST /enrollmentGroups`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// One entry per failed item.
    #[serde(default)]
    pub errors: Vec<BulkEnrollmentGroupOperationError>,
}

/// One failed item of `POST /enrollmentGroups`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationError {
    /// The group id.
    #[serde(default)]
    pub enrollment_group_id: String,
    /// Numeric error code.
    #[serde(default)]
    pub error_code: i64,
    /// Error text.
    #[serde(default)]
    pub error_status: String,
}

/// DPS error body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningServiceErrorDetails {
    /// Numeric error code (e.g. 404201).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Tracking id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    /// Message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Extra information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<std::collections::BTreeMap<String, String>>,
    /// When the error happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_utc: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn individual_enrollment_round_trips_unknown_fields() {
        let wire = json!({
            "registrationId": "dev-1",
            "deviceId": "dev-1",
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"info": {
                "subjectName": "CN=dev-1", "sha1Thumbprint": "AB", "sha256Thumbprint": "CD",
                "issuerName": "CN=int", "notBeforeUtc": "2026-01-01T00:00:00Z", "notAfterUtc": "2027-01-01T00:00:00Z",
                "serialNumber": "01", "version": 3}}}}},
            "provisioningStatus": "enabled",
            "etag": "\"0700-0000\"",
            "iotHubs": ["hub1.azure-devices.net"],
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
            "customAllocationDefinition": {"webhookUrl": "https://x", "apiVersion": "2019-03-31"},
            "optionalDeviceInformation": {"version": 1},
            "registrationState": {"registrationId": "dev-1", "assignedHub": "hub1.azure-devices.net",
                "deviceId": "dev-1", "status": "assigned", "substatus": "initialAssignment", "etag": "e1",
                "newField": 5},
            "capabilities": {"iotEdge": false},
            "createdDateTimeUtc": "2026-01-01T00:00:00Z",
            "futureField": {"a": [1, 2]}
        });
        let e: IndividualEnrollment = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(e.status(), ProvisioningStatus::Enabled);
        assert_eq!(e.attestation.kind, AttestationType::X509);
        let info = e
            .attestation
            .x509
            .as_ref()
            .unwrap()
            .client_certificates
            .as_ref()
            .unwrap()
            .primary
            .as_ref()
            .unwrap();
        assert_eq!(info.info.as_ref().unwrap().issuer_name, "CN=int");
        assert_eq!(
            e.registration_state.as_ref().unwrap().status,
            Some(RegistrationStatus::Assigned)
        );
        assert_eq!(serde_json::to_value(&e).unwrap(), wire);
    }

    #[test]
    fn changing_status_changes_only_that_field() {
        let wire = json!({
            "registrationId": "d", "attestation": {"type": "symmetricKey",
                "symmetricKey": {"primaryKey": "cA==", "secondaryKey": "cw=="}},
            "provisioningStatus": "enabled", "etag": "x", "allocationPolicy": "hashed"
        });
        let mut e: IndividualEnrollment = serde_json::from_value(wire.clone()).unwrap();
        e.provisioning_status = Some(ProvisioningStatus::Disabled);
        let mut expected = wire;
        expected["provisioningStatus"] = json!("disabled");
        assert_eq!(serde_json::to_value(&e).unwrap(), expected);
        assert!(!format!("{e:?}").contains("cA=="), "keys hidden from Debug");
    }

    #[test]
    fn group_with_ca_references_and_absent_fields_stay_absent() {
        let wire = json!({"enrollmentGroupId": "g", "attestation": {"type": "x509",
            "x509": {"caReferences": {"primary": "my-root"}}}});
        let g: EnrollmentGroup = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(g.status(), ProvisioningStatus::Enabled);
        assert_eq!(serde_json::to_value(&g).unwrap(), wire);
    }

    #[test]
    fn registration_state_from_the_spec_example() {
        let Some(dir) = std::env::var_os("AZURE_SPECS_DIR") else {
            eprintln!("skipped: AZURE_SPECS_DIR is not set (point it at ../shared/azure-specs)");
            return;
        };
        let path = std::path::Path::new(&dir)
            .join("examples/dps-2021-10-01/DeviceRegistrationState_Query_MaximumSet_Gen.json");
        let example: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let body = example["responses"]["200"]["body"].clone();
        let states: Vec<DeviceRegistrationState> = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(states[0].status, Some(RegistrationStatus::Unassigned));
        assert_eq!(states[0].error_code, Some(2));
        assert_eq!(serde_json::to_value(&states).unwrap(), body);
    }

    #[test]
    fn unknown_registration_status_does_not_break_a_page() {
        let s: DeviceRegistrationState =
            serde_json::from_value(json!({"registrationId": "r", "status": "somethingNew"}))
                .unwrap();
        assert_eq!(s.status, Some(RegistrationStatus::Unknown));
    }

    #[test]
    fn bulk_operation_wire_names() {
        let op = BulkEnrollmentOperation {
            mode: BulkEnrollmentMode::UpdateIfMatchETag,
            enrollments: vec![],
        };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"mode": "updateIfMatchETag", "enrollments": []})
        );
        let op = BulkEnrollmentGroupOperation {
            mode: BulkEnrollmentMode::Delete,
            enrollment_groups: vec![],
        };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"mode": "delete", "enrollmentGroups": []})
        );
        let r: BulkEnrollmentOperationResult =
            serde_json::from_value(json!({"isSuccessful": false,
            "errors": [{"registrationId": "a", "errorCode": 409201, "errorStatus": "exists"}]}))
            .unwrap();
        assert_eq!(r.errors[0].error_code, 409201);
    }
}

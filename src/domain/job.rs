//! A deprovisioning request and the job it becomes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ids::{DpsName, GroupId, RegistrationId};
pub use super::registry_path::RegistryPath;

/// Maximum size of the free-text reason, in bytes.
pub const MAX_REASON_TEXT_BYTES: usize = 1024;

/// An individual enrollment target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndividualTarget {
    /// The enrollment's registration id.
    #[schema(value_type = String, example = "tpm-sensor-001")]
    pub registration_id: RegistrationId,
}

/// A whole enrollment group target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupTarget {
    /// The enrollment group id.
    #[schema(value_type = String, example = "fleet-x509")]
    pub group_id: GroupId,
}

/// One device of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDeviceTarget {
    /// The group the device enrolled through.
    #[schema(value_type = String, example = "fleet-x509")]
    pub group_id: GroupId,
    /// The device's registration id (for X.509: its leaf certificate's subject CN).
    #[schema(value_type = String, example = "x509-dev-0007")]
    pub registration_id: RegistrationId,
    /// The device's leaf certificate (PEM); without it a disabled symmetric-key enrollment blocks the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
}

/// What a job deprovisions.
// Deserialised by hand (see the `Deserialize` impl): serde's internally tagged enums buffer the object and
// lose the path of a wrong field inside it, so `target.registration_id: 123` would be reported on `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// One individual enrollment (TPM, symmetric key, X.509 leaf with no chain).
    IndividualEnrollment(IndividualTarget),
    /// A whole enrollment group and every device provisioned through it.
    EnrollmentGroup(GroupTarget),
    /// One device of an enrollment group, blocked by a disabled individual enrollment.
    GroupDevice(GroupDeviceTarget),
}

/// The `kind` values of [`Target`], in the words of the API.
pub const TARGET_KINDS: [&str; 3] = ["individual_enrollment", "enrollment_group", "group_device"];

/// Prefix of an error message that carries the path of the field inside the target, for the HTTP layer to
/// join to the outer path (`target` + `registration_id`).
pub const NESTED_FIELD_PREFIX: &str = "field `";

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let kind = match map.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{NESTED_FIELD_PREFIX}kind`: must be one of {} (got {other})",
                    TARGET_KINDS.join(", ")
                )));
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        fn variant<T: serde::de::DeserializeOwned, E: Error>(
            map: serde_json::Map<String, serde_json::Value>,
        ) -> Result<T, E> {
            serde_path_to_error::deserialize(serde_json::Value::Object(map)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    E::custom(inner)
                } else {
                    E::custom(format!("{NESTED_FIELD_PREFIX}{path}`: {inner}"))
                }
            })
        }
        match kind.as_str() {
            "individual_enrollment" => variant(map).map(Target::IndividualEnrollment),
            "enrollment_group" => variant(map).map(Target::EnrollmentGroup),
            "group_device" => variant(map).map(Target::GroupDevice),
            other => Err(D::Error::custom(format!(
                "{NESTED_FIELD_PREFIX}kind`: unknown target kind `{other}`; expected one of {}",
                TARGET_KINDS.join(", ")
            ))),
        }
    }
}

impl Target {
    /// The target's kind as stored and filtered on.
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::IndividualEnrollment(_) => TargetKind::IndividualEnrollment,
            Target::EnrollmentGroup(_) => TargetKind::EnrollmentGroup,
            Target::GroupDevice(_) => TargetKind::GroupDevice,
        }
    }

    /// The id a caller filters on: the registration id, or the group id for a whole group.
    pub fn id(&self) -> &str {
        match self {
            Target::IndividualEnrollment(IndividualTarget { registration_id }) => {
                registration_id.as_str()
            }
            Target::EnrollmentGroup(GroupTarget { group_id }) => group_id.as_str(),
            Target::GroupDevice(GroupDeviceTarget {
                registration_id, ..
            }) => registration_id.as_str(),
        }
    }

    /// A key unique per target within one DPS instance, used to keep one active job per target.
    pub fn key(&self) -> String {
        match self {
            Target::IndividualEnrollment(IndividualTarget { registration_id }) => {
                format!("individual:{registration_id}")
            }
            Target::EnrollmentGroup(GroupTarget { group_id }) => format!("group:{group_id}"),
            // A group device is blocked by an individual enrollment with its registration id,
            // so it shares the key space of individual enrollments.
            Target::GroupDevice(GroupDeviceTarget {
                registration_id, ..
            }) => format!("individual:{registration_id}"),
        }
    }
}

/// The kind of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// An individual enrollment.
    IndividualEnrollment,
    /// A whole enrollment group.
    EnrollmentGroup,
    /// One device of a group.
    GroupDevice,
}

impl TargetKind {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::IndividualEnrollment => "individual_enrollment",
            TargetKind::EnrollmentGroup => "enrollment_group",
            TargetKind::GroupDevice => "group_device",
        }
    }
}

/// How access to DPS is revoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeAction {
    /// Disable the enrollment (temporary, reversible).
    #[default]
    Disable,
    /// Delete the enrollment (permanent; individual enrollments only).
    Delete,
}

/// What happens to the device identity in its IoT hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistryAction {
    /// Disable the identity (keeps identity and twin; reversible).
    #[default]
    Disable,
    /// Delete the identity (permanent).
    Delete,
}

impl RegistryAction {
    /// Identity-registry operations one device costs: disable = GET + PUT (verified from the PUT's
    /// answer, which returns the stored identity); delete = one DELETE (404 counts as done).
    pub fn ops_per_device(self) -> u64 {
        match self {
            RegistryAction::Disable => 2,
            RegistryAction::Delete => 1,
        }
    }
}

/// Which hubs the registry step checks for each device's identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sweep {
    /// The hub the device's registration record names, whatever the record's status; when it names
    /// none (or no identity is there), the hubs the enrollment or group lists, else every configured hub.
    #[default]
    Assigned,
    /// Also every configured hub for every device: re-provisioning to another hub can leave an old,
    /// still-enabled identity behind. Costs one registry operation per device and extra hub.
    AllHubs,
}

/// Why a device is deprovisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The device was lost.
    Lost,
    /// The device was stolen.
    Stolen,
    /// The device was sold.
    Sold,
    /// The device or a certificate of its chain is compromised.
    Compromised,
    /// The device moves to another hub or tenant.
    Moved,
    /// The device is retired.
    Decommissioned,
    /// Another reason, explained in the text.
    Other,
}

impl ReasonCode {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Lost => "lost",
            ReasonCode::Stolen => "stolen",
            ReasonCode::Sold => "sold",
            ReasonCode::Compromised => "compromised",
            ReasonCode::Moved => "moved",
            ReasonCode::Decommissioned => "decommissioned",
            ReasonCode::Other => "other",
        }
    }
}

/// Reason code plus free text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// The reason code.
    pub code: ReasonCode,
    /// Free text (at most 1 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "Reported stolen by the customer")]
    pub text: Option<String>,
}

/// The ticket a request came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    /// Ticketing system, e.g. `jira` or `servicenow`.
    #[schema(example = "jira")]
    pub system: String,
    /// The ticket key, e.g. `OPS-1234`.
    #[schema(example = "OPS-1234")]
    pub key: String,
    /// Link to the ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "https://jira.example.com/browse/OPS-1234")]
    pub url: Option<String>,
}

/// The body of `POST /v1/deprovisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprovisionRequest {
    /// Name of the configured DPS instance; optional when exactly one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "demo-dps")]
    pub dps: Option<DpsName>,
    /// What to deprovision.
    pub target: Target,
    /// How DPS access is revoked (default `disable`).
    #[serde(default)]
    pub revoke: RevokeAction,
    /// What happens to the hub identity (default `disable`).
    #[serde(default)]
    pub registry: RegistryAction,
    /// Which hubs are checked for each device's identity (default `assigned`).
    #[serde(default)]
    pub sweep: Sweep,
    /// Enrollment groups only: delete the group's registration records after the devices are handled.
    #[serde(default)]
    pub delete_registrations: bool,
    /// Enrollment groups only: delete the group itself, last.
    #[serde(default)]
    pub delete_group: bool,
    /// Delete the group even when an enabled group higher in the same certificate chain would re-admit its devices;
    /// for a group device, block a `certificate_pem` not issued under the group's signing certificate.
    #[serde(default)]
    pub force: bool,
    /// Why.
    pub reason: Reason,
    /// The ticket this request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Ticket>,
    /// On whose behalf the caller asks (free text). The authenticated caller is recorded as the job's
    /// requester whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "alice@example.com")]
    pub requested_by: Option<String>,
    /// Plan only: change nothing and return what would be done.
    #[serde(default)]
    pub dry_run: bool,
    /// How the job's devices share the workers with other jobs' (default `normal`): a `high` job
    /// gets twice a `normal` job's share of each claim, a `low` job half.
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
    /// Receives a signed JSON summary when the job ends (retried with backoff, each attempt in the job's
    /// timeline). An absolute http(s) URL whose host is on the callback allow-list of
    /// `DEPROVISIOND_WEBHOOKS_CONFIG`; refused with 422 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "https://hooks.example.com/deprovisiond")]
    pub callback_url: Option<String>,
    /// Enrollment groups only: how device identities are written in each hub (default `auto`: per hub, the
    /// faster of device by device at the registry quota and import/export jobs through blob storage, as the
    /// preview estimates them).
    #[serde(default, skip_serializing_if = "RegistryPath::is_auto")]
    pub registry_path: RegistryPath,
    /// Set by the service on an undo job (`POST /v1/deprovisions/{id}/undo`): the job it undoes. A request
    /// that sets it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub undo: Option<UndoOf>,
}

/// What an undo job undoes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoOf {
    /// The deprovision job whose hub changes are reverted.
    pub job_id: String,
    /// Whether the DPS revocation is reverted too (the enrollment or group enabled again).
    #[serde(default)]
    pub restore_dps: bool,
}

/// A request's priority among concurrent jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Half a normal job's share.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Twice a normal job's share (a stolen device while a group runs).
    High,
}

impl Priority {
    /// Whether this is the default (left out of the stored request, so older requests hash the same).
    pub fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }

    /// The stored number: low -1, normal 0, high 1.
    pub fn rank(self) -> i64 {
        match self {
            Priority::Low => -1,
            Priority::Normal => 0,
            Priority::High => 1,
        }
    }

    /// Claim weight of a stored rank: low 1, normal 2, high 4.
    pub fn weight_of_rank(rank: i64) -> u32 {
        match rank {
            r if r < 0 => 1,
            0 => 2,
            _ => 4,
        }
    }
}

/// One problem with a request field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `reason.text`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl DeprovisionRequest {
    /// Checks the rules serde cannot express; returns every problem at once.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(text) = &self.reason.text {
            if text.len() > MAX_REASON_TEXT_BYTES {
                errors.push(FieldError::new(
                    "reason.text",
                    format!(
                        "is {} bytes long; at most {MAX_REASON_TEXT_BYTES} are allowed",
                        text.len()
                    ),
                ));
            }
        }
        if self.reason.code == ReasonCode::Other
            && self
                .reason
                .text
                .as_deref()
                .is_none_or(|t| t.trim().is_empty())
        {
            errors.push(FieldError::new(
                "reason.text",
                "is required when reason.code is `other`",
            ));
        }
        if let Some(t) = &self.ticket {
            check_text(&mut errors, "ticket.system", &t.system, 64);
            check_text(&mut errors, "ticket.key", &t.key, 128);
            if let Some(u) = &t.url {
                match url::Url::parse(u) {
                    Ok(parsed)
                        if matches!(parsed.scheme(), "http" | "https") && u.len() <= 2048 => {}
                    _ => errors.push(FieldError::new(
                        "ticket.url",
                        "must be an http(s) URL of at most 2048 characters",
                    )),
                }
            }
        }
        if let Some(r) = &self.requested_by {
            check_text(&mut errors, "requested_by", r, 256);
        }
        let is_group = matches!(self.target, Target::EnrollmentGroup(_));
        match &self.target {
            Target::IndividualEnrollment(_) => {}
            Target::EnrollmentGroup(_) => {
                if self.revoke == RevokeAction::Delete {
                    errors.push(FieldError::new(
                        "revoke",
                        "an enrollment group is always revoked by disabling it (that blocklists its signing \
                         certificate); ask for `delete_group: true` to delete it after its devices are handled",
                    ));
                }
            }
            Target::GroupDevice(GroupDeviceTarget {
                certificate_pem, ..
            }) => {
                if self.revoke == RevokeAction::Delete {
                    errors.push(FieldError::new(
                        "revoke",
                        "one device of a group is revoked by a disabled individual enrollment, which must never be \
                         deleted; use `disable`",
                    ));
                }
                if let Some(pem) = certificate_pem {
                    if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.len() > 16 * 1024 {
                        errors.push(FieldError::new(
                            "target.certificate_pem",
                            "must be one PEM certificate (-----BEGIN CERTIFICATE-----), at most 16 KiB",
                        ));
                    }
                }
            }
        }
        if !is_group {
            if self.delete_group {
                errors.push(FieldError::new(
                    "delete_group",
                    "applies only to an enrollment_group target",
                ));
            }
            if self.delete_registrations {
                errors.push(FieldError::new(
                    "delete_registrations",
                    "applies only to an enrollment_group target",
                ));
            }
            if !self.registry_path.is_auto() {
                errors.push(FieldError::new(
                    "registry_path",
                    "applies only to an enrollment_group target (one device is always written directly)",
                ));
            }
        }
        if self.undo.is_some() {
            errors.push(FieldError::new(
                "undo",
                "is set by the service on undo jobs; ask POST /v1/deprovisions/{id}/undo",
            ));
        }
        let has_leaf = matches!(
            &self.target,
            Target::GroupDevice(GroupDeviceTarget {
                certificate_pem: Some(_),
                ..
            })
        );
        if self.force && !self.delete_group && !has_leaf {
            errors.push(FieldError::new(
                "force",
                "only means something together with `delete_group: true`, or with a group device's \
                 `certificate_pem` (to block a leaf not issued under the group's signing certificate)",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn check_text(errors: &mut Vec<FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if value.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("is longer than {max} characters"),
        ));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
}

/// Which jobs need a second person: an admin other than the requester approves them before they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Every whole-group job.
    pub group_wide: bool,
    /// Every job that deletes something (enrollment, identity, group or registration records).
    pub any_delete: bool,
    /// Jobs touching more than this many devices.
    pub more_than_devices: Option<u64>,
    /// How long a held job waits before it expires.
    pub ttl: std::time::Duration,
}

impl Default for ApprovalPolicy {
    /// No rule: nothing is held.
    fn default() -> Self {
        Self {
            group_wide: false,
            any_delete: false,
            more_than_devices: None,
            ttl: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

impl ApprovalPolicy {
    /// Whether the device-count rule needs the count of `request`'s devices (only a whole group's is unknown).
    pub fn needs_device_count(&self, request: &DeprovisionRequest) -> bool {
        self.more_than_devices.is_some() && matches!(request.target, Target::EnrollmentGroup(_))
    }

    /// The rule that holds `request`, if any; `devices` is its device count when known (a whole group's
    /// count comes from DPS; unknown counts as over the limit, so an unreadable group is held).
    pub fn rule_for(&self, request: &DeprovisionRequest, devices: Option<u64>) -> Option<String> {
        if self.group_wide && matches!(request.target, Target::EnrollmentGroup(_)) {
            return Some("group-wide job".into());
        }
        if self.any_delete
            && (request.revoke == RevokeAction::Delete
                || request.registry == RegistryAction::Delete
                || request.delete_group
                || request.delete_registrations)
        {
            return Some("any delete".into());
        }
        let limit = self.more_than_devices?;
        let count = match request.target {
            Target::EnrollmentGroup(_) => devices,
            _ => Some(1),
        };
        match count {
            Some(n) if n <= limit => None,
            Some(n) => Some(format!("more than {limit} devices ({n})")),
            None => Some(format!(
                "more than {limit} devices (the group's device count could not be read)"
            )),
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, not started yet (or re-queued by a retry).
    Queued,
    /// A worker is carrying it out.
    Running,
    /// Every step succeeded (or was skipped with a reason).
    Succeeded,
    /// A step failed permanently; see the events. Can be retried.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
    /// Held by the approval policy until an admin other than the requester approves or rejects it.
    AwaitingApproval,
    /// Rejected by an admin before it started; nothing was done.
    Rejected,
    /// Not approved in time; nothing was done.
    Expired,
}

impl JobStatus {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::AwaitingApproval => "awaiting_approval",
            JobStatus::Rejected => "rejected",
            JobStatus::Expired => "expired",
        }
    }

    /// Parses the database name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "awaiting_approval" => JobStatus::AwaitingApproval,
            "rejected" => JobStatus::Rejected,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }

    /// Whether the engine carries the job out (queued or running). A job awaiting approval is not active
    /// but holds its target all the same (its `active_key` is set), so no second job can start on it.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<DeprovisionRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn defaults_and_target_kinds() {
        let r = parse(
            json!({"target": {"kind": "enrollment_group", "group_id": "Fleet"}, "reason": {"code": "compromised"}}),
        )
        .unwrap();
        assert_eq!(r.revoke, RevokeAction::Disable);
        assert_eq!(r.registry, RegistryAction::Disable);
        assert_eq!(r.sweep, Sweep::Assigned);
        assert_eq!(r.target.key(), "group:fleet");
        assert!(r.validate().is_ok());
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        assert!(parse(json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost"}, "x": 1})).is_err());
        assert!(parse(json!({"target": {"kind": "individual_enrollment", "registration_id": "a", "x": 1}, "reason": {"code": "lost"}})).is_err());
        assert!(parse(json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost", "x": 1}})).is_err());
    }

    #[test]
    fn validation_collects_every_problem() {
        let r = parse(json!({
            "target": {"kind": "individual_enrollment", "registration_id": "a"},
            "reason": {"code": "other", "text": "x".repeat(1025)},
            "delete_group": true,
            "ticket": {"system": "jira", "key": "", "url": "ftp://x"}
        }))
        .unwrap();
        let errs = r.validate().unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["reason.text", "ticket.key", "ticket.url", "delete_group"]
        );
    }

    #[test]
    fn sweep_values() {
        let with = |sweep: serde_json::Value| {
            parse(
                json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost"},
                         "sweep": sweep}),
            )
        };
        assert_eq!(with(json!("all_hubs")).unwrap().sweep, Sweep::AllHubs);
        assert_eq!(with(json!("assigned")).unwrap().sweep, Sweep::Assigned);
        assert!(with(json!("everywhere")).is_err());
    }

    #[test]
    fn approval_rules() {
        let group = parse(json!({"target": {"kind": "enrollment_group", "group_id": "g"}, "reason": {"code": "lost"}})).unwrap();
        let delete = parse(json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "registry": "delete", "reason": {"code": "lost"}})).unwrap();
        let plain = parse(json!({"target": {"kind": "individual_enrollment", "registration_id": "a"}, "reason": {"code": "lost"}})).unwrap();
        let none = ApprovalPolicy::default();
        assert_eq!(none.rule_for(&group, None), None);
        let p = ApprovalPolicy {
            group_wide: true,
            any_delete: true,
            ..ApprovalPolicy::default()
        };
        assert_eq!(p.rule_for(&group, None).as_deref(), Some("group-wide job"));
        assert_eq!(p.rule_for(&delete, None).as_deref(), Some("any delete"));
        assert_eq!(p.rule_for(&plain, None), None);
        let n = ApprovalPolicy {
            more_than_devices: Some(10),
            ..ApprovalPolicy::default()
        };
        assert!(n.needs_device_count(&group) && !n.needs_device_count(&plain));
        assert_eq!(n.rule_for(&group, Some(10)), None);
        assert!(n.rule_for(&group, Some(11)).unwrap().contains("(11)"));
        assert!(
            n.rule_for(&group, None).is_some(),
            "an unknown count is held"
        );
        assert_eq!(n.rule_for(&plain, None), None);
    }

    #[test]
    fn group_cannot_be_revoked_by_delete() {
        let r = parse(json!({"target": {"kind": "enrollment_group", "group_id": "g"}, "revoke": "delete", "reason": {"code": "lost"}}))
            .unwrap();
        assert_eq!(r.validate().unwrap_err()[0].field, "revoke");
    }
}

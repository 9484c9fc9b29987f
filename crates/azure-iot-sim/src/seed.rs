//! Fleet seeding: enrollments of every attestation type and groups with N devices, provisioned
//! through the device API's own [`register`](super::device_api::register) function (in-process, no
//! HTTP), so registration states and hub identities are exactly what devices would have produced.
//!
//! The seeded fleet keeps every device credential (keys, TPM endorsement keys, leaf certificates with
//! their private keys) so a test can later try to provision a device again and see it refused.
//!
//! A fleet is JSON (a file, or `POST /_sim/seed` on any listener):
//! ```json
//! {"dps": "demo-dps",
//!  "groups": [{"groupId": "line-a", "attestation": "x509", "devices": 100},
//!             {"groupId": "sensors", "attestation": "symmetricKey", "devices": 50, "iotHubs": ["hub-1.azure-devices.net"]}],
//!  "individuals": [{"registrationId": "gw-1", "attestation": "tpm"},
//!                  {"registrationId": "line-a-dev-0007", "attestation": "x509", "certificateOf": "line-a-dev-0007",
//!                   "provisioningStatus": "disabled", "provision": false}]}
//! ```
//! Groups are seeded before individual enrollments, so an individual entry can block a group device.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::ExistingPutPolicy;
use super::device_api::{self, DeviceCredential, DeviceError, RegisterRequest, RegistrationStatus};
use super::errors::{self, SimResponse};
use super::server::{SimHandle, SimRequest};
use super::state::{DpsInstance, EnrollmentKind, Precondition, SimState};
use super::x509::{CertError, TestCa, TestLeaf, der_to_pem};
use crate::sas;

/// How long seeding tokens stay valid, seconds.
const TOKEN_TTL: i64 = 3600;

/// Why a fleet could not be seeded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The named (or any) DPS instance does not exist.
    #[error("no simulated DPS instance {0}")]
    UnknownDps(String),
    /// The spec is inconsistent.
    #[error("invalid fleet: {0}")]
    Invalid(String),
    /// The simulated DPS refused an enrollment.
    #[error("enrollment {id} refused: {message}")]
    Enrollment {
        /// Registration or group id.
        id: String,
        /// The DPS error message.
        message: String,
    },
    /// Test PKI generation failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// No seeded device has this registration id.
    #[error("no seeded device {0}")]
    UnknownDevice(String),
}

/// Attestation of a seeded enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Attestation {
    /// TPM (individual enrollments only).
    Tpm,
    /// Symmetric key (individual key, or derived from the group key).
    SymmetricKey,
    /// X.509 (individual leaf, or a group signing certificate).
    X509,
}

/// A fleet to seed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FleetSpec {
    /// DPS instance name; the first configured one when absent.
    pub dps: Option<String>,
    /// Common name of the fleet's root CA.
    pub root_ca_name: Option<String>,
    /// Enrollment groups, seeded first.
    pub groups: Vec<GroupSpec>,
    /// Individual enrollments, seeded after the groups.
    pub individuals: Vec<IndividualSpec>,
}

impl FleetSpec {
    /// Reads a fleet from JSON text (missing fields take their defaults).
    pub fn from_json(text: &str) -> Result<Self, SeedError> {
        serde_json::from_str(text).map_err(|e| SeedError::Invalid(e.to_string()))
    }

    /// Reads a fleet from a JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SeedError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SeedError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text)
    }
}

/// One enrollment group and its devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupSpec {
    /// Enrollment group id.
    pub group_id: String,
    /// `symmetricKey` or `x509`.
    pub attestation: Attestation,
    /// Number of devices.
    #[serde(default)]
    pub devices: usize,
    /// Registration id prefix; `{groupId}-dev-` by default (ids get a zero-padded index of at least 4 digits).
    #[serde(default)]
    pub device_prefix: Option<String>,
    /// `enabled` (default) or `disabled`.
    #[serde(default)]
    pub provisioning_status: Option<String>,
    /// Hubs to allocate over (default: every linked hub).
    #[serde(default)]
    pub iot_hubs: Vec<String>,
    /// How many of the devices register (default: all).
    #[serde(default)]
    pub provision_count: Option<usize>,
    /// X.509: CA whose certificate is the group's signing certificate: `root`, or the name of an
    /// intermediate under the fleet root (created on first use). Default `{groupId}-ca`.
    #[serde(default)]
    pub signing_ca: Option<String>,
    /// X.509: intermediate that issues the device leaves. Default: the signing CA when it is an
    /// intermediate, else `{groupId}-issuing`.
    #[serde(default)]
    pub issuing_ca: Option<String>,
}

/// One individual enrollment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndividualSpec {
    /// Registration id (≤ 64 characters for X.509).
    pub registration_id: String,
    /// Attestation type.
    pub attestation: Attestation,
    /// Desired hub device id.
    #[serde(default)]
    pub device_id: Option<String>,
    /// `enabled` (default) or `disabled`.
    #[serde(default)]
    pub provisioning_status: Option<String>,
    /// Hubs to allocate over (default: every linked hub).
    #[serde(default)]
    pub iot_hubs: Vec<String>,
    /// Whether the device registers once seeded (default true).
    #[serde(default = "yes")]
    pub provision: bool,
    /// X.509: reuse the leaf certificate of this already seeded group device (to block it).
    #[serde(default)]
    pub certificate_of: Option<String>,
}

fn yes() -> bool {
    true
}

/// A seeded device and everything needed to act as it.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeededDevice {
    /// Registration id.
    pub registration_id: String,
    /// Group it belongs to, if any.
    pub group_id: Option<String>,
    /// Attestation type.
    pub attestation: Attestation,
    /// Symmetric-key devices: the key the device signs with (individual primary or derived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<String>,
    /// TPM devices: the endorsement key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endorsement_key: Option<String>,
    /// X.509 devices: leaf certificate, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// X.509 devices: leaf private key, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// X.509 devices: leaf then intermediates, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
    /// Outcome of seeding: `assigned`, `disabled`, `failed`, `unauthorized` or `notProvisioned`.
    pub status: String,
    /// Hub the device was assigned to.
    pub assigned_hub: Option<String>,
    /// Hub device id.
    pub device_id: Option<String>,
    /// Leaf and intermediates, DER (for in-process re-provisioning).
    #[serde(skip)]
    pub chain_der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SeededDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededDevice")
            .field("registration_id", &self.registration_id)
            .field("group_id", &self.group_id)
            .field("attestation", &self.attestation)
            .field("status", &self.status)
            .field("assigned_hub", &self.assigned_hub)
            .finish_non_exhaustive()
    }
}

impl SeededDevice {
    /// A SAS credential for any key-based device, valid one hour after `now_unix`.
    pub fn credential_for_key(
        id_scope: &str,
        registration_id: &str,
        key_b64: &str,
        now_unix: i64,
    ) -> DeviceCredential {
        let expiry = u64::try_from(now_unix + TOKEN_TTL).unwrap_or(0);
        DeviceCredential::Sas(device_api::device_sas(
            id_scope,
            registration_id,
            key_b64,
            expiry,
        ))
    }

    /// The credential the device presents (a fresh SAS for key-based devices).
    pub fn credential(&self, id_scope: &str, now_unix: i64) -> DeviceCredential {
        let expiry = u64::try_from(now_unix + TOKEN_TTL).unwrap_or(0);
        match self.attestation {
            Attestation::X509 => DeviceCredential::X509(self.chain_der.clone()),
            Attestation::SymmetricKey => DeviceCredential::Sas(device_api::device_sas(
                id_scope,
                &self.registration_id,
                self.symmetric_key.as_deref().unwrap_or_default(),
                expiry,
            )),
            Attestation::Tpm => {
                let key = device_api::tpm_activation_key(
                    self.endorsement_key.as_deref().unwrap_or_default(),
                );
                DeviceCredential::Sas(device_api::device_sas(
                    id_scope,
                    &self.registration_id,
                    &key,
                    expiry,
                ))
            }
        }
    }
}

/// A seeded fleet: where it lives, its PKI and its devices.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeededFleet {
    /// DPS instance name.
    pub dps: String,
    /// Its ID scope.
    pub id_scope: String,
    /// Root CA certificate, PEM.
    pub root_ca_pem: String,
    /// Every CA of the fleet by name (`root` and intermediates), certificate PEM.
    pub ca_pems: BTreeMap<String, String>,
    /// Devices in seeding order.
    pub devices: Vec<SeededDevice>,
    /// Number of devices per seeding status.
    pub counts: BTreeMap<String, usize>,
    /// CAs with their keys, to issue more certificates in tests.
    #[serde(skip)]
    pub cas: BTreeMap<String, Arc<TestCa>>,
}

impl SeededFleet {
    /// A device by registration id (case-insensitive).
    pub fn device(&self, registration_id: &str) -> Option<&SeededDevice> {
        self.devices
            .iter()
            .find(|d| d.registration_id.eq_ignore_ascii_case(registration_id))
    }

    /// Devices of one group.
    pub fn group_devices(&self, group_id: &str) -> Vec<&SeededDevice> {
        self.devices
            .iter()
            .filter(|d| {
                d.group_id
                    .as_deref()
                    .is_some_and(|g| g.eq_ignore_ascii_case(group_id))
            })
            .collect()
    }
}

/// What happened when a device tried to provision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum ProvisionOutcome {
    /// Assigned to a hub.
    Assigned {
        /// Hub host name.
        hub: String,
        /// Hub device id.
        device_id: String,
    },
    /// The enrollment or group is disabled.
    Disabled,
    /// Allocation failed (e.g. 400208, no hub).
    Failed {
        /// DPS error code.
        error_code: i64,
    },
    /// 401: credentials refused or nothing matches.
    Unauthorized,
    /// 404 (TPM without enrollment).
    NotFound,
    /// 400.
    BadRequest(String),
}

impl ProvisionOutcome {
    /// The seeding status word of this outcome.
    fn word(&self) -> &'static str {
        match self {
            Self::Assigned { .. } => "assigned",
            Self::Disabled => "disabled",
            Self::Failed { .. } => "failed",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "notFound",
            Self::BadRequest(_) => "badRequest",
        }
    }
}

/// Registers one device in-process with the same function the HTTP handler uses.
pub fn provision_with(
    state: &SimState,
    dps: &DpsInstance,
    registration_id: &str,
    cred: &DeviceCredential,
) -> ProvisionOutcome {
    match device_api::register(
        state,
        dps,
        registration_id,
        cred,
        &RegisterRequest::default(),
    ) {
        Ok(reg) => match reg.status {
            RegistrationStatus::Assigned => ProvisionOutcome::Assigned {
                hub: str_field(&reg.state, "assignedHub"),
                device_id: str_field(&reg.state, "deviceId"),
            },
            RegistrationStatus::Disabled => ProvisionOutcome::Disabled,
            RegistrationStatus::Failed => ProvisionOutcome::Failed {
                error_code: reg
                    .state
                    .get("errorCode")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            },
        },
        Err(DeviceError::Unauthorized(_) | DeviceError::TpmChallenge { .. }) => {
            ProvisionOutcome::Unauthorized
        }
        Err(DeviceError::NotFound(_)) => ProvisionOutcome::NotFound,
        Err(DeviceError::BadRequest(m)) => ProvisionOutcome::BadRequest(m),
    }
}

fn str_field(v: &Value, name: &str) -> String {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Tries to provision a seeded device again, with its own credentials.
pub fn try_provision(
    state: &SimState,
    fleet: &SeededFleet,
    registration_id: &str,
) -> Result<ProvisionOutcome, SeedError> {
    let dps = state
        .dps(&fleet.dps)
        .ok_or_else(|| SeedError::UnknownDps(fleet.dps.clone()))?;
    let device = fleet
        .device(registration_id)
        .ok_or_else(|| SeedError::UnknownDevice(registration_id.to_owned()))?;
    let cred = device.credential(&dps.id_scope, state.clock().now_utc().timestamp());
    Ok(provision_with(state, &dps, &device.registration_id, &cred))
}

/// The fleet's certificate authorities, created on demand.
struct Pki {
    root: Arc<TestCa>,
    cas: BTreeMap<String, Arc<TestCa>>,
}

impl Pki {
    fn new(root_name: &str) -> Result<Self, CertError> {
        let root = Arc::new(TestCa::root(root_name)?);
        let mut cas = BTreeMap::new();
        cas.insert("root".to_owned(), root.clone());
        Ok(Self { root, cas })
    }

    /// `root` or an intermediate under the root with this common name.
    fn ca(&mut self, name: &str) -> Result<Arc<TestCa>, CertError> {
        if let Some(ca) = self.cas.get(name) {
            return Ok(ca.clone());
        }
        let ca = Arc::new(self.root.intermediate(name)?);
        self.cas.insert(name.to_owned(), ca.clone());
        Ok(ca)
    }
}

/// Stores an enrollment or group (unconditional create/replace), mapping DPS errors.
fn put(dps: &DpsInstance, kind: EnrollmentKind, id: &str, body: Value) -> Result<Value, SeedError> {
    dps.put(
        kind,
        id,
        body,
        &Precondition::None,
        ExistingPutPolicy::Replace,
    )
    .map_err(|e| SeedError::Enrollment {
        id: id.to_owned(),
        message: e.message,
    })
}

/// Common enrollment fields.
fn base_body(
    id_field: &str,
    id: &str,
    attestation: Value,
    status: Option<&str>,
    hubs: &[String],
) -> Value {
    let mut body = json!({
        id_field: id,
        "attestation": attestation,
        "provisioningStatus": status.unwrap_or("enabled"),
    });
    if !hubs.is_empty() {
        body["iotHubs"] = json!(hubs);
    }
    body
}

/// Symmetric key stored by DPS for an enrollment (generated when the body had none).
fn stored_primary_key(stored: &Value) -> String {
    stored
        .pointer("/attestation/symmetricKey/primaryKey")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Registers a freshly seeded device (or not) and fills in its outcome.
fn finish(
    state: &SimState,
    dps: &DpsInstance,
    mut device: SeededDevice,
    provision: bool,
) -> SeededDevice {
    if !provision {
        device.status = "notProvisioned".into();
        return device;
    }
    let cred = device.credential(&dps.id_scope, state.clock().now_utc().timestamp());
    let outcome = provision_with(state, dps, &device.registration_id, &cred);
    device.status = outcome.word().to_owned();
    if let ProvisionOutcome::Assigned { hub, device_id } = outcome {
        device.assigned_hub = Some(hub);
        device.device_id = Some(device_id);
    }
    device
}

fn new_device(
    registration_id: &str,
    group_id: Option<&str>,
    attestation: Attestation,
) -> SeededDevice {
    SeededDevice {
        registration_id: registration_id.to_owned(),
        group_id: group_id.map(str::to_owned),
        attestation,
        symmetric_key: None,
        endorsement_key: None,
        cert_pem: None,
        key_pem: None,
        chain_pem: None,
        status: String::new(),
        assigned_hub: None,
        device_id: None,
        chain_der: Vec::new(),
    }
}

fn with_leaf(mut device: SeededDevice, leaf: &TestLeaf) -> SeededDevice {
    device.cert_pem = Some(leaf.cert_pem.clone());
    device.key_pem = Some(leaf.key_pem.clone());
    device.chain_pem = Some(leaf.chain_pem());
    device.chain_der = leaf.chain_der.clone();
    device
}

/// Seeds a fleet into the simulator state: enrollments and groups are written, then each device
/// registers through [`device_api::register`].
pub fn seed_fleet(state: &SimState, spec: &FleetSpec) -> Result<SeededFleet, SeedError> {
    let dps = match &spec.dps {
        Some(name) => state
            .dps(name)
            .ok_or_else(|| SeedError::UnknownDps(name.clone()))?,
        None => state
            .dps_instances()
            .first()
            .cloned()
            .ok_or_else(|| SeedError::UnknownDps("(none configured)".into()))?,
    };
    let mut pki = Pki::new(
        spec.root_ca_name
            .as_deref()
            .unwrap_or("azure-iot-sim fleet root CA"),
    )?;
    let mut devices: Vec<SeededDevice> = Vec::new();

    for g in &spec.groups {
        let prefix = g
            .device_prefix
            .clone()
            .unwrap_or_else(|| format!("{}-dev-", g.group_id));
        let to_provision = g.provision_count.unwrap_or(g.devices);
        // At least four digits (`x509-dev-0007`), more when the group is larger.
        let width = g.devices.saturating_sub(1).to_string().len().max(4);
        match g.attestation {
            Attestation::Tpm => {
                return Err(SeedError::Invalid(format!(
                    "group {}: enrollment groups do not support TPM",
                    g.group_id
                )));
            }
            Attestation::SymmetricKey => {
                let att = json!({"type": "symmetricKey", "symmetricKey": {}});
                let body = base_body(
                    "enrollmentGroupId",
                    &g.group_id,
                    att,
                    g.provisioning_status.as_deref(),
                    &g.iot_hubs,
                );
                let stored = put(&dps, EnrollmentKind::Group, &g.group_id, body)?;
                let group_key = sas::key_bytes(&stored_primary_key(&stored))
                    .map_err(|_| SeedError::Invalid("generated group key is not base64".into()))?;
                for i in 0..g.devices {
                    let rid = format!("{prefix}{i:0width$}");
                    let mut d = new_device(&rid, Some(&g.group_id), Attestation::SymmetricKey);
                    d.symmetric_key = Some(sas::group_device_key(&group_key, &rid));
                    devices.push(finish(state, &dps, d, i < to_provision));
                }
            }
            Attestation::X509 => {
                let signing_name = g
                    .signing_ca
                    .clone()
                    .unwrap_or_else(|| format!("{}-ca", g.group_id));
                let signing = pki.ca(&signing_name)?;
                let issuing_name = match (&g.issuing_ca, signing_name.as_str()) {
                    (Some(n), _) => n.clone(),
                    (None, "root") => format!("{}-issuing", g.group_id),
                    (None, n) => n.to_owned(),
                };
                let issuing = pki.ca(&issuing_name)?;
                let att = json!({"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": signing.cert_pem()}}}});
                let body = base_body(
                    "enrollmentGroupId",
                    &g.group_id,
                    att,
                    g.provisioning_status.as_deref(),
                    &g.iot_hubs,
                );
                put(&dps, EnrollmentKind::Group, &g.group_id, body)?;
                for i in 0..g.devices {
                    let rid = format!("{prefix}{i:0width$}");
                    let leaf = issuing.leaf(&rid)?;
                    let d = with_leaf(
                        new_device(&rid, Some(&g.group_id), Attestation::X509),
                        &leaf,
                    );
                    devices.push(finish(state, &dps, d, i < to_provision));
                }
            }
        }
    }

    for ind in &spec.individuals {
        let rid = ind.registration_id.as_str();
        let mut d = new_device(rid, None, ind.attestation);
        let attestation = match ind.attestation {
            Attestation::SymmetricKey => json!({"type": "symmetricKey", "symmetricKey": {}}),
            Attestation::Tpm => {
                let ek = state.ids().key(256);
                d.endorsement_key = Some(ek.clone());
                json!({"type": "tpm", "tpm": {"endorsementKey": ek}})
            }
            Attestation::X509 => {
                let leaf = match &ind.certificate_of {
                    Some(other) => {
                        let src = devices
                            .iter()
                            .find(|x| {
                                x.registration_id.eq_ignore_ascii_case(other)
                                    && !x.chain_der.is_empty()
                            })
                            .ok_or_else(|| {
                                SeedError::Invalid(format!("{rid}: no seeded X.509 device {other}"))
                            })?;
                        (src.chain_der.clone(), src.key_pem.clone())
                    }
                    None => {
                        let leaf = pki.ca("individual-devices")?.leaf(rid)?;
                        (leaf.chain_der, Some(leaf.key_pem))
                    }
                };
                let (leaf, key_pem) = leaf;
                let leaf_pem = der_to_pem(&leaf[0]);
                d.cert_pem = Some(leaf_pem.clone());
                d.key_pem = key_pem;
                d.chain_pem = Some(leaf.iter().map(|c| der_to_pem(c)).collect());
                d.chain_der = leaf;
                json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": leaf_pem}}}})
            }
        };
        let mut body = base_body(
            "registrationId",
            rid,
            attestation,
            ind.provisioning_status.as_deref(),
            &ind.iot_hubs,
        );
        if let Some(dev) = &ind.device_id {
            body["deviceId"] = json!(dev);
        }
        let stored = put(&dps, EnrollmentKind::Individual, rid, body)?;
        if ind.attestation == Attestation::SymmetricKey {
            d.symmetric_key = Some(stored_primary_key(&stored));
        }
        devices.push(finish(state, &dps, d, ind.provision));
    }

    let mut counts = BTreeMap::new();
    for d in &devices {
        *counts.entry(d.status.clone()).or_insert(0) += 1;
    }
    state.remember_credentials(&dps.id_scope, &devices);
    Ok(SeededFleet {
        dps: dps.name.clone(),
        id_scope: dps.id_scope.clone(),
        root_ca_pem: pki.root.cert_pem(),
        ca_pems: pki
            .cas
            .iter()
            .map(|(k, v)| (k.clone(), v.cert_pem()))
            .collect(),
        devices,
        counts,
        cas: pki.cas,
    })
}

/// `POST /_sim/seed` with a [`FleetSpec`] body: answers the [`SeededFleet`] (credentials included;
/// `?credentials=false` leaves the device list out and keeps the counts).
pub fn handle_admin(handle: &SimHandle, req: &SimRequest) -> SimResponse {
    if req.method != http::Method::POST {
        return errors::json_response(405, &json!({"error": "use POST /_sim/seed"}));
    }
    let spec: FleetSpec = match serde_json::from_slice(&req.body) {
        Ok(s) => s,
        Err(e) => return errors::json_response(400, &json!({"error": e.to_string()})),
    };
    match seed_fleet(handle.state(), &spec) {
        Ok(fleet) => {
            let mut body = serde_json::to_value(&fleet).unwrap_or(Value::Null);
            if req.query.get("credentials").is_some_and(|v| v == "false") {
                body["devices"] = json!([]);
            }
            errors::json_response(200, &body)
        }
        Err(e) => errors::json_response(400, &json!({"error": e.to_string()})),
    }
}

/// The files [`write_credentials`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialFiles {
    /// The folder.
    pub dir: std::path::PathBuf,
    /// How many devices have files there.
    pub devices: usize,
}

/// Writes every device credential of `fleet` under `dir` (created if needed), one folder per device:
/// `<registrationId>/device.cert.pem`, `device.key.pem` and `chain.pem` for X.509 devices, `symmetric.key`
/// or `endorsement.key` for key-based ones, and `device.json` (ids, hub, status, id scope); plus the fleet's
/// `root-ca.pem` and each CA as `ca-<name>.pem`. Private keys are written readable by the owner only.
pub fn write_credentials(
    fleet: &SeededFleet,
    dir: &std::path::Path,
) -> std::io::Result<CredentialFiles> {
    std::fs::create_dir_all(dir)?;
    write_file(&dir.join("root-ca.pem"), &fleet.root_ca_pem, false)?;
    for (name, pem) in &fleet.ca_pems {
        write_file(&dir.join(format!("ca-{}.pem", file_safe(name))), pem, false)?;
    }
    for d in &fleet.devices {
        let sub = dir.join(file_safe(&d.registration_id));
        std::fs::create_dir_all(&sub)?;
        if let Some(pem) = &d.cert_pem {
            write_file(&sub.join("device.cert.pem"), pem, false)?;
        }
        if let Some(pem) = &d.key_pem {
            write_file(&sub.join("device.key.pem"), pem, true)?;
        }
        if let Some(pem) = &d.chain_pem {
            write_file(&sub.join("chain.pem"), pem, false)?;
        }
        if let Some(k) = &d.symmetric_key {
            write_file(&sub.join("symmetric.key"), &format!("{k}\n"), true)?;
        }
        if let Some(k) = &d.endorsement_key {
            write_file(&sub.join("endorsement.key"), &format!("{k}\n"), true)?;
        }
        let summary = json!({
            "registrationId": d.registration_id,
            "groupId": d.group_id,
            "attestation": d.attestation,
            "idScope": fleet.id_scope,
            "status": d.status,
            "assignedHub": d.assigned_hub,
            "deviceId": d.device_id,
        });
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        write_file(&sub.join("device.json"), &text, false)?;
    }
    Ok(CredentialFiles {
        dir: dir.to_path_buf(),
        devices: fleet.devices.len(),
    })
}

/// Registration ids allow `:`, which some file systems refuse; nothing else in an id needs changing.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_file(path: &std::path::Path, text: &str, private: bool) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// `GET /_sim/devices/{registrationId}/credentials`: what a seeded device needs to register (its key,
/// endorsement key, or leaf certificate, private key and chain), with its id scope and seeding outcome.
pub fn credentials_response(handle: &SimHandle, registration_id: &str) -> SimResponse {
    let Some(device) = handle.state().credentials_of(registration_id) else {
        return errors::json_response(
            404,
            &json!({"error": format!("no seeded device `{registration_id}`: only devices seeded through a fleet (POST /_sim/seed, --fleet) have credentials here")}),
        );
    };
    let (id_scope, device) = device;
    let mut body = serde_json::to_value(&device).unwrap_or(Value::Null);
    body["idScope"] = json!(id_scope);
    errors::json_response(200, &body)
}

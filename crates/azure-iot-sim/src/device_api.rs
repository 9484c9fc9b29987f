//! DPS device registration API (azure-specs README §10), served on its own listener that stands for
//! `global.azure-devices-provisioning.net`: instances are told apart by the ID scope in the path.
//!
//! | Method | Path | Answer |
//! |---|---|---|
//! | PUT | `/{idScope}/registrations/{registrationId}/register` | 202 `{operationId, status:"assigning"}` + `Retry-After`, `Location` |
//! | GET | `/{idScope}/registrations/{registrationId}/operations/{operationId}` | 202 while assigning, then 200 `{operationId, status, registrationState}` |
//! | POST | `/{idScope}/registrations/{registrationId}` | 200 DeviceRegistrationResult (status lookup) |
//!
//! Registration itself is [`register`], a plain function on the in-memory state: the HTTP handler
//! and the fleet seeder (`seed.rs`) both call it, so seeded devices look exactly like devices that
//! provisioned over HTTP.
//!
//! TPM is simplified: the 401 challenge hands out the activation key in clear text (real DPS encrypts
//! it to the TPM's endorsement key); the device then signs SAS tokens with it like a symmetric key.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::auth;
use super::errors::{self, Service, SimResponse};
use super::server::{
    AuthContext, CallPlan, ConnInfo, DropConnection, SimHandle, SimRequest, route_error,
    run_call_with,
};
use super::state::{DpsInstance, SimState, timestamp};
use super::throttle::{self, Decision};
use super::tls::{self, GLOBAL_DEVICE_ENDPOINT};
use super::x509::{self, ChainCheck};
use crate::sas;

/// api-versions the device SDKs send (README §10); any other well-formed date is accepted too.
pub const KNOWN_API_VERSIONS: [&str; 4] = ["2019-03-31", "2021-06-01", "2021-10-01", "2026-11-01"];

/// DPS error code when no linked hub can take the device (C SDK `DPS_HUB_ERROR_NO_HUB`).
pub const NO_HUB_ERROR: u32 = 400_208;

/// Error code the simulator puts in the registration state of a disabled enrollment. Azure's value is
/// not published (README §10 "Open"); deprovisiond must not depend on it.
pub const DISABLED_ERROR: u32 = 401_005;

/// Longest X.509 registration id (the leaf CN).
const MAX_X509_ID: usize = 64;

/// Operations kept for polling; the oldest are forgotten first.
const MAX_OPERATIONS: usize = 100_000;

/// Device-API settings (part of `SimConfig`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DeviceApiConfig {
    /// Whether the device API listener is started.
    pub enabled: bool,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// `Retry-After` seconds on 202 answers (Azure sends 3; tests use 0 or 1).
    pub retry_after_secs: u64,
    /// How long after the PUT polls still answer 202 `assigning`, milliseconds.
    pub assigning_ms: u64,
    /// Device polls allowed per device per 10 seconds (README §6: 5); 0 disables the limit.
    pub polls_per_10s_per_device: u32,
    /// Whether the test header `x-sim-client-cert` may stand for a TLS client chain (it proves no
    /// key possession; turn it off to allow only real mutual TLS).
    pub accept_client_cert_header: bool,
}

impl Default for DeviceApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 0,
            retry_after_secs: 3,
            assigning_ms: 0,
            polls_per_10s_per_device: 5,
            accept_client_cert_header: true,
        }
    }
}

/// The body of a register PUT / status POST (DeviceRegistration).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// Registration id repeated in the body (the path is authoritative).
    #[serde(default)]
    pub registration_id: Option<String>,
    /// TPM endorsement and storage root keys.
    #[serde(default)]
    pub tpm: Option<TpmKeys>,
    /// Custom payload (kept in the registration state only for custom allocation: unused here).
    #[serde(default)]
    pub payload: Option<Value>,
}

/// TPM keys of a register request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TpmKeys {
    /// Endorsement key, base64.
    #[serde(default)]
    pub endorsement_key: String,
    /// Storage root key, base64.
    #[serde(default)]
    pub storage_root_key: Option<String>,
}

/// What a device presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCredential {
    /// Nothing (a TPM device's first PUT).
    None,
    /// An `Authorization: SharedAccessSignature …` header value.
    Sas(String),
    /// A client certificate chain, leaf first (DER).
    X509(Vec<Vec<u8>>),
}

/// Why a device is refused with an HTTP error (not a `disabled`/`failed` operation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// 401 errorCode 401002: bad, expired or missing credentials, or nothing to authenticate against.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 401 TPM challenge carrying the activation key.
    #[error("TPM authorization required")]
    TpmChallenge {
        /// The key the device must sign its next token with (base64).
        authentication_key: String,
    },
    /// 404 errorCode 404201: no enrollment for a TPM device.
    #[error("not found: {0}")]
    NotFound(String),
    /// 400 errorCode 400004.
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// Final status of a registration operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    /// Assigned to a hub.
    Assigned,
    /// The enrollment or group is disabled.
    Disabled,
    /// No hub could take the device (or allocation failed).
    Failed,
}

impl RegistrationStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Disabled => "disabled",
            Self::Failed => "failed",
        }
    }
}

/// How later polls of the same operation must authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollAuth {
    /// SAS signed with this base64 key.
    Key(String),
    /// Client certificate with this SHA-1 thumbprint.
    Thumbprint(String),
}

/// The result of [`register`].
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// assigned / disabled / failed.
    pub status: RegistrationStatus,
    /// The stored registration state (service-API form, DeviceRegistrationState).
    pub state: Value,
    /// The device-API form (DeviceRegistrationResult): the state plus attestation details.
    pub result: Value,
    /// Enrollment group the device matched, if any.
    pub group_id: Option<String>,
    /// What polls must present.
    pub poll_auth: PollAuth,
}

/// One registration operation, kept for polls.
#[derive(Debug, Clone)]
struct Operation {
    id_scope: String,
    registration_id: String,
    ready_at: DateTime<Utc>,
    status: RegistrationStatus,
    result: Value,
    poll_auth: PollAuth,
}

/// Device-API runtime state: settings and pending operations.
#[derive(Debug)]
pub struct DeviceApiState {
    config: Mutex<DeviceApiConfig>,
    ops: Mutex<(HashMap<String, Operation>, VecDeque<String>)>,
    /// Recent poll times (simulator monotonic clock) per `dps/registration id`.
    polls: Mutex<HashMap<String, VecDeque<std::time::Duration>>>,
}

impl DeviceApiState {
    /// Empty state with these settings.
    pub fn new(config: DeviceApiConfig) -> Self {
        Self {
            config: Mutex::new(config),
            ops: Mutex::new((HashMap::new(), VecDeque::new())),
            polls: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one poll of `key` at `now` if fewer than `limit` happened in the last `window`;
    /// otherwise returns how long until the oldest one leaves the window.
    fn admit_poll(
        &self,
        key: &str,
        now: std::time::Duration,
        window: std::time::Duration,
        limit: usize,
    ) -> Result<(), std::time::Duration> {
        let mut polls = self.polls.lock();
        let recent = polls.entry(key.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window)
        {
            recent.pop_front();
        }
        if recent.len() >= limit {
            let oldest = recent.front().copied().unwrap_or(now);
            return Err(window.saturating_sub(now.saturating_sub(oldest)));
        }
        recent.push_back(now);
        Ok(())
    }

    /// Current settings.
    pub fn config(&self) -> DeviceApiConfig {
        self.config.lock().clone()
    }

    /// Replaces the settings (e.g. a test shortening `Retry-After`).
    pub fn set_config(&self, config: DeviceApiConfig) {
        *self.config.lock() = config;
    }

    fn insert(&self, id: String, op: Operation) {
        let mut g = self.ops.lock();
        let (map, order) = &mut *g;
        if map.insert(id.clone(), op).is_none() {
            order.push_back(id);
        }
        while order.len() > MAX_OPERATIONS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn get(&self, id: &str) -> Option<Operation> {
        self.ops.lock().0.get(id).cloned()
    }
}

/// The activation key of a simulated TPM (README: real DPS encrypts a key to the EK).
pub fn tpm_activation_key(endorsement_key: &str) -> String {
    sas::hmac_b64(
        endorsement_key.trim().as_bytes(),
        b"azure-iot-sim TPM activation",
    )
}

/// A device SAS token for `{idScope}/registrations/{registrationId}`, as the Node SDK mints it
/// (sr URL-encoded, `skn=registration`).
pub fn device_sas(id_scope: &str, registration_id: &str, key_b64: &str, expiry: u64) -> String {
    let key = sas::key_bytes(key_b64).unwrap_or_default();
    sas::mint(
        &format!("{id_scope}/registrations/{registration_id}"),
        &key,
        Some("registration"),
        expiry,
    )
}

/// Checks a device SAS: well-formed, not expired, `sr` (decoded, case-insensitive) names this
/// registration, and the signature over `sr` as received verifies with one of `keys`. Returns the key.
fn verify_device_sas<'k>(
    header: &str,
    id_scope: &str,
    registration_id: &str,
    keys: &[&'k str],
    now: i64,
) -> Result<&'k str, DeviceError> {
    let token = sas_token(header, id_scope, registration_id, now)?;
    keys.iter()
        .copied()
        .find(|k| !k.is_empty() && auth::verify_signature(k, &token))
        .ok_or_else(|| DeviceError::Unauthorized("the signature does not match".into()))
}

/// Parses a device token and checks expiry and scope (not the signature).
fn sas_token(
    header: &str,
    id_scope: &str,
    registration_id: &str,
    now: i64,
) -> Result<auth::SasToken, DeviceError> {
    let token = auth::parse(header).map_err(|e| DeviceError::Unauthorized(e.to_string()))?;
    if token.se <= now {
        return Err(DeviceError::Unauthorized("the token has expired".into()));
    }
    let expected = format!("{id_scope}/registrations/{registration_id}");
    if !token
        .sr
        .trim_end_matches('/')
        .eq_ignore_ascii_case(&expected)
    {
        return Err(DeviceError::Unauthorized(
            "the token's resource does not name this registration".into(),
        ));
    }
    Ok(token)
}

/// The enrollment a device matched and how it proved it.
struct Matched {
    /// The stored enrollment or group.
    enrollment: Value,
    /// Group id when it matched a group.
    group_id: Option<String>,
    /// Hub authentication to write.
    hub_auth: Value,
    /// Attestation section of the device result.
    result_attestation: (&'static str, Value),
    /// What polls must present.
    poll_auth: PollAuth,
}

/// Keys of a symmetric-key attestation.
fn sym_keys(att: &Value) -> (String, String) {
    let k = |slot: &str| {
        att.get("symmetricKey")
            .and_then(|s| s.get(slot))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (k("primaryKey"), k("secondaryKey"))
}

/// DER of the certificates in an x509 section (`clientCertificates` or `signingCertificates`).
fn stored_certs(att: &Value, field: &str) -> Vec<Vec<u8>> {
    ["primary", "secondary"]
        .iter()
        .filter_map(|slot| {
            att.get("x509")?
                .get(field)?
                .get(slot)?
                .get("certificate")?
                .as_str()
                .and_then(|t| x509::parse_certificate(t).ok())
        })
        .collect()
}

/// Leaf checks shared by individual and group X.509: CN = registration id (≤ 64), valid now.
fn check_leaf(
    chain: &[Vec<u8>],
    registration_id: &str,
    now: DateTime<Utc>,
) -> Result<(), DeviceError> {
    let leaf = chain
        .first()
        .ok_or_else(|| DeviceError::Unauthorized("no client certificate".into()))?;
    let cn = x509::common_name(leaf)
        .map_err(|e| DeviceError::Unauthorized(format!("invalid certificate: {e}")))?
        .unwrap_or_default();
    if cn.len() > MAX_X509_ID || !cn.eq_ignore_ascii_case(registration_id) {
        return Err(DeviceError::Unauthorized(
            "the certificate CN is not the registration id".into(),
        ));
    }
    if !x509::is_valid_at(leaf, now) {
        return Err(DeviceError::Unauthorized(
            "the certificate is not valid now".into(),
        ));
    }
    Ok(())
}

/// Hub authentication for an X.509 device: its leaf thumbprint (secondary = primary, unverified).
fn x509_hub_auth(leaf: &[u8]) -> Value {
    let t = x509::sha1_thumbprint(leaf);
    json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": t, "secondaryThumbprint": t}})
}

/// Hub authentication for a key-based device.
fn sas_hub_auth(primary: &str, secondary: &str) -> Value {
    json!({"type": "sas", "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}})
}

/// Authenticates against the individual enrollment `enr` (already found by registration id).
fn match_individual(
    enr: Value,
    id_scope: &str,
    registration_id: &str,
    cred: &DeviceCredential,
    req: &RegisterRequest,
    now: DateTime<Utc>,
) -> Result<Matched, DeviceError> {
    let att = enr.get("attestation").cloned().unwrap_or(Value::Null);
    let ty = att.get("type").and_then(Value::as_str).unwrap_or_default();
    match (ty, cred) {
        ("symmetricKey", DeviceCredential::Sas(h)) => {
            let (pk, sk) = sym_keys(&att);
            let key =
                verify_device_sas(h, id_scope, registration_id, &[&pk, &sk], now.timestamp())?;
            Ok(Matched {
                enrollment: enr,
                group_id: None,
                hub_auth: sas_hub_auth(&pk, &sk),
                result_attestation: ("symmetricKey", json!({})),
                poll_auth: PollAuth::Key(key.to_owned()),
            })
        }
        ("x509", DeviceCredential::X509(chain)) => {
            check_leaf(chain, registration_id, now)?;
            let Some(leaf) = chain.first() else {
                return Err(DeviceError::Unauthorized("no client certificate".into()));
            };
            let certs = stored_certs(&att, "clientCertificates");
            let Some(known) = certs.iter().find(|c| c.as_slice() == leaf.as_slice()) else {
                return Err(DeviceError::Unauthorized(
                    "the certificate is not the enrollment's client certificate".into(),
                ));
            };
            let info = x509::certificate_info(known)
                .map_err(|e| DeviceError::BadRequest(e.to_string()))?;
            Ok(Matched {
                enrollment: enr,
                group_id: None,
                hub_auth: x509_hub_auth(leaf),
                result_attestation: ("x509", json!({"certificateInfo": info})),
                poll_auth: PollAuth::Thumbprint(x509::sha1_thumbprint(leaf)),
            })
        }
        ("tpm", _) => {
            let ek = att
                .get("tpm")
                .and_then(|t| t.get("endorsementKey"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let key = tpm_activation_key(ek);
            match cred {
                DeviceCredential::Sas(h) => {
                    verify_device_sas(h, id_scope, registration_id, &[&key], now.timestamp())?;
                    Ok(Matched {
                        enrollment: enr,
                        group_id: None,
                        hub_auth: sas_hub_auth(&key, &key),
                        result_attestation: ("tpm", json!({"authenticationKey": key})),
                        poll_auth: PollAuth::Key(key),
                    })
                }
                DeviceCredential::None
                    if req
                        .tpm
                        .as_ref()
                        .is_some_and(|t| t.endorsement_key.trim() == ek.trim()) =>
                {
                    Err(DeviceError::TpmChallenge {
                        authentication_key: key,
                    })
                }
                _ => Err(DeviceError::Unauthorized(
                    "the TPM endorsement key does not match".into(),
                )),
            }
        }
        _ => Err(DeviceError::Unauthorized(
            "the credential does not match the enrollment's attestation".into(),
        )),
    }
}

/// Finds the group that admits the device: symmetric key, the first group whose derived key
/// verifies; X.509, the group whose signing certificate is closest to the leaf (README §7).
fn match_group(
    dps: &DpsInstance,
    registration_id: &str,
    cred: &DeviceCredential,
    req: &RegisterRequest,
    now: DateTime<Utc>,
) -> Result<Matched, DeviceError> {
    let groups = dps.list_groups();
    let gid = |g: &Value| {
        g.get("enrollmentGroupId")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match cred {
        DeviceCredential::Sas(h) => {
            let token = sas_token(h, &dps.id_scope, registration_id, now.timestamp())?;
            for g in groups {
                let att = g.get("attestation").cloned().unwrap_or(Value::Null);
                if att.get("type").and_then(Value::as_str) != Some("symmetricKey") {
                    continue;
                }
                let (gp, gs) = sym_keys(&att);
                let derive = |k: &str| {
                    sas::key_bytes(k)
                        .map(|raw| sas::group_device_key(&raw, registration_id))
                        .unwrap_or_default()
                };
                let (dp, ds) = (derive(&gp), derive(&gs));
                let used = [&dp, &ds]
                    .into_iter()
                    .find(|k| !k.is_empty() && auth::verify_signature(k, &token));
                if let Some(key) = used {
                    return Ok(Matched {
                        group_id: gid(&g),
                        result_attestation: ("symmetricKey", json!({"enrollmentGroupId": gid(&g)})),
                        poll_auth: PollAuth::Key(key.clone()),
                        hub_auth: sas_hub_auth(&dp, &ds),
                        enrollment: g,
                    });
                }
            }
            Err(DeviceError::Unauthorized(
                "no enrollment matches the token".into(),
            ))
        }
        DeviceCredential::X509(chain) => {
            check_leaf(chain, registration_id, now)?;
            let mut best: Option<(usize, Value, Vec<u8>)> = None;
            let mut expired = false;
            for g in groups {
                let att = g.get("attestation").cloned().unwrap_or(Value::Null);
                if att.get("type").and_then(Value::as_str) != Some("x509") {
                    continue;
                }
                for signing in stored_certs(&att, "signingCertificates") {
                    match x509::check_chain(chain, &signing, now) {
                        ChainCheck::Chains { depth }
                            if best.as_ref().is_none_or(|b| depth < b.0) =>
                        {
                            best = Some((depth, g.clone(), signing));
                        }
                        ChainCheck::Expired => expired = true,
                        _ => {}
                    }
                }
            }
            let Some((_, g, signing)) = best else {
                let why = if expired {
                    "a certificate of the chain is not valid now"
                } else {
                    "no enrollment matches the certificate chain"
                };
                return Err(DeviceError::Unauthorized(why.into()));
            };
            let Some(leaf) = chain.first() else {
                return Err(DeviceError::Unauthorized("no client certificate".into()));
            };
            let leaf_info =
                x509::certificate_info(leaf).map_err(|e| DeviceError::BadRequest(e.to_string()))?;
            let signing_info = x509::certificate_info(&signing)
                .map_err(|e| DeviceError::BadRequest(e.to_string()))?;
            Ok(Matched {
                group_id: gid(&g),
                hub_auth: x509_hub_auth(leaf),
                result_attestation: (
                    "x509",
                    json!({
                        "certificateInfo": leaf_info,
                        "enrollmentGroupId": gid(&g),
                        "signingCertificateInfo": signing_info,
                    }),
                ),
                poll_auth: PollAuth::Thumbprint(x509::sha1_thumbprint(leaf)),
                enrollment: g,
            })
        }
        DeviceCredential::None if req.tpm.is_some() => Err(DeviceError::NotFound(format!(
            "No enrollment found for registration id {registration_id}"
        ))),
        DeviceCredential::None => Err(DeviceError::Unauthorized("no credentials".into())),
    }
}

/// Weighted hash of the registration id over candidate hubs (stable for a given id and hub set).
fn hashed_pick(registration_id: &str, candidates: &[(String, u32)]) -> Option<String> {
    let total: u64 = candidates.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
    if total == 0 {
        return None;
    }
    let d = Sha256::digest(registration_id.to_ascii_lowercase().as_bytes());
    let h = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    let mut slot = h % total;
    for (host, w) in candidates {
        let w = u64::from((*w).max(1));
        if slot < w {
            return Some(host.clone());
        }
        slot -= w;
    }
    None
}

/// Candidate hubs of an enrollment: its `iotHubs`, else `iotHubHostName`, else every linked hub
/// that applies the allocation policy; only hubs linked and simulated count.
fn candidate_hubs(state: &SimState, dps: &DpsInstance, enrollment: &Value) -> Vec<(String, u32)> {
    let linked = dps.linked_hubs();
    let weight = |h: &str| {
        linked
            .iter()
            .find(|l| l.host.eq_ignore_ascii_case(h))
            .map(|l| l.allocation_weight)
    };
    let listed: Vec<String> = match enrollment.get("iotHubs").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => enrollment
            .get("iotHubHostName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default(),
    };
    let hosts: Vec<(String, u32)> = if listed.is_empty() {
        linked
            .iter()
            .filter(|l| l.apply_allocation_policy)
            .map(|l| (l.host.clone(), l.allocation_weight))
            .collect()
    } else {
        listed
            .iter()
            .filter_map(|h| weight(h).map(|w| (h.to_ascii_lowercase(), w)))
            .collect()
    };
    hosts
        .into_iter()
        .filter(|(h, _)| state.hub(h).is_some())
        .collect()
}

/// Picks the hub for a device, honouring the previous assignment and the reprovision policy.
/// Returns (hub, substatus, previous hub to clean up).
fn allocate(
    state: &SimState,
    dps: &DpsInstance,
    enrollment: &Value,
    registration_id: &str,
    previous: Option<&Value>,
) -> Result<(String, &'static str, Option<String>), (u32, String)> {
    let candidates = candidate_hubs(state, dps, enrollment);
    // A record left `disabled` or `failed` still names the hub of an earlier assignment.
    let prev_hub = previous
        .and_then(|p| p.get("assignedHub"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let policy = enrollment.get("reprovisionPolicy");
    let flag = |name: &str| {
        policy
            .and_then(|p| p.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    };
    if let Some(prev) = &prev_hub {
        let still_candidate = candidates.iter().any(|(h, _)| h == prev);
        if (still_candidate || !flag("updateHubAssignment")) && state.hub(prev).is_some() {
            return Ok((prev.clone(), "initialAssignment", None));
        }
    }
    let allocation = enrollment
        .get("allocationPolicy")
        .and_then(Value::as_str)
        .unwrap_or("hashed");
    let chosen = match allocation {
        "custom" => {
            return Err((400_207, "Custom allocation is not simulated".into()));
        }
        "static" => candidates.first().map(|(h, _)| h.clone()),
        // geoLatency: the simulator has no geography, so it hashes like DPS does between equals.
        _ => hashed_pick(registration_id, &candidates),
    };
    let Some(hub) = chosen else {
        return Err((
            NO_HUB_ERROR,
            "No IoT hub is linked to the enrollment or the provisioning service".into(),
        ));
    };
    match prev_hub {
        Some(prev) if prev != hub => {
            let sub = if flag("migrateDeviceData") {
                "deviceDataMigrated"
            } else {
                "deviceDataReset"
            };
            Ok((hub, sub, Some(prev)))
        }
        _ => Ok((hub, "initialAssignment", None)),
    }
}

/// Creates or updates the hub identity: authentication and capabilities from the enrollment;
/// an existing identity keeps its status (whether DPS re-enables a disabled one is unverified).
fn write_hub_identity(
    state: &SimState,
    hub: &str,
    device_id: &str,
    matched: &Matched,
) -> Result<(), String> {
    let hub = state
        .hub(hub)
        .ok_or_else(|| format!("hub {hub} is not simulated"))?;
    let capabilities = matched
        .enrollment
        .get("capabilities")
        .cloned()
        .filter(|c| !c.is_null())
        .unwrap_or_else(|| json!({"iotEdge": false}));
    let existing = hub.get_device(device_id);
    let mut body = existing
        .clone()
        .unwrap_or_else(|| json!({"deviceId": device_id, "status": "enabled"}));
    body["authentication"] = matched.hub_auth.clone();
    body["capabilities"] = capabilities;
    hub.upsert_device(device_id, body)
        .map_err(|e| e.to_string())?;
    if existing.is_none()
        && let Some(twin) = matched
            .enrollment
            .get("initialTwin")
            .filter(|t| !t.is_null())
    {
        let tags = twin.get("tags").cloned().filter(|t| !t.is_null());
        let desired = twin
            .get("properties")
            .and_then(|p| p.get("desired"))
            .cloned()
            .filter(|d| !d.is_null());
        hub.set_twin(device_id, tags, desired)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Copies `assignedHub` and `deviceId` of an earlier assignment into a `disabled` or `failed` record, so the
/// hub can still be found from it (what DPS keeps there is unverified; the service must not depend on it).
fn keep_earlier_assignment(record: &mut Map<String, Value>, previous: Option<&Value>) {
    for field in ["assignedHub", "deviceId"] {
        if let Some(v) = previous.and_then(|p| p.get(field)).filter(|v| !v.is_null()) {
            record.insert(field.into(), v.clone());
        }
    }
}

/// Registers a device with one DPS instance: authenticates it (individual enrollment by
/// registration id first, then groups; README §7, §10), then records the outcome. The HTTP handler
/// and the seeder both call this.
///
/// `Err` answers with an HTTP error (401/404/400); `Ok` is an operation result, including
/// `disabled` and `failed`, with the registration state already written.
pub fn register(
    state: &SimState,
    dps: &DpsInstance,
    registration_id: &str,
    cred: &DeviceCredential,
    req: &RegisterRequest,
) -> Result<Registration, DeviceError> {
    super::state::validate_id(registration_id).map_err(|e| DeviceError::BadRequest(e.message))?;
    let now = state.clock().now_utc();
    let matched = match dps.find_enrollment(registration_id) {
        Some(enr) => match_individual(enr, &dps.id_scope, registration_id, cred, req, now)?,
        None => match_group(dps, registration_id, cred, req, now)?,
    };
    let reg_id = matched
        .enrollment
        .get("registrationId")
        .and_then(Value::as_str)
        .unwrap_or(registration_id)
        .to_owned();
    let previous = dps.registration(&reg_id).map(|r| r.state);
    let enabled = matched
        .enrollment
        .get("provisioningStatus")
        .and_then(Value::as_str)
        != Some("disabled");

    let mut record = Map::new();
    record.insert("registrationId".into(), json!(reg_id));
    let status = if !enabled {
        keep_earlier_assignment(&mut record, previous.as_ref());
        record.insert("status".into(), json!("disabled"));
        record.insert("errorCode".into(), json!(DISABLED_ERROR));
        record.insert("errorMessage".into(), json!("The enrollment is disabled"));
        RegistrationStatus::Disabled
    } else {
        let device_id = matched
            .enrollment
            .get("deviceId")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty() && matched.group_id.is_none())
            .unwrap_or(&reg_id)
            .to_owned();
        match allocate(state, dps, &matched.enrollment, &reg_id, previous.as_ref()) {
            Ok((hub, substatus, old_hub)) => {
                match write_hub_identity(state, &hub, &device_id, &matched) {
                    Ok(()) => {
                        if let Some(old) = old_hub.and_then(|h| state.hub(&h)) {
                            // A move removes the identity from the old hub (README §10 item 4).
                            let _ = old.delete_device(&device_id, &super::state::Precondition::Any);
                        }
                        record.insert("assignedHub".into(), json!(hub));
                        record.insert("deviceId".into(), json!(device_id));
                        record.insert("status".into(), json!("assigned"));
                        record.insert("substatus".into(), json!(substatus));
                        RegistrationStatus::Assigned
                    }
                    Err(msg) => {
                        keep_earlier_assignment(&mut record, previous.as_ref());
                        record.insert("status".into(), json!("failed"));
                        record.insert("errorCode".into(), json!(500_000));
                        record.insert("errorMessage".into(), json!(msg));
                        RegistrationStatus::Failed
                    }
                }
            }
            Err((code, msg)) => {
                keep_earlier_assignment(&mut record, previous.as_ref());
                record.insert("status".into(), json!("failed"));
                record.insert("errorCode".into(), json!(code));
                record.insert("errorMessage".into(), json!(msg));
                RegistrationStatus::Failed
            }
        }
    };
    let stored = dps
        .upsert_registration(matched.group_id.as_deref(), Value::Object(record))
        .map_err(|e| DeviceError::BadRequest(e.message))?;
    let mut result = stored.clone();
    let (section, value) = &matched.result_attestation;
    result[*section] = value.clone();
    Ok(Registration {
        status,
        state: stored,
        result,
        group_id: matched.group_id,
        poll_auth: matched.poll_auth,
    })
}

/// One routed device-API request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DeviceOp {
    Register {
        scope: String,
        rid: String,
    },
    Poll {
        scope: String,
        rid: String,
        op: String,
    },
    Status {
        scope: String,
        rid: String,
    },
}

impl DeviceOp {
    fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "DeviceRegister",
            Self::Poll { .. } => "DeviceOperationStatus",
            Self::Status { .. } => "DeviceRegistrationStatus",
        }
    }

    fn scope_and_id(&self) -> (&str, &str) {
        match self {
            Self::Register { scope, rid }
            | Self::Poll { scope, rid, .. }
            | Self::Status { scope, rid } => (scope, rid),
        }
    }
}

/// Routes a device-API path; `Err(404|405)` when nothing matches.
fn route(method: &http::Method, path: &str) -> Result<DeviceOp, u16> {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        [scope, r, rid, reg]
            if r.eq_ignore_ascii_case("registrations") && reg.eq_ignore_ascii_case("register") =>
        {
            if method == http::Method::PUT {
                Ok(DeviceOp::Register {
                    scope: dec(scope),
                    rid: dec(rid),
                })
            } else {
                Err(405)
            }
        }
        [scope, r, rid, o, op]
            if r.eq_ignore_ascii_case("registrations") && o.eq_ignore_ascii_case("operations") =>
        {
            if method == http::Method::GET {
                Ok(DeviceOp::Poll {
                    scope: dec(scope),
                    rid: dec(rid),
                    op: dec(op),
                })
            } else {
                Err(405)
            }
        }
        [scope, r, rid] if r.eq_ignore_ascii_case("registrations") => {
            if method == http::Method::POST {
                Ok(DeviceOp::Status {
                    scope: dec(scope),
                    rid: dec(rid),
                })
            } else {
                Err(405)
            }
        }
        _ => Err(404),
    }
}

/// The 401 DPS gives devices: errorCode 401002, trackingId = x-ms-request-id, no x-ms-error-code.
fn unauthorized(tid: &str, now: DateTime<Utc>) -> SimResponse {
    let body = json!({
        "errorCode": 401_002,
        "trackingId": tid,
        "message": "Unauthorized",
        "timestampUtc": timestamp(now),
    });
    errors::json_response(401, &body)
}

/// The credential of a request: the TLS client chain, else the test header (when accepted), else
/// the Authorization header.
fn credential(
    conn: &ConnInfo,
    req: &SimRequest,
    accept_header: bool,
) -> Result<DeviceCredential, DeviceError> {
    if !conn.client_certs.is_empty() {
        return Ok(DeviceCredential::X509(conn.client_certs.clone()));
    }
    if accept_header && let Some(value) = req.header(tls::CLIENT_CERT_HEADER) {
        let chain = tls::parse_cert_header(value).map_err(|e| {
            DeviceError::Unauthorized(format!("invalid client certificate header: {e}"))
        })?;
        return Ok(DeviceCredential::X509(chain));
    }
    Ok(match req.header("authorization") {
        Some(h) if !h.trim().is_empty() => DeviceCredential::Sas(h.to_owned()),
        _ => DeviceCredential::None,
    })
}

/// Serves one device-API request (the admin prefix is handled before this) through the simulator
/// pipeline: faults and latency, api-version, quota, then registration, which authenticates.
///
/// Quotas: a register PUT costs one operation of the instance (a revoked device that keeps retrying
/// consumes it, README §7) and one device registration; a poll costs one of the device's polls
/// (5 per 10 s, README §6); a status lookup one operation.
pub async fn serve(
    handle: &SimHandle,
    conn: &ConnInfo,
    req: &SimRequest,
) -> Result<SimResponse, DropConnection> {
    let op = match route(&req.method, &req.path) {
        Ok(op) => op,
        Err(status) => return Ok(route_error(handle, Service::Dps, "device-api", req, status)),
    };
    let (scope, rid) = op.scope_and_id();
    let dps = handle.state().dps_by_id_scope(scope);
    let settings = handle.0.throttle.settings();
    // Polls have their own per-device window (checked in `exec`), not the operations quota.
    let quota = dps
        .as_ref()
        .filter(|_| !matches!(op, DeviceOp::Poll { .. }))
        .map(|d| (format!("dps:{}", d.name), settings.dps_ops_per_minute, 1.0));
    let plan = CallPlan {
        service: Service::Dps,
        instance: dps
            .as_ref()
            .map(|d| d.name.clone())
            .unwrap_or_else(|| format!("scope:{scope}")),
        host: GLOBAL_DEVICE_ENDPOINT.to_owned(),
        operation: op.name(),
        entity_id: Some(rid.to_owned()),
        entity_ids: Vec::new(),
        rights: Vec::new(),
        quota,
    };
    // Devices authenticate during registration (matching and authentication are one step in DPS),
    // so the pipeline's authorizer admits every call.
    let authorize = |_: &AuthContext<'_>| Ok(());
    let exec = |tid: &str| {
        let now = handle.0.clock.now_utc();
        if matches!(op, DeviceOp::Register { .. })
            && let Some(d) = &dps
            && let Decision::Throttled { retry_after } = handle.0.throttle.acquire(
                &format!("dps-registrations:{}", d.name),
                settings.dps_registrations_per_minute,
                1.0,
            )
        {
            let mut resp =
                errors::service_error(Service::Dps, 429, "Too many registrations", tid, now);
            if settings.retry_after {
                errors::set_header(
                    &mut resp,
                    "retry-after",
                    &throttle::retry_after_seconds(retry_after).to_string(),
                );
            }
            return resp;
        }
        let limit = handle.0.device.config().polls_per_10s_per_device;
        if matches!(op, DeviceOp::Poll { .. })
            && settings.enabled
            && limit > 0
            && let Some(d) = &dps
        {
            let key = format!("{}/{}", d.name, rid.to_ascii_lowercase());
            // Ten seconds of quota time, shortened by the time scale like every other quota.
            let window = std::time::Duration::from_secs_f64(10.0 / settings.time_scale.max(1e-6));
            let admitted = handle.0.device.admit_poll(
                &key,
                handle.0.clock.monotonic(),
                window,
                usize::try_from(limit).unwrap_or(usize::MAX),
            );
            if let Err(wait) = admitted {
                let mut resp = errors::service_error(Service::Dps, 429, "Too many polls", tid, now);
                if settings.retry_after {
                    errors::set_header(
                        &mut resp,
                        "retry-after",
                        &throttle::retry_after_seconds(wait).to_string(),
                    );
                }
                return resp;
            }
        }
        execute(handle, conn, req, &op, tid, now)
    };
    run_call_with(handle, plan, req, authorize, exec).await
}

/// Maps a device error to its HTTP answer.
fn error_response(e: &DeviceError, tid: &str, now: DateTime<Utc>) -> SimResponse {
    match e {
        DeviceError::Unauthorized(why) => {
            tracing::debug!(reason = %why, "simulated DPS refused a device");
            unauthorized(tid, now)
        }
        DeviceError::TpmChallenge { authentication_key } => errors::json_response(
            401,
            &json!({
                "message": "Authorization required, resend request using supplied key",
                "authenticationKey": authentication_key,
                "keyName": "registration",
            }),
        ),
        DeviceError::NotFound(msg) => errors::dps_error(404, 404_201, msg, tid, now),
        DeviceError::BadRequest(msg) => errors::dps_error(400, 400_004, msg, tid, now),
    }
}

/// Runs a routed, admitted device-API call.
fn execute(
    handle: &SimHandle,
    conn: &ConnInfo,
    req: &SimRequest,
    op: &DeviceOp,
    tid: &str,
    now: DateTime<Utc>,
) -> SimResponse {
    let (scope, rid) = op.scope_and_id();
    let Some(dps) = handle.state().dps_by_id_scope(scope) else {
        // An unknown ID scope authenticates nobody (Azure's answer is not documented).
        return unauthorized(tid, now);
    };
    let config = handle.0.device.config();
    let cred = match credential(conn, req, config.accept_client_cert_header) {
        Ok(c) => c,
        Err(e) => return error_response(&e, tid, now),
    };
    match op {
        DeviceOp::Register { .. } => {
            let body: RegisterRequest = if req.body.is_empty() {
                RegisterRequest::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(b) => b,
                    Err(e) => {
                        return error_response(
                            &DeviceError::BadRequest(format!("invalid body: {e}")),
                            tid,
                            now,
                        );
                    }
                }
            };
            match register(handle.state(), &dps, rid, &cred, &body) {
                Ok(reg) => {
                    let op_id = format!(
                        "5.{:016x}.{}",
                        handle.state().ids().number(0..u64::MAX),
                        handle.state().ids().uuid()
                    );
                    let ready_at = now
                        + chrono::Duration::milliseconds(
                            i64::try_from(config.assigning_ms).unwrap_or(0),
                        );
                    handle.0.device.insert(
                        op_id.clone(),
                        Operation {
                            id_scope: dps.id_scope.clone(),
                            registration_id: rid.to_ascii_lowercase(),
                            ready_at,
                            status: reg.status,
                            result: reg.result,
                            poll_auth: reg.poll_auth,
                        },
                    );
                    let mut resp = errors::json_response(
                        202,
                        &json!({"operationId": op_id, "status": "assigning"}),
                    );
                    errors::set_header(
                        &mut resp,
                        "retry-after",
                        &config.retry_after_secs.to_string(),
                    );
                    errors::set_header(
                        &mut resp,
                        "location",
                        &format!("/{scope}/registrations/{rid}/operations/{op_id}"),
                    );
                    resp
                }
                Err(e) => error_response(&e, tid, now),
            }
        }
        DeviceOp::Poll { op: op_id, .. } => {
            let Some(stored) = handle.0.device.get(op_id).filter(|o| {
                o.id_scope.eq_ignore_ascii_case(scope)
                    && o.registration_id.eq_ignore_ascii_case(rid)
            }) else {
                return errors::dps_error(404, 404_203, "Operation not found", tid, now);
            };
            let authorized = match (&stored.poll_auth, &cred) {
                (PollAuth::Key(k), DeviceCredential::Sas(h)) => {
                    verify_device_sas(h, scope, rid, &[k.as_str()], now.timestamp()).is_ok()
                }
                (PollAuth::Thumbprint(t), DeviceCredential::X509(chain)) => chain
                    .first()
                    .is_some_and(|leaf| x509::thumbprints_equal(&x509::sha1_thumbprint(leaf), t)),
                _ => false,
            };
            if !authorized {
                return unauthorized(tid, now);
            }
            if now < stored.ready_at {
                let mut resp = errors::json_response(
                    202,
                    &json!({"operationId": op_id, "status": "assigning"}),
                );
                errors::set_header(
                    &mut resp,
                    "retry-after",
                    &config.retry_after_secs.to_string(),
                );
                return resp;
            }
            errors::json_response(
                200,
                &json!({
                    "operationId": op_id,
                    "status": stored.status.as_str(),
                    "registrationState": stored.result,
                }),
            )
        }
        DeviceOp::Status { .. } => {
            let body: RegisterRequest = serde_json::from_slice(&req.body).unwrap_or_default();
            // Authenticate without registering again: same matching, then read the record.
            let matched = match dps.find_enrollment(rid) {
                Some(enr) => match_individual(enr, scope, rid, &cred, &body, now),
                None => match_group(&dps, rid, &cred, &body, now),
            };
            match matched {
                Ok(m) => match dps.registration(rid) {
                    Some(r) => {
                        let mut out = r.state;
                        let (section, value) = m.result_attestation;
                        out[section] = value;
                        errors::json_response(200, &out)
                    }
                    None => errors::dps_error(404, 404_201, "Registration not found", tid, now),
                },
                Err(e) => error_response(&e, tid, now),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_device_paths() {
        assert_eq!(
            route(
                &http::Method::PUT,
                "/0ne00000001/registrations/dev-1/register"
            ),
            Ok(DeviceOp::Register {
                scope: "0ne00000001".into(),
                rid: "dev-1".into()
            })
        );
        assert_eq!(
            route(
                &http::Method::GET,
                "/0ne1/registrations/dev-1/operations/5.abc"
            ),
            Ok(DeviceOp::Poll {
                scope: "0ne1".into(),
                rid: "dev-1".into(),
                op: "5.abc".into()
            })
        );
        assert_eq!(
            route(&http::Method::POST, "/s/registrations/d"),
            Ok(DeviceOp::Status {
                scope: "s".into(),
                rid: "d".into()
            })
        );
        assert_eq!(
            route(&http::Method::GET, "/s/registrations/d/register"),
            Err(405)
        );
        assert_eq!(route(&http::Method::GET, "/nothing"), Err(404));
    }

    #[test]
    fn hashed_pick_respects_weights_and_is_stable() {
        let hubs = vec![
            ("a".to_owned(), 1),
            ("b".to_owned(), 1),
            ("c".to_owned(), 1000),
        ];
        let mut counts = HashMap::new();
        for i in 0..3000 {
            let id = format!("dev-{i}");
            let h = hashed_pick(&id, &hubs).unwrap();
            assert_eq!(hashed_pick(&id.to_uppercase(), &hubs).unwrap(), h);
            *counts.entry(h).or_insert(0) += 1;
        }
        assert!(counts["c"] > 2900, "{counts:?}");
        assert_eq!(hashed_pick("x", &[]), None);
    }

    /// Every `sr` encoding the SDKs use verifies (README §10): raw, `%2f`, `%2F`, no or empty skn.
    #[test]
    fn device_sas_accepts_every_sdk_encoding() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let raw = sas::key_bytes(key).unwrap();
        let now = 1_000;
        let sign = |sr: &str, skn: Option<&str>| {
            let sig = sas::percent_encode(&sas::expected_signature(&raw, sr, 2_000));
            match skn {
                Some(s) => format!("SharedAccessSignature sr={sr}&sig={sig}&se=2000&skn={s}"),
                None => format!("SharedAccessSignature sr={sr}&sig={sig}&se=2000"),
            }
        };
        for (sr, skn) in [
            ("0ne1/registrations/Dev-1", Some("registration")),
            ("0ne1%2fregistrations%2fdev-1", Some("registration")),
            ("0ne1%2Fregistrations%2Fdev-1", None),
            ("0NE1%2Fregistrations%2Fdev-1", Some("")),
        ] {
            let h = sign(sr, skn);
            assert_eq!(
                verify_device_sas(&h, "0ne1", "dev-1", &[key], now),
                Ok(key),
                "{sr}"
            );
        }
        let h = sign("0ne1/registrations/dev-2", None);
        assert!(verify_device_sas(&h, "0ne1", "dev-1", &[key], now).is_err());
        let h = sign("0ne1/registrations/dev-1", None);
        assert!(verify_device_sas(&h, "0ne1", "dev-1", &[key], 2_000).is_err());
        let other = "AAAAAAAAAAAAAAAAAAAAAA==";
        assert!(verify_device_sas(&h, "0ne1", "dev-1", &[other], now).is_err());
        assert!(
            device_sas("0ne1", "dev-1", key, 2_000).contains("sr=0ne1%2Fregistrations%2Fdev-1")
        );
    }
}

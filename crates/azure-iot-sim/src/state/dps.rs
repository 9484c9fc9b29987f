//! One DPS instance: individual enrollments, enrollment groups and registration states.
//!
//! Records are kept as the JSON the client sent (unknown fields round-trip), normalised on write:
//! symmetric keys generated when absent, certificates kept raw next to their computed `info`.
//! Renderings that hide secrets live in `dps_service`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{IdGen, Precondition, SasPolicy, timestamp};
use crate::clock::Clock;
use crate::config::ExistingPutPolicy;
use crate::x509;

/// A failed DPS operation: HTTP status, DPS numeric error code, message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct DpsOpError {
    /// HTTP status.
    pub status: u16,
    /// DPS six-digit error code.
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

impl DpsOpError {
    /// 400 with errorCode 400004.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: 400_004,
            message: message.into(),
        }
    }

    /// 404 with errorCode 404201 (no enrollment or registration for the id).
    pub fn not_found(what: &str, id: &str) -> Self {
        Self {
            status: 404,
            code: 404_201,
            message: format!("{what} with id {id} not found"),
        }
    }

    /// 412 (ETag mismatch).
    pub fn precondition_failed() -> Self {
        Self {
            status: 412,
            code: 412_001,
            message: "Precondition failed: the ETag does not match".into(),
        }
    }

    /// 409 (record already exists).
    pub fn conflict(id: &str) -> Self {
        Self {
            status: 409,
            code: 409_201,
            message: format!("A record with id {id} already exists"),
        }
    }
}

/// Individual enrollment or enrollment group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentKind {
    /// `/enrollments`.
    Individual,
    /// `/enrollmentGroups`.
    Group,
}

impl EnrollmentKind {
    /// The JSON field holding the id.
    pub fn id_field(self) -> &'static str {
        match self {
            Self::Individual => "registrationId",
            Self::Group => "enrollmentGroupId",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Individual => "Enrollment",
            Self::Group => "Enrollment group",
        }
    }
}

/// A hub linked to a DPS instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedHub {
    /// Host name (lower case).
    pub host: String,
    /// Weight for hashed allocation.
    pub allocation_weight: u32,
    /// Whether the hub takes part in the DPS-level allocation.
    pub apply_allocation_policy: bool,
}

/// A registration state and the group it came through (None: individual enrollment).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRegistration {
    /// Enrollment group id, if the device registered through a group.
    pub group_id: Option<String>,
    /// The DeviceRegistrationState JSON.
    pub state: Value,
}

/// One page of a listing: the items and the key to continue after (None on the last page).
#[derive(Debug, Clone)]
pub struct Page {
    /// Items of this page.
    pub items: Vec<Value>,
    /// Key of the last item when more follow.
    pub next_after: Option<String>,
}

#[derive(Debug, Default)]
struct DpsData {
    enrollments: BTreeMap<String, Value>,
    groups: BTreeMap<String, Value>,
    registrations: BTreeMap<String, StoredRegistration>,
}

impl DpsData {
    fn map(&mut self, kind: EnrollmentKind) -> &mut BTreeMap<String, Value> {
        match kind {
            EnrollmentKind::Individual => &mut self.enrollments,
            EnrollmentKind::Group => &mut self.groups,
        }
    }
}

/// One simulated DPS instance.
#[derive(Debug)]
pub struct DpsInstance {
    /// Resource name.
    pub name: String,
    /// Service host name (lower case), the `sr` of service tokens.
    pub host: String,
    /// ID scope used by the device API.
    pub id_scope: String,
    /// Shared access policies.
    pub policies: Vec<SasPolicy>,
    linked_hubs: Mutex<Vec<LinkedHub>>,
    data: Mutex<DpsData>,
    ids: Arc<IdGen>,
    clock: Arc<dyn Clock>,
}

/// Checks a registration or group id: ≤128 of `a-z0-9 : . _ -`, case-insensitive.
pub fn validate_id(id: &str) -> Result<(), DpsOpError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DpsOpError {
            status: 400,
            code: 400_004,
            message: format!(
                "The id '{id}' is invalid: at most 128 characters among a-z, 0-9, ':', '.', '_', '-'"
            ),
        })
    }
}

fn key_of(id: &str) -> String {
    id.to_ascii_lowercase()
}

impl DpsInstance {
    pub(super) fn new(
        name: String,
        host: String,
        id_scope: String,
        policies: Vec<SasPolicy>,
        linked: Vec<LinkedHub>,
        ids: Arc<IdGen>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            name,
            host,
            id_scope,
            policies,
            linked_hubs: Mutex::new(linked),
            data: Mutex::new(DpsData::default()),
            ids,
            clock,
        }
    }

    /// A policy by name (case-insensitive).
    pub fn policy(&self, name: &str) -> Option<&SasPolicy> {
        self.policies
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The hubs linked to this instance.
    pub fn linked_hubs(&self) -> Vec<LinkedHub> {
        self.linked_hubs.lock().clone()
    }

    /// Replaces the linked hubs (tests of "no usable linked hub"; hosts are not checked here).
    pub fn set_linked_hubs(&self, hubs: Vec<LinkedHub>) {
        *self.linked_hubs.lock() = hubs;
    }

    fn now(&self) -> String {
        timestamp(self.clock.now_utc())
    }

    /// Stored (full, secrets included) form of an individual enrollment, looked up case-insensitively.
    pub fn find_enrollment(&self, registration_id: &str) -> Option<Value> {
        self.data
            .lock()
            .enrollments
            .get(&key_of(registration_id))
            .cloned()
    }

    /// Stored form of an enrollment group.
    pub fn find_group(&self, group_id: &str) -> Option<Value> {
        self.data.lock().groups.get(&key_of(group_id)).cloned()
    }

    /// Stored form of an enrollment or group.
    pub fn get(&self, kind: EnrollmentKind, id: &str) -> Option<Value> {
        self.data.lock().map(kind).get(&key_of(id)).cloned()
    }

    /// All enrollment groups (stored form), ordered by id.
    pub fn list_groups(&self) -> Vec<Value> {
        self.data.lock().groups.values().cloned().collect()
    }

    /// All individual enrollments (stored form), ordered by id.
    pub fn list_enrollments(&self) -> Vec<Value> {
        self.data.lock().enrollments.values().cloned().collect()
    }

    /// Creates or replaces an enrollment or group (full replace), honouring If-Match.
    ///
    /// Returns the stored form (with keys and raw certificates).
    pub fn put(
        &self,
        kind: EnrollmentKind,
        id: &str,
        body: Value,
        cond: &Precondition,
        existing_policy: ExistingPutPolicy,
    ) -> Result<Value, DpsOpError> {
        validate_id(id)?;
        let mut data = self.data.lock();
        let linked = self.linked_hubs.lock().clone();
        let key = key_of(id);
        let previous = data.map(kind).get(&key).cloned();
        match (&previous, cond) {
            (Some(_), Precondition::None) if existing_policy == ExistingPutPolicy::Conflict => {
                return Err(DpsOpError::conflict(id));
            }
            (Some(p), c) if !c.matches(p.get("etag").and_then(Value::as_str)) => {
                return Err(DpsOpError::precondition_failed());
            }
            (None, Precondition::Etag(_)) => return Err(DpsOpError::precondition_failed()),
            _ => {}
        }
        let stored = self.normalize(kind, id, body, previous.as_ref(), &linked)?;
        data.map(kind).insert(key, stored.clone());
        Ok(stored)
    }

    /// Deletes an enrollment or group, honouring If-Match; registration states are left alone for groups.
    ///
    /// Deleting an individual enrollment also removes its registration state, as DPS does.
    pub fn delete(
        &self,
        kind: EnrollmentKind,
        id: &str,
        cond: &Precondition,
    ) -> Result<Value, DpsOpError> {
        let mut data = self.data.lock();
        let key = key_of(id);
        let Some(cur) = data.map(kind).get(&key) else {
            return Err(DpsOpError::not_found(kind.noun(), id));
        };
        if !cond.matches(cur.get("etag").and_then(Value::as_str)) {
            return Err(DpsOpError::precondition_failed());
        }
        let removed = data.map(kind).remove(&key).unwrap_or(Value::Null);
        if kind == EnrollmentKind::Individual
            && data
                .registrations
                .get(&key)
                .is_some_and(|r| r.group_id.is_none())
        {
            data.registrations.remove(&key);
        }
        Ok(removed)
    }

    /// A page of enrollments or groups in id order, after `after` (exclusive).
    pub fn page(&self, kind: EnrollmentKind, after: Option<&str>, limit: usize) -> Page {
        let mut data = self.data.lock();
        page_of(after_range(data.map(kind), after), limit)
    }

    /// The registration state of a device, if any.
    pub fn registration(&self, registration_id: &str) -> Option<StoredRegistration> {
        self.data
            .lock()
            .registrations
            .get(&key_of(registration_id))
            .cloned()
    }

    /// Writes a registration state (device API): sets etag and timestamps, keeps the creation time.
    ///
    /// `state` must carry `registrationId`; returns the stored state.
    pub fn upsert_registration(
        &self,
        group_id: Option<&str>,
        mut state: Value,
    ) -> Result<Value, DpsOpError> {
        let id = state
            .get("registrationId")
            .and_then(Value::as_str)
            .ok_or_else(|| DpsOpError::bad_request("registrationId is required"))?
            .to_string();
        validate_id(&id)?;
        let now = self.now();
        let mut data = self.data.lock();
        let key = key_of(&id);
        let created = data
            .registrations
            .get(&key)
            .and_then(|r| r.state.get("createdDateTimeUtc").cloned())
            .unwrap_or_else(|| Value::String(now.clone()));
        if let Some(obj) = state.as_object_mut() {
            obj.insert("createdDateTimeUtc".into(), created);
            obj.insert("lastUpdatedDateTimeUtc".into(), Value::String(now));
            obj.insert("etag".into(), Value::String(self.ids.dps_etag()));
        }
        data.registrations.insert(
            key,
            StoredRegistration {
                group_id: group_id.map(str::to_string),
                state: state.clone(),
            },
        );
        Ok(state)
    }

    /// Puts an existing registration record in `status` the way DPS shows it mid-operation (`assigning` while a
    /// re-registration is in flight) or after an unassignment, keeping `assignedHub` and `deviceId` from its
    /// last assignment. Returns the stored record; `None` when the device has no record.
    pub fn set_registration_status(&self, registration_id: &str, status: &str) -> Option<Value> {
        let now = self.now();
        let mut data = self.data.lock();
        let record = data.registrations.get_mut(&key_of(registration_id))?;
        if let Some(obj) = record.state.as_object_mut() {
            obj.insert("status".into(), Value::String(status.to_string()));
            obj.insert("lastUpdatedDateTimeUtc".into(), Value::String(now));
            obj.insert("etag".into(), Value::String(self.ids.dps_etag()));
        }
        Some(record.state.clone())
    }

    /// Deletes a registration state, honouring If-Match.
    pub fn delete_registration(
        &self,
        registration_id: &str,
        cond: &Precondition,
    ) -> Result<(), DpsOpError> {
        let mut data = self.data.lock();
        let key = key_of(registration_id);
        let Some(cur) = data.registrations.get(&key) else {
            return Err(DpsOpError::not_found("Registration", registration_id));
        };
        if !cond.matches(cur.state.get("etag").and_then(Value::as_str)) {
            return Err(DpsOpError::precondition_failed());
        }
        data.registrations.remove(&key);
        Ok(())
    }

    /// A page of the registration states of one group, in registration-id order.
    pub fn registrations_page(&self, group_id: &str, after: Option<&str>, limit: usize) -> Page {
        let data = self.data.lock();
        let gid = key_of(group_id);
        let iter = after_range(&data.registrations, after)
            .filter(|(_, r)| r.group_id.as_deref().is_some_and(|g| key_of(g) == gid))
            .map(|(k, r)| (k, &r.state));
        page_of(iter, limit)
    }

    /// Counts of records, for snapshots and tests.
    pub fn counts(&self) -> (usize, usize, usize) {
        let d = self.data.lock();
        (d.enrollments.len(), d.groups.len(), d.registrations.len())
    }

    pub(super) fn clear(&self) {
        *self.data.lock() = DpsData::default();
    }

    /// The instance and its data as JSON (secrets included; for tests and the admin API).
    pub fn snapshot(&self) -> Value {
        let d = self.data.lock();
        json!({
            "name": self.name,
            "host": self.host,
            "idScope": self.id_scope,
            "linkedHubs": *self.linked_hubs.lock(),
            "enrollments": d.enrollments.values().collect::<Vec<_>>(),
            "enrollmentGroups": d.groups.values().collect::<Vec<_>>(),
            "registrations": d.registrations.values().map(|r| json!({"groupId": r.group_id, "state": r.state})).collect::<Vec<_>>(),
        })
    }

    /// Normalises a PUT body into the stored form.
    fn normalize(
        &self,
        kind: EnrollmentKind,
        id: &str,
        body: Value,
        previous: Option<&Value>,
        linked: &[LinkedHub],
    ) -> Result<Value, DpsOpError> {
        let Value::Object(mut obj) = body else {
            return Err(DpsOpError::bad_request(
                "The request body must be a JSON object",
            ));
        };
        let field = kind.id_field();
        match obj.get(field).and_then(Value::as_str) {
            Some(body_id) if body_id.eq_ignore_ascii_case(id) => {}
            Some(body_id) => {
                return Err(DpsOpError::bad_request(format!(
                    "The {field} in the body ('{body_id}') does not match the one in the path ('{id}')"
                )));
            }
            None => return Err(DpsOpError::bad_request(format!("{field} is required"))),
        }
        if kind == EnrollmentKind::Group && obj.contains_key("registrationId") {
            return Err(DpsOpError::bad_request(
                "An enrollment group has no registrationId",
            ));
        }
        for ro in [
            "registrationState",
            "createdDateTimeUtc",
            "lastUpdatedDateTimeUtc",
            "etag",
        ] {
            obj.remove(ro);
        }
        let attestation = obj.remove("attestation").filter(|a| !a.is_null());
        let Some(attestation) = attestation else {
            return Err(DpsOpError::bad_request("attestation is required"));
        };
        let prev_att = previous.and_then(|p| p.get("attestation"));
        let att = self.normalize_attestation(kind, attestation, prev_att)?;
        obj.insert("attestation".into(), att);

        match obj.get("provisioningStatus") {
            None | Some(Value::Null) => {
                obj.insert("provisioningStatus".into(), json!("enabled"));
            }
            Some(Value::String(s)) if s == "enabled" || s == "disabled" => {}
            Some(other) => {
                return Err(DpsOpError::bad_request(format!(
                    "provisioningStatus {other} is not enabled or disabled"
                )));
            }
        }
        if let Some(p) = obj.get("allocationPolicy").filter(|p| !p.is_null()) {
            let ok = p
                .as_str()
                .is_some_and(|s| matches!(s, "hashed" | "geoLatency" | "static" | "custom"));
            if !ok {
                return Err(DpsOpError::bad_request(format!(
                    "allocationPolicy {p} is invalid"
                )));
            }
        }
        if let Some(hubs) = obj.get("iotHubs").and_then(Value::as_array) {
            for h in hubs {
                let host = h.as_str().unwrap_or_default();
                if !linked.iter().any(|l| l.host.eq_ignore_ascii_case(host)) {
                    return Err(DpsOpError::bad_request(format!(
                        "IoT hub '{host}' is not linked to this service"
                    )));
                }
            }
        }
        if obj.get("capabilities").is_none_or(Value::is_null) {
            obj.insert("capabilities".into(), json!({"iotEdge": false}));
        }
        if obj.get("reprovisionPolicy").is_none_or(Value::is_null) {
            obj.insert(
                "reprovisionPolicy".into(),
                json!({"updateHubAssignment": true, "migrateDeviceData": true}),
            );
        }
        let now = self.now();
        let created = previous
            .and_then(|p| p.get("createdDateTimeUtc").cloned())
            .unwrap_or_else(|| json!(now));
        obj.insert("etag".into(), json!(self.ids.dps_etag()));
        obj.insert("createdDateTimeUtc".into(), created);
        obj.insert("lastUpdatedDateTimeUtc".into(), json!(now));
        Ok(Value::Object(obj))
    }

    fn normalize_attestation(
        &self,
        kind: EnrollmentKind,
        att: Value,
        prev: Option<&Value>,
    ) -> Result<Value, DpsOpError> {
        let Value::Object(mut att) = att else {
            return Err(DpsOpError::bad_request("attestation must be an object"));
        };
        let ty = att
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Only the section of the declared type is kept; the others are null in SDK bodies.
        let mut out = Map::new();
        out.insert("type".into(), json!(ty));
        match ty.as_str() {
            "symmetricKey" => {
                let sk = att.remove("symmetricKey").unwrap_or(Value::Null);
                let mut keys = Map::new();
                for slot in ["primaryKey", "secondaryKey"] {
                    let key = match sk
                        .get(slot)
                        .and_then(Value::as_str)
                        .filter(|k| !k.is_empty())
                    {
                        Some(k) => {
                            let raw = crate::sas::key_bytes(k).map_err(|_| {
                                DpsOpError::bad_request(format!(
                                    "symmetricKey.{slot} is not base64"
                                ))
                            })?;
                            if !(16..=64).contains(&raw.len()) {
                                return Err(DpsOpError::bad_request(format!(
                                    "symmetricKey.{slot} must decode to 16..64 bytes"
                                )));
                            }
                            k.to_string()
                        }
                        // DPS generates keys that the request leaves out (64 bytes, like the portal's).
                        None => self.ids.key(64),
                    };
                    keys.insert(slot.into(), json!(key));
                }
                out.insert("symmetricKey".into(), Value::Object(keys));
            }
            "tpm" => {
                if kind == EnrollmentKind::Group {
                    return Err(DpsOpError::bad_request(
                        "Enrollment groups do not support TPM attestation",
                    ));
                }
                let tpm = att.remove("tpm").unwrap_or(Value::Null);
                if tpm
                    .get("endorsementKey")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(DpsOpError::bad_request("tpm.endorsementKey is required"));
                }
                out.insert("tpm".into(), tpm);
            }
            "x509" => {
                let x = att.remove("x509").unwrap_or(Value::Null);
                let prev_x = prev.and_then(|p| p.get("x509"));
                out.insert("x509".into(), normalize_x509(kind, &x, prev_x)?);
            }
            "none" => {}
            other => {
                return Err(DpsOpError::bad_request(format!(
                    "attestation.type '{other}' is not one of tpm, x509, symmetricKey, none"
                )));
            }
        }
        Ok(Value::Object(out))
    }
}

/// Entries of `map` strictly after `after` (all when `None`), in key order.
pub(super) fn after_range<'a, V>(
    map: &'a BTreeMap<String, V>,
    after: Option<&str>,
) -> std::collections::btree_map::Range<'a, String, V> {
    match after {
        Some(a) => map.range::<str, _>((Bound::Excluded(a), Bound::Unbounded)),
        None => map.range::<str, _>((Bound::Unbounded, Bound::Unbounded)),
    }
}

/// Takes up to `limit` items; `next_after` is set only when more follow.
pub(super) fn page_of<'a>(
    iter: impl Iterator<Item = (&'a String, &'a Value)>,
    limit: usize,
) -> Page {
    let limit = limit.max(1);
    let mut iter = iter.peekable();
    let mut items = Vec::new();
    let mut last = None;
    while items.len() < limit {
        let Some((k, v)) = iter.next() else { break };
        items.push(v.clone());
        last = Some(k.clone());
    }
    let more = iter.peek().is_some();
    Page {
        items,
        next_after: if more { last } else { None },
    }
}

/// Normalises the x509 section: each certificate kept raw with its computed `info`.
fn normalize_x509(
    kind: EnrollmentKind,
    x: &Value,
    prev: Option<&Value>,
) -> Result<Value, DpsOpError> {
    let mut out = Map::new();
    let certs_field = match kind {
        EnrollmentKind::Individual => "clientCertificates",
        EnrollmentKind::Group => "signingCertificates",
    };
    let wrong_field = match kind {
        EnrollmentKind::Individual => "signingCertificates",
        EnrollmentKind::Group => "clientCertificates",
    };
    if x.get(wrong_field).is_some_and(|v| !v.is_null()) {
        return Err(DpsOpError::bad_request(format!(
            "x509.{wrong_field} is not valid here; use {certs_field}"
        )));
    }
    let certs_in = x.get(certs_field).filter(|v| !v.is_null());
    let ca_in = x.get("caReferences").filter(|v| !v.is_null());
    match (certs_in, ca_in) {
        (Some(c), None) => {
            let mut set = Map::new();
            for slot in ["primary", "secondary"] {
                let entry = c.get(slot).filter(|v| !v.is_null());
                let prev_entry = prev
                    .and_then(|p| p.get(certs_field))
                    .and_then(|p| p.get(slot));
                if let Some(e) = entry {
                    set.insert(slot.into(), normalize_cert_entry(e, prev_entry, slot)?);
                } else if slot == "primary" {
                    return Err(DpsOpError::bad_request(format!(
                        "x509.{certs_field}.primary is required"
                    )));
                }
            }
            out.insert(certs_field.into(), Value::Object(set));
        }
        (None, Some(ca)) => {
            if ca
                .get("primary")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(DpsOpError::bad_request(
                    "x509.caReferences.primary is required",
                ));
            }
            out.insert("caReferences".into(), ca.clone());
        }
        (Some(_), Some(_)) => {
            return Err(DpsOpError::bad_request(format!(
                "x509 takes either {certs_field} or caReferences, not both"
            )));
        }
        (None, None) => {
            return Err(DpsOpError::bad_request(format!(
                "x509 needs {certs_field} or caReferences"
            )));
        }
    }
    Ok(Value::Object(out))
}

/// A certificate entry: a new `certificate` is parsed; an entry echoing only `info` keeps the stored certificate.
fn normalize_cert_entry(e: &Value, prev: Option<&Value>, slot: &str) -> Result<Value, DpsOpError> {
    if let Some(text) = e
        .get("certificate")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
    {
        let der = x509::parse_certificate(text)
            .map_err(|err| DpsOpError::bad_request(format!("{slot} certificate: {err}")))?;
        let info = x509::certificate_info(&der)
            .map_err(|err| DpsOpError::bad_request(format!("{slot} certificate: {err}")))?;
        return Ok(json!({"certificate": text, "info": info}));
    }
    // Echo of a GET body: accepted when it names the certificate already stored in this slot.
    let thumb = e
        .get("info")
        .and_then(|i| i.get("sha1Thumbprint"))
        .and_then(Value::as_str);
    let prev_thumb = prev
        .and_then(|p| p.get("info"))
        .and_then(|i| i.get("sha1Thumbprint"))
        .and_then(Value::as_str);
    match (thumb, prev_thumb, prev) {
        (Some(t), Some(pt), Some(p)) if t.eq_ignore_ascii_case(pt) => Ok(p.clone()),
        _ => Err(DpsOpError::bad_request(format!(
            "the {slot} certificate is required"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn instance() -> DpsInstance {
        let linked = vec![LinkedHub {
            host: "hub.azure-devices.net".into(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        }];
        DpsInstance::new(
            "d".into(),
            "d.azure-devices-provisioning.net".into(),
            "0ne00000001".into(),
            Vec::new(),
            linked,
            Arc::new(IdGen::new(1)),
            Arc::new(SystemClock::new()),
        )
    }

    fn put(
        d: &DpsInstance,
        kind: EnrollmentKind,
        id: &str,
        body: Value,
    ) -> Result<Value, DpsOpError> {
        d.put(
            kind,
            id,
            body,
            &Precondition::None,
            ExistingPutPolicy::Replace,
        )
    }

    #[test]
    fn keeps_given_keys_and_refuses_bad_ones() {
        let d = instance();
        let k = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let body = json!({"registrationId": "a", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": k}}});
        let stored = put(&d, EnrollmentKind::Individual, "a", body).unwrap();
        assert_eq!(stored["attestation"]["symmetricKey"]["primaryKey"], k);
        assert_ne!(stored["attestation"]["symmetricKey"]["secondaryKey"], k);
        let bad = json!({"registrationId": "a", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "c2hvcnQ="}}});
        assert_eq!(
            put(&d, EnrollmentKind::Individual, "a", bad)
                .unwrap_err()
                .status,
            400
        );
        let bad_type = json!({"registrationId": "a", "attestation": {"type": "magic"}});
        assert_eq!(
            put(&d, EnrollmentKind::Individual, "a", bad_type)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn an_info_echo_must_name_the_stored_certificate() {
        let d = instance();
        let ck = rcgen::generate_simple_self_signed(vec!["dev-x".to_string()]).unwrap();
        let body = json!({"registrationId": "dev-x", "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": ck.cert.pem()}}}}});
        let stored = put(&d, EnrollmentKind::Individual, "dev-x", body).unwrap();
        let info = stored["attestation"]["x509"]["clientCertificates"]["primary"]["info"].clone();
        let echo = json!({"registrationId": "dev-x", "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"info": info}}}}});
        assert!(put(&d, EnrollmentKind::Individual, "dev-x", echo).is_ok());
        let wrong = json!({"registrationId": "dev-x", "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"info": {"sha1Thumbprint": "00"}}}}}});
        assert_eq!(
            put(&d, EnrollmentKind::Individual, "dev-x", wrong)
                .unwrap_err()
                .status,
            400
        );
        let group_with_client = json!({"enrollmentGroupId": "g", "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": ck.cert.pem()}}}}});
        assert_eq!(
            put(&d, EnrollmentKind::Group, "g", group_with_client)
                .unwrap_err()
                .status,
            400
        );
        let ca_ref = json!({"enrollmentGroupId": "g", "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "my-ca"}}}});
        assert!(put(&d, EnrollmentKind::Group, "g", ca_ref).is_ok());
    }

    #[test]
    fn pages_in_id_order_and_reports_more() {
        let d = instance();
        for i in 0..5 {
            let id = format!("r{i}");
            put(
                &d,
                EnrollmentKind::Individual,
                &id,
                json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}),
            )
            .unwrap();
        }
        let p1 = d.page(EnrollmentKind::Individual, None, 2);
        assert_eq!(p1.next_after.as_deref(), Some("r1"));
        let p3 = d.page(EnrollmentKind::Individual, Some("r3"), 2);
        assert_eq!(p3.items.len(), 1);
        assert_eq!(p3.next_after, None);
        assert!(validate_id("UPPER:ok.id_1-2").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
    }
}

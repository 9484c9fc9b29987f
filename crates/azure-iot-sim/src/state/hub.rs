//! One IoT hub's identity registry: devices (full-replace semantics), bulk operations, twin query.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{IdGen, NEVER, Page, Precondition, SasPolicy, tier_name, timestamp};
use crate::clock::Clock;
use crate::config::HubTier;

/// A failed hub operation: HTTP status, error name (`iothub-errorcode`), numeric code, message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {name} ({code}): {message}")]
pub struct HubOpError {
    /// HTTP status.
    pub status: u16,
    /// Error name, e.g. `DeviceNotFound`.
    pub name: &'static str,
    /// Six-digit code, e.g. 404001.
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

impl HubOpError {
    /// 400 ArgumentInvalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            name: "ArgumentInvalid",
            code: 400_004,
            message: message.into(),
        }
    }

    /// 400 ArgumentNull.
    pub fn null(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            name: "ArgumentNull",
            code: 400_005,
            message: message.into(),
        }
    }

    /// 404 DeviceNotFound.
    pub fn not_found(id: &str) -> Self {
        Self {
            status: 404,
            name: "DeviceNotFound",
            code: 404_001,
            message: format!("Device {id} not registered"),
        }
    }

    /// 409 DeviceAlreadyExists.
    pub fn already_exists(id: &str) -> Self {
        Self {
            status: 409,
            name: "DeviceAlreadyExists",
            code: 409_001,
            message: format!("A device with ID '{id}' is already registered."),
        }
    }

    /// 412 PreconditionFailed.
    pub fn precondition_failed(id: &str) -> Self {
        Self {
            status: 412,
            name: "PreconditionFailed",
            code: 412_001,
            message: format!("Precondition failed: Device {id} has a different ETag"),
        }
    }
}

/// A device identity and its twin state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDevice {
    /// The Device JSON (secrets included).
    pub device: Value,
    /// Twin `tags`.
    pub tags: Value,
    /// Twin desired properties (without `$metadata`/`$version`).
    pub desired: Value,
    /// Twin reported properties.
    pub reported: Value,
    /// Twin version, bumped on every twin change.
    pub twin_version: u64,
}

#[derive(Debug, Default)]
struct HubData {
    devices: BTreeMap<String, StoredDevice>,
    etag_counter: u64,
}

/// Comparison of one twin query condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    In,
}

/// A parsed twin query:
/// `SELECT * FROM devices [WHERE a = 'x' [AND b != 'y'] [AND c IN ['p', 'q']] ...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinQuery {
    conditions: Vec<(Vec<String>, Op, Vec<Value>)>,
}

impl TwinQuery {
    /// Parses the subset of the IoT Hub query language the simulator supports.
    pub fn parse(q: &str) -> Result<Self, HubOpError> {
        let unsupported =
            || HubOpError::invalid(format!("Query not supported by the simulator: {q}"));
        let trimmed = q.trim();
        let lower = trimmed.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("select")
            .ok_or_else(unsupported)?
            .trim_start();
        let rest = rest.strip_prefix('*').ok_or_else(unsupported)?.trim_start();
        let rest = rest
            .strip_prefix("from")
            .ok_or_else(unsupported)?
            .trim_start();
        let rest = rest.strip_prefix("devices").ok_or_else(unsupported)?;
        let offset = trimmed.len() - rest.len();
        let rest_orig = trimmed[offset..].trim();
        if rest_orig.is_empty() {
            return Ok(Self {
                conditions: Vec::new(),
            });
        }
        let lower_rest = rest_orig.to_ascii_lowercase();
        if !lower_rest.starts_with("where ") {
            return Err(unsupported());
        }
        let conditions = split_outside_quotes(rest_orig[6..].trim(), " and ")
            .into_iter()
            .map(parse_condition)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(unsupported)?;
        Ok(Self { conditions })
    }

    /// Whether a twin satisfies every condition.
    pub fn matches(&self, twin: &Value) -> bool {
        self.conditions.iter().all(|(path, op, wanted)| {
            let mut cur = twin;
            for seg in path {
                cur = match cur.get(seg) {
                    Some(v) => v,
                    None => return *op == Op::Ne,
                };
            }
            let hit = wanted.iter().any(|w| match (cur, w) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (a, b) => a == b,
            });
            if *op == Op::Ne { !hit } else { hit }
        })
    }
}

/// One `path op literal` condition; `None` when outside the supported subset.
fn parse_condition(part: &str) -> Option<(Vec<String>, Op, Vec<Value>)> {
    // Operators are looked for before the first literal so quoted text cannot fool the split.
    let head_end = part.find(['\'', '[']).unwrap_or(part.len());
    let head = part[..head_end].to_ascii_lowercase();
    let (lhs, op, rhs) = if let Some(i) = head.find(" in ") {
        (&part[..i], Op::In, &part[i + 4..])
    } else if let Some(i) = head.find("!=").or_else(|| head.find("<>")) {
        (&part[..i], Op::Ne, &part[i + 2..])
    } else if let Some(i) = head.find('=') {
        (&part[..i], Op::Eq, &part[i + 1..])
    } else {
        return None;
    };
    let path: Vec<String> = lhs.trim().split('.').map(str::to_string).collect();
    if path.iter().any(|s| s.is_empty() || s.contains(' ')) {
        return None;
    }
    let rhs = rhs.trim();
    let values = if op == Op::In {
        let inner = rhs.strip_prefix('[')?.strip_suffix(']')?;
        split_outside_quotes(inner, ",")
            .into_iter()
            .map(literal)
            .collect::<Option<Vec<_>>>()?
    } else {
        vec![literal(rhs)?]
    };
    Some((path, op, values))
}

/// A string ('…'), boolean or number literal.
fn literal(text: &str) -> Option<Value> {
    let t = text.trim();
    if t.len() >= 2 && t.starts_with('\'') && t.ends_with('\'') {
        Some(Value::String(t[1..t.len() - 1].to_string()))
    } else if t.eq_ignore_ascii_case("true") {
        Some(Value::Bool(true))
    } else if t.eq_ignore_ascii_case("false") {
        Some(Value::Bool(false))
    } else {
        t.parse::<f64>().ok().map(|n| json!(n))
    }
}

/// Splits on `sep` (ASCII, matched case-insensitively) outside single quotes.
fn split_outside_quotes<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let lower = s.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quote = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            in_quote = !in_quote;
        } else if !in_quote && lower[i..].starts_with(sep) {
            parts.push(&s[start..i]);
            start = i + sep.len();
            i += sep.len();
            continue;
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// Checks a hub device id: ≤128 ASCII letters, digits and `- : . + % _ # * ? ! ( ) , = @ $ '`.
pub fn validate_device_id(id: &str) -> Result<(), HubOpError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-:.+%_#*?!(),=@$'".contains(c));
    if ok {
        Ok(())
    } else {
        Err(HubOpError::invalid(format!("Device ID '{id}' is invalid")))
    }
}

/// One simulated IoT hub.
#[derive(Debug)]
pub struct HubInstance {
    /// Host name (lower case), the `sr` of tokens.
    pub host: String,
    /// Pricing tier.
    pub tier: HubTier,
    /// Units.
    pub units: u32,
    /// Shared access policies.
    pub policies: Vec<SasPolicy>,
    data: Mutex<HubData>,
    ids: Arc<IdGen>,
    clock: Arc<dyn Clock>,
}

/// Device counts of a hub's identity registry (the swagger's `RegistryStatistics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatistics {
    /// Every device identity.
    pub total: u64,
    /// Those with status `enabled`.
    pub enabled: u64,
    /// Those with status `disabled`.
    pub disabled: u64,
}

/// The outcome of one bulk item.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkItemError {
    /// Device id.
    pub device_id: String,
    /// Error name, e.g. `DeviceNotFound`.
    pub error_code: &'static str,
    /// Message.
    pub error_status: String,
    /// The import mode of the item.
    pub operation: String,
}

impl HubInstance {
    pub(super) fn new(
        host: String,
        tier: HubTier,
        units: u32,
        policies: Vec<SasPolicy>,
        ids: Arc<IdGen>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let start = ids.number(100_000_000..900_000_000);
        Self {
            host,
            tier,
            units,
            policies,
            data: Mutex::new(HubData {
                devices: BTreeMap::new(),
                etag_counter: start,
            }),
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

    fn now(&self) -> String {
        timestamp(self.clock.now_utc())
    }

    /// A device (full JSON, keys included).
    pub fn get_device(&self, id: &str) -> Option<Value> {
        self.data.lock().devices.get(id).map(|d| d.device.clone())
    }

    /// A device and its twin state.
    pub fn get_stored(&self, id: &str) -> Option<StoredDevice> {
        self.data.lock().devices.get(id).cloned()
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.data.lock().devices.len()
    }

    /// `GET /statistics/devices`: device identities in all, enabled and disabled (the simulator
    /// keeps no module identities, so none are counted; Azure's counts are of devices too).
    pub fn device_statistics(&self) -> DeviceStatistics {
        let data = self.data.lock();
        let disabled = data
            .devices
            .values()
            .filter(|d| d.device.get("status").and_then(Value::as_str) == Some("disabled"))
            .count() as u64;
        let total = data.devices.len() as u64;
        DeviceStatistics {
            total,
            enabled: total - disabled,
            disabled,
        }
    }

    /// `PUT /devices/{id}`: no If-Match creates (409 if present); `*` or an etag replaces (404 if absent).
    pub fn put_device(
        &self,
        id: &str,
        body: Value,
        cond: &Precondition,
    ) -> Result<Value, HubOpError> {
        validate_device_id(id)?;
        let mut data = self.data.lock();
        let prev = data.devices.get(id).cloned();
        match (&prev, cond) {
            (Some(_), Precondition::None) => return Err(HubOpError::already_exists(id)),
            (None, Precondition::Any | Precondition::Etag(_)) => {
                return Err(HubOpError::not_found(id));
            }
            (Some(p), c) if !c.matches(p.device.get("etag").and_then(Value::as_str)) => {
                return Err(HubOpError::precondition_failed(id));
            }
            _ => {}
        }
        self.write_device(&mut data, id, body, prev)
    }

    /// Creates or replaces a device unconditionally (the device API's hub write).
    pub fn upsert_device(&self, id: &str, body: Value) -> Result<Value, HubOpError> {
        validate_device_id(id)?;
        let mut data = self.data.lock();
        let prev = data.devices.get(id).cloned();
        self.write_device(&mut data, id, body, prev)
    }

    /// Replaces the twin tags and desired properties of a device (e.g. a DPS initialTwin).
    pub fn set_twin(
        &self,
        id: &str,
        tags: Option<Value>,
        desired: Option<Value>,
    ) -> Result<(), HubOpError> {
        let mut data = self.data.lock();
        let d = data
            .devices
            .get_mut(id)
            .ok_or_else(|| HubOpError::not_found(id))?;
        if let Some(t) = tags {
            d.tags = t;
        }
        if let Some(p) = desired {
            d.desired = p;
        }
        d.twin_version += 1;
        Ok(())
    }

    fn next_etag(&self, data: &mut HubData) -> String {
        data.etag_counter += 1;
        B64.encode(data.etag_counter.to_string())
    }

    fn write_device(
        &self,
        data: &mut HubData,
        id: &str,
        body: Value,
        prev: Option<StoredDevice>,
    ) -> Result<Value, HubOpError> {
        let device = self.normalize_device(id, body, prev.as_ref().map(|p| &p.device))?;
        let etag = self.next_etag(data);
        let mut device = device;
        device["etag"] = json!(etag);
        let stored = match prev {
            Some(mut p) => {
                p.device = device.clone();
                p
            }
            None => StoredDevice {
                device: device.clone(),
                tags: json!({}),
                desired: json!({}),
                reported: json!({}),
                twin_version: 1,
            },
        };
        data.devices.insert(id.to_string(), stored);
        Ok(device)
    }

    /// `DELETE /devices/{id}`: If-Match is required (`*` or the etag).
    pub fn delete_device(&self, id: &str, cond: &Precondition) -> Result<Value, HubOpError> {
        let mut data = self.data.lock();
        let Some(cur) = data.devices.get(id) else {
            return Err(HubOpError::not_found(id));
        };
        match cond {
            Precondition::None => {
                return Err(HubOpError::null(
                    "The If-Match header is required to delete a device",
                ));
            }
            c if !c.matches(cur.device.get("etag").and_then(Value::as_str)) => {
                return Err(HubOpError::precondition_failed(id));
            }
            _ => {}
        }
        Ok(data
            .devices
            .remove(id)
            .map(|d| d.device)
            .unwrap_or(Value::Null))
    }

    /// `GET /devices?top=N`: the first N devices (1..=1000, anything else is 1000).
    pub fn list_devices(&self, top: Option<i64>) -> Vec<Value> {
        let n = match top {
            Some(t) if (1..=1000).contains(&t) => t as usize,
            _ => 1000,
        };
        self.data
            .lock()
            .devices
            .values()
            .take(n)
            .map(|d| d.device.clone())
            .collect()
    }

    /// One page of twins matching `query`, in device-id order, after `after` (exclusive).
    pub fn query_twins(&self, query: &TwinQuery, after: Option<&str>, limit: usize) -> Page {
        let data = self.data.lock();
        let limit = limit.max(1);
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        for (k, d) in super::dps::after_range(&data.devices, after) {
            let twin = render_twin(d);
            if !query.matches(&twin) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(twin);
            last = Some(k.clone());
        }
        Page {
            items,
            next_after: if more { last } else { None },
        }
    }

    /// `POST /devices` (bulk, at most 100 items, each device once): per-item errors.
    pub fn bulk(&self, items: &[Value]) -> Result<Vec<BulkItemError>, HubOpError> {
        if items.len() > 100 {
            return Err(HubOpError {
                status: 413,
                name: "TooManyDevices",
                code: 413_002,
                message: format!(
                    "Too many devices in one bulk operation: {} (maximum 100)",
                    items.len()
                ),
            });
        }
        if items.is_empty() {
            return Err(HubOpError::invalid("The bulk operation has no devices"));
        }
        let mut seen = HashSet::new();
        for it in items {
            let id = it
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| HubOpError::null("Each device needs an id"))?;
            if !seen.insert(id.to_string()) {
                return Err(HubOpError {
                    status: 400,
                    name: "DeviceDefinedMultipleTimes",
                    code: 400_011,
                    message: format!("Device {id} is defined multiple times in the bulk operation"),
                });
            }
        }
        let mut data = self.data.lock();
        let mut errors = Vec::new();
        for it in items {
            if let Err(e) = self.bulk_item(&mut data, it) {
                errors.push(BulkItemError {
                    device_id: it
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    error_code: e.name,
                    error_status: e.message,
                    operation: it
                        .get("importMode")
                        .and_then(Value::as_str)
                        .unwrap_or("createOrUpdate")
                        .to_string(),
                });
            }
        }
        Ok(errors)
    }

    fn bulk_item(&self, data: &mut HubData, it: &Value) -> Result<(), HubOpError> {
        let id = it.get("id").and_then(Value::as_str).unwrap_or_default();
        validate_device_id(id)?;
        let mode = it
            .get("importMode")
            .and_then(Value::as_str)
            .unwrap_or("createOrUpdate");
        // Azure reads importMode case-insensitively: azure-iothub (Node) sends `Update`, `Delete`,
        // `UpdateIfMatchETag` (conformance/NOTES.md).
        let mode = [
            "create",
            "update",
            "createOrUpdate",
            "updateIfMatchETag",
            "delete",
            "deleteIfMatchETag",
            "updateTwin",
            "updateTwinIfMatchETag",
        ]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(mode))
        .unwrap_or(mode);
        let etag = it
            .get("eTag")
            .and_then(Value::as_str)
            .map(|e| e.trim_matches('"').to_string());
        let prev = data.devices.get(id).cloned();
        let etag_ok = |p: &StoredDevice| {
            Precondition::Etag(etag.clone().unwrap_or_default())
                .matches(p.device.get("etag").and_then(Value::as_str))
        };
        match mode {
            "create" | "update" | "createOrUpdate" | "updateIfMatchETag" => {
                if mode == "create" && prev.is_some() {
                    return Err(HubOpError::already_exists(id));
                }
                if mode == "updateIfMatchETag" && prev.as_ref().is_some_and(|p| !etag_ok(p)) {
                    return Err(HubOpError::precondition_failed(id));
                }
                let body = import_item_to_device(it);
                self.write_device(data, id, body, prev)?;
                Ok(())
            }
            "delete" | "deleteIfMatchETag" => {
                let Some(p) = prev else {
                    return Err(HubOpError::not_found(id));
                };
                if mode == "deleteIfMatchETag" && !etag_ok(&p) {
                    return Err(HubOpError::precondition_failed(id));
                }
                data.devices.remove(id);
                Ok(())
            }
            "updateTwin" | "updateTwinIfMatchETag" => {
                let d = data
                    .devices
                    .get_mut(id)
                    .ok_or_else(|| HubOpError::not_found(id))?;
                if mode == "updateTwinIfMatchETag" {
                    let want = it
                        .get("twinETag")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .trim_matches('"');
                    if want != twin_etag(d.twin_version) {
                        return Err(HubOpError::precondition_failed(id));
                    }
                }
                if let Some(t) = it.get("tags").filter(|v| !v.is_null()) {
                    d.tags = t.clone();
                }
                if let Some(p) = it
                    .get("properties")
                    .and_then(|p| p.get("desired"))
                    .filter(|v| !v.is_null())
                {
                    d.desired = p.clone();
                }
                d.twin_version += 1;
                Ok(())
            }
            other => Err(HubOpError::invalid(format!(
                "importMode '{other}' is not supported"
            ))),
        }
    }

    /// One page of the export of this hub, in device-id order after `after` (exclusive): each device
    /// as an `ExportImportDevice` line (keys as null when `exclude_keys`), and the last id of the page.
    pub fn export_page(
        &self,
        after: Option<&str>,
        limit: usize,
        exclude_keys: bool,
    ) -> (Vec<String>, Option<String>) {
        let data = self.data.lock();
        let mut lines = Vec::new();
        let mut last = None;
        for (k, d) in super::dps::after_range(&data.devices, after).take(limit.max(1)) {
            lines.push(export_device(d, exclude_keys).to_string());
            last = Some(k.clone());
        }
        (lines, last)
    }

    /// Applies one `ExportImportDevice` of an import job, with the job semantics of each
    /// `importMode` (absent: `createOrUpdate`), which differ from bulk `POST /devices`: `update` and
    /// `updateIfMatchETag` of a missing device are errors (Microsoft.Azure.Devices `ImportMode` docs).
    pub fn import_device(&self, it: &Value) -> Result<(), HubOpError> {
        let id = it
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| HubOpError::null("The device has no id"))?;
        validate_device_id(id)?;
        let given = it
            .get("importMode")
            .and_then(Value::as_str)
            .unwrap_or("createOrUpdate");
        // Case-insensitive like the bulk API (the SDKs send `Update`, `Delete`, …).
        let mode = IMPORT_MODES
            .into_iter()
            .find(|m| m.eq_ignore_ascii_case(given))
            .ok_or_else(|| HubOpError::invalid(format!("importMode '{given}' is not supported")))?;
        let etag = it
            .get("eTag")
            .and_then(Value::as_str)
            .map(|e| e.trim_matches('"').to_string());
        let mut data = self.data.lock();
        let prev = data.devices.get(id).cloned();
        let etag_ok = |p: &StoredDevice| {
            etag.as_deref().is_some_and(|e| {
                Precondition::Etag(e.to_string())
                    .matches(p.device.get("etag").and_then(Value::as_str))
            })
        };
        match mode {
            "create"
            | "createOrUpdate"
            | "createOrUpdateIfMatchETag"
            | "update"
            | "updateIfMatchETag" => {
                match (&prev, mode) {
                    (Some(_), "create") => return Err(HubOpError::already_exists(id)),
                    (None, "update" | "updateIfMatchETag") => {
                        return Err(HubOpError::not_found(id));
                    }
                    (Some(p), "updateIfMatchETag" | "createOrUpdateIfMatchETag") if !etag_ok(p) => {
                        return Err(HubOpError::precondition_failed(id));
                    }
                    _ => {}
                }
                // A full replace: no `authentication` means new keys, as Azure does (README §6).
                self.write_device(&mut data, id, import_item_to_device(it), prev)?;
                let d = data
                    .devices
                    .get_mut(id)
                    .ok_or_else(|| HubOpError::not_found(id))?;
                apply_twin(d, it);
                Ok(())
            }
            "delete" | "deleteIfMatchETag" => {
                let Some(p) = prev else {
                    return Err(HubOpError::not_found(id));
                };
                if mode == "deleteIfMatchETag" && !etag_ok(&p) {
                    return Err(HubOpError::precondition_failed(id));
                }
                data.devices.remove(id);
                Ok(())
            }
            _ => {
                // updateTwin, updateTwinIfMatchETag.
                let d = data
                    .devices
                    .get_mut(id)
                    .ok_or_else(|| HubOpError::not_found(id))?;
                if mode == "updateTwinIfMatchETag" {
                    let want = it
                        .get("twinETag")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .trim_matches('"');
                    if want != twin_etag(d.twin_version) {
                        return Err(HubOpError::precondition_failed(id));
                    }
                }
                apply_twin(d, it);
                Ok(())
            }
        }
    }

    /// Normalises a Device body into the stored form (full replace: omitted auth means new keys).
    fn normalize_device(
        &self,
        id: &str,
        body: Value,
        prev: Option<&Value>,
    ) -> Result<Value, HubOpError> {
        let Value::Object(mut obj) = body else {
            return Err(HubOpError::invalid(
                "The request body must be a JSON object",
            ));
        };
        match obj.get("deviceId").and_then(Value::as_str) {
            Some(b) if b != id => {
                return Err(HubOpError::invalid(format!(
                    "The deviceId in the body ('{b}') does not match the path ('{id}')"
                )));
            }
            _ => {}
        }
        obj.insert("deviceId".into(), json!(id));
        let status = match obj.get("status") {
            None | Some(Value::Null) => "enabled".to_string(),
            Some(Value::String(s)) if s == "enabled" || s == "disabled" => s.clone(),
            Some(other) => {
                return Err(HubOpError::invalid(format!(
                    "status {other} is not enabled or disabled"
                )));
            }
        };
        obj.insert("status".into(), json!(status));
        if let Some(r) = obj.get("statusReason").filter(|v| !v.is_null()) {
            let Some(r) = r.as_str() else {
                return Err(HubOpError::invalid("statusReason must be a string"));
            };
            if r.chars().count() > 128 {
                return Err(HubOpError::invalid(
                    "statusReason is longer than 128 characters",
                ));
            }
        }
        let auth = self.normalize_auth(obj.remove("authentication"))?;
        obj.insert("authentication".into(), auth);
        if obj.get("capabilities").is_none_or(Value::is_null) {
            obj.insert("capabilities".into(), json!({"iotEdge": false}));
        }
        let now = self.now();
        let prev_field = |name: &str| {
            prev.and_then(|p| p.get(name))
                .filter(|v| !v.is_null())
                .cloned()
        };
        let generation =
            prev_field("generationId").unwrap_or_else(|| json!(self.ids.generation_id()));
        let prev_status = prev.and_then(|p| p.get("status")).and_then(Value::as_str);
        let status_updated = match prev_status {
            Some(ps) if ps == status => {
                prev_field("statusUpdatedTime").unwrap_or_else(|| json!(NEVER))
            }
            Some(_) => json!(now),
            None if status == "disabled" => json!(now),
            None => json!(NEVER),
        };
        obj.insert("generationId".into(), generation);
        obj.insert("statusUpdatedTime".into(), status_updated);
        obj.insert(
            "connectionState".into(),
            prev_field("connectionState").unwrap_or_else(|| json!("Disconnected")),
        );
        obj.insert(
            "connectionStateUpdatedTime".into(),
            prev_field("connectionStateUpdatedTime").unwrap_or_else(|| json!(NEVER)),
        );
        obj.insert(
            "lastActivityTime".into(),
            prev_field("lastActivityTime").unwrap_or_else(|| json!(NEVER)),
        );
        obj.insert(
            "cloudToDeviceMessageCount".into(),
            prev_field("cloudToDeviceMessageCount").unwrap_or_else(|| json!(0)),
        );
        Ok(Value::Object(obj))
    }

    fn normalize_auth(&self, auth: Option<Value>) -> Result<Value, HubOpError> {
        let auth = auth.filter(|a| !a.is_null()).unwrap_or_else(|| json!({}));
        let sk = auth.get("symmetricKey").filter(|v| !v.is_null());
        let tp = auth.get("x509Thumbprint").filter(|v| !v.is_null());
        let ty = match auth.get("type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None if tp
                .and_then(|t| t.get("primaryThumbprint"))
                .is_some_and(|v| !v.is_null()) =>
            {
                "selfSigned".into()
            }
            None => "sas".into(),
        };
        let null_thumbs = json!({"primaryThumbprint": null, "secondaryThumbprint": null});
        let null_keys = json!({"primaryKey": null, "secondaryKey": null});
        match ty.as_str() {
            "sas" => {
                let mut keys = Map::new();
                for slot in ["primaryKey", "secondaryKey"] {
                    let k = match sk
                        .and_then(|s| s.get(slot))
                        .and_then(Value::as_str)
                        .filter(|k| !k.is_empty())
                    {
                        Some(k) => {
                            let raw = crate::sas::key_bytes(k).map_err(|_| {
                                HubOpError::invalid(format!("symmetricKey.{slot} is not base64"))
                            })?;
                            if !(16..=64).contains(&raw.len()) {
                                return Err(HubOpError::invalid(format!(
                                    "symmetricKey.{slot} must be 16..64 bytes"
                                )));
                            }
                            k.to_string()
                        }
                        // A hub generates keys a create or replace leaves out: this is why a partial PUT resets them.
                        None => self.ids.key(32),
                    };
                    keys.insert(slot.into(), json!(k));
                }
                Ok(json!({"symmetricKey": keys, "x509Thumbprint": null_thumbs, "type": "sas"}))
            }
            "selfSigned" => {
                let mut thumbs = Map::new();
                for (slot, required) in
                    [("primaryThumbprint", true), ("secondaryThumbprint", false)]
                {
                    match tp
                        .and_then(|t| t.get(slot))
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                    {
                        Some(t) => {
                            let ok = (t.len() == 40 || t.len() == 64)
                                && t.chars().all(|c| c.is_ascii_hexdigit());
                            if !ok {
                                return Err(HubOpError::invalid(format!(
                                    "x509Thumbprint.{slot} is not a SHA-1 or SHA-256 hex thumbprint"
                                )));
                            }
                            thumbs.insert(slot.into(), json!(t.to_ascii_uppercase()));
                        }
                        None if required => {
                            return Err(HubOpError::invalid(
                                "selfSigned authentication needs x509Thumbprint.primaryThumbprint",
                            ));
                        }
                        None => {
                            thumbs.insert(slot.into(), Value::Null);
                        }
                    }
                }
                Ok(
                    json!({"symmetricKey": null_keys, "x509Thumbprint": thumbs, "type": "selfSigned"}),
                )
            }
            "certificateAuthority" | "none" => {
                Ok(json!({"symmetricKey": null_keys, "x509Thumbprint": null_thumbs, "type": ty}))
            }
            other => Err(HubOpError::invalid(format!(
                "authentication.type '{other}' is invalid"
            ))),
        }
    }

    pub(super) fn clear(&self) {
        self.data.lock().devices.clear();
    }

    /// The instance and its data as JSON (secrets included; for tests and the admin API).
    pub fn snapshot(&self) -> Value {
        let d = self.data.lock();
        json!({
            "host": self.host,
            "tier": tier_name(self.tier),
            "units": self.units,
            "devices": d.devices.values().map(|s| s.device.clone()).collect::<Vec<_>>(),
        })
    }
}

/// Twin etag: base64 of the big-endian version, as hubs print it (`AAAAAAAAAAE=`).
fn twin_etag(version: u64) -> String {
    B64.encode(version.to_be_bytes())
}

/// The Twin a query returns for a device.
pub fn render_twin(d: &StoredDevice) -> Value {
    let dev = &d.device;
    let g = |k: &str| dev.get(k).cloned().unwrap_or(Value::Null);
    let auth = dev.get("authentication");
    let mut desired = d.desired.as_object().cloned().unwrap_or_default();
    desired.insert("$version".into(), json!(d.twin_version));
    let mut reported = d.reported.as_object().cloned().unwrap_or_default();
    reported.insert("$version".into(), json!(1));
    json!({
        "deviceId": g("deviceId"),
        "etag": twin_etag(d.twin_version),
        "deviceEtag": g("etag"),
        "status": g("status"),
        "statusReason": g("statusReason"),
        "statusUpdateTime": g("statusUpdatedTime"),
        "connectionState": g("connectionState"),
        "lastActivityTime": g("lastActivityTime"),
        "cloudToDeviceMessageCount": g("cloudToDeviceMessageCount"),
        "authenticationType": auth.and_then(|a| a.get("type")).cloned().unwrap_or(Value::Null),
        "x509Thumbprint": auth.and_then(|a| a.get("x509Thumbprint")).cloned().unwrap_or(Value::Null),
        "version": d.twin_version,
        "tags": d.tags,
        "properties": {"desired": desired, "reported": reported},
        "capabilities": g("capabilities"),
    })
}

/// The import modes of an import job (azure-specs README §6).
const IMPORT_MODES: [&str; 9] = [
    "create",
    "createOrUpdate",
    "createOrUpdateIfMatchETag",
    "delete",
    "deleteIfMatchETag",
    "update",
    "updateIfMatchETag",
    "updateTwin",
    "updateTwinIfMatchETag",
];

/// Twin tags and desired properties an import line carries (`$`-prefixed metadata ignored).
fn apply_twin(d: &mut StoredDevice, it: &Value) {
    let mut changed = false;
    if let Some(t) = it.get("tags").filter(|v| v.is_object()) {
        d.tags = t.clone();
        changed = true;
    }
    if let Some(Value::Object(p)) = it.get("properties").and_then(|p| p.get("desired")) {
        let clean: Map<String, Value> = p
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        d.desired = Value::Object(clean);
        changed = true;
    }
    if changed {
        d.twin_version += 1;
    }
}

/// A device as one line of an export: an `ExportImportDevice` with its twin.
fn export_device(d: &StoredDevice, exclude_keys: bool) -> Value {
    let dev = &d.device;
    let mut auth = dev.get("authentication").cloned().unwrap_or(Value::Null);
    if exclude_keys && let Some(sk) = auth.get_mut("symmetricKey").filter(|v| v.is_object()) {
        // "Keys are exported as null otherwise" (swagger, excludeKeysInExport).
        *sk = json!({"primaryKey": null, "secondaryKey": null});
    }
    let mut out = Map::new();
    out.insert(
        "id".into(),
        dev.get("deviceId").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "eTag".into(),
        dev.get("etag").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "status".into(),
        dev.get("status").cloned().unwrap_or(Value::Null),
    );
    if let Some(r) = dev.get("statusReason").filter(|v| !v.is_null()) {
        out.insert("statusReason".into(), r.clone());
    }
    out.insert("authentication".into(), auth);
    out.insert("twinETag".into(), json!(twin_etag(d.twin_version)));
    out.insert("tags".into(), d.tags.clone());
    out.insert(
        "properties".into(),
        json!({"desired": d.desired, "reported": d.reported}),
    );
    for k in ["capabilities", "deviceScope", "parentScopes"] {
        if let Some(v) = dev.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// Converts a bulk `ExportImportDevice` into a Device body.
fn import_item_to_device(it: &Value) -> Value {
    let mut out = Map::new();
    if let Some(id) = it.get("id") {
        out.insert("deviceId".into(), id.clone());
    }
    for k in [
        "status",
        "statusReason",
        "authentication",
        "capabilities",
        "deviceScope",
        "parentScopes",
    ] {
        if let Some(v) = it.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parser_supports_select_star_and_simple_where() {
        let all = TwinQuery::parse("SELECT * FROM devices").unwrap();
        let t = json!({"deviceId": "d1", "status": "disabled", "capabilities": {"iotEdge": false}});
        assert!(all.matches(&t));
        let q = TwinQuery::parse(
            "select * from devices where status = 'disabled' AND deviceId != 'x and y'",
        )
        .unwrap();
        assert!(q.matches(&t));
        let q =
            TwinQuery::parse("SELECT * FROM devices WHERE capabilities.iotEdge = true").unwrap();
        assert!(!q.matches(&t));
        assert!(TwinQuery::parse("SELECT deviceId FROM devices").is_err());
        let q = TwinQuery::parse(
            "SELECT * FROM devices WHERE deviceId IN ['d1', 'x,y'] AND statusReason != 'a=b!=c'",
        )
        .unwrap();
        assert!(q.matches(&t));
        let q = TwinQuery::parse("SELECT * FROM devices WHERE deviceId = 'a!=b'").unwrap();
        assert!(!q.matches(&t));
        assert!(q.matches(&json!({"deviceId": "a!=b"})));
        assert!(TwinQuery::parse("SELECT * FROM devices WHERE deviceId IN 'x'").is_err());
        assert!(TwinQuery::parse("SELECT * FROM devices.modules").is_err());
    }

    #[test]
    fn precondition_parsing_accepts_quoted_and_unquoted() {
        assert_eq!(Precondition::from_header(Some("\"*\"")), Precondition::Any);
        assert_eq!(
            Precondition::from_header(Some("abc")),
            Precondition::Etag("abc".into())
        );
        assert_eq!(
            Precondition::from_header(Some("\"abc\"")),
            Precondition::Etag("abc".into())
        );
        assert!(Precondition::Etag("abc".into()).matches(Some("abc")));
        assert!(!Precondition::Etag("abc".into()).matches(Some("abd")));
    }
}

//! The in-memory model: DPS instances and hubs, each behind its own lock (never held across `.await`).

mod dps;
mod hub;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};

pub use dps::{
    DpsInstance, DpsOpError, EnrollmentKind, LinkedHub, Page, StoredRegistration, validate_id,
};
pub use hub::{
    BulkItemError, DeviceStatistics, HubInstance, HubOpError, StoredDevice, TwinQuery, render_twin,
    validate_device_id,
};

use super::SimError;
use super::clock::Clock;
use super::config::{HubTier, PolicyConfig, SimConfig};
use crate::secret::Secret;
use crate::seed::SeededDevice;

/// A right a shared access policy can grant (DPS and IoT Hub names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Right {
    /// DPS: manage the instance configuration.
    ServiceConfig,
    /// DPS: read enrollments and groups.
    EnrollmentRead,
    /// DPS: write enrollments and groups.
    EnrollmentWrite,
    /// DPS: read registration states.
    RegistrationStatusRead,
    /// DPS: delete registration states.
    RegistrationStatusWrite,
    /// Hub: read identities.
    RegistryRead,
    /// Hub: write identities.
    RegistryWrite,
    /// Hub: service-side operations, including twin queries.
    ServiceConnect,
    /// Hub: device-side endpoints.
    DeviceConnect,
}

impl FromStr for Right {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "serviceconfig" => Self::ServiceConfig,
            "enrollmentread" => Self::EnrollmentRead,
            "enrollmentwrite" => Self::EnrollmentWrite,
            "registrationstatusread" => Self::RegistrationStatusRead,
            "registrationstatuswrite" => Self::RegistrationStatusWrite,
            "registryread" => Self::RegistryRead,
            "registrywrite" => Self::RegistryWrite,
            "serviceconnect" => Self::ServiceConnect,
            "deviceconnect" => Self::DeviceConnect,
            _ => return Err(format!("unknown right {s}")),
        })
    }
}

/// A shared access policy of an instance.
#[derive(Debug, Clone)]
pub struct SasPolicy {
    /// Policy name.
    pub name: String,
    /// Base64 primary key.
    pub primary_key: Secret,
    /// Base64 secondary key.
    pub secondary_key: Secret,
    /// Granted rights.
    pub rights: Vec<Right>,
}

impl SasPolicy {
    fn from_config(cfg: &PolicyConfig, ids: &IdGen) -> Result<Self, SimError> {
        let rights = cfg
            .rights
            .iter()
            .map(|r| r.parse())
            .collect::<Result<Vec<Right>, String>>()
            .map_err(SimError::Config)?;
        let key = |k: &Option<String>| -> Result<Secret, SimError> {
            match k {
                Some(k) => {
                    crate::sas::key_bytes(k).map_err(|_| {
                        SimError::Config(format!("policy {}: key is not base64", cfg.name))
                    })?;
                    Ok(Secret::new(k.clone()))
                }
                None => Ok(Secret::new(ids.key(32))),
            }
        };
        Ok(Self {
            name: cfg.name.clone(),
            primary_key: key(&cfg.primary_key)?,
            secondary_key: key(&cfg.secondary_key)?,
            rights,
        })
    }

    /// Whether the policy grants `right`.
    pub fn has(&self, right: Right) -> bool {
        self.rights.contains(&right)
    }
}

/// An If-Match header as the services read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No If-Match.
    None,
    /// `*`: matches any existing record.
    Any,
    /// A specific etag (quotes removed).
    Etag(String),
}

impl Precondition {
    /// Parses an If-Match value; quoted and unquoted etags are both accepted.
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") => Self::None,
            Some(v) => {
                let v = v.strip_prefix("W/").unwrap_or(v);
                let v = v.trim_matches('"');
                if v == "*" {
                    Self::Any
                } else {
                    Self::Etag(v.to_string())
                }
            }
        }
    }

    /// Whether a record with `etag` satisfies this precondition (`None` always does).
    pub fn matches(&self, etag: Option<&str>) -> bool {
        match self {
            Self::None | Self::Any => true,
            Self::Etag(e) => etag.is_some_and(|cur| cur.trim_matches('"') == e),
        }
    }
}

/// Seeded generator of keys, etags and ids (reproducible runs).
#[derive(Debug)]
pub struct IdGen {
    rng: Mutex<StdRng>,
}

impl IdGen {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// A random base64 key of `len` bytes.
    pub fn key(&self, len: usize) -> String {
        let mut bytes = vec![0u8; len];
        self.rng.lock().fill_bytes(&mut bytes);
        B64.encode(bytes)
    }

    /// A random UUID string.
    pub fn uuid(&self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.lock().fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    /// A DPS-style etag: base64 of a quoted GUID-like string.
    pub fn dps_etag(&self) -> String {
        B64.encode(format!("\"{}\"", self.uuid()))
    }

    /// A hub generationId: an 18-digit decimal string.
    pub fn generation_id(&self) -> String {
        let n: u64 = self
            .rng
            .lock()
            .random_range(100_000_000_000_000_000..1_000_000_000_000_000_000);
        n.to_string()
    }

    /// A number in `range`.
    pub fn number(&self, range: std::ops::Range<u64>) -> u64 {
        self.rng.lock().random_range(range)
    }
}

/// Formats a timestamp the way both services do (UTC, `Z`).
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The timestamp Azure uses for "never".
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// All simulated instances.
#[derive(Debug)]
pub struct SimState {
    dps: Vec<Arc<DpsInstance>>,
    hubs: Vec<Arc<HubInstance>>,
    ids: Arc<IdGen>,
    clock: Arc<dyn Clock>,
    /// Seeded devices (with their DPS id scope) by lower-case registration id, for
    /// `GET /_sim/devices/{id}/credentials`.
    credentials: Mutex<BTreeMap<String, (String, SeededDevice)>>,
}

impl SimState {
    /// Builds the instances a configuration describes (validated: unique names, linked hubs exist).
    pub fn from_config(cfg: &SimConfig, clock: Arc<dyn Clock>) -> Result<Self, SimError> {
        let ids = Arc::new(IdGen::new(cfg.seed.unwrap_or_else(rand::random)));
        let mut hubs = Vec::new();
        let mut seen = BTreeMap::new();
        for h in &cfg.hubs {
            let host = h.host.to_ascii_lowercase();
            if seen.insert(host.clone(), ()).is_some() {
                return Err(SimError::Config(format!("hub {host} configured twice")));
            }
            if h.units == 0 {
                return Err(SimError::Config(format!(
                    "hub {host}: units must be at least 1"
                )));
            }
            let pcfg = if h.policies.is_empty() {
                PolicyConfig::hub_defaults()
            } else {
                h.policies.clone()
            };
            let policies = pcfg
                .iter()
                .map(|p| SasPolicy::from_config(p, &ids))
                .collect::<Result<Vec<_>, _>>()?;
            hubs.push(Arc::new(HubInstance::new(
                host,
                h.tier,
                h.units,
                policies,
                ids.clone(),
                clock.clone(),
            )));
        }
        let mut dps = Vec::new();
        for (i, d) in cfg.dps.iter().enumerate() {
            let host = d.host_name();
            if cfg.dps.iter().filter(|o| o.name == d.name).count() > 1 {
                return Err(SimError::Config(format!("DPS {} configured twice", d.name)));
            }
            let scope = d
                .id_scope
                .clone()
                .unwrap_or_else(|| format!("0ne{:08X}", i + 1));
            let pcfg = if d.policies.is_empty() {
                PolicyConfig::dps_defaults()
            } else {
                d.policies.clone()
            };
            let policies = pcfg
                .iter()
                .map(|p| SasPolicy::from_config(p, &ids))
                .collect::<Result<Vec<_>, _>>()?;
            let mut linked = Vec::new();
            for l in &d.linked_hubs {
                let lh = l.host.to_ascii_lowercase();
                if !seen.contains_key(&lh) {
                    return Err(SimError::Config(format!(
                        "DPS {} links unknown hub {lh}",
                        d.name
                    )));
                }
                if !(1..=1000).contains(&l.allocation_weight) {
                    return Err(SimError::Config(format!(
                        "DPS {}: allocation weight must be 1..=1000",
                        d.name
                    )));
                }
                linked.push(LinkedHub {
                    host: lh,
                    allocation_weight: l.allocation_weight,
                    apply_allocation_policy: l.apply_allocation_policy,
                });
            }
            dps.push(Arc::new(DpsInstance::new(
                d.name.clone(),
                host,
                scope,
                policies,
                linked,
                ids.clone(),
                clock.clone(),
            )));
        }
        Ok(Self {
            dps,
            hubs,
            ids,
            clock,
            credentials: Mutex::new(BTreeMap::new()),
        })
    }

    /// Keeps the credentials of seeded devices (a later seed of the same id replaces them).
    pub fn remember_credentials<'a>(
        &self,
        id_scope: &str,
        devices: impl IntoIterator<Item = &'a SeededDevice>,
    ) {
        let mut map = self.credentials.lock();
        for d in devices {
            map.insert(
                d.registration_id.to_ascii_lowercase(),
                (id_scope.to_string(), d.clone()),
            );
        }
    }

    /// The id scope and credentials of a seeded device (registration ids are case-insensitive).
    pub fn credentials_of(&self, registration_id: &str) -> Option<(String, SeededDevice)> {
        self.credentials
            .lock()
            .get(&registration_id.to_ascii_lowercase())
            .cloned()
    }

    /// A DPS instance by resource name.
    pub fn dps(&self, name: &str) -> Option<Arc<DpsInstance>> {
        self.dps.iter().find(|d| d.name == name).cloned()
    }

    /// A DPS instance by service host name (case-insensitive).
    pub fn dps_by_host(&self, host: &str) -> Option<Arc<DpsInstance>> {
        self.dps
            .iter()
            .find(|d| d.host.eq_ignore_ascii_case(host))
            .cloned()
    }

    /// A DPS instance by ID scope (case-insensitive), as the device API addresses it.
    pub fn dps_by_id_scope(&self, scope: &str) -> Option<Arc<DpsInstance>> {
        self.dps
            .iter()
            .find(|d| d.id_scope.eq_ignore_ascii_case(scope))
            .cloned()
    }

    /// All DPS instances.
    pub fn dps_instances(&self) -> &[Arc<DpsInstance>] {
        &self.dps
    }

    /// A hub by host name (case-insensitive).
    pub fn hub(&self, host: &str) -> Option<Arc<HubInstance>> {
        self.hubs
            .iter()
            .find(|h| h.host.eq_ignore_ascii_case(host))
            .cloned()
    }

    /// All hubs.
    pub fn hubs(&self) -> &[Arc<HubInstance>] {
        &self.hubs
    }

    /// The shared id/key generator.
    pub fn ids(&self) -> &Arc<IdGen> {
        &self.ids
    }

    /// The clock every instance uses.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Empties every instance (enrollments, groups, registrations, devices); configuration stays.
    pub fn clear(&self) {
        self.credentials.lock().clear();
        for d in &self.dps {
            d.clear();
        }
        for h in &self.hubs {
            h.clear();
        }
    }

    /// The whole state as JSON (secrets included: this is for tests and the admin API).
    pub fn snapshot(&self) -> Value {
        json!({
            "dps": self.dps.iter().map(|d| d.snapshot()).collect::<Vec<_>>(),
            "hubs": self.hubs.iter().map(|h| h.snapshot()).collect::<Vec<_>>(),
        })
    }
}

/// Tier of a hub, as a string for snapshots.
fn tier_name(t: HubTier) -> String {
    format!("{t:?}")
}

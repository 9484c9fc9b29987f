//! Simulator configuration (serde, so it can come from a file or the CLI) with builders for tests.

use serde::{Deserialize, Serialize};

use super::faults::FaultRule;

/// Everything the simulator serves and how it misbehaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// DPS instances, one listener each.
    pub dps: Vec<DpsConfig>,
    /// IoT hubs, one listener each.
    pub hubs: Vec<HubConfig>,
    /// Address the listeners bind to.
    pub bind_host: String,
    /// Quota model.
    pub throttle: ThrottleConfig,
    /// Latency and random faults.
    pub chaos: ChaosConfig,
    /// Scripted faults installed at start.
    pub scripted_faults: Vec<FaultRule>,
    /// Choices where the spec leaves DPS behaviour open.
    pub dps_behavior: DpsBehavior,
    /// Maximum number of call-log entries kept (oldest dropped first).
    pub call_log_capacity: usize,
    /// Seed for generated keys, etags, tracking ids and random faults. Absent: a random seed per run, so
    /// two runs never share keys; give one to reproduce a run exactly.
    pub seed: Option<u64>,
    /// Quota time runs this many times faster than wall time (60.0: a minute of quota per second).
    pub time_scale: f64,
    /// Serve every listener over HTTPS (given or generated certificate); plain HTTP when absent.
    pub tls: Option<super::tls::TlsSettings>,
    /// The DPS device registration API listener (`global.azure-devices-provisioning.net`).
    pub device_api: super::device_api::DeviceApiConfig,
    /// Import/export jobs of the hubs: throughput, queueing, blob block size.
    pub jobs: JobsConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            dps: Vec::new(),
            hubs: Vec::new(),
            bind_host: "127.0.0.1".into(),
            throttle: ThrottleConfig::default(),
            chaos: ChaosConfig::default(),
            scripted_faults: Vec::new(),
            dps_behavior: DpsBehavior::default(),
            call_log_capacity: 100_000,
            seed: None,
            time_scale: 1.0,
            tls: None,
            device_api: super::device_api::DeviceApiConfig::default(),
            jobs: JobsConfig::default(),
        }
    }
}

impl SimConfig {
    /// One DPS instance `dps_name` linked to every hub in `hub_hosts` (S1, 1 unit each), throttling off.
    pub fn single(dps_name: &str, hub_hosts: &[&str]) -> Self {
        let mut dps = DpsConfig::new(dps_name);
        for h in hub_hosts {
            dps = dps.with_linked_hub(h);
        }
        Self {
            dps: vec![dps],
            hubs: hub_hosts.iter().map(|h| HubConfig::new(h)).collect(),
            throttle: ThrottleConfig {
                enabled: false,
                ..ThrottleConfig::default()
            },
            ..Self::default()
        }
    }

    /// The demo fleet: DPS `demo-dps` (scope `0ne00000001`) linked to S1 hubs `demo-hub-1` and
    /// `demo-hub-2` (`*.azure-devices.net`), throttling on at real speed.
    pub fn demo() -> Self {
        let hubs = [
            "demo-hub-1.azure-devices.net",
            "demo-hub-2.azure-devices.net",
        ];
        Self {
            throttle: ThrottleConfig::default(),
            ..Self::single("demo-dps", &hubs)
        }
    }

    /// Reads a configuration from JSON text (missing fields take their defaults).
    pub fn from_json(text: &str) -> Result<Self, crate::SimError> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| crate::SimError::Config(e.to_string()))?;
        for rule in &config.scripted_faults {
            rule.validate()
                .map_err(|e| crate::SimError::Config(format!("scripted_faults: {e}")))?;
        }
        Ok(config)
    }

    /// Adds a DPS instance.
    pub fn with_dps(mut self, dps: DpsConfig) -> Self {
        self.dps.push(dps);
        self
    }

    /// Adds a hub.
    pub fn with_hub(mut self, hub: HubConfig) -> Self {
        self.hubs.push(hub);
        self
    }

    /// Replaces the throttling settings.
    pub fn with_throttle(mut self, throttle: ThrottleConfig) -> Self {
        self.throttle = throttle;
        self
    }
}

/// A shared access policy: name, keys (generated when absent) and rights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Policy name (the `skn` of a token, `SharedAccessKeyName` of a connection string).
    pub name: String,
    /// Base64 primary key; generated from the seed when absent.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// Base64 secondary key; generated from the seed when absent.
    #[serde(default)]
    pub secondary_key: Option<String>,
    /// Rights as Azure names them: `EnrollmentRead`, `RegistryWrite`, `ServiceConnect`...
    pub rights: Vec<String>,
}

impl PolicyConfig {
    /// A policy with generated keys.
    pub fn new(name: &str, rights: &[&str]) -> Self {
        Self {
            name: name.into(),
            primary_key: None,
            secondary_key: None,
            rights: rights.iter().map(|r| (*r).to_string()).collect(),
        }
    }

    /// Sets the primary key (base64).
    pub fn with_key(mut self, key: &str) -> Self {
        self.primary_key = Some(key.into());
        self
    }

    /// The default policies of a new DPS instance.
    pub fn dps_defaults() -> Vec<Self> {
        vec![
            Self::new(
                "provisioningserviceowner",
                &[
                    "ServiceConfig",
                    "EnrollmentRead",
                    "EnrollmentWrite",
                    "RegistrationStatusRead",
                    "RegistrationStatusWrite",
                ],
            ),
            Self::new(
                "enrollmentread",
                &["EnrollmentRead", "RegistrationStatusRead"],
            ),
        ]
    }

    /// The default policies of a new IoT hub.
    pub fn hub_defaults() -> Vec<Self> {
        vec![
            Self::new(
                "iothubowner",
                &[
                    "RegistryRead",
                    "RegistryWrite",
                    "ServiceConnect",
                    "DeviceConnect",
                ],
            ),
            Self::new("service", &["ServiceConnect"]),
            Self::new("device", &["DeviceConnect"]),
            Self::new("registryRead", &["RegistryRead"]),
            Self::new("registryReadWrite", &["RegistryRead", "RegistryWrite"]),
        ]
    }
}

/// A hub linked to a DPS instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkedHubConfig {
    /// Hub host name, e.g. `demo-hub-1.azure-devices.net`.
    pub host: String,
    /// Weight for hashed allocation (1..=1000).
    #[serde(default = "one")]
    pub allocation_weight: u32,
    /// Whether the hub takes part in the DPS-level allocation policy.
    #[serde(default = "yes")]
    pub apply_allocation_policy: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// One simulated DPS instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpsConfig {
    /// Resource name, e.g. `demo-dps`.
    pub name: String,
    /// Service operations host; default `{name}.azure-devices-provisioning.net`.
    #[serde(default)]
    pub host: Option<String>,
    /// ID scope; default derived from the instance's position (`0ne00000001`, ...).
    #[serde(default)]
    pub id_scope: Option<String>,
    /// Port to bind; 0 picks a free one.
    #[serde(default)]
    pub port: u16,
    /// Shared access policies; the DPS defaults when empty.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Linked hubs (must be among the configured hubs).
    #[serde(default)]
    pub linked_hubs: Vec<LinkedHubConfig>,
}

impl DpsConfig {
    /// A DPS instance with default host, scope and policies.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            host: None,
            id_scope: None,
            port: 0,
            policies: Vec::new(),
            linked_hubs: Vec::new(),
        }
    }

    /// Links a hub (weight 1, applies allocation policy).
    pub fn with_linked_hub(mut self, host: &str) -> Self {
        self.linked_hubs.push(LinkedHubConfig {
            host: host.into(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        });
        self
    }

    /// Adds a policy (replaces the defaults once any is given).
    pub fn with_policy(mut self, policy: PolicyConfig) -> Self {
        self.policies.push(policy);
        self
    }

    /// Sets the ID scope.
    pub fn with_id_scope(mut self, scope: &str) -> Self {
        self.id_scope = Some(scope.into());
        self
    }

    /// The service host name this instance answers as.
    pub fn host_name(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(|| format!("{}.azure-devices-provisioning.net", self.name))
            .to_ascii_lowercase()
    }
}

/// IoT Hub pricing tier (decides the quota per unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubTier {
    /// Free.
    F1,
    /// Basic 1.
    B1,
    /// Basic 2.
    B2,
    /// Basic 3.
    B3,
    /// Standard 1.
    S1,
    /// Standard 2.
    S2,
    /// Standard 3.
    S3,
}

impl HubTier {
    /// Identity-registry operations per minute per unit (azure-specs README §6).
    pub fn registry_ops_per_minute_per_unit(self) -> f64 {
        match self {
            Self::B3 | Self::S3 => 5_000.0,
            _ => 100.0,
        }
    }

    /// Import/export job operations (create, get, list, cancel) per minute per unit (azure-specs
    /// README §6: 100 on S1/S2, 5,000 on S3).
    pub fn job_ops_per_minute_per_unit(self) -> f64 {
        self.registry_ops_per_minute_per_unit()
    }

    /// Twin queries per minute per unit (azure-specs README §6, 2019 page).
    pub fn queries_per_minute_per_unit(self) -> f64 {
        match self {
            Self::B3 | Self::S3 => 1_000.0,
            _ => 20.0,
        }
    }
}

/// How the hubs' import/export jobs run (`jobs` in the configuration, `PATCH /_sim/jobs` at run time).
///
/// Azure documents no throughput for these jobs (azure-specs README §6 has an informal ~1M devices an
/// hour on S3), so it is a setting: a benchmark sets the figure it wants to model. Both durations are
/// in quota time, so the simulator's `time_scale` shortens them like every quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobsConfig {
    /// Devices a job reads or writes per second of quota time.
    pub devices_per_second: f64,
    /// Seconds of quota time a job stays `enqueued` before it runs.
    pub queue_seconds: f64,
    /// Size of the blocks an export uploads (Put Block), bytes; at least 1 KiB.
    pub block_size: usize,
    /// Finished jobs kept per hub for `GET /jobs` (the oldest are forgotten first).
    pub history: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            devices_per_second: 300.0,
            queue_seconds: 1.0,
            block_size: 4 * 1024 * 1024,
            history: 100,
        }
    }
}

/// One simulated IoT hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubConfig {
    /// Host name, e.g. `demo-hub-1.azure-devices.net`.
    pub host: String,
    /// Tier.
    #[serde(default = "default_tier")]
    pub tier: HubTier,
    /// Number of units.
    #[serde(default = "one")]
    pub units: u32,
    /// Port to bind; 0 picks a free one.
    #[serde(default)]
    pub port: u16,
    /// Shared access policies; the hub defaults when empty.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
}

fn default_tier() -> HubTier {
    HubTier::S1
}

impl HubConfig {
    /// An S1 hub with one unit and the default policies.
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_ascii_lowercase(),
            tier: HubTier::S1,
            units: 1,
            port: 0,
            policies: Vec::new(),
        }
    }

    /// Sets tier and units.
    pub fn with_tier(mut self, tier: HubTier, units: u32) -> Self {
        self.tier = tier;
        self.units = units;
        self
    }

    /// Adds a policy (replaces the defaults once any is given).
    pub fn with_policy(mut self, policy: PolicyConfig) -> Self {
        self.policies.push(policy);
        self
    }
}

/// How a bulk call is charged against the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkCost {
    /// One operation per item (default; Azure does not document it).
    PerItem,
    /// One operation per call.
    PerCall,
}

/// Quota model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleConfig {
    /// Whether quotas are enforced at all.
    pub enabled: bool,
    /// Operations per minute of each DPS instance.
    pub dps_ops_per_minute: f64,
    /// Device registrations per minute of each DPS instance (device API).
    pub dps_registrations_per_minute: f64,
    /// How bulk calls are charged.
    pub bulk_cost: BulkCost,
    /// Whether 429 responses carry `Retry-After` (Azure documents none for IoT Hub).
    pub retry_after: bool,
    /// Bucket size as a fraction of a minute's quota (1.0: a full minute may be spent at once).
    pub burst_fraction: f64,
    /// Traffic shaping: calls that would pass within this many wall milliseconds are held, not
    /// refused (IoT Hub queues bursts before it rejects them); 0 refuses at once.
    pub shaping_ms: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dps_ops_per_minute: 1_000.0,
            dps_registrations_per_minute: 1_000.0,
            bulk_cost: BulkCost::PerItem,
            retry_after: true,
            burst_fraction: 1.0,
            shaping_ms: 0,
        }
    }
}

/// Latency and random faults applied to every (non-admin) call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChaosConfig {
    /// Added to every call, milliseconds.
    pub latency_fixed_ms: u64,
    /// Uniform random extra latency in `0..=latency_random_ms`.
    pub latency_random_ms: u64,
    /// Probability of a 429 ThrottlingException.
    pub p_429: f64,
    /// Probability of a 500.
    pub p_500: f64,
    /// Probability of a 503.
    pub p_503: f64,
    /// Probability of hanging for `hang_ms` then dropping the connection.
    pub p_timeout: f64,
    /// Probability of closing the connection without a response.
    pub p_drop: f64,
    /// How long a simulated timeout hangs (default 120 s when 0).
    pub hang_ms: u64,
}

/// What a PUT without If-Match does to an existing enrollment (azure-specs README §4: unverified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExistingPutPolicy {
    /// Replace unconditionally (the spec: If-Match is optional, absent means unconditional).
    #[default]
    Replace,
    /// Answer 409 Conflict (errorCode 409201).
    Conflict,
}

/// Choices where DPS behaviour is not documented.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DpsBehavior {
    /// PUT without If-Match on an existing record.
    pub put_existing_without_if_match: ExistingPutPolicy,
    /// Page size of queries when `x-ms-max-item-count` is absent.
    pub default_page_size: usize,
    /// Largest page size honoured.
    pub max_page_size: usize,
}

impl Default for DpsBehavior {
    fn default() -> Self {
        Self {
            put_existing_without_if_match: ExistingPutPolicy::Replace,
            default_page_size: 100,
            max_page_size: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_config_file_with_defaults() {
        let cfg = SimConfig::from_json(
            r#"{
                "dps": [{"name": "demo-dps", "linked_hubs": [{"host": "demo-hub-1.azure-devices.net"}]}],
                "hubs": [{"host": "demo-hub-1.azure-devices.net", "tier": "S3", "units": 2}],
                "throttle": {"retry_after": false},
                "time_scale": 60.0
            }"#,
        )
        .unwrap();
        assert_eq!(
            cfg.dps[0].host_name(),
            "demo-dps.azure-devices-provisioning.net"
        );
        assert_eq!(cfg.dps[0].linked_hubs[0].allocation_weight, 1);
        assert_eq!(cfg.hubs[0].tier, HubTier::S3);
        assert!(cfg.throttle.enabled && !cfg.throttle.retry_after);
        assert_eq!(cfg.throttle.bulk_cost, BulkCost::PerItem);
        assert_eq!(cfg.time_scale, 60.0);
        assert_eq!(cfg.bind_host, "127.0.0.1");
        assert_eq!(HubTier::S3.registry_ops_per_minute_per_unit(), 5_000.0);
        assert_eq!(HubTier::S1.queries_per_minute_per_unit(), 20.0);
        assert!(SimConfig::from_json("{\"hubs\": 3}").is_err());
    }

    #[test]
    fn demo_preset_links_two_hubs_with_throttling_on() {
        let d = SimConfig::demo();
        assert_eq!(d.dps[0].linked_hubs.len(), 2);
        assert_eq!(d.hubs.len(), 2);
        assert!(d.throttle.enabled);
    }
}

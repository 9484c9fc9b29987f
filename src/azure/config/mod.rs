//! Azure configuration: several DPS instances by name, the IoT hubs they link to by host name, and the
//! registry of clients built from them.
//!
//! # Sources
//!
//! A JSON file (optional), then environment variables, which add instances or override fields of the file's.
//!
//! ## Environment variables
//!
//! | Variable | Meaning |
//! |---|---|
//! | `DEPROVISIOND_AZURE_CONFIG` | Path of the JSON file below. |
//! | `DEPROVISIOND_DPS_<NAME>_CONNECTION_STRING` | Service connection string of the DPS instance `<NAME>` (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`). |
//! | `DEPROVISIOND_DPS_<NAME>_CONNECTION_STRING_FILE` | File holding that connection string (e.g. a mounted secret); use one of the two. |
//! | `DEPROVISIOND_DPS_<NAME>_API_VERSION` | `api-version` for that instance (default `2021-10-01`). |
//! | `DEPROVISIOND_DPS_<NAME>_BASE_URL` | Send its requests to this URL (a simulator or proxy, e.g. `http://127.0.0.1:41234`); tokens still sign the HostName. |
//! | `DEPROVISIOND_DEFAULT_DPS` | Instance used when a request names none (default: the only one, when exactly one is configured). |
//! | `DEPROVISIOND_HUB_<LABEL>_CONNECTION_STRING` | Connection string of an IoT hub (policy with RegistryRead/RegistryWrite, plus ServiceConnect for twin queries). The hub is known by the connection string's HostName; `<LABEL>` only groups the variables. |
//! | `DEPROVISIOND_HUB_<LABEL>_CONNECTION_STRING_FILE` | File holding it. |
//! | `DEPROVISIOND_HUB_<LABEL>_API_VERSION` | `api-version` for that hub (default `2021-04-12`). |
//! | `DEPROVISIOND_HUB_<LABEL>_BASE_URL` | Request URL override, as for DPS. |
//! | `DEPROVISIOND_HUB_<LABEL>_TIER` | `F1`, `B1`, `B2`, `B3`, `S1`, `S2` or `S3` (used to pace registry calls). |
//! | `DEPROVISIOND_HUB_<LABEL>_UNITS` | Number of units of that tier (default 1). |
//! | `DEPROVISIOND_HUB_<LABEL>_OPS_PER_MINUTE` | Registry operations per minute to pace that hub at, instead of tier x units (0: not paced). |
//! | `DEPROVISIOND_HUB_<LABEL>_JOBS_CONTAINER_SAS_URL` | SAS URL of a blob container (read, write, list, delete permissions) that hub's import/export jobs use, instead of one minted from the storage account. Each hub needs its own. |
//! | `DEPROVISIOND_HUB_<LABEL>_JOBS_CONTAINER_SAS_URL_FILE` | File holding it; use one of the two. |
//! | `DEPROVISIOND_HUB_<LABEL>_JOBS_DEVICES_PER_SECOND` | Devices per second an import/export job of that hub is modelled to go through, for the planner (positive; default [`DEFAULT_JOBS_DEVICES_PER_SECOND`]). |
//! | `DEPROVISIOND_DPS_<NAME>_OPS_PER_MINUTE` | Operations per minute to pace that DPS instance at (default 1,000; 0: not paced). |
//! | `DEPROVISIOND_PACING_BURST_SECS` | Seconds of budget spent at once after an idle spell (default 3). |
//! | `DEPROVISIOND_PACING_INLINE_WAIT_MS` | Longest wait for budget sat out in place; longer, the device is rescheduled (default 1000). |
//! | `DEPROVISIOND_AZURE_CONNECT_TIMEOUT_SECS` | Connect timeout of every Azure call (default 10). |
//! | `DEPROVISIOND_AZURE_REQUEST_TIMEOUT_SECS` | Whole-request timeout (default 60). |
//! | `DEPROVISIOND_AZURE_TOKEN_TTL_SECS` | Lifetime of minted SAS tokens (default 3600; renewed 5 min before expiry). |
//! | `DEPROVISIOND_AZURE_EXTRA_ROOTS_FILE` | PEM file of extra trusted root certificates (a simulator's CA). |
//! | `DEPROVISIOND_STORAGE_CONNECTION_STRING` | Azure Storage connection string (`DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;EndpointSuffix=core.windows.net`; Azurite's with `BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1`) from which a container per deprovision job and hub is minted for hubs without their own. |
//! | `DEPROVISIOND_STORAGE_CONNECTION_STRING_FILE` | File holding it; use one of the two. |
//! | `DEPROVISIOND_STORAGE_SAS_TTL_SECS` | Lifetime of each SAS minted for a hub job (default 86400, at least 60). |
//! | `DEPROVISIOND_JOBS_POLL_MS` | How often a running hub import/export job is polled (default 5000, at least 10). |
//!
//! `<NAME>` becomes the instance name in lower case with `_` read as `-`: `DEPROVISIOND_DPS_EU_WEST_CONNECTION_STRING`
//! configures the instance `eu-west`. Names are matched case-insensitively. Any other variable starting with
//! `DEPROVISIOND_DPS_`, `DEPROVISIOND_HUB_` or `DEPROVISIOND_STORAGE_` is an error, so a typo does not go
//! unnoticed.
//!
//! ## File (`DEPROVISIOND_AZURE_CONFIG`)
//!
//! ```json
//! {
//!   "dps": [
//!     {"name": "eu-west", "connection_string_file": "/run/secrets/dps-eu-west", "api_version": "2021-10-01"},
//!     {"name": "sim", "connection_string": "HostName=sim.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=…",
//!      "base_url": "http://127.0.0.1:41234"}
//!   ],
//!   "hubs": [
//!     {"connection_string_file": "/run/secrets/hub-1", "tier": "S1", "units": 2},
//!     {"host_name": "hub-2.azure-devices.net", "connection_string": "HostName=hub-2.azure-devices.net;…", "tier": "S3",
//!      "jobs_container_sas_url_file": "/run/secrets/hub-2-jobs-sas-url", "jobs_devices_per_second": 500}
//!   ],
//!   "default_dps": "eu-west",
//!   "connect_timeout_secs": 10, "request_timeout_secs": 60, "token_ttl_secs": 3600,
//!   "extra_roots_file": "/etc/deprovisiond/sim-ca.pem",
//!   "storage": {"connection_string_file": "/run/secrets/storage", "sas_ttl_secs": 86400},
//!   "jobs_poll_ms": 5000
//! }
//! ```
//! A hub's `host_name` is optional; when given it must equal the connection string's HostName. A hub's
//! `jobs_container_sas_url` (or `jobs_container_sas_url_file`) and `jobs_devices_per_second` mean what the
//! variables above do; `storage` holds `connection_string` or `connection_string_file` and `sas_ttl_secs`.
//! Relative `*_file` paths are read relative to the working directory. Secrets (keys, connection strings,
//! the `sig` of a SAS URL) never appear in `Debug` output or errors.

mod env;
mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use self::env::ENV_CONFIG_FILE;
use self::file::{RawFile, read_text};
use super::auth::DEFAULT_TOKEN_TTL;
use super::blob::{BlobError, ContainerSasUrl};
use super::connection_string::{ConnectionString, ConnectionStringError};
use super::storage_account::StorageAccount;
use super::transport::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
pub use crate::azure::quota::HubTier;

/// Why the Azure configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the expected shape.
    #[error("invalid Azure config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A connection string was rejected (the message never contains the key).
    #[error("{origin}: {source}")]
    ConnectionString {
        /// Which variable or entry it came from.
        origin: String,
        /// Why it was rejected.
        source: ConnectionStringError,
    },
    /// A storage connection string or a container SAS URL was rejected (the message never contains
    /// the key or the signature).
    #[error("{origin}: {source}")]
    Blob {
        /// Which variable or entry it came from.
        origin: String,
        /// Why it was rejected (boxed: a blob error is large, and config errors are rare).
        source: Box<BlobError>,
    },
    /// Any other invalid setting.
    #[error("{0}")]
    Invalid(String),
}

/// One DPS instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsInstanceConfig {
    /// Name used by requests and logs (lower case).
    pub name: String,
    /// Its service connection string.
    pub connection_string: ConnectionString,
    /// `api-version` override.
    pub api_version: Option<String>,
    /// Request URL override.
    pub base_url: Option<Url>,
}

/// Credentials of one IoT hub.
#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// Host name (lower case), the key DPS registration records name in `assignedHub`.
    pub host_name: String,
    /// Its service connection string.
    pub connection_string: ConnectionString,
    /// `api-version` override.
    pub api_version: Option<String>,
    /// Request URL override.
    pub base_url: Option<Url>,
    /// Pricing tier, for pacing.
    pub tier: Option<HubTier>,
    /// Number of units, for pacing.
    pub units: Option<u32>,
    /// The blob container this hub's import/export jobs use (instead of one minted from
    /// [`AzureConfig::storage`]); `Debug` hides its signature.
    pub jobs_container: Option<ContainerSasUrl>,
    /// Devices per second an import/export job of this hub is modelled to go through (planner).
    pub jobs_devices_per_second: Option<f64>,
}

impl HubConfig {
    /// Identity-registry operations per minute this hub allows, when its tier is known.
    pub fn registry_ops_per_minute(&self) -> Option<u32> {
        self.tier.map(|t| {
            t.registry_ops_per_minute_per_unit()
                .saturating_mul(self.units.unwrap_or(1).max(1))
        })
    }
}

/// The whole Azure configuration.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// DPS instances, by name.
    pub dps: Vec<DpsInstanceConfig>,
    /// Hubs, by host name.
    pub hubs: Vec<HubConfig>,
    /// Instance used when a request names none.
    pub default_dps: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// SAS token lifetime.
    pub token_ttl: Duration,
    /// Extra trusted root certificates (PEM).
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
    /// How calls are paced against each hub's and DPS instance's quota.
    pub pacing: PacingConfig,
    /// The storage account containers for hub import/export jobs are minted from, for hubs without
    /// their own [`HubConfig::jobs_container`].
    pub storage: Option<StorageConfig>,
    /// How often a running hub import/export job is polled.
    pub jobs_poll_interval: Duration,
}

/// A storage account for hub import/export jobs: one container per deprovision job and hub is minted
/// from it, with SAS URLs valid for `sas_ttl`. `Debug` hides the account key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The account (name, key, blob endpoint).
    pub account: StorageAccount,
    /// Lifetime of each SAS minted for a hub job.
    pub sas_ttl: Duration,
}

/// Lifetime of a SAS minted for a hub job unless configured: a day, longer than any import/export job
/// of a million devices at the informal throughput of azure-specs README §6.
pub const DEFAULT_STORAGE_SAS_TTL: Duration = Duration::from_secs(86_400);
/// The shortest SAS lifetime accepted: less would expire before a hub has queued the job.
pub const MIN_STORAGE_SAS_TTL: Duration = Duration::from_secs(60);
/// How often a running hub import/export job is polled unless configured.
pub const DEFAULT_JOBS_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest poll interval accepted (tests poll the simulator this fast; Azure needs no more).
pub const MIN_JOBS_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Devices per second an import/export job is assumed to go through when the hub's
/// `jobs_devices_per_second` is not configured. An assumption, not a documented figure: Azure documents
/// no throughput for these jobs; this is the informal ~1M devices an hour of azure-specs README §6
/// (1,000,000 / 3,600 ≈ 278), quoted for S3 hubs. Measure a hub and configure its own figure.
pub const DEFAULT_JOBS_DEVICES_PER_SECOND: f64 = 278.0;

/// DPS operations per minute per instance when none is configured (azure-specs README §6; older
/// documents said 200 and 100, hence the override).
pub const DEFAULT_DPS_OPS_PER_MINUTE: f64 = 1_000.0;

/// Pacing settings: explicit budgets (instead of tier x units, or DPS's 1,000/min), the burst and the
/// longest in-place wait. A budget of 0 turns pacing off for that hub or instance.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingConfig {
    /// Registry operations per minute by hub host name (lower case).
    pub hub_ops_per_minute: std::collections::BTreeMap<String, f64>,
    /// Operations per minute by DPS instance name (lower case).
    pub dps_ops_per_minute: std::collections::BTreeMap<String, f64>,
    /// Seconds of budget a bucket may spend at once after an idle spell (default 3: IoT Hub's burst
    /// is short, and a smaller one only costs the first seconds of a job).
    pub burst_secs: f64,
    /// The longest wait for budget a step sits out in place (default 1 s); longer, its device is
    /// rescheduled for when the budget is there and the worker takes other work.
    pub inline_wait: Duration,
}

impl Default for PacingConfig {
    fn default() -> Self {
        Self {
            hub_ops_per_minute: Default::default(),
            dps_ops_per_minute: Default::default(),
            burst_secs: 3.0,
            inline_wait: Duration::from_secs(1),
        }
    }
}

impl PacingConfig {
    /// The budget of a hub: the override, else tier x units; `None` (not paced) when neither is known or
    /// the override is 0.
    pub fn hub_budget(&self, hub: &HubConfig) -> Option<f64> {
        let rate = match self.hub_ops_per_minute.get(&hub.host_name) {
            Some(r) => *r,
            None => f64::from(hub.registry_ops_per_minute()?),
        };
        (rate > 0.0).then_some(rate)
    }

    /// The budget of a DPS instance: the override, else [`DEFAULT_DPS_OPS_PER_MINUTE`]; `None` for 0.
    pub fn dps_budget(&self, name: &str) -> Option<f64> {
        let rate = self
            .dps_ops_per_minute
            .get(&normalise_name(name))
            .copied()
            .unwrap_or(DEFAULT_DPS_OPS_PER_MINUTE);
        (rate > 0.0).then_some(rate)
    }
}

impl Default for AzureConfig {
    fn default() -> Self {
        Self {
            dps: Vec::new(),
            hubs: Vec::new(),
            default_dps: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            token_ttl: DEFAULT_TOKEN_TTL,
            extra_root_certificates_pem: Vec::new(),
            pacing: PacingConfig::default(),
            storage: None,
            jobs_poll_interval: DEFAULT_JOBS_POLL_INTERVAL,
        }
    }
}

/// Instance names are case-insensitive: stored and looked up in lower case.
pub(crate) fn normalise_name(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

impl AzureConfig {
    /// Loads the configuration from environment variables given as a map (and the file that
    /// `DEPROVISIOND_AZURE_CONFIG` names, if any). See the module documentation for the variables.
    pub fn from_env_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let (file, file_path) = match vars
            .get(ENV_CONFIG_FILE)
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
        {
            Some(path) => {
                let path = PathBuf::from(path);
                (Self::parse_raw_file(&read_text(&path)?, &path)?, Some(path))
            }
            None => (RawFile::default(), None),
        };
        Self::build(file, file_path.as_deref(), vars)
    }

    /// Loads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_map(&std::env::vars().collect())
    }

    /// Loads the configuration from a JSON file only.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let raw = Self::parse_raw_file(&read_text(path)?, path)?;
        Self::build(raw, Some(path), &HashMap::new())
    }

    /// Parses the configuration from JSON text (`*_file` entries are still read from disk).
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let path = Path::new("<inline>");
        Self::build(
            Self::parse_raw_file(text, path)?,
            Some(path),
            &HashMap::new(),
        )
    }

    fn parse_raw_file(text: &str, path: &Path) -> Result<RawFile, ConfigError> {
        // serde_json errors name the line and column, never echo values.
        serde_json::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn cs(host: &str, policy: &str) -> String {
        format!("HostName={host};SharedAccessKeyName={policy};SharedAccessKey={KEY}")
    }

    fn env(pairs: &[(&str, String)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn env_configures_dps_instances_and_hubs() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("hub2");
        std::fs::write(
            &secret_file,
            format!("{}\n", cs("Hub-2.azure-devices.net", "registryReadWrite")),
        )
        .unwrap();
        let vars = env(&[
            (
                "DEPROVISIOND_DPS_EU_WEST_CONNECTION_STRING",
                cs(
                    "eu.azure-devices-provisioning.net",
                    "provisioningserviceowner",
                ),
            ),
            (
                "DEPROVISIOND_DPS_EU_WEST_BASE_URL",
                "http://127.0.0.1:41234".into(),
            ),
            (
                "DEPROVISIOND_DPS_US_CONNECTION_STRING",
                cs("us.azure-devices-provisioning.net", "p"),
            ),
            ("DEPROVISIOND_DPS_US_API_VERSION", "2026-11-01".into()),
            ("DEPROVISIOND_DEFAULT_DPS", "EU-WEST".into()),
            (
                "DEPROVISIOND_HUB_1_CONNECTION_STRING",
                cs("hub-1.azure-devices.net", "registryReadWrite"),
            ),
            ("DEPROVISIOND_HUB_1_TIER", "s1".into()),
            ("DEPROVISIOND_HUB_1_UNITS", "2".into()),
            (
                "DEPROVISIOND_HUB_SECOND_CONNECTION_STRING_FILE",
                secret_file.display().to_string(),
            ),
            ("DEPROVISIOND_AZURE_REQUEST_TIMEOUT_SECS", "15".into()),
            ("UNRELATED", "x".into()),
        ]);
        let c = AzureConfig::from_env_map(&vars).unwrap();
        assert_eq!(c.dps.len(), 2);
        let eu = c.dps.iter().find(|d| d.name == "eu-west").unwrap();
        assert_eq!(
            eu.connection_string.host_name(),
            "eu.azure-devices-provisioning.net"
        );
        assert_eq!(
            eu.base_url.as_ref().unwrap().as_str(),
            "http://127.0.0.1:41234/"
        );
        assert_eq!(eu.api_version, None);
        let us = c.dps.iter().find(|d| d.name == "us").unwrap();
        assert_eq!(us.api_version.as_deref(), Some("2026-11-01"));
        assert_eq!(c.default_dps.as_deref(), Some("eu-west"));
        assert_eq!(c.hubs.len(), 2);
        assert_eq!(c.hubs[0].host_name, "hub-1.azure-devices.net");
        assert_eq!(c.hubs[0].tier, Some(HubTier::S1));
        assert_eq!(c.hubs[0].registry_ops_per_minute(), Some(200));
        assert_eq!(
            c.hubs[1].host_name, "hub-2.azure-devices.net",
            "lower-cased, read from the file"
        );
        assert_eq!(c.request_timeout, Duration::from_secs(15));
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(!format!("{c:?}").contains(KEY), "Debug hides keys");
    }

    #[test]
    fn env_errors_are_clear_and_never_show_the_key() {
        let typo = env(&[("DEPROVISIOND_DPS_MAIN_CONECTION_STRING", cs("a", "p"))]);
        let err = AzureConfig::from_env_map(&typo).unwrap_err().to_string();
        assert_eq!(
            err,
            "unrecognised variable DEPROVISIOND_DPS_MAIN_CONECTION_STRING"
        );

        let bad = env(&[(
            "DEPROVISIOND_HUB_1_CONNECTION_STRING",
            "HostName=h;SharedAccessKey=c2VjcmV0".into(),
        )]);
        let err = AzureConfig::from_env_map(&bad).unwrap_err().to_string();
        assert_eq!(
            err,
            "DEPROVISIOND_HUB_1_*: connection string has no SharedAccessKeyName"
        );

        let bad_key = env(&[(
            "DEPROVISIOND_DPS_X_CONNECTION_STRING",
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=top$secret!".into(),
        )]);
        let err = AzureConfig::from_env_map(&bad_key).unwrap_err().to_string();
        assert!(
            err.contains("not valid base64") && !err.contains("top$secret"),
            "{err}"
        );

        let both = env(&[
            ("DEPROVISIOND_DPS_X_CONNECTION_STRING", cs("a", "p")),
            (
                "DEPROVISIOND_DPS_X_CONNECTION_STRING_FILE",
                "/nonexistent".into(),
            ),
        ]);
        assert!(
            AzureConfig::from_env_map(&both)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );

        let tier = env(&[
            ("DEPROVISIOND_HUB_1_CONNECTION_STRING", cs("h", "p")),
            ("DEPROVISIOND_HUB_1_TIER", "S9".into()),
        ]);
        assert!(
            AzureConfig::from_env_map(&tier)
                .unwrap_err()
                .to_string()
                .contains("unknown IoT Hub tier")
        );

        let default = env(&[("DEPROVISIOND_DEFAULT_DPS", "nope".into())]);
        assert_eq!(
            AzureConfig::from_env_map(&default).unwrap_err().to_string(),
            "default DPS instance nope is not configured"
        );

        let missing_file = env(&[(
            "DEPROVISIOND_HUB_1_CONNECTION_STRING_FILE",
            "/nonexistent/secret".into(),
        )]);
        assert!(
            AzureConfig::from_env_map(&missing_file)
                .unwrap_err()
                .to_string()
                .starts_with("cannot read /nonexistent/secret")
        );
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure.json");
        let json = serde_json::json!({
            "dps": [{"name": "Main", "connection_string": cs("main.azure-devices-provisioning.net", "provisioningserviceowner"),
                     "api_version": "2021-10-01"}],
            "hubs": [{"host_name": "HUB-1.azure-devices.net", "connection_string": cs("hub-1.azure-devices.net", "registryReadWrite"),
                      "tier": "S3"}],
            "connect_timeout_secs": 3,
            "token_ttl_secs": 600
        });
        std::fs::write(&path, json.to_string()).unwrap();
        let c = AzureConfig::from_file(&path).unwrap();
        assert_eq!(c.dps[0].name, "main");
        assert_eq!(c.hubs[0].registry_ops_per_minute(), Some(5_000));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.token_ttl, Duration::from_secs(600));

        let vars = env(&[
            ("DEPROVISIOND_AZURE_CONFIG", path.display().to_string()),
            (
                "DEPROVISIOND_DPS_MAIN_BASE_URL",
                "http://127.0.0.1:9".into(),
            ),
            (
                "DEPROVISIOND_HUB_A_CONNECTION_STRING",
                cs("hub-1.azure-devices.net", "iothubowner"),
            ),
        ]);
        let c = AzureConfig::from_env_map(&vars).unwrap();
        assert_eq!(c.dps.len(), 1);
        assert_eq!(
            c.dps[0].base_url.as_ref().unwrap().port(),
            Some(9),
            "env overrides one field"
        );
        assert_eq!(
            c.dps[0].api_version.as_deref(),
            Some("2021-10-01"),
            "file field kept"
        );
        assert_eq!(c.hubs.len(), 1);
        assert_eq!(
            c.hubs[0].connection_string.key_name(),
            "iothubowner",
            "env replaces the same hub"
        );
        assert_eq!(c.hubs[0].tier, None);
    }

    #[test]
    fn file_errors() {
        let err =
            AzureConfig::from_json_str(r#"{"dps": [{"name": "x", "conection_string": "a"}]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let text = serde_json::json!({"hubs": [{"host_name": "other.azure-devices.net",
            "connection_string": cs("hub-1.azure-devices.net", "p")}]})
        .to_string();
        let err = AzureConfig::from_json_str(&text).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let text = serde_json::json!({"dps": [{"name": "a", "connection_string": cs("a", "p")},
            {"name": "A", "connection_string": cs("b", "p")}]})
        .to_string();
        assert!(
            AzureConfig::from_json_str(&text)
                .unwrap_err()
                .to_string()
                .contains("configured twice")
        );
        let text = serde_json::json!({"dps": [{"name": "a", "connection_string": cs("a", "p"),
            "base_url": "ftp://x"}]})
        .to_string();
        assert!(
            AzureConfig::from_json_str(&text)
                .unwrap_err()
                .to_string()
                .contains("base URL")
        );
    }
    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn azurite_cs() -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        )
    }

    fn sas_url(container: &str, sig: &str) -> String {
        format!(
            "https://acct.blob.core.windows.net/{container}?sv=2021-08-06&sr=c&sp=rwdl&se=2030-01-01T00%3A00%3A00Z&sig={sig}"
        )
    }

    #[test]
    fn env_configures_jobs_containers_storage_and_polling() {
        let dir = tempfile::tempdir().unwrap();
        let sas_file = dir.path().join("hub2-jobs");
        std::fs::write(
            &sas_file,
            format!("{}\n", sas_url("hub-2-jobs", "c2Vjb25k")),
        )
        .unwrap();
        let storage_file = dir.path().join("storage");
        std::fs::write(&storage_file, azurite_cs()).unwrap();
        let vars = env(&[
            (
                "DEPROVISIOND_HUB_1_CONNECTION_STRING",
                cs("hub-1.azure-devices.net", "registryReadWrite"),
            ),
            (
                "DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL",
                sas_url("hub-1-jobs", "Zmlyc3Q%3D"),
            ),
            ("DEPROVISIOND_HUB_1_JOBS_DEVICES_PER_SECOND", "450.5".into()),
            (
                "DEPROVISIOND_HUB_2_CONNECTION_STRING",
                cs("hub-2.azure-devices.net", "registryReadWrite"),
            ),
            (
                "DEPROVISIOND_HUB_2_JOBS_CONTAINER_SAS_URL_FILE",
                sas_file.display().to_string(),
            ),
            (
                "DEPROVISIOND_HUB_3_CONNECTION_STRING",
                cs("hub-3.azure-devices.net", "registryReadWrite"),
            ),
            (
                "DEPROVISIOND_STORAGE_CONNECTION_STRING_FILE",
                storage_file.display().to_string(),
            ),
            ("DEPROVISIOND_STORAGE_SAS_TTL_SECS", "7200".into()),
            ("DEPROVISIOND_JOBS_POLL_MS", "250".into()),
        ]);
        let c = AzureConfig::from_env_map(&vars).unwrap();
        let hub = |host: &str| c.hubs.iter().find(|h| h.host_name == host).unwrap();
        let one = hub("hub-1.azure-devices.net");
        assert_eq!(
            one.jobs_container.as_ref().unwrap().container(),
            "hub-1-jobs"
        );
        assert_eq!(one.jobs_devices_per_second, Some(450.5));
        let two = hub("hub-2.azure-devices.net");
        assert_eq!(
            two.jobs_container.as_ref().unwrap().expose(),
            sas_url("hub-2-jobs", "c2Vjb25k"),
            "read from the file, trimmed"
        );
        assert_eq!(two.jobs_devices_per_second, None);
        let three = hub("hub-3.azure-devices.net");
        assert_eq!(
            (&three.jobs_container, three.jobs_devices_per_second),
            (&None, None)
        );
        let storage = c.storage.as_ref().unwrap();
        assert_eq!(storage.account.name(), "devstoreaccount1");
        assert_eq!(
            storage.account.blob_endpoint().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert_eq!(storage.sas_ttl, Duration::from_secs(7200));
        assert_eq!(c.jobs_poll_interval, Duration::from_millis(250));
        let shown = format!("{c:?}");
        for secret in ["Zmlyc3Q", "c2Vjb25k", "Eby8vdM02", KEY] {
            assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
        }
        assert!(
            shown.contains("hub-1-jobs"),
            "the container itself is shown"
        );

        let defaults = AzureConfig::from_env_map(&env(&[(
            "DEPROVISIOND_STORAGE_CONNECTION_STRING",
            azurite_cs(),
        )]))
        .unwrap();
        assert_eq!(defaults.storage.unwrap().sas_ttl, DEFAULT_STORAGE_SAS_TTL);
        assert_eq!(defaults.jobs_poll_interval, Duration::from_secs(5));
        let none = AzureConfig::from_env_map(&HashMap::new()).unwrap();
        assert!(none.storage.is_none());
        assert_eq!(none.jobs_poll_interval, DEFAULT_JOBS_POLL_INTERVAL);
    }

    #[test]
    fn jobs_and_storage_errors_name_the_variable_and_hide_secrets() {
        let hub = |extra: &[(&str, String)]| {
            let mut pairs = vec![(
                "DEPROVISIOND_HUB_1_CONNECTION_STRING",
                cs("hub-1.azure-devices.net", "p"),
            )];
            pairs.extend(extra.iter().cloned());
            AzureConfig::from_env_map(&env(&pairs))
                .unwrap_err()
                .to_string()
        };
        // A SAS URL without a container, and one without its sig: named, never echoed.
        let err = hub(&[(
            "DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL",
            "https://acct.blob.core.windows.net/?sv=1&sig=dG9wc2VjcmV0".into(),
        )]);
        assert!(
            err.starts_with(
                "DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL: invalid blob container URL"
            ) && !err.contains("dG9wc2VjcmV0"),
            "{err}"
        );
        let err = hub(&[(
            "DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL",
            "https://acct.blob.core.windows.net/jobs".into(),
        )]);
        assert!(err.contains("carries no SAS query"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad_file = dir.path().join("sas");
        std::fs::write(&bad_file, "ftp://acct/jobs?sig=dG9wc2VjcmV0").unwrap();
        let err = hub(&[(
            "DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL_FILE",
            bad_file.display().to_string(),
        )]);
        assert!(
            err.starts_with("DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL_FILE: ")
                && !err.contains("dG9wc2VjcmV0"),
            "{err}"
        );
        let err = hub(&[
            (
                "DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL",
                sas_url("jobs", "a"),
            ),
            (
                "DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL_FILE",
                bad_file.display().to_string(),
            ),
        ]);
        assert!(err.contains("not both"), "{err}");
        for bad in ["0", "-3", "fast", "NaN", "inf"] {
            let err = hub(&[("DEPROVISIOND_HUB_1_JOBS_DEVICES_PER_SECOND", bad.into())]);
            assert!(
                err.starts_with("DEPROVISIOND_HUB_1_JOBS_DEVICES_PER_SECOND: expected a positive"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            hub(&[("DEPROVISIOND_HUB_1_JOBS_CONTAINER", "x".into())]),
            "unrecognised variable DEPROVISIOND_HUB_1_JOBS_CONTAINER"
        );

        // Two hubs, one container (under two signatures): refused.
        let shared = env(&[
            (
                "DEPROVISIOND_HUB_A_CONNECTION_STRING",
                cs("hub-a.azure-devices.net", "p"),
            ),
            (
                "DEPROVISIOND_HUB_A_JOBS_CONTAINER_SAS_URL",
                sas_url("jobs", "b25l"),
            ),
            (
                "DEPROVISIOND_HUB_B_CONNECTION_STRING",
                cs("hub-b.azure-devices.net", "p"),
            ),
            (
                "DEPROVISIOND_HUB_B_JOBS_CONTAINER_SAS_URL",
                sas_url("jobs", "dHdv"),
            ),
        ]);
        let err = AzureConfig::from_env_map(&shared).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "hubs hub-a.azure-devices.net and hub-b.azure-devices.net are given the same jobs container https://acct.blob.core.windows.net/jobs"
            ) && err.contains("importErrors.log")
                && !err.contains("b25l")
                && !err.contains("dHdv"),
            "{err}"
        );

        let storage = |pairs: &[(&str, String)]| {
            AzureConfig::from_env_map(&env(pairs))
                .unwrap_err()
                .to_string()
        };
        let err = storage(&[(
            "DEPROVISIOND_STORAGE_CONNECTION_STRING",
            "AccountName=acct;AccountKey=not base64 at all!".into(),
        )]);
        assert_eq!(
            err,
            "DEPROVISIOND_STORAGE_CONNECTION_STRING: invalid storage connection string: AccountKey is not valid base64"
        );
        let err = storage(&[(
            "DEPROVISIOND_STORAGE_CONNECTION_STRING",
            format!("AccountName=acct;AccountKey={AZURITE_KEY};AccountName=b"),
        )]);
        assert!(!err.contains("Eby8vdM02"), "{err}");
        let err = storage(&[
            ("DEPROVISIOND_STORAGE_CONNECTION_STRING", azurite_cs()),
            (
                "DEPROVISIOND_STORAGE_CONNECTION_STRING_FILE",
                "/nonexistent".into(),
            ),
        ]);
        assert!(err.contains("not both"), "{err}");
        assert_eq!(
            storage(&[("DEPROVISIOND_STORAGE_KEY", "x".into())]),
            "unrecognised variable DEPROVISIOND_STORAGE_KEY"
        );
        let err = storage(&[
            ("DEPROVISIOND_STORAGE_CONNECTION_STRING", azurite_cs()),
            ("DEPROVISIOND_STORAGE_SAS_TTL_SECS", "30".into()),
        ]);
        assert!(
            err.starts_with(
                "DEPROVISIOND_STORAGE_SAS_TTL_SECS: a hub job's SAS must live at least 60 seconds"
            ),
            "{err}"
        );
        assert!(
            storage(&[("DEPROVISIOND_STORAGE_SAS_TTL_SECS", "0".into())])
                .contains("expected a positive number of seconds")
        );
        assert_eq!(
            storage(&[("DEPROVISIOND_STORAGE_SAS_TTL_SECS", "600".into())]),
            "DEPROVISIOND_STORAGE_SAS_TTL_SECS is set but no storage connection string is"
        );
        for bad in ["9", "soon", "-1"] {
            let err = storage(&[("DEPROVISIOND_JOBS_POLL_MS", bad.into())]);
            assert_eq!(
                err,
                format!(
                    "DEPROVISIOND_JOBS_POLL_MS: expected milliseconds (at least 10), got {bad:?}"
                )
            );
        }
    }

    #[test]
    fn file_configures_jobs_storage_and_env_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure.json");
        let sas_file = dir.path().join("hub-1-jobs");
        std::fs::write(&sas_file, sas_url("hub-1-jobs", "ZmlsZQ")).unwrap();
        let json = serde_json::json!({
            "hubs": [{"connection_string": cs("hub-1.azure-devices.net", "registryReadWrite"),
                      "jobs_container_sas_url_file": sas_file, "jobs_devices_per_second": 120},
                     {"connection_string": cs("hub-2.azure-devices.net", "registryReadWrite"),
                      "jobs_container_sas_url": sas_url("hub-2-jobs", "aW5saW5l")}],
            "storage": {"connection_string": azurite_cs(), "sas_ttl_secs": 3600},
            "jobs_poll_ms": 1000
        });
        std::fs::write(&path, json.to_string()).unwrap();
        let c = AzureConfig::from_file(&path).unwrap();
        assert_eq!(
            c.hubs[0].jobs_container.as_ref().unwrap().container(),
            "hub-1-jobs"
        );
        assert_eq!(c.hubs[0].jobs_devices_per_second, Some(120.0));
        assert_eq!(
            c.hubs[1].jobs_container.as_ref().unwrap().container(),
            "hub-2-jobs"
        );
        let storage = c.storage.as_ref().unwrap();
        assert_eq!(storage.sas_ttl, Duration::from_secs(3600));
        assert_eq!(c.jobs_poll_interval, Duration::from_secs(1));
        assert!(!format!("{c:?}").contains("aW5saW5l"));

        // The environment's connection string replaces the file's; the file's lifetime stays.
        let vars = env(&[
            ("DEPROVISIOND_AZURE_CONFIG", path.display().to_string()),
            (
                "DEPROVISIOND_STORAGE_CONNECTION_STRING",
                format!(
                    "DefaultEndpointsProtocol=https;AccountName=fleetjobs;AccountKey={AZURITE_KEY}"
                ),
            ),
            ("DEPROVISIOND_JOBS_POLL_MS", "10".into()),
        ]);
        let c = AzureConfig::from_env_map(&vars).unwrap();
        let storage = c.storage.as_ref().unwrap();
        assert_eq!(storage.account.name(), "fleetjobs");
        assert_eq!(storage.sas_ttl, Duration::from_secs(3600));
        assert_eq!(c.jobs_poll_interval, Duration::from_millis(10));
    }

    #[test]
    fn file_jobs_storage_errors() {
        let err = |json: serde_json::Value| {
            AzureConfig::from_json_str(&json.to_string())
                .unwrap_err()
                .to_string()
        };
        let e = err(
            serde_json::json!({"hubs": [{"connection_string": cs("h", "p"),
            "jobs_devices_per_second": 0}]}),
        );
        assert_eq!(
            e,
            "<inline>: hubs[0] jobs_devices_per_second: expected a positive number of devices per second, got 0"
        );
        let e = err(
            serde_json::json!({"hubs": [{"connection_string": cs("h", "p"),
            "jobs_container_sas_url": "https://acct.blob.core.windows.net/jobs?sp=r&sig="}]}),
        );
        assert!(
            e.starts_with("<inline>: hubs[0] jobs_container_sas_url: invalid blob container URL"),
            "{e}"
        );
        let e = err(serde_json::json!({"storage": {"connection_string": azurite_cs(), "ttl": 5}}));
        assert!(e.contains("unknown field `ttl`"), "{e}");
        let e = err(serde_json::json!({"storage": {"connection_string": "AccountName=a"}}));
        assert_eq!(
            e,
            "<inline>: storage connection_string: invalid storage connection string: no AccountKey"
        );
        let e = err(serde_json::json!({"storage": {"sas_ttl_secs": 600}}));
        assert_eq!(
            e,
            "<inline>: storage sas_ttl_secs is set but no storage connection string is"
        );
        let e = err(serde_json::json!({"jobs_poll_ms": 1}));
        assert_eq!(
            e,
            "<inline>: jobs_poll_ms: expected milliseconds (at least 10), got 1"
        );
    }
}

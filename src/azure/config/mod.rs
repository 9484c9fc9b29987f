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
//! | `DEPROVISIOND_DPS_<NAME>_OPS_PER_MINUTE` | Operations per minute to pace that DPS instance at (default 1,000; 0: not paced). |
//! | `DEPROVISIOND_PACING_BURST_SECS` | Seconds of budget spent at once after an idle spell (default 3). |
//! | `DEPROVISIOND_PACING_INLINE_WAIT_MS` | Longest wait for budget sat out in place; longer, the device is rescheduled (default 1000). |
//! | `DEPROVISIOND_AZURE_CONNECT_TIMEOUT_SECS` | Connect timeout of every Azure call (default 10). |
//! | `DEPROVISIOND_AZURE_REQUEST_TIMEOUT_SECS` | Whole-request timeout (default 60). |
//! | `DEPROVISIOND_AZURE_TOKEN_TTL_SECS` | Lifetime of minted SAS tokens (default 3600; renewed 5 min before expiry). |
//! | `DEPROVISIOND_AZURE_EXTRA_ROOTS_FILE` | PEM file of extra trusted root certificates (a simulator's CA). |
//!
//! `<NAME>` becomes the instance name in lower case with `_` read as `-`: `DEPROVISIOND_DPS_EU_WEST_CONNECTION_STRING`
//! configures the instance `eu-west`. Names are matched case-insensitively. Any other variable starting with
//! `DEPROVISIOND_DPS_` or `DEPROVISIOND_HUB_` is an error, so a typo does not go unnoticed.
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
//!     {"host_name": "hub-2.azure-devices.net", "connection_string": "HostName=hub-2.azure-devices.net;…", "tier": "S3"}
//!   ],
//!   "default_dps": "eu-west",
//!   "connect_timeout_secs": 10, "request_timeout_secs": 60, "token_ttl_secs": 3600,
//!   "extra_roots_file": "/etc/deprovisiond/sim-ca.pem"
//! }
//! ```
//! A hub's `host_name` is optional; when given it must equal the connection string's HostName. Relative
//! `*_file` paths are read relative to the working directory. Secrets never appear in `Debug` output or errors.

mod env;
mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use self::env::ENV_CONFIG_FILE;
use self::file::{RawFile, read_text};
use super::auth::DEFAULT_TOKEN_TTL;
use super::connection_string::{ConnectionString, ConnectionStringError};
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

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
}

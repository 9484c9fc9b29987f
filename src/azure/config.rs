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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::auth::DEFAULT_TOKEN_TTL;
use super::connection_string::{ConnectionString, ConnectionStringError};
use super::dps::DpsClient;
use super::error::AzureError;
use super::hub::HubClient;
use super::transport::{
    ClientOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, build_http_client,
};
use crate::domain::clock::{Clock, SystemClock};

const ENV_CONFIG_FILE: &str = "DEPROVISIOND_AZURE_CONFIG";
const ENV_DPS_PREFIX: &str = "DEPROVISIOND_DPS_";
const ENV_HUB_PREFIX: &str = "DEPROVISIOND_HUB_";
const ENV_DEFAULT_DPS: &str = "DEPROVISIOND_DEFAULT_DPS";
const ENV_CONNECT_TIMEOUT: &str = "DEPROVISIOND_AZURE_CONNECT_TIMEOUT_SECS";
const ENV_REQUEST_TIMEOUT: &str = "DEPROVISIOND_AZURE_REQUEST_TIMEOUT_SECS";
const ENV_TOKEN_TTL: &str = "DEPROVISIOND_AZURE_TOKEN_TTL_SECS";
const ENV_EXTRA_ROOTS: &str = "DEPROVISIOND_AZURE_EXTRA_ROOTS_FILE";

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

/// IoT Hub pricing tier, which sets the identity-registry quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    pub fn registry_ops_per_minute_per_unit(self) -> u32 {
        match self {
            Self::B3 | Self::S3 => 5_000,
            Self::F1 | Self::B1 | Self::B2 | Self::S1 | Self::S2 => 100,
        }
    }
}

impl FromStr for HubTier {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "F1" => Self::F1,
            "B1" => Self::B1,
            "B2" => Self::B2,
            "B3" => Self::B3,
            "S1" => Self::S1,
            "S2" => Self::S2,
            "S3" => Self::S3,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown IoT Hub tier {other:?} (expected F1, B1, B2, B3, S1, S2 or S3)"
                )));
            }
        })
    }
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
        }
    }
}

/// Raw file shape; no `Debug` so connection strings cannot be printed by accident.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    dps: Vec<RawDps>,
    #[serde(default)]
    hubs: Vec<RawHub>,
    default_dps: Option<String>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    token_ttl_secs: Option<u64>,
    extra_roots_file: Option<PathBuf>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawDps {
    #[serde(default)]
    name: String,
    connection_string: Option<String>,
    connection_string_file: Option<PathBuf>,
    api_version: Option<String>,
    base_url: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawHub {
    host_name: Option<String>,
    connection_string: Option<String>,
    connection_string_file: Option<PathBuf>,
    api_version: Option<String>,
    base_url: Option<String>,
    tier: Option<String>,
    units: Option<u32>,
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn connection_string(
    text: Option<&str>,
    file: Option<&Path>,
    origin: &str,
) -> Result<ConnectionString, ConfigError> {
    let text = match (text, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid(format!(
                "{origin}: give the connection string or its file, not both"
            )));
        }
        (Some(t), None) => t.to_string(),
        (None, Some(f)) => read_text(f)?,
        (None, None) => {
            return Err(ConfigError::Invalid(format!(
                "{origin}: no connection string"
            )));
        }
    };
    ConnectionString::parse(text.trim()).map_err(|source| ConfigError::ConnectionString {
        origin: origin.to_string(),
        source,
    })
}

fn parse_base_url(text: Option<&str>, origin: &str) -> Result<Option<Url>, ConfigError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let url = Url::parse(text)
        .map_err(|e| ConfigError::Invalid(format!("{origin}: base URL {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::Invalid(format!(
            "{origin}: base URL {text:?} must be http(s)://host[:port]"
        )));
    }
    Ok(Some(url))
}

fn normalise_name(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

fn overlay<T: Clone>(base: &mut Option<T>, over: &Option<T>) {
    if over.is_some() {
        base.clone_from(over);
    }
}

impl RawDps {
    fn overlay(&mut self, over: &RawDps) {
        // Giving one form of the connection string replaces the other.
        if over.connection_string.is_some() || over.connection_string_file.is_some() {
            self.connection_string.clone_from(&over.connection_string);
            self.connection_string_file
                .clone_from(&over.connection_string_file);
        }
        overlay(&mut self.api_version, &over.api_version);
        overlay(&mut self.base_url, &over.base_url);
    }

    fn finish(&self, origin: &str) -> Result<DpsInstanceConfig, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{origin}: a DPS instance needs a name"
            )));
        }
        Ok(DpsInstanceConfig {
            name: normalise_name(&self.name),
            connection_string: connection_string(
                self.connection_string.as_deref(),
                self.connection_string_file.as_deref(),
                origin,
            )?,
            api_version: self.api_version.clone().filter(|v| !v.trim().is_empty()),
            base_url: parse_base_url(self.base_url.as_deref(), origin)?,
        })
    }
}

impl RawHub {
    fn finish(&self, origin: &str) -> Result<HubConfig, ConfigError> {
        let cs = connection_string(
            self.connection_string.as_deref(),
            self.connection_string_file.as_deref(),
            origin,
        )?;
        let host_name = cs.host_name().to_ascii_lowercase();
        if let Some(given) = &self.host_name
            && !given.trim().eq_ignore_ascii_case(&host_name)
        {
            return Err(ConfigError::Invalid(format!(
                "{origin}: host_name {given} does not match the connection string's HostName {host_name}"
            )));
        }
        Ok(HubConfig {
            host_name,
            connection_string: cs,
            api_version: self.api_version.clone().filter(|v| !v.trim().is_empty()),
            base_url: parse_base_url(self.base_url.as_deref(), origin)?,
            tier: self.tier.as_deref().map(HubTier::from_str).transpose()?,
            units: self.units,
        })
    }
}

fn parse_secs(text: &str, origin: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{origin}: expected a positive number of seconds, got {text:?}"
            ))
        })
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

    fn build(
        file: RawFile,
        file_path: Option<&Path>,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file_origin = file_path
            .map(|p| p.display().to_string())
            .unwrap_or_default();

        // DPS: file entries, then env overlays by name.
        let mut dps: BTreeMap<String, (RawDps, String)> = BTreeMap::new();
        for (i, entry) in file.dps.iter().enumerate() {
            let name = normalise_name(&entry.name);
            let origin = format!("{file_origin}: dps[{i}] {name}");
            if dps
                .insert(name.clone(), (entry.clone(), origin.clone()))
                .is_some()
            {
                return Err(ConfigError::Invalid(format!(
                    "{origin}: DPS instance {name} is configured twice"
                )));
            }
        }
        let mut hub_raw: Vec<(RawHub, String)> = file
            .hubs
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), format!("{file_origin}: hubs[{i}]")))
            .collect();
        let mut env_hubs: BTreeMap<String, RawHub> = BTreeMap::new();

        // Sorted so errors and results do not depend on HashMap order.
        let mut keys: Vec<&String> = vars.keys().collect();
        keys.sort();
        for key in keys {
            let value = &vars[key];
            if let Some(rest) = key.strip_prefix(ENV_DPS_PREFIX) {
                let (label, field) = split_field(rest, DPS_FIELDS)
                    .ok_or_else(|| ConfigError::Invalid(format!("unrecognised variable {key}")))?;
                let name = label.to_ascii_lowercase().replace('_', "-");
                let mut over = RawDps {
                    name: name.clone(),
                    ..RawDps::default()
                };
                match field {
                    "_CONNECTION_STRING" => over.connection_string = Some(value.clone()),
                    "_CONNECTION_STRING_FILE" => {
                        over.connection_string_file = Some(PathBuf::from(value))
                    }
                    "_API_VERSION" => over.api_version = Some(value.clone()),
                    _ => over.base_url = Some(value.clone()),
                }
                let entry = dps.entry(name.clone()).or_insert_with(|| {
                    (
                        RawDps {
                            name: name.clone(),
                            ..RawDps::default()
                        },
                        format!("{ENV_DPS_PREFIX}{label}_*"),
                    )
                });
                if field.starts_with("_CONNECTION_STRING")
                    && (entry.0.connection_string.is_some()
                        || entry.0.connection_string_file.is_some())
                    && entry.1.starts_with(ENV_DPS_PREFIX)
                {
                    return Err(ConfigError::Invalid(format!(
                        "{ENV_DPS_PREFIX}{label}: give _CONNECTION_STRING or _CONNECTION_STRING_FILE, not both"
                    )));
                }
                entry.0.overlay(&over);
                if field.starts_with("_CONNECTION_STRING") {
                    entry.1 = format!("{ENV_DPS_PREFIX}{label}_*");
                }
            } else if let Some(rest) = key.strip_prefix(ENV_HUB_PREFIX) {
                let (label, field) = split_field(rest, HUB_FIELDS)
                    .ok_or_else(|| ConfigError::Invalid(format!("unrecognised variable {key}")))?;
                let hub = env_hubs.entry(label.to_string()).or_default();
                match field {
                    "_CONNECTION_STRING" => hub.connection_string = Some(value.clone()),
                    "_CONNECTION_STRING_FILE" => {
                        hub.connection_string_file = Some(PathBuf::from(value))
                    }
                    "_API_VERSION" => hub.api_version = Some(value.clone()),
                    "_BASE_URL" => hub.base_url = Some(value.clone()),
                    "_TIER" => hub.tier = Some(value.clone()),
                    _ => {
                        let units = value
                            .trim()
                            .parse::<u32>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                ConfigError::Invalid(format!(
                                    "{key}: expected a positive number of units, got {value:?}"
                                ))
                            })?;
                        hub.units = Some(units);
                    }
                }
            }
        }
        hub_raw.extend(
            env_hubs
                .into_iter()
                .map(|(label, h)| (h, format!("{ENV_HUB_PREFIX}{label}_*"))),
        );

        let dps = dps
            .values()
            .map(|(raw, origin)| raw.finish(origin))
            .collect::<Result<Vec<_>, _>>()?;

        // Later entries (environment) replace earlier ones (file) for the same host.
        let mut hubs: BTreeMap<String, HubConfig> = BTreeMap::new();
        for (raw, origin) in &hub_raw {
            let hub = raw.finish(origin)?;
            hubs.insert(hub.host_name.clone(), hub);
        }

        let default_dps = vars
            .get(ENV_DEFAULT_DPS)
            .cloned()
            .or(file.default_dps)
            .map(|n| normalise_name(&n))
            .filter(|n| !n.is_empty());
        if let Some(name) = &default_dps
            && !dps.iter().any(|d| &d.name == name)
        {
            return Err(ConfigError::Invalid(format!(
                "default DPS instance {name} is not configured"
            )));
        }

        let secs = |var: &str,
                    from_file: Option<u64>,
                    default: Duration|
         -> Result<Duration, ConfigError> {
            match vars.get(var) {
                Some(v) => Ok(Duration::from_secs(parse_secs(v, var)?)),
                None => Ok(from_file
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .unwrap_or(default)),
            }
        };
        let connect_timeout = secs(
            ENV_CONNECT_TIMEOUT,
            file.connect_timeout_secs,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let request_timeout = secs(
            ENV_REQUEST_TIMEOUT,
            file.request_timeout_secs,
            DEFAULT_REQUEST_TIMEOUT,
        )?;
        let token_ttl = secs(ENV_TOKEN_TTL, file.token_ttl_secs, DEFAULT_TOKEN_TTL)?;
        let roots_file = vars
            .get(ENV_EXTRA_ROOTS)
            .map(PathBuf::from)
            .or(file.extra_roots_file);
        let extra_root_certificates_pem = match roots_file {
            Some(path) => {
                vec![std::fs::read(&path).map_err(|source| ConfigError::Read { path, source })?]
            }
            None => Vec::new(),
        };

        Ok(Self {
            dps,
            hubs: hubs.into_values().collect(),
            default_dps,
            connect_timeout,
            request_timeout,
            token_ttl,
            extra_root_certificates_pem,
        })
    }
}

const DPS_FIELDS: &[&str] = &[
    "_CONNECTION_STRING_FILE",
    "_CONNECTION_STRING",
    "_API_VERSION",
    "_BASE_URL",
];
const HUB_FIELDS: &[&str] = &[
    "_CONNECTION_STRING_FILE",
    "_CONNECTION_STRING",
    "_API_VERSION",
    "_BASE_URL",
    "_TIER",
    "_UNITS",
];

/// Splits `EU_WEST_CONNECTION_STRING` into (`EU_WEST`, `_CONNECTION_STRING`); fields are tried longest first.
fn split_field<'a>(rest: &'a str, fields: &[&'static str]) -> Option<(&'a str, &'static str)> {
    fields.iter().find_map(|f| {
        let label = rest.strip_suffix(f)?;
        (!label.is_empty()).then_some((label, *f))
    })
}

/// The clients of every configured DPS instance and hub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AzureClients {
    inner: Arc<ClientsInner>,
}

#[derive(Debug)]
struct ClientsInner {
    dps: BTreeMap<String, DpsClient>,
    default_dps: Option<String>,
    hubs: BTreeMap<String, (HubClient, HubConfig)>,
}

impl AzureClients {
    /// Builds one client per DPS instance and per hub, sharing one HTTP connection pool, with the system clock.
    pub fn new(config: &AzureConfig) -> Result<Self, AzureError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// As [`Self::new`] with the given clock for token expiry.
    pub fn with_clock(config: &AzureConfig, clock: Arc<dyn Clock>) -> Result<Self, AzureError> {
        let http = build_http_client(
            config.connect_timeout,
            config.request_timeout,
            &config.extra_root_certificates_pem,
        )?;
        let options = |api_version: &Option<String>, base_url: &Option<Url>| ClientOptions {
            api_version: api_version.clone(),
            base_url: base_url.clone(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            token_ttl: config.token_ttl,
            clock: clock.clone(),
            extra_root_certificates_pem: Vec::new(),
            http_client: Some(http.clone()),
        };
        let mut dps = BTreeMap::new();
        for d in &config.dps {
            let client =
                DpsClient::new(&d.connection_string, options(&d.api_version, &d.base_url))?;
            dps.insert(normalise_name(&d.name), client);
        }
        let mut hubs = BTreeMap::new();
        for h in &config.hubs {
            let client =
                HubClient::new(&h.connection_string, options(&h.api_version, &h.base_url))?;
            hubs.insert(h.host_name.to_ascii_lowercase(), (client, h.clone()));
        }
        let default_dps = match &config.default_dps {
            Some(name) => Some(normalise_name(name)),
            None if dps.len() == 1 => dps.keys().next().cloned(),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(ClientsInner {
                dps,
                default_dps,
                hubs,
            }),
        })
    }

    /// The client of the DPS instance `name` (case-insensitive).
    pub fn dps(&self, name: &str) -> Result<&DpsClient, AzureError> {
        self.inner
            .dps
            .get(&normalise_name(name))
            .ok_or_else(|| AzureError::UnknownDps {
                name: name.to_string(),
            })
    }

    /// The default DPS instance (configured, or the only one).
    pub fn default_dps(&self) -> Result<&DpsClient, AzureError> {
        let name = self
            .inner
            .default_dps
            .as_deref()
            .ok_or_else(|| AzureError::UnknownDps {
                name: "(none named, and there is no single or configured default)".to_string(),
            })?;
        self.dps(name)
    }

    /// The named instance, or the default one when no name is given.
    pub fn dps_or_default(&self, name: Option<&str>) -> Result<&DpsClient, AzureError> {
        match name {
            Some(n) => self.dps(n),
            None => self.default_dps(),
        }
    }

    /// The name of the default DPS instance.
    pub fn default_dps_name(&self) -> Option<&str> {
        self.inner.default_dps.as_deref()
    }

    /// Names of the configured DPS instances, sorted.
    pub fn dps_names(&self) -> Vec<&str> {
        self.inner.dps.keys().map(String::as_str).collect()
    }

    /// The client of the hub with this host name (case-insensitive, as in `assignedHub`).
    pub fn hub(&self, host_name: &str) -> Result<&HubClient, AzureError> {
        self.inner
            .hubs
            .get(&host_name.trim().to_ascii_lowercase())
            .map(|(c, _)| c)
            .ok_or_else(|| AzureError::NoCredentials {
                hub: host_name.to_string(),
            })
    }

    /// The configuration of a hub (tier and units, for pacing).
    pub fn hub_config(&self, host_name: &str) -> Option<&HubConfig> {
        self.inner
            .hubs
            .get(&host_name.trim().to_ascii_lowercase())
            .map(|(_, c)| c)
    }

    /// Host names of the configured hubs, sorted.
    pub fn hub_hosts(&self) -> Vec<&str> {
        self.inner.hubs.keys().map(String::as_str).collect()
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

    #[test]
    fn clients_registry() {
        let vars = env(&[
            (
                "DEPROVISIOND_DPS_ONLY_CONNECTION_STRING",
                cs("only.azure-devices-provisioning.net", "p"),
            ),
            (
                "DEPROVISIOND_HUB_1_CONNECTION_STRING",
                cs("Hub-1.azure-devices.net", "registryReadWrite"),
            ),
            ("DEPROVISIOND_HUB_1_API_VERSION", "2024-03-31".into()),
        ]);
        let clients = AzureClients::new(&AzureConfig::from_env_map(&vars).unwrap()).unwrap();
        assert_eq!(
            clients.default_dps().unwrap().host_name(),
            "only.azure-devices-provisioning.net"
        );
        assert_eq!(clients.default_dps_name(), Some("only"));
        assert_eq!(
            clients.dps_or_default(None).unwrap().host_name(),
            "only.azure-devices-provisioning.net"
        );
        assert!(clients.dps_or_default(Some("only")).is_ok());
        assert_eq!(clients.dps("ONLY").unwrap().api_version(), "2021-10-01");
        assert!(matches!(
            clients.dps("other"),
            Err(AzureError::UnknownDps { .. })
        ));
        let hub = clients.hub("HUB-1.azure-devices.net").unwrap();
        assert_eq!(hub.api_version(), "2024-03-31");
        assert_eq!(hub.base_url().as_str(), "https://hub-1.azure-devices.net/");
        let err = clients.hub("hub-9.azure-devices.net").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no credentials configured for hub hub-9.azure-devices.net"
        );
        assert_eq!(clients.hub_hosts(), vec!["hub-1.azure-devices.net"]);

        let two = env(&[
            ("DEPROVISIOND_DPS_A_CONNECTION_STRING", cs("a", "p")),
            ("DEPROVISIOND_DPS_B_CONNECTION_STRING", cs("b", "p")),
        ]);
        let clients = AzureClients::new(&AzureConfig::from_env_map(&two).unwrap()).unwrap();
        assert!(
            matches!(clients.default_dps(), Err(AzureError::UnknownDps { .. })),
            "no default among two"
        );
        assert_eq!(clients.dps_names(), vec!["a", "b"]);
    }
}

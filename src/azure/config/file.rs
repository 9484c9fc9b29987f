//! The JSON file's schema (`DEPROVISIOND_AZURE_CONFIG`) and how one entry becomes a validated instance.
//! The same raw shapes carry environment overrides, so a field is parsed and checked in one place.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use url::Url;

use super::{ConfigError, DpsInstanceConfig, HubConfig, normalise_name};
use crate::azure::connection_string::ConnectionString;
use crate::azure::quota::HubTier;

/// Raw file shape; no `Debug` so connection strings cannot be printed by accident.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) dps: Vec<RawDps>,
    #[serde(default)]
    pub(super) hubs: Vec<RawHub>,
    pub(super) default_dps: Option<String>,
    pub(super) connect_timeout_secs: Option<u64>,
    pub(super) request_timeout_secs: Option<u64>,
    pub(super) token_ttl_secs: Option<u64>,
    pub(super) extra_roots_file: Option<PathBuf>,
    /// Pacing: seconds of budget a bucket may spend at once after an idle spell.
    pub(super) pacing_burst_secs: Option<f64>,
    /// Pacing: longest wait for budget a step sits out in place before it is rescheduled instead.
    pub(super) pacing_inline_wait_ms: Option<u64>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDps {
    #[serde(default)]
    pub(super) name: String,
    pub(super) connection_string: Option<String>,
    pub(super) connection_string_file: Option<PathBuf>,
    pub(super) api_version: Option<String>,
    pub(super) base_url: Option<String>,
    /// Operations per minute this instance allows (default 1,000; 0: not paced).
    pub(super) ops_per_minute: Option<f64>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHub {
    pub(super) host_name: Option<String>,
    pub(super) connection_string: Option<String>,
    pub(super) connection_string_file: Option<PathBuf>,
    pub(super) api_version: Option<String>,
    pub(super) base_url: Option<String>,
    pub(super) tier: Option<String>,
    pub(super) units: Option<u32>,
    /// Registry operations per minute, instead of tier x units (0: not paced).
    pub(super) ops_per_minute: Option<f64>,
}

pub(super) fn read_text(path: &Path) -> Result<String, ConfigError> {
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

fn overlay<T: Clone>(base: &mut Option<T>, over: &Option<T>) {
    if over.is_some() {
        base.clone_from(over);
    }
}

impl RawDps {
    pub(super) fn overlay(&mut self, over: &RawDps) {
        // Giving one form of the connection string replaces the other.
        if over.connection_string.is_some() || over.connection_string_file.is_some() {
            self.connection_string.clone_from(&over.connection_string);
            self.connection_string_file
                .clone_from(&over.connection_string_file);
        }
        overlay(&mut self.api_version, &over.api_version);
        overlay(&mut self.base_url, &over.base_url);
        overlay(&mut self.ops_per_minute, &over.ops_per_minute);
    }

    pub(super) fn finish(&self, origin: &str) -> Result<DpsInstanceConfig, ConfigError> {
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
    pub(super) fn finish(&self, origin: &str) -> Result<HubConfig, ConfigError> {
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
            tier: self
                .tier
                .as_deref()
                .map(HubTier::from_str)
                .transpose()
                .map_err(|e| ConfigError::Invalid(format!("{origin}: {e}")))?,
            units: self.units,
        })
    }
}

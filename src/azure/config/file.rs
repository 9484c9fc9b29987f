//! The JSON file's schema (`DEPROVISIOND_AZURE_CONFIG`) and how one entry becomes a validated instance.
//! The same raw shapes carry environment overrides, so a field is parsed and checked in one place.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{
    ConfigError, DEFAULT_STORAGE_SAS_TTL, DpsInstanceConfig, HubConfig, MIN_STORAGE_SAS_TTL,
    StorageConfig, normalise_name,
};
use crate::azure::blob::ContainerSasUrl;
use crate::azure::connection_string::ConnectionString;
use crate::azure::quota::HubTier;
use crate::azure::storage_account::StorageAccount;

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
    /// The storage account hub import/export jobs' containers are minted from.
    pub(super) storage: Option<RawStorage>,
    /// How often a running hub import/export job is polled, in milliseconds.
    pub(super) jobs_poll_ms: Option<u64>,
}

/// `"storage": {…}`: a storage connection string (or its file) and the lifetime of the SAS minted
/// from it.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) connection_string: Option<String>,
    pub(super) connection_string_file: Option<PathBuf>,
    pub(super) sas_ttl_secs: Option<u64>,
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
    /// SAS URL of the blob container this hub's import/export jobs use.
    pub(super) jobs_container_sas_url: Option<String>,
    /// File holding that SAS URL.
    pub(super) jobs_container_sas_url_file: Option<PathBuf>,
    /// Devices per second an import/export job of this hub is modelled to go through.
    pub(super) jobs_devices_per_second: Option<f64>,
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
    let Some(text) = secret_text(text, file, origin, "the connection string")? else {
        return Err(ConfigError::Invalid(format!(
            "{origin}: no connection string"
        )));
    };
    ConnectionString::parse(&text).map_err(|source| ConfigError::ConnectionString {
        origin: origin.to_string(),
        source,
    })
}

/// The text of a secret given inline or as a file (at most one of the two; `None` when neither).
/// `what` names it in the error ("the connection string", "the jobs container SAS URL").
pub(super) fn secret_text(
    text: Option<&str>,
    file: Option<&Path>,
    origin: &str,
    what: &str,
) -> Result<Option<String>, ConfigError> {
    match (text, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "{origin}: give {what} or its file, not both"
        ))),
        (Some(t), None) => Ok(Some(t.trim().to_string())),
        (None, Some(f)) => Ok(Some(read_text(f)?.trim().to_string())),
        (None, None) => Ok(None),
    }
}

/// The name of one field of an entry in errors: an environment entry (`DEPROVISIOND_HUB_1_*`) names
/// the variable (`DEPROVISIOND_HUB_1_JOBS_DEVICES_PER_SECOND`), a file entry the JSON field.
pub(super) fn field_origin(origin: &str, field: &str) -> String {
    match origin.strip_suffix('*') {
        Some(prefix) => format!("{prefix}{}", field.to_ascii_uppercase()),
        None => format!("{origin} {field}"),
    }
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
            jobs_container: self.jobs_container(origin)?,
            jobs_devices_per_second: match self.jobs_devices_per_second {
                Some(n) if n.is_finite() && n > 0.0 => Some(n),
                Some(n) => {
                    return Err(ConfigError::Invalid(format!(
                        "{}: expected a positive number of devices per second, got {n}",
                        field_origin(origin, "jobs_devices_per_second")
                    )));
                }
                None => None,
            },
        })
    }

    /// The jobs container, parsed from the SAS URL or its file; errors name the variable or field
    /// and never repeat the SAS.
    fn jobs_container(&self, origin: &str) -> Result<Option<ContainerSasUrl>, ConfigError> {
        let field = match self.jobs_container_sas_url_file {
            Some(_) if self.jobs_container_sas_url.is_none() => "jobs_container_sas_url_file",
            _ => "jobs_container_sas_url",
        };
        let Some(text) = secret_text(
            self.jobs_container_sas_url.as_deref(),
            self.jobs_container_sas_url_file.as_deref(),
            origin,
            "the jobs container SAS URL",
        )?
        else {
            return Ok(None);
        };
        ContainerSasUrl::parse(&text)
            .map(Some)
            .map_err(|source| ConfigError::Blob {
                origin: field_origin(origin, field),
                source: Box::new(source),
            })
    }
}

impl RawStorage {
    /// The storage account and SAS lifetime; `None` when no connection string is given. `origin`
    /// names the connection string's source, `ttl_origin` the lifetime's.
    pub(super) fn finish(
        &self,
        origin: &str,
        ttl_origin: &str,
    ) -> Result<Option<StorageConfig>, ConfigError> {
        let Some(text) = secret_text(
            self.connection_string.as_deref(),
            self.connection_string_file.as_deref(),
            origin,
            "the storage connection string",
        )?
        else {
            if self.sas_ttl_secs.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{ttl_origin} is set but no storage connection string is"
                )));
            }
            return Ok(None);
        };
        let account =
            StorageAccount::from_connection_string(&text).map_err(|source| ConfigError::Blob {
                origin: origin.to_string(),
                source: Box::new(source),
            })?;
        let sas_ttl = match self.sas_ttl_secs {
            None => DEFAULT_STORAGE_SAS_TTL,
            Some(secs) if Duration::from_secs(secs) >= MIN_STORAGE_SAS_TTL => {
                Duration::from_secs(secs)
            }
            Some(secs) => {
                return Err(ConfigError::Invalid(format!(
                    "{ttl_origin}: a hub job's SAS must live at least {} seconds, got {secs}",
                    MIN_STORAGE_SAS_TTL.as_secs()
                )));
            }
        };
        Ok(Some(StorageConfig { account, sas_ttl }))
    }
}

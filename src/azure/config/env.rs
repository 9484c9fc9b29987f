//! Environment variables (`DEPROVISIOND_DPS_<NAME>_*`, `DEPROVISIOND_HUB_<LABEL>_*`,
//! `DEPROVISIOND_STORAGE_*`, timeouts) laid over the file's entries: later sources win field by field,
//! and an unknown variable under those prefixes is an error.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{RawDps, RawFile, RawHub};
use super::{
    AzureConfig, ConfigError, DEFAULT_JOBS_POLL_INTERVAL, HubConfig, MIN_JOBS_POLL_INTERVAL,
    PacingConfig, normalise_name,
};
use crate::azure::auth::DEFAULT_TOKEN_TTL;
use crate::azure::transport::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};

pub(super) const ENV_CONFIG_FILE: &str = "DEPROVISIOND_AZURE_CONFIG";
const ENV_DPS_PREFIX: &str = "DEPROVISIOND_DPS_";
const ENV_HUB_PREFIX: &str = "DEPROVISIOND_HUB_";
const ENV_DEFAULT_DPS: &str = "DEPROVISIOND_DEFAULT_DPS";
const ENV_CONNECT_TIMEOUT: &str = "DEPROVISIOND_AZURE_CONNECT_TIMEOUT_SECS";
const ENV_REQUEST_TIMEOUT: &str = "DEPROVISIOND_AZURE_REQUEST_TIMEOUT_SECS";
const ENV_TOKEN_TTL: &str = "DEPROVISIOND_AZURE_TOKEN_TTL_SECS";
const ENV_EXTRA_ROOTS: &str = "DEPROVISIOND_AZURE_EXTRA_ROOTS_FILE";
const ENV_PACING_BURST: &str = "DEPROVISIOND_PACING_BURST_SECS";
const ENV_PACING_INLINE_WAIT: &str = "DEPROVISIOND_PACING_INLINE_WAIT_MS";
const ENV_STORAGE_PREFIX: &str = "DEPROVISIOND_STORAGE_";
const ENV_JOBS_POLL: &str = "DEPROVISIOND_JOBS_POLL_MS";

fn parse_rate(text: &str, origin: &str) -> Result<f64, ConfigError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{origin}: expected operations per minute (0 or more), got {text:?}"
            ))
        })
}

fn parse_devices_per_second(text: &str, origin: &str) -> Result<f64, ConfigError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{origin}: expected a positive number of devices per second, got {text:?}"
            ))
        })
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
    /// Merges the file's entries with the environment's and validates the result.
    pub(super) fn build(
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
        let mut storage = file.storage.clone().unwrap_or_default();
        let mut storage_origin = format!("{file_origin}: storage connection_string");
        let mut storage_ttl_origin = format!("{file_origin}: storage sas_ttl_secs");
        let (mut env_storage_cs, mut env_storage_cs_file) = (None, None);

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
                    "_OPS_PER_MINUTE" => over.ops_per_minute = Some(parse_rate(value, key)?),
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
                    "_OPS_PER_MINUTE" => hub.ops_per_minute = Some(parse_rate(value, key)?),
                    "_JOBS_CONTAINER_SAS_URL" => hub.jobs_container_sas_url = Some(value.clone()),
                    "_JOBS_CONTAINER_SAS_URL_FILE" => {
                        hub.jobs_container_sas_url_file = Some(PathBuf::from(value))
                    }
                    "_JOBS_DEVICES_PER_SECOND" => {
                        hub.jobs_devices_per_second = Some(parse_devices_per_second(value, key)?)
                    }
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
            } else if let Some(rest) = key.strip_prefix(ENV_STORAGE_PREFIX) {
                match rest {
                    "CONNECTION_STRING" => env_storage_cs = Some(value.clone()),
                    "CONNECTION_STRING_FILE" => env_storage_cs_file = Some(PathBuf::from(value)),
                    "SAS_TTL_SECS" => {
                        storage.sas_ttl_secs = Some(parse_secs(value, key)?);
                        storage_ttl_origin = key.clone();
                    }
                    _ => return Err(ConfigError::Invalid(format!("unrecognised variable {key}"))),
                }
            }
        }
        // Giving one form of the connection string replaces the file's (either form).
        if env_storage_cs.is_some() || env_storage_cs_file.is_some() {
            storage_origin = match env_storage_cs_file {
                Some(_) if env_storage_cs.is_none() => {
                    format!("{ENV_STORAGE_PREFIX}CONNECTION_STRING_FILE")
                }
                _ => format!("{ENV_STORAGE_PREFIX}CONNECTION_STRING"),
            };
            storage.connection_string = env_storage_cs;
            storage.connection_string_file = env_storage_cs_file;
        }
        let storage = storage.finish(&storage_origin, &storage_ttl_origin)?;
        hub_raw.extend(
            env_hubs
                .into_iter()
                .map(|(label, h)| (h, format!("{ENV_HUB_PREFIX}{label}_*"))),
        );

        let mut pacing = PacingConfig::default();
        for (raw, _) in dps.values() {
            if let Some(rate) = raw.ops_per_minute {
                check_rate(rate, "dps ops_per_minute")?;
                pacing
                    .dps_ops_per_minute
                    .insert(normalise_name(&raw.name), rate);
            }
        }
        let dps = dps
            .values()
            .map(|(raw, origin)| raw.finish(origin))
            .collect::<Result<Vec<_>, _>>()?;

        // Later entries (environment) replace earlier ones (file) for the same host.
        let mut hubs: BTreeMap<String, HubConfig> = BTreeMap::new();
        for (raw, origin) in &hub_raw {
            let hub = raw.finish(origin)?;
            match raw.ops_per_minute {
                Some(rate) => {
                    check_rate(rate, origin)?;
                    pacing
                        .hub_ops_per_minute
                        .insert(hub.host_name.clone(), rate);
                }
                None => {
                    pacing.hub_ops_per_minute.remove(&hub.host_name);
                }
            }
            hubs.insert(hub.host_name.clone(), hub);
        }
        check_distinct_jobs_containers(hubs.values())?;
        if let Some(v) = vars.get(ENV_PACING_BURST) {
            pacing.burst_secs = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "{ENV_PACING_BURST}: expected a positive number of seconds, got {v:?}"
                    ))
                })?;
        } else if let Some(b) = file.pacing_burst_secs {
            check_rate(b, "pacing_burst_secs")?;
            pacing.burst_secs = b.max(1e-3);
        }
        if let Some(v) = vars.get(ENV_PACING_INLINE_WAIT) {
            let ms = v.trim().parse::<u64>().map_err(|_| {
                ConfigError::Invalid(format!(
                    "{ENV_PACING_INLINE_WAIT}: expected milliseconds, got {v:?}"
                ))
            })?;
            pacing.inline_wait = Duration::from_millis(ms);
        } else if let Some(ms) = file.pacing_inline_wait_ms {
            pacing.inline_wait = Duration::from_millis(ms);
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
        let jobs_poll_interval = match (vars.get(ENV_JOBS_POLL), file.jobs_poll_ms) {
            (Some(v), _) => poll_interval(
                v.trim().parse::<u64>().ok(),
                &format!("{v:?}"),
                ENV_JOBS_POLL,
            )?,
            (None, Some(ms)) => poll_interval(
                Some(ms),
                &ms.to_string(),
                &format!("{file_origin}: jobs_poll_ms"),
            )?,
            (None, None) => DEFAULT_JOBS_POLL_INTERVAL,
        };
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
            pacing,
            storage,
            jobs_poll_interval,
        })
    }
}

/// A poll interval of at least [`MIN_JOBS_POLL_INTERVAL`]; `given` is what was given, as the error
/// shows it.
fn poll_interval(ms: Option<u64>, given: &str, origin: &str) -> Result<Duration, ConfigError> {
    ms.map(Duration::from_millis)
        .filter(|d| *d >= MIN_JOBS_POLL_INTERVAL)
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{origin}: expected milliseconds (at least {}), got {given}",
                MIN_JOBS_POLL_INTERVAL.as_millis()
            ))
        })
}

/// Each hub's one import job writes `importErrors.log` at its output container's root, so two hubs
/// sharing a container would overwrite each other's logs (and read each other's snapshots).
fn check_distinct_jobs_containers<'a>(
    hubs: impl Iterator<Item = &'a HubConfig>,
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for hub in hubs {
        let Some(container) = &hub.jobs_container else {
            continue;
        };
        // Without the SAS: the same container under two signatures is still one container.
        let url = container.container_url().as_str().to_string();
        if let Some(other) = seen.insert(url.clone(), &hub.host_name) {
            return Err(ConfigError::Invalid(format!(
                "hubs {other} and {} are given the same jobs container {url}: each hub's import \
                 jobs write importErrors.log at the container's root, so each hub needs its own",
                hub.host_name
            )));
        }
    }
    Ok(())
}

fn check_rate(rate: f64, origin: &str) -> Result<(), ConfigError> {
    if rate.is_finite() && rate >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{origin}: operations per minute must be 0 or more, got {rate}"
        )))
    }
}

const DPS_FIELDS: &[&str] = &[
    "_CONNECTION_STRING_FILE",
    "_CONNECTION_STRING",
    "_API_VERSION",
    "_BASE_URL",
    "_OPS_PER_MINUTE",
];
const HUB_FIELDS: &[&str] = &[
    "_JOBS_CONTAINER_SAS_URL_FILE",
    "_JOBS_CONTAINER_SAS_URL",
    "_JOBS_DEVICES_PER_SECOND",
    "_CONNECTION_STRING_FILE",
    "_CONNECTION_STRING",
    "_API_VERSION",
    "_BASE_URL",
    "_TIER",
    "_UNITS",
    "_OPS_PER_MINUTE",
];

/// Splits `EU_WEST_CONNECTION_STRING` into (`EU_WEST`, `_CONNECTION_STRING`); fields are tried longest first.
fn split_field<'a>(rest: &'a str, fields: &[&'static str]) -> Option<(&'a str, &'static str)> {
    fields.iter().find_map(|f| {
        let label = rest.strip_suffix(f)?;
        (!label.is_empty()).then_some((label, *f))
    })
}

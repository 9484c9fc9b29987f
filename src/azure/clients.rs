//! The registry of clients built from the configuration: one per DPS instance and per hub, sharing one
//! HTTP connection pool; and where each hub's import/export jobs keep their blobs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::config::{
    AzureConfig, DEFAULT_JOBS_DEVICES_PER_SECOND, HubConfig, PacingConfig, normalise_name,
};
use super::dps::DpsClient;
use super::error::AzureError;
use super::hub::HubClient;
use super::jobs_storage::JobsStorage;
use super::transport::{ClientOptions, build_http_client};
use crate::domain::clock::{Clock, SystemClock};

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
    pacing: PacingConfig,
    /// The connection pool every client shares (the blob clients of hub jobs too).
    http: reqwest::Client,
    /// Hubs configured with their own jobs container, by host name.
    hub_jobs_storage: BTreeMap<String, JobsStorage>,
    /// The storage account for every other hub.
    account_jobs_storage: Option<JobsStorage>,
    jobs_poll_interval: Duration,
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
        let mut hub_jobs_storage = BTreeMap::new();
        for h in &config.hubs {
            let client =
                HubClient::new(&h.connection_string, options(&h.api_version, &h.base_url))?;
            let host = h.host_name.to_ascii_lowercase();
            if let Some(container) = &h.jobs_container {
                hub_jobs_storage.insert(host.clone(), JobsStorage::Container(container.clone()));
            }
            hubs.insert(host, (client, h.clone()));
        }
        let account_jobs_storage = config.storage.as_ref().map(|s| JobsStorage::Account {
            account: s.account.clone(),
            sas_ttl: s.sas_ttl,
        });
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
                pacing: config.pacing.clone(),
                http,
                hub_jobs_storage,
                account_jobs_storage,
                jobs_poll_interval: config.jobs_poll_interval,
            }),
        })
    }

    /// The HTTP client every Azure client shares (timeouts and trusted roots of the configuration);
    /// hand it to the blob clients of hub jobs.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Where hub `host`'s import/export blobs go: its own container when configured, else the storage
    /// account, else `None` (import/export jobs are not possible for that hub).
    pub fn jobs_storage(&self, host: &str) -> Option<&JobsStorage> {
        self.inner
            .hub_jobs_storage
            .get(&host.trim().to_ascii_lowercase())
            .or(self.inner.account_jobs_storage.as_ref())
    }

    /// Devices per second an import/export job of hub `host` is modelled to go through: its
    /// configured figure, else [`DEFAULT_JOBS_DEVICES_PER_SECOND`] (an assumption: Azure documents
    /// none).
    pub fn jobs_devices_per_second(&self, host: &str) -> f64 {
        self.hub_config(host)
            .and_then(|h| h.jobs_devices_per_second)
            .unwrap_or(DEFAULT_JOBS_DEVICES_PER_SECOND)
    }

    /// How often a running hub import/export job is polled.
    pub fn jobs_poll_interval(&self) -> Duration {
        self.inner.jobs_poll_interval
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

    /// The pacing settings.
    pub fn pacing(&self) -> &PacingConfig {
        &self.inner.pacing
    }

    /// Registry operations per minute to pace hub `host_name` at (`None`: not paced).
    pub fn hub_budget(&self, host_name: &str) -> Option<f64> {
        self.hub_config(host_name)
            .and_then(|h| self.inner.pacing.hub_budget(h))
    }

    /// Operations per minute to pace DPS instance `name` at (`None`: not paced, or not configured).
    pub fn dps_budget(&self, name: &str) -> Option<f64> {
        self.inner
            .dps
            .contains_key(&normalise_name(name))
            .then(|| self.inner.pacing.dps_budget(name))
            .flatten()
    }

    /// Host names of the configured hubs, sorted.
    pub fn hub_hosts(&self) -> Vec<&str> {
        self.inner.hubs.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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
    #[test]
    fn jobs_storage_per_hub_then_account() {
        let sas =
            "https://acct.blob.core.windows.net/hub-1-jobs?sv=2021-08-06&sr=c&sp=rwdl&sig=c2ln";
        let hubs = [
            (
                "DEPROVISIOND_HUB_1_CONNECTION_STRING",
                cs("hub-1.azure-devices.net", "p"),
            ),
            ("DEPROVISIOND_HUB_1_JOBS_CONTAINER_SAS_URL", sas.to_string()),
            ("DEPROVISIOND_HUB_1_JOBS_DEVICES_PER_SECOND", "50".into()),
            (
                "DEPROVISIOND_HUB_2_CONNECTION_STRING",
                cs("hub-2.azure-devices.net", "p"),
            ),
        ];
        let clients = AzureClients::new(&AzureConfig::from_env_map(&env(&hubs)).unwrap()).unwrap();
        assert!(matches!(
            clients.jobs_storage("HUB-1.azure-devices.net"),
            Some(JobsStorage::Container(c)) if c.expose() == sas
        ));
        assert_eq!(
            clients.jobs_storage("hub-2.azure-devices.net"),
            None,
            "no container and no account"
        );
        assert_eq!(
            clients.jobs_devices_per_second("hub-1.azure-devices.net"),
            50.0
        );
        assert_eq!(
            clients.jobs_devices_per_second("hub-2.azure-devices.net"),
            DEFAULT_JOBS_DEVICES_PER_SECOND
        );
        assert_eq!(clients.jobs_poll_interval(), Duration::from_secs(5));

        let mut with_account = env(&hubs);
        with_account.insert(
            "DEPROVISIOND_STORAGE_CONNECTION_STRING".into(),
            "UseDevelopmentStorage=true".into(),
        );
        with_account.insert("DEPROVISIOND_STORAGE_SAS_TTL_SECS".into(), "600".into());
        with_account.insert("DEPROVISIOND_JOBS_POLL_MS".into(), "20".into());
        let clients =
            AzureClients::new(&AzureConfig::from_env_map(&with_account).unwrap()).unwrap();
        assert!(
            matches!(
                clients.jobs_storage("hub-1.azure-devices.net"),
                Some(JobsStorage::Container(_))
            ),
            "the hub's own container comes first"
        );
        match clients.jobs_storage("hub-2.azure-devices.net") {
            Some(JobsStorage::Account { account, sas_ttl }) => {
                assert_eq!(account.name(), "devstoreaccount1");
                assert_eq!(*sas_ttl, Duration::from_secs(600));
            }
            other => panic!("expected the account, got {other:?}"),
        }
        assert_eq!(clients.jobs_poll_interval(), Duration::from_millis(20));
    }
}

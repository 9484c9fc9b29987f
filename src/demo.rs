//! `deprovisiond demo`: the service, an embedded SQLite database and a seeded simulator in one process.
//! Also the wiring that points the Azure clients at a running simulator (used by the tests too).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::app::{App, AppConfig, WorkflowChoice};
use crate::azure::{
    AzureClients, AzureConfig, ConnectionString, DpsInstanceConfig, HubConfig as AzureHubConfig,
    HubTier as AzureHubTier, StorageConfig,
};
use crate::domain::clock::SystemClock;
use crate::worker::EngineConfig;
use azure_iot_sim::seed::{
    Attestation, FleetSpec, GroupSpec, IndividualSpec, SeededFleet, seed_fleet, write_credentials,
};
use azure_iot_sim::{HubTier, RunningSimulator, SimConfig, Simulator};

/// DPS instance name of the demo.
pub const DEMO_DPS: &str = "demo-dps";
/// Hubs of the demo.
pub const DEMO_HUBS: [&str; 2] = [
    "demo-hub-1.azure-devices.net",
    "demo-hub-2.azure-devices.net",
];

/// Azure configuration whose clients reach `sim` (base URLs) while signing the simulated host names, using
/// the owner policies of every DPS instance and hub it runs.
pub fn azure_config_for(sim: &RunningSimulator) -> anyhow::Result<AzureConfig> {
    let mut config = AzureConfig::default();
    for dps in sim.state().dps_instances() {
        let cs = sim
            .dps_connection_string(&dps.name, "provisioningserviceowner")
            .ok_or_else(|| anyhow::anyhow!("simulated DPS {} has no owner policy", dps.name))?;
        config.dps.push(DpsInstanceConfig {
            name: dps.name.clone(),
            connection_string: ConnectionString::parse(&cs)?,
            api_version: None,
            base_url: Some(sim.dps_base_url(&dps.name).parse()?),
        });
    }
    for hub in sim.state().hubs() {
        let cs = sim
            .hub_connection_string(&hub.host, "iothubowner")
            .ok_or_else(|| anyhow::anyhow!("simulated hub {} has no owner policy", hub.host))?;
        config.hubs.push(AzureHubConfig {
            host_name: hub.host.to_ascii_lowercase(),
            connection_string: ConnectionString::parse(&cs)?,
            api_version: None,
            base_url: Some(sim.hub_base_url(&hub.host).parse()?),
            tier: Some(tier_of(hub.tier)),
            units: Some(hub.units),
            jobs_container: None,
            jobs_devices_per_second: None,
        });
    }
    config.default_dps = config.dps.first().map(|d| d.name.clone());
    // Pace at what this simulator enforces: its quotas sped up by its time scale, or not at all
    // when it throttles nothing.
    let throttle = sim.handle().throttle_settings();
    let scale = if throttle.enabled {
        throttle.time_scale
    } else {
        0.0
    };
    if scale > 0.0 {
        // The burst is seconds of quota time, which pass `scale` times faster here.
        config.pacing.burst_secs /= scale;
    }
    for hub in sim.state().hubs() {
        let rate = hub.tier.registry_ops_per_minute_per_unit() * f64::from(hub.units) * scale;
        config
            .pacing
            .hub_ops_per_minute
            .insert(hub.host.to_ascii_lowercase(), rate);
    }
    for dps in sim.state().dps_instances() {
        config.pacing.dps_ops_per_minute.insert(
            dps.name.to_ascii_lowercase(),
            throttle.dps_ops_per_minute * scale,
        );
    }
    Ok(config)
}

/// The storage account for hub import/export jobs that `vars` name with
/// `DEPROVISIOND_STORAGE_CONNECTION_STRING` (or `_FILE`) and `DEPROVISIOND_STORAGE_SAS_TTL_SECS`, read
/// and checked as the service reads them; `None` when no connection string is set (empty counts as
/// unset, as a compose file may leave it).
pub fn storage_from_env(vars: &HashMap<String, String>) -> anyhow::Result<Option<StorageConfig>> {
    let storage: HashMap<String, String> = vars
        .iter()
        .filter(|(k, v)| k.starts_with("DEPROVISIOND_STORAGE_") && !v.trim().is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(AzureConfig::from_env_map(&storage)?.storage)
}

fn tier_of(t: HubTier) -> AzureHubTier {
    match t {
        HubTier::F1 => AzureHubTier::F1,
        HubTier::B1 => AzureHubTier::B1,
        HubTier::B2 => AzureHubTier::B2,
        HubTier::B3 => AzureHubTier::B3,
        HubTier::S1 => AzureHubTier::S1,
        HubTier::S2 => AzureHubTier::S2,
        HubTier::S3 => AzureHubTier::S3,
    }
}

/// The demo fleet: three individual enrollments (TPM, symmetric key, X.509), an X.509 group of 200 devices
/// and a symmetric-key group of 50, spread over both hubs.
pub fn demo_fleet() -> FleetSpec {
    let individual = |id: &str, attestation| IndividualSpec {
        registration_id: id.into(),
        attestation,
        device_id: None,
        provisioning_status: None,
        iot_hubs: Vec::new(),
        provision: true,
        certificate_of: None,
    };
    let group = |id: &str, attestation, devices, prefix: &str| GroupSpec {
        group_id: id.into(),
        attestation,
        devices,
        device_prefix: Some(prefix.into()),
        provisioning_status: None,
        iot_hubs: Vec::new(),
        provision_count: None,
        signing_ca: None,
        issuing_ca: None,
    };
    FleetSpec {
        dps: Some(DEMO_DPS.into()),
        root_ca_name: None,
        groups: vec![
            group("fleet-x509", Attestation::X509, 200, "x509-dev-"),
            group("fleet-sk", Attestation::SymmetricKey, 50, "sk-dev-"),
        ],
        individuals: vec![
            individual("tpm-sensor-001", Attestation::Tpm),
            individual("sk-sensor-001", Attestation::SymmetricKey),
            individual("x509-sensor-001", Attestation::X509),
        ],
    }
}

/// The demo simulator: S2 hubs with 10 units (1,000 registry operations a minute each), real-time quotas.
pub fn demo_sim_config() -> SimConfig {
    let mut config = SimConfig::demo();
    for hub in &mut config.hubs {
        hub.tier = HubTier::S2;
        hub.units = 10;
    }
    config
}

/// Runs the demo until Ctrl-C; the fleet's credentials go to `credentials_dir` (else a temporary folder).
///
/// The API asks for `api_key` (an admin key; generated when absent), printed with the curl commands.
pub async fn run(
    listen: SocketAddr,
    credentials_dir: Option<PathBuf>,
    api_key: Option<String>,
) -> anyhow::Result<()> {
    let api_key = api_key.unwrap_or_else(crate::http::auth::keys::generate);
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("demo.db").display());
    let sim = Simulator::start(demo_sim_config()).await?;
    let fleet: SeededFleet = seed_fleet(sim.state(), &demo_fleet())?;
    let credentials = credentials_dir.unwrap_or_else(|| dir.path().join("devices"));
    write_credentials(&fleet, &credentials).map_err(|e| {
        anyhow::anyhow!(
            "writing device credentials to {}: {e}",
            credentials.display()
        )
    })?;
    let mut azure = azure_config_for(&sim)?;
    // Hub import/export jobs need blob storage: Azurite's connection string in docker-compose.yml.
    azure.storage = storage_from_env(&std::env::vars().collect())?;
    let storage = azure
        .storage
        .as_ref()
        .map(|s| s.account.blob_endpoint().to_string());
    let clients = AzureClients::new(&azure)?;
    let config = AppConfig {
        database_url: db,
        listen,
        run_worker: true,
        engine: EngineConfig::default(),
        tombstone_audit_every: Some(std::time::Duration::from_secs(300)),
        body_limit: crate::http::BODY_LIMIT_BYTES,
        auth: crate::http::auth::AuthConfig::with_keys(vec![crate::http::auth::ApiKeyEntry {
            name: "demo-admin".into(),
            role: crate::http::auth::Role::Admin,
            sha256: crate::http::auth::keys::hash(&api_key),
        }]),
    };
    let app = App::build(
        config,
        WorkflowChoice::Azure(Arc::new(clients)),
        Arc::new(SystemClock),
    )
    .await?;
    let addr = app.local_addr();
    print_banner(
        addr,
        &sim,
        &fleet,
        dir.path(),
        &credentials,
        &api_key,
        storage.as_deref(),
    );
    app.run_until_stopped(crate::cli::shutdown_signal()).await?;
    sim.shutdown().await;
    Ok(())
}

fn print_banner(
    addr: SocketAddr,
    sim: &RunningSimulator,
    fleet: &SeededFleet,
    dir: &Path,
    credentials: &Path,
    api_key: &str,
    storage: Option<&str>,
) {
    let api = format!("http://{addr}");
    let auth = format!("-H 'authorization: Bearer {api_key}'");
    println!("deprovisiond demo — everything in this process, nothing to install");
    println!();
    println!("  API         {api}/v1/deprovisions");
    println!("  Swagger UI  {api}/docs (Authorize → api_key: paste the key below)");
    println!("  API key     {api_key} (admin; pass --api-key to choose it)");
    println!("  client      DEPROVISIOND_TOKEN={api_key} deprovisiond client --url {api} list");
    println!(
        "  database    {} (SQLite, deleted on exit)",
        dir.join("demo.db").display()
    );
    match storage {
        Some(endpoint) => println!(
            "  storage     {endpoint} (a blob container per hub import/export job, from DEPROVISIOND_STORAGE_CONNECTION_STRING)"
        ),
        None => println!(
            "  storage     none (set DEPROVISIOND_STORAGE_CONNECTION_STRING for hub import/export jobs)"
        ),
    }
    println!();
    println!("Simulated Azure (same wire format as the real services; admin API under /_sim/):");
    println!(
        "  DPS {DEMO_DPS}   {}   id scope {}",
        sim.dps_base_url(DEMO_DPS),
        fleet.id_scope
    );
    if let Some(cs) = sim.dps_connection_string(DEMO_DPS, "provisioningserviceowner") {
        println!("      {cs}");
    }
    for hub in DEMO_HUBS {
        println!("  hub {hub}   {}", sim.hub_base_url(hub));
        if let Some(cs) = sim.hub_connection_string(hub, "iothubowner") {
            println!("      {cs}");
        }
    }
    let by_hub = |h: &str| {
        fleet
            .devices
            .iter()
            .filter(|d| d.assigned_hub.as_deref() == Some(h))
            .count()
    };
    println!(
        "  fleet: {} devices provisioned through the device API ({} on demo-hub-1, {} on demo-hub-2):",
        fleet.devices.len(),
        by_hub(DEMO_HUBS[0]),
        by_hub(DEMO_HUBS[1])
    );
    println!(
        "    individual enrollments tpm-sensor-001 (TPM), sk-sensor-001 (symmetric key), x509-sensor-001 (X.509)"
    );
    println!(
        "    group fleet-x509 (X.509, x509-dev-0000 … x509-dev-0199), group fleet-sk (symmetric key, sk-dev-0000 … sk-dev-0049)"
    );
    println!(
        "  device credentials (keys, leaf certificates and private keys): {}",
        credentials.display()
    );
    println!(
        "    also GET {}/_sim/devices/<registrationId>/credentials",
        sim.dps_base_url(DEMO_DPS)
    );
    println!();
    println!("Try:");
    println!("  # a stolen device: disable its enrollment, then its hub identity");
    println!(
        "  curl -s {api}/v1/deprovisions {auth} -H 'content-type: application/json' -d '{{\"target\":{{\"kind\":\"individual_enrollment\",\"registration_id\":\"sk-sensor-001\"}},\"reason\":{{\"code\":\"stolen\"}}}}'"
    );
    println!(
        "  # one sold device of a group: block it with a disabled individual enrollment, delete its identity"
    );
    println!(
        "  curl -s {api}/v1/deprovisions {auth} -H 'content-type: application/json' -d '{{\"target\":{{\"kind\":\"group_device\",\"group_id\":\"fleet-sk\",\"registration_id\":\"sk-dev-0007\"}},\"registry\":\"delete\",\"reason\":{{\"code\":\"sold\"}}}}'"
    );
    println!(
        "  # the same for an X.509 device, with the leaf certificate it holds (the service checks its CN)"
    );
    println!(
        "  jq -Rs '{{target:{{kind:\"group_device\",group_id:\"fleet-x509\",registration_id:\"x509-dev-0007\",certificate_pem:.}},reason:{{code:\"lost\"}}}}' {}/x509-dev-0007/device.cert.pem | curl -s {api}/v1/deprovisions {auth} -H 'content-type: application/json' -d @-",
        credentials.display()
    );
    println!(
        "  # a compromised intermediate: preview, then disable the whole X.509 group and its 200 devices"
    );
    println!(
        "  curl -s {api}/v1/deprovisions {auth} -H 'content-type: application/json' -d '{{\"target\":{{\"kind\":\"enrollment_group\",\"group_id\":\"fleet-x509\"}},\"reason\":{{\"code\":\"compromised\"}},\"dry_run\":true}}'"
    );
    println!(
        "  then curl -s {auth} {api}/v1/deprovisions/<id> (and …/devices, …/events) to follow a job."
    );
    println!();
    println!("Press Ctrl-C to stop.");
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURITE: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://azurite:10000/devstoreaccount1;";

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn storage_from_env_passes_the_connection_string_through() {
        let storage = storage_from_env(&vars(&[
            ("DEPROVISIOND_STORAGE_CONNECTION_STRING", AZURITE),
            ("DEPROVISIOND_STORAGE_SAS_TTL_SECS", "3600"),
            // Other variables are the service's business, not the demo's Azure config.
            ("DEPROVISIOND_HUB_X_TIER", "S9"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            storage.account.blob_endpoint().as_str(),
            "http://azurite:10000/devstoreaccount1"
        );
        assert_eq!(storage.sas_ttl, std::time::Duration::from_secs(3600));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("storage");
        std::fs::write(&file, AZURITE).unwrap();
        let from_file = storage_from_env(&vars(&[(
            "DEPROVISIOND_STORAGE_CONNECTION_STRING_FILE",
            file.to_str().unwrap(),
        )]))
        .unwrap();
        assert_eq!(from_file.unwrap().account.name(), "devstoreaccount1");

        assert!(storage_from_env(&HashMap::new()).unwrap().is_none());
        assert!(
            storage_from_env(&vars(&[("DEPROVISIOND_STORAGE_CONNECTION_STRING", " ")]))
                .unwrap()
                .is_none(),
            "empty is unset"
        );
        let e = storage_from_env(&vars(&[(
            "DEPROVISIOND_STORAGE_CONNECTION_STRING",
            "AccountName=devstoreaccount1",
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("no AccountKey"), "{e}");
    }
}

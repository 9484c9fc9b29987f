//! Starts the simulator over HTTPS (generated certificate) for the conformance script and prints one
//! JSON line: ports, host names, connection strings, the CA to trust and a small test PKI. Runs until
//! SIGINT/SIGTERM. `conformance/run.sh` runs it; `azure-iot-sim --https` prints the same facts.
//!
//! Usage: `cargo run --example sim_https`

use azure_iot_sim::blob::{AccountKey, BlobClient, ContainerUrl};
use azure_iot_sim::device_api::DeviceApiConfig;
use azure_iot_sim::tls::{GLOBAL_DEVICE_ENDPOINT, TlsSettings};
use azure_iot_sim::x509::TestCa;
use azure_iot_sim::{DpsConfig, HubConfig, JobsConfig, SimConfig, Simulator, ThrottleConfig};
use serde_json::json;

const DPS: &str = "conf-dps";
const HUBS: [&str; 2] = [
    "conf-hub-1.azure-devices.net",
    "conf-hub-2.azure-devices.net",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut dps = DpsConfig::new(DPS);
    for h in HUBS {
        dps = dps.with_linked_hub(h);
    }
    let mut config = SimConfig::default().with_dps(dps);
    for h in HUBS {
        config = config.with_hub(HubConfig::new(h));
    }
    config.throttle = ThrottleConfig {
        enabled: false,
        ..ThrottleConfig::default()
    };
    config.tls = Some(TlsSettings::generated());
    config.device_api = DeviceApiConfig {
        retry_after_secs: 1,
        ..DeviceApiConfig::default()
    };
    // Import/export jobs: short enough for the script, slow enough to watch `running`.
    config.jobs = JobsConfig {
        devices_per_second: 2_000.0,
        queue_seconds: 0.2,
        ..JobsConfig::default()
    };
    let sim = Simulator::start(config).await?;
    let azurite = azurite_container().await?;

    // A small PKI for the X.509 parts of the script (Node cannot mint certificates by itself).
    let root = TestCa::root("conformance root CA")?;
    let inter = root.intermediate("conformance intermediate CA")?;
    let leaves = ["conf-x509-dev-1", "conf-x509-dev-2", "conf-x509-single"]
        .into_iter()
        .map(|id| {
            let leaf = inter.leaf(id)?;
            Ok(json!({"registrationId": id, "certPem": leaf.cert_pem, "keyPem": leaf.key_pem, "chainPem": leaf.chain_pem()}))
        })
        .collect::<Result<Vec<_>, azure_iot_sim::x509::CertError>>()?;

    let state = sim.state().clone();
    let d = state
        .dps(DPS)
        .ok_or_else(|| anyhow::anyhow!("DPS missing"))?;
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.port()).unwrap_or(0);
    let info = json!({
        "dps": {
            "name": DPS,
            "host": d.host,
            "port": addr(sim.dps_addr(DPS)),
            "idScope": d.id_scope,
            "connectionString": sim.dps_connection_string(DPS, "provisioningserviceowner"),
        },
        "hubs": HUBS.iter().map(|h| json!({
            "host": h,
            "port": addr(sim.hub_addr(h)),
            "connectionString": sim.hub_connection_string(h, "iothubowner"),
        })).collect::<Vec<_>>(),
        "deviceApi": {"host": GLOBAL_DEVICE_ENDPOINT, "port": addr(sim.device_api_addr())},
        "caPem": sim.tls_ca_pem(),
        "pki": {"rootPem": root.cert_pem(), "intermediatePem": inter.cert_pem(), "leaves": leaves},
        "azurite": azurite,
    });
    // One line, flushed, so the launcher can read it while the simulator keeps running.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{info}")?;
        out.flush()?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.shutdown().await;
    Ok(())
}

/// With `DEPROVISIOND_TEST_AZURITE_URL` (scripts/azurite.sh): a fresh container for the job checks,
/// its SAS URI as the jobs take it, and an account SAS for the script's own blob reads and writes.
async fn azurite_container() -> anyhow::Result<serde_json::Value> {
    let Some(url) = std::env::var("DEPROVISIOND_TEST_AZURITE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return Ok(serde_json::Value::Null);
    };
    let url = url.trim_end_matches('/');
    let key = match std::env::var("DEPROVISIOND_TEST_AZURITE_KEY") {
        Ok(k) if !k.is_empty() => AccountKey::new(url.rsplit('/').next().unwrap_or_default(), &k)?,
        _ => AccountKey::azurite(),
    };
    let expiry = chrono::Utc::now() + chrono::Duration::hours(2);
    let name = format!("conformance-{}", std::process::id());
    let admin_sas = key.account_sas("rwdlac", expiry);
    BlobClient::new()?
        .create_container(&ContainerUrl::parse(&format!("{url}/{name}?{admin_sas}"))?)
        .await?;
    Ok(json!({
        "containerUrl": format!("{url}/{name}"),
        "containerSasUri": format!("{url}/{name}?{}", key.container_sas(&name, "rwdl", expiry)),
        "adminSas": admin_sas,
    }))
}

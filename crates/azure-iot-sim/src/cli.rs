//! The simulator's command line, shared by the `azure-iot-sim` binary and `deprovisiond simulate`.

use std::future::Future;
use std::path::PathBuf;

use crate::seed::{FleetSpec, seed_fleet, write_credentials};
use crate::{SimConfig, Simulator};

/// How to run the simulator on its own.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Simulator configuration (JSON: DPS instances, hubs with tier and units, throttling, faults, ports,
    /// `tls`, `seed`). Default: DPS `demo-dps` linked to hubs `demo-hub-1` and `demo-hub-2`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fleet to seed through the simulator's device API (JSON: groups and individual enrollments).
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// Write the seeded devices' credentials (keys, certificates, private keys) under this folder.
    #[arg(long, requires = "fleet")]
    pub credentials_dir: Option<PathBuf>,
    /// Seed for keys, ids and random faults, to reproduce a run; a fresh one per run when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Serve HTTPS with a generated certificate (unless the configuration gives one).
    #[arg(long)]
    pub https: bool,
    /// Server certificate chain (PEM) for HTTPS; implies --https.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for HTTPS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Devices per second an import/export job processes, in quota time (`time_scale` applies);
    /// 0 runs jobs as fast as the blob service allows. Overrides the configuration's `jobs`.
    #[arg(long, value_name = "DEVICES_PER_SECOND")]
    pub job_throughput: Option<f64>,
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

impl SimulateArgs {
    /// The configuration these arguments describe, starting from `default` when no file is given.
    pub fn config(&self, default: SimConfig) -> anyhow::Result<SimConfig> {
        let mut config = match &self.config {
            Some(p) => SimConfig::from_json(&read(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            None => default,
        };
        if self.seed.is_some() {
            config.seed = self.seed;
        }
        if let Some(t) = self.job_throughput {
            if !(t >= 0.0 && t.is_finite()) {
                anyhow::bail!("--job-throughput must be a number ≥ 0, not {t}");
            }
            config.jobs.devices_per_second = t;
        }
        if self.https || self.tls_cert.is_some() {
            let mut tls = config.tls.take().unwrap_or_default();
            if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
                tls.cert_file = Some(c.clone());
                tls.key_file = Some(k.clone());
            }
            config.tls = Some(tls);
        }
        Ok(config)
    }
}

/// Starts the simulator, seeds the fleet, prints every endpoint and connection string as one JSON
/// document on stdout, and serves until `shutdown` resolves.
pub async fn run(
    args: SimulateArgs,
    default: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let sim = Simulator::start(args.config(default)?).await?;
    if let Some(p) = &args.fleet {
        let spec = FleetSpec::from_json(&read(p)?)
            .map_err(|e| anyhow::anyhow!("fleet file {}: {e}", p.display()))?;
        let fleet = seed_fleet(sim.state(), &spec)?;
        eprintln!(
            "seeded {} device(s) through the device API",
            fleet.devices.len()
        );
        if let Some(dir) = &args.credentials_dir {
            let written = write_credentials(&fleet, dir)
                .map_err(|e| anyhow::anyhow!("writing credentials to {}: {e}", dir.display()))?;
            eprintln!(
                "device credentials of {} device(s) written under {}",
                written.devices,
                written.dir.display()
            );
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&sim.handle().endpoints())?
    );
    eprintln!("simulator running; admin API under /_sim/ on every listener; Ctrl-C to stop");
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

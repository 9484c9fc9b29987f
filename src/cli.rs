//! The command line: `serve`, `migrate`, `openapi`, and with the `demo` feature `demo` and `simulate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::{App, AppConfig, WorkflowChoice};
use crate::azure::{AzureClients, AzureConfig};
use crate::domain::backoff::BackoffPolicy;
use crate::domain::clock::SystemClock;
use crate::store::Store;
use crate::worker::rehearsal::RehearsalWorkflow;
use crate::worker::{EngineConfig, Workflow};

/// Deprovisions Azure IoT devices enrolled through DPS: revoke at DPS, then disable or delete in the hub.
#[derive(Debug, Parser)]
#[command(name = "deprovisiond", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and the background worker.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Run the service on a throwaway embedded database against a seeded simulator, ready to try.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Print the OpenAPI document, or write it to a file.
    Openapi(OpenapiArgs),
    /// Talk to a running service: create, preview, get, list, watch, cancel, retry.
    Client(crate::client::ClientArgs),
    /// Make API keys: `keys new --name … --role …` prints a key and its configuration line.
    Keys(crate::http::auth::config::KeysArgs),
    /// Exit 0 when the service at `--url` answers ready (a container HEALTHCHECK needing no curl).
    Healthcheck(HealthcheckArgs),
    /// Run the simulator of the DPS and IoT Hub APIs on its own (the `azure-iot-sim` binary does the same).
    #[cfg(feature = "demo")]
    Simulate(azure_iot_sim::cli::SimulateArgs),
    /// Measure the service against the in-process simulator, a naive script and the quota's lower bound.
    #[cfg(feature = "demo")]
    Bench(crate::bench::BenchArgs),
}

/// Database selection.
#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// Database URL: `postgres://…` (production) or `sqlite://FILE` (embedded, the default).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://deprovisiond.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// File holding the database URL (it may hold a password); wins over --database-url.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
}

impl DbArgs {
    /// The effective URL.
    pub fn url(&self) -> anyhow::Result<String> {
        match &self.database_url_file {
            Some(p) => read_secret_file(p),
            None => Ok(self.database_url.clone()),
        }
    }
}

/// Reads a secret from a file, trimming the trailing newline editors add.
pub fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read secret file {}: {e}", path.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// Which workflow runs the jobs.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum WorkflowKind {
    /// Deprovision for real against the configured DPS instances and IoT hubs.
    Azure,
    /// Touches nothing outside the database: every step waits `--rehearsal-step-ms` and succeeds.
    Rehearsal,
}

/// Worker settings.
#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// Serve the API only; run no background worker in this process.
    #[arg(long, env = "DEPROVISIOND_NO_WORKER")]
    pub no_worker: bool,
    /// Steps run at the same time by this process.
    #[arg(long, env = "DEPROVISIOND_WORKER_CONCURRENCY", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,
    /// Seconds a claim stays valid without renewal; a crashed worker's work is taken over after it.
    #[arg(long, env = "DEPROVISIOND_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// Milliseconds between looks for work when not woken.
    #[arg(long, env = "DEPROVISIOND_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_ms: u64,
    /// First retry delay ceiling, in milliseconds.
    #[arg(long, env = "DEPROVISIOND_BACKOFF_BASE_MS", default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// Largest retry delay ceiling, in milliseconds.
    #[arg(long, env = "DEPROVISIOND_BACKOFF_CAP_MS", default_value_t = 300_000)]
    pub backoff_cap_ms: u64,
    /// Attempts per step before it fails.
    #[arg(long, env = "DEPROVISIOND_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Seconds a device may stay throttled (429 after 429, none using up an attempt) before it fails.
    #[arg(long, env = "DEPROVISIOND_THROTTLE_PATIENCE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub throttle_patience_secs: u64,
    /// Seconds in-flight steps may run on after SIGTERM before their leases are released.
    #[arg(long, env = "DEPROVISIOND_GRACE_SECS", default_value_t = 20)]
    pub grace_secs: u64,
    /// Which workflow runs jobs.
    #[arg(long, env = "DEPROVISIOND_WORKFLOW", value_enum, default_value_t = WorkflowKind::Azure)]
    pub workflow: WorkflowKind,
    /// Seconds between background audits of tombstones (0: only on request).
    #[arg(
        long,
        env = "DEPROVISIOND_TOMBSTONE_AUDIT_SECS",
        default_value_t = 3600
    )]
    pub tombstone_audit_secs: u64,
    /// Rehearsal workflow: milliseconds each step takes.
    #[arg(long, env = "DEPROVISIOND_REHEARSAL_STEP_MS", default_value_t = 200)]
    pub rehearsal_step_ms: u64,
    /// Rehearsal workflow: append a line per step start to this file.
    #[arg(long, env = "DEPROVISIOND_REHEARSAL_JOURNAL")]
    pub rehearsal_journal: Option<PathBuf>,
}

impl WorkerArgs {
    /// The engine configuration.
    pub fn engine(&self) -> EngineConfig {
        let lease = Duration::from_secs(self.lease_secs);
        EngineConfig {
            concurrency: self.worker_concurrency as usize,
            lease,
            renew_every: lease / 3,
            poll_every: Duration::from_millis(self.poll_ms),
            backoff: BackoffPolicy {
                base: Duration::from_millis(self.backoff_base_ms),
                cap: Duration::from_millis(self.backoff_cap_ms.max(self.backoff_base_ms)),
                max_attempts: self.max_attempts,
            },
            grace: Duration::from_secs(self.grace_secs),
            throttle_patience: Some(Duration::from_secs(self.throttle_patience_secs)),
            ..EngineConfig::default()
        }
    }

    /// The workflow: Azure (configured from the environment, see README) or the rehearsal.
    pub fn workflow(&self) -> anyhow::Result<WorkflowChoice> {
        match self.workflow {
            WorkflowKind::Azure => {
                let config = AzureConfig::from_env()?;
                let clients = AzureClients::new(&config)?;
                if clients.dps_names().is_empty() {
                    anyhow::bail!(
                        "no DPS instance configured: set DEPROVISIOND_DPS_<NAME>_CONNECTION_STRING (or \
                         DEPROVISIOND_AZURE_CONFIG), or run `deprovisiond demo` to try it against the simulator"
                    );
                }
                Ok(WorkflowChoice::Azure(Arc::new(clients)))
            }
            WorkflowKind::Rehearsal => {
                let wf: Arc<dyn Workflow> = Arc::new(RehearsalWorkflow {
                    step_delay: Duration::from_millis(self.rehearsal_step_ms),
                    journal: self.rehearsal_journal.clone(),
                    ..RehearsalWorkflow::default()
                });
                Ok(WorkflowChoice::Custom(wf, vec!["default".into()]))
            }
        }
    }

    /// How often tombstones are audited in the background.
    pub fn audit_every(&self) -> Option<Duration> {
        (self.tombstone_audit_secs > 0).then(|| Duration::from_secs(self.tombstone_audit_secs))
    }
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the API.
    #[arg(long, env = "DEPROVISIOND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, env = "DEPROVISIOND_BODY_LIMIT_BYTES", default_value_t = crate::http::BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Worker.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Names of the DPS instances jobs may target (comma-separated).
    #[arg(
        long,
        env = "DEPROVISIOND_DPS_NAMES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub dps_names: Vec<String>,
    /// Authentication.
    #[command(flatten)]
    pub auth: crate::http::auth::AuthArgs,
}

/// `demo` options.
#[cfg(feature = "demo")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the API.
    #[arg(long, env = "DEPROVISIOND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Folder for the seeded devices' credentials (keys, certificates, private keys); a temporary
    /// folder, deleted on exit, when absent.
    #[arg(long)]
    pub credentials_dir: Option<PathBuf>,
    /// The admin API key the demo asks for (generated and printed when absent).
    #[arg(long, env = "DEPROVISIOND_DEMO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// `healthcheck` options.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The readiness URL to ask.
    #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

/// Asks the readiness route; an error says what answered instead of "ready".
async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()?;
    let response = client
        .get(&args.url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{} did not answer: {e}", args.url))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("{} answered {status}: {}", args.url, body.trim())
    }
}

/// `openapi` options.
#[derive(Debug, Args)]
pub struct OpenapiArgs {
    /// Write the document to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(db) => {
            let store = Store::connect(&db.url()?).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            crate::demo::run(args.listen, args.credentials_dir, args.api_key).await
        }
        Command::Keys(args) => crate::http::auth::config::run_keys(args),
        #[cfg(feature = "demo")]
        Command::Simulate(args) => {
            azure_iot_sim::cli::run(args, crate::demo::demo_sim_config(), shutdown_signal()).await
        }
        #[cfg(feature = "demo")]
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Healthcheck(args) => healthcheck(args).await,
        Command::Client(args) => crate::client::run(args).await,
        Command::Openapi(args) => {
            let doc = crate::http::openapi_json();
            match args.out {
                Some(p) => std::fs::write(&p, doc)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?,
                None => print!("{doc}"),
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = AppConfig {
        database_url: args.db.url()?,
        listen: args.listen,
        run_worker: !args.worker.no_worker,
        engine: args.worker.engine(),
        tombstone_audit_every: args.worker.audit_every(),
        body_limit: args.body_limit_bytes,
        auth: args.auth.config()?,
    };
    let webhooks = crate::http::webhooks::WebhookConfig::from_env()?;
    let app = App::build(config, args.worker.workflow()?, Arc::new(SystemClock))
        .await?
        .with_webhooks(webhooks);
    let addr = app.local_addr();
    tracing::info!(%addr, "deprovisiond listening");
    println!("deprovisiond listening on http://{addr} (Swagger UI: http://{addr}/docs)");
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every environment variable a command reads, with the command's path.
    fn env_vars(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.push((path.to_string(), env.to_string_lossy().into_owned()));
            }
        }
        for sub in cmd.get_subcommands() {
            env_vars(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    /// The README is the configuration reference: a variable added to the CLI must be documented there.
    #[test]
    fn the_readme_documents_every_environment_variable() {
        let readme = include_str!("../README.md");
        let mut vars = Vec::new();
        env_vars(&super::Cli::command(), "deprovisiond", &mut vars);
        assert!(vars.len() > 10, "found only {vars:?}");
        let missing: Vec<_> = vars
            .iter()
            .filter(|(_, v)| !readme.contains(&format!("`{v}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in README.md (as `NAME`): {missing:?}"
        );
    }
}

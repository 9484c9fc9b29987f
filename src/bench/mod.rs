//! `deprovisiond bench`: the service against the in-process simulator, next to a naive script and the
//! quota's lower bound, in one invocation; prints a Markdown table (or JSON with `--json`).
//!
//! The service runs as child processes (`deprovisiond serve` of this same binary, found with
//! [`std::env::current_exe`] unless `--service-exe` says otherwise), configured through its documented
//! environment variables to reach the simulator, so the peak RSS of a row is the service's own (VmHWM of
//! the child, read from `/proc/<pid>/status` just before it is stopped). Each row gets a fresh fleet (the
//! simulator's state is emptied and reseeded, its quota buckets refilled) and a fresh database.

mod child;
pub mod cost;
pub mod naive;
pub mod rss;
mod scenarios;
pub mod table;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

pub use table::Row;

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The simulator could not be started or seeded.
    #[error("simulator: {0}")]
    Simulator(String),
    /// A database could not be created or reached.
    #[error("database: {0}")]
    Database(String),
    /// The service process could not be started or answered unexpectedly.
    #[error("service: {0}")]
    Service(String),
    /// A file could not be written.
    #[error("{0}")]
    Io(String),
}

/// The scenarios; each starts its own simulator and runs its rows on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// S1 × 1 unit, time-scaled quota: service (each store), naive script and lower bound; disable and delete.
    S1,
    /// S3 × 10 units, 20 ms latency per call: service (each store), naive script and lower bound.
    S3,
    /// No quota, no latency: the engine's own speed on each store against the naive script.
    Unthrottled,
    /// Two service processes on one PostgreSQL database against one S1 hub: their combined call rate.
    Replicas,
    /// Concurrent `POST /v1/deprovisions` against a bare axum handler doing one INSERT, same database.
    Intake,
    /// Peak RSS of the service during one large (`--rss-devices`) unthrottled group job.
    Rss,
    /// S1 × 1, time-scaled: a large (`--import-devices`) group through hub import/export jobs and Azurite,
    /// against the modelled job time and the per-device bound.
    Import,
}

impl Scenario {
    /// The name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::S1 => "s1",
            Self::S3 => "s3",
            Self::Unthrottled => "unthrottled",
            Self::Replicas => "replicas",
            Self::Intake => "intake",
            Self::Rss => "rss",
            Self::Import => "import",
        }
    }
}

/// A database the service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A new SQLite file per row.
    Sqlite,
    /// A new database per row on the `--postgres-url` server.
    Postgres,
}

impl StoreKind {
    /// The name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// What the registry phase does to each device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    /// Disable the identity (GET + PUT).
    Disable,
    /// Delete the identity (DELETE).
    Delete,
}

/// `bench` options.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Scenarios to run (comma-separated); all when absent.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// Devices in the group of s1, s3, unthrottled and replicas.
    #[arg(long, default_value_t = 2_000)]
    pub devices: usize,
    /// Devices in the group of the rss scenario.
    #[arg(long, default_value_t = 100_000)]
    pub rss_devices: usize,
    /// Devices of the import scenario's group (the sizes: 100,000 and 1,000,000).
    #[arg(long, default_value_t = 100_000)]
    pub import_devices: usize,
    /// Storage connection string for the import scenario (Azurite's: `scripts/azurite.sh -- deprovisiond bench …`
    /// exports it).
    #[arg(
        long,
        env = "DEPROVISIOND_TEST_AZURITE_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub storage_connection_string: Option<String>,
    /// Registry actions of s1, s3 and unthrottled (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ActionArg::Disable, ActionArg::Delete])]
    pub actions: Vec<ActionArg>,
    /// Stores the service runs on (comma-separated); PostgreSQL rows say "not run" without a URL.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [StoreKind::Sqlite, StoreKind::Postgres])]
    pub stores: Vec<StoreKind>,
    /// PostgreSQL server; the bench creates (and drops) one database per row on it.
    #[arg(long, env = "DEPROVISIOND_TEST_PG_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// Hub tier, overriding every scenario's (F1, B1, B2, B3, S1, S2, S3).
    #[arg(long)]
    pub tier: Option<String>,
    /// Hub units, overriding every scenario's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub units: Option<u32>,
    /// Latency added to every simulated Azure call, ms, overriding every scenario's.
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// Quota time per wall time of the throttled scenarios (s1 and replicas: 60 unless given; s3: 1).
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Skip the naive baseline.
    #[arg(long)]
    pub no_naive: bool,
    /// Requests of the intake scenario.
    #[arg(long, default_value_t = 2_000)]
    pub intake_requests: usize,
    /// Requests in flight at once in the intake scenario.
    #[arg(long, default_value_t = 32)]
    pub intake_concurrency: usize,
    /// Give up on a job (and say "timed out") after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub job_timeout_secs: u64,
    /// The `deprovisiond` binary to run as the service (default: this one).
    #[arg(long)]
    pub service_exe: Option<PathBuf>,
    /// Extra argument for every `deprovisiond serve` (repeatable), e.g. `--serve-arg=--worker-concurrency=32`.
    #[arg(long, allow_hyphen_values = true)]
    pub serve_arg: Vec<String>,
    /// Extra environment variable for every `deprovisiond serve` (repeatable), `NAME=VALUE`. In VALUE,
    /// `{hub_ops_per_minute}` becomes the simulated hub's quota per wall minute (tier × units × time scale),
    /// `{dps_ops_per_minute}` the DPS quota per wall minute, `{time_scale}` the time scale: so a pacing
    /// override can follow the time-scaled quota, e.g. `--service-env DEPROVISIOND_HUB_BENCH_<FIELD>={hub_ops_per_minute}`.
    /// The service knows the bench's hub by the label `BENCH` and its DPS instance as `bench-dps`.
    #[arg(long, value_parser = parse_env_pair)]
    pub service_env: Vec<(String, String)>,
    /// Folder for databases, service logs and each job's events (kept); a temporary folder, deleted at the
    /// end, when absent.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print JSON (`{"machine": …, "rows": […]}`) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to this file (the table still goes to standard output).
    #[arg(long)]
    pub json_file: Option<PathBuf>,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Runs the bench and prints its table (or JSON).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = scenarios::run_all(&args).await?;
    if let Some(path) = &args.json_file {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .map_err(|e| BenchError::Io(format!("cannot write {}: {e}", path.display())))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.machine.describe());
        println!();
        print!("{}", table::render(&report.rows));
    }
    Ok(())
}

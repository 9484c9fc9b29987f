//! The scenarios: a simulator per scenario, a fresh fleet and database per row, the service as child
//! processes, the naive script and the bound next to it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_iot_sim::seed::{Attestation, FleetSpec, GroupSpec, seed_fleet};
use azure_iot_sim::{RunningSimulator, SimConfig, Simulator, ThrottlePatch};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::child::{AzureEnv, ServiceProcess};
use super::cost::{self, Quota};
use super::naive;
use super::table::Row;
use super::{ActionArg, BenchArgs, BenchError, Scenario, StoreKind};
use crate::azure::quota::HubTier;
use crate::domain::job::RegistryAction;
use crate::store::{Store, StoreOptions};

const DPS: &str = "bench-dps";
const HUB: &str = "bench-hub.azure-devices.net";
const GROUP: &str = "bench-group";
const DEVICE_PREFIX: &str = "dev-";
/// Units the service is told the hub has when the simulator enforces no quota: so much quota that pacing,
/// where the service does it, cannot be what limits the run.
const UNLIMITED_UNITS: u32 = 1_000;
/// Devices an import or export job of the simulated hub handles per second of quota time, and the seconds
/// it waits in the hub's queue first (the service is told the same rate, time-scaled).
const JOBS_DEVICES_PER_SECOND: f64 = 300.0;
const JOBS_QUEUE_SECS: f64 = 1.0;
/// How often a running job is looked at.
const POLL: Duration = Duration::from_millis(200);

/// Where the bench ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available to this process.
    pub cores: usize,
    /// `release` or `debug` (of this binary, which is also the service's unless `--service-exe`).
    pub build: &'static str,
    /// The operating system.
    pub os: &'static str,
    /// The command line.
    pub command: String,
}

impl Machine {
    fn here() -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            os: std::env::consts::OS,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    /// One line saying where and how the numbers were measured.
    pub fn describe(&self) -> String {
        format!(
            "deprovisiond bench: {} build, {} cores, {}; `{}`",
            self.build, self.cores, self.os, self.command
        )
    }
}

/// Everything the bench prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The rows, scenario by scenario.
    pub rows: Vec<Row>,
}

/// One scenario's simulator settings.
#[derive(Debug, Clone, Copy)]
struct Preset {
    scenario: Scenario,
    tier: HubTier,
    units: u32,
    latency_ms: u64,
    time_scale: f64,
    throttled: bool,
    devices: usize,
}

fn preset(s: Scenario, args: &BenchArgs, tier: Option<HubTier>) -> Preset {
    let (tier0, units0, latency0, scale0, throttled, devices) = match s {
        Scenario::S1 | Scenario::Replicas => (HubTier::S1, 1, 0, 60.0, true, args.devices),
        Scenario::S3 => (HubTier::S3, 10, 20, 1.0, true, args.devices),
        Scenario::Unthrottled => (HubTier::S3, UNLIMITED_UNITS, 0, 1.0, false, args.devices),
        Scenario::Intake => (
            HubTier::S3,
            UNLIMITED_UNITS,
            0,
            1.0,
            false,
            args.intake_requests,
        ),
        Scenario::Rss => (
            HubTier::S3,
            UNLIMITED_UNITS,
            0,
            1.0,
            false,
            args.rss_devices,
        ),
        Scenario::Import => (HubTier::S1, 1, 0, 60.0, true, args.import_devices),
    };
    Preset {
        scenario: s,
        tier: tier.unwrap_or(tier0),
        units: args.units.unwrap_or(units0),
        latency_ms: args.latency_ms.unwrap_or(latency0),
        time_scale: args.time_scale.filter(|t| *t > 0.0).unwrap_or(scale0),
        throttled,
        devices,
    }
}

fn sim_tier(t: HubTier) -> azure_iot_sim::HubTier {
    use azure_iot_sim::HubTier as S;
    match t {
        HubTier::F1 => S::F1,
        HubTier::B1 => S::B1,
        HubTier::B2 => S::B2,
        HubTier::B3 => S::B3,
        HubTier::S1 => S::S1,
        HubTier::S2 => S::S2,
        HubTier::S3 => S::S3,
    }
}

fn tier_name(t: HubTier) -> &'static str {
    match t {
        HubTier::F1 => "F1",
        HubTier::B1 => "B1",
        HubTier::B2 => "B2",
        HubTier::B3 => "B3",
        HubTier::S1 => "S1",
        HubTier::S2 => "S2",
        HubTier::S3 => "S3",
    }
}

fn action_of(a: ActionArg) -> RegistryAction {
    match a {
        ActionArg::Disable => RegistryAction::Disable,
        ActionArg::Delete => RegistryAction::Delete,
    }
}

fn action_name(a: RegistryAction) -> &'static str {
    match a {
        RegistryAction::Disable => "disable",
        RegistryAction::Delete => "delete",
    }
}

/// The bench's shared settings.
struct Ctx<'a> {
    args: &'a BenchArgs,
    exe: PathBuf,
    dir: PathBuf,
    http: reqwest::Client,
    /// PostgreSQL databases to drop at the end: `DROP DATABASE` checkpoints, which would slow the next row.
    to_drop: std::sync::Mutex<Vec<(String, String)>>,
}

/// A scenario's running simulator.
struct SimEnv {
    sim: RunningSimulator,
    preset: Preset,
    quota: Option<Quota>,
}

/// What the hub's call log says about a run.
#[derive(Debug, Default)]
struct HubStats {
    ok: u64,
    /// Quota operations the served calls cost (a bulk call one per device in it).
    ops: f64,
    throttled: u64,
    total: u64,
    dps: u64,
    /// Wall seconds from the first hub call to the last.
    phase_s: f64,
}

impl SimEnv {
    async fn start(preset: Preset) -> Result<Self, BenchError> {
        let mut config = SimConfig::single(DPS, &[HUB]);
        config.hubs[0].tier = sim_tier(preset.tier);
        config.hubs[0].units = preset.units;
        config.throttle.enabled = preset.throttled;
        config.chaos.latency_fixed_ms = preset.latency_ms;
        config.time_scale = preset.time_scale;
        config.seed = Some(9);
        config.jobs.devices_per_second = JOBS_DEVICES_PER_SECOND;
        config.jobs.queue_seconds = JOBS_QUEUE_SECS;
        // Room for every call of the largest row: a read and a write per device, retries, DPS pages.
        config.call_log_capacity = preset.devices.saturating_mul(6).max(100_000);
        let quota = preset.throttled.then(|| {
            Quota::of(
                preset.tier,
                preset.units,
                config.throttle.burst_fraction,
                preset.time_scale,
            )
        });
        let sim = Simulator::start(config)
            .await
            .map_err(|e| BenchError::Simulator(e.to_string()))?;
        Ok(Self { sim, preset, quota })
    }

    /// Empties the simulator, seeds one symmetric-key group of `devices` devices, refills the buckets.
    fn fresh_fleet(&self, devices: usize) -> Result<(), BenchError> {
        self.sim.handle().reset_state();
        let spec = FleetSpec {
            dps: Some(DPS.into()),
            root_ca_name: None,
            groups: vec![GroupSpec {
                group_id: GROUP.into(),
                attestation: Attestation::SymmetricKey,
                devices,
                device_prefix: Some(DEVICE_PREFIX.into()),
                provisioning_status: None,
                iot_hubs: Vec::new(),
                provision_count: None,
                signing_ca: None,
                issuing_ca: None,
            }],
            individuals: Vec::new(),
        };
        seed_fleet(self.sim.state(), &spec).map_err(|e| BenchError::Simulator(e.to_string()))?;
        self.refill();
        Ok(())
    }

    /// Every quota bucket full again (the patch changes nothing else).
    fn refill(&self) {
        self.sim.handle().patch_throttle(&ThrottlePatch::default());
    }

    fn mark(&self) -> u64 {
        self.sim.handle().0.calls.last_seq()
    }

    fn stats(&self, since: u64) -> HubStats {
        let mut s = HubStats::default();
        let (mut first, mut last) = (None, None);
        for call in self.sim.handle().calls_since(since) {
            if !call.instance.eq_ignore_ascii_case(HUB) {
                s.dps += 1;
                continue;
            }
            s.total += 1;
            if call.status == Some(429) {
                s.throttled += 1;
            } else {
                s.ok += 1;
                s.ops += call.cost;
            }
            first = first.or(Some(call.time));
            last = Some(call.time);
        }
        if let (Some(a), Some(b)) = (first, last) {
            s.phase_s = (b - a).num_milliseconds() as f64 / 1000.0;
        }
        s
    }

    /// What `--service-env` values may refer to.
    fn placeholders(&self) -> Vec<(&'static str, String)> {
        let p = &self.preset;
        let units = if p.throttled {
            p.units
        } else {
            UNLIMITED_UNITS
        };
        let hub =
            f64::from(p.tier.registry_ops_per_minute_per_unit()) * f64::from(units) * p.time_scale;
        let dps = azure_iot_sim::ThrottleConfig::default().dps_ops_per_minute * p.time_scale;
        vec![
            ("{hub_ops_per_minute}", format!("{}", hub.round() as u64)),
            ("{dps_ops_per_minute}", format!("{}", dps.round() as u64)),
            ("{time_scale}", format!("{}", p.time_scale)),
        ]
    }

    /// The service paces at what the simulator enforces: its quota sped up by the time scale (and the burst
    /// shortened to match), or not at all when the simulator throttles nothing; `--service-env` may override.
    fn pacing_vars(&self) -> Vec<(String, String)> {
        let p = &self.preset;
        if !p.throttled {
            return vec![
                ("DEPROVISIOND_HUB_BENCH_OPS_PER_MINUTE".into(), "0".into()),
                (
                    "DEPROVISIOND_DPS_BENCH_DPS_OPS_PER_MINUTE".into(),
                    "0".into(),
                ),
            ];
        }
        let placeholders = self.placeholders();
        let value = |name: &str| {
            placeholders
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        vec![
            (
                "DEPROVISIOND_HUB_BENCH_OPS_PER_MINUTE".into(),
                value("{hub_ops_per_minute}"),
            ),
            (
                "DEPROVISIOND_DPS_BENCH_DPS_OPS_PER_MINUTE".into(),
                value("{dps_ops_per_minute}"),
            ),
            (
                "DEPROVISIOND_PACING_BURST_SECS".into(),
                format!("{}", 3.0 / p.time_scale.max(1.0)),
            ),
        ]
    }

    fn azure_env(&self, extra: &[(String, String)]) -> Result<AzureEnv, BenchError> {
        let missing = |what: &str| BenchError::Simulator(format!("no {what} connection string"));
        let dps_cs = self
            .sim
            .dps_connection_string(DPS, "provisioningserviceowner")
            .ok_or_else(|| missing("DPS"))?;
        let hub_cs = self
            .sim
            .hub_connection_string(HUB, "iothubowner")
            .ok_or_else(|| missing("hub"))?;
        let units = if self.preset.throttled {
            self.preset.units
        } else {
            UNLIMITED_UNITS
        };
        Ok(AzureEnv {
            vars: vec![
                (
                    "DEPROVISIOND_DPS_BENCH_DPS_CONNECTION_STRING".into(),
                    dps_cs,
                ),
                (
                    "DEPROVISIOND_DPS_BENCH_DPS_BASE_URL".into(),
                    self.sim.dps_base_url(DPS),
                ),
                ("DEPROVISIOND_HUB_BENCH_CONNECTION_STRING".into(), hub_cs),
                (
                    "DEPROVISIOND_HUB_BENCH_BASE_URL".into(),
                    self.sim.hub_base_url(HUB),
                ),
                (
                    "DEPROVISIOND_HUB_BENCH_TIER".into(),
                    tier_name(self.preset.tier).into(),
                ),
                ("DEPROVISIOND_HUB_BENCH_UNITS".into(), units.to_string()),
            ]
            .into_iter()
            .chain(self.pacing_vars())
            .collect(),
        }
        .with_extra(&self.placeholders(), extra))
    }

    fn naive_endpoints(&self) -> Result<(naive::Endpoint, naive::Endpoint), BenchError> {
        let bad = |e: naive::NaiveError| BenchError::Simulator(e.to_string());
        let dps_cs = self
            .sim
            .dps_connection_string(DPS, "provisioningserviceowner")
            .unwrap_or_default();
        let hub_cs = self
            .sim
            .hub_connection_string(HUB, "iothubowner")
            .unwrap_or_default();
        Ok((
            naive::Endpoint::new(&dps_cs, &self.sim.dps_base_url(DPS)).map_err(bad)?,
            naive::Endpoint::new(&hub_cs, &self.sim.hub_base_url(HUB)).map_err(bad)?,
        ))
    }

    fn describe(&self) -> String {
        let p = &self.preset;
        let quota = if p.throttled {
            format!(
                "{} × {} (time ×{})",
                tier_name(p.tier),
                p.units,
                p.time_scale
            )
        } else {
            "no quota".into()
        };
        format!("{quota}, {} ms latency", p.latency_ms)
    }
}

/// A database for one row.
struct Db {
    url: String,
    /// Server URL and database name, to drop it afterwards.
    pg: Option<(String, String)>,
}

impl Ctx<'_> {
    async fn new_db(&self, store: StoreKind, label: &str) -> Result<Db, BenchError> {
        match store {
            StoreKind::Sqlite => {
                let path = self
                    .dir
                    .join(format!("{label}-{}.db", uuid::Uuid::new_v4().simple()));
                Ok(Db {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    pg: None,
                })
            }
            StoreKind::Postgres => {
                let server = self
                    .args
                    .postgres_url
                    .clone()
                    .ok_or_else(|| BenchError::Database("no PostgreSQL URL".into()))?;
                let name = format!("dp_bench_{}", uuid::Uuid::new_v4().simple());
                let admin = Store::connect(&server)
                    .await
                    .map_err(|e| BenchError::Database(e.to_string()))?;
                let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(admin.pool())
                    .await;
                admin.close().await;
                created.map_err(|e| BenchError::Database(e.to_string()))?;
                let mut url = url::Url::parse(&server)
                    .map_err(|e| BenchError::Database(format!("PostgreSQL URL: {e}")))?;
                url.set_path(&name);
                Ok(Db {
                    url: url.to_string(),
                    pg: Some((server, name)),
                })
            }
        }
    }

    fn drop_db(&self, db: Db) {
        if let Some(pg) = db.pg {
            // A poisoned lock only means another row panicked; the list is still good.
            self.to_drop
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pg);
        }
    }

    async fn drop_databases(&self) {
        let all = std::mem::take(&mut *self.to_drop.lock().unwrap_or_else(|e| e.into_inner()));
        for (server, name) in all {
            let Ok(admin) = Store::connect(&server).await else {
                continue;
            };
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(admin.pool())
                .await
            {
                tracing::warn!(error = %e, database = %name, "bench database not dropped");
            }
            admin.close().await;
        }
    }

    fn log_path(&self, label: &str) -> PathBuf {
        self.dir.join(format!("{label}.log"))
    }

    fn store_available(&self, store: StoreKind) -> Option<&'static str> {
        match store {
            StoreKind::Postgres if self.args.postgres_url.is_none() => {
                Some("no PostgreSQL URL (--postgres-url or DEPROVISIOND_TEST_PG_URL)")
            }
            _ => None,
        }
    }
}

/// Runs every selected scenario in order.
pub async fn run_all(args: &BenchArgs) -> anyhow::Result<Report> {
    let tier = args.tier.as_deref().map(HubTier::from_str).transpose()?;
    let exe = match &args.service_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let temp = tempfile::tempdir()?;
    let dir = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let ctx = Ctx {
        args,
        exe,
        dir,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        to_drop: std::sync::Mutex::new(Vec::new()),
    };
    let scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::S1,
            Scenario::S3,
            Scenario::Unthrottled,
            Scenario::Replicas,
            Scenario::Intake,
            Scenario::Rss,
            Scenario::Import,
        ]
    } else {
        args.scenario.clone()
    };
    let mut rows = Vec::new();
    for s in scenarios {
        let p = preset(s, args, tier);
        let env = SimEnv::start(p).await?;
        eprintln!(
            "bench: scenario {} ({}, {} devices)",
            s.name(),
            env.describe(),
            p.devices
        );
        let mut scenario_rows = match s {
            Scenario::S1 | Scenario::S3 | Scenario::Unthrottled => {
                registry_rows(&ctx, &env, true).await
            }
            Scenario::Rss => registry_rows(&ctx, &env, false).await,
            Scenario::Import => import_rows(&ctx, &env).await,
            Scenario::Replicas => vec![replicas_row(&ctx, &env).await],
            Scenario::Intake => intake_rows(&ctx, &env).await,
        };
        for r in &mut scenario_rows {
            if r.note.is_empty() {
                r.note = env.describe();
            } else {
                r.note = format!("{}; {}", env.describe(), r.note);
            }
        }
        // Progress on standard error, so a long run shows (and keeps) what it measured so far.
        eprint!("{}", super::table::render(&scenario_rows));
        rows.extend(scenario_rows);
        env.sim.shutdown().await;
    }
    ctx.drop_databases().await;
    drop(temp);
    Ok(Report {
        machine: Machine::here(),
        rows,
    })
}

/// The registry phase of a group job on each store, the naive script and the bound, per action; the rss
/// scenario runs one store (PostgreSQL when available) and the disable action only.
async fn registry_rows(ctx: &Ctx<'_>, env: &SimEnv, full: bool) -> Vec<Row> {
    let scenario = env.preset.scenario.name();
    let devices = env.preset.devices;
    let actions: Vec<RegistryAction> = if full {
        ctx.args.actions.iter().map(|a| action_of(*a)).collect()
    } else {
        vec![RegistryAction::Disable]
    };
    let stores: Vec<StoreKind> = if full {
        ctx.args.stores.clone()
    } else {
        let pg = ctx.args.stores.contains(&StoreKind::Postgres)
            && ctx.store_available(StoreKind::Postgres).is_none();
        vec![if pg {
            StoreKind::Postgres
        } else {
            StoreKind::Sqlite
        }]
    };
    let mut rows = Vec::new();
    for action in actions {
        let bound = cost::lower_bound_secs(env.quota, action, devices);
        let mut group = Vec::new();
        for store in &stores {
            let mut row = match ctx.store_available(*store) {
                Some(why) => {
                    Row::not_run(scenario, store.name(), "service", action_name(action), why)
                }
                None => service_row(ctx, env, *store, action, 1).await,
            };
            row.devices = devices;
            group.push(row);
        }
        if full && !ctx.args.no_naive {
            group.push(naive_row(ctx, env, action).await);
        }
        if let Some(b) = bound {
            group.push(bound_row(
                scenario,
                action,
                devices,
                b,
                "(operations − burst) / rate",
            ));
        }
        let naive_wall = group
            .iter()
            .find(|r| r.runner == "naive" && r.outcome == "succeeded")
            .and_then(|r| r.wall_s);
        for r in &mut group {
            if r.runner == "lower bound" {
                continue;
            }
            r.lower_bound_s = bound;
            r.ratio_to_bound = match (r.wall_s, bound) {
                (Some(w), Some(b)) if b > 0.0 => Some(w / b),
                _ => None,
            };
            if r.runner != "naive" {
                r.speedup_vs_naive = match (naive_wall, r.wall_s) {
                    (Some(n), Some(w)) if w > 0.0 => Some(n / w),
                    _ => None,
                };
            }
        }
        rows.extend(group);
    }
    rows
}

/// The quota's lower bound for `devices` devices as a table row.
fn bound_row(
    scenario: &str,
    action: RegistryAction,
    devices: usize,
    bound: f64,
    note: &str,
) -> Row {
    Row {
        scenario: scenario.into(),
        store: "-".into(),
        runner: "lower bound".into(),
        action: action_name(action).into(),
        devices,
        outcome: "computed".into(),
        wall_s: Some(bound),
        lower_bound_s: Some(bound),
        ops_per_device: Some(cost::ops_per_device(action)),
        devices_per_s: (bound > 0.0).then(|| devices as f64 / bound),
        note: note.into(),
        ..Row::default()
    }
}

/// `devices` is how many devices the run got through: the whole group, or those done when it timed out.
fn fill_from_stats(row: &mut Row, stats: &HubStats, devices: usize, wall: f64) {
    row.wall_s = Some(wall);
    row.ops_per_device = (devices > 0).then(|| stats.ops / devices as f64);
    row.throttled = Some(stats.throttled);
    row.throttled_share = (stats.total > 0).then(|| stats.throttled as f64 / stats.total as f64);
    row.devices_per_s = (wall > 0.0).then(|| devices as f64 / wall);
}

/// The group job through the service (`replicas` processes on one database), start to finish.
async fn service_row(
    ctx: &Ctx<'_>,
    env: &SimEnv,
    store: StoreKind,
    action: RegistryAction,
    replicas: usize,
) -> Row {
    let scenario = env.preset.scenario.name();
    let runner = if replicas > 1 {
        format!("service x{replicas}")
    } else {
        "service".to_string()
    };
    let mut row = Row::not_run(scenario, store.name(), &runner, action_name(action), "");
    row.devices = env.preset.devices;
    match run_service_job(
        ctx,
        env,
        store,
        action,
        replicas,
        &ctx.args.service_env,
        false,
    )
    .await
    {
        Ok(run) => {
            row.outcome = run.outcome;
            let through = run.done_when_timed_out.unwrap_or(env.preset.devices);
            fill_from_stats(&mut row, &run.stats, through, run.wall);
            row.peak_rss_mib = run.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0));
            row.note = format!(
                "hub phase {:.2} s, {} hub calls, {} DPS calls",
                run.stats.phase_s, run.stats.total, run.stats.dps
            );
            if replicas > 1 {
                row.note.push_str(&format!(
                    "; combined {:.1} hub calls/s sent, {:.1} ops/s accepted beyond the burst (quota {:.1}/s); RSS per replica {}",
                    run.stats.total as f64 / run.stats.phase_s.max(1e-3),
                    (run.stats.ops - env.quota.map_or(0.0, |q| q.burst)).max(0.0)
                        / run.stats.phase_s.max(1e-3),
                    env.quota.map_or(f64::INFINITY, |q| q.wall_rate()),
                    run.per_replica_rss
                        .iter()
                        .map(|b| b.map_or("?".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Err(e) => row.outcome = format!("not run: {e}"),
    }
    row
}

struct ServiceRun {
    outcome: String,
    /// Devices done when the job was given up on (rates and ops/device count only those).
    done_when_timed_out: Option<usize>,
    wall: f64,
    stats: HubStats,
    peak_rss: Option<u64>,
    per_replica_rss: Vec<Option<u64>>,
    /// The job's timeline, when asked for (few events: the import path's).
    events: Vec<Value>,
}

async fn run_service_job(
    ctx: &Ctx<'_>,
    env: &SimEnv,
    store: StoreKind,
    action: RegistryAction,
    replicas: usize,
    service_env: &[(String, String)],
    want_events: bool,
) -> Result<ServiceRun, BenchError> {
    let label = format!(
        "{}-{}-{}",
        env.preset.scenario.name(),
        store.name(),
        action_name(action)
    );
    env.fresh_fleet(env.preset.devices)?;
    let db = ctx.new_db(store, &label).await?;
    let azure = env.azure_env(service_env)?;
    let mut services = Vec::new();
    let mut started = Ok(());
    // One after the other: the first migrates the database before the second looks at it.
    for i in 0..replicas.max(1) {
        match ServiceProcess::start(
            &ctx.exe,
            &db.url,
            &azure,
            true,
            &ctx.args.serve_arg,
            &ctx.log_path(&format!("{label}-{i}")),
        )
        .await
        {
            Ok(s) => services.push(s),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => drive_job(ctx, env, &services[0].base, action).await,
        Err(e) => Err(e),
    };
    let events = match (&result, want_events) {
        (Ok((_, _, _, _, id)), true) => timeline(ctx, &services[0].base, id).await,
        _ => Vec::new(),
    };
    if !events.is_empty() && ctx.args.work_dir.is_some() {
        // Beside the service's log, for reading where a run's time went.
        let path = ctx.dir.join(format!("{label}-events.json"));
        if let Err(e) = std::fs::write(&path, Value::Array(events.clone()).to_string()) {
            tracing::warn!(error = %e, path = %path.display(), "bench events not written");
        }
    }
    let mut per_replica_rss = Vec::new();
    for s in services {
        per_replica_rss.push(s.stop().await);
    }
    ctx.drop_db(db);
    let (outcome, done_when_timed_out, wall, stats, _) = result?;
    Ok(ServiceRun {
        outcome,
        done_when_timed_out,
        wall,
        stats,
        peak_rss: per_replica_rss.iter().flatten().copied().max(),
        per_replica_rss,
        events,
    })
}

/// Submits the group job, waits for its end; answers the outcome, the wall time, the call-log counts and the
/// job's id.
async fn drive_job(
    ctx: &Ctx<'_>,
    env: &SimEnv,
    base: &str,
    action: RegistryAction,
) -> Result<(String, Option<usize>, f64, HubStats, String), BenchError> {
    env.refill();
    let mark = env.mark();
    let body = json!({
        "target": {"kind": "enrollment_group", "group_id": GROUP},
        "registry": action_name(action),
        "reason": {"code": "compromised", "text": "deprovisiond bench"},
    });
    let start = Instant::now();
    let response = ctx
        .http
        .post(format!("{base}/v1/deprovisions"))
        .json(&body)
        .send()
        .await
        .map_err(|e| BenchError::Service(format!("POST /v1/deprovisions: {e}")))?;
    let status = response.status();
    let job: Value = response.json().await.unwrap_or(Value::Null);
    if status.as_u16() != 202 {
        return Err(BenchError::Service(format!(
            "POST /v1/deprovisions answered {status}: {job}"
        )));
    }
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let deadline = Duration::from_secs(ctx.args.job_timeout_secs);
    let mut timed_out_at = None;
    let outcome = loop {
        tokio::time::sleep(POLL).await;
        let job: Value = match ctx
            .http
            .get(format!("{base}/v1/deprovisions/{id}"))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        match job["status"].as_str() {
            Some("succeeded") => break "succeeded".to_string(),
            Some("failed") => {
                let failed = job["progress"]["failed"].as_u64().unwrap_or(0);
                break format!("failed ({failed} devices)");
            }
            Some("cancelled") => break "cancelled".to_string(),
            _ => {}
        }
        if start.elapsed() > deadline {
            let done = job["progress"]["registry_done"].as_u64().unwrap_or(0);
            timed_out_at = Some(done as usize);
            break format!("timed out ({done} devices done)");
        }
    };
    let wall = start.elapsed().as_secs_f64();
    Ok((outcome, timed_out_at, wall, env.stats(mark), id))
}

async fn naive_row(ctx: &Ctx<'_>, env: &SimEnv, action: RegistryAction) -> Row {
    let scenario = env.preset.scenario.name();
    let mut row = Row::not_run(scenario, "-", "naive", action_name(action), "");
    row.devices = env.preset.devices;
    let prepared = env
        .fresh_fleet(env.preset.devices)
        .and_then(|()| env.naive_endpoints());
    let (dps, hub) = match prepared {
        Ok(e) => e,
        Err(e) => {
            row.outcome = format!("not run: {e}");
            return row;
        }
    };
    env.refill();
    let mark = env.mark();
    let start = Instant::now();
    let run = tokio::time::timeout(
        Duration::from_secs(ctx.args.job_timeout_secs),
        naive::run(&dps, &hub, GROUP, action, env.preset.time_scale),
    )
    .await;
    let wall = start.elapsed().as_secs_f64();
    let stats = env.stats(mark);
    row.outcome = match run {
        Ok(Ok(r)) if r.failed == 0 => "succeeded".into(),
        Ok(Ok(r)) => format!("failed ({} devices)", r.failed),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => "timed out".into(),
    };
    fill_from_stats(&mut row, &stats, env.preset.devices, wall);
    row.note = format!(
        "one device at a time; hub phase {:.2} s, {} hub calls, {} DPS calls",
        stats.phase_s, stats.total, stats.dps
    );
    row
}

/// Two service processes on one PostgreSQL database, one group job, one throttled hub.
async fn replicas_row(ctx: &Ctx<'_>, env: &SimEnv) -> Row {
    let action = RegistryAction::Disable;
    let scenario = env.preset.scenario.name();
    if let Some(why) = ctx.store_available(StoreKind::Postgres) {
        let mut row = Row::not_run(scenario, "postgres", "service x2", "disable", why);
        row.devices = env.preset.devices;
        return row;
    }
    let mut row = service_row(ctx, env, StoreKind::Postgres, action, 2).await;
    let bound = cost::lower_bound_secs(env.quota, action, env.preset.devices);
    row.lower_bound_s = bound;
    row.ratio_to_bound = match (row.wall_s, bound) {
        (Some(w), Some(b)) if b > 0.0 => Some(w / b),
        _ => None,
    };
    row
}

/// Concurrent `POST /v1/deprovisions` (one group device each, so no two overlap) against a bare axum
/// handler that INSERTs the body into the same database, for each store.
async fn intake_rows(ctx: &Ctx<'_>, env: &SimEnv) -> Vec<Row> {
    let mut rows = Vec::new();
    let n = env.preset.devices;
    for store in &ctx.args.stores {
        if let Some(why) = ctx.store_available(*store) {
            for runner in ["service", "bare INSERT"] {
                let mut r = Row::not_run("intake", store.name(), runner, "intake", why);
                r.devices = n;
                rows.push(r);
            }
            continue;
        }
        match intake_pair(ctx, env, *store).await {
            Ok(pair) => rows.extend(pair),
            Err(e) => {
                let mut r =
                    Row::not_run("intake", store.name(), "service", "intake", &e.to_string());
                r.devices = n;
                rows.push(r);
            }
        }
    }
    rows
}

fn intake_bodies(n: usize) -> Vec<Value> {
    let width = n.saturating_sub(1).to_string().len().max(4);
    (0..n)
        .map(|i| {
            json!({
                "target": {"kind": "group_device", "group_id": GROUP, "registration_id": format!("{DEVICE_PREFIX}{i:0width$}")},
                "reason": {"code": "stolen", "text": "deprovisiond bench intake"},
            })
        })
        .collect()
}

/// Sends every body to `url` with `concurrency` in flight; answers the wall time, the accepted count and
/// the first refusal.
async fn load(
    http: &reqwest::Client,
    url: &str,
    bodies: Vec<Value>,
    concurrency: usize,
) -> (f64, usize, Option<String>) {
    let start = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter(bodies)
        .map(|body| async move {
            match http.post(url).json(&body).send().await {
                Ok(r) if r.status().as_u16() == 202 => Ok(()),
                Ok(r) => {
                    let status = r.status();
                    Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = start.elapsed().as_secs_f64();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let first_error = results.into_iter().find_map(Result::err);
    (wall, accepted, first_error)
}

async fn intake_pair(
    ctx: &Ctx<'_>,
    env: &SimEnv,
    store: StoreKind,
) -> Result<Vec<Row>, BenchError> {
    let n = env.preset.devices;
    let concurrency = ctx.args.intake_concurrency;
    env.fresh_fleet(n)?;
    let label = format!("intake-{}", store.name());
    let db = ctx.new_db(store, &label).await?;
    let result = intake_on(ctx, env, &db, &label, n, concurrency).await;
    ctx.drop_db(db);
    let (service, bare) = result?;
    let ratio = match (service.devices_per_s, bare.devices_per_s) {
        (Some(s), Some(b)) if b > 0.0 => Some(s / b),
        _ => None,
    };
    let mut service = service;
    service.vs_bare = ratio;
    let _ = store;
    Ok(vec![service, bare])
}

async fn intake_on(
    ctx: &Ctx<'_>,
    env: &SimEnv,
    db: &Db,
    label: &str,
    n: usize,
    concurrency: usize,
) -> Result<(Row, Row), BenchError> {
    let store_name = if db.pg.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    // The service, API only: the jobs it accepts stay queued, so only admission is measured.
    let service = ServiceProcess::start(
        &ctx.exe,
        &db.url,
        &env.azure_env(&ctx.args.service_env)?,
        false,
        &ctx.args.serve_arg,
        &ctx.log_path(label),
    )
    .await?;
    let mark = env.mark();
    let url = format!("{}/v1/deprovisions", service.base);
    let (wall, accepted, refusal) = load(&ctx.http, &url, intake_bodies(n), concurrency).await;
    let calls = env.sim.handle().calls_since(mark).len();
    let rss = service.stop().await;
    let mut service_row = Row {
        scenario: "intake".into(),
        store: store_name.into(),
        runner: "service".into(),
        action: "intake".into(),
        devices: n,
        outcome: outcome_of(accepted, n, refusal),
        wall_s: Some(wall),
        ops_per_device: Some(calls as f64 / n.max(1) as f64),
        devices_per_s: Some(accepted as f64 / wall.max(1e-9)),
        peak_rss_mib: rss.map(|b| b as f64 / 1048576.0),
        ..Row::default()
    };
    service_row.note = format!(
        "{concurrency} in flight, POST /v1/deprovisions (group_device), no worker; ops/device = simulator calls per request"
    );

    // The bare handler, in this process, on the same database once the service has stopped.
    let bare_store = Store::connect_with(
        &db.url,
        &StoreOptions {
            max_connections: 16,
            ..StoreOptions::default()
        },
    )
    .await
    .map_err(|e| BenchError::Database(e.to_string()))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_intake (id TEXT PRIMARY KEY, body TEXT NOT NULL, created_at BIGINT NOT NULL)",
    )
    .execute(bare_store.pool())
    .await
    .map_err(|e| BenchError::Database(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Io(format!("bind: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::Io(format!("bind: {e}")))?;
    let router = axum::Router::new()
        .route("/jobs", axum::routing::post(bare_insert))
        .with_state(Arc::new(bare_store.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    let (wall, accepted, refusal) = load(
        &ctx.http,
        &format!("http://{addr}/jobs"),
        intake_bodies(n),
        concurrency,
    )
    .await;
    stop.cancel();
    let _ = server.await;
    bare_store.close().await;
    let bare_row = Row {
        scenario: "intake".into(),
        store: store_name.into(),
        runner: "bare INSERT".into(),
        action: "intake".into(),
        devices: n,
        outcome: outcome_of(accepted, n, refusal),
        wall_s: Some(wall),
        ops_per_device: Some(0.0),
        devices_per_s: Some(accepted as f64 / wall.max(1e-9)),
        note: format!(
            "{concurrency} in flight, axum handler in the bench process: one INSERT per request"
        ),
        ..Row::default()
    };
    Ok((service_row, bare_row))
}

fn outcome_of(accepted: usize, n: usize, refusal: Option<String>) -> String {
    match refusal {
        None => "succeeded".into(),
        Some(e) => {
            let e: String = e.chars().take(120).collect();
            format!("{accepted} of {n} accepted; first refusal {e}")
        }
    }
}

/// The bare intake handler: one INSERT of the body, 202 with the new id.
async fn bare_insert(
    axum::extract::State(store): axum::extract::State<Arc<Store>>,
    axum::Json(body): axum::Json<Value>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let id = uuid::Uuid::now_v7().to_string();
    let now_ms = chrono::Utc::now().timestamp_millis();
    match sqlx::query("INSERT INTO bench_intake (id, body, created_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(body.to_string())
        .bind(now_ms)
        .execute(store.pool())
        .await
    {
        Ok(_) => (
            axum::http::StatusCode::ACCEPTED,
            axum::Json(json!({"id": id})),
        ),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": e.to_string()})),
        ),
    }
}

/// A job's whole timeline (the import path writes a few dozen events, not one per device).
async fn timeline(ctx: &Ctx<'_>, base: &str, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{base}/v1/deprovisions/{id}/events?limit=200");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let Ok(r) = ctx.http.get(url).send().await else {
            break;
        };
        let page: Value = r.json().await.unwrap_or(Value::Null);
        if let Some(items) = page["items"].as_array() {
            out.extend(items.iter().cloned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    out
}

/// Seconds between the first event of `first` kind and the last of `last` kind.
fn span(events: &[Value], first: &str, last: &str) -> Option<f64> {
    let at = |e: &Value| {
        e["at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let a = events.iter().find(|e| e["kind"] == first).and_then(at)?;
    let b = events
        .iter()
        .rev()
        .find(|e| e["kind"] == last)
        .and_then(at)?;
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

/// "export + selection a s, import b s, verification c s" from the hub-job events of one hub.
fn phase_spans(events: &[Value]) -> String {
    let at = |e: &Value| {
        e["at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let started: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "hub_job_started")
        .filter_map(at)
        .collect();
    let ends: Vec<_> = [
        "import_blob_written",
        "hub_job_imported",
        "hub_job_verified",
    ]
    .iter()
    .map(|k| events.iter().find(|e| e["kind"] == *k).and_then(at))
    .collect();
    let names = ["export + selection", "import + error log", "verification"];
    let mut parts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let (Some(a), Some(Some(b))) = (started.get(i), ends.get(i)) {
            parts.push(format!(
                "{name} {:.1} s",
                (*b - *a).num_milliseconds() as f64 / 1000.0
            ));
        }
    }
    parts.join(", ")
}

/// "selection t s: waiting for lines a s, database b s, blob writes c s; verification …" from the `spent`
/// the two passes over an export record in their events (t: the whole pass, its own parsing included).
fn pass_spans(events: &[Value]) -> String {
    let secs = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0) as f64 / 1000.0;
    [
        ("selection", "import_blob_written"),
        ("verification", "hub_job_verification_read"),
    ]
    .iter()
    .filter_map(|(name, kind)| {
        let spent = &events.iter().find(|e| e["kind"] == *kind)?["detail"]["spent"];
        Some(format!(
            "{name} {:.1} s: waiting for lines {:.1} s, database {:.1} s, blob writes {:.1} s",
            secs(spent, "total_ms"),
            secs(spent, "reading_ms"),
            secs(spent, "database_ms"),
            secs(spent, "writing_ms")
        ))
    })
    .collect::<Vec<_>>()
    .join("; ")
}

/// "hub jobs ran a + b + c = t s" from the simulator's own record of the run's jobs (creation to end, the
/// queue included): what the hub path took beyond it is the service's own reading, writing and bookkeeping.
fn hub_job_seconds(jobs: &[azure_iot_sim::jobs::JobProperties]) -> String {
    let at = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let secs: Vec<f64> = jobs
        .iter()
        .filter_map(|j| Some((at(&j.end_time_utc)? - at(&j.start_time_utc)?).num_milliseconds()))
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    let parts: Vec<String> = secs.iter().map(|s| format!("{s:.1}")).collect();
    format!(
        "hub jobs ran {} = {:.1} s",
        parts.join(" + "),
        secs.iter().sum::<f64>()
    )
}

/// The import scenario: per action and store, the group job through the service with blob storage (the
/// planner picks import jobs on S1); beside it the modelled job time (snapshot export + import +
/// verification export at the simulated throughput, with the hub's queue) and the per-device lower bound.
async fn import_rows(ctx: &Ctx<'_>, env: &SimEnv) -> Vec<Row> {
    let scenario = env.preset.scenario.name();
    let devices = env.preset.devices;
    let Some(storage) = ctx
        .args
        .storage_connection_string
        .clone()
        .filter(|s| !s.is_empty())
    else {
        return vec![Row::not_run(
            scenario,
            "-",
            "service",
            "-",
            "no storage connection string: run it under scripts/azurite.sh, or pass --storage-connection-string",
        )];
    };
    let scale = env.preset.time_scale.max(1e-9);
    let rate = JOBS_DEVICES_PER_SECOND * scale;
    let mut service_env = vec![
        (
            "DEPROVISIOND_STORAGE_CONNECTION_STRING".to_string(),
            storage,
        ),
        (
            "DEPROVISIOND_HUB_BENCH_JOBS_DEVICES_PER_SECOND".to_string(),
            format!("{rate}"),
        ),
        ("DEPROVISIOND_JOBS_POLL_MS".to_string(), "100".to_string()),
    ];
    service_env.extend(ctx.args.service_env.iter().cloned());
    let mut rows = Vec::new();
    for action in ctx.args.actions.iter().map(|a| action_of(*a)) {
        let n = devices as f64;
        let after = if action == RegistryAction::Delete {
            0.0
        } else {
            n
        };
        let modelled = (n + n + after) / rate + 3.0 * JOBS_QUEUE_SECS / scale;
        let bound = cost::lower_bound_secs(env.quota, action, devices);
        for store in &ctx.args.stores {
            let mut row = Row::not_run(scenario, store.name(), "service", action_name(action), "");
            row.devices = devices;
            if let Some(why) = ctx.store_available(*store) {
                row.outcome = format!("not run: {why}");
                rows.push(row);
                continue;
            }
            match run_service_job(ctx, env, *store, action, 1, &service_env, true).await {
                Ok(run) => {
                    row.outcome = run.outcome.clone();
                    fill_from_stats(&mut row, &run.stats, devices, run.wall);
                    row.peak_rss_mib = run.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0));
                    row.lower_bound_s = bound;
                    row.ratio_to_bound = bound.filter(|b| *b > 0.0).map(|b| run.wall / b);
                    let path = span(&run.events, "hub_job_started", "hub_job_verified");
                    let verified: u64 = run
                        .events
                        .iter()
                        .filter(|e| e["kind"] == "hub_job_verified")
                        .filter_map(|e| e["detail"]["devices"].as_u64())
                        .sum();
                    let fallbacks = run
                        .events
                        .iter()
                        .filter(|e| e["kind"] == "hub_job_fallback")
                        .count();
                    let hub = env.sim.state().hub(HUB);
                    let left = hub.map_or(0, |h| match action {
                        RegistryAction::Disable => h
                            .list_devices(None)
                            .iter()
                            .filter(|d| d["status"] != "disabled")
                            .count(),
                        RegistryAction::Delete => h.device_count(),
                    });
                    // Where the hub path's time went: each hub job from its start to the event that
                    // ends its phase (the selection and the reads of the error log and the
                    // verification export included).
                    let phases = phase_spans(&run.events);
                    let jobs_ran = hub_job_seconds(&env.sim.handle().0.jobs.list(HUB));
                    let passes = pass_spans(&run.events);
                    row.note = format!(
                        "hub path {} vs modelled {modelled:.1} s ({}; {phases}; {jobs_ran}; {passes}); {verified} verified by export, {left} not {} in the hub, {fallbacks} fallback(s); {} hub calls; per-device bound {} at Azure's own pace",
                        path.map_or("?".into(), |p| format!("{p:.1} s")),
                        path.map_or("?".into(), |p| format!("{:.2} ×", p / modelled)),
                        action_name(action),
                        run.stats.total,
                        bound.map_or("?".into(), |b| crate::domain::registry_path::words(
                            Duration::from_secs_f64(b * scale)
                        )),
                    );
                }
                Err(e) => row.outcome = format!("not run: {e}"),
            }
            rows.push(row);
        }
        rows.push(Row {
            scenario: scenario.into(),
            store: "-".into(),
            runner: "modelled jobs".into(),
            action: action_name(action).into(),
            devices,
            outcome: "computed".into(),
            wall_s: Some(modelled),
            devices_per_s: Some(n / modelled),
            note: format!(
                "(export {n} + import {n} + verification export {after}) / {rate} devices/s + 3 queue waits"
            ),
            ..Row::default()
        });
        if let Some(b) = bound {
            let note = "device by device: (operations − burst) / rate";
            rows.push(bound_row(scenario, action, devices, b, note));
        }
    }
    rows
}

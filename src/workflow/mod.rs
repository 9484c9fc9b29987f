//! The deprovisioning workflows: what each job step does against DPS and the IoT hubs.
//!
//! | target | job steps | device step |
//! |---|---|---|
//! | individual enrollment | `resolve` (enrollment + registration state, read before anything destructive) → `revoke` (disable or delete) | `registry` |
//! | enrollment group | `resolve` → `revoke` (disable the group) → `enumerate` (registration states, page by page) → [`delete_registrations`] → [`delete_group`] | `registry` |
//! | group device | `resolve` (group + the device's registration state) → `revoke` (tombstone intent, then a disabled individual enrollment, then the tombstone made active) | `registry` |
//!
//! Which hubs a device's `registry` step checks is [`discovery`]'s rule: any registration record that names a
//! hub, whatever its status; the enrollment's linked hubs when it names none; every configured hub for the
//! `all_hubs` sweep. A device is skipped only when every hub it could be in answered 404.
//!
//! Devices run their `registry` step only after the job passed its `revoke` step (the engine's items
//! barrier). Every step is safe to repeat: 404 on a delete is done, disabling a disabled record is done,
//! 412 re-reads and retries.

mod admission_checks;
mod bulk;
mod cert_check;
pub mod chain;
pub mod discovery;
mod import_jobs;
mod outcome;
pub mod preview;
mod registry;
mod steps;
mod undo;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::azure::AzureClients;
use crate::domain::clock::SharedClock;
use crate::domain::job::{DeprovisionRequest, Target};
use crate::domain::lane::Outcome;
use crate::domain::pacing::{Budget, eta, throttle_delay};
use crate::domain::plan::{ItemStep, JobStep, Plan};
use crate::store::pacing::{dps_key, hub_key};
use crate::store::{ItemRecord, JobRecord, Pacer, PacerOptions, Store};
use crate::worker::{StepResult, Workflow};

/// Registration states fetched per `enumerate` step run (one DPS query page).
pub const ENUMERATE_PAGE: u32 = 100;
/// Registration records deleted per `delete_registrations` step run.
pub const CLEANUP_BATCH: u32 = 100;

/// A hub's pace and the time left at it (see [`AzureWorkflow::hub_eta`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubEta {
    /// The hub's budget (operations per minute).
    pub budget: f64,
    /// The rate it is paced at now (below the budget after 429s).
    pub rate: f64,
    /// Time to spend the operations at that rate, after the tokens already held.
    pub eta: Duration,
}

/// The workflow that talks to Azure.
pub struct AzureWorkflow {
    clients: Arc<AzureClients>,
    store: Store,
    clock: SharedClock,
    pacer: Arc<Pacer>,
    /// Device deletes waiting together for a hub, sent as bulk calls.
    bulk_deletes: bulk::BulkDeletes,
}

impl AzureWorkflow {
    /// A workflow using `clients`, recording tombstones in `store`, pacing its calls with buckets kept
    /// by `store` (shared rows on PostgreSQL, memory on SQLite).
    pub fn new(clients: Arc<AzureClients>, store: Store, clock: SharedClock) -> Self {
        let p = clients.pacing();
        let options = PacerOptions {
            burst_secs: p.burst_secs,
            inline_wait: p.inline_wait,
            ..PacerOptions::default()
        };
        let pacer = Arc::new(Pacer::new(&store, clock.clone(), options));
        Self {
            clients,
            store,
            clock,
            pacer,
            bulk_deletes: bulk::BulkDeletes::default(),
        }
    }

    /// The pacer (buckets per hub and DPS instance).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// How hub `host` is paced now and how long `ops` more registry operations take there: its bucket's
    /// live rate and tokens when this process has used it, else its budget with a full burst. Job
    /// progress and previews both estimate with this. `None` when the hub is not paced.
    pub fn hub_eta(&self, host: &str, ops: f64) -> Option<HubEta> {
        let budget = self.clients.hub_budget(host)?;
        let (rate, tokens) = match self.pacer.snapshot(&hub_key(host)) {
            Some(s) => (s.rate, s.tokens),
            None => (
                budget,
                Budget::new(budget, self.clients.pacing().burst_secs).burst,
            ),
        };
        Some(HubEta {
            budget,
            rate,
            eta: eta(ops, rate, tokens),
        })
    }

    /// Spends `cost` registry operations of hub `host`'s budget; `Err(wait)` when it is spent for longer
    /// than the inline wait. A hub with no known budget is not paced.
    pub(crate) async fn pace_hub(&self, host: &str, cost: f64) -> Result<(), Duration> {
        match self.clients.hub_budget(host) {
            Some(rate) => self.pacer.acquire(&hub_key(host), rate, cost).await,
            None => Ok(()),
        }
    }

    /// Gives back operations [`Self::pace_hub`] took for a call that was not needed.
    pub(crate) async fn refund_hub(&self, host: &str, n: f64) {
        if let Some(rate) = self.clients.hub_budget(host) {
            self.pacer.refund(&hub_key(host), rate, n).await;
        }
    }

    /// Records a 429 from hub `host`; returns how long its bucket now holds calls back.
    pub(crate) async fn hub_throttled(
        &self,
        host: &str,
        retry_after: Option<Duration>,
    ) -> Duration {
        match self.clients.hub_budget(host) {
            Some(rate) => {
                self.pacer
                    .throttled(&hub_key(host), rate, retry_after)
                    .await
            }
            None => retry_after.unwrap_or(Duration::ZERO),
        }
    }

    /// Spends `cost` operations of DPS instance `name`'s budget (as [`Self::pace_hub`]).
    pub(crate) async fn pace_dps(&self, name: &str, cost: f64) -> Result<(), Duration> {
        match self.clients.dps_budget(name) {
            Some(rate) => self.pacer.acquire(&dps_key(name), rate, cost).await,
            None => Ok(()),
        }
    }

    /// Gives back operations [`Self::pace_dps`] took for calls that were not needed.
    pub(crate) async fn refund_dps(&self, name: &str, n: f64) {
        if n <= 0.0 {
            return;
        }
        if let Some(rate) = self.clients.dps_budget(name) {
            self.pacer.refund(&dps_key(name), rate, n).await;
        }
    }

    /// Records a 429 from DPS instance `name`.
    pub(crate) async fn dps_throttled(
        &self,
        name: &str,
        retry_after: Option<Duration>,
    ) -> Duration {
        match self.clients.dps_budget(name) {
            Some(rate) => {
                self.pacer
                    .throttled(&dps_key(name), rate, retry_after)
                    .await
            }
            None => retry_after.unwrap_or(Duration::ZERO),
        }
    }

    /// The Azure clients.
    pub fn clients(&self) -> &AzureClients {
        &self.clients
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// DPS operations a job step is expected to spend (reads, the write, its verification): what it takes
/// from the instance's budget before it starts.
fn job_step_cost(step: JobStep, target: &Target) -> f64 {
    match (step, target) {
        (JobStep::Resolve, Target::EnrollmentGroup(_)) => 1.0,
        (JobStep::Resolve, _) => 3.0,
        (JobStep::Revoke, _) => steps::REVOKE_CALLS,
        (JobStep::Enumerate, _) => 1.0,
        (JobStep::DeleteRegistrations, _) => f64::from(CLEANUP_BATCH),
        (JobStep::DeleteGroup, _) => 4.0,
        (JobStep::RestoreDps, _) => steps::REVOKE_CALLS,
        // Hub jobs and the undone job's devices: no DPS call.
        (JobStep::Items | JobStep::ImportJobs | JobStep::SelectUndo, _) => 0.0,
    }
}

#[async_trait]
impl Workflow for AzureWorkflow {
    fn plan(&self, request: &DeprovisionRequest) -> Plan {
        Plan::for_request(request)
    }

    async fn run_job_step(&self, job: &JobRecord, step: JobStep) -> StepResult {
        // Each job step spends DPS operations: what it will cost, taken before it starts.
        if let Err(delay) = self
            .pace_dps(&job.dps, job_step_cost(step, &job.request.target))
            .await
        {
            return Outcome::Paced { hub: None, delay }.into();
        }
        let mut result = steps::run_job_step(self, job, step).await;
        if let Outcome::Retry { error, retry_after } = &result.outcome
            && error.http_status == Some(429)
        {
            let wait = self.dps_throttled(&job.dps, *retry_after).await;
            let delay = throttle_delay(*retry_after, wait, &mut rand::rng());
            result.outcome = Outcome::Throttled {
                error: error.clone(),
                delay,
            };
        }
        result
    }

    async fn run_item_step(
        &self,
        job: &JobRecord,
        item: &ItemRecord,
        step: ItemStep,
    ) -> StepResult {
        match step {
            ItemStep::Registry => registry::run_registry_step(self, job, item).await,
            ItemStep::Restore => undo::restore(self, job, item).await,
        }
    }
}

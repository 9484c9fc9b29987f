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
mod cert_check;
pub mod chain;
pub mod discovery;
mod outcome;
pub mod preview;
mod registry;
mod steps;

use std::sync::Arc;

use async_trait::async_trait;

use crate::azure::AzureClients;
use crate::domain::clock::SharedClock;
use crate::domain::job::{DeprovisionRequest, Target};
use crate::domain::lane::{ITEMS_BARRIER, Outcome, StepError};
use crate::store::{ItemRecord, JobRecord, Plan, Store};
use crate::worker::{StepResult, Workflow};

/// Registration states fetched per `enumerate` step run (one DPS query page).
pub const ENUMERATE_PAGE: u32 = 100;
/// Registration records deleted per `delete_registrations` step run.
pub const CLEANUP_BATCH: u32 = 100;

/// The workflow that talks to Azure.
pub struct AzureWorkflow {
    clients: Arc<AzureClients>,
    store: Store,
    clock: SharedClock,
}

impl AzureWorkflow {
    /// A workflow using `clients`, recording tombstones in `store`.
    pub fn new(clients: Arc<AzureClients>, store: Store, clock: SharedClock) -> Self {
        Self {
            clients,
            store,
            clock,
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

/// The steps of a request (also used by previews to say what would run).
pub fn plan_for(request: &DeprovisionRequest) -> Plan {
    let mut job_steps: Vec<String> = vec!["resolve".into(), "revoke".into()];
    if let Target::EnrollmentGroup(_) = request.target {
        job_steps.push("enumerate".into());
    }
    job_steps.push(ITEMS_BARRIER.into());
    if request.delete_registrations {
        job_steps.push("delete_registrations".into());
    }
    if request.delete_group {
        job_steps.push("delete_group".into());
    }
    Plan {
        job_steps,
        item_steps: vec!["registry".into()],
    }
}

#[async_trait]
impl Workflow for AzureWorkflow {
    fn plan(&self, request: &DeprovisionRequest) -> Plan {
        plan_for(request)
    }

    async fn run_job_step(&self, job: &JobRecord, step: &str) -> StepResult {
        steps::run_job_step(self, job, step).await
    }

    async fn run_item_step(&self, job: &JobRecord, item: &ItemRecord, step: &str) -> StepResult {
        match step {
            "registry" => registry::run_registry_step(self, job, item).await,
            other => Outcome::Fail(StepError::msg(format!("unknown device step `{other}`"))).into(),
        }
    }
}

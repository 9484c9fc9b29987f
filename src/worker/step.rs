//! The contract between the engine and what a job actually does.

use async_trait::async_trait;

use crate::domain::job::DeprovisionRequest;
use crate::domain::lane::Outcome;
use crate::domain::plan::{ItemStep, JobStep, Plan};
use crate::store::{ItemRecord, JobRecord, StepEffects};

/// What a step returned: its outcome and its side effects on the job.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// How the step ended.
    pub outcome: Outcome,
    /// Items found, context to keep, events to record.
    pub effects: StepEffects,
}

impl From<Outcome> for StepResult {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            effects: StepEffects::default(),
        }
    }
}

/// The steps of deprovisioning jobs. The engine runs them; the workflows implement them.
///
/// Every step must be safe to run again: a worker can die after a step's effect and before it is
/// recorded, and the step then runs once more.
#[async_trait]
pub trait Workflow: Send + Sync + 'static {
    /// The steps a request becomes (fixed when the job is created).
    fn plan(&self, request: &DeprovisionRequest) -> Plan;

    /// Runs job step `step` (the job's `cursor` holds where a paging step stopped).
    async fn run_job_step(&self, job: &JobRecord, step: JobStep) -> StepResult;

    /// Runs item step `step` of one device.
    async fn run_item_step(&self, job: &JobRecord, item: &ItemRecord, step: ItemStep)
    -> StepResult;
}

//! A workflow that touches nothing outside the database: each step waits and succeeds.
//!
//! It has the real workflows' plan, so the engine, the API and crash recovery can be
//! exercised (and demonstrated) without Azure. Optionally it appends one line per step start to a
//! journal file, which lets a test count how often a step ran across a crash.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::{StepResult, Workflow};
use crate::domain::job::{DeprovisionRequest, Target};
use crate::domain::lane::Outcome;
use crate::domain::plan::{ItemStep, JobStep, LaneStep, Plan};
use crate::store::{ItemRecord, JobRecord, NewItem, StepEffects};

/// The rehearsal workflow.
#[derive(Debug, Clone)]
pub struct RehearsalWorkflow {
    /// How long each step takes.
    pub step_delay: Duration,
    /// Devices a whole-group target pretends to have.
    pub group_size: usize,
    /// Where to append `step-start <job> <step> <item>` lines, if anywhere.
    pub journal: Option<PathBuf>,
}

impl Default for RehearsalWorkflow {
    fn default() -> Self {
        Self {
            step_delay: Duration::from_millis(200),
            group_size: 3,
            journal: None,
        }
    }
}

impl RehearsalWorkflow {
    fn note(&self, job: &str, step: &str, item: &str) {
        if let Some(path) = &self.journal {
            let line = format!("step-start {job} {step} {item}\n");
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_data()));
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not write the rehearsal journal");
            }
        }
    }
}

#[async_trait]
impl Workflow for RehearsalWorkflow {
    fn plan(&self, request: &DeprovisionRequest) -> Plan {
        Plan::for_request(request)
    }

    async fn run_job_step(&self, job: &JobRecord, step: JobStep) -> StepResult {
        self.note(&job.id, step.as_str(), "-");
        tokio::time::sleep(self.step_delay).await;
        let mut effects = StepEffects::default();
        if step == JobStep::Resolve {
            let ids: Vec<String> = match &job.request.target {
                Target::EnrollmentGroup(g) => (0..self.group_size)
                    .map(|i| format!("{}-dev-{i:04}", g.group_id))
                    .collect(),
                other => vec![other.id().to_string()],
            };
            effects.new_items = ids
                .into_iter()
                .map(|id| NewItem {
                    device_id: Some(id.clone()),
                    registration_id: id,
                    hub: Some("rehearsal-hub.azure-devices.net".into()),
                    data: None,
                })
                .collect();
        }
        StepResult {
            outcome: Outcome::Done,
            effects,
        }
    }

    async fn run_item_step(
        &self,
        job: &JobRecord,
        item: &ItemRecord,
        step: ItemStep,
    ) -> StepResult {
        self.note(&job.id, step.as_str(), &item.registration_id);
        tokio::time::sleep(self.step_delay).await;
        Outcome::Done.into()
    }
}

//! What a job will do, fixed when it is created: its own steps around the items barrier, and the
//! step every device item runs.
//!
//! The plan is stored with the job (as the step names) and read back on every claim, so the rules
//! about its shape live in one constructor, [`Plan::new`], which stored plans also pass through.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::job::{DeprovisionRequest, RegistryPath, Target};

/// A step of a lane: a job's own, or a device item's.
pub trait LaneStep: Copy + fmt::Debug {
    /// The step's stored and published name.
    fn as_str(self) -> &'static str;
    /// Whether the lane waits here for its device items instead of running something.
    fn is_barrier(self) -> bool;
}

/// A step of a job's own lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStep {
    /// Read the target at DPS and find the devices it covers.
    Resolve,
    /// Cut the target off at DPS: disable or delete the enrollment, or block the device.
    Revoke,
    /// List a group's registration records, page by page, into device items.
    Enumerate,
    /// Per hub, choose device by device or import jobs; run the import jobs (snapshot export, import,
    /// verification export) for the hubs that take them. The devices they verified need no item step.
    ImportJobs,
    /// Undo jobs: select the devices the undone job changed, as this job's items.
    SelectUndo,
    /// The barrier: the job waits here while its device items run.
    Items,
    /// Delete the DPS registration records of the devices handled.
    DeleteRegistrations,
    /// Delete the (already disabled) enrollment group itself.
    DeleteGroup,
    /// Undo jobs, when asked: enable the undone job's enrollment or group at DPS again, last.
    RestoreDps,
}

impl JobStep {
    /// Every job step, in the order a plan may hold them.
    pub const ALL: [JobStep; 9] = [
        JobStep::Resolve,
        JobStep::Revoke,
        JobStep::Enumerate,
        JobStep::ImportJobs,
        JobStep::SelectUndo,
        JobStep::Items,
        JobStep::DeleteRegistrations,
        JobStep::DeleteGroup,
        JobStep::RestoreDps,
    ];

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|step| step.as_str() == s)
    }

    /// The step's name in job views and previews, where the barrier is the devices' own work.
    pub fn public_name(self) -> &'static str {
        match self {
            JobStep::Items => "devices",
            other => other.as_str(),
        }
    }
}

impl LaneStep for JobStep {
    fn as_str(self) -> &'static str {
        match self {
            JobStep::Resolve => "resolve",
            JobStep::Revoke => "revoke",
            JobStep::Enumerate => "enumerate",
            JobStep::ImportJobs => "import_jobs",
            JobStep::SelectUndo => "select_undo",
            JobStep::Items => "items",
            JobStep::DeleteRegistrations => "delete_registrations",
            JobStep::DeleteGroup => "delete_group",
            JobStep::RestoreDps => "restore_dps",
        }
    }

    fn is_barrier(self) -> bool {
        self == JobStep::Items
    }
}

/// A step of a device item's lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStep {
    /// Disable or delete the device's identity in its hub, and verify it.
    Registry,
    /// Undo jobs: enable the identity again (or re-create it from the snapshot), and verify it.
    Restore,
}

impl LaneStep for ItemStep {
    fn as_str(self) -> &'static str {
        match self {
            ItemStep::Registry => "registry",
            ItemStep::Restore => "restore",
        }
    }

    fn is_barrier(self) -> bool {
        false
    }
}

impl fmt::Display for JobStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ItemStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a list of steps is not a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Every deprovision job cuts its target off at DPS; an undo job selects what it undoes instead.
    #[error("a plan needs the revoke step, or an undo plan its select_undo step")]
    NoRevoke,
    /// A plan either deprovisions or undoes.
    #[error("a plan has the revoke step or the select_undo step, not both")]
    RevokeAndUndo,
    /// Import jobs write identities: only after the revoke step, and before the devices' own steps.
    #[error("the import_jobs step belongs after the revoke step and before the items barrier")]
    ImportJobsMisplaced,
    /// Devices must not be touched in their hub while DPS can still hand them a new assignment.
    #[error("the items barrier comes before the revoke step")]
    BarrierBeforeRevoke,
    /// A step twice would run twice.
    #[error("step `{0}` appears twice")]
    Repeated(JobStep),
    /// Item steps run only at the barrier, and the barrier only waits for item steps.
    #[error("a plan has the items barrier exactly when it has item steps")]
    BarrierWithoutItemSteps,
}

/// The steps of a job lane (around the items barrier) and of each device item's lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredPlan")]
pub struct Plan {
    job_steps: Vec<JobStep>,
    item_steps: Vec<ItemStep>,
}

/// A plan as stored, before its shape is checked.
#[derive(Deserialize)]
struct StoredPlan {
    job_steps: Vec<JobStep>,
    item_steps: Vec<ItemStep>,
}

impl TryFrom<StoredPlan> for Plan {
    type Error = PlanError;

    fn try_from(p: StoredPlan) -> Result<Self, PlanError> {
        Plan::new(p.job_steps, p.item_steps)
    }
}

impl Plan {
    /// A plan, when the steps make one: revoke present, no step twice, and the barrier (present exactly
    /// when there are item steps) after the revoke step, so no device is touched before DPS is cut off.
    pub fn new(job_steps: Vec<JobStep>, item_steps: Vec<ItemStep>) -> Result<Self, PlanError> {
        for (i, step) in job_steps.iter().enumerate() {
            if job_steps[..i].contains(step) {
                return Err(PlanError::Repeated(*step));
            }
        }
        let position = |step: JobStep| job_steps.iter().position(|s| *s == step);
        let revoke = match (position(JobStep::Revoke), position(JobStep::SelectUndo)) {
            (Some(_), Some(_)) => return Err(PlanError::RevokeAndUndo),
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => return Err(PlanError::NoRevoke),
        };
        let barrier = job_steps.iter().position(|s| s.is_barrier());
        if let Some(import) = position(JobStep::ImportJobs)
            && (import < revoke || barrier.is_some_and(|b| b < import))
        {
            return Err(PlanError::ImportJobsMisplaced);
        }
        match barrier {
            Some(barrier) if barrier < revoke => return Err(PlanError::BarrierBeforeRevoke),
            Some(_) if item_steps.is_empty() => return Err(PlanError::BarrierWithoutItemSteps),
            None if !item_steps.is_empty() => return Err(PlanError::BarrierWithoutItemSteps),
            _ => {}
        }
        Ok(Self {
            job_steps,
            item_steps,
        })
    }

    /// The steps the Azure workflow runs for a request (previews show the same list).
    pub fn for_request(request: &DeprovisionRequest) -> Self {
        if let Some(undo) = &request.undo {
            return Self::for_undo(request, undo.restore_dps);
        }
        let mut job_steps = vec![JobStep::Resolve, JobStep::Revoke];
        if let Target::EnrollmentGroup(_) = request.target {
            job_steps.push(JobStep::Enumerate);
            if request.registry_path != RegistryPath::PerDevice {
                job_steps.push(JobStep::ImportJobs);
            }
        }
        job_steps.push(JobStep::Items);
        if request.delete_registrations {
            job_steps.push(JobStep::DeleteRegistrations);
        }
        if request.delete_group {
            job_steps.push(JobStep::DeleteGroup);
        }
        // Invariant: resolve, revoke, an optional enumerate, the barrier, then the clean-ups, each
        // once, with the one item step: the shape `new` accepts.
        Self::new(job_steps, vec![ItemStep::Registry]).expect("the request plan has a valid shape")
    }

    /// An undo job's steps: select the devices, import jobs for a group's large hubs, each device restored,
    /// then DPS when asked.
    fn for_undo(request: &DeprovisionRequest, restore_dps: bool) -> Self {
        let mut job_steps = vec![JobStep::SelectUndo];
        if let Target::EnrollmentGroup(_) = request.target {
            job_steps.push(JobStep::ImportJobs);
        }
        job_steps.push(JobStep::Items);
        if restore_dps {
            job_steps.push(JobStep::RestoreDps);
        }
        // Invariant: select_undo, then the optional import jobs, the barrier and the DPS step, each once.
        Self::new(job_steps, vec![ItemStep::Restore]).expect("the undo plan has a valid shape")
    }

    /// Whether this plan undoes another job.
    pub fn is_undo(&self) -> bool {
        self.job_steps.contains(&JobStep::SelectUndo)
    }

    /// The job lane's steps, in order.
    pub fn job_steps(&self) -> &[JobStep] {
        &self.job_steps
    }

    /// The steps each device item runs, in order.
    pub fn item_steps(&self) -> &[ItemStep] {
        &self.item_steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStep::*;

    #[test]
    fn the_barrier_cannot_come_before_the_revoke_step() {
        assert_eq!(
            Plan::new(vec![Resolve, Items, Revoke], vec![ItemStep::Registry]),
            Err(PlanError::BarrierBeforeRevoke)
        );
        assert!(Plan::new(vec![Resolve, Revoke, Items], vec![ItemStep::Registry]).is_ok());
    }

    #[test]
    fn a_plan_needs_revoke_and_no_step_twice() {
        assert_eq!(
            Plan::new(vec![Resolve, Items], vec![ItemStep::Registry]),
            Err(PlanError::NoRevoke)
        );
        assert_eq!(
            Plan::new(vec![Revoke, Items, Items], vec![ItemStep::Registry]),
            Err(PlanError::Repeated(Items))
        );
    }

    #[test]
    fn the_barrier_and_item_steps_come_together() {
        assert_eq!(
            Plan::new(vec![Resolve, Revoke, Items], vec![]),
            Err(PlanError::BarrierWithoutItemSteps)
        );
        assert_eq!(
            Plan::new(vec![Resolve, Revoke], vec![ItemStep::Registry]),
            Err(PlanError::BarrierWithoutItemSteps)
        );
        assert!(Plan::new(vec![Resolve, Revoke], vec![]).is_ok());
    }

    #[test]
    fn a_stored_plan_is_checked_when_read() {
        let bad = r#"{"job_steps":["items","revoke"],"item_steps":["registry"]}"#;
        let err = serde_json::from_str::<Plan>(bad).unwrap_err().to_string();
        assert!(err.contains("before the revoke step"), "{err}");
        let unknown = r#"{"job_steps":["revoke","reboot"],"item_steps":[]}"#;
        assert!(serde_json::from_str::<Plan>(unknown).is_err());
    }

    #[test]
    fn import_jobs_sit_between_the_revoke_and_the_barrier() {
        assert_eq!(
            Plan::new(
                vec![Resolve, ImportJobs, Revoke, Items],
                vec![ItemStep::Registry]
            ),
            Err(PlanError::ImportJobsMisplaced)
        );
        assert_eq!(
            Plan::new(
                vec![Resolve, Revoke, Items, ImportJobs],
                vec![ItemStep::Registry]
            ),
            Err(PlanError::ImportJobsMisplaced)
        );
        assert!(
            Plan::new(
                vec![Resolve, Revoke, Enumerate, ImportJobs, Items],
                vec![ItemStep::Registry]
            )
            .is_ok()
        );
    }

    #[test]
    fn an_undo_plan_selects_instead_of_revoking() {
        let undo = Plan::new(
            vec![SelectUndo, ImportJobs, Items, RestoreDps],
            vec![ItemStep::Restore],
        )
        .unwrap();
        assert!(undo.is_undo());
        assert_eq!(
            Plan::new(vec![Revoke, SelectUndo, Items], vec![ItemStep::Restore]),
            Err(PlanError::RevokeAndUndo)
        );
        assert_eq!(
            Plan::new(vec![Items, SelectUndo], vec![ItemStep::Restore]),
            Err(PlanError::BarrierBeforeRevoke)
        );
    }

    #[test]
    fn stored_plans_keep_their_step_names() {
        let plan = Plan::new(
            vec![
                Resolve,
                Revoke,
                Enumerate,
                Items,
                DeleteRegistrations,
                DeleteGroup,
            ],
            vec![ItemStep::Registry],
        )
        .unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(
            json,
            r#"{"job_steps":["resolve","revoke","enumerate","items","delete_registrations","delete_group"],"item_steps":["registry"]}"#
        );
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
        for step in JobStep::ALL {
            assert_eq!(JobStep::parse(step.as_str()), Some(step));
        }
    }
}

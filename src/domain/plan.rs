//! What a job will do, fixed when it is created: its own steps around the items barrier, and the
//! step every device item runs.
//!
//! The plan is stored with the job (as the step names) and read back on every claim, so the rules
//! about its shape live in one constructor, [`Plan::new`], which stored plans also pass through.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::job::{DeprovisionRequest, Target};

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
    /// The barrier: the job waits here while its device items run.
    Items,
    /// Delete the DPS registration records of the devices handled.
    DeleteRegistrations,
    /// Delete the (already disabled) enrollment group itself.
    DeleteGroup,
}

impl JobStep {
    /// Every job step, in the order a plan may hold them.
    pub const ALL: [JobStep; 6] = [
        JobStep::Resolve,
        JobStep::Revoke,
        JobStep::Enumerate,
        JobStep::Items,
        JobStep::DeleteRegistrations,
        JobStep::DeleteGroup,
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
            JobStep::Items => "items",
            JobStep::DeleteRegistrations => "delete_registrations",
            JobStep::DeleteGroup => "delete_group",
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
}

impl LaneStep for ItemStep {
    fn as_str(self) -> &'static str {
        match self {
            ItemStep::Registry => "registry",
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
    /// Every job cuts its target off at DPS.
    #[error("a plan needs the revoke step")]
    NoRevoke,
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
        let revoke = job_steps
            .iter()
            .position(|s| *s == JobStep::Revoke)
            .ok_or(PlanError::NoRevoke)?;
        match job_steps.iter().position(|s| s.is_barrier()) {
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
        let mut job_steps = vec![JobStep::Resolve, JobStep::Revoke];
        if let Target::EnrollmentGroup(_) = request.target {
            job_steps.push(JobStep::Enumerate);
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

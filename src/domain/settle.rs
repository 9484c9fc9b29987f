//! When a job ends, and how: the completion policy over its lane, its device items' counts and the
//! cancel flag. The store reads those, asks [`settle`], and writes the verdict (compare-and-set on
//! the state it read).

use super::clock::Millis;
use super::job::JobStatus;
use super::lane::{LaneState, StepError, Transition, next_step};
use super::plan::Plan;

/// Progress counts of a job's device items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemCounts {
    /// All items.
    pub total: u64,
    /// Held until the revoke step succeeds.
    pub waiting: u64,
    /// Ready or being retried.
    pub pending: u64,
    /// Being worked on.
    pub running: u64,
    /// Registry step done.
    pub succeeded: u64,
    /// Nothing to do (with a reason).
    pub skipped: u64,
    /// Failed permanently.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl ItemCounts {
    /// Items that may still change: waiting, pending or running.
    pub fn open(&self) -> u64 {
        self.waiting + self.pending + self.running
    }

    /// Counts `n` more items in `state`; false (and nothing counted) for a state only a job lane has.
    pub fn add(&mut self, state: LaneState, n: u64) -> bool {
        let count = match state {
            LaneState::Waiting => &mut self.waiting,
            LaneState::Pending => &mut self.pending,
            LaneState::Running => &mut self.running,
            LaneState::Succeeded => &mut self.succeeded,
            LaneState::Skipped => &mut self.skipped,
            LaneState::Failed => &mut self.failed,
            LaneState::Cancelled => &mut self.cancelled,
            LaneState::WaitingItems => return false,
        };
        *count += n;
        self.total += n;
        true
    }
}

/// What settling reads of a job.
#[derive(Debug, Clone, Copy)]
pub struct JobLane<'a> {
    /// The job's steps.
    pub plan: &'a Plan,
    /// Its current step.
    pub step_index: usize,
    /// Where its own lane is.
    pub lane_state: LaneState,
    /// Whether a caller asked to cancel it.
    pub cancel_requested: bool,
    /// Its lane's last error.
    pub last_error: Option<&'a StepError>,
}

/// How a job ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// Its final status.
    pub status: JobStatus,
    /// Its lane's final state.
    pub lane_state: LaneState,
    /// The error to keep as its last error.
    pub error: Option<StepError>,
    /// The timeline's summary of the ending.
    pub message: String,
}

impl Ending {
    fn succeeded() -> Self {
        Self {
            status: JobStatus::Succeeded,
            lane_state: LaneState::Succeeded,
            error: None,
            message: "job succeeded".into(),
        }
    }

    fn failed(error: StepError, message: String) -> Self {
        Self {
            status: JobStatus::Failed,
            lane_state: LaneState::Failed,
            error: Some(error),
            message,
        }
    }
}

/// The verdict of [`settle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Work is still open (or nothing is for settling to decide): leave the job as it is.
    Wait,
    /// Every device is handled: move the job lane past the items barrier.
    PassBarrier {
        /// The move into the step after the barrier.
        next: Transition,
        /// The timeline's summary.
        message: String,
        /// When no step follows the barrier, how the job then ends.
        then: Option<Ending>,
    },
    /// End the job.
    End(Ending),
}

/// Decides what happens to an active job now. A job succeeds only when its lane finished every step and
/// no device item failed; any failure ends it failed, and a cancel ends it once nothing is running.
pub fn settle(job: JobLane<'_>, counts: &ItemCounts, now: Millis) -> Settlement {
    let busy = counts.running > 0 || job.lane_state == LaneState::Running;
    if job.cancel_requested {
        if busy {
            return Settlement::Wait;
        }
        return Settlement::End(Ending {
            status: JobStatus::Cancelled,
            lane_state: LaneState::Cancelled,
            error: None,
            message: "job cancelled".into(),
        });
    }
    match job.lane_state {
        LaneState::WaitingItems => {
            if counts.open() > 0 {
                return Settlement::Wait;
            }
            if counts.failed > 0 {
                let error = StepError::msg(format!(
                    "{} of {} device(s) failed; later steps did not run (retry the job to resume)",
                    counts.failed, counts.total
                ));
                let message = error.message.clone();
                return Settlement::End(Ending::failed(error, message));
            }
            let next = next_step(job.plan.job_steps(), job.step_index + 1, now);
            let then = (next.state == LaneState::Succeeded).then(Ending::succeeded);
            Settlement::PassBarrier {
                next,
                message: format!("all {} device(s) handled", counts.total),
                then,
            }
        }
        LaneState::Succeeded => {
            if counts.open() > 0 {
                return Settlement::Wait;
            }
            if counts.failed > 0 {
                let error = StepError::msg(format!("{} device(s) failed", counts.failed));
                let message = error.message.clone();
                return Settlement::End(Ending::failed(error, message));
            }
            Settlement::End(Ending::succeeded())
        }
        LaneState::Failed => {
            if busy {
                return Settlement::Wait;
            }
            let reason = job
                .last_error
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "job failed".into());
            Settlement::End(Ending {
                status: JobStatus::Failed,
                lane_state: LaneState::Failed,
                error: job.last_error.cloned(),
                message: format!("job failed: {reason}"),
            })
        }
        // Pending, running or a state only items have: the job's own lane has work left.
        _ => Settlement::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::{ItemStep, JobStep};

    fn plan(after_barrier: bool) -> Plan {
        let mut steps = vec![JobStep::Resolve, JobStep::Revoke, JobStep::Items];
        if after_barrier {
            steps.push(JobStep::DeleteRegistrations);
        }
        Plan::new(steps, vec![ItemStep::Registry]).unwrap()
    }

    fn lane(plan: &Plan, state: LaneState, cancel: bool) -> JobLane<'_> {
        JobLane {
            plan,
            step_index: 2,
            lane_state: state,
            cancel_requested: cancel,
            last_error: None,
        }
    }

    fn counts(succeeded: u64, running: u64, failed: u64) -> ItemCounts {
        ItemCounts {
            total: succeeded + running + failed,
            succeeded,
            running,
            failed,
            ..ItemCounts::default()
        }
    }

    #[test]
    fn the_barrier_holds_while_any_device_is_open() {
        let p = plan(false);
        let waiting = lane(&p, LaneState::WaitingItems, false);
        assert_eq!(settle(waiting, &counts(9, 1, 0), 5), Settlement::Wait);
        let pending = ItemCounts {
            pending: 1,
            ..counts(9, 0, 0)
        };
        assert_eq!(settle(waiting, &pending, 5), Settlement::Wait);
    }

    #[test]
    fn a_last_barrier_passes_and_succeeds_when_every_device_is_done() {
        let p = plan(false);
        let Settlement::PassBarrier {
            next,
            message,
            then,
        } = settle(
            lane(&p, LaneState::WaitingItems, false),
            &counts(10, 0, 0),
            5,
        )
        else {
            panic!("expected the barrier to pass");
        };
        assert_eq!((next.state, next.step_index), (LaneState::Succeeded, 3));
        assert_eq!(message, "all 10 device(s) handled");
        assert_eq!(then.map(|e| e.status), Some(JobStatus::Succeeded));
    }

    #[test]
    fn a_barrier_with_steps_after_it_moves_on_without_ending() {
        let p = plan(true);
        let Settlement::PassBarrier { next, then, .. } = settle(
            lane(&p, LaneState::WaitingItems, false),
            &counts(3, 0, 0),
            7,
        ) else {
            panic!("expected the barrier to pass");
        };
        assert_eq!(
            (next.state, next.step_index, next.next_run_at),
            (LaneState::Pending, 3, 7)
        );
        assert_eq!(then, None);
    }

    #[test]
    fn one_failed_device_fails_the_job_and_stops_later_steps() {
        let p = plan(true);
        let Settlement::End(end) = settle(
            lane(&p, LaneState::WaitingItems, false),
            &counts(9, 0, 1),
            5,
        ) else {
            panic!("expected the job to end");
        };
        assert_eq!(end.status, JobStatus::Failed);
        assert!(
            end.message.contains("1 of 10 device(s) failed"),
            "{}",
            end.message
        );
        // A lane that finished its own steps still fails on a failed device.
        let Settlement::End(end) =
            settle(lane(&p, LaneState::Succeeded, false), &counts(9, 0, 1), 5)
        else {
            panic!("expected the job to end");
        };
        assert_eq!(end.status, JobStatus::Failed);
    }

    #[test]
    fn a_cancel_ends_the_job_only_when_nothing_runs() {
        let p = plan(false);
        assert_eq!(
            settle(lane(&p, LaneState::WaitingItems, true), &counts(1, 1, 0), 5),
            Settlement::Wait
        );
        assert_eq!(
            settle(lane(&p, LaneState::Running, true), &counts(1, 0, 0), 5),
            Settlement::Wait
        );
        let Settlement::End(end) =
            settle(lane(&p, LaneState::WaitingItems, true), &counts(1, 0, 0), 5)
        else {
            panic!("expected the job to end");
        };
        assert_eq!(
            (end.status, end.lane_state),
            (JobStatus::Cancelled, LaneState::Cancelled)
        );
    }

    #[test]
    fn a_failed_lane_ends_with_its_own_error_once_devices_stop() {
        let p = plan(false);
        let error = StepError::msg("DPS said no");
        let failed = JobLane {
            last_error: Some(&error),
            ..lane(&p, LaneState::Failed, false)
        };
        assert_eq!(settle(failed, &counts(0, 1, 0), 5), Settlement::Wait);
        let Settlement::End(end) = settle(failed, &counts(1, 0, 0), 5) else {
            panic!("expected the job to end");
        };
        assert_eq!(end.error, Some(error));
        assert_eq!(end.message, "job failed: DPS said no");
    }

    #[test]
    fn a_lane_with_work_left_is_not_settled() {
        let p = plan(false);
        for state in [LaneState::Pending, LaneState::Running] {
            assert_eq!(
                settle(lane(&p, state, false), &counts(0, 0, 0), 5),
                Settlement::Wait
            );
        }
    }
}

//! The state machine of a lane: the job's own sequence of steps, or one device item's.
//!
//! A lane runs its steps in order. A worker claims it (taking a lease), runs the current step,
//! and records an [`Outcome`]; [`advance`] turns that outcome into the lane's next state.
//! Pure: no I/O, time and randomness come in as arguments.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::backoff::BackoffPolicy;
use super::clock::Millis;
use super::plan::LaneStep;

/// Where a lane is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LaneState {
    /// Item created but held until the job's revoke step has succeeded.
    Waiting,
    /// Ready to run at `next_run_at`.
    Pending,
    /// Leased by a worker.
    Running,
    /// Job only: waiting for its items to finish.
    WaitingItems,
    /// Every step done.
    Succeeded,
    /// Item only: nothing to do, with a recorded reason (e.g. never provisioned).
    Skipped,
    /// A step failed permanently, or ran out of attempts.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl LaneState {
    /// Database name.
    pub fn as_str(self) -> &'static str {
        match self {
            LaneState::Waiting => "waiting",
            LaneState::Pending => "pending",
            LaneState::Running => "running",
            LaneState::WaitingItems => "waiting_items",
            LaneState::Succeeded => "succeeded",
            LaneState::Skipped => "skipped",
            LaneState::Failed => "failed",
            LaneState::Cancelled => "cancelled",
        }
    }

    /// Parses the database name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "waiting" => LaneState::Waiting,
            "pending" => LaneState::Pending,
            "running" => LaneState::Running,
            "waiting_items" => LaneState::WaitingItems,
            "succeeded" => LaneState::Succeeded,
            "skipped" => LaneState::Skipped,
            "failed" => LaneState::Failed,
            "cancelled" => LaneState::Cancelled,
            _ => return None,
        })
    }

    /// Whether nothing more will happen to the lane (until a retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            LaneState::Succeeded | LaneState::Skipped | LaneState::Failed | LaneState::Cancelled
        )
    }
}

/// A failure reported by a step, kept for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct StepError {
    /// What went wrong, for a person.
    pub message: String,
    /// Azure's error code, when Azure answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Azure's tracking id, when Azure answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    /// HTTP status of Azure's answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl StepError {
    /// An error with only a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::default()
        }
    }
}

/// What running a step produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The step succeeded; go to the next one.
    Done,
    /// Item only: nothing needed doing; the item ends as skipped with this reason.
    Skipped(String),
    /// The step made progress and must run again (paging), resuming from `cursor`.
    Continue {
        /// Where to resume.
        cursor: String,
    },
    /// A transient failure: try again later, unless attempts are exhausted.
    Retry {
        /// What failed.
        error: StepError,
        /// The service's hint of how long to wait.
        retry_after: Option<Duration>,
    },
    /// A permanent failure: the lane stops here.
    Fail(StepError),
    /// Azure answered 429: wait and run again. Does not use up an attempt; bounded by the engine's
    /// throttle patience (time since the lane was first throttled), not by the attempt count.
    Throttled {
        /// What Azure said.
        error: StepError,
        /// How long to wait (Retry-After or the pacer's wait, jittered).
        delay: Duration,
    },
    /// The pacer has no budget for this step now: run again after `delay`, without an attempt used.
    Paced {
        /// The hub whose budget is spent (the engine claims none of its devices until then).
        hub: Option<String>,
        /// When the budget will be there.
        delay: Duration,
    },
}

/// The lane position and retry state before the outcome is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Index of the current step in the lane's steps.
    pub step_index: usize,
    /// Attempts made at the current step, including the one that just ran.
    pub attempt: u32,
}

/// The lane's next state, as the store must record it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// New state.
    pub state: LaneState,
    /// New step index.
    pub step_index: usize,
    /// Attempts made at the (possibly new) current step.
    pub attempt: u32,
    /// When the lane may be claimed again.
    pub next_run_at: Millis,
    /// Paging cursor to keep (`None` clears it).
    pub cursor: Option<String>,
    /// Error to record as the lane's last error.
    pub error: Option<StepError>,
    /// Skip reason, when skipped.
    pub skip_reason: Option<String>,
    /// Since when the lane has been throttled without a break (cleared by any other outcome).
    pub throttled_since: Option<Millis>,
}

/// Applies an outcome to a lane whose steps are `steps`.
///
/// For a job lane, reaching the items barrier ([`LaneStep::is_barrier`]) gives [`LaneState::WaitingItems`]; the caller then releases the
/// job's items. Running out of attempts turns a retry into a failure that says so.
pub fn advance(
    steps: &[impl LaneStep],
    pos: Position,
    outcome: Outcome,
    now: Millis,
    backoff: &BackoffPolicy,
    rng: &mut impl Rng,
) -> Transition {
    advance_with(
        steps,
        pos,
        outcome,
        now,
        backoff,
        Throttling::default(),
        rng,
    )
}

/// How long a lane has been throttled, and how long it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttling {
    /// Since when the lane has been throttled without a break.
    pub since: Option<Millis>,
    /// How long it may stay throttled before it fails (`None`: for ever).
    pub patience: Option<Duration>,
}

/// [`advance`] with the lane's throttling state: a 429 or a pacing wait gives the claim's attempt back
/// (claims count attempts), and a lane throttled for longer than the patience fails, saying so.
pub fn advance_with(
    steps: &[impl LaneStep],
    pos: Position,
    outcome: Outcome,
    now: Millis,
    backoff: &BackoffPolicy,
    throttling: Throttling,
    rng: &mut impl Rng,
) -> Transition {
    let base = Transition {
        state: LaneState::Pending,
        step_index: pos.step_index,
        attempt: pos.attempt,
        next_run_at: now,
        cursor: None,
        error: None,
        skip_reason: None,
        throttled_since: None,
    };
    match outcome {
        Outcome::Done => next_step(steps, pos.step_index + 1, now),
        Outcome::Skipped(reason) => Transition {
            state: LaneState::Skipped,
            skip_reason: Some(reason),
            ..base
        },
        Outcome::Continue { cursor } => Transition {
            attempt: 0,
            cursor: Some(cursor),
            ..base
        },
        Outcome::Retry { error, retry_after } => {
            if backoff.allows_another(pos.attempt) {
                let delay = backoff.delay(pos.attempt, retry_after, rng);
                Transition {
                    next_run_at: now + delay.as_millis() as Millis,
                    error: Some(error),
                    ..base
                }
            } else {
                let message = format!("gave up after {} attempts: {}", pos.attempt, error.message);
                Transition {
                    state: LaneState::Failed,
                    error: Some(StepError { message, ..error }),
                    ..base
                }
            }
        }
        Outcome::Fail(error) => Transition {
            state: LaneState::Failed,
            error: Some(error),
            ..base
        },
        Outcome::Paced { delay, .. } => Transition {
            attempt: pos.attempt.saturating_sub(1),
            next_run_at: now + delay.as_millis() as Millis,
            throttled_since: throttling.since,
            ..base
        },
        Outcome::Throttled { error, delay } => {
            let since = throttling.since.unwrap_or(now);
            match throttling.patience {
                Some(p) if now - since > p.as_millis() as Millis => {
                    let message = format!(
                        "throttled for {} s without a break, longer than the patience of {} s: {}",
                        (now - since) / 1000,
                        p.as_secs(),
                        error.message
                    );
                    Transition {
                        state: LaneState::Failed,
                        error: Some(StepError { message, ..error }),
                        ..base
                    }
                }
                _ => Transition {
                    attempt: pos.attempt.saturating_sub(1),
                    next_run_at: now + delay.as_millis() as Millis,
                    error: Some(error),
                    throttled_since: Some(since),
                    ..base
                },
            }
        }
    }
}

/// The transition into step `index` (or to the end of the lane).
pub fn next_step(steps: &[impl LaneStep], index: usize, now: Millis) -> Transition {
    let state = match steps.get(index) {
        None => LaneState::Succeeded,
        Some(s) if s.is_barrier() => LaneState::WaitingItems,
        Some(_) => LaneState::Pending,
    };
    Transition {
        state,
        step_index: index.min(steps.len()),
        attempt: 0,
        next_run_at: now,
        cursor: None,
        error: None,
        skip_reason: None,
        throttled_since: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use crate::domain::plan::{ItemStep, JobStep};

    const REGISTRY: [ItemStep; 1] = [ItemStep::Registry];

    fn backoff() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_attempts: 3,
        }
    }

    #[test]
    fn done_moves_to_next_step_then_barrier_then_end() {
        let s = [
            JobStep::Resolve,
            JobStep::Revoke,
            JobStep::Items,
            JobStep::DeleteRegistrations,
        ];
        let mut rng = StdRng::seed_from_u64(0);
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 2,
            },
            Outcome::Done,
            1000,
            &backoff(),
            &mut rng,
        );
        assert_eq!(
            (t.state, t.step_index, t.attempt),
            (LaneState::Pending, 1, 0)
        );
        let t = advance(
            &s,
            Position {
                step_index: 1,
                attempt: 1,
            },
            Outcome::Done,
            1000,
            &backoff(),
            &mut rng,
        );
        assert_eq!((t.state, t.step_index), (LaneState::WaitingItems, 2));
        assert_eq!(next_step(&s, 3, 5).state, LaneState::Pending);
        let t = advance(
            &s,
            Position {
                step_index: 3,
                attempt: 1,
            },
            Outcome::Done,
            1000,
            &backoff(),
            &mut rng,
        );
        assert_eq!((t.state, t.step_index), (LaneState::Succeeded, 4));
    }

    #[test]
    fn retry_schedules_with_backoff_and_retry_after() {
        let s = REGISTRY;
        let mut rng = StdRng::seed_from_u64(0);
        let e = StepError::msg("503");
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 1,
            },
            Outcome::Retry {
                error: e.clone(),
                retry_after: None,
            },
            1000,
            &backoff(),
            &mut rng,
        );
        assert_eq!(t.state, LaneState::Pending);
        assert!((1000..=1100).contains(&t.next_run_at));
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 2,
            },
            Outcome::Retry {
                error: e.clone(),
                retry_after: Some(Duration::from_secs(30)),
            },
            1000,
            &backoff(),
            &mut rng,
        );
        assert_eq!(t.next_run_at, 31_000);
        assert_eq!(t.error.as_ref().unwrap().message, "503");
    }

    #[test]
    fn retries_are_bounded() {
        let s = REGISTRY;
        let mut rng = StdRng::seed_from_u64(0);
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 3,
            },
            Outcome::Retry {
                error: StepError::msg("503"),
                retry_after: None,
            },
            0,
            &backoff(),
            &mut rng,
        );
        assert_eq!(t.state, LaneState::Failed);
        assert_eq!(t.error.unwrap().message, "gave up after 3 attempts: 503");
    }

    #[test]
    fn continue_keeps_step_and_resets_attempts() {
        let s = [JobStep::Enumerate, JobStep::Items];
        let mut rng = StdRng::seed_from_u64(0);
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 2,
            },
            Outcome::Continue {
                cursor: "c2".into(),
            },
            7,
            &backoff(),
            &mut rng,
        );
        assert_eq!(
            (t.state, t.step_index, t.attempt, t.cursor.as_deref()),
            (LaneState::Pending, 0, 0, Some("c2"))
        );
    }

    #[test]
    fn fail_and_skip_are_terminal() {
        let s = REGISTRY;
        let mut rng = StdRng::seed_from_u64(0);
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 1,
            },
            Outcome::Fail(StepError::msg("403")),
            0,
            &backoff(),
            &mut rng,
        );
        assert!(t.state.is_terminal());
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 1,
            },
            Outcome::Skipped("never provisioned".into()),
            0,
            &backoff(),
            &mut rng,
        );
        assert_eq!(
            (t.state, t.skip_reason.as_deref()),
            (LaneState::Skipped, Some("never provisioned"))
        );
    }

    #[test]
    fn throttled_gives_the_attempt_back_until_patience_runs_out() {
        let s = REGISTRY;
        let mut rng = StdRng::seed_from_u64(0);
        let patience = Some(Duration::from_secs(60));
        let throttled = || Outcome::Throttled {
            error: StepError::msg("429"),
            delay: Duration::from_secs(2),
        };
        // A 429 on the third attempt (max 3): not a failure, and the claim's attempt is given back.
        let t = advance_with(
            &s,
            Position {
                step_index: 0,
                attempt: 3,
            },
            throttled(),
            1_000,
            &backoff(),
            Throttling {
                since: None,
                patience,
            },
            &mut rng,
        );
        assert_eq!(
            (t.state, t.attempt, t.next_run_at, t.throttled_since),
            (LaneState::Pending, 2, 3_000, Some(1_000))
        );
        // Still throttled 60 s later: within patience.
        let t = advance_with(
            &s,
            Position {
                step_index: 0,
                attempt: 3,
            },
            throttled(),
            61_000,
            &backoff(),
            Throttling {
                since: Some(1_000),
                patience,
            },
            &mut rng,
        );
        assert_eq!(
            (t.state, t.throttled_since),
            (LaneState::Pending, Some(1_000))
        );
        // Past it: failed, saying why.
        let t = advance_with(
            &s,
            Position {
                step_index: 0,
                attempt: 1,
            },
            throttled(),
            61_001,
            &backoff(),
            Throttling {
                since: Some(1_000),
                patience,
            },
            &mut rng,
        );
        assert_eq!(t.state, LaneState::Failed);
        assert!(t.error.unwrap().message.starts_with("throttled for 60 s"));
        // Any other outcome clears the throttled time.
        let t = advance_with(
            &s,
            Position {
                step_index: 0,
                attempt: 1,
            },
            Outcome::Retry {
                error: StepError::msg("503"),
                retry_after: None,
            },
            2_000,
            &backoff(),
            Throttling {
                since: Some(1_000),
                patience,
            },
            &mut rng,
        );
        assert_eq!(t.throttled_since, None);
    }

    #[test]
    fn paced_waits_without_using_an_attempt() {
        let s = REGISTRY;
        let mut rng = StdRng::seed_from_u64(0);
        let t = advance(
            &s,
            Position {
                step_index: 0,
                attempt: 1,
            },
            Outcome::Paced {
                hub: Some("h".into()),
                delay: Duration::from_millis(750),
            },
            1_000,
            &backoff(),
            &mut rng,
        );
        assert_eq!(
            (t.state, t.attempt, t.next_run_at, t.error),
            (LaneState::Pending, 0, 1_750, None)
        );
    }
}

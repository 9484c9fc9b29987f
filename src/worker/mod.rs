//! The background engine: claims runnable lanes with a lease, runs their current step through a
//! [`Workflow`], renews the lease while the step runs and records the outcome, fenced on the claim.

mod completions;
pub mod rehearsal;
mod step;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use step::{StepResult, Workflow};

use crate::domain::backoff::BackoffPolicy;
use crate::domain::clock::SharedClock;
use crate::domain::lane::{self, Outcome, Position, StepError};
use crate::domain::plan::LaneStep;
use crate::store::{
    ItemCompletion, ItemRecord, JobRecord, NewEvent, StepEffects, Store, StoreError,
};
use completions::Completions;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This worker's name in leases (unique per process).
    pub worker_id: String,
    /// Steps run at the same time.
    pub concurrency: usize,
    /// How long a claim is valid without renewal.
    pub lease: Duration,
    /// How often a running step's lease is renewed.
    pub renew_every: Duration,
    /// How often to look for work when not woken.
    pub poll_every: Duration,
    /// Retry schedule.
    pub backoff: BackoffPolicy,
    /// How long in-flight steps may run on after shutdown starts before their leases are released.
    pub grace: Duration,
    /// Seed of the jitter RNG (random when `None`).
    pub rng_seed: Option<u64>,
    /// How long a lane may stay throttled (429 after 429, none of them using up an attempt) before
    /// it fails; `None`: for ever.
    pub throttle_patience: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: format!("worker-{}", uuid::Uuid::new_v4()),
            concurrency: 128,
            lease: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            poll_every: Duration::from_millis(500),
            backoff: BackoffPolicy::default(),
            grace: Duration::from_secs(20),
            rng_seed: None,
            throttle_patience: Some(Duration::from_secs(3600)),
        }
    }
}

/// Wakes the engine when new work is queued (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Tells the engine to look for work now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The background engine.
pub struct Engine {
    store: Store,
    workflow: Arc<dyn Workflow>,
    clock: SharedClock,
    config: EngineConfig,
    waker: Waker,
    rng: Arc<Mutex<StdRng>>,
    /// Hubs whose budget is spent, and until when: their due devices are left unclaimed meanwhile.
    paced: Mutex<HashMap<String, Instant>>,
    /// The group-commit writer of device results, while the engine runs.
    completions: Option<Completions>,
}

/// Which kind of lane a task runs, and when the claim that leased it was sent.
enum Claimed {
    Job(Box<JobRecord>, Instant),
    Item(Box<ItemRecord>, Arc<JobRecord>, Instant),
}

impl Engine {
    /// An engine over `store` running `workflow`.
    pub fn new(
        store: Store,
        workflow: Arc<dyn Workflow>,
        clock: SharedClock,
        config: EngineConfig,
        waker: Waker,
    ) -> Self {
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            store,
            workflow,
            clock,
            config,
            waker,
            rng: Arc::new(Mutex::new(rng)),
            paced: Mutex::new(HashMap::new()),
            completions: None,
        }
    }

    /// Runs until `shutdown` fires, then stops claiming, lets in-flight steps finish for the grace
    /// period, and releases the leases of those still running.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.completions = Some(Completions::start(self.store.clone()));
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.config.concurrency));
        let hard_stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut last_settle = tokio::time::Instant::now();
        let sweep_every = (this.config.poll_every * 10).max(Duration::from_secs(1));
        let claim_batch = this.config.concurrency.div_ceil(4).max(1) as u32;
        tracing::info!(worker = %this.config.worker_id, "engine started");
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits() as u32;
            let mut claimed = 0;
            // Claims wait for a quarter of the slots to be free while others run: one claim
            // transaction then hands out several lanes instead of one per finished step.
            if free > 0 && (free >= claim_batch || tasks.is_empty()) {
                let work = this.claim(free).await;
                claimed = work.len();
                for w in work {
                    // The permit count was read above and only this loop takes permits.
                    let permit = slots
                        .clone()
                        .try_acquire_owned()
                        .expect("free slot counted above");
                    let me = this.clone();
                    let stop = hard_stop.clone();
                    tasks.spawn(async move {
                        me.execute(w, stop).await;
                        drop(permit);
                    });
                }
            }
            // The sweep is a safety net for missed settles (each write settles its own job), so it
            // runs at a tenth of the poll rate, and at most once a second.
            if last_settle.elapsed() >= sweep_every {
                last_settle = tokio::time::Instant::now();
                if let Err(e) = this.store.settle_waiting(this.clock.now_ms()).await {
                    tracing::error!(error = %e, "settling jobs failed");
                }
            }
            if claimed == 0 || slots.available_permits() == 0 {
                tokio::select! {
                    _ = this.waker.0.notified() => {}
                    _ = tokio::time::sleep(this.config.poll_every) => {}
                    _ = shutdown.cancelled() => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        }
        tracing::info!(in_flight = tasks.len(), "engine stopping: no new claims");
        let drained = tokio::time::timeout(this.config.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = tasks.len(),
                "grace period over: releasing leases of unfinished steps"
            );
            hard_stop.cancel();
            while tasks.join_next().await.is_some() {}
        }
        tracing::info!("engine stopped");
    }

    /// Claims jobs, then items. Each store claim is one transaction, so a failure hands out nothing
    /// and strands nothing; what an earlier claim of this round took is still run.
    async fn claim(&self, free: u32) -> Vec<Claimed> {
        let mut out: Vec<Claimed> = Vec::new();
        // Taken before the claim is sent: the lease the store writes starts no earlier, so the
        // step's local deadline never outlasts it.
        let sent = Instant::now();
        match self
            .store
            .claim_jobs_with(
                &self.config.worker_id,
                &*self.clock,
                self.config.lease,
                free,
            )
            .await
        {
            Ok(jobs) => out.extend(jobs.into_iter().map(|j| Claimed::Job(Box::new(j), sent))),
            Err(e) => tracing::error!(error = %e, "claiming jobs failed"),
        }
        let left = free.saturating_sub(out.len() as u32);
        if left > 0 {
            let sent = Instant::now();
            let paced = self.paced_hubs();
            match self
                .store
                .claim_item_work_except(
                    &self.config.worker_id,
                    &*self.clock,
                    self.config.lease,
                    left,
                    &paced,
                )
                .await
            {
                Ok(items) => out.extend(
                    items
                        .into_iter()
                        .map(|(item, job)| Claimed::Item(Box::new(item), job, sent)),
                ),
                Err(e) => tracing::error!(error = %e, "claiming device items failed"),
            }
        }
        out
    }

    /// Hubs still out of budget; forgets those whose wait is over.
    fn paced_hubs(&self) -> Vec<String> {
        // The lock guards the map only; it is never held across an await.
        let mut paced = self.paced.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        paced.retain(|_, until| *until > now);
        paced.keys().cloned().collect()
    }

    /// Notes a hub whose budget is spent for `delay`.
    fn hold_hub(&self, hub: &str, delay: Duration) {
        let mut paced = self.paced.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + delay;
        let e = paced.entry(hub.to_ascii_lowercase()).or_insert(until);
        *e = (*e).max(until);
    }

    async fn execute(&self, work: Claimed, hard_stop: CancellationToken) {
        // Each step runs inside its own span (instrumented, not entered: the step awaits, and an entered
        // span would be attached to whatever else the thread polls meanwhile).
        let r = match work {
            Claimed::Job(job, sent) => {
                let span = tracing::info_span!(
                    "job_step",
                    job = %job.id,
                    step = tracing::field::Empty,
                    attempt = job.attempt
                );
                self.execute_job(*job, sent, hard_stop)
                    .instrument(span)
                    .await
            }
            Claimed::Item(item, job, sent) => {
                let span = tracing::info_span!(
                    "device_step",
                    job = %item.job_id,
                    device = %item.registration_id,
                    device_id = item.device_id.as_deref().unwrap_or(""),
                    hub = item.hub.as_deref().unwrap_or(""),
                    attempt = item.attempt
                );
                self.execute_item(*item, job, sent, hard_stop)
                    .instrument(span)
                    .await
            }
        };
        match r {
            Ok(()) => {}
            Err(StoreError::Fenced) => {
                tracing::warn!("a newer claim took this work over; result dropped")
            }
            Err(e) => {
                tracing::error!(error = %e, "recording a step failed; the lease will expire and the step re-run")
            }
        }
    }

    async fn execute_job(
        &self,
        job: JobRecord,
        claimed: Instant,
        hard_stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let Some(step) = job.current_step() else {
            return self.store.settle(&job.id, self.clock.now_ms()).await;
        };
        tracing::Span::current().record("step", step.as_str());
        let result = if self.exhausted(job.attempt) {
            lease_exhausted(job.attempt)
        } else {
            let wf = self.workflow.clone();
            let j = job.clone();
            let fut = timed("job", step.as_str(), async move {
                wf.run_job_step(&j, step).await
            });
            let store = self.store.clone();
            let (id, fence) = (job.id.clone(), job.fence);
            let (clock, lease) = (self.clock.clone(), self.config.lease);
            let renew = move || {
                let (store, id, clock) = (store.clone(), id.clone(), clock.clone());
                async move { store.renew_job_for(&id, fence, &*clock, lease).await }
            };
            match self.supervise(fut, renew, claimed, hard_stop).await {
                Supervised::Done(r) => *r,
                Supervised::LeaseLost => return Err(StoreError::Fenced),
                // The lane is re-run once its lease expires in the database; nothing to record.
                Supervised::LeaseExpired => return Ok(()),
                Supervised::Stopped => {
                    self.store
                        .release_job(&job.id, job.fence, self.clock.now_ms())
                        .await?;
                    return Ok(());
                }
            }
        };
        let now = self.clock.now_ms();
        // A job step with nothing to do is done: a job lane has no `skipped` end (that is for
        // devices), and a job left there would never settle. The event still says it skipped.
        let moved = match &result.outcome {
            Outcome::Skipped(_) => Outcome::Done,
            other => other.clone(),
        };
        let mut t = self.advance(
            job.plan.job_steps(),
            job.step_index,
            job.attempt,
            job.throttled_since,
            moved,
            now,
        );
        if matches!(
            result.outcome,
            Outcome::Retry { .. }
                | Outcome::Fail(_)
                | Outcome::Throttled { .. }
                | Outcome::Paced { .. }
        ) {
            // A paging step that fails resumes where it stopped, on its next attempt or after a job retry.
            t.cursor = job.cursor.clone();
        }
        let mut effects = result.effects;
        effects.events.extend(outcome_event(
            None,
            step.as_str(),
            job.attempt,
            &result.outcome,
            &t,
            now,
        ));
        self.store
            .complete_job_step(&job, &t, &effects, now)
            .await?;
        if let Outcome::Paced { delay, .. } = result.outcome {
            self.wake_after(delay);
        }
        Ok(())
    }

    /// Looks for work again after `delay` when that comes before the next poll: a job step that waits
    /// (a hub job polled every 100 ms) would otherwise run only at the engine's poll, up to
    /// `poll_every` late each time.
    fn wake_after(&self, delay: Duration) {
        if delay >= self.config.poll_every {
            return;
        }
        let waker = self.waker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            waker.wake();
        });
    }

    async fn execute_item(
        &self,
        item: ItemRecord,
        job: Arc<JobRecord>,
        claimed: Instant,
        hard_stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let Some(step) = job.plan.item_steps().get(item.step_index).copied() else {
            // Recorded as a failure, not returned as an error: an error would leave the lease to
            // expire and the item to come back for ever, never reaching the attempt limit.
            let err = StepError::msg(format!(
                "the device is at step {} but its job's plan has {} device step(s); failed instead of run",
                item.step_index,
                job.plan.item_steps().len()
            ));
            let now = self.clock.now_ms();
            let t = lane::Transition {
                state: lane::LaneState::Failed,
                step_index: item.step_index,
                attempt: item.attempt,
                next_run_at: now,
                cursor: None,
                error: Some(err.clone()),
                skip_reason: None,
                throttled_since: None,
            };
            let effects = StepEffects {
                events: vec![NewEvent {
                    item_id: Some(item.id.clone()),
                    kind: "step_failed".into(),
                    attempt: Some(item.attempt),
                    message: Some(format!("{}: {}", item.registration_id, err.message)),
                    ..NewEvent::default()
                }],
                ..StepEffects::default()
            };
            return self
                .store
                .complete_item_step(&item, &t, &effects, now)
                .await;
        };
        let result = if self.exhausted(item.attempt) {
            lease_exhausted(item.attempt)
        } else {
            let wf = self.workflow.clone();
            let (j, it) = (job.clone(), item.clone());
            let fut = timed("device", step.as_str(), async move {
                wf.run_item_step(&j, &it, step).await
            });
            let store = self.store.clone();
            let (id, fence) = (item.id.clone(), item.fence);
            let (clock, lease) = (self.clock.clone(), self.config.lease);
            let renew = move || {
                let (store, id, clock) = (store.clone(), id.clone(), clock.clone());
                async move { store.renew_item_for(&id, fence, &*clock, lease).await }
            };
            match self.supervise(fut, renew, claimed, hard_stop).await {
                Supervised::Done(r) => *r,
                Supervised::LeaseLost => return Err(StoreError::Fenced),
                // The lane is re-run once its lease expires in the database; nothing to record.
                Supervised::LeaseExpired => return Ok(()),
                Supervised::Stopped => {
                    self.store
                        .release_item(&item.id, item.fence, self.clock.now_ms())
                        .await?;
                    return Ok(());
                }
            }
        };
        let now = self.clock.now_ms();
        if let Outcome::Paced {
            hub: Some(hub),
            delay,
        } = &result.outcome
        {
            self.hold_hub(hub, *delay);
        }
        let t = self.advance(
            job.plan.item_steps(),
            item.step_index,
            item.attempt,
            item.throttled_since,
            result.outcome.clone(),
            now,
        );
        let mut effects = result.effects;
        effects.events.extend(outcome_event(
            Some(&item),
            step.as_str(),
            item.attempt,
            &result.outcome,
            &t,
            now,
        ));
        let done = ItemCompletion {
            item,
            transition: t,
            effects,
            now,
        };
        match &self.completions {
            Some(writer) => writer.record(done).await,
            None => {
                let d = &done;
                self.store
                    .complete_item_step(&d.item, &d.transition, &d.effects, d.now)
                    .await
            }
        }
    }

    /// A lane claimed more often than attempts allow (its leases kept expiring) fails instead of running again.
    fn exhausted(&self, attempt: u32) -> bool {
        attempt > self.config.backoff.max_attempts
    }

    fn advance(
        &self,
        steps: &[impl LaneStep],
        index: usize,
        attempt: u32,
        throttled_since: Option<i64>,
        outcome: Outcome,
        now: i64,
    ) -> lane::Transition {
        // The lock only guards the RNG; it is never held across an await.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        lane::advance_with(
            steps,
            Position {
                step_index: index,
                attempt,
            },
            outcome,
            now,
            &self.config.backoff,
            lane::Throttling {
                since: throttled_since,
                patience: self.config.throttle_patience,
            },
            &mut *rng,
        )
    }

    /// Runs a step while renewing its lease; gives up the step when the lease is lost, when its
    /// deadline passes without a successful renewal, or when the grace period ends.
    ///
    /// The renewal runs beside the step rather than in front of it, so a slow database neither
    /// pauses the step nor delays the stop. The local deadline is counted from when the claim (or
    /// the last successful renewal) was sent, which is no later than the expiry the store wrote:
    /// once it passes, another replica may hold the lane, so the step's future is dropped and its
    /// result discarded.
    async fn supervise<F, R, RF>(
        &self,
        fut: F,
        renew: R,
        claimed: Instant,
        hard_stop: CancellationToken,
    ) -> Supervised
    where
        F: std::future::Future<Output = StepResult> + Send,
        R: Fn() -> RF,
        RF: std::future::Future<Output = Result<bool, StoreError>>,
    {
        tokio::pin!(fut);
        let lease = self.config.lease;
        let mut deadline = claimed + lease;
        let mut ticker = tokio::time::interval(self.config.renew_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut renewal: Option<(Instant, std::pin::Pin<Box<RF>>)> = None;
        loop {
            tokio::select! {
                r = &mut fut => return Supervised::Done(Box::new(r)),
                _ = hard_stop.cancelled() => return Supervised::Stopped,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("lease ran out before a renewal succeeded; stopping the step and discarding its result");
                    return Supervised::LeaseExpired;
                }
                _ = ticker.tick(), if renewal.is_none() => {
                    renewal = Some((Instant::now(), Box::pin(renew())));
                }
                r = async {
                    match renewal.as_mut() {
                        Some((_, f)) => f.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if renewal.is_some() => {
                    let sent = renewal.take().map(|(at, _)| at).unwrap_or(deadline);
                    match r {
                        Ok(true) => deadline = sent + lease,
                        Ok(false) => {
                            tracing::warn!("lease lost while the step ran; abandoning it");
                            return Supervised::LeaseLost;
                        }
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed; will try again"),
                    }
                }
            }
        }
    }
}

enum Supervised {
    Done(Box<StepResult>),
    LeaseLost,
    LeaseExpired,
    Stopped,
}

fn lease_exhausted(attempt: u32) -> StepResult {
    Outcome::Fail(StepError::msg(format!(
        "claimed {attempt} times without finishing (the worker's lease kept expiring); giving up"
    )))
    .into()
}

fn outcome_event(
    item: Option<&ItemRecord>,
    step: &str,
    attempt: u32,
    outcome: &Outcome,
    t: &lane::Transition,
    now: i64,
) -> Option<NewEvent> {
    let (kind, message, error) = match outcome {
        // Waiting for budget is the pacer doing its job, not news: no event per wait.
        Outcome::Paced { .. } => return None,
        Outcome::Throttled { error, .. } if t.state == lane::LaneState::Failed => (
            "step_failed",
            t.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            Some(error),
        ),
        Outcome::Throttled { error, .. } => (
            "step_throttled",
            format!(
                "{step} throttled (429; no attempt used, runs again at {}): {}",
                crate::domain::clock::to_rfc3339(t.next_run_at),
                error.message
            ),
            Some(error),
        ),
        Outcome::Done => ("step_succeeded", format!("{step} succeeded"), None),
        Outcome::Skipped(reason) => ("step_skipped", format!("{step} skipped: {reason}"), None),
        Outcome::Continue { .. } => ("step_progressed", format!("{step} made progress"), None),
        Outcome::Retry { error, .. } if t.state == lane::LaneState::Failed => (
            "step_failed",
            t.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            Some(error),
        ),
        Outcome::Retry { error, .. } => (
            "step_retry_scheduled",
            format!(
                "{step} failed (will retry at {}): {}",
                crate::domain::clock::to_rfc3339(t.next_run_at),
                error.message
            ),
            Some(error),
        ),
        Outcome::Fail(error) => (
            "step_failed",
            format!("{step} failed: {}", error.message),
            Some(error),
        ),
    };
    Some(NewEvent {
        item_id: item.map(|i| i.id.clone()),
        kind: kind.into(),
        step: Some(step.into()),
        attempt: Some(attempt),
        message: Some(match item {
            Some(i) => format!("{}: {message}", i.registration_id),
            None => message,
        }),
        detail: error.map(|e| {
            let mut d = serde_json::to_value(e).unwrap_or_default();
            if t.state == lane::LaneState::Pending {
                // The chosen wait, so the timeline shows the backoff schedule (and tests can check it).
                d["retry_in_ms"] = serde_json::json!(t.next_run_at - now);
            }
            d
        }),
    })
}

/// Runs a step and records how long it took, by lane (`job` or `device`), step and outcome, as the
/// `deprovisiond_step_duration_seconds` histogram. A step stopped for a lost lease records nothing.
async fn timed(
    lane: &'static str,
    step: &'static str,
    fut: impl std::future::Future<Output = StepResult>,
) -> StepResult {
    let started = std::time::Instant::now();
    let result = fut.await;
    let outcome = match &result.outcome {
        Outcome::Done => "done",
        Outcome::Skipped(_) => "skipped",
        Outcome::Continue { .. } => "continue",
        Outcome::Retry { .. } => "retry",
        Outcome::Fail(_) => "fail",
        Outcome::Throttled { .. } => "throttled",
        Outcome::Paced { .. } => "paced",
    };
    metrics::histogram!(
        "deprovisiond_step_duration_seconds",
        "lane" => lane,
        "step" => step,
        "outcome" => outcome
    )
    .record(started.elapsed().as_secs_f64());
    result
}
